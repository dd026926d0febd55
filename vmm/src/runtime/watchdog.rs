//! Stuck-vCPU watchdog: kicks every vCPU once a second and fails the VM when one has been
//! inside KVM_RUN, or runnable in its kernel with interrupts off at one unchanging RIP, for
//! longer than the timeout.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::vm_exit::VmExit;
use crate::vstate::vcpu_loop::{kick_signal, stamp, VcpuHealth};

pub const TICK: Duration = Duration::from_secs(1);

pub struct Watchdog {
    timeout: Duration,
    start: Instant,
    vcpus: Vec<(Arc<VcpuHealth>, libc::pthread_t)>,
}

/// Sends the kick signal to a vCPU thread (KVM_RUN returns EINTR).
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a vCPU thread the VMM created and has not joined yet.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}

impl Watchdog {
    pub fn new(
        timeout: Duration,
        start: Instant,
        vcpus: Vec<(Arc<VcpuHealth>, libc::pthread_t)>,
    ) -> Watchdog {
        Watchdog {
            timeout,
            start,
            vcpus,
        }
    }

    /// One tick: judge the last samples, then kick every vCPU for fresh ones.
    pub fn tick(&self) -> Option<VmExit> {
        let now = stamp(self.start);
        let limit = self.timeout.as_millis() as u64;
        let verdict = self
            .vcpus
            .iter()
            .enumerate()
            .find_map(|(index, (health, _))| judge(index, health, now, limit));
        for (_, thread) in &self.vcpus {
            kick(*thread);
        }
        verdict
    }
}

fn judge(index: usize, health: &VcpuHealth, now: u64, limit_ms: u64) -> Option<VmExit> {
    let secs = |since: u64| (now.saturating_sub(since)) as f64 / 1000.0;
    let in_guest = health.in_guest_since.load(Ordering::Acquire);
    if in_guest != 0 && now.saturating_sub(in_guest) > limit_ms {
        return Some(VmExit::VcpuStuck(format!(
            "vCPU {index} has not come back from KVM_RUN for {:.1} s, even when kicked (a hung hypercall or a KVM bug; see the host's `dmesg | tail`)",
            secs(in_guest)
        )));
    }
    let stalled = health.stalled_since.load(Ordering::Acquire);
    if stalled != 0 && now.saturating_sub(stalled) > limit_ms {
        return Some(VmExit::VcpuStuck(format!(
            "vCPU {index} has been runnable at RIP {:#x} in its kernel with interrupts off, without moving, for {:.1} s",
            health.last_rip.load(Ordering::Acquire),
            secs(stalled)
        )));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_long_kvm_run_and_stalls_only_past_the_limit() {
        let h = VcpuHealth::default();
        assert_eq!(judge(0, &h, 100_000, 30_000), None);
        h.in_guest_since.store(80_000, Ordering::Release);
        assert_eq!(judge(0, &h, 100_000, 30_000), None);
        assert!(
            matches!(judge(0, &h, 111_000, 30_000), Some(VmExit::VcpuStuck(m)) if m.contains("KVM_RUN"))
        );
        h.in_guest_since.store(0, Ordering::Release);
        h.stalled_since.store(50_000, Ordering::Release);
        h.last_rip.store(0xffff_ffff_8100_0000, Ordering::Release);
        assert!(
            matches!(judge(1, &h, 90_000, 30_000), Some(VmExit::VcpuStuck(m)) if m.contains("vCPU 1") && m.contains("0xffffffff81000000"))
        );
    }
}
