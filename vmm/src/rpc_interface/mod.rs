//! The VMM's side of the HTTP API: the channel requests arrive on, what the VMM knows about
//! itself for the read-only resources, and the controllers that act on requests before boot
//! (`preboot`) and while the VM runs (`runtime`).

pub mod preboot;
pub mod runtime;
pub mod waiting;

use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::models::{InstanceInfo, InstanceState, KilnExit, KilnRunState, KilnVmState, VersionInfo};
use api::oneshot;
use api::{ApiCounters, ApiRequest, ApiResponse, RequestSink, VMM_VERSION};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::logger::LogControl;
use crate::metrics::{MetricsLine, MetricsSink, VmmMetrics};
use crate::resources::VmResources;
use crate::vm_exit::VmExit;

/// Firecracker's wording for requests that only make sense in the other phase.
pub const AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
pub const BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

/// One request and where its answer goes.
pub struct ApiMessage {
    pub request: ApiRequest,
    pub reply: oneshot::Sender<ApiResponse>,
}

/// The API server's end: queues a request and wakes the VMM.
pub struct ApiSender {
    tx: mpsc::Sender<ApiMessage>,
    event: EventFd,
}

impl RequestSink for ApiSender {
    fn submit(&self, request: ApiRequest, reply: oneshot::Sender<ApiResponse>) -> bool {
        if self.tx.send(ApiMessage { request, reply }).is_err() {
            return false;
        }
        // A full counter still leaves the eventfd readable.
        let _ = self.event.write(1);
        true
    }
}

/// The VMM's end: requests in arrival order; `event` is readable while some may be waiting.
pub struct ApiReceiver {
    rx: mpsc::Receiver<ApiMessage>,
    event: EventFd,
}

impl ApiReceiver {
    /// Waits for the next request; `None` when the server is gone.
    pub fn recv(&self) -> Option<ApiMessage> {
        self.rx.recv().ok()
    }

    pub fn try_recv(&self) -> Option<ApiMessage> {
        self.rx.try_recv().ok()
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

pub fn api_channel() -> io::Result<(Arc<ApiSender>, ApiReceiver)> {
    let (tx, rx) = mpsc::channel();
    let event = EventFd::new(EFD_NONBLOCK)?;
    let sender = ApiSender {
        tx,
        event: event.try_clone()?,
    };
    Ok((Arc::new(sender), ApiReceiver { rx, event }))
}

/// Where the VM is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    NotStarted,
    Running,
    Paused,
    Exited(VmExit),
}

/// What the VMM knows about itself, for the read-only resources and the metrics.
pub struct VmmInfo {
    pub id: String,
    pub start: Instant,
    pub counters: Arc<ApiCounters>,
    pub log: LogControl,
    pub metrics: Option<MetricsSink>,
    /// When the VM was built and its vCPUs about to start.
    pub vm_started: Option<Duration>,
    pub boot_time: Option<Duration>,
    /// Counts the changes `GET /kiln/v1/state` readers can see; waiting readers are answered
    /// when it grows.
    pub revision: u64,
}

/// A `GET /kiln/v1/state?after_revision=` reader waiting for a change.
pub struct StateWaiter {
    pub after: u64,
    pub deadline: Instant,
    pub reply: oneshot::Sender<ApiResponse>,
}

impl StateWaiter {
    /// Whether to answer now: the state has moved past what the reader saw, or time is up.
    pub fn due(&self, revision: u64, now: Instant) -> bool {
        revision > self.after || now >= self.deadline
    }
}

impl VmmInfo {
    pub fn instance_info(&self, state: &RunState) -> InstanceInfo {
        InstanceInfo {
            app_name: "kiln-vmm".into(),
            id: self.id.clone(),
            state: match state {
                RunState::NotStarted | RunState::Exited(_) => InstanceState::NotStarted,
                RunState::Running => InstanceState::Running,
                RunState::Paused => InstanceState::Paused,
            },
            vmm_version: VMM_VERSION.into(),
        }
    }

    pub fn kiln_state(&self, state: &RunState) -> KilnVmState {
        KilnVmState {
            revision: self.revision,
            state: match state {
                RunState::NotStarted => KilnRunState::NotStarted,
                RunState::Running => KilnRunState::Running,
                RunState::Paused => KilnRunState::Paused,
                RunState::Exited(_) => KilnRunState::Exited,
            },
            exit: match state {
                RunState::Exited(exit) => Some(describe_exit(exit)),
                _ => None,
            },
            boot_time_us: self.boot_time.map(|d| d.as_micros() as u64),
            vm_started_us: self.vm_started.map(|d| d.as_micros() as u64),
        }
    }

    /// Answers the waiters that are due with the current state; keeps the others.
    pub fn answer_waiters(&self, waiters: &mut Vec<StateWaiter>, state: &RunState) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(waiters)
            .into_iter()
            .partition(|w| w.due(self.revision, now));
        *waiters = waiting;
        for w in due {
            let _ = w.reply.send(ApiResponse::ok(&self.kiln_state(state)));
        }
    }

    /// Answers the read-only resources, the same in every phase; `None` for anything else.
    /// (Readers of the run state are answered at once here; only a running VM makes them wait.)
    pub fn query(
        &self,
        req: &ApiRequest,
        res: &VmResources,
        state: &RunState,
    ) -> Option<ApiResponse> {
        Some(match req {
            ApiRequest::GetInstanceInfo => ApiResponse::ok(&self.instance_info(state)),
            ApiRequest::GetVersion => ApiResponse::ok(&VersionInfo {
                firecracker_version: VMM_VERSION.into(),
            }),
            ApiRequest::GetMachineConfig => ApiResponse::ok(&res.machine_config.to_api()),
            ApiRequest::GetVmConfig => ApiResponse::ok(&res.to_api_config()),
            ApiRequest::GetKilnState(_) => ApiResponse::ok(&self.kiln_state(state)),
            _ => return None,
        })
    }

    /// Writes one metrics record (FlushMetrics, or the periodic timer).
    pub fn flush_metrics(&mut self, state: &RunState, vcpus: u8) -> Result<(), String> {
        let line = MetricsLine::new(
            &self.counters,
            VmmMetrics {
                state: match state {
                    RunState::NotStarted => "NotStarted",
                    RunState::Running => "Running",
                    RunState::Paused => "Paused",
                    RunState::Exited(_) => "Exited",
                },
                uptime_ms: self.start.elapsed().as_millis() as u64,
                vcpus,
                boot_time_us: self.boot_time.map(|d| d.as_micros() as u64),
                guest_log_lines_suppressed: devices::guest_log::suppressed_lines(),
            },
        );
        match &mut self.metrics {
            Some(sink) => sink.write(&line).map_err(|e| e.to_string()),
            None => Err(crate::metrics::MetricsError::NotConfigured.to_string()),
        }
    }
}

fn describe_exit(exit: &VmExit) -> KilnExit {
    let reason = match exit {
        VmExit::PowerOff(_) => "PowerOff",
        VmExit::Reset { .. } | VmExit::Reboot { .. } => "Reboot",
        VmExit::Panic => "Panic",
        VmExit::VcpuFailure(_) => "VcpuFailure",
        VmExit::VcpuStuck(_) => "VcpuStuck",
        VmExit::Signal(_) => "Signal",
    };
    KilnExit {
        reason: reason.into(),
        message: exit.describe(),
        exit_code: exit.exit_code(),
    }
}

/// Answers every request after the VM has ended (`--linger`): reads work, changes do not.
pub fn answer_after_exit(
    info: &VmmInfo,
    res: &VmResources,
    state: &RunState,
    req: &ApiRequest,
) -> ApiResponse {
    info.query(req, res, state).unwrap_or_else(|| {
        ApiResponse::bad_request("The microVM has exited; only GET requests are served.")
    })
}
