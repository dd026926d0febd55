//! The launcher pod of a VMI and its launch description, rendered together so that they agree
//! on every path (Kiln's counterpart of KubeVirt's `services/template.go`). Pure: the PVCs'
//! modes and sizes are resolved by the caller.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, LocalObjectReference,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SecretVolumeSource, SecurityContext, Sysctl, Volume, VolumeDevice,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kiln_crd::domain::PullPolicy;
use kiln_crd::launch::*;
use kiln_crd::machine::{self, MachineError};
use kiln_crd::names::*;
use kiln_crd::network::pod_interface;
use kiln_crd::quantity::{format_bytes, format_milli, parse_bytes};
use kiln_crd::VirtualMachineInstance;
use kube::Resource;
use thiserror::Error;

use super::network::{
    container_ports, launch_network, launch_probes, setup_container, with_capabilities,
    NetworkError, TUN_RESOURCE,
};

/// Seconds the pod gets beyond the VMI's own grace period (kiln-vmm's stop, the launcher's end).
pub const GRACE_PADDING_SECONDS: i64 = 15;
/// KubeVirt's default termination grace period for a VMI.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;
/// The part of a filesystem claim kept free of disk.img, as KubeVirt's default filesystem
/// overhead (5.5%).
pub const FILESYSTEM_OVERHEAD_PERMILLE: u64 = 55;

/// What a disk.img may take of a filesystem claim of `size` bytes: the claim less the overhead,
/// rounded down to whole MiB (as CDI aligns it).
pub fn usable_bytes(size: u64) -> u64 {
    (size - size * FILESYSTEM_OVERHEAD_PERMILLE / 1000) / (1 << 20) * (1 << 20)
}
/// The ServiceAccount launcher pods run as: it has no permissions, and its token is not mounted.
pub const LAUNCHER_SERVICE_ACCOUNT: &str = "kiln-launcher";

/// What the controller found out about a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimInfo {
    pub block: bool,
    pub size_bytes: u64,
}

#[derive(Debug, Error, PartialEq)]
pub enum RenderError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("the VMI has no UID yet")]
    NoUid,
    #[error("volume {0}: claim {1} was not looked up")]
    UnknownClaim(String, String),
    #[error("volume {volume}: emptyDisk capacity {capacity:?}: {error}")]
    Capacity {
        volume: String,
        capacity: String,
        error: String,
    },
    #[error("volume {0}: the launch description is not serialisable: {1}")]
    Json(String, String),
    #[error(transparent)]
    Network(#[from] NetworkError),
}

/// Where the launcher pod's images come from.
#[derive(Clone, Debug)]
pub struct Images {
    pub launcher: String,
    pub launcher_pull_policy: String,
    /// The importer of DataVolumes (kiln-importer).
    pub importer: String,
    pub importer_pull_policy: String,
    /// Registries the importer and the DataImportCrons reach over plain http (host:port).
    pub insecure_registries: Vec<String>,
    /// The registry holding the common boot images (host:port), as pods reach it.
    pub image_registry: String,
}

/// The pod and the launch description of `vmi`.
pub struct Rendered {
    pub pod: Pod,
    pub launch: LaunchSpec,
}

/// A disk from an image (containerDisk, kernel) is copied by an init container run from it.
struct ImageCopy {
    container: String,
    image: String,
    pull_policy: PullPolicy,
    pull_secret: Option<String>,
    pairs: Vec<(String, String)>,
}

pub fn render(
    vmi: &VirtualMachineInstance,
    claims: &HashMap<String, ClaimInfo>,
    images: &Images,
) -> Result<Rendered, RenderError> {
    let spec = &vmi.spec;
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let namespace = vmi.metadata.namespace.clone().unwrap_or_default();
    let uid = vmi.metadata.uid.clone().ok_or(RenderError::NoUid)?;
    let vcpus = machine::vcpus(spec)?;
    let memory_mib = machine::guest_memory_mib(spec)?;
    let resources = machine::pod_resources(spec)?;
    let guest_disks = machine::guest_disks(spec)?;

    let mut volumes = vec![
        Volume {
            name: "launch".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(launch_secret_name(&name, &uid)),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        },
        empty_dir("disks", None),
        empty_dir("run", Some("Memory")),
    ];
    let mut mounts = vec![
        mount("launch", LAUNCH_DIR, true),
        mount("disks", DISKS_DIR, false),
        mount("run", RUN_DIR, false),
    ];
    let mut devices = Vec::new();
    let mut copies: Vec<ImageCopy> = Vec::new();
    let mut pull_secrets: Vec<String> = Vec::new();
    let mut disks = Vec::new();
    let default_kernel = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .is_none();

    for (index, g) in guest_disks.iter().enumerate() {
        let v = g.volume;
        let read_only = g
            .disk
            .disk
            .as_ref()
            .and_then(|d| d.read_only)
            .unwrap_or(false);
        let pod_volume = format!("volume-{index}");
        let image = if let Some(cd) = &v.container_disk {
            let path = format!("{DISKS_DIR}/{}.img", v.name);
            copies.push(ImageCopy {
                container: format!("volume{}", v.name),
                image: cd.image.clone(),
                pull_policy: cd
                    .image_pull_policy
                    .unwrap_or_else(|| PullPolicy::default_for(&cd.image)),
                pull_secret: cd.image_pull_secret.clone(),
                pairs: vec![(
                    cd.path.clone().unwrap_or_else(|| "/disk".into()),
                    path.clone(),
                )],
            });
            DiskImage::File { path }
        } else if let Some(claim_name) = v.claim_name() {
            let info = claims
                .get(claim_name)
                .ok_or_else(|| RenderError::UnknownClaim(v.name.clone(), claim_name.to_string()))?;
            let claim_read_only = v
                .persistent_volume_claim
                .as_ref()
                .and_then(|p| p.read_only)
                .unwrap_or(false);
            volumes.push(Volume {
                name: pod_volume.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name.to_string(),
                    read_only: Some(claim_read_only),
                }),
                ..Default::default()
            });
            if info.block {
                let path = format!("{DEVICES_DIR}/{}", v.name);
                devices.push(VolumeDevice {
                    name: pod_volume,
                    device_path: path.clone(),
                });
                DiskImage::Device { path }
            } else {
                let dir = format!("{VOLUMES_DIR}/{}", v.name);
                mounts.push(mount(&pod_volume, &dir, claim_read_only));
                DiskImage::Sparse {
                    path: format!("{dir}/disk.img"),
                    size_bytes: usable_bytes(info.size_bytes),
                }
            }
        } else if let Some(e) = &v.empty_disk {
            let size_bytes = parse_bytes(&e.capacity.0).map_err(|err| RenderError::Capacity {
                volume: v.name.clone(),
                capacity: e.capacity.0.clone(),
                error: err.to_string(),
            })?;
            DiskImage::Sparse {
                path: format!("{DISKS_DIR}/{}.img", v.name),
                size_bytes,
            }
        } else if let Some(ci) = &v.cloud_init_no_cloud {
            let mut secret = |suffix: &str, secret: &LocalObjectReference, keys: [&str; 2]| {
                let vol = format!("{pod_volume}-{suffix}");
                let dir = format!("{SECRETS_DIR}/{}-{suffix}", v.name);
                volumes.push(Volume {
                    name: vol.clone(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(secret.name.clone()),
                        default_mode: Some(0o400),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                mounts.push(mount(&vol, &dir, true));
                CloudData::Secret {
                    dir,
                    keys: keys.iter().map(|k| k.to_string()).collect(),
                }
            };
            let user_data = match (
                &ci.user_data,
                &ci.user_data_base64,
                &ci.user_data_secret_ref,
            ) {
                (Some(t), _, _) => Some(CloudData::Inline { text: t.clone() }),
                (_, Some(t), _) => Some(CloudData::Base64 { text: t.clone() }),
                (_, _, Some(s)) => Some(secret("userdata", s, ["userdata", "userData"])),
                _ => None,
            };
            let network_config = match (
                &ci.network_data,
                &ci.network_data_base64,
                &ci.network_data_secret_ref,
            ) {
                (Some(t), _, _) => Some(CloudData::Inline { text: t.clone() }),
                (_, Some(t), _) => Some(CloudData::Base64 { text: t.clone() }),
                (_, _, Some(s)) => Some(secret("networkdata", s, ["networkdata", "networkData"])),
                _ => None,
            };
            DiskImage::NoCloud {
                path: format!("{DISKS_DIR}/{}.img", v.name),
                meta_data: meta_data(vmi, &name, &uid),
                user_data,
                network_config,
            }
        } else {
            continue; // refused at admission
        };
        let read_only = read_only
            || matches!(image, DiskImage::NoCloud { .. })
            || v.persistent_volume_claim
                .as_ref()
                .and_then(|p| p.read_only)
                .unwrap_or(false);
        disks.push(LaunchDisk {
            id: g.disk.serial.clone().unwrap_or_else(|| g.disk.name.clone()),
            volume: v.name.clone(),
            image,
            read_only,
            root: default_kernel && index == 0,
        });
    }

    let (kernel, initrd, cmdline) = match spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
    {
        Some(kb) => {
            let c = kb.container.clone().unwrap_or_default();
            let mut pairs = Vec::new();
            let kernel = format!("{DISKS_DIR}/kernel");
            if let Some(p) = &c.kernel_path {
                pairs.push((p.clone(), kernel.clone()));
            }
            let initrd = c.initrd_path.as_ref().map(|p| {
                let dest = format!("{DISKS_DIR}/initrd");
                pairs.push((p.clone(), dest.clone()));
                dest
            });
            copies.push(ImageCopy {
                container: "kernel-boot".into(),
                image: c.image.clone(),
                pull_policy: c
                    .image_pull_policy
                    .unwrap_or_else(|| PullPolicy::default_for(&c.image)),
                pull_secret: c.image_pull_secret.clone(),
                pairs,
            });
            let args = kb.kernel_args.clone().unwrap_or_default();
            let cmdline = if args.split_whitespace().any(|a| a.starts_with("console=")) {
                args
            } else {
                format!("console=ttyS0 {args}").trim().to_string()
            };
            (kernel, initrd, cmdline)
        }
        None if disks.is_empty() => (
            DEFAULT_KERNEL.to_string(),
            Some(DEFAULT_INITRD.to_string()),
            "console=ttyS0 quiet kiln.action=hold".to_string(),
        ),
        None => (
            DEFAULT_KERNEL.to_string(),
            None,
            "console=ttyS0 quiet kiln.action=shell".to_string(),
        ),
    };

    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(0);
    let host = spec.hostname.clone().unwrap_or_else(|| hostname(&name));
    // The pod-network NIC, resolved once for the launch description, the ports and the probes.
    let iface = pod_interface(spec);
    let network = launch_network(iface.as_ref(), &uid, &host)?;
    let (readiness_probe, liveness_probe) = launch_probes(vmi, iface.as_ref())?;
    let launch = LaunchSpec {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid.clone(),
        vcpus,
        memory_mib,
        kernel,
        initrd,
        cmdline,
        disks,
        entropy: spec.domain.devices.rng.is_some(),
        grace_period_seconds: grace as u64,
        network,
        readiness_probe,
        liveness_probe,
    };

    let mut init_containers = Vec::new();
    let networked = launch.network.is_some();
    if networked {
        init_containers.push(setup_container(
            &images.launcher,
            &images.launcher_pull_policy,
            small_resources(),
        ));
    }
    if !copies.is_empty() {
        volumes.push(empty_dir("tools", Some("Memory")));
        init_containers.push(Container {
            name: "kiln-tools".into(),
            image: Some(images.launcher.clone()),
            image_pull_policy: Some(images.launcher_pull_policy.clone()),
            command: Some(vec![
                DISK_COPY_BIN.into(),
                "--install".into(),
                TOOLS_DIR.into(),
            ]),
            volume_mounts: Some(vec![mount("tools", TOOLS_DIR, false)]),
            resources: Some(small_resources()),
            security_context: Some(restricted()),
            ..Default::default()
        });
    }
    for c in copies {
        if let Some(s) = &c.pull_secret {
            if !pull_secrets.contains(s) {
                pull_secrets.push(s.clone());
            }
        }
        let mut command = vec![format!("{TOOLS_DIR}/kiln-disk-copy")];
        for (from, to) in c.pairs {
            command.push(from);
            command.push(to);
        }
        init_containers.push(Container {
            name: c.container,
            image: Some(c.image),
            image_pull_policy: Some(c.pull_policy.as_str().into()),
            command: Some(command),
            volume_mounts: Some(vec![
                mount("tools", TOOLS_DIR, true),
                mount("disks", DISKS_DIR, false),
            ]),
            resources: Some(small_resources()),
            security_context: Some(restricted()),
            ..Default::default()
        });
    }

    let mut requests = BTreeMap::from([
        (
            "cpu".to_string(),
            Quantity(format_milli(resources.cpu_request_milli)),
        ),
        (
            "memory".to_string(),
            Quantity(format_bytes(resources.memory_request_bytes)),
        ),
        (KVM_RESOURCE.to_string(), Quantity("1".into())),
    ]);
    let mut limits = BTreeMap::from([(KVM_RESOURCE.to_string(), Quantity("1".into()))]);
    if networked {
        requests.insert(TUN_RESOURCE.into(), Quantity("1".into()));
        limits.insert(TUN_RESOURCE.into(), Quantity("1".into()));
    }
    if let Some(m) = resources.memory_limit_bytes {
        limits.insert("memory".into(), Quantity(format_bytes(m)));
    }
    if let Some(c) = resources.cpu_limit_milli {
        limits.insert("cpu".into(), Quantity(format_milli(c)));
    }
    requests.retain(|_, q| !q.0.is_empty());

    let template_labels = vmi.metadata.labels.clone().unwrap_or_default();
    let mut labels = template_labels;
    labels.insert(LAUNCHER_LABEL.into(), LAUNCHER_LABEL_VALUE.into());
    labels.insert(CREATED_BY_LABEL.into(), uid.clone());
    labels.insert(VMI_NAME_LABEL.into(), label_value(&name));
    let mut annotations: BTreeMap<String, String> = vmi
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            !k.starts_with("kiln.dev/") && k != "kubectl.kubernetes.io/last-applied-configuration"
        })
        .collect();
    annotations.insert(
        "kubectl.kubernetes.io/default-container".into(),
        COMPUTE_CONTAINER.into(),
    );

    let compute = Container {
        name: COMPUTE_CONTAINER.into(),
        image: Some(images.launcher.clone()),
        image_pull_policy: Some(images.launcher_pull_policy.clone()),
        command: Some(vec!["/usr/bin/kiln-launcher".into()]),
        stdin: Some(true),
        tty: Some(false),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }),
        ports: Some(
            std::iter::once(ContainerPort {
                name: Some("kiln-control".into()),
                container_port: i32::from(CONTROL_PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .chain(container_ports(iface.as_ref()))
            .collect(),
        ),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(i32::from(CONTROL_PORT)),
                ..Default::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(1),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        volume_devices: (!devices.is_empty()).then_some(devices),
        // Non-root and without capabilities: the DHCP server's port 67 is unprivileged in the
        // pod's network namespace (the pod's sysctl below).
        security_context: Some(restricted()),
        ..Default::default()
    };

    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(launcher_pod_name(&name, &uid)),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: vmi.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            service_account_name: Some(LAUNCHER_SERVICE_ACCOUNT.into()),
            security_context: Some(launcher_pod_security(networked)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(grace + GRACE_PADDING_SECONDS),
            node_selector: spec.node_selector.clone(),
            affinity: spec.affinity.clone(),
            tolerations: spec.tolerations.clone(),
            topology_spread_constraints: spec.topology_spread_constraints.clone(),
            priority_class_name: spec.priority_class_name.clone(),
            scheduler_name: spec.scheduler_name.clone(),
            hostname: Some(host),
            subdomain: spec.subdomain.clone(),
            image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
                pull_secrets
                    .into_iter()
                    .map(|name| LocalObjectReference { name })
                    .collect()
            }),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers: vec![compute],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    };
    Ok(Rendered { pod, launch })
}

/// The extended resource the kvm device plugin advertises.
pub const KVM_RESOURCE: &str = "devices.kiln.dev/kvm";

fn empty_dir(name: &str, medium: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_string),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// No privilege escalation, no capabilities, a read-only root filesystem.
fn restricted() -> SecurityContext {
    with_capabilities(&[])
}

/// Every container runs as the launcher's user (107, as KubeVirt's non-root launcher) unless it
/// says otherwise (only the network setup does). Volumes are made the group's (`fsGroup`), so
/// disks written by other pods' users are writable; the runtime gives `/dev/kvm`, the TAP and
/// block volumes to the same user (containerd's `device_ownership_from_security_context`).
fn launcher_pod_security(networked: bool) -> PodSecurityContext {
    let id = i64::from(LAUNCHER_UID);
    PodSecurityContext {
        run_as_user: Some(id),
        run_as_group: Some(id),
        run_as_non_root: Some(true),
        fs_group: Some(id),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        sysctls: networked.then(|| {
            vec![Sysctl {
                name: "net.ipv4.ip_unprivileged_port_start".into(),
                value: LAUNCHER_UNPRIVILEGED_PORT_START.to_string(),
            }]
        }),
        ..Default::default()
    }
}

fn small_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("10m".into())),
            ("memory".to_string(), Quantity("16Mi".into())),
        ])),
        ..Default::default()
    }
}

/// The NoCloud meta-data: instance-id (firmware.uuid, else the VM's UID so that it stays the
/// same across runs, else the VMI's) and local-hostname.
fn meta_data(vmi: &VirtualMachineInstance, name: &str, uid: &str) -> String {
    let instance_id = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.uuid.clone())
        .or_else(|| {
            vmi.metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.iter().find(|r| r.kind == "VirtualMachine"))
                .map(|r| r.uid.clone())
        })
        .unwrap_or_else(|| uid.to_string());
    let host = vmi.spec.hostname.clone().unwrap_or_else(|| hostname(name));
    format!("instance-id: {instance_id}\nlocal-hostname: {host}\n")
}

/// A name fit to be a hostname (a DNS label).
fn hostname(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    h.trim_matches('-').to_string()
}

/// A name fit to be a label value (at most 63 characters).
fn label_value(name: &str) -> String {
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.', '_'])
        .to_string()
}

#[cfg(test)]
mod tests;
