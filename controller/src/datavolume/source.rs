//! Where a DataVolume's data comes from, resolved against the cluster: a registry or http
//! import, a blank disk, or a clone of a claim (named directly or through a DataSource; by the
//! CSI driver or host-assisted), and the claim the DataVolume fills.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kiln_crd::cdi::storage::StorageSpec;
use kiln_crd::cdi::{kind, DataSource, DataVolume};
use kiln_crd::conditions;
use kiln_crd::quantity::{format_bytes, parse_bytes};
use kube::api::Api;
use kube::{Resource, ResourceExt};

use super::clone_source::CloneSource;
use super::csi_clone::{self, CsiClone};
use super::pod::{label_value, Job, DATA_VOLUME_LABEL};
use crate::context::{Context, Result};

pub enum Resolved {
    /// What to run, and the source claim's size for clones.
    Job(Job, Option<u64>),
    /// A clone of a claim in another namespace, and its size.
    Remote(CloneSource, Option<u64>),
    /// A clone the CSI driver makes (either namespace), and the source's size.
    Csi(CsiClone, Option<u64>),
    /// A clone across namespaces that RBAC does not allow (yet): checked again periodically.
    Unauthorized(String),
    /// Not yet (reason, message): a DataSource or source claim that is not ready.
    Wait(&'static str, String),
    /// Never (reason, message).
    Fail(&'static str, String),
}

pub async fn resolve(dv: &DataVolume, ctx: &Context) -> Result<Resolved> {
    let ns = dv.namespace().unwrap_or_default();
    if let Some(r) = &dv.spec.source_ref {
        let src_ns = r.namespace.clone().unwrap_or_else(|| ns.clone());
        let api: Api<DataSource> = Api::namespaced(ctx.client.clone(), &src_ns);
        let Some(ds) = api.get_opt(&r.name).await? else {
            return Ok(Resolved::Wait(
                "DataSourceNotFound",
                format!(
                    "DataSource {src_ns}/{} does not exist, waiting for it",
                    r.name
                ),
            ));
        };
        let ready = ds
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, kind::READY));
        let Some((claim_ns, claim)) = ds.claim().filter(|_| ready) else {
            return Ok(Resolved::Wait(
                "DataSourceNotReady",
                format!(
                    "DataSource {src_ns}/{} is not ready, waiting for it",
                    r.name
                ),
            ));
        };
        return clone_of(dv, ctx, &claim_ns, &claim).await;
    }
    let Some(src) = &dv.spec.source else {
        return Ok(Resolved::Fail(
            "NoSource",
            "the DataVolume has no source".into(),
        ));
    };
    if let Some(r) = &src.registry {
        let Some(url) = r.url.clone() else {
            return Ok(Resolved::Fail("NoSource", "registry.url is missing".into()));
        };
        return Ok(Resolved::Job(Job::Registry { url }, None));
    }
    if let Some(h) = &src.http {
        let job = Job::Http {
            url: h.url.clone(),
            checksum: h.checksum.clone(),
        };
        return Ok(Resolved::Job(job, None));
    }
    if src.blank.is_some() {
        return Ok(Resolved::Job(Job::Blank, None));
    }
    if let Some(p) = &src.pvc {
        let src_ns = p.namespace.clone().unwrap_or_else(|| ns.clone());
        return clone_of(dv, ctx, &src_ns, &p.name).await;
    }
    Ok(Resolved::Fail(
        "NoSource",
        "the DataVolume's source is not one Kiln supports".into(),
    ))
}

/// A clone of claim `claim_ns`/`claim`, once it holds a complete image.
async fn clone_of(dv: &DataVolume, ctx: &Context, claim_ns: &str, claim: &str) -> Result<Resolved> {
    let ns = dv.namespace().unwrap_or_default();
    if claim_ns != ns {
        let (allowed, reason) = super::clone_source::authorize(ctx, &ns, claim_ns).await?;
        if !allowed {
            let why = if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            };
            return Ok(Resolved::Unauthorized(format!(
                "cloning from namespace {claim_ns} is not allowed{why}: grant the service account \
                 {ns}/default create on datavolumes/source (group cdi.kiln.dev) in {claim_ns}, \
                 e.g. with the ClusterRole os-images.kiln.dev:view"
            )));
        }
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), claim_ns);
    let Some(pvc) = claims.get_opt(claim).await? else {
        return Ok(Resolved::Wait(
            "SourcePVCNotFound",
            format!("the source claim {claim_ns}/{claim} does not exist, waiting for it"),
        ));
    };
    // A claim a DataVolume fills is a source only once that DataVolume succeeded.
    let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), claim_ns);
    if let Some(src_dv) = dvs.get_opt(claim).await? {
        if !src_dv.succeeded() {
            return Ok(Resolved::Wait(
                "SourceNotReady",
                format!("the source DataVolume {claim_ns}/{claim} has not succeeded yet"),
            ));
        }
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| parse_bytes(&q.0).ok());
    let block = spec.volume_mode.as_deref() == Some("Block");
    if let Some(class) = csi_clone::class_for(ctx, dv, &spec).await? {
        let src = CsiClone {
            namespace: claim_ns.to_string(),
            claim: claim.to_string(),
            class,
        };
        return Ok(Resolved::Csi(src, size));
    }
    if claim_ns != ns {
        let src = CloneSource {
            namespace: claim_ns.to_string(),
            claim: claim.to_string(),
            block,
        };
        return Ok(Resolved::Remote(src, size));
    }
    Ok(Resolved::Job(
        Job::Clone {
            claim: claim.to_string(),
            block,
        },
        size,
    ))
}

/// The claim a DataVolume fills: its name, owned by it, of `size` bytes.
pub fn claim_for(dv: &DataVolume, storage: &StorageSpec, size: u64) -> PersistentVolumeClaim {
    let name = dv.name_any();
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: dv.namespace(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "kiln-controller".to_string(),
                ),
                (DATA_VOLUME_LABEL.to_string(), label_value(&name)),
            ])),
            owner_references: dv.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(
                storage
                    .access_modes
                    .clone()
                    .unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            ),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(format_bytes(size)),
                )])),
                ..Default::default()
            }),
            storage_class_name: storage.storage_class_name.clone(),
            volume_mode: Some(storage.mode().as_str().into()),
            volume_name: storage.volume_name.clone(),
            ..Default::default()
        }),
        status: None,
    }
}
