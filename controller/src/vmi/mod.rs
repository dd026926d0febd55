//! The VMI reconciler: a VMI gets exactly one launcher pod (and its launch Secret), owned by
//! it; its status follows the pod and the launcher; pause and unpause go to the launcher; on
//! deletion the pod is stopped (the guest asked to shut down within the grace period) before
//! the finalizer lets the VMI go. Idempotent: names come from the VMI's UID, so a repeated or
//! interrupted reconcile finds what an earlier one made.

pub mod network;
pub mod pod;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kiln_crd::cdi::DataVolume;
use kiln_crd::launch::{LAUNCH_FILE, TOKEN_FILE};
use kiln_crd::names::*;
use kiln_crd::quantity::parse_bytes;
use kiln_crd::{VirtualMachineInstance, VmiPhase};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use self::pod::ClaimInfo;
use self::status::{Observed, SyncProblem};
use crate::context::{add_finalizer, remove_finalizer, Context, Error, Result};

/// The annotation `kubectl kiln pause` sets: "true" while the VMI should be paused.
pub const PAUSED_ANNOTATION: &str = "kiln.dev/paused";

pub async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile("vmi");
    let r = reconcile_vmi(&vmi, &ctx).await;
    ctx.settle(vmi.as_ref(), &timer, r).await
}

/// Retries a failed reconcile with an exponential back-off per VMI.
pub fn error_policy(vmi: Arc<VirtualMachineInstance>, _e: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(vmi.as_ref()))
}

fn now() -> Time {
    Time(Timestamp::now())
}

async fn reconcile_vmi(vmi: &VirtualMachineInstance, ctx: &Context) -> Result<Action> {
    let ns = vmi.namespace().unwrap_or_default();
    let name = vmi.name_any();
    let uid = vmi
        .uid()
        .ok_or_else(|| Error::Invalid("VMI without UID".into()))?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_name = launcher_pod_name(&name, &uid);
    let cached = ctx.pods.get(&ObjectRef::new(&pod_name).within(&ns));
    // A pod of this name belongs to this VMI only if it says so (a VMI of the same name
    // deleted and created again has another UID).
    let mut pod: Option<Pod> = cached
        .map(|p| (*p).clone())
        .filter(|p| p.labels().get(CREATED_BY_LABEL) == Some(&uid));

    if vmi.metadata.deletion_timestamp.is_some() {
        return finish_deletion(vmi, ctx, &vmis, &pods, pod.as_ref()).await;
    }
    if add_finalizer(&vmis, vmi, VMI_FINALIZER).await? {
        return Ok(Action::await_change());
    }

    let old = vmi.status.clone().unwrap_or_default();
    if pod.is_none() && old.launcher_pod.is_some() && !old.phase.is_final() {
        // A pod missing from the cache (just restarted, still filling) is not a deleted pod:
        // only the API server can say that.
        pod = pods
            .get_opt(&pod_name)
            .await?
            .filter(|p| p.labels().get(CREATED_BY_LABEL) == Some(&uid));
    }
    let mut problem = None;
    if !old.phase.is_final() && pod.is_none() && old.launcher_pod.is_none() {
        // Only a VMI that never had a pod gets one: ask the API server, not the cache, which
        // may not show the pod, or the status naming it, yet.
        let fresh = vmis.get_opt(&name).await?;
        if fresh
            .as_ref()
            .and_then(|v| v.status.as_ref())
            .is_some_and(|s| s.launcher_pod.is_some())
        {
            return Ok(Action::requeue(std::time::Duration::from_millis(200)));
        }
        if let Some(p) = pods
            .get_opt(&pod_name)
            .await?
            .filter(|p| p.labels().get(CREATED_BY_LABEL) == Some(&uid))
        {
            pod = Some(p);
        }
    }
    if !old.phase.is_final() && pod.is_none() && old.launcher_pod.is_none() {
        match create_pod(vmi, ctx, &uid).await {
            Ok(created) => pod = Some(created),
            Err(p) => problem = Some(p),
        }
    }

    let launcher = ctx.launchers.state(&uid);
    let seen = Observed {
        pod: pod.as_ref(),
        launcher: launcher.as_ref(),
        problem,
        now: now(),
    };
    let new = status::compute(vmi, &seen);

    if new.phase.is_final() {
        ctx.launchers.forget(&uid);
    } else if let Some(ip) = pod
        .as_ref()
        .filter(|_| matches!(new.phase, VmiPhase::Scheduled | VmiPhase::Running))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
    {
        ctx.launchers
            .follow(ObjectRef::from_obj(vmi), &uid, &ip, ctx.tokens.token(&uid));
        if new.phase == VmiPhase::Running {
            sync_pause(vmi, ctx, &ip, &uid, launcher.as_ref()).await;
        }
    }

    if Some(&new) != vmi.status.as_ref() {
        // Written only over the status it was computed from: if the VMI changed meanwhile
        // (the cache was behind), the API server refuses and the next reconcile sees the news.
        let body = json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "VirtualMachineInstance",
            "metadata": {"resourceVersion": vmi.resource_version()},
            "status": new,
        });
        let written = vmis
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await;
        match written {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Ok(Action::requeue(std::time::Duration::from_millis(200)))
            }
            Err(e) => return Err(e.into()),
        }
        if new.phase != old.phase || vmi.status.is_none() {
            let reason = format!("{:?}", new.phase);
            let note = match (&new.reason, new.phase) {
                (Some(r), p) if p.is_final() => format!("{:?} → {:?}: {r}", old.phase, p),
                _ => format!("{:?} → {:?}", old.phase, new.phase),
            };
            ctx.event(vmi, new.phase == VmiPhase::Failed, &reason, note)
                .await;
        }
        if let Some(c) = new
            .conditions
            .iter()
            .find(|c| c.type_ == "Synchronized" && c.status == "False")
        {
            let was = old
                .conditions
                .iter()
                .any(|o| o.type_ == c.type_ && o.reason == c.reason);
            if !was {
                let reason = c.reason.clone().unwrap_or_default();
                ctx.event(vmi, true, &reason, c.message.clone().unwrap_or_default())
                    .await;
            }
        }
    }
    Ok(Action::await_change())
}

/// Creates the launch Secret and the launcher pod; a problem instead when the spec cannot be
/// realised yet (a claim that does not exist, a bad capacity).
async fn create_pod(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    uid: &str,
) -> std::result::Result<Pod, SyncProblem> {
    let ns = vmi.namespace().unwrap_or_default();
    let name = vmi.name_any();
    let failed = |reason: &str, message: String| SyncProblem {
        reason: reason.into(),
        message,
    };
    let claims = resolve_claims(vmi, ctx).await?;
    let rendered = pod::render(vmi, &claims, &ctx.images)
        .map_err(|e| failed("FailedCreate", e.to_string()))?;
    ctx.ensure_launcher_account(&ns)
        .await
        .map_err(|e| failed("FailedCreate", format!("the launcher ServiceAccount: {e}")))?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(launch_secret_name(&name, uid)),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([(
                CREATED_BY_LABEL.to_string(),
                uid.to_string(),
            )])),
            owner_references: vmi.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                LAUNCH_FILE.to_string(),
                ByteString(
                    serde_json::to_vec(&rendered.launch)
                        .map_err(|e| failed("FailedCreate", e.to_string()))?,
                ),
            ),
            (
                TOKEN_FILE.to_string(),
                ByteString(ctx.tokens.token(uid).into_bytes()),
            ),
        ])),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(failed("FailedCreate", format!("the launch Secret: {e}"))),
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_name = rendered.pod.metadata.name.clone().unwrap_or_default();
    match pods.create(&PostParams::default(), &rendered.pod).await {
        Ok(p) => {
            info!("VMI {ns}/{name}: created launcher pod {pod_name}");
            ctx.event(
                vmi,
                false,
                "SuccessfulCreate",
                format!("Created launcher pod {pod_name}"),
            )
            .await;
            Ok(p)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => pods
            .get(&pod_name)
            .await
            .map_err(|e| failed("FailedCreate", format!("reading pod {pod_name}: {e}"))),
        Err(e) => {
            ctx.event(
                vmi,
                true,
                "FailedCreate",
                format!("Error creating pod {pod_name}: {e}"),
            )
            .await;
            Err(failed(
                "FailedCreate",
                format!("creating pod {pod_name}: {e}"),
            ))
        }
    }
}

/// Every claim the VMI uses, with its mode and size; FailedPvcNotFound when one is missing.
async fn resolve_claims(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
) -> std::result::Result<HashMap<String, ClaimInfo>, SyncProblem> {
    let ns = vmi.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let mut claims = HashMap::new();
    let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
    for v in &vmi.spec.volumes {
        let Some(claim) = v.claim_name() else {
            continue;
        };
        if v.data_volume.is_some() {
            match dvs.get_opt(claim).await {
                Ok(Some(dv)) if dv.succeeded() => {}
                Ok(Some(dv)) => {
                    let phase = dv
                        .status
                        .and_then(|s| s.phase)
                        .map_or("Pending", |p| p.as_str());
                    return Err(SyncProblem {
                        reason: "DataVolumeNotReady".into(),
                        message: format!(
                            "DataVolume {ns}/{claim} is {phase}, waiting for it to succeed"
                        ),
                    });
                }
                Ok(None) => {
                    return Err(SyncProblem {
                        reason: "FailedDataVolumeNotFound".into(),
                        message: format!(
                            "DataVolume {ns}/{claim} does not exist, waiting for it to appear"
                        ),
                    })
                }
                Err(e) => {
                    return Err(SyncProblem {
                        reason: "FailedCreate".into(),
                        message: format!("reading DataVolume {ns}/{claim}: {e}"),
                    })
                }
            }
        }
        let claim = &claim.to_string();
        let pvc = match api.get_opt(claim).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(SyncProblem {
                    reason: "FailedPvcNotFound".into(),
                    message: format!("PVC {ns}/{claim} does not exist, waiting for it to appear"),
                })
            }
            Err(e) => {
                return Err(SyncProblem {
                    reason: "FailedCreate".into(),
                    message: format!("reading PVC {ns}/{claim}: {e}"),
                })
            }
        };
        let spec = pvc.spec.unwrap_or_default();
        let size = pvc
            .status
            .and_then(|s| s.capacity)
            .and_then(|c| c.get("storage").cloned())
            .or_else(|| {
                spec.resources
                    .and_then(|r| r.requests)
                    .and_then(|r| r.get("storage").cloned())
            });
        let size_bytes = size.and_then(|q| parse_bytes(&q.0).ok()).unwrap_or(0);
        claims.insert(
            claim.clone(),
            ClaimInfo {
                block: spec.volume_mode.as_deref() == Some("Block"),
                size_bytes,
            },
        );
    }
    Ok(claims)
}

/// Pauses or resumes the guest as the VMI's pause annotation asks.
async fn sync_pause(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    ip: &str,
    uid: &str,
    launcher: Option<&kiln_crd::launch::LauncherState>,
) {
    let Some(l) = launcher.filter(|l| l.phase == kiln_crd::launch::LauncherPhase::Running) else {
        return;
    };
    let want = vmi
        .annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v == "true");
    if want == l.paused {
        return;
    }
    let path = if want { "/v1/pause" } else { "/v1/unpause" };
    match crate::launcher_watch::request(ip, &ctx.tokens.token(uid), hyper::Method::PUT, path).await
    {
        Ok((204, _)) => {
            let reason = if want { "Paused" } else { "Unpaused" };
            ctx.event(vmi, false, reason, format!("{reason} the guest"))
                .await;
        }
        Ok((status, body)) => {
            let why = String::from_utf8_lossy(&body).to_string();
            ctx.event(vmi, true, "FailedPause", format!("{path}: {status} {why}"))
                .await;
        }
        Err(e) => warn!("VMI {}: {path}: {e}", vmi.name_any()),
    }
}

/// The VMI is being deleted: stop its pod (the launcher asks the guest to shut down within the
/// grace period), and once the pod is gone let the VMI go.
async fn finish_deletion(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    vmis: &Api<VirtualMachineInstance>,
    pods: &Api<Pod>,
    pod: Option<&Pod>,
) -> Result<Action> {
    let name = vmi.name_any();
    let uid = vmi.uid().unwrap_or_default();
    if let Some(p) = pod {
        if p.metadata.deletion_timestamp.is_none() {
            let pod_name = p.name_any();
            match pods.delete(&pod_name, &DeleteParams::default()).await {
                Ok(_) => {
                    ctx.event(
                        vmi,
                        false,
                        "Stopping",
                        format!("Stopping the guest: deleting launcher pod {pod_name}"),
                    )
                    .await
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The pod's deletion brings this VMI back here.
        return Ok(Action::await_change());
    }
    // The cache may lag: make sure the pod is really gone.
    if pods
        .get_opt(&launcher_pod_name(&name, &uid))
        .await?
        .is_some_and(|p| p.labels().get(CREATED_BY_LABEL) == Some(&uid))
    {
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    }
    ctx.launchers.forget(&uid);
    remove_finalizer(vmis, vmi, VMI_FINALIZER).await?;
    Ok(Action::await_change())
}

/// Whether `vmi` is not final and uses `claim` (for the PVC
/// watch: a claim that appears or binds wakes the VMIs waiting for it).
pub fn uses_claim(vmi: &VirtualMachineInstance, claim: &str) -> bool {
    vmi.spec
        .volumes
        .iter()
        .any(|v| v.claim_name() == Some(claim))
        && !vmi.status.as_ref().is_some_and(|s| s.phase.is_final())
}
