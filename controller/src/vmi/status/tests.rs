//! VMI phases and conditions from pods and launcher states, one case per path.

use super::*;
use k8s_openapi::jiff::Timestamp;
use kiln_crd::conditions::find;

fn now() -> Time {
    Time(Timestamp::from_second(1_800_000_000).unwrap())
}

fn vmi(status: Option<serde_json::Value>) -> VirtualMachineInstance {
    let mut v = serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "web", "namespace": "demo", "uid": "u1"},
        "spec": {"domain": {"memory": {"guest": "64Mi"}}},
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

fn pod(phase: &str, node: Option<&str>, extra: serde_json::Value) -> Pod {
    let mut p = serde_json::json!({
        "metadata": {"name": "kiln-launcher-web-u1", "uid": "p1"},
        "spec": {"containers": [{"name": "compute"}]},
        "status": {"phase": phase},
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = n.into();
    }
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        p["status"][k] = v;
    }
    serde_json::from_value(p).unwrap()
}

fn seen<'a>(pod: Option<&'a Pod>, launcher: Option<&'a LauncherState>) -> Observed<'a> {
    Observed {
        pod,
        launcher,
        problem: None,
        now: now(),
    }
}

fn ended(exit: i32, message: &str) -> serde_json::Value {
    serde_json::json!({"containerStatuses": [{"name": "compute", "image": "i", "imageID": "", "ready": false,
        "restartCount": 0, "state": {"terminated": {"exitCode": exit, "message": message}}}]})
}

#[test]
fn pending_then_scheduling_then_scheduled() {
    let v = vmi(None);
    let st = compute(&v, &seen(None, None));
    assert_eq!(st.phase, VmiPhase::Pending);
    assert_eq!(find(&st.conditions, kind::READY).unwrap().status, "False");
    let unscheduled = pod(
        "Pending",
        None,
        serde_json::json!({"conditions": [{"type": "PodScheduled",
        "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available"}]}),
    );
    let st = compute(&v, &seen(Some(&unscheduled), None));
    assert_eq!(st.phase, VmiPhase::Scheduling);
    assert_eq!(
        find(&st.conditions, kind::POD_SCHEDULED)
            .unwrap()
            .reason
            .as_deref(),
        Some("Unschedulable")
    );
    assert_eq!(st.launcher_pod.as_deref(), Some("kiln-launcher-web-u1"));
    let scheduled = pod("Pending", Some("n1"), serde_json::json!({}));
    let st = compute(&v, &seen(Some(&scheduled), None));
    assert_eq!(
        (st.phase, st.node_name.as_deref()),
        (VmiPhase::Scheduled, Some("n1"))
    );
    assert_eq!(st.active_pods.get("p1").map(String::as_str), Some("n1"));
}

#[test]
fn image_pull_errors_show_as_synchronized_false() {
    let v = vmi(None);
    let p = pod(
        "Pending",
        Some("n1"),
        serde_json::json!({"initContainerStatuses": [{"name": "volumeroot",
        "image": "i", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}),
    );
    let st = compute(&v, &seen(Some(&p), None));
    let c = find(&st.conditions, kind::SYNCHRONIZED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("ImagePullBackOff"))
    );
    assert!(c.message.as_deref().unwrap().starts_with("volumeroot: "));
}

#[test]
fn running_ready_with_boot_time_then_paused() {
    let v = vmi(None);
    let p = pod(
        "Running",
        Some("n1"),
        serde_json::json!({"conditions": [{"type": "Ready", "status": "True"}]}),
    );
    let l = LauncherState {
        revision: 3,
        phase: LauncherPhase::Running,
        boot_time_ms: Some(1042),
        restarts: 1,
        ..Default::default()
    };
    let st = compute(&v, &seen(Some(&p), Some(&l)));
    assert_eq!(st.phase, VmiPhase::Running);
    assert!(conditions::is_true(&st.conditions, kind::READY));
    assert_eq!(st.guest_boot_duration.as_deref(), Some("1.042s"));
    assert_eq!(st.restart_count, 1);
    let paused = LauncherState { paused: true, ..l };
    let st = compute(&v, &seen(Some(&p), Some(&paused)));
    assert!(conditions::is_true(&st.conditions, kind::PAUSED));
    assert_eq!(
        find(&st.conditions, kind::READY).unwrap().reason.as_deref(),
        Some("Paused")
    );
}

#[test]
fn power_off_succeeds_and_failures_fail_with_their_reason() {
    let v = vmi(Some(
        serde_json::json!({"phase": "Running", "launcherPod": "kiln-launcher-web-u1"}),
    ));
    let off = pod(
        "Succeeded",
        Some("n1"),
        ended(0, "PowerOff: the guest powered off"),
    );
    let st = compute(&v, &seen(Some(&off), None));
    assert_eq!(
        (st.phase, st.exit_reason.as_deref()),
        (VmiPhase::Succeeded, Some("PowerOff"))
    );
    let killed = pod(
        "Failed",
        Some("n1"),
        ended(1, "Killed: kiln-vmm was killed by signal 9"),
    );
    let st = compute(&v, &seen(Some(&killed), None));
    assert_eq!(
        (st.phase, st.exit_reason.as_deref()),
        (VmiPhase::Failed, Some("Killed"))
    );
    assert_eq!(
        st.reason.as_deref(),
        Some("kiln-vmm was killed by signal 9")
    );
    // The pod was stopped, but not because the VMI was: someone deleted it.
    let stopped = pod(
        "Succeeded",
        Some("n1"),
        ended(0, "Stopped: the VM was stopped on request"),
    );
    assert_eq!(
        compute(&v, &seen(Some(&stopped), None)).phase,
        VmiPhase::Failed
    );
    let gone = compute(&v, &seen(None, None));
    assert_eq!(
        (gone.phase, gone.exit_reason.as_deref()),
        (VmiPhase::Failed, Some("PodDeleted"))
    );
    assert!(!conditions::is_true(&gone.conditions, kind::READY));
}

#[test]
fn final_phases_stay_and_transitions_are_recorded_once() {
    let v = vmi(Some(
        serde_json::json!({"phase": "Succeeded", "reason": "the guest powered off",
        "phaseTransitionTimestamps": [{"phase": "Succeeded", "phaseTransitionTimestamp": "x"}]}),
    ));
    let running = pod("Running", Some("n1"), serde_json::json!({}));
    let st = compute(&v, &seen(Some(&running), None));
    assert_eq!(st.phase, VmiPhase::Succeeded);
    assert_eq!(st.reason.as_deref(), Some("the guest powered off"));
    assert_eq!(st.phase_transition_timestamps.len(), 1);
}

#[test]
fn the_pod_network_interface_reports_the_pod_ip() {
    let v = vmi(None);
    let p = pod(
        "Running",
        Some("n1"),
        serde_json::json!({"podIP": "10.244.0.7", "conditions": [{"type": "Ready", "status": "True"}]}),
    );
    let l = LauncherState {
        phase: LauncherPhase::Running,
        guest_ip: Some("10.0.2.2".into()),
        ..Default::default()
    };
    let st = compute(&v, &seen(Some(&p), Some(&l)));
    assert_eq!(st.interfaces.len(), 1);
    let i = &st.interfaces[0];
    assert_eq!(i.name.as_deref(), Some("default"));
    assert_eq!(
        i.ip_address.as_deref(),
        Some("10.244.0.7"),
        "masquerade: the pod IP"
    );
    assert_eq!(i.ip_addresses, vec!["10.244.0.7".to_string()]);
    assert_eq!(i.pod_interface_name.as_deref(), Some("eth0"));
    assert!(i.mac.as_deref().is_some_and(|m| m.starts_with("02:")));
    // Ended runs report no interfaces.
    let done = pod(
        "Succeeded",
        Some("n1"),
        ended(0, "PowerOff: the guest powered off"),
    );
    assert!(compute(&v, &seen(Some(&done), None)).interfaces.is_empty());
}

#[test]
fn a_bridged_interface_reports_the_leased_ip_and_the_guests_mac() {
    let mut v = vmi(None);
    v.spec = serde_json::from_value(serde_json::json!({
        "domain": {"memory": {"guest": "64Mi"}, "devices": {"interfaces": [{"name": "default", "bridge": {}}]}},
        "networks": [{"name": "default", "pod": {}}]
    }))
    .unwrap();
    let p = pod(
        "Running",
        Some("n1"),
        serde_json::json!({"podIP": "10.244.0.7", "conditions": [{"type": "Ready", "status": "True"}]}),
    );
    // Before the launcher says: no address, no MAC (the guest's is the pod's, unknown here).
    let i = compute(&v, &seen(Some(&p), None)).interfaces[0].clone();
    assert_eq!(i.ip_address, None);
    assert_eq!(i.mac, None);
    let l = LauncherState {
        phase: LauncherPhase::Running,
        guest_ip: Some("10.244.0.7".into()),
        guest_mac: Some("0a:58:0a:f4:00:07".into()),
        ..Default::default()
    };
    let i = compute(&v, &seen(Some(&p), Some(&l))).interfaces[0].clone();
    assert_eq!(i.ip_address.as_deref(), Some("10.244.0.7"));
    assert_eq!(i.mac.as_deref(), Some("0a:58:0a:f4:00:07"));
}
