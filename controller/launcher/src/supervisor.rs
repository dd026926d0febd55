//! The life of the VM in this pod: boot kiln-vmm, follow its run state (a long poll, no
//! polling), act on the controller's pause/unpause, restart the guest in place when it reboots,
//! and on SIGTERM ask the guest to shut down (Ctrl-Alt-Del) within the grace period.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use api::models::{ActionType, InstanceActionInfo, KilnRunState, Vm, VmStateRequest};
use devices::virtio::net::Tap;
use hyper::Method;
use kiln_crd::launch::{LaunchSpec, LauncherPhase, TAP_NAME};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::disks;
use crate::state::SharedState;
use crate::vmm::VmmProcess;

/// What the control endpoint asks of the VM.
pub enum Command {
    Pause(oneshot::Sender<Result<(), String>>),
    Unpause(oneshot::Sender<Result<(), String>>),
    /// End the VM as Failed (a liveness probe gave up on the guest).
    Fail {
        reason: String,
        message: String,
    },
}

/// How the VM ended, and so how the launcher (and the pod) ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered itself off: the VMI Succeeded.
    PoweredOff,
    /// Stopped on request (SIGTERM): the guest shut down or the grace period ran out.
    Stopped,
    /// Anything else: the VMI Failed, for `reason` (PowerOff, Panic, VcpuFailure, VcpuStuck,
    /// Killed, StartFailed, DiskError, NetworkError).
    Failed { reason: String, message: String },
}

/// How one boot of kiln-vmm ended.
enum BootEnd {
    Reboot,
    Exit {
        reason: String,
        message: String,
        code: i32,
    },
    Stopped,
    StartFailed(String),
}

pub struct Supervisor {
    pub spec: LaunchSpec,
    pub vmm_bin: PathBuf,
    pub socket: PathBuf,
    pub state: SharedState,
    pub commands: mpsc::Receiver<Command>,
    pub stop: watch::Receiver<bool>,
}

impl Supervisor {
    pub async fn run(mut self) -> Outcome {
        let drives = match disks::prepare(&self.spec.disks) {
            Ok(d) => d,
            Err(e) => {
                return Outcome::Failed {
                    reason: "DiskError".into(),
                    message: e.to_string(),
                }
            }
        };
        // The TAP the network init container left, owned by this user (no privilege needed),
        // opened once for the pod's life and inherited by each kiln-vmm.
        let tap = match self
            .spec
            .network
            .as_ref()
            .map(|_| Tap::open_named(TAP_NAME))
        {
            None => None,
            Some(Ok(tap)) => Some(tap),
            Some(Err(e)) => {
                return Outcome::Failed {
                    reason: "NetworkError".into(),
                    message: e.to_string(),
                }
            }
        };
        loop {
            let stopping = *self.stop.borrow();
            if stopping {
                return Outcome::Stopped;
            }
            self.state.update(|s| {
                s.phase = LauncherPhase::Starting;
                s.boot_time_ms = None;
                s.paused = false;
            });
            match self.boot_once(&drives, tap.as_ref()).await {
                BootEnd::Reboot if !*self.stop.borrow() => {
                    info!("the guest rebooted; starting it again in this pod");
                    self.state.update(|s| s.restarts += 1);
                }
                BootEnd::Reboot | BootEnd::Stopped => return Outcome::Stopped,
                BootEnd::Exit {
                    reason, code: 0, ..
                } if reason == "PowerOff" => {
                    return if *self.stop.borrow() {
                        Outcome::Stopped
                    } else {
                        Outcome::PoweredOff
                    };
                }
                BootEnd::Exit {
                    reason, message, ..
                } => return Outcome::Failed { reason, message },
                BootEnd::StartFailed(message) => {
                    return Outcome::Failed {
                        reason: "StartFailed".into(),
                        message,
                    }
                }
            }
        }
    }

    async fn boot_once(&mut self, drives: &[api::models::Drive], tap: Option<&Tap>) -> BootEnd {
        let nic = tap
            .zip(self.spec.network.as_ref())
            .map(|(tap, net)| (tap.as_raw_fd(), net.mac.as_str()));
        let mut vmm = match VmmProcess::spawn(&self.vmm_bin, &self.socket, &self.spec.name, nic) {
            Ok(v) => v,
            Err(e) => return BootEnd::StartFailed(e.to_string()),
        };
        if let Err(e) = vmm.configure_and_start(&self.spec, drives).await {
            vmm.stop(Duration::from_secs(5)).await;
            return BootEnd::StartFailed(e.to_string());
        }
        self.state.set_phase(LauncherPhase::Running);
        let grace = Duration::from_secs(self.spec.grace_period_seconds);
        let mut deadline: Option<tokio::time::Instant> = None;
        if *self.stop.borrow() {
            deadline = Some(self.begin_shutdown(&vmm, grace).await);
        }
        let mut revision = 0;
        let end = loop {
            let client = vmm.client.clone();
            let wait_ms = Duration::from_secs(60);
            tokio::select! {
                polled = client.state(Some(revision), wait_ms) => match polled {
                    Ok(st) => {
                        revision = st.revision;
                        self.state.update(|s| {
                            s.boot_time_ms = st.boot_time_us.map(|us| us / 1000);
                            s.paused = st.state == KilnRunState::Paused;
                        });
                        if let (KilnRunState::Exited, Some(exit)) = (st.state, st.exit) {
                            break if exit.reason == "Reboot" {
                                BootEnd::Reboot
                            } else if exit.reason == "Signal" {
                                BootEnd::Stopped
                            } else {
                                BootEnd::Exit { reason: exit.reason, message: exit.message, code: exit.exit_code }
                            };
                        }
                    }
                    // kiln-vmm is gone (killed?): its exit status below says how.
                    Err(e) => {
                        if let Ok(Some(status)) = vmm.child.try_wait() {
                            break killed(status);
                        }
                        warn!("reading kiln-vmm's state: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                status = vmm.child.wait() => {
                    break match status {
                        Ok(s) => killed(s),
                        Err(e) => BootEnd::Exit { reason: "Killed".into(), message: format!("waiting for kiln-vmm: {e}"), code: -1 },
                    };
                }
                Some(cmd) = self.commands.recv() => {
                    if let Command::Fail { reason, message } = cmd {
                        break BootEnd::Exit { reason, message, code: 1 };
                    }
                    self.command(&vmm, cmd).await
                }
                changed = self.stop.changed(), if deadline.is_none() => {
                    if changed.is_ok() && *self.stop.borrow() {
                        deadline = Some(self.begin_shutdown(&vmm, grace).await);
                    }
                }
                _ = sleep_until(deadline) => {
                    info!("the guest did not shut down within its grace period ({grace:?}); stopping it");
                    break BootEnd::Stopped;
                }
            }
        };
        self.state.update(|s| {
            s.phase = LauncherPhase::Ended;
            s.paused = false;
            if let BootEnd::Exit {
                reason, message, ..
            } = &end
            {
                s.exit_reason = Some(reason.clone());
                s.message = Some(message.clone());
            }
        });
        vmm.stop(Duration::from_secs(10)).await;
        end
    }

    /// Asks the guest to shut down; returns when to stop waiting for it.
    async fn begin_shutdown(&self, vmm: &VmmProcess, grace: Duration) -> tokio::time::Instant {
        self.state.set_phase(LauncherPhase::Stopping);
        let now = tokio::time::Instant::now();
        if grace.is_zero() {
            return now;
        }
        let c = &vmm.client;
        let _ = c
            .send(
                Method::PATCH,
                "/vm",
                &Vm {
                    state: VmStateRequest::Resumed,
                },
            )
            .await;
        let cad = InstanceActionInfo {
            action_type: ActionType::SendCtrlAltDel,
        };
        match c.send(Method::PUT, "/actions", &cad).await {
            Ok(()) => {
                info!("asked the guest to shut down (Ctrl-Alt-Del); waiting up to {grace:?}");
                now + grace
            }
            Err(e) => {
                info!("the guest cannot be asked to shut down ({e}); stopping it now");
                now
            }
        }
    }

    async fn command(&self, vmm: &VmmProcess, cmd: Command) {
        let (state, reply) = match cmd {
            Command::Pause(r) => (VmStateRequest::Paused, r),
            Command::Unpause(r) => (VmStateRequest::Resumed, r),
            Command::Fail { .. } => return,
        };
        let paused = matches!(state, VmStateRequest::Paused);
        let result = vmm
            .client
            .send(Method::PATCH, "/vm", &Vm { state })
            .await
            .map_err(|e| e.to_string());
        if result.is_ok() {
            self.state.update(|s| s.paused = paused);
        }
        let _ = reply.send(result);
    }
}

fn killed(status: std::process::ExitStatus) -> BootEnd {
    use std::os::unix::process::ExitStatusExt;
    let message = match status.signal() {
        Some(sig) => format!("kiln-vmm was killed by signal {sig}"),
        None => format!("kiln-vmm ended unexpectedly ({status})"),
    };
    BootEnd::Exit {
        reason: "Killed".into(),
        message,
        code: status.code().unwrap_or(-1),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
