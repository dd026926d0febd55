//! The pod that fills a DataVolume's claim: kiln-importer with the claim at /data (or its device),
//! scratch space for qcow2, the source claim read-only for a clone; least privilege, no token.
//! Pure, as the launcher pod's rendering is; and what the finished pod's termination message says.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeDevice, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kiln_crd::cdi::DataVolume;
use kube::{Resource, ResourceExt};
use serde::Deserialize;

use crate::vmi::pod::{mount, Images};

/// Label on importer and clone pods (and the claims they fill).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const IMPORTER_COMPONENT: &str = "kiln-importer";
/// The DataVolume a pod or claim belongs to.
pub const DATA_VOLUME_LABEL: &str = "cdi.kiln.dev/data-volume";
/// The importer's progress endpoint.
pub const PROGRESS_PORT: u16 = 8443;
/// The user importer pods run as (CDI's and KubeVirt's qemu user).
pub const IMPORTER_UID: i64 = 107;
/// Where the block device of a Block claim appears in the importer.
const TARGET_DEVICE: &str = "/dev/cdi-block-volume";
const SOURCE_DEVICE: &str = "/dev/cdi-source-volume";

/// What the pod does.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    Registry {
        url: String,
    },
    Http {
        url: String,
        checksum: Option<String>,
    },
    Blank,
    /// Copies the claim `claim` of this namespace.
    Clone {
        claim: String,
        block: bool,
    },
    /// Streams a claim of another namespace from the clone-source pod serving it at `url`.
    NetworkClone {
        url: String,
        token: String,
    },
}

impl Job {
    pub fn is_clone(&self) -> bool {
        matches!(self, Job::Clone { .. } | Job::NetworkClone { .. })
    }
}

/// A pod's volumes, mounts and devices as they are assembled.
#[derive(Default)]
pub struct Storage {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    pub devices: Vec<VolumeDevice>,
}

impl Storage {
    /// Claim `claim` as volume `volume`; returns the disk's path in the container: the device
    /// at `device` for a Block claim, else `disk.img` under `dir`.
    pub fn claim(
        &mut self,
        volume: &str,
        claim: &str,
        block: bool,
        read_only: bool,
        (device, dir): (&str, &str),
    ) -> String {
        self.volumes.push(Volume {
            name: volume.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.into(),
                read_only: Some(read_only),
            }),
            ..Default::default()
        });
        if block {
            self.devices.push(VolumeDevice {
                name: volume.into(),
                device_path: device.into(),
            });
            device.into()
        } else {
            self.mounts.push(mount(volume, dir, read_only));
            format!("{dir}/disk.img")
        }
    }
}

/// Where a clone's source claim appears: its device, or the folder holding its disk.img.
pub const SOURCE_AT: (&str, &str) = (SOURCE_DEVICE, "/source");

/// The claim to fill.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetClaim {
    pub name: String,
    pub block: bool,
    /// Bytes the disk may take (filesystem: the claim minus the filesystem overhead).
    pub capacity: Option<u64>,
}

/// `importer-<dv>` (CDI's name) for imports, `clone-<dv>` for clones, cut to a DNS label.
pub fn pod_name(dv: &str, clone: bool) -> String {
    let prefix = if clone { "clone-" } else { "importer-" };
    let mut name: String = format!("{prefix}{dv}").chars().take(63).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    name
}

pub fn render(dv: &DataVolume, job: &Job, target: &TargetClaim, images: &Images) -> Pod {
    let mut args: Vec<String> = Vec::new();
    let mut arg = |k: &str, v: &str| {
        args.push(k.into());
        args.push(v.into());
    };
    let mut storage = Storage::default();
    let target_path = storage.claim(
        "data",
        &target.name,
        target.block,
        false,
        (TARGET_DEVICE, "/data"),
    );
    storage.volumes.push(Volume {
        name: "scratch".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    storage.mounts.push(mount("scratch", "/scratch", false));
    let mut env = Vec::new();
    match job {
        Job::Registry { url } => {
            arg("--source", "registry");
            arg("--url", url);
        }
        Job::Http { url, checksum } => {
            arg("--source", "http");
            arg("--url", url);
            if let Some(c) = checksum {
                arg("--checksum", c);
            }
        }
        Job::Blank => arg("--source", "blank"),
        Job::Clone { claim, block } => {
            arg("--source", "pvc");
            let path = storage.claim("source", claim, *block, true, SOURCE_AT);
            arg("--source-path", &path);
        }
        Job::NetworkClone { url, token } => {
            arg("--source", "http");
            arg("--url", url);
            env.push(EnvVar {
                name: CLONE_TOKEN_ENV.into(),
                value: Some(token.clone()),
                ..Default::default()
            });
        }
    }
    arg("--target", &target_path);
    if target.block {
        arg("--block", "true");
    }
    if let Some(c) = target.capacity {
        arg("--capacity", &c.to_string());
    }
    arg("--owner-uid", &dv.uid().unwrap_or_default());
    for r in &images.insecure_registries {
        arg("--insecure-registry", r);
    }
    let labels = BTreeMap::from([
        (COMPONENT_LABEL.to_string(), IMPORTER_COMPONENT.to_string()),
        (DATA_VOLUME_LABEL.to_string(), label_value(&dv.name_any())),
    ]);
    let metadata = ObjectMeta {
        name: Some(pod_name(&dv.name_any(), job.is_clone())),
        namespace: dv.namespace(),
        labels: Some(labels),
        owner_references: dv.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    };
    let mut container = importer_container(
        images,
        args,
        ("metrics", PROGRESS_PORT),
        storage.mounts,
        storage.devices,
    );
    container.env = (!env.is_empty()).then_some(env);
    importer_pod(metadata, container, storage.volumes)
}

/// The token a clone across namespaces presents (kiln-importer reads it from this variable).
pub const CLONE_TOKEN_ENV: &str = "KILN_CLONE_TOKEN";

/// kiln-importer with `args`, as the unprivileged importer user, listening on `port` (its
/// name and number).
pub fn importer_container(
    images: &Images,
    args: Vec<String>,
    (port_name, port): (&str, u16),
    mounts: Vec<VolumeMount>,
    devices: Vec<VolumeDevice>,
) -> Container {
    Container {
        name: "importer".into(),
        image: Some(images.importer.clone()),
        image_pull_policy: Some(images.importer_pull_policy.clone()),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some(port_name.into()),
            container_port: i32::from(port),
            ..Default::default()
        }]),
        volume_mounts: Some(mounts),
        volume_devices: (!devices.is_empty()).then_some(devices),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("1Gi".into()),
            )])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// A pod of one importer container: never restarted, no service account token, as the
/// importer user with the runtime's seccomp profile.
pub fn importer_pod(metadata: ObjectMeta, container: Container, volumes: Vec<Volume>) -> Pod {
    Pod {
        metadata,
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(5),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(IMPORTER_UID),
                run_as_group: Some(IMPORTER_UID),
                fs_group: Some(IMPORTER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

/// A label value from a name (at most 63 characters).
pub fn label_value(name: &str) -> String {
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// What a finished importer said (its termination message).
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub message: String,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub virtual_size: Option<u64>,
    #[serde(default)]
    pub transient: bool,
}

/// How the importer container ended, if it did: (exit code, outcome, finished at).
pub fn finished(pod: &Pod) -> Option<(i32, Outcome, Option<k8s_openapi::jiff::Timestamp>)> {
    let status = pod.status.as_ref()?;
    let cs = status.container_statuses.as_ref()?.first()?;
    let t = cs.state.as_ref()?.terminated.as_ref()?;
    let text = t.message.clone().unwrap_or_default();
    let outcome = serde_json::from_str::<Outcome>(&text).unwrap_or_else(|_| Outcome {
        // Not the importer's JSON: the log tail (FallbackToLogsOnError) or nothing.
        message: if text.trim().is_empty() {
            t.reason
                .clone()
                .unwrap_or_else(|| format!("exit code {}", t.exit_code))
        } else {
            text.trim().chars().take(1000).collect()
        },
        transient: t.exit_code != 2,
        ..Default::default()
    });
    Some((t.exit_code, outcome, t.finished_at.as_ref().map(|f| f.0)))
}

/// Why a pod that has not started is stuck, if it is (image pulls, scheduling).
pub fn waiting_reason(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    if let Some(w) = status
        .container_statuses
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
    {
        let reason = w.reason.clone().unwrap_or_default();
        if matches!(
            reason.as_str(),
            "ErrImagePull" | "ImagePullBackOff" | "CreateContainerConfigError" | "InvalidImageName"
        ) {
            return Some((reason, w.message.clone().unwrap_or_default()));
        }
    }
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                c.message.clone().unwrap_or_default(),
            )
        })
}

#[cfg(test)]
pub(crate) mod tests;
