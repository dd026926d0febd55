//! `kubectl kiln start|stop|restart`: what virtctl's do for each run strategy (KubeVirt's
//! `pkg/virt-api/rest/lifecycle.go`): change the run strategy, or append start/stop requests
//! to the VM's status with a JSON patch that fails if someone else changed them meanwhile.

use kiln_crd::vm::{StateChangeAction, StateChangeRequest};
use kiln_crd::{RunStrategy, VirtualMachine, VirtualMachineInstance};
use kube::ResourceExt;
use serde_json::{json, Value};

/// A JSON patch on the VM (`spec`) or on its status.
#[derive(Debug, PartialEq)]
pub enum Change {
    Spec(Value),
    Status(Value),
}

fn running(vmi: Option<&VirtualMachineInstance>) -> bool {
    vmi.is_some_and(|v| !v.status.as_ref().is_some_and(|s| s.phase.is_final()))
}

fn is_phase(vmi: Option<&VirtualMachineInstance>, phase: kiln_crd::VmiPhase) -> bool {
    vmi.and_then(|v| v.status.as_ref())
        .is_some_and(|s| s.phase == phase)
}

/// `runStrategy: Always|Halted` (or the deprecated `running`), tested against its old value.
fn run_patch(vm: &VirtualMachine, run: bool) -> Change {
    if vm.spec.running.is_some() && vm.spec.run_strategy.is_none() {
        return Change::Spec(json!([
            {"op": "test", "path": "/spec/running", "value": vm.spec.running},
            {"op": "replace", "path": "/spec/running", "value": run},
        ]));
    }
    let to = if run {
        RunStrategy::Always
    } else {
        RunStrategy::Halted
    };
    Change::Spec(match vm.spec.run_strategy {
        Some(s) => json!([
            {"op": "test", "path": "/spec/runStrategy", "value": s},
            {"op": "replace", "path": "/spec/runStrategy", "value": to},
        ]),
        None => json!([{"op": "add", "path": "/spec/runStrategy", "value": to}]),
    })
}

/// Appends `requests` (a lone Stop replaces what is pending), clearing the back-off of a start.
fn requests_patch(
    vm: &VirtualMachine,
    requests: Vec<StateChangeRequest>,
) -> Result<Change, String> {
    let status = vm.status.clone().unwrap_or_default();
    let pending = &status.state_change_requests;
    let mut ops = Vec::new();
    if vm.status.is_none() {
        ops.push(
            json!({"op": "add", "path": "/status", "value": {"stateChangeRequests": requests}}),
        );
        return Ok(Change::Status(Value::Array(ops)));
    }
    if pending.is_empty() {
        ops.push(json!({"op": "add", "path": "/status/stateChangeRequests", "value": requests}));
    } else if requests.len() == 1 && requests[0].action == StateChangeAction::Stop {
        ops.push(json!({"op": "test", "path": "/status/stateChangeRequests", "value": pending}));
        ops.push(
            json!({"op": "replace", "path": "/status/stateChangeRequests", "value": requests}),
        );
    } else {
        return Err("unable to complete request: stop/start already underway".into());
    }
    if status.start_failure.is_some()
        && requests
            .iter()
            .any(|r| r.action == StateChangeAction::Start)
    {
        ops.push(json!({"op": "remove", "path": "/status/startFailure"}));
    }
    Ok(Change::Status(Value::Array(ops)))
}

fn start_req() -> StateChangeRequest {
    StateChangeRequest {
        action: StateChangeAction::Start,
        uid: None,
        data: None,
    }
}

fn stop_req(vmi: &VirtualMachineInstance) -> StateChangeRequest {
    StateChangeRequest {
        action: StateChangeAction::Stop,
        uid: vmi.uid(),
        data: None,
    }
}

pub fn start(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> Result<Change, String> {
    if running(vmi) {
        return Err("VM is already running".into());
    }
    match vm.spec.strategy() {
        RunStrategy::Halted => Ok(run_patch(vm, true)),
        s @ (RunStrategy::Manual | RunStrategy::RerunOnFailure) => {
            if s == RunStrategy::RerunOnFailure && is_phase(vmi, kiln_crd::VmiPhase::Failed) {
                return Err("RerunOnFailure does not support starting VM from failed state".into());
            }
            match vmi {
                // A finished run is removed first, then a new one started.
                Some(v) => requests_patch(vm, vec![stop_req(v), start_req()]),
                None => requests_patch(vm, vec![start_req()]),
            }
        }
        s => Err(format!(
            "{} does not support manual start requests",
            s.as_str()
        )),
    }
}

pub fn stop(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> Result<Change, String> {
    match vm.spec.strategy() {
        RunStrategy::Halted => Err("VM is not running".into()),
        RunStrategy::Manual | RunStrategy::RerunOnFailure => match vmi.filter(|_| running(vmi)) {
            Some(v) => requests_patch(vm, vec![stop_req(v)]),
            None => Err("VM is not running".into()),
        },
        RunStrategy::Always | RunStrategy::Once => Ok(run_patch(vm, false)),
    }
}

pub fn restart(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
) -> Result<Change, String> {
    let s = vm.spec.strategy();
    if matches!(s, RunStrategy::Halted | RunStrategy::Once) {
        return Err(format!(
            "RunStrategy {} does not support manual restart requests",
            s.as_str()
        ));
    }
    match vmi {
        Some(v) => requests_patch(vm, vec![stop_req(v), start_req()]),
        None => Err("VM is not running".into()),
    }
}

/// The VM's VMI, if it is this VM's (the same name, owned by it).
pub fn own_vmi<'a>(
    vm: &VirtualMachine,
    vmi: Option<&'a VirtualMachineInstance>,
) -> Option<&'a VirtualMachineInstance> {
    let uid = vm.uid()?;
    vmi.filter(|v| v.owner_references().iter().any(|o| o.uid == uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(strategy: &str, status: Option<Value>) -> VirtualMachine {
        let mut v = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "uid": "vm1"},
            "spec": {"runStrategy": strategy, "template": {"spec": {"domain": {"memory": {"guest": "64Mi"}}}}}});
        if let Some(s) = status {
            v["status"] = s;
        }
        serde_json::from_value(v).unwrap()
    }

    fn vmi(phase: &str) -> VirtualMachineInstance {
        serde_json::from_value(
            json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "web", "uid": "u1"},
            "spec": {"domain": {"memory": {"guest": "64Mi"}}}, "status": {"phase": phase}}),
        )
        .unwrap()
    }

    #[test]
    fn start_per_run_strategy() {
        let halted = vm("Halted", Some(json!({})));
        assert_eq!(
            start(&halted, None),
            Ok(Change::Spec(json!([
                {"op": "test", "path": "/spec/runStrategy", "value": "Halted"},
                {"op": "replace", "path": "/spec/runStrategy", "value": "Always"},
            ])))
        );
        let manual = vm("Manual", Some(json!({})));
        assert_eq!(
            start(&manual, None),
            Ok(Change::Status(
                json!([{"op": "add", "path": "/status/stateChangeRequests", "value": [{"action": "Start"}]}])
            ))
        );
        let Ok(Change::Status(again)) = start(&manual, Some(&vmi("Succeeded"))) else {
            panic!()
        };
        assert_eq!(
            again[0]["value"],
            json!([{"action": "Stop", "uid": "u1"}, {"action": "Start"}])
        );
        assert_eq!(
            start(&manual, Some(&vmi("Running"))),
            Err("VM is already running".into())
        );
        assert_eq!(
            start(&vm("Always", None), None),
            Err("Always does not support manual start requests".into())
        );
        assert_eq!(
            start(&vm("Once", None), None),
            Err("Once does not support manual start requests".into())
        );
        assert_eq!(
            start(&vm("RerunOnFailure", None), Some(&vmi("Failed"))),
            Err("RerunOnFailure does not support starting VM from failed state".into())
        );
        let backing_off = vm(
            "Manual",
            Some(json!({"startFailure": {"consecutiveFailCount": 1}})),
        );
        let Ok(Change::Status(ops)) = start(&backing_off, None) else {
            panic!()
        };
        assert_eq!(
            ops[1],
            json!({"op": "remove", "path": "/status/startFailure"})
        );
    }

    #[test]
    fn stop_and_restart_per_run_strategy() {
        let always = vm("Always", None);
        assert!(matches!(
            stop(&always, Some(&vmi("Running"))),
            Ok(Change::Spec(_))
        ));
        assert_eq!(
            stop(&vm("Halted", None), None),
            Err("VM is not running".into())
        );
        let manual = vm(
            "Manual",
            Some(json!({"stateChangeRequests": [{"action": "Start"}]})),
        );
        let Ok(Change::Status(ops)) = stop(&manual, Some(&vmi("Running"))) else {
            panic!()
        };
        assert_eq!(
            ops[1],
            json!({"op": "replace", "path": "/status/stateChangeRequests", "value": [{"action": "Stop", "uid": "u1"}]})
        );
        assert_eq!(
            stop(&manual, Some(&vmi("Failed"))),
            Err("VM is not running".into())
        );
        assert!(restart(&always, Some(&vmi("Running"))).is_ok());
        assert_eq!(restart(&always, None), Err("VM is not running".into()));
        assert_eq!(
            restart(&vm("Halted", None), Some(&vmi("Running"))),
            Err("RunStrategy Halted does not support manual restart requests".into())
        );
        assert_eq!(
            restart(&manual, Some(&vmi("Running"))),
            Err("unable to complete request: stop/start already underway".into())
        );
        let deprecated: VirtualMachine =
            serde_json::from_value(json!({"apiVersion": "kiln.dev/v1alpha1",
            "kind": "VirtualMachine", "metadata": {"name": "c"},
            "spec": {"running": false, "template": {"spec": {"domain": {}}}}}))
            .unwrap();
        assert_eq!(
            start(&deprecated, None),
            Ok(Change::Spec(json!([
                {"op": "test", "path": "/spec/running", "value": false},
                {"op": "replace", "path": "/spec/running", "value": true},
            ])))
        );
    }
}
