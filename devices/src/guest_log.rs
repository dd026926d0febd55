//! Log lines a guest can cause at will (malformed descriptors, bad register writes) are rate
//! limited per call site, and what is held back is counted for the metrics instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines each call site may log per window.
pub const LINES_PER_WINDOW: u32 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Guest-caused lines held back since kiln-vmm started, over every call site.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Guest-caused log lines held back so far (reported in the metrics).
pub fn suppressed_lines() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

struct Window {
    started: Option<Instant>,
    logged: u32,
    held_back: u64,
}

/// One call site's budget; see [`guest_warn!`](crate::guest_warn).
pub struct LogLimiter(Mutex<Window>);

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    pub const fn new() -> Self {
        LogLimiter(Mutex::new(Window {
            started: None,
            logged: 0,
            held_back: 0,
        }))
    }

    /// Whether a line may be logged at `now`; `Some(n)` when it may, `n` being the lines held
    /// back in the window before (to be mentioned with it).
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut w = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if w.started.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            w.started = Some(now);
            w.logged = 0;
        }
        if w.logged < LINES_PER_WINDOW {
            w.logged += 1;
            return Some(std::mem::take(&mut w.held_back));
        }
        w.held_back += 1;
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `warn!` for what a guest controls: at most [`LINES_PER_WINDOW`] lines per [`WINDOW`] from
/// each call site; the rest are counted (`guest_log::suppressed_lines`) and their number is
/// given with the next line that is logged.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::guest_log::LogLimiter = $crate::guest_log::LogLimiter::new();
        if let Some(held_back) = LIMIT.allow(std::time::Instant::now()) {
            if held_back > 0 {
                tracing::warn!("({held_back} more like the next line were not logged)");
            }
            tracing::warn!($($arg)*);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_logs_a_few_lines_and_counts_the_rest() {
        let l = LogLimiter::new();
        let t0 = Instant::now();
        let before = suppressed_lines();
        let allowed = (0..1000).filter(|_| l.allow(t0).is_some()).count();
        assert_eq!(allowed, LINES_PER_WINDOW as usize);
        assert!(suppressed_lines() - before >= 1000 - u64::from(LINES_PER_WINDOW));
        // The next window's first line reports what the last one held back.
        assert_eq!(
            l.allow(t0 + WINDOW),
            Some(1000 - u64::from(LINES_PER_WINDOW))
        );
        assert_eq!(l.allow(t0 + WINDOW), Some(0));
    }
}
