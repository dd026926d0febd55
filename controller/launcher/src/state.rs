//! What the launcher reports, shared between the supervisor (which changes it) and the control
//! endpoint (whose readers wait for the next revision instead of polling).

use kiln_crd::launch::{LauncherPhase, LauncherState};
use tokio::sync::watch;

#[derive(Clone)]
pub struct SharedState {
    tx: watch::Sender<LauncherState>,
}

impl SharedState {
    pub fn new() -> SharedState {
        SharedState {
            tx: watch::Sender::new(LauncherState::default()),
        }
    }

    pub fn get(&self) -> LauncherState {
        self.tx.borrow().clone()
    }

    /// Changes the state; readers see a new revision only if something changed.
    pub fn update(&self, change: impl FnOnce(&mut LauncherState)) {
        self.tx.send_if_modified(|s| {
            let before = s.clone();
            change(s);
            if *s == before {
                return false;
            }
            s.revision = before.revision + 1;
            true
        });
    }

    pub fn set_phase(&self, phase: LauncherPhase) {
        self.update(|s| s.phase = phase);
    }

    /// Waits until the revision is past `after` (or `limit` passes); returns the state then.
    pub async fn wait_past(&self, after: u64, limit: std::time::Duration) -> LauncherState {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| s.revision > after)).await;
        let state = rx.borrow().clone();
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn readers_wait_for_a_real_change() {
        let s = SharedState::new();
        s.update(|st| st.phase = LauncherPhase::Running);
        let rev = s.get().revision;
        assert_eq!(rev, 1);
        s.update(|st| st.phase = LauncherPhase::Running); // no change, no new revision
        assert_eq!(s.get().revision, 1);
        let t = tokio::time::Instant::now();
        let same = s.wait_past(rev, Duration::from_millis(50)).await;
        assert_eq!(same.revision, 1);
        assert!(t.elapsed() >= Duration::from_millis(50));
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_past(rev, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        s.update(|st| st.paused = true);
        let seen = waiter.await.unwrap();
        assert!(seen.paused);
        assert_eq!(seen.revision, 2);
    }
}
