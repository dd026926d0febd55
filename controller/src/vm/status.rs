//! A VM's status from its VMI: KubeVirt's printable status (first match wins, in KubeVirt's
//! order), `created`, `ready`, and the Ready, Paused and Failure conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kiln_crd::conditions::{self, kind, Condition};
use kiln_crd::vm::VirtualMachineStatus;
use kiln_crd::{RunStrategy, VirtualMachine, VirtualMachineInstance, VmiPhase};

/// What the reconcile found beyond the VM and its VMI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// A start is due (the plan starts, or waits for the back-off).
    pub start_expected: bool,
    /// The VMI is being stopped on purpose (Halted, a stop request).
    pub stop_expected: bool,
    /// Some claim of the template is Pending.
    pub claims_pending: bool,
    /// The VM's DataVolumes are not all ready: the printable status and why.
    pub provisioning: Option<(&'static str, String)>,
    /// The VM's own error (a VMI that could not be created), as Failure=True.
    pub failure: Option<(String, String)>,
}

fn vmi_condition<'a>(
    vmi: Option<&'a VirtualMachineInstance>,
    type_: &str,
) -> Option<&'a Condition> {
    conditions::find(&vmi?.status.as_ref()?.conditions, type_)
}

fn sync_reason(vmi: Option<&VirtualMachineInstance>) -> Option<String> {
    vmi_condition(vmi, kind::SYNCHRONIZED)
        .filter(|c| c.status == "False")
        .and_then(|c| c.reason.clone())
}

pub fn printable(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    facts: &Facts,
) -> &'static str {
    let phase = vmi.map(|v| v.status.as_ref().map(|s| s.phase).unwrap_or_default());
    let is_final = phase.is_some_and(VmiPhase::is_final);
    let paused = vmi_condition(vmi, kind::PAUSED).is_some_and(Condition::is_true);
    let deleting = vmi.is_some_and(|v| v.metadata.deletion_timestamp.is_some());
    let strategy = vm.spec.strategy();
    let failures = vm
        .status
        .as_ref()
        .and_then(|s| s.start_failure.as_ref())
        .is_some_and(|f| f.consecutive_fail_count > 0);
    let unschedulable = vmi_condition(vmi, kind::POD_SCHEDULED)
        .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
    let sync = sync_reason(vmi);
    if vm.metadata.deletion_timestamp.is_some() {
        "Terminating"
    } else if vmi.is_some() && !is_final && (deleting || facts.stop_expected) {
        "Stopping"
    } else if phase == Some(VmiPhase::Running) && paused {
        "Paused"
    } else if phase == Some(VmiPhase::Running) {
        "Running"
    } else if let Some((state, _)) = facts
        .provisioning
        .as_ref()
        .filter(|_| vmi.is_none() && facts.start_expected)
    {
        state
    } else if sync.as_deref() == Some("FailedPvcNotFound") {
        "ErrorPvcNotFound"
    } else if unschedulable {
        "ErrorUnschedulable"
    } else if facts.claims_pending && (facts.start_expected || (vmi.is_some() && !is_final)) {
        "WaitingForVolumeBinding"
    } else if sync.as_deref() == Some("ErrImagePull") {
        "ErrImagePull"
    } else if sync.as_deref() == Some("ImagePullBackOff") {
        "ImagePullBackOff"
    } else if (vmi.is_some() && !is_final) || (vmi.is_none() && facts.start_expected && !failures) {
        "Starting"
    } else if failures
        && (vmi.is_none() || is_final)
        && matches!(
            strategy,
            RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once
        )
    {
        "CrashLoopBackOff"
    } else if vmi.is_none() || is_final {
        "Stopped"
    } else {
        "Unknown"
    }
}

/// The status fields the controller owns (it never writes stateChangeRequests: clients append
/// them, the controller removes them with a JSON patch).
pub fn compute(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    facts: &Facts,
    now: &Time,
) -> VirtualMachineStatus {
    let old = vm.status.clone().unwrap_or_default();
    let mut wanted = Vec::new();
    wanted.push(match vmi_condition(vmi, kind::READY) {
        Some(c) => Condition {
            last_transition_time: None,
            ..c.clone()
        },
        None if vmi.is_none() => {
            Condition::new(kind::READY, false, "VMINotExists", "VMI does not exist")
        }
        None => Condition::new(
            kind::READY,
            false,
            "VMIConditionMissing",
            "VMI is missing the Ready condition",
        ),
    });
    if let Some(c) = vmi_condition(vmi, kind::PAUSED).filter(|c| c.is_true()) {
        wanted.push(Condition {
            last_transition_time: None,
            ..c.clone()
        });
    }
    if let Some((reason, message)) = &facts.failure {
        wanted.push(Condition::new(kind::FAILURE, true, reason, message.clone()));
    }
    let vmi_status = vmi.and_then(|v| v.status.as_ref());
    VirtualMachineStatus {
        printable_status: Some(printable(vm, vmi, facts).into()),
        created: vmi.is_some(),
        ready: vmi_condition(vmi, kind::READY).is_some_and(Condition::is_true),
        conditions: conditions::merge(&old.conditions, wanted, now),
        state_change_requests: Vec::new(),
        start_failure: old.start_failure.clone(),
        run_strategy: Some(vm.spec.strategy()),
        observed_generation: vm.metadata.generation,
        desired_generation: vm.metadata.generation,
        restart_count: old.restart_count,
        guest_boot_duration: vmi_status
            .filter(|s| !s.phase.is_final())
            .and_then(|s| s.guest_boot_duration.clone()),
        last_vmi_uid: old.last_vmi_uid.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(strategy: &str, status: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "d", "uid": "vm1", "generation": 2},
            "spec": {"runStrategy": strategy, "template": {"spec": {"domain": {"memory": {"guest": "64Mi"}}}}},
            "status": status,
        }))
        .unwrap()
    }

    fn vmi(phase: &str, conditions: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "web", "namespace": "d", "uid": "u1"},
            "spec": {"domain": {"memory": {"guest": "64Mi"}}},
            "status": {"phase": phase, "conditions": conditions, "guestBootDuration": "1.000s"},
        }))
        .unwrap()
    }

    fn p(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>, facts: Facts) -> &'static str {
        printable(vm, vmi, &facts)
    }

    #[test]
    fn printable_status_follows_kubevirt() {
        let always = vm("Always", serde_json::json!({}));
        let start = Facts {
            start_expected: true,
            ..Default::default()
        };
        assert_eq!(p(&always, None, start.clone()), "Starting");
        assert_eq!(
            p(&vm("Halted", serde_json::json!({})), None, Facts::default()),
            "Stopped"
        );
        assert_eq!(
            p(
                &always,
                Some(&vmi("Scheduling", serde_json::json!([]))),
                Facts::default()
            ),
            "Starting"
        );
        let running = vmi(
            "Running",
            serde_json::json!([{"type": "Ready", "status": "True"}]),
        );
        assert_eq!(p(&always, Some(&running), Facts::default()), "Running");
        let paused = vmi(
            "Running",
            serde_json::json!([{"type": "Paused", "status": "True"}]),
        );
        assert_eq!(p(&always, Some(&paused), Facts::default()), "Paused");
        let stop = Facts {
            stop_expected: true,
            ..Default::default()
        };
        assert_eq!(p(&always, Some(&running), stop), "Stopping");
        let unsched = vmi(
            "Scheduling",
            serde_json::json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]),
        );
        assert_eq!(
            p(&always, Some(&unsched), Facts::default()),
            "ErrorUnschedulable"
        );
        let pull = vmi(
            "Scheduled",
            serde_json::json!([{"type": "Synchronized", "status": "False", "reason": "ImagePullBackOff"}]),
        );
        assert_eq!(
            p(&always, Some(&pull), Facts::default()),
            "ImagePullBackOff"
        );
        let pvc = vmi(
            "Pending",
            serde_json::json!([{"type": "Synchronized", "status": "False", "reason": "FailedPvcNotFound"}]),
        );
        assert_eq!(p(&always, Some(&pvc), Facts::default()), "ErrorPvcNotFound");
        let binding = Facts {
            claims_pending: true,
            start_expected: true,
            ..Default::default()
        };
        assert_eq!(p(&always, None, binding), "WaitingForVolumeBinding");
        let crashing = vm(
            "Always",
            serde_json::json!({"startFailure": {"consecutiveFailCount": 2}}),
        );
        assert_eq!(p(&crashing, None, start), "CrashLoopBackOff");
        assert_eq!(
            p(
                &always,
                Some(&vmi("Succeeded", serde_json::json!([]))),
                Facts::default()
            ),
            "Stopped"
        );
        let mut gone = always.clone();
        gone.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(p(&gone, Some(&running), Facts::default()), "Terminating");
    }

    #[test]
    fn status_copies_ready_and_paused_and_reports_failures() {
        let always = vm("Always", serde_json::json!({"restartCount": 3}));
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
        let running = vmi(
            "Running",
            serde_json::json!([{"type": "Ready", "status": "True"}]),
        );
        let st = compute(&always, Some(&running), &Facts::default(), &now);
        assert!(st.created && st.ready);
        assert_eq!(st.printable_status.as_deref(), Some("Running"));
        assert_eq!(st.guest_boot_duration.as_deref(), Some("1.000s"));
        assert_eq!((st.restart_count, st.observed_generation), (3, Some(2)));
        let failure = Facts {
            failure: Some(("FailedCreate".into(), "quota".into())),
            ..Default::default()
        };
        let st = compute(&always, None, &failure, &now);
        assert!(!st.created && !st.ready);
        assert_eq!(
            conditions::find(&st.conditions, kind::READY)
                .unwrap()
                .reason
                .as_deref(),
            Some("VMINotExists")
        );
        assert!(conditions::is_true(&st.conditions, kind::FAILURE));
        assert!(st.state_change_requests.is_empty());
    }
}
