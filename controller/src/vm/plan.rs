//! What a VM's run strategy asks for, given its VMI and its start/stop requests: KubeVirt's
//! meanings exactly (`pkg/virt-controller/watch/vm/vm.go`), as a pure function, plus the
//! CrashLoopBackOff back-off between failed runs.

use std::time::Duration;

use kiln_crd::vm::{StartFailure, StateChangeAction, StateChangeRequest};
use kiln_crd::{RunStrategy, VmiPhase};

/// The VMI as the plan needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiView {
    pub uid: String,
    pub phase: VmiPhase,
    pub deleting: bool,
    /// Seconds it ran (from Running to now or to its end); None if it never ran.
    pub ran_seconds: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    Nothing,
    /// Create a VMI from the template.
    Start,
    /// Delete the VMI (it stops gracefully).
    Stop,
    /// A start is due but the back-off after failed runs has this much left.
    WaitBackoff(Duration),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub act: Act,
    /// Append a Start request (RerunOnFailure restarting a failed run: its stop and start).
    pub add_start_request: bool,
}

fn stop_requested(requests: &[StateChangeRequest], uid: &str) -> bool {
    requests
        .first()
        .is_some_and(|r| r.action == StateChangeAction::Stop && r.uid.as_deref() == Some(uid))
}

fn start_requested(requests: &[StateChangeRequest]) -> bool {
    requests
        .iter()
        .any(|r| r.action == StateChangeAction::Start)
}

/// The plan for a VM with run strategy `strategy` (and `acted_on`, the strategy the controller
/// last acted on), its start/stop requests, its VMI and the back-off time left.
pub fn plan(
    strategy: RunStrategy,
    acted_on: Option<RunStrategy>,
    requests: &[StateChangeRequest],
    vmi: Option<&VmiView>,
    backoff_left: Duration,
) -> Plan {
    let start = || {
        if backoff_left.is_zero() {
            Act::Start
        } else {
            Act::WaitBackoff(backoff_left)
        }
    };
    let none = Plan {
        act: Act::Nothing,
        add_start_request: false,
    };
    let act = |act| Plan {
        act,
        add_start_request: false,
    };
    match (strategy, vmi) {
        (RunStrategy::Always, Some(v))
            if !v.deleting && (stop_requested(requests, &v.uid) || v.phase.is_final()) =>
        {
            act(Act::Stop)
        }
        (RunStrategy::Always, Some(_)) => none,
        (RunStrategy::Always, None) => act(start()),
        (RunStrategy::RerunOnFailure, Some(v)) => {
            let failed = v.phase == VmiPhase::Failed;
            if !v.deleting && (stop_requested(requests, &v.uid) || v.phase.is_final()) {
                Plan {
                    act: Act::Stop,
                    add_start_request: failed && !start_requested(requests),
                }
            } else {
                none
            }
        }
        // Starts when asked, or when it comes from another strategy (or is new).
        (RunStrategy::RerunOnFailure, None)
            if start_requested(requests) || acted_on != Some(RunStrategy::RerunOnFailure) =>
        {
            act(start())
        }
        (RunStrategy::RerunOnFailure, None) => none,
        (RunStrategy::Manual, Some(v)) if !v.deleting && stop_requested(requests, &v.uid) => {
            act(Act::Stop)
        }
        (RunStrategy::Manual, Some(_)) => none,
        (RunStrategy::Manual, None) if start_requested(requests) => act(Act::Start),
        (RunStrategy::Manual, None) => none,
        (RunStrategy::Halted, Some(v)) if !v.deleting => act(Act::Stop),
        (RunStrategy::Halted, _) => none,
        (RunStrategy::Once, None) => act(start()),
        (RunStrategy::Once, Some(_)) => none,
    }
}

/// How many requests at the head of the list are done: a Stop once its VMI is gone, a Start
/// once a running (non-final) VMI exists.
pub fn satisfied(requests: &[StateChangeRequest], vmi: Option<&VmiView>) -> usize {
    let mut done = 0;
    for r in requests {
        let ok = match r.action {
            StateChangeAction::Stop => vmi.is_none_or(|v| Some(v.uid.as_str()) != r.uid.as_deref()),
            StateChangeAction::Start => vmi.is_some_and(|v| !v.phase.is_final() && !v.deleting),
        };
        if !ok {
            break;
        }
        done += 1;
    }
    done
}

/// A run that fails within this long of starting counts towards the back-off (KubeVirt counts
/// only runs that never reached Running, which here would be almost none: kiln-vmm starts in
/// milliseconds, so a guest that panics at every boot would restart without pause).
pub const CRASH_WINDOW_SECONDS: i64 = 60;
/// KubeVirt's longest back-off.
pub const MAX_BACKOFF_SECONDS: u64 = 300;

/// KubeVirt's back-off after `failures` consecutive failed runs: 10 s × failures², plus up to
/// half again at random (so that failing VMs spread out), at most 5 minutes.
pub fn backoff_seconds(failures: u32, random_fraction: f64) -> u64 {
    let base = 10u64.saturating_mul(u64::from(failures.max(1)).pow(2));
    let jitter = ((base / 2 + 1) as f64 * random_fraction.clamp(0.0, 1.0)) as u64;
    (base + jitter).min(MAX_BACKOFF_SECONDS)
}

/// The start-failure record after seeing `vmi`: reset once a run lasted past the crash window
/// (or the strategy never restarts), counted once per failed run inside it.
pub fn next_start_failure(
    strategy: RunStrategy,
    old: Option<&StartFailure>,
    vmi: Option<&VmiView>,
) -> StartFailureChange {
    let restarts = matches!(
        strategy,
        RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once
    );
    let lasted = vmi.is_some_and(|v| v.ran_seconds.is_some_and(|s| s >= CRASH_WINDOW_SECONDS));
    if !restarts || lasted {
        return if old.is_some() {
            StartFailureChange::Clear
        } else {
            StartFailureChange::Keep
        };
    }
    match vmi {
        Some(v) if v.phase == VmiPhase::Failed => {
            if old.is_some_and(|o| o.last_failed_vmi_uid.as_deref() == Some(v.uid.as_str())) {
                StartFailureChange::Keep
            } else {
                StartFailureChange::Count {
                    failures: old.map_or(0, |o| o.consecutive_fail_count) + 1,
                    uid: v.uid.clone(),
                }
            }
        }
        _ => StartFailureChange::Keep,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartFailureChange {
    Keep,
    Clear,
    Count { failures: u32, uid: String },
}

#[cfg(test)]
mod tests;
