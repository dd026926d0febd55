//! While the VM runs: API requests are served on the VMM's event loop, next to the devices, so
//! no vCPU or device thread ever waits for a client. Pause/resume, Ctrl-Alt-Del, drive swaps,
//! metrics, the read-only resources, and readers waiting for the run state to change.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::models::{no_rate_limiter, ActionType, StateQuery, VmStateRequest};
use api::oneshot;
use api::{ApiRequest, ApiResponse};
use devices::legacy::I8042;
use devices::pseudo::BootTime;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{info, warn};
use vmm_sys_util::timerfd::TimerFd;

use super::{ApiMessage, ApiReceiver, RunState, StateWaiter, VmmInfo, AFTER_START};
use crate::device_manager::BlockDevices;
use crate::metrics::METRICS_PERIOD;
use crate::resources::VmResources;
use crate::vstate::pause::PauseControl;

/// How long PATCH /vm waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The API's state carried from before boot into the run (and out again, for `--linger`).
pub struct RuntimeApi {
    pub receiver: ApiReceiver,
    pub info: VmmInfo,
    pub res: VmResources,
    /// The InstanceStart request, answered once the vCPUs run.
    pub start_reply: Option<oneshot::Sender<ApiResponse>>,
    /// Readers of the run state still waiting when the VM ended (answered with the exit).
    pub waiters: Vec<StateWaiter>,
}

/// What the controller needs of the running VM.
pub struct VmHandles {
    pub pause: Arc<PauseControl>,
    /// Forces every vCPU thread out of KVM_RUN.
    pub kick_vcpus: Box<dyn Fn() + Send>,
    pub vcpu_count: usize,
    pub i8042: Arc<Mutex<I8042>>,
    pub blocks: BlockDevices,
    pub boot_time: Arc<BootTime>,
}

pub struct RuntimeController {
    api: RuntimeApi,
    vm: VmHandles,
    state: RunState,
    metrics_timer: Option<TimerFd>,
    /// Fires at the earliest waiting reader's deadline.
    wait_timer: Option<TimerFd>,
}

impl RuntimeController {
    pub fn new(mut api: RuntimeApi, vm: VmHandles) -> Self {
        let metrics_timer = TimerFd::new().ok().and_then(|mut t| {
            t.reset(METRICS_PERIOD, Some(METRICS_PERIOD)).ok()?;
            Some(t)
        });
        api.info.revision += 1;
        RuntimeController {
            api,
            vm,
            state: RunState::Running,
            metrics_timer,
            wait_timer: TimerFd::new().ok(),
        }
    }

    /// Answers the pending InstanceStart: the vCPUs run, every thread under its filter.
    pub fn answer_start(&mut self) {
        if let Some(reply) = self.api.start_reply.take() {
            let _ = reply.send(ApiResponse::no_content());
        }
    }

    /// Gives the API state back once the VM has ended.
    pub fn into_api(self) -> RuntimeApi {
        self.api
    }

    fn refresh_boot_time(&mut self) {
        if self.api.info.boot_time.is_none() {
            self.api.info.boot_time = self.vm.boot_time.get();
            if self.api.info.boot_time.is_some() {
                self.api.info.revision += 1;
            }
        }
    }

    /// A reader of the run state: answered now, or parked until the state changes.
    fn read_state(&mut self, query: StateQuery, msg: ApiMessage) {
        self.refresh_boot_time();
        let waiter = StateWaiter {
            after: query.after_revision.unwrap_or(u64::MAX),
            deadline: Instant::now() + Duration::from_millis(query.wait_ms),
            reply: msg.reply,
        };
        if query.after_revision.is_none() {
            let _ = waiter
                .reply
                .send(ApiResponse::ok(&self.api.info.kiln_state(&self.state)));
            return;
        }
        self.api.waiters.push(waiter);
    }

    /// Answers the readers that are due and sets the timer for the next deadline.
    fn answer_waiters(&mut self) {
        self.api
            .info
            .answer_waiters(&mut self.api.waiters, &self.state);
        let next = self.api.waiters.iter().map(|w| w.deadline).min();
        if let (Some(timer), Some(next)) = (&mut self.wait_timer, next) {
            // At least 1 ms: a zero duration would disarm the timer.
            let left = next.saturating_duration_since(Instant::now());
            let _ = timer.reset(left.max(Duration::from_millis(1)), None);
        }
    }

    fn handle(&mut self, req: &ApiRequest) -> ApiResponse {
        self.refresh_boot_time();
        if let Some(answer) = self.api.info.query(req, &self.api.res, &self.state) {
            return answer;
        }
        let result = match req {
            ApiRequest::Action(ActionType::FlushMetrics) => {
                let vcpus = self.api.res.machine_config.vcpu_count;
                self.api.info.flush_metrics(&self.state, vcpus)
            }
            ApiRequest::Action(ActionType::SendCtrlAltDel) => self
                .vm
                .i8042
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .trigger_ctrl_alt_del()
                .map_err(|e| format!("cannot send Ctrl-Alt-Del: {e}")),
            ApiRequest::PatchVm(VmStateRequest::Paused) => self.pause(),
            ApiRequest::PatchVm(VmStateRequest::Resumed) => {
                self.vm.pause.resume();
                if self.state != RunState::Running {
                    self.state = RunState::Running;
                    self.api.info.revision += 1;
                }
                info!("VM resumed");
                Ok(())
            }
            ApiRequest::PatchDrive(d) => self.patch_drive(d),
            ApiRequest::PatchNetworkInterface(n) => {
                if !self.api.res.nets.iter().any(|x| x.iface_id == n.iface_id) {
                    Err(format!("no network interface {:?} in this VM", n.iface_id))
                } else if !no_rate_limiter(&n.rx_rate_limiter)
                    || !no_rate_limiter(&n.tx_rate_limiter)
                {
                    Err("rate limiters are not supported by kiln-vmm".into())
                } else {
                    Ok(())
                }
            }
            _ => Err(AFTER_START.into()),
        };
        match result {
            Ok(()) => ApiResponse::no_content(),
            Err(message) => ApiResponse::bad_request(message),
        }
    }

    fn pause(&mut self) -> Result<(), String> {
        let kick = &self.vm.kick_vcpus;
        if self.vm.pause.pause(self.vm.vcpu_count, PAUSE_TIMEOUT, kick) {
            if self.state != RunState::Paused {
                self.state = RunState::Paused;
                self.api.info.revision += 1;
            }
            info!("VM paused");
            Ok(())
        } else {
            self.vm.pause.resume();
            Err(format!(
                "the vCPUs did not stop within {PAUSE_TIMEOUT:?}; the VM keeps running"
            ))
        }
    }

    fn patch_drive(&mut self, d: &api::models::PartialDrive) -> Result<(), String> {
        if !no_rate_limiter(&d.rate_limiter) {
            return Err("rate limiters are not supported by kiln-vmm".into());
        }
        let Some(path) = &d.path_on_host else {
            return if self.api.res.drives.iter().any(|x| x.drive_id == d.drive_id) {
                Ok(())
            } else {
                Err(format!("no drive {:?} in this VM", d.drive_id))
            };
        };
        self.vm
            .blocks
            .replace_image(&d.drive_id, path.as_ref())
            .map_err(|e| e.to_string())?;
        if let Some(cfg) = self
            .api
            .res
            .drives
            .iter_mut()
            .find(|x| x.drive_id == d.drive_id)
        {
            cfg.path_on_host = path.into();
        }
        Ok(())
    }
}

impl MutEventSubscriber for RuntimeController {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.api.receiver.event().as_raw_fd() {
            let _ = self.api.receiver.event().read();
            while let Some(msg) = self.api.receiver.try_recv() {
                if let ApiRequest::GetKilnState(query) = msg.request {
                    self.read_state(query, msg);
                    continue;
                }
                let response = self.handle(&msg.request);
                // The client may have gone; nothing to do then.
                let _ = msg.reply.send(response);
            }
        } else if events.fd() == self.vm.boot_time.event().as_raw_fd() {
            let _ = self.vm.boot_time.event().read();
            self.refresh_boot_time();
        } else if let Some(timer) = self
            .wait_timer
            .as_mut()
            .filter(|t| events.fd() == t.as_raw_fd())
        {
            let _ = timer.wait();
        } else if let Some(timer) = &mut self.metrics_timer {
            if events.fd() == timer.as_raw_fd() {
                let _ = timer.wait();
                if self.api.info.metrics.is_some() {
                    self.refresh_boot_time();
                    let vcpus = self.api.res.machine_config.vcpu_count;
                    if let Err(e) = self.api.info.flush_metrics(&self.state, vcpus) {
                        warn!("periodic metrics: {e}");
                    }
                }
            }
        }
        self.answer_waiters();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd: i32| {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                warn!("API: cannot watch fd {fd}: {e:?}");
            }
        };
        add(self.api.receiver.event().as_raw_fd());
        add(self.vm.boot_time.event().as_raw_fd());
        if let Some(t) = &self.metrics_timer {
            add(t.as_raw_fd());
        }
        if let Some(t) = &self.wait_timer {
            add(t.as_raw_fd());
        }
    }
}
