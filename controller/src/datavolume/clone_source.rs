//! Clones across namespaces, as CDI's host-assisted ones: allowed when the target namespace's
//! `default` service account may create `datavolumes/source` in the source namespace (KubeVirt's
//! check for a VM's DataVolumes); then a pod in the source namespace serves the source claim,
//! read-only and behind a per-clone token, to the importer in the target namespace. The target
//! DataVolume holds a finalizer until that pod is gone.

use std::collections::BTreeMap;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{EnvVar, HTTPGetAction, Pod, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kiln_crd::cdi::DataVolume;
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;

use super::pod::{
    importer_container, importer_pod, label_value, Job, Storage, CLONE_TOKEN_ENV, COMPONENT_LABEL,
    SOURCE_AT,
};
use crate::context::{add_finalizer, delete_unless_gone, remove_finalizer, Context, Result};
use crate::vmi::pod::Images;

pub const CLONE_SOURCE_COMPONENT: &str = "kiln-clone-source";
/// On the source pod: the target DataVolume's UID and namespace (labels), and its name (a label
/// cut to 63 characters, and whole in the annotation of the same key).
pub const TARGET_UID_LABEL: &str = "cdi.kiln.dev/clone-target-uid";
pub const TARGET_NAMESPACE_LABEL: &str = "cdi.kiln.dev/clone-target-namespace";
pub const TARGET_NAME_LABEL: &str = "cdi.kiln.dev/clone-target";
/// Held by a DataVolume while its clone-source pod, or a CSI clone's temporary claim or volume
/// in another namespace, may exist.
pub const FINALIZER: &str = "cdi.kiln.dev/clone-source";
pub const SERVE_PORT: u16 = 8444;

/// The claim a clone reads, in another namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct CloneSource {
    pub namespace: String,
    pub claim: String,
    pub block: bool,
}

/// Whether the target namespace's default service account may clone from `source_ns`; with
/// the reason the authorizer gave when not.
pub async fn authorize(ctx: &Context, target_ns: &str, source_ns: &str) -> Result<(bool, String)> {
    let review = SubjectAccessReview {
        metadata: ObjectMeta::default(),
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{target_ns}:default")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{target_ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(source_ns.into()),
                verb: Some("create".into()),
                group: Some("cdi.kiln.dev".into()),
                resource: Some("datavolumes".into()),
                subresource: Some("source".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    let status = answer.status.unwrap_or_default();
    Ok((status.allowed, status.reason.unwrap_or_default()))
}

/// `clone-source-<target DataVolume's UID>`.
pub fn pod_name(dv: &DataVolume) -> String {
    format!("clone-source-{}", dv.uid().unwrap_or_default())
}

/// The pod serving `src` to `dv`'s importer with `token`.
pub fn render(dv: &DataVolume, src: &CloneSource, token: &str, images: &Images) -> Pod {
    let mut storage = Storage::default();
    let path = storage.claim("source", &src.claim, src.block, true, SOURCE_AT);
    let args = [
        "--source",
        "pvc",
        "--source-path",
        &path,
        "--serve",
        &format!("0.0.0.0:{SERVE_PORT}"),
        "--owner-uid",
        &dv.uid().unwrap_or_default(),
    ]
    .map(String::from)
    .to_vec();
    let mut container = importer_container(
        images,
        args,
        ("clone", SERVE_PORT),
        storage.mounts,
        storage.devices,
    );
    container.env = Some(vec![EnvVar {
        name: CLONE_TOKEN_ENV.into(),
        value: Some(token.into()),
        ..Default::default()
    }]);
    container.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(i32::from(SERVE_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(2),
        ..Default::default()
    });
    let labels = BTreeMap::from([
        (
            COMPONENT_LABEL.to_string(),
            CLONE_SOURCE_COMPONENT.to_string(),
        ),
        (TARGET_UID_LABEL.to_string(), dv.uid().unwrap_or_default()),
        (
            TARGET_NAMESPACE_LABEL.to_string(),
            dv.namespace().unwrap_or_default(),
        ),
        (TARGET_NAME_LABEL.to_string(), label_value(&dv.name_any())),
    ]);
    let metadata = ObjectMeta {
        name: Some(pod_name(dv)),
        namespace: Some(src.namespace.clone()),
        labels: Some(labels),
        annotations: Some(BTreeMap::from([(
            TARGET_NAME_LABEL.to_string(),
            dv.name_any(),
        )])),
        ..Default::default()
    };
    let mut pod = importer_pod(metadata, container, storage.volumes);
    if let Some(spec) = pod.spec.as_mut() {
        // A bound on a pod nothing else ends, should the controller be gone for good.
        spec.active_deadline_seconds = Some(24 * 3600);
    }
    pod
}

/// The importer's job once the source pod serves; else what it waits for.
pub enum Served {
    Ready(Job),
    Waiting(String),
}

/// The URL a ready pod serves the disk at.
pub fn disk_url(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status.pod_ip.as_deref().filter(|_| ready)?;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    Some(format!("http://{host}:{SERVE_PORT}/disk.img"))
}

/// Makes sure `src` is being served for `dv` (finalizer first, then the pod).
pub async fn ensure(dv: &DataVolume, ctx: &Context, src: &CloneSource) -> Result<Served> {
    let dvs: Api<DataVolume> =
        Api::namespaced(ctx.client.clone(), &dv.namespace().unwrap_or_default());
    if add_finalizer(&dvs, dv, FINALIZER).await? {
        return Ok(Served::Waiting("adding the clone-source finalizer".into()));
    }
    let token = ctx
        .tokens
        .token(&format!("clone-source/{}", dv.uid().unwrap_or_default()));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &src.namespace);
    let name = pod_name(dv);
    let Some(pod) = pods.get_opt(&name).await? else {
        match pods
            .create(
                &PostParams::default(),
                &render(dv, src, &token, &ctx.images),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Served::Waiting(format!(
            "starting {}/{name} to serve {}",
            src.namespace, src.claim
        )));
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Served::Waiting(format!(
            "{}/{name} is ending",
            src.namespace
        )));
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Failed" | "Succeeded")) {
        // Ended (deadline, eviction): a new one serves the next attempt.
        delete_unless_gone(&pods, &name).await?;
        return Ok(Served::Waiting(format!(
            "{}/{name} ended; restarting it",
            src.namespace
        )));
    }
    Ok(match disk_url(&pod) {
        Some(url) => Served::Ready(Job::NetworkClone { url, token }),
        None => Served::Waiting(format!(
            "waiting for {}/{name} to serve {}",
            src.namespace, src.claim
        )),
    })
}

/// Ends `dv`'s clone-source pods wherever they run and removes what a CSI clone across
/// namespaces left, then drops the finalizer.
pub async fn remove(dv: &DataVolume, ctx: &Context) -> Result<()> {
    if !dv.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    super::csi_clone::remove(ctx, &dv.uid().unwrap_or_default()).await?;
    let all: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("{TARGET_UID_LABEL}={}", dv.uid().unwrap_or_default());
    for p in all.list(&ListParams::default().labels(&selector)).await? {
        let ns = p.namespace().unwrap_or_default();
        delete_unless_gone(
            &Api::<Pod>::namespaced(ctx.client.clone(), &ns),
            &p.name_any(),
        )
        .await?;
    }
    let dvs: Api<DataVolume> =
        Api::namespaced(ctx.client.clone(), &dv.namespace().unwrap_or_default());
    remove_finalizer(&dvs, dv, FINALIZER).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datavolume::pod::tests::images;

    fn dv() -> DataVolume {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cdi.kiln.dev/v1beta1",
            "kind": "DataVolume",
            "metadata": {"name": "web-root", "namespace": "prod", "uid": "u-1"},
            "spec": {"sourceRef": {"kind": "DataSource", "name": "debian", "namespace": "kiln-os-images"}, "storage": {}},
        }))
        .unwrap()
    }

    #[test]
    fn the_source_pod_serves_the_claim_read_only_in_its_namespace() {
        let src = CloneSource {
            namespace: "kiln-os-images".into(),
            claim: "debian-0123456789ab".into(),
            block: false,
        };
        let p = render(&dv(), &src, "secret-token", &images());
        assert_eq!(p.metadata.name.as_deref(), Some("clone-source-u-1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("kiln-os-images"));
        assert!(
            p.metadata.owner_references.is_none(),
            "no owner across namespaces"
        );
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels[TARGET_UID_LABEL], "u-1");
        assert_eq!(labels[TARGET_NAMESPACE_LABEL], "prod");
        assert_eq!(labels[TARGET_NAME_LABEL], "web-root");
        let spec = p.spec.unwrap();
        let c = &spec.containers[0];
        assert_eq!(
            c.args.clone().unwrap(),
            [
                "--source",
                "pvc",
                "--source-path",
                "/source/disk.img",
                "--serve",
                "0.0.0.0:8444",
                "--owner-uid",
                "u-1"
            ]
        );
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/source", Some(true))
        );
        let claim = spec.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(claim.claim_name, "debian-0123456789ab");
        assert_eq!(claim.read_only, Some(true));
        assert_eq!(
            c.env.as_ref().unwrap()[0].value.as_deref(),
            Some("secret-token")
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn a_block_source_is_served_from_its_device() {
        let src = CloneSource {
            namespace: "images".into(),
            claim: "raw".into(),
            block: true,
        };
        let p = render(&dv(), &src, "t", &images());
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.args.as_ref().unwrap()[3], "/dev/cdi-source-volume");
        assert!(c.volume_devices.is_some() && c.volume_mounts.as_ref().unwrap().is_empty());
    }

    #[test]
    fn only_a_ready_pod_has_a_url() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "clone-source-u-1"},
            "status": {"phase": "Running", "podIP": "10.244.0.9",
                       "conditions": [{"type": "Ready", "status": "False"}]},
        }))
        .unwrap();
        assert_eq!(disk_url(&pod), None);
        let status = pod.status.as_mut().unwrap();
        status.conditions.as_mut().unwrap()[0].status = "True".into();
        assert_eq!(
            disk_url(&pod).as_deref(),
            Some("http://10.244.0.9:8444/disk.img")
        );
        pod.status.as_mut().unwrap().pod_ip = Some("fd00::9".into());
        assert_eq!(
            disk_url(&pod).as_deref(),
            Some("http://[fd00::9]:8444/disk.img")
        );
    }
}
