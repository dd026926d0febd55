//! A VMI's status as a function of what the controller sees: its launcher pod, the launcher's
//! reported state, and any problem found while realising the spec. Phases and conditions as
//! KubeVirt's (Pending, Scheduling, Scheduled, Running, Succeeded, Failed; Ready, Paused,
//! PodScheduled, Synchronized).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kiln_crd::conditions::{self, kind, Condition};
use kiln_crd::launch::{LauncherPhase, LauncherState, POD_INTERFACE};
use kiln_crd::names::COMPUTE_CONTAINER;
use kiln_crd::network::{mac_for, pod_interface};
use kiln_crd::vmi::{NetworkInterfaceStatus, PhaseTransition};
use kiln_crd::{VirtualMachineInstance, VirtualMachineInstanceStatus, VmiPhase};

/// A reason the spec could not be realised (yet): shown as Synchronized=False.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncProblem {
    pub reason: String,
    pub message: String,
}

/// Everything the status is computed from.
pub struct Observed<'a> {
    pub pod: Option<&'a Pod>,
    pub launcher: Option<&'a LauncherState>,
    pub problem: Option<SyncProblem>,
    pub now: Time,
}

/// How a finished launcher container ended, from its exit code and termination message
/// ("Reason: message").
fn terminated(c: &ContainerStatus) -> Option<(i32, String, String)> {
    let t = c.state.as_ref()?.terminated.as_ref()?;
    let text = t.message.clone().unwrap_or_default();
    let (reason, message) = match text.split_once(": ") {
        Some((r, m)) if !r.contains(' ') => (r.to_string(), m.trim().to_string()),
        _ => (
            t.reason.clone().unwrap_or_else(|| "Error".into()),
            text.trim().to_string(),
        ),
    };
    Some((t.exit_code, reason, message))
}

fn compute_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == COMPUTE_CONTAINER)
}

/// An image problem of any of the pod's containers: (ErrImagePull|ImagePullBackOff, message).
fn image_problem(pod: &Pod) -> Option<SyncProblem> {
    let s = pod.status.as_ref()?;
    s.init_container_statuses
        .iter()
        .flatten()
        .chain(s.container_statuses.iter().flatten())
        .find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.clone()?;
            matches!(
                reason.as_str(),
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull"
            )
            .then(|| SyncProblem {
                reason: if reason == "ImagePullBackOff" {
                    reason
                } else {
                    "ErrImagePull".into()
                },
                message: format!("{}: {}", c.name, w.message.clone().unwrap_or_default()),
            })
        })
}

/// A failed init container (a containerDisk that could not be copied, ...).
fn init_failure(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .iter()
        .flatten()
        .find_map(|c| {
            let (code, reason, message) = terminated(c)?;
            (code != 0).then(|| format!("init container {} failed: {reason}: {message}", c.name))
        })
}

/// KubeVirt's `status.interfaces[]`: the pod IP for masquerade, the address the launcher leased
/// to the guest for bridge.
fn interfaces(vmi: &VirtualMachineInstance, seen: &Observed) -> Vec<NetworkInterfaceStatus> {
    let Some(iface) = pod_interface(&vmi.spec) else {
        return Vec::new();
    };
    let pod_ip = seen.pod.and_then(|p| p.status.as_ref()?.pod_ip.clone());
    let ip = if iface.bridge {
        seen.launcher.and_then(|l| l.guest_ip.clone())
    } else {
        pod_ip
    };
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    vec![NetworkInterfaceStatus {
        name: Some(iface.name),
        // Under bridge the guest takes the pod's MAC, which only the launcher knows.
        mac: iface
            .mac_address
            .or_else(|| seen.launcher.and_then(|l| l.guest_mac.clone()))
            .or_else(|| (!iface.bridge).then(|| mac_for(&uid))),
        ip_addresses: ip.iter().cloned().collect(),
        ip_address: ip,
        pod_interface_name: Some(POD_INTERFACE.into()),
        interface_name: Some("eth0".into()),
    }]
}

pub fn compute(vmi: &VirtualMachineInstance, seen: &Observed) -> VirtualMachineInstanceStatus {
    let old = vmi.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let mut wanted: Vec<Condition> = Vec::new();
    let mut problem = seen.problem.clone();

    let phase = if old.phase.is_final() {
        old.phase
    } else {
        match seen.pod {
            None if old.launcher_pod.is_some() => {
                st.reason = Some("PodDeleted".into());
                st.exit_reason = Some("PodDeleted".into());
                VmiPhase::Failed
            }
            None => VmiPhase::Pending,
            Some(pod) => {
                st.launcher_pod = pod.metadata.name.clone();
                let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                if let (Some(uid), Some(node)) = (pod.metadata.uid.clone(), spec_node.clone()) {
                    st.active_pods = [(uid, node)].into();
                }
                st.node_name = spec_node.clone().or(st.node_name);
                let ps = pod.status.as_ref();
                st.qos_class = ps.and_then(|s| s.qos_class.clone()).or(st.qos_class);
                if let Some(c) = ps
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
                {
                    wanted.push(Condition {
                        type_: kind::POD_SCHEDULED.into(),
                        status: c.status.clone(),
                        last_probe_time: None,
                        last_transition_time: None,
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                    });
                }
                problem = problem.or_else(|| image_problem(pod));
                let pod_phase = ps.and_then(|s| s.phase.clone()).unwrap_or_default();
                let ended = compute_status(pod).and_then(terminated);
                match (pod_phase.as_str(), ended) {
                    ("Succeeded", Some((_, reason, message))) if reason == "PowerOff" => {
                        st.exit_reason = Some(reason);
                        st.reason = Some(message);
                        VmiPhase::Succeeded
                    }
                    ("Succeeded", Some((_, reason, message))) => {
                        // Stopped on request, but not by Kiln: the pod was deleted or evicted.
                        st.exit_reason = Some(if reason == "Stopped" {
                            "PodDeleted".into()
                        } else {
                            reason
                        });
                        st.reason = Some(message);
                        VmiPhase::Failed
                    }
                    ("Failed", Some((_, reason, message))) => {
                        st.exit_reason = Some(reason);
                        st.reason = Some(message);
                        VmiPhase::Failed
                    }
                    ("Failed", None) | ("Succeeded", None) => {
                        st.exit_reason = Some("PodFailed".into());
                        st.reason = init_failure(pod)
                            .or_else(|| ps.and_then(|s| s.message.clone()))
                            .or(Some("the launcher pod failed".into()));
                        VmiPhase::Failed
                    }
                    _ if pod.metadata.deletion_timestamp.is_some()
                        && vmi.metadata.deletion_timestamp.is_none() =>
                    {
                        // Deleted under us: it is going; the run has ended.
                        st.reason = Some("the launcher pod was deleted".into());
                        st.exit_reason = Some("PodDeleted".into());
                        VmiPhase::Failed
                    }
                    _ if spec_node.is_none() => VmiPhase::Scheduling,
                    _ => match seen.launcher {
                        Some(l)
                            if matches!(
                                l.phase,
                                LauncherPhase::Running | LauncherPhase::Stopping
                            ) =>
                        {
                            VmiPhase::Running
                        }
                        _ if old.phase == VmiPhase::Running => VmiPhase::Running,
                        _ => VmiPhase::Scheduled,
                    },
                }
            }
        }
    };

    if let Some(l) = seen.launcher {
        if let Some(ms) = l.boot_time_ms {
            st.guest_boot_milliseconds = Some(ms);
            st.guest_boot_duration = Some(format!("{}.{:03}s", ms / 1000, ms % 1000));
        } else if l.phase == LauncherPhase::Starting {
            st.guest_boot_milliseconds = None;
            st.guest_boot_duration = None;
        }
        st.restart_count = l.restarts;
        if l.exit_reason.is_some() && phase.is_final() {
            st.exit_reason = st.exit_reason.clone().or(l.exit_reason.clone());
        }
    }
    st.interfaces = if phase.is_final() {
        Vec::new()
    } else {
        interfaces(vmi, seen)
    };
    let paused = phase == VmiPhase::Running && seen.launcher.is_some_and(|l| l.paused);
    let pod_ready = seen
        .pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let ready = phase == VmiPhase::Running && !paused && pod_ready;
    wanted.push(match (ready, phase) {
        (true, _) => Condition::new(kind::READY, true, "", ""),
        (false, VmiPhase::Running) if paused => {
            Condition::new(kind::READY, false, "Paused", "the VMI is paused")
        }
        (false, VmiPhase::Running) if vmi.spec.readiness_probe.is_some() => Condition::new(
            kind::READY,
            false,
            "GuestNotReady",
            "the guest's readiness probe has not passed",
        ),
        (false, VmiPhase::Running) => Condition::new(
            kind::READY,
            false,
            "GuestNotReady",
            "the launcher is not ready yet",
        ),
        (false, p) if p.is_final() => {
            Condition::new(kind::READY, false, "PodTerminating", "the VMI has ended")
        }
        (false, _) => Condition::new(
            kind::READY,
            false,
            "PodNotReady",
            "the launcher pod is not running yet",
        ),
    });
    if paused {
        wanted.push(Condition::new(
            kind::PAUSED,
            true,
            "PausedByUser",
            "paused with kubectl kiln pause",
        ));
    }
    if let Some(p) = problem.filter(|_| !phase.is_final()) {
        wanted.push(Condition::new(
            kind::SYNCHRONIZED,
            false,
            &p.reason,
            p.message,
        ));
    }
    st.conditions = conditions::merge(&old.conditions, wanted, &seen.now);
    if phase != old.phase || st.phase_transition_timestamps.is_empty() {
        st.phase_transition_timestamps.push(PhaseTransition {
            phase,
            phase_transition_timestamp: seen.now.0.to_string(),
        });
    }
    st.phase = phase;
    if !phase.is_final() {
        st.reason = None;
    }
    st
}

#[cfg(test)]
mod tests;
