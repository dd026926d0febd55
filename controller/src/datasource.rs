//! The DataSource reconciler: Ready when its claim exists, is bound and, if a DataVolume fills
//! it, that DataVolume succeeded — so a VM never clones a partial or failed import.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kiln_crd::cdi::{kind, DataSource, DataSourceStatus, DataVolume};
use kiln_crd::conditions::{self, Condition};
use kiln_crd::names::FIELD_MANAGER;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::json;

use crate::context::{Context, Error, Result};

pub async fn reconcile(ds: Arc<DataSource>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile("datasource");
    let r = reconcile_ds(&ds, &ctx).await;
    ctx.settle(ds.as_ref(), &timer, r).await
}

pub fn error_policy(ds: Arc<DataSource>, _e: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(ds.as_ref()))
}

/// Whether the DataSource points at `ns`/`claim` (for the claim and DataVolume watches).
pub fn points_at(ds: &DataSource, ns: &str, claim: &str) -> bool {
    ds.claim().is_some_and(|(n, c)| n == ns && c == claim)
}

async fn reconcile_ds(ds: &DataSource, ctx: &Context) -> Result<Action> {
    let ready = match ds.claim() {
        None => Condition::new(
            kind::READY,
            false,
            "NoSource",
            "the DataSource names no claim",
        ),
        Some((ns, claim)) => {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
            match (pvcs.get_opt(&claim).await?, dvs.get_opt(&claim).await?) {
                (None, _) => Condition::new(
                    kind::READY,
                    false,
                    "NotFound",
                    format!("PVC {ns}/{claim} not found"),
                ),
                (Some(_), Some(dv)) if !dv.succeeded() => {
                    let phase = dv
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .map_or("Pending", |p| p.as_str());
                    Condition::new(
                        kind::READY,
                        false,
                        phase,
                        format!("DataVolume {ns}/{claim} is {phase}"),
                    )
                }
                (Some(p), _)
                    if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") =>
                {
                    Condition::new(
                        kind::READY,
                        false,
                        "Pending",
                        format!("PVC {ns}/{claim} is not bound"),
                    )
                }
                (Some(_), _) => Condition::new(kind::READY, true, "Ready", ""),
            }
        }
    };
    let old = ds.status.clone().unwrap_or_default();
    let new = DataSourceStatus {
        conditions: conditions::merge(&old.conditions, vec![ready], &Time(Timestamp::now())),
        source: Some(ds.spec.source.clone()),
    };
    if ds.status.as_ref() != Some(&new) {
        let api: Api<DataSource> =
            Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
        let body =
            json!({"apiVersion": "cdi.kiln.dev/v1beta1", "kind": "DataSource", "status": new});
        api.patch_status(
            &ds.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    }
    Ok(Action::await_change())
}
