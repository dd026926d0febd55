//! The DataVolume reconciler, as CDI's: the claim (owned by the DataVolume), then one importer
//! or clone pod filling it; its phase (ImportScheduled, ImportInProgress, CloneInProgress,
//! Succeeded, Failed), progress read from the pod, conditions Bound, Running and Ready, events,
//! and retries with back-off (restartCount) when a pod fails for a reason that may pass.

pub mod clone_source;
pub mod csi_clone;
pub mod pod;
pub mod source;

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kiln_crd::cdi::{kind, DataVolume, DataVolumePhase, DataVolumeStatus};
use kiln_crd::conditions::{self, Condition};
use kiln_crd::names::FIELD_MANAGER;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::json;

use self::pod::{Job, TargetClaim, PROGRESS_PORT};
use self::source::Resolved;
use crate::context::{delete_unless_gone, Context, Error, Result};
use crate::vmi::pod::usable_bytes;

/// How often progress is read while a pod runs.
const PROGRESS_PERIOD: Duration = Duration::from_secs(3);
/// The first retry after a failed attempt; it doubles per attempt up to [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_secs(10);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);
/// How often a clone across namespaces that RBAC refused is checked again.
const UNAUTHORIZED_RECHECK: Duration = Duration::from_secs(30);

/// Where the job runs: a pod here, or also a clone-source pod in the source's namespace; or no
/// pod: the CSI driver clones.
enum Planned {
    Here(Job),
    Remote(clone_source::CloneSource),
    Csi(csi_clone::CsiClone),
}

pub async fn reconcile(dv: Arc<DataVolume>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile("datavolume");
    let r = reconcile_dv(&dv, &ctx).await;
    ctx.settle(dv.as_ref(), &timer, r).await
}

pub fn error_policy(dv: Arc<DataVolume>, _e: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(dv.as_ref()))
}

/// The wait before attempt `restarts + 1`.
pub fn retry_wait(restarts: i32) -> Duration {
    let n = u32::try_from(restarts).unwrap_or(0).min(8);
    (FIRST_RETRY_WAIT * 2u32.pow(n)).min(MAX_RETRY_WAIT)
}

/// What this reconcile found, as the status will say it.
struct Found {
    phase: DataVolumePhase,
    progress: Option<String>,
    running: Condition,
    ready: Condition,
    restart_count: i32,
    digest: Option<String>,
}

impl Found {
    fn new(phase: DataVolumePhase, old: &DataVolumeStatus, reason: &str, message: String) -> Found {
        Found {
            phase,
            progress: old.progress.clone(),
            running: Condition::new(kind::RUNNING, false, reason, message.clone()),
            ready: Condition::new(kind::READY, false, reason, message),
            restart_count: old.restart_count,
            digest: old.source_digest.clone(),
        }
    }
}

async fn reconcile_dv(dv: &DataVolume, ctx: &Context) -> Result<Action> {
    if dv.metadata.deletion_timestamp.is_some() {
        // The claim and importer pod go with it (owner references); a clone-source pod in
        // another namespace cannot, so it is ended here.
        clone_source::remove(dv, ctx).await?;
        return Ok(Action::await_change());
    }
    let ns = dv.namespace().unwrap_or_default();
    let name = dv.name_any();
    let old = dv.status.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let claim = claims.get_opt(&name).await?;
    if let Some(c) = &claim {
        let owned = c
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == dv.metadata.uid.as_ref());
        if !owned {
            let why = format!(
                "a PersistentVolumeClaim named {name} exists that this DataVolume does not own"
            );
            let found = Found::new(DataVolumePhase::Failed, &old, "ClaimExists", why);
            return finish(dv, ctx, claim.as_ref(), found, None).await;
        }
    }
    match old.phase {
        Some(DataVolumePhase::Succeeded) => {
            remove_pods(&pods, &name).await?;
            clone_source::remove(dv, ctx).await?;
            let mut found =
                Found::new(DataVolumePhase::Succeeded, &old, "Completed", String::new());
            found.ready = Condition::new(kind::READY, true, "", "");
            return finish(dv, ctx, claim.as_ref(), found, None).await;
        }
        Some(DataVolumePhase::Failed) => {
            clone_source::remove(dv, ctx).await?;
            return Ok(Action::await_change());
        }
        _ => {}
    }

    let (planned, source_size) = match source::resolve(dv, ctx).await? {
        Resolved::Job(job, size) => (Planned::Here(job), size),
        Resolved::Remote(src, size) => (Planned::Remote(src), size),
        Resolved::Csi(src, size) => (Planned::Csi(src), size),
        Resolved::Unauthorized(message) => {
            let found = Found::new(DataVolumePhase::Pending, &old, "CloneUnauthorized", message);
            return finish(dv, ctx, claim.as_ref(), found, Some(UNAUTHORIZED_RECHECK)).await;
        }
        Resolved::Wait(reason, message) => {
            let found = Found::new(DataVolumePhase::Pending, &old, reason, message);
            return finish(dv, ctx, claim.as_ref(), found, None).await;
        }
        Resolved::Fail(reason, message) => {
            let found = Found::new(DataVolumePhase::Failed, &old, reason, message);
            return finish(dv, ctx, claim.as_ref(), found, None).await;
        }
    };
    let storage = dv.spec.storage();
    let size = match storage.size().cloned() {
        Some(q) => kiln_crd::quantity::parse_bytes(&q.0).ok(),
        None => source_size,
    };
    let Some(size) = size else {
        let found = Found::new(
            DataVolumePhase::Failed,
            &old,
            "MissingSize",
            "give the DataVolume's storage.resources.requests.storage (the claim's size)".into(),
        );
        return finish(dv, ctx, claim.as_ref(), found, None).await;
    };
    if let Planned::Csi(src) = &planned {
        if let Some(smaller) = source_size.filter(|s| *s > size) {
            let why = format!(
                "the claim asked for ({size} bytes) is smaller than its source {}/{} ({smaller} bytes)",
                src.namespace, src.claim
            );
            let found = Found::new(DataVolumePhase::Failed, &old, "TargetTooSmall", why);
            return finish(dv, ctx, claim.as_ref(), found, None).await;
        }
        let progress = csi_clone::advance(dv, ctx, src, &storage, size, claim.as_ref()).await?;
        let claim = claims.get_opt(&name).await?;
        return match progress {
            csi_clone::Progress::Done => {
                let mut found =
                    Found::new(DataVolumePhase::Succeeded, &old, "Completed", String::new());
                found.ready = Condition::new(kind::READY, true, "", "");
                found.progress = Some("100.0%".into());
                let action = finish(dv, ctx, claim.as_ref(), found, None).await?;
                let note = format!(
                    "Successfully cloned {}/{} into PVC {name} (CSI clone)",
                    src.namespace, src.claim
                );
                ctx.event(dv, false, "CloneSucceeded", note).await;
                clone_source::remove(dv, ctx).await?;
                Ok(action)
            }
            csi_clone::Progress::Waiting(message) => {
                let mut found = Found::new(
                    DataVolumePhase::CSICloneInProgress,
                    &old,
                    "CSIClone",
                    message,
                );
                found.progress = Some("N/A".into());
                // Its own claim wakes it, and across namespaces so do the temporary claim and
                // the handed-over PV (golden.rs watches them by their label).
                finish(dv, ctx, claim.as_ref(), found, None).await
            }
        };
    }
    let claim = match claim {
        Some(c) => c,
        None => {
            let c = source::claim_for(dv, &storage, size);
            match claims.create(&PostParams::default(), &c).await {
                Ok(c) => c,
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Ok(Action::requeue(Duration::from_secs(1)))
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let block = claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
    let target = TargetClaim {
        name: name.clone(),
        block,
        capacity: (!block).then(|| usable_bytes(size)),
    };
    let job = match planned {
        Planned::Here(job) => job,
        Planned::Csi(_) => return Ok(Action::await_change()),
        Planned::Remote(src) => match clone_source::ensure(dv, ctx, &src).await? {
            clone_source::Served::Ready(job) => job,
            clone_source::Served::Waiting(message) => {
                let found = Found::new(
                    DataVolumePhase::CloneScheduled,
                    &old,
                    "CloneSourcePending",
                    message,
                );
                // Woken by the source pod's changes (golden.rs watches them).
                return finish(dv, ctx, Some(&claim), found, None).await;
            }
        },
    };
    let (scheduled, in_progress) = if job.is_clone() {
        (
            DataVolumePhase::CloneScheduled,
            DataVolumePhase::CloneInProgress,
        )
    } else {
        (
            DataVolumePhase::ImportScheduled,
            DataVolumePhase::ImportInProgress,
        )
    };
    let pod_name = pod::pod_name(&name, job.is_clone());
    let Some(p) = pods.get_opt(&pod_name).await? else {
        let rendered = pod::render(dv, &job, &target, &ctx.images);
        match pods.create(&PostParams::default(), &rendered).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let what = if job.is_clone() { "Clone" } else { "Import" };
        let found = Found::new(
            scheduled,
            &old,
            &format!("{what}Scheduled"),
            format!("{what} into {name} scheduled"),
        );
        return finish(dv, ctx, Some(&claim), found, None).await;
    };
    if p.metadata.deletion_timestamp.is_some() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    match phase.as_str() {
        "Running" => {
            let mut found = Found::new(in_progress, &old, "Pod is running", String::new());
            found.running = Condition::new(kind::RUNNING, true, "", "");
            found.progress = Some(read_progress(&p).await.unwrap_or_else(|| "N/A".into()));
            finish(dv, ctx, Some(&claim), found, Some(PROGRESS_PERIOD)).await
        }
        "Succeeded" => {
            let outcome = pod::finished(&p).map(|f| f.1).unwrap_or_default();
            let mut found =
                Found::new(DataVolumePhase::Succeeded, &old, "Completed", String::new());
            found.ready = Condition::new(kind::READY, true, "", "");
            found.progress = Some("100.0%".into());
            found.digest = outcome.digest.clone().or(found.digest);
            let action = finish(dv, ctx, Some(&claim), found, None).await?;
            let note = match &outcome.digest {
                Some(d) => format!("Successfully imported {d} into PVC {name}"),
                None if job.is_clone() => format!("Successfully cloned into PVC {name}"),
                None => format!("Successfully imported into PVC {name}"),
            };
            ctx.event(
                dv,
                false,
                if job.is_clone() {
                    "CloneSucceeded"
                } else {
                    "ImportSucceeded"
                },
                note,
            )
            .await;
            remove_pods(&pods, &name).await?;
            Ok(action)
        }
        "Failed" => {
            let (code, outcome, at) = pod::finished(&p).unwrap_or((1, Default::default(), None));
            if code == 2 || !outcome.transient {
                let found = Found::new(
                    DataVolumePhase::Failed,
                    &old,
                    "Error",
                    outcome.message.clone(),
                );
                ctx.event(
                    dv,
                    true,
                    "Error",
                    format!("{}: {}", pod_name, outcome.message),
                )
                .await;
                return finish(dv, ctx, Some(&claim), found, None).await;
            }
            let wait = retry_wait(old.restart_count);
            let left = at
                .map(|t| t + wait)
                .and_then(|due| due.duration_since(Timestamp::now()).try_into().ok())
                .unwrap_or(Duration::ZERO);
            let mut found = Found::new(in_progress, &old, "Error", outcome.message.clone());
            if left > Duration::ZERO {
                if running_message(&old) != Some(outcome.message.as_str()) {
                    ctx.event(
                        dv,
                        true,
                        "Error",
                        format!(
                            "{pod_name} failed: {}; retrying in {} s",
                            outcome.message,
                            wait.as_secs()
                        ),
                    )
                    .await;
                }
                return finish(dv, ctx, Some(&claim), found, Some(left)).await;
            }
            found.restart_count = old.restart_count.saturating_add(1);
            let action = finish(dv, ctx, Some(&claim), found, Some(Duration::from_secs(1))).await?;
            remove_pods(&pods, &name).await?;
            Ok(action)
        }
        _ => {
            let (reason, message) = pod::waiting_reason(&p)
                .unwrap_or_else(|| ("Pending".into(), format!("{pod_name} is pending")));
            // A retry's pod: the import stays in progress, as a restarted CDI importer's does,
            // and the last attempt's error stays what the Running condition says.
            let retrying = old.restart_count > 0 && pod::waiting_reason(&p).is_none();
            let found = match running_message(&old).filter(|_| retrying) {
                Some(last) => Found::new(in_progress, &old, "Error", last.to_string()),
                None if old.restart_count > 0 => Found::new(in_progress, &old, &reason, message),
                None => Found::new(scheduled, &old, &reason, message),
            };
            finish(dv, ctx, Some(&claim), found, None).await
        }
    }
}

/// What the DataVolume's Running condition says (the last attempt's error, while retrying).
fn running_message(status: &DataVolumeStatus) -> Option<&str> {
    conditions::find(&status.conditions, kind::RUNNING).and_then(|c| c.message.as_deref())
}

/// The importer's progress ("45.20%"), read from its metrics endpoint.
async fn read_progress(p: &Pod) -> Option<String> {
    let ip = p.status.as_ref()?.pod_ip.clone()?;
    let (status, body) = crate::launcher_watch::request_to(
        &format!("{ip}:{PROGRESS_PORT}"),
        None,
        Method::GET,
        "/metrics",
    )
    .await
    .ok()?;
    (status == 200).then_some(())?;
    parse_progress(&String::from_utf8_lossy(&body))
}

/// The value of the importer's progress metric as CDI prints it.
pub fn parse_progress(metrics: &str) -> Option<String> {
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kiln_cdi_import_progress_total"))?;
    let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
    Some(format!("{:.2}%", value.clamp(0.0, 100.0)))
}

/// Deletes the DataVolume's importer and clone pods, if any.
async fn remove_pods(pods: &Api<Pod>, dv: &str) -> Result<()> {
    for clone in [false, true] {
        delete_unless_gone(pods, &pod::pod_name(dv, clone)).await?;
    }
    Ok(())
}

/// Writes the status `found` describes (if it changed), with an event on a phase change;
/// requeues after `requeue` if given.
async fn finish(
    dv: &DataVolume,
    ctx: &Context,
    claim: Option<&PersistentVolumeClaim>,
    found: Found,
    requeue: Option<Duration>,
) -> Result<Action> {
    let old = dv.status.clone().unwrap_or_default();
    let name = dv.name_any();
    let bound = match claim
        .and_then(|c| c.status.as_ref())
        .and_then(|s| s.phase.as_deref())
    {
        Some("Bound") => Condition::new(kind::BOUND, true, "Bound", format!("PVC {name} Bound")),
        Some(other) => Condition::new(kind::BOUND, false, other, format!("PVC {name} {other}")),
        None => Condition::new(kind::BOUND, false, "NotFound", "No PVC found"),
    };
    let now = Time(Timestamp::now());
    let new = DataVolumeStatus {
        phase: Some(found.phase),
        progress: found.progress,
        restart_count: found.restart_count,
        conditions: conditions::merge(
            &old.conditions,
            vec![bound, found.running, found.ready],
            &now,
        ),
        claim_name: claim.map(|_| name.clone()),
        source_digest: found.digest,
    };
    if old.phase != new.phase && new.phase == Some(DataVolumePhase::Failed) {
        let why = conditions::find(&new.conditions, kind::READY)
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        ctx.event(
            dv,
            true,
            "Failed",
            format!("DataVolume {name} failed: {why}"),
        )
        .await;
    } else if old.phase != new.phase {
        if let Some(p) = new.phase {
            ctx.event(
                dv,
                false,
                p.as_str(),
                format!("DataVolume {name}: {}", p.as_str()),
            )
            .await;
        }
    }
    if dv.status.as_ref() != Some(&new) {
        let api: Api<DataVolume> =
            Api::namespaced(ctx.client.clone(), &dv.namespace().unwrap_or_default());
        let body =
            json!({"apiVersion": "cdi.kiln.dev/v1beta1", "kind": "DataVolume", "status": new});
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_longer_each_time_up_to_five_minutes() {
        let waits: Vec<u64> = (0..8).map(|n| retry_wait(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_wait(-1).as_secs(), 10);
        assert_eq!(retry_wait(i32::MAX).as_secs(), 300);
    }

    #[test]
    fn progress_reads_as_cdi_prints_it() {
        let text = "# HELP x\n# TYPE kiln_cdi_import_progress_total counter\nkiln_cdi_import_progress_total{ownerUID=\"u\"} 45.2\n";
        assert_eq!(parse_progress(text).as_deref(), Some("45.20%"));
        assert_eq!(parse_progress("nothing"), None);
        assert_eq!(
            parse_progress("kiln_cdi_import_progress_total{} 120").as_deref(),
            Some("100.00%")
        );
    }
}
