//! CSI clones, as CDI's csi-clone strategy: when the source claim and the target share a
//! StorageClass annotated `cdi.kiln.dev/clone-strategy: csi-clone`, the target claim names the
//! source claim as its dataSource and the CSI driver copies the volume. A dataSource must be in
//! the claim's own namespace, so across namespaces the clone is made in the source's namespace
//! under a temporary claim and its PersistentVolume is handed to the target claim, as CDI's
//! ObjectTransfer does: kept (Retain) while unclaimed, bound to the target, then given its
//! reclaim policy back.

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kiln_crd::cdi::storage::StorageSpec;
use kiln_crd::cdi::DataVolume;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use super::source::claim_for;
use crate::context::{
    add_finalizer, create_unless_exists, delete_unless_gone, managed_by_kiln, Context, Result,
};

/// On a StorageClass: how claims of it are cloned (`csi-clone`, else a host-assisted copy).
pub const STRATEGY_ANNOTATION: &str = "cdi.kiln.dev/clone-strategy";
const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// On the temporary claim and the volume handed over: the target DataVolume's UID.
pub const CLONE_FOR_LABEL: &str = "cdi.kiln.dev/csi-clone-for";
/// On the volume handed over: its reclaim policy before it was kept for the handover.
const RECLAIM_ANNOTATION: &str = "cdi.kiln.dev/reclaim-policy";

/// A CSI clone of claim `namespace`/`claim` of StorageClass `class`.
#[derive(Clone, Debug, PartialEq)]
pub struct CsiClone {
    pub namespace: String,
    pub claim: String,
    pub class: String,
}

/// Where a clone stands.
pub enum Progress {
    Done,
    Waiting(String),
}

/// The StorageClass a clone of a claim with `source` spec into `dv` can be a CSI clone in: the
/// same class on both sides (the target's given, or the cluster's default), annotated for it,
/// and the same volume mode.
pub async fn class_for(
    ctx: &Context,
    dv: &DataVolume,
    source: &PersistentVolumeClaimSpec,
) -> Result<Option<String>> {
    let Some(class) = source.storage_class_name.clone() else {
        return Ok(None);
    };
    let storage = dv.spec.storage();
    let source_mode = source.volume_mode.as_deref().unwrap_or("Filesystem");
    if source_mode != storage.mode().as_str() {
        return Ok(None);
    }
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let target = match storage.storage_class_name {
        Some(c) => c,
        None => {
            let all = classes.list(&ListParams::default()).await?;
            let default = all.items.into_iter().find(|c| {
                c.annotations()
                    .get(DEFAULT_CLASS_ANNOTATION)
                    .map(String::as_str)
                    == Some("true")
            });
            match default {
                Some(c) => c.name_any(),
                None => return Ok(None),
            }
        }
    };
    if target != class {
        return Ok(None);
    }
    let Some(sc) = classes.get_opt(&class).await? else {
        return Ok(None);
    };
    let csi = sc
        .annotations()
        .get(STRATEGY_ANNOTATION)
        .map(String::as_str)
        == Some("csi-clone");
    Ok(csi.then_some(class))
}

/// The claim a CSI clone fills: the DataVolume's claim, in `src`'s class, of `size` bytes.
fn target_claim(
    dv: &DataVolume,
    storage: &StorageSpec,
    src: &CsiClone,
    size: u64,
) -> PersistentVolumeClaim {
    let mut storage = storage.clone();
    storage.storage_class_name = Some(src.class.clone());
    claim_for(dv, &storage, size)
}

/// The temporary claim in the source's namespace that the driver clones into.
fn temporary_name(dv: &DataVolume) -> String {
    format!("kiln-csi-clone-{}", dv.uid().unwrap_or_default())
}

/// One step of the clone for `dv` into its claim (`claim`, if it exists yet).
pub async fn advance(
    dv: &DataVolume,
    ctx: &Context,
    src: &CsiClone,
    storage: &StorageSpec,
    size: u64,
    claim: Option<&PersistentVolumeClaim>,
) -> Result<Progress> {
    let ns = dv.namespace().unwrap_or_default();
    let name = dv.name_any();
    let uid = dv.uid().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if let Some(c) = claim {
        let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        if !bound {
            return Ok(Progress::Waiting(format!(
                "the CSI driver is cloning {}/{} into PVC {name}",
                src.namespace, src.claim
            )));
        }
        if let Some(pv) = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) {
            restore_reclaim_policy(&pvs, pv).await?;
        }
        return Ok(Progress::Done);
    }
    let mut target = target_claim(dv, storage, src, size);
    if src.namespace == ns {
        if let Some(spec) = target.spec.as_mut() {
            spec.data_source = Some(pvc_source(&src.claim));
        }
        create_unless_exists(&claims, &target).await?;
        return Ok(Progress::Waiting(format!(
            "CSI clone of {} into PVC {name} scheduled",
            src.claim
        )));
    }

    // Across namespaces: the finalizer first (what is made in the other namespace has no owner).
    let dvs: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
    if add_finalizer(&dvs, dv, super::clone_source::FINALIZER).await? {
        return Ok(Progress::Waiting("adding the clone finalizer".into()));
    }
    let source_claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &src.namespace);
    let temporary = temporary_name(dv);
    if let Some(t) = source_claims.get_opt(&temporary).await? {
        let bound = t.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let Some(pv) = t
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|_| bound)
        else {
            return Ok(Progress::Waiting(format!(
                "the CSI driver is cloning {} in namespace {}",
                src.claim, src.namespace
            )));
        };
        keep_for_handover(&pvs, &pv, &uid).await?;
        delete_unless_gone(&source_claims, &temporary).await?;
        return Ok(Progress::Waiting(format!(
            "handing volume {pv} over to PVC {name}"
        )));
    }
    let selector = format!("{CLONE_FOR_LABEL}={uid}");
    let kept = pvs.list(&ListParams::default().labels(&selector)).await?;
    if let Some(pv) = kept.items.into_iter().next() {
        let pv_name = pv.name_any();
        let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let ours = claim_ref.is_some_and(|r| {
            r.namespace.as_deref() == Some(&ns) && r.name.as_deref() == Some(&name)
        });
        if !ours {
            // A released volume still names the temporary claim: point it at the target.
            let patch = json!({"spec": {"claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": ns, "name": name, "uid": null, "resourceVersion": null,
            }}});
            pvs.patch(&pv_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(Progress::Waiting(format!(
                "releasing volume {pv_name} to PVC {name}"
            )));
        }
        // The claim comes once the PV controller made the volume Available for it: a claim
        // created while its cache still names the temporary claim would wait for the
        // controller's periodic resync (15 s) to bind.
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        if !matches!(phase, Some("Available" | "Bound")) {
            return Ok(Progress::Waiting(format!(
                "waiting for volume {pv_name} to be available to PVC {name}"
            )));
        }
        if let Some(spec) = target.spec.as_mut() {
            spec.volume_name = Some(pv_name.clone());
        }
        create_unless_exists(&claims, &target).await?;
        return Ok(Progress::Waiting(format!(
            "binding volume {pv_name} to PVC {name}"
        )));
    }
    let mut temp = target;
    temp.metadata.name = Some(temporary);
    temp.metadata.namespace = Some(src.namespace.clone());
    temp.metadata.owner_references = None;
    let mut labels = managed_by_kiln();
    labels.insert(CLONE_FOR_LABEL.to_string(), uid.clone());
    temp.metadata.labels = Some(labels);
    if let Some(spec) = temp.spec.as_mut() {
        spec.data_source = Some(pvc_source(&src.claim));
    }
    create_unless_exists(&source_claims, &temp).await?;
    Ok(Progress::Waiting(format!(
        "CSI clone of {} scheduled in namespace {}",
        src.claim, src.namespace
    )))
}

fn pvc_source(claim: &str) -> TypedLocalObjectReference {
    TypedLocalObjectReference {
        api_group: None,
        kind: "PersistentVolumeClaim".into(),
        name: claim.into(),
    }
}

/// Labels volume `pv` for the handover to DataVolume `uid` and keeps it when its claim goes.
async fn keep_for_handover(pvs: &Api<PersistentVolume>, pv: &str, uid: &str) -> Result<()> {
    let Some(v) = pvs.get_opt(pv).await? else {
        return Ok(());
    };
    let policy = v
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.clone())
        .unwrap_or_else(|| "Delete".into());
    if v.labels().get(CLONE_FOR_LABEL).map(String::as_str) == Some(uid) {
        return Ok(());
    }
    let patch = json!({
        "metadata": {"labels": {CLONE_FOR_LABEL: uid}, "annotations": {RECLAIM_ANNOTATION: policy}},
        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
    });
    pvs.patch(pv, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Gives volume `pv` back the reclaim policy it had before the handover, if it was kept for one.
async fn restore_reclaim_policy(pvs: &Api<PersistentVolume>, pv: &str) -> Result<()> {
    let Some(v) = pvs.get_opt(pv).await? else {
        return Ok(());
    };
    let Some(policy) = v.annotations().get(RECLAIM_ANNOTATION).cloned() else {
        return Ok(());
    };
    let patch = json!({
        "metadata": {"labels": {CLONE_FOR_LABEL: null}, "annotations": {RECLAIM_ANNOTATION: null}},
        "spec": {"persistentVolumeReclaimPolicy": policy},
    });
    pvs.patch(pv, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Removes what a CSI clone across namespaces left for DataVolume `uid`: its temporary claim,
/// and a volume kept for it but never bound (given back its policy, then deleted).
pub async fn remove(ctx: &Context, uid: &str) -> Result<()> {
    let selector = format!("{CLONE_FOR_LABEL}={uid}");
    let lp = ListParams::default().labels(&selector);
    let all: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    for c in all.list(&lp).await? {
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
        delete_unless_gone(&api, &c.name_any()).await?;
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    for pv in pvs.list(&lp).await? {
        let name = pv.name_any();
        restore_reclaim_policy(&pvs, &name).await?;
        let bound = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        if !bound {
            delete_unless_gone(&pvs, &name).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_claim_is_in_the_source_class_and_owned_by_the_data_volume() {
        let dv: DataVolume = serde_json::from_value(json!({
            "apiVersion": "cdi.kiln.dev/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "disk", "namespace": "vms", "uid": "u-1"},
            "spec": {"sourceRef": {"kind": "DataSource", "name": "debian", "namespace": "os"},
                     "storage": {"volumeMode": "Block"}},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let src = CsiClone {
            namespace: "os".into(),
            claim: "debian-abc".into(),
            class: "kiln-csi-hostpath".into(),
        };
        let claim = target_claim(&dv, &dv.spec.storage(), &src, 1 << 30);
        let spec = claim.spec.unwrap_or_default();
        assert_eq!(
            spec.storage_class_name.as_deref(),
            Some("kiln-csi-hostpath")
        );
        assert_eq!(spec.volume_mode.as_deref(), Some("Block"));
        assert_eq!(claim.metadata.owner_references.map(|o| o.len()), Some(1));
        assert_eq!(temporary_name(&dv), "kiln-csi-clone-u-1");
        assert_eq!(pvc_source("debian-abc").kind, "PersistentVolumeClaim");
    }
}
