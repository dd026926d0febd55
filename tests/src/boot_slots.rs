//! A bound on Linux guests booting at once: on these hosts every guest kernel runs in KVM's
//! instruction emulator, and more boots than cores slow each one far more than linearly.

use std::sync::{Condvar, Mutex, PoisonError};

/// Counting slots; a test part holds one per Linux guest while that guest boots.
pub struct BootSlots {
    total: usize,
    free: Mutex<usize>,
    freed: Condvar,
}

/// Slots held until dropped.
pub struct BootSlot<'a> {
    slots: &'a BootSlots,
    n: usize,
}

impl BootSlots {
    /// `KILN_TEST_BOOTS` slots, or as many as the host's cores: measured on two emulating
    /// cores, two boots at once took 1.1× one boot's time each, three 1.9×.
    pub fn from_env() -> BootSlots {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let n = std::env::var("KILN_TEST_BOOTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(cores);
        BootSlots::new(n)
    }

    pub fn new(n: usize) -> BootSlots {
        let n = n.max(1);
        BootSlots {
            total: n,
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    /// Waits for `n` slots at once (guests that must run side by side), at most all of them.
    pub fn take(&self, n: usize) -> BootSlot<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let n = n.clamp(1, self.total);
        loop {
            if *free >= n {
                *free -= n;
                return BootSlot { slots: self, n };
            }
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for BootSlot<'_> {
    fn drop(&mut self) {
        let mut free = self
            .slots
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *free += self.n;
        self.slots.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn never_more_holders_than_slots() {
        let slots = BootSlots::new(3);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..12 {
                let (slots, inside, most) = (&slots, &inside, &most);
                s.spawn(move || {
                    let want = 1 + i % 2;
                    let _slot = slots.take(want);
                    let now = inside.fetch_add(want, Ordering::SeqCst) + want;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    inside.fetch_sub(want, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(inside.load(Ordering::SeqCst), 0);
        let most = most.load(Ordering::SeqCst);
        assert!(
            (2..=3).contains(&most),
            "at most 3 slots held at once, saw {most}"
        );
    }

    #[test]
    fn asking_for_more_than_all_takes_all() {
        let slots = BootSlots::new(2);
        drop(slots.take(5));
        let _both = slots.take(2);
    }
}
