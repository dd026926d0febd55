//! The network and probe parts of a launcher pod and its launch description: the guest's NIC
//! on the pod network (binding, MAC, guest network, forwarded ports), the init container that
//! sets the pod's network up with NET_ADMIN, and the VMI's probes with their ports resolved.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, ResourceRequirements, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kiln_crd::launch::{
    LaunchNetwork, LaunchPort, LaunchProbe, NetworkBinding, ProbeCheck, LAUNCH_DIR, RUN_DIR,
};
use kiln_crd::network::{mac_for, masquerade_addresses, GuestProbe, PodInterface};
use kiln_crd::VirtualMachineInstance;
use thiserror::Error;

/// The extended resource the device plugin offers /dev/net/tun as.
pub const TUN_RESOURCE: &str = "devices.kiln.dev/tun";
/// The init container that creates the TAP, its addresses and the NAT rules.
pub const NETWORK_CONTAINER: &str = "kiln-network";

#[derive(Debug, Error, PartialEq)]
pub enum NetworkError {
    #[error("network {0}: vmNetworkCIDR {1:?} is not an IPv4 network of at most /30")]
    Cidr(String, String),
    #[error("{probe}: port {port:?} is neither a number nor the name of a port of the interface")]
    ProbePort { probe: &'static str, port: String },
}

/// The VMI's pod-network NIC for the launcher (from its `pod_interface`), or None when it has
/// no network.
pub fn launch_network(
    iface: Option<&PodInterface>,
    uid: &str,
    hostname: &str,
) -> Result<Option<LaunchNetwork>, NetworkError> {
    let Some(iface) = iface else {
        return Ok(None);
    };
    if masquerade_addresses(&iface.vm_network_cidr).is_none() {
        return Err(NetworkError::Cidr(
            iface.name.clone(),
            iface.vm_network_cidr.clone(),
        ));
    }
    Ok(Some(LaunchNetwork {
        binding: if iface.bridge {
            NetworkBinding::Bridge
        } else {
            NetworkBinding::Masquerade
        },
        mac: match (&iface.mac_address, iface.bridge) {
            (Some(mac), _) => mac.clone(),
            (None, true) => String::new(),
            (None, false) => mac_for(uid),
        },
        vm_network_cidr: iface.vm_network_cidr.clone(),
        ports: iface
            .ports
            .iter()
            .map(|p| LaunchPort {
                port: p.port,
                protocol: p.protocol().to_string(),
            })
            .collect(),
        hostname: hostname.to_string(),
        name: iface.name.clone(),
    }))
}

/// The compute container's ports: the interface's forwarded ports, so that they show on the
/// pod and Services can name them.
pub fn container_ports(iface: Option<&PodInterface>) -> Vec<ContainerPort> {
    iface
        .iter()
        .flat_map(|i| &i.ports)
        .map(|p| ContainerPort {
            name: p.name.clone(),
            container_port: i32::from(p.port),
            protocol: Some(p.protocol().to_string()),
            ..Default::default()
        })
        .collect()
}

/// The init container that sets up the pod's network (the only container with NET_ADMIN).
pub fn setup_container(
    image: &str,
    pull_policy: &str,
    resources: ResourceRequirements,
) -> Container {
    let mut resources = resources;
    for map in [&mut resources.requests, &mut resources.limits] {
        map.get_or_insert_with(BTreeMap::new)
            .insert(TUN_RESOURCE.into(), Quantity("1".into()));
    }
    Container {
        name: NETWORK_CONTAINER.into(),
        image: Some(image.into()),
        image_pull_policy: Some(pull_policy.into()),
        command: Some(vec![
            "/usr/bin/kiln-launcher".into(),
            "--setup-network".into(),
        ]),
        // The bridge binding hands the pod's addresses to the launcher through the run folder.
        volume_mounts: Some(vec![
            VolumeMount {
                name: "launch".into(),
                mount_path: LAUNCH_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "run".into(),
                mount_path: RUN_DIR.into(),
                ..Default::default()
            },
        ]),
        resources: Some(resources),
        // The one container that runs as root (NET_ADMIN is effective only for root without
        // ambient capabilities); it ends before the guest starts.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            ..with_capabilities(&["NET_ADMIN"])
        }),
        ..Default::default()
    }
}

/// No privilege escalation, a read-only root filesystem, every capability dropped but `add`.
pub fn with_capabilities(add: &[&str]) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: (!add.is_empty()).then(|| add.iter().map(|c| c.to_string()).collect()),
        }),
        ..Default::default()
    }
}

/// The VMI's readiness and liveness probes for the launcher (named ports from `iface`).
pub fn launch_probes(
    vmi: &VirtualMachineInstance,
    iface: Option<&PodInterface>,
) -> Result<(Option<LaunchProbe>, Option<LaunchProbe>), NetworkError> {
    let readiness = vmi
        .spec
        .readiness_probe
        .as_ref()
        .map(|p| launch_probe("readinessProbe", p, iface))
        .transpose()?;
    let liveness = vmi
        .spec
        .liveness_probe
        .as_ref()
        .map(|p| launch_probe("livenessProbe", p, iface))
        .transpose()?;
    Ok((readiness, liveness))
}

fn launch_probe(
    which: &'static str,
    probe: &GuestProbe,
    iface: Option<&PodInterface>,
) -> Result<LaunchProbe, NetworkError> {
    let port = |p: &IntOrString| -> Result<u16, NetworkError> {
        let err = || NetworkError::ProbePort {
            probe: which,
            port: match p {
                IntOrString::Int(i) => i.to_string(),
                IntOrString::String(s) => s.clone(),
            },
        };
        match p {
            IntOrString::Int(i) => u16::try_from(*i).ok().filter(|p| *p > 0).ok_or_else(err),
            IntOrString::String(name) => name
                .parse::<u16>()
                .ok()
                .or_else(|| {
                    iface?
                        .ports
                        .iter()
                        .find(|p| p.name.as_deref() == Some(name.as_str()))
                        .map(|p| p.port)
                })
                .ok_or_else(err),
        }
    };
    let check = if let Some(h) = &probe.http_get {
        ProbeCheck::Http {
            port: port(&h.port)?,
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else if let Some(t) = &probe.tcp_socket {
        ProbeCheck::Tcp {
            port: port(&t.port)?,
        }
    } else {
        // Admission allows only these two.
        return Err(NetworkError::ProbePort {
            probe: which,
            port: String::new(),
        });
    };
    let positive = |v: Option<i32>, default: u32| {
        v.and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    Ok(LaunchProbe {
        check,
        initial_delay_seconds: probe
            .initial_delay_seconds
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        timeout_seconds: positive(probe.timeout_seconds, 1),
        period_seconds: positive(probe.period_seconds, 10),
        success_threshold: positive(probe.success_threshold, 1),
        failure_threshold: positive(probe.failure_threshold, 3),
    })
}
