//! The VM reconciler: runs follow the VM's run strategy (each run is a VMI named after the
//! VM and owned by it), start/stop requests are acted on and removed in order, failed runs
//! back off (CrashLoopBackOff), and the status says where the VM is, as KubeVirt's does.

pub mod datavolumes;
pub mod plan;
pub mod status;

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kiln_crd::names::*;
use kiln_crd::vm::StartFailure;
use kiln_crd::{VirtualMachine, VirtualMachineInstance, VmiPhase};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use self::plan::{Act, StartFailureChange, VmiView};
use self::status::Facts;
use crate::context::{add_finalizer, remove_finalizer, Context, Error, Result};

pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile("vm");
    // The VM as it is now, not as the watch last delivered it: its status carries counts
    // (restarts, failed runs) that a reconcile must extend, never overwrite with older ones.
    let vms: Api<VirtualMachine> =
        Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    let r = match vms.get_opt(&vm.name_any()).await {
        Ok(Some(fresh)) if fresh.uid() == vm.uid() => reconcile_vm(&fresh, &ctx).await,
        Ok(_) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    };
    ctx.settle(vm.as_ref(), &timer, r).await
}

/// Retries a failed reconcile with an exponential back-off per VM.
pub fn error_policy(vm: Arc<VirtualMachine>, _e: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(vm.as_ref()))
}

/// The VMI of a run of `vm`: its template, its labels plus the VM's name, owned by the VM,
/// with the shutdown finalizer already on.
pub fn vmi_from_template(vm: &VirtualMachine) -> VirtualMachineInstance {
    let t = &vm.spec.template;
    let meta = t.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    let name = vm.name_any();
    labels.insert(VM_NAME_LABEL.into(), name.chars().take(63).collect());
    let mut vmi = VirtualMachineInstance::new(&name, t.spec.clone());
    vmi.metadata = ObjectMeta {
        name: Some(name),
        namespace: vm.namespace(),
        labels: Some(labels),
        annotations: meta.annotations,
        owner_references: vm.controller_owner_ref(&()).map(|r| vec![r]),
        finalizers: Some(vec![VMI_FINALIZER.into()]),
        ..Default::default()
    };
    vmi
}

fn view(vmi: &VirtualMachineInstance, now: Timestamp) -> VmiView {
    let st = vmi.status.clone().unwrap_or_default();
    let when = |phase: VmiPhase| {
        st.phase_transition_timestamps
            .iter()
            .rev()
            .find(|t| t.phase == phase)
            .and_then(|t| t.phase_transition_timestamp.parse::<Timestamp>().ok())
    };
    let ran_seconds = when(VmiPhase::Running).map(|start| {
        let end = [VmiPhase::Succeeded, VmiPhase::Failed]
            .into_iter()
            .filter_map(when)
            .max()
            .unwrap_or(now);
        end.duration_since(start).as_secs()
    });
    VmiView {
        uid: vmi.uid().unwrap_or_default(),
        phase: st.phase,
        deleting: vmi.metadata.deletion_timestamp.is_some(),
        ran_seconds,
    }
}

async fn reconcile_vm(vm: &VirtualMachine, ctx: &Context) -> Result<Action> {
    let ns = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let vm_uid = vm.uid().unwrap_or_default();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    // Read, not cached: the VMI cache is the VMI controller's, whose events may lag behind
    // the one that woke this reconcile (a VMI gone here, still deleting there, would leave the
    // VM Stopping with nothing left to wake it).
    let cached = vmis.get_opt(&name).await?;
    let owned = |v: &VirtualMachineInstance| {
        v.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == vm_uid)
    };
    let mut facts = Facts::default();
    let mut vmi = match cached {
        Some(v) if owned(&v) => Some(v),
        Some(_) => {
            facts.failure = Some((
                "FailedCreate".into(),
                format!("a VirtualMachineInstance named {name} exists that this VM does not own"),
            ));
            None
        }
        None => None,
    };

    if vm.metadata.deletion_timestamp.is_some() {
        if let Some(v) = vmi
            .as_ref()
            .filter(|v| v.metadata.deletion_timestamp.is_none())
        {
            delete_vmi(ctx, vm, &vmis, v).await?;
        }
        if vmi.is_some() {
            write_status(
                vm,
                &vms,
                status::compute(vm, vmi.as_ref(), &facts, &Time(now)),
            )
            .await?;
            return Ok(Action::await_change());
        }
        remove_finalizer(&vms, vm, VM_FINALIZER).await?;
        return Ok(Action::await_change());
    }
    if add_finalizer(&vms, vm, VM_FINALIZER).await? {
        return Ok(Action::await_change());
    }

    let provisioning = datavolumes::ensure(vm, ctx).await?;
    let old = vm.status.clone().unwrap_or_default();
    let strategy = vm.spec.strategy();
    let requests = old.state_change_requests.clone();
    let current = vmi.as_ref().map(|v| view(v, now));
    let mut start_failure = old.start_failure.clone();
    match plan::next_start_failure(strategy, start_failure.as_ref(), current.as_ref()) {
        StartFailureChange::Keep => {}
        StartFailureChange::Clear => start_failure = None,
        StartFailureChange::Count { failures, uid } => {
            let secs = plan::backoff_seconds(failures, rand::random::<f64>());
            info!("VM {ns}/{name}: run {uid} failed ({failures} in a row); next start in {secs} s");
            let why = vmi
                .as_ref()
                .and_then(|v| v.status.as_ref())
                .and_then(|s| s.reason.clone())
                .unwrap_or_else(|| "no reason given".into());
            let note = format!(
                "The run {uid} failed ({why}); {failures} in a row, next start in {secs} s"
            );
            ctx.event(vm, true, "VMIFailed", note).await;
            start_failure = Some(StartFailure {
                consecutive_fail_count: failures,
                last_failed_vmi_uid: Some(uid),
                retry_after_timestamp: Some(Time(now + SignedDuration::from_secs(secs as i64))),
            });
        }
    }
    let backoff_left = start_failure
        .as_ref()
        .and_then(|f| f.retry_after_timestamp.as_ref())
        .map(|t| t.0.duration_since(now))
        .filter(|d| d.is_positive())
        .map(|d| d.unsigned_abs())
        .unwrap_or_default();
    let planned = plan::plan(
        strategy,
        old.run_strategy,
        &requests,
        current.as_ref(),
        backoff_left,
    );
    facts.start_expected = matches!(planned.act, Act::Start | Act::WaitBackoff(_));
    facts.stop_expected = matches!(planned.act, Act::Stop);
    let mut restart_count = old.restart_count;
    let mut last_vmi_uid = old.last_vmi_uid.clone();
    let mut requeue = None;
    match &planned.act {
        Act::Nothing => {}
        Act::WaitBackoff(d) => requeue = Some(*d),
        Act::Stop => {
            if let Some(v) = &vmi {
                delete_vmi(ctx, vm, &vmis, v).await?;
            }
        }
        // The run waits for its DataVolumes (each one's change wakes the VM).
        Act::Start if provisioning.waiting.is_some() => {}
        Act::Start => match vmis
            .create(&PostParams::default(), &vmi_from_template(vm))
            .await
        {
            Ok(created) => {
                let created_uid = created.uid();
                if last_vmi_uid.is_some() && last_vmi_uid != created_uid {
                    restart_count += 1;
                }
                last_vmi_uid = created_uid;
                ctx.event(
                    vm,
                    false,
                    "SuccessfulCreate",
                    format!("Started the virtual machine by creating the new virtual machine instance {name}"),
                )
                .await;
                vmi = Some(created);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                ctx.event(
                    vm,
                    true,
                    "FailedCreate",
                    format!("Error creating virtual machine instance: {e}"),
                )
                .await;
                facts.failure = Some(("FailedCreate".into(), e.to_string()));
            }
        },
    }
    update_requests(
        vm,
        &vms,
        &requests,
        planned.add_start_request,
        current.as_ref(),
    )
    .await?;
    facts.claims_pending = claims_pending(vm, ctx, vmi.as_ref()).await;
    facts.provisioning = provisioning.waiting.clone();

    let mut new = status::compute(vm, vmi.as_ref(), &facts, &Time(now));
    new.start_failure = start_failure;
    new.restart_count = restart_count;
    new.last_vmi_uid = last_vmi_uid;
    if old.printable_status != new.printable_status {
        let from = old.printable_status.clone().unwrap_or_else(|| "-".into());
        let to = new.printable_status.clone().unwrap_or_default();
        let warning = matches!(
            to.as_str(),
            "CrashLoopBackOff"
                | "ErrorUnschedulable"
                | "ErrImagePull"
                | "ImagePullBackOff"
                | "ErrorPvcNotFound"
        );
        ctx.event(vm, warning, &to, format!("{from} → {to}")).await;
    }
    write_status(vm, &vms, new).await?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

async fn delete_vmi(
    ctx: &Context,
    vm: &VirtualMachine,
    vmis: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
) -> Result<()> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: vmi.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match vmis.delete(&vmi.name_any(), &dp).await {
        Ok(_) => {
            ctx.event(
                vm,
                false,
                "SuccessfulDelete",
                format!(
                    "Stopped the virtual machine by deleting the virtual machine instance {}",
                    vmi.name_any()
                ),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the requests that are done and appends a Start when asked, in one JSON patch that
/// fails (and is retried) if a client changed the list meanwhile.
async fn update_requests(
    vm: &VirtualMachine,
    vms: &Api<VirtualMachine>,
    requests: &[kiln_crd::vm::StateChangeRequest],
    add_start: bool,
    vmi: Option<&VmiView>,
) -> Result<()> {
    let done = plan::satisfied(requests, vmi);
    if done == 0 && !add_start {
        return Ok(());
    }
    let mut left = requests[done..].to_vec();
    if add_start {
        left.push(kiln_crd::vm::StateChangeRequest {
            action: kiln_crd::vm::StateChangeAction::Start,
            uid: None,
            data: None,
        });
    }
    let ops = match (requests.is_empty(), left.is_empty()) {
        (true, _) => json!([{"op": "add", "path": "/status/stateChangeRequests", "value": left}]),
        (false, true) => json!([
            {"op": "test", "path": "/status/stateChangeRequests", "value": requests},
            {"op": "remove", "path": "/status/stateChangeRequests"},
        ]),
        (false, false) => json!([
            {"op": "test", "path": "/status/stateChangeRequests", "value": requests},
            {"op": "replace", "path": "/status/stateChangeRequests", "value": left},
        ]),
    };
    vms.patch_status(
        &vm.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(ops)?),
    )
    .await?;
    Ok(())
}

/// Whether a claim the template uses is not bound yet (only asked while no run is running).
async fn claims_pending(
    vm: &VirtualMachine,
    ctx: &Context,
    vmi: Option<&VirtualMachineInstance>,
) -> bool {
    if vmi
        .and_then(|v| v.status.as_ref())
        .is_some_and(|s| s.phase == VmiPhase::Running)
    {
        return false;
    }
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    for v in &vm.spec.template.spec.volumes {
        if let Some(p) = &v.persistent_volume_claim {
            if let Ok(Some(pvc)) = api.get_opt(&p.claim_name).await {
                if pvc.status.and_then(|s| s.phase).as_deref() != Some("Bound") {
                    return true;
                }
            }
        }
    }
    false
}

async fn write_status(
    vm: &VirtualMachine,
    vms: &Api<VirtualMachine>,
    new: kiln_crd::VirtualMachineStatus,
) -> Result<()> {
    let mut old = vm.status.clone().unwrap_or_default();
    old.state_change_requests.clear();
    if vm.status.is_some() && old == new {
        return Ok(());
    }
    let body = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "VirtualMachine", "status": new});
    vms.patch_status(
        &vm.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}
