//! Pausing vCPUs: a paused vCPU thread waits outside KVM_RUN until it is resumed or the VM stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shared between the VMM loop (which pauses and resumes) and every vCPU thread.
#[derive(Default)]
pub struct PauseControl {
    requested: AtomicBool,
    /// vCPU threads currently parked.
    parked: Mutex<usize>,
    changed: Condvar,
}

impl PauseControl {
    fn parked(&self) -> MutexGuard<'_, usize> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checked by a vCPU thread before every KVM_RUN.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// vCPU side: waits while a pause is requested, unless the VM is stopping.
    pub fn park(&self, stop: &AtomicBool) {
        let mut parked = self.parked();
        *parked += 1;
        self.changed.notify_all();
        while self.requested() && !stop.load(Ordering::Acquire) {
            parked = match self.changed.wait_timeout(parked, Duration::from_millis(50)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        *parked -= 1;
        self.changed.notify_all();
    }

    /// VMM side: asks every vCPU to park, calling `kick` (which should force the vCPUs out of
    /// KVM_RUN) until all `count` are parked or `timeout` passes. True when all parked.
    pub fn pause(&self, count: usize, timeout: Duration, mut kick: impl FnMut()) -> bool {
        self.requested.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        loop {
            kick();
            let parked = self.parked();
            if *parked >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let _ = self.changed.wait_timeout(parked, Duration::from_millis(1));
        }
    }

    /// VMM side: lets every parked vCPU go back to the guest.
    pub fn resume(&self) {
        self.requested.store(false, Ordering::Release);
        let _guard = self.parked();
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_park_until_resumed_and_leave_when_stopped() {
        let ctl = Arc::new(PauseControl::default());
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (ctl, stop, runs) = (ctl.clone(), stop.clone(), runs.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        if ctl.requested() {
                            ctl.park(&stop);
                            continue;
                        }
                        runs.fetch_add(1, Ordering::Relaxed);
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        assert!(ctl.pause(2, Duration::from_secs(5), || {}));
        let frozen = runs.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            runs.load(Ordering::Relaxed),
            frozen,
            "paused threads must not run"
        );
        ctl.resume();
        let deadline = Instant::now() + Duration::from_secs(5);
        while runs.load(Ordering::Relaxed) == frozen && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(
            runs.load(Ordering::Relaxed) > frozen,
            "resumed threads run again"
        );
        assert!(ctl.pause(2, Duration::from_secs(5), || {}));
        stop.store(true, Ordering::Release);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*ctl.parked(), 0);
    }
}
