//! Each run strategy's reaction to each kind of VMI, and the back-off.

use super::*;

fn vmi(phase: VmiPhase) -> VmiView {
    VmiView {
        uid: "u1".into(),
        phase,
        deleting: false,
        ran_seconds: Some(5),
    }
}

fn stop(uid: &str) -> StateChangeRequest {
    StateChangeRequest {
        action: StateChangeAction::Stop,
        uid: Some(uid.into()),
        data: None,
    }
}

fn start() -> StateChangeRequest {
    StateChangeRequest {
        action: StateChangeAction::Start,
        uid: None,
        data: None,
    }
}

const NO_WAIT: Duration = Duration::ZERO;

#[test]
fn always_replaces_any_ended_run_after_the_backoff() {
    let p = |v: Option<&VmiView>, b| {
        plan(RunStrategy::Always, Some(RunStrategy::Always), &[], v, b).act
    };
    assert_eq!(p(None, NO_WAIT), Act::Start);
    assert_eq!(
        p(None, Duration::from_secs(7)),
        Act::WaitBackoff(Duration::from_secs(7))
    );
    assert_eq!(p(Some(&vmi(VmiPhase::Running)), NO_WAIT), Act::Nothing);
    assert_eq!(p(Some(&vmi(VmiPhase::Succeeded)), NO_WAIT), Act::Stop);
    assert_eq!(p(Some(&vmi(VmiPhase::Failed)), NO_WAIT), Act::Stop);
    // restart = stop this run, then start
    let r = plan(
        RunStrategy::Always,
        None,
        &[stop("u1"), start()],
        Some(&vmi(VmiPhase::Running)),
        NO_WAIT,
    );
    assert_eq!(r.act, Act::Stop);
}

#[test]
fn rerun_on_failure_restarts_failures_only() {
    let rs = RunStrategy::RerunOnFailure;
    let failed = plan(rs, Some(rs), &[], Some(&vmi(VmiPhase::Failed)), NO_WAIT);
    assert_eq!(
        failed,
        Plan {
            act: Act::Stop,
            add_start_request: true
        }
    );
    let done = plan(rs, Some(rs), &[], Some(&vmi(VmiPhase::Succeeded)), NO_WAIT);
    assert_eq!(
        done,
        Plan {
            act: Act::Stop,
            add_start_request: false
        }
    );
    assert_eq!(
        plan(rs, Some(rs), &[], None, NO_WAIT).act,
        Act::Nothing,
        "after a power-off it stays stopped"
    );
    assert_eq!(
        plan(rs, Some(rs), &[start()], None, NO_WAIT).act,
        Act::Start
    );
    assert_eq!(
        plan(rs, None, &[], None, NO_WAIT).act,
        Act::Start,
        "a new VM starts"
    );
    assert_eq!(
        plan(rs, Some(RunStrategy::Halted), &[], None, NO_WAIT).act,
        Act::Start
    );
    assert_eq!(
        plan(rs, Some(rs), &[], Some(&vmi(VmiPhase::Running)), NO_WAIT).act,
        Act::Nothing
    );
}

#[test]
fn manual_acts_only_on_requests_and_halted_and_once_as_kubevirt() {
    let m = RunStrategy::Manual;
    assert_eq!(plan(m, Some(m), &[], None, NO_WAIT).act, Act::Nothing);
    assert_eq!(plan(m, Some(m), &[start()], None, NO_WAIT).act, Act::Start);
    assert_eq!(
        plan(m, Some(m), &[], Some(&vmi(VmiPhase::Failed)), NO_WAIT).act,
        Act::Nothing
    );
    assert_eq!(
        plan(
            m,
            Some(m),
            &[stop("u1")],
            Some(&vmi(VmiPhase::Running)),
            NO_WAIT
        )
        .act,
        Act::Stop
    );
    assert_eq!(
        plan(
            m,
            Some(m),
            &[stop("other")],
            Some(&vmi(VmiPhase::Running)),
            NO_WAIT
        )
        .act,
        Act::Nothing
    );
    let h = RunStrategy::Halted;
    assert_eq!(
        plan(h, Some(h), &[], Some(&vmi(VmiPhase::Running)), NO_WAIT).act,
        Act::Stop
    );
    assert_eq!(plan(h, Some(h), &[], None, NO_WAIT).act, Act::Nothing);
    let o = RunStrategy::Once;
    assert_eq!(plan(o, None, &[], None, NO_WAIT).act, Act::Start);
    assert_eq!(
        plan(o, Some(o), &[], Some(&vmi(VmiPhase::Failed)), NO_WAIT).act,
        Act::Nothing
    );
    assert_eq!(
        plan(o, Some(o), &[], Some(&vmi(VmiPhase::Succeeded)), NO_WAIT).act,
        Act::Nothing
    );
    let mut deleting = vmi(VmiPhase::Running);
    deleting.deleting = true;
    assert_eq!(
        plan(h, Some(h), &[], Some(&deleting), NO_WAIT).act,
        Act::Nothing,
        "already stopping"
    );
}

#[test]
fn requests_are_done_in_order() {
    let running = vmi(VmiPhase::Running);
    let mut next = vmi(VmiPhase::Scheduling);
    next.uid = "u2".into();
    let restart = [stop("u1"), start()];
    assert_eq!(satisfied(&restart, Some(&running)), 0);
    assert_eq!(satisfied(&restart, None), 1, "stopped, not started yet");
    assert_eq!(satisfied(&restart, Some(&next)), 2);
    assert_eq!(satisfied(&[start()], Some(&vmi(VmiPhase::Succeeded))), 0);
}

#[test]
fn backoff_grows_with_failures_and_resets_after_a_long_run() {
    assert_eq!(backoff_seconds(1, 0.0), 10);
    assert_eq!(backoff_seconds(1, 1.0), 16);
    assert_eq!(backoff_seconds(2, 0.0), 40);
    assert_eq!(backoff_seconds(10, 0.5), MAX_BACKOFF_SECONDS);
    let a = RunStrategy::Always;
    let failed = vmi(VmiPhase::Failed);
    assert_eq!(
        next_start_failure(a, None, Some(&failed)),
        StartFailureChange::Count {
            failures: 1,
            uid: "u1".into()
        }
    );
    let old = StartFailure {
        consecutive_fail_count: 1,
        last_failed_vmi_uid: Some("u1".into()),
        retry_after_timestamp: None,
    };
    assert_eq!(
        next_start_failure(a, Some(&old), Some(&failed)),
        StartFailureChange::Keep,
        "counted once"
    );
    let mut second = failed.clone();
    second.uid = "u2".into();
    assert_eq!(
        next_start_failure(a, Some(&old), Some(&second)),
        StartFailureChange::Count {
            failures: 2,
            uid: "u2".into()
        }
    );
    let mut long = vmi(VmiPhase::Running);
    long.ran_seconds = Some(CRASH_WINDOW_SECONDS);
    assert_eq!(
        next_start_failure(a, Some(&old), Some(&long)),
        StartFailureChange::Clear
    );
    assert_eq!(
        next_start_failure(RunStrategy::Manual, Some(&old), None),
        StartFailureChange::Clear
    );
}
