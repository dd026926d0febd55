//! The DataImportCron reconciler: on its schedule (or at once when annotated
//! `cdi.kiln.dev/trigger-import`) it resolves the template's tag to a digest; a new digest gets
//! a new import (DataVolume + claim named after it, pinned to the digest); the managed
//! DataSource moves only once that import succeeded; older imports go per garbage collection.

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kiln_crd::cdi::data_import_cron::{ImportStatus, RetentionPolicy};
use kiln_crd::cdi::data_source::DataSourceSource;
use kiln_crd::cdi::data_volume::PvcSource;
use kiln_crd::cdi::{
    kind, DataImportCron, DataImportCronStatus, DataSource, DataSourceSpec, DataVolume,
};
use kiln_crd::conditions::{self, Condition};
use kiln_crd::names::FIELD_MANAGER;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use tracing::info;

use crate::context::{Context, Error, Result};

/// On imports and the managed DataSource: the DataImportCron they belong to (CDI's label).
pub const CRON_LABEL: &str = "cdi.kiln.dev/dataImportCron";
/// On an import: the digest it holds.
pub const DIGEST_ANNOTATION: &str = "cdi.kiln.dev/storage.import.sourceDigest";
/// On a DataImportCron: run now, whatever the schedule (removed once the run happened).
pub const TRIGGER_ANNOTATION: &str = "cdi.kiln.dev/trigger-import";

pub async fn reconcile(dic: Arc<DataImportCron>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile("dataimportcron");
    let r = reconcile_dic(&dic, &ctx).await;
    ctx.settle(dic.as_ref(), &timer, r).await
}

pub fn error_policy(dic: Arc<DataImportCron>, _e: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(dic.as_ref()))
}

/// The digest `url`'s tag points at now.
pub async fn resolve_digest(url: &str, insecure: &[String]) -> std::result::Result<String, String> {
    let rest = url
        .strip_prefix("docker://")
        .ok_or_else(|| format!("{url} does not start with docker://"))?;
    let reference: oci_client::Reference = rest.parse().map_err(|e| format!("{url}: {e}"))?;
    let insecure = insecure.to_vec();
    // In a task of its own: oci-client panics when it cannot build an HTTP client (no CA
    // certificates); that must fail this run, not the controller.
    let task = tokio::spawn(async move {
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            ..Default::default()
        });
        client
            .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
            .await
    });
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .map_err(|_| format!("{url}: the registry did not answer in 20 s"))?
        .map_err(|e| format!("{url}: the registry client failed: {e}"))?
        .map_err(|e| format!("{url}: {e}"))
}

async fn reconcile_dic(dic: &DataImportCron, ctx: &Context) -> Result<Action> {
    if dic.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = dic.namespace().unwrap_or_default();
    let name = dic.name_any();
    let crons: Api<DataImportCron> = Api::namespaced(ctx.client.clone(), &ns);
    let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
    let sources: Api<DataSource> = Api::namespaced(ctx.client.clone(), &ns);
    let old = dic.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.source_format = Some("pvc".into());
    let now = Timestamp::now();
    let cron = match plan::parse_schedule(&dic.spec.schedule) {
        Ok(c) => c,
        Err(e) => {
            status.conditions = merged(
                &old,
                false,
                "InvalidSchedule",
                &e,
                false,
                "InvalidSchedule",
                &e,
            );
            write_status(&crons, dic, status).await?;
            return Ok(Action::await_change());
        }
    };
    let url = dic
        .spec
        .template
        .spec
        .source
        .as_ref()
        .and_then(|s| s.registry.as_ref())
        .and_then(|r| r.url.clone())
        .unwrap_or_default();
    let last_run = old.last_execution_timestamp.as_ref().map(|t| t.0);
    let triggered = dic.annotations().contains_key(TRIGGER_ANNOTATION);
    if triggered || plan::due(&cron, last_run, now) {
        match resolve_digest(&url, &ctx.images.insecure_registries).await {
            Ok(digest) => {
                status.last_execution_timestamp = Some(Time(now));
                ensure_import(dic, ctx, &dvs, &url, &digest).await?;
                if triggered {
                    let patch = json!({"metadata": {"annotations": {TRIGGER_ANNOTATION: null}}});
                    crons
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
            }
            Err(e) => {
                // The previous import stays what the DataSource points at; retried with back-off.
                ctx.event(dic, true, "DigestResolveFailed", e.clone()).await;
                let up = conditions::is_true(&old.conditions, kind::UP_TO_DATE);
                status.conditions = merged(&old, false, "RegistryUnavailable", &e, up, "", "");
                write_status(&crons, dic, status).await?;
                return Err(Error::Invalid(e));
            }
        }
    }

    // The imports, newest last.
    let mut imports = dvs
        .list(&ListParams::default().labels(&format!("{CRON_LABEL}={}", label(&name))))
        .await?
        .items;
    imports.sort_by_key(|d| d.creation_timestamp().map(|t| t.0));
    let newest = imports.last();
    let source_name = &dic.spec.managed_data_source;
    let current = sources.get_opt(source_name).await?;
    let current_claim = current
        .as_ref()
        .and_then(|d| d.spec.source.pvc.as_ref())
        .map(|p| p.name.clone());
    let (progressing, up_to_date);
    status.current_imports.clear();
    match newest {
        None => {
            progressing = (false, "NoImport", "no import yet".to_string());
            up_to_date = (false, "NoImport", "no import yet".to_string());
        }
        Some(dv) if dv.succeeded() => {
            let dv_name = dv.name_any();
            if current_claim.as_deref() != Some(dv_name.as_str()) {
                point_source(dic, &sources, current.as_ref(), &dv_name).await?;
                info!("DataImportCron {ns}/{name}: DataSource {source_name} → {dv_name}");
                ctx.event(
                    dic,
                    false,
                    "DataSourceUpdated",
                    format!(
                        "DataSource {source_name} now points at {dv_name} ({})",
                        digest_of(dv)
                    ),
                )
                .await;
                status.last_import_timestamp = Some(Time(now));
            }
            status.last_imported_pvc = Some(PvcSource {
                namespace: Some(ns.clone()),
                name: dv_name,
            });
            progressing = (false, "NoImport", "No current import".to_string());
            up_to_date = (true, "UpToDate", "Latest import is up to date".to_string());
        }
        Some(dv) => {
            let phase = dv.status.as_ref().and_then(|s| s.phase);
            let message = dv
                .status
                .as_ref()
                .and_then(|s| conditions::find(&s.conditions, kind::READY))
                .and_then(|c| c.message.clone())
                .unwrap_or_default();
            if phase == Some(kiln_crd::cdi::DataVolumePhase::Failed) {
                progressing = (
                    false,
                    "ImportFailed",
                    format!("import {} failed: {message}", dv.name_any()),
                );
            } else {
                status.current_imports.push(ImportStatus {
                    data_volume_name: dv.name_any(),
                    digest: Some(digest_of(dv)),
                });
                progressing = (
                    true,
                    "ImportProgressing",
                    format!("import {} is in progress", dv.name_any()),
                );
            }
            up_to_date = (
                false,
                "OutdatedImport",
                format!(
                    "the newest digest's import {} has not succeeded",
                    dv.name_any()
                ),
            );
        }
    }
    status.conditions = merged(
        &old,
        progressing.0,
        progressing.1,
        &progressing.2,
        up_to_date.0,
        up_to_date.1,
        &up_to_date.2,
    );

    if dic.spec.collects_outdated() {
        let view: Vec<plan::Import> = imports
            .iter()
            .map(|d| plan::Import {
                name: d.name_any(),
                created: d
                    .creation_timestamp()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                succeeded: d.succeeded(),
            })
            .collect();
        let in_use = status
            .last_imported_pvc
            .as_ref()
            .map(|p| p.name.clone())
            .or(current_claim);
        let keep = usize::try_from(dic.spec.imports_to_keep).unwrap_or(0);
        for gone in plan::collect(&view, keep, in_use.as_deref()) {
            match dvs.delete(&gone, &DeleteParams::default()).await {
                Ok(_) => {
                    ctx.event(
                        dic,
                        false,
                        "ImportDeleted",
                        format!("Deleted outdated import {gone}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    write_status(&crons, dic, status).await?;
    let next = plan::next_run(&cron, now)
        .and_then(|t| t.duration_since(now).try_into().ok())
        .unwrap_or(Duration::from_secs(300));
    Ok(Action::requeue(next.max(Duration::from_secs(1))))
}

fn label(name: &str) -> String {
    crate::datavolume::pod::label_value(name)
}

fn digest_of(dv: &DataVolume) -> String {
    dv.annotations()
        .get(DIGEST_ANNOTATION)
        .cloned()
        .unwrap_or_default()
}

/// The cron as owner, when its imports and DataSource go with it (retentionPolicy None).
fn owner(dic: &DataImportCron) -> Option<Vec<OwnerReference>> {
    (dic.spec.retention_policy == Some(RetentionPolicy::None))
        .then(|| dic.controller_owner_ref(&()))
        .flatten()
        .map(|mut r| {
            r.controller = Some(false);
            vec![r]
        })
}

/// Creates the import of `digest` if it does not exist; a failed one is made again (a new run).
async fn ensure_import(
    dic: &DataImportCron,
    ctx: &Context,
    dvs: &Api<DataVolume>,
    url: &str,
    digest: &str,
) -> Result<()> {
    let dv_name = plan::import_name(&dic.spec.managed_data_source, digest);
    if let Some(existing) = dvs.get_opt(&dv_name).await? {
        let failed = existing.status.as_ref().and_then(|s| s.phase)
            == Some(kiln_crd::cdi::DataVolumePhase::Failed);
        if !failed {
            return Ok(());
        }
        info!("import {dv_name} failed before; making it again");
        dvs.delete(&dv_name, &DeleteParams::foreground()).await?;
        return Ok(()); // created by the reconcile its deletion triggers
    }
    let t = &dic.spec.template;
    let meta = t.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(CRON_LABEL.into(), label(&dic.name_any()));
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(DIGEST_ANNOTATION.into(), digest.into());
    let mut spec = t.spec.clone();
    if let Some(r) = spec.source.as_mut().and_then(|s| s.registry.as_mut()) {
        r.url = Some(plan::pinned_url(url, digest));
    }
    let dv = DataVolume {
        metadata: ObjectMeta {
            name: Some(dv_name.clone()),
            namespace: dic.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner(dic),
            ..Default::default()
        },
        spec,
        status: None,
    };
    match dvs.create(&PostParams::default(), &dv).await {
        Ok(_) => {
            ctx.event(
                dic,
                false,
                "ImportStarted",
                format!("Importing {digest} into {dv_name}"),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Points the managed DataSource at `claim`, creating it if needed.
async fn point_source(
    dic: &DataImportCron,
    sources: &Api<DataSource>,
    current: Option<&DataSource>,
    claim: &str,
) -> Result<()> {
    let source = DataSourceSource {
        pvc: Some(PvcSource {
            namespace: dic.namespace(),
            name: claim.into(),
        }),
        ..Default::default()
    };
    if current.is_some() {
        let patch = json!({"spec": {"source": source}});
        sources
            .patch(
                &dic.spec.managed_data_source,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        return Ok(());
    }
    let ds = DataSource {
        metadata: ObjectMeta {
            name: Some(dic.spec.managed_data_source.clone()),
            namespace: dic.namespace(),
            labels: Some(BTreeMap::from([(
                CRON_LABEL.to_string(),
                label(&dic.name_any()),
            )])),
            owner_references: owner(dic),
            ..Default::default()
        },
        spec: DataSourceSpec { source },
        status: None,
    };
    match sources.create(&PostParams::default(), &ds).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[allow(clippy::too_many_arguments)]
fn merged(
    old: &DataImportCronStatus,
    progressing: bool,
    p_reason: &str,
    p_message: &str,
    up_to_date: bool,
    u_reason: &str,
    u_message: &str,
) -> Vec<Condition> {
    let wanted = vec![
        Condition::new(kind::PROGRESSING, progressing, p_reason, p_message),
        Condition::new(kind::UP_TO_DATE, up_to_date, u_reason, u_message),
    ];
    conditions::merge(&old.conditions, wanted, &Time(Timestamp::now()))
}

async fn write_status(
    crons: &Api<DataImportCron>,
    dic: &DataImportCron,
    new: DataImportCronStatus,
) -> Result<()> {
    if dic.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let body =
        json!({"apiVersion": "cdi.kiln.dev/v1beta1", "kind": "DataImportCron", "status": new});
    crons
        .patch_status(
            &dic.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(())
}
