//! Why a VM ended, how that maps to kiln-vmm's exit status, and the one place that records it.

use std::sync::Mutex;

use devices::{ExitSink, GuestExitRequest};
use tracing::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// BIOS data area word Linux sets to 0x1234 before a *warm* reset; Kiln's platform command line
/// (`reboot=k,panic_warm`) makes the kernel ask for a warm reset only when it panics.
pub const WARM_RESET_FLAG_ADDR: u64 = 0x472;
pub const WARM_RESET_MAGIC: u16 = 0x1234;

/// Exit statuses of kiln-vmm (documented in the README).
pub mod exit_code {
    /// Guest powered off or rebooted.
    pub const OK: i32 = 0;
    /// The VMM could not set up or run the VM (bad configuration, KVM failure).
    pub const VMM_ERROR: i32 = 1;
    /// The guest kernel panicked.
    pub const GUEST_PANIC: i32 = 3;
    /// A vCPU failed: emulation failure, KVM internal error, or stuck past the timeout.
    pub const VCPU_FAILURE: i32 = 4;
    /// The guest wrote a value above 127 to the debug-exit port: passed on, it would read as
    /// "stopped by signal (N - 128)". The value itself is in the log and `/kiln/v1/state`.
    pub const GUEST_STATUS_ABOVE_127: i32 = 5;
    /// The highest debug-exit value passed on as kiln-vmm's own status.
    pub const GUEST_STATUS_MAX: u8 = 127;
    /// Stopped by signal N: 128 + N.
    pub const SIGNAL_BASE: i32 = 128;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest wrote this status to the debug-exit port.
    PowerOff(u8),
    /// The guest reset the machine (i8042 or triple fault); classified as reboot or panic
    /// once the vCPUs are stopped.
    Reset {
        triple_fault: bool,
    },
    Reboot {
        triple_fault: bool,
    },
    Panic,
    /// A vCPU failed; the message names the vCPU and what happened.
    VcpuFailure(String),
    /// A vCPU made no progress for the configured time.
    VcpuStuck(String),
    /// The VMM was asked to stop.
    Signal(i32),
}

impl VmExit {
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::PowerOff(code) if *code <= exit_code::GUEST_STATUS_MAX => i32::from(*code),
            VmExit::PowerOff(_) => exit_code::GUEST_STATUS_ABOVE_127,
            VmExit::Reset { .. } | VmExit::Reboot { .. } => exit_code::OK,
            VmExit::Panic => exit_code::GUEST_PANIC,
            VmExit::VcpuFailure(_) | VmExit::VcpuStuck(_) => exit_code::VCPU_FAILURE,
            VmExit::Signal(sig) => exit_code::SIGNAL_BASE + sig,
        }
    }

    /// One line for the operator.
    pub fn describe(&self) -> String {
        match self {
            VmExit::PowerOff(code) => format!("guest powered off (status {code})"),
            VmExit::Reset { .. } => "guest reset".into(),
            VmExit::Reboot {
                triple_fault: false,
            } => "guest rebooted".into(),
            VmExit::Reboot { triple_fault: true } => "guest reset by triple fault".into(),
            VmExit::Panic => "guest kernel panicked".into(),
            VmExit::VcpuFailure(m) => format!("vCPU failure: {m}"),
            VmExit::VcpuStuck(m) => format!("vCPU stuck: {m}"),
            VmExit::Signal(sig) => format!("stopped by signal {sig}"),
        }
    }

    /// Turns a reset into a reboot or a panic by reading the warm-reset flag.
    pub fn classify(self, mem: &GuestMemoryMmap) -> VmExit {
        match self {
            VmExit::Reset { triple_fault } => {
                let flag: u16 = mem
                    .read_obj(GuestAddress(WARM_RESET_FLAG_ADDR))
                    .unwrap_or(0);
                debug!("reset with warm-reset flag {flag:#x}");
                if flag == WARM_RESET_MAGIC {
                    VmExit::Panic
                } else {
                    VmExit::Reboot { triple_fault }
                }
            }
            other => other,
        }
    }
}

/// Records the first reason the VM should end and wakes the VMM's event loop.
pub struct ExitCoordinator {
    outcome: Mutex<Option<VmExit>>,
    event: EventFd,
}

impl ExitCoordinator {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitCoordinator {
            outcome: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The first request wins; later ones are logged and dropped.
    pub fn request(&self, exit: VmExit) {
        let mut slot = match self.outcome.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slot.is_none() {
            debug!("VM exit requested: {exit:?}");
            *slot = Some(exit);
            // A full eventfd counter still wakes the loop; nothing to handle.
            let _ = self.event.write(1);
        } else {
            debug!("VM exit already requested; ignoring {exit:?}");
        }
    }

    pub fn outcome(&self) -> Option<VmExit> {
        match self.outcome.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

impl ExitSink for ExitCoordinator {
    fn request_exit(&self, request: GuestExitRequest) {
        self.request(match request {
            GuestExitRequest::PowerOff(code) => VmExit::PowerOff(code),
            GuestExitRequest::Reset => VmExit::Reset {
                triple_fault: false,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins_and_wakes_the_loop() {
        let c = ExitCoordinator::new().unwrap();
        assert_eq!(c.outcome(), None);
        c.request_exit(GuestExitRequest::PowerOff(0));
        c.request(VmExit::Signal(15));
        assert_eq!(c.outcome(), Some(VmExit::PowerOff(0)));
        assert_eq!(c.event().read().unwrap(), 1);
    }

    #[test]
    fn warm_reset_flag_means_panic() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let reset = VmExit::Reset {
            triple_fault: false,
        };
        assert_eq!(
            reset.clone().classify(&mem),
            VmExit::Reboot {
                triple_fault: false
            }
        );
        mem.write_obj(WARM_RESET_MAGIC, GuestAddress(WARM_RESET_FLAG_ADDR))
            .unwrap();
        assert_eq!(reset.classify(&mem), VmExit::Panic);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(VmExit::PowerOff(0).exit_code(), 0);
        assert_eq!(VmExit::PowerOff(42).exit_code(), 42);
        assert_eq!(VmExit::PowerOff(127).exit_code(), 127);
        // Review defect (issue 14): a guest writing 143 must not look like SIGTERM.
        assert_eq!(
            VmExit::PowerOff(143).exit_code(),
            exit_code::GUEST_STATUS_ABOVE_127
        );
        assert_eq!(
            VmExit::PowerOff(255).exit_code(),
            exit_code::GUEST_STATUS_ABOVE_127
        );
        assert_eq!(VmExit::Panic.exit_code(), exit_code::GUEST_PANIC);
        assert_eq!(VmExit::Signal(15).exit_code(), 143);
        assert_eq!(
            VmExit::VcpuStuck("x".into()).exit_code(),
            exit_code::VCPU_FAILURE
        );
    }
}
