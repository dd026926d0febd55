//! What a VMI spec means for the machine and its pod: vCPUs, guest memory, the order of its
//! disks, and the launcher pod's CPU and memory (guest memory plus Kiln's measured overhead).
//! Pure functions of the spec, shared by the controller and tests.

use thiserror::Error;

use crate::domain::Disk;
use crate::quantity::{parse_bytes, parse_milli, QuantityError};
use crate::vmi::VirtualMachineInstanceSpec;
use crate::volumes::Volume;

const MIB: u64 = 1 << 20;

/// kiln-vmm's limits.
pub const MAX_VCPUS: u32 = 32;
pub const MIN_GUEST_MIB: u64 = 8;

/// Launcher pod memory beyond guest RAM: the launcher and kiln-vmm outside guest RAM, measured
/// by `kiln-bench vms --only overhead` (docs/benchmarks.md), with room to spare.
pub const OVERHEAD_BASE_MIB: u64 = 20;
/// Plus the guest's page tables and kiln-vmm's per-vCPU thread, as KubeVirt counts them.
pub const OVERHEAD_PER_VCPU_MIB: u64 = 1;

/// CPU requested per vCPU when the spec requests none: a tenth of a core (KubeVirt's default
/// cpuAllocationRatio of 10).
pub const CPU_MILLI_PER_VCPU: u128 = 100;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MachineError {
    #[error(
        "no memory for the guest: set domain.memory.guest or domain.resources.requests.memory"
    )]
    NoMemory,
    #[error("the guest's memory ({0} MiB) is under kiln-vmm's minimum of {MIN_GUEST_MIB} MiB")]
    TooLittleMemory(u64),
    #[error("{vcpus} vCPUs: kiln-vmm runs at most {MAX_VCPUS}")]
    TooManyVcpus { vcpus: u64 },
    #[error("{field}: {source}")]
    Quantity {
        field: &'static str,
        source: QuantityError,
    },
    #[error("disk {0} names no volume")]
    DiskWithoutVolume(String),
}

fn quantity<T>(
    field: &'static str,
    value: &str,
    parse: impl Fn(&str) -> Result<T, QuantityError>,
) -> Result<T, MachineError> {
    parse(value).map_err(|source| MachineError::Quantity { field, source })
}

/// vCPUs: cores × sockets × threads when any is given, else the CPU limit or request rounded
/// up (as KubeVirt), else 1.
pub fn vcpus(spec: &VirtualMachineInstanceSpec) -> Result<u32, MachineError> {
    let d = &spec.domain;
    let n: u64 = match &d.cpu {
        Some(c) if c.cores.is_some() || c.sockets.is_some() || c.threads.is_some() => {
            [c.cores, c.sockets, c.threads]
                .iter()
                .map(|v| u64::from(v.unwrap_or(1)))
                .product()
        }
        _ => {
            let r = d.resources.as_ref();
            let cpu = r
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("cpu"))
                .or_else(|| {
                    r.and_then(|r| r.requests.as_ref())
                        .and_then(|l| l.get("cpu"))
                });
            match cpu {
                Some(q) => {
                    let milli = quantity("domain.resources cpu", &q.0, parse_milli)?;
                    u64::try_from(milli.div_ceil(1000))
                        .unwrap_or(u64::MAX)
                        .max(1)
                }
                None => 1,
            }
        }
    };
    if n > u64::from(MAX_VCPUS) {
        return Err(MachineError::TooManyVcpus { vcpus: n });
    }
    Ok(n as u32)
}

/// The guest's memory in whole MiB: `memory.guest`, else `resources.requests.memory`.
pub fn guest_memory_mib(spec: &VirtualMachineInstanceSpec) -> Result<u64, MachineError> {
    let d = &spec.domain;
    let (field, q) = match d.memory.as_ref().and_then(|m| m.guest.as_ref()) {
        Some(q) => ("domain.memory.guest", q),
        None => match d
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("memory"))
        {
            Some(q) => ("domain.resources.requests.memory", q),
            None => return Err(MachineError::NoMemory),
        },
    };
    let mib = quantity(field, &q.0, parse_bytes)? / MIB;
    if mib < MIN_GUEST_MIB {
        return Err(MachineError::TooLittleMemory(mib));
    }
    Ok(mib)
}

/// What the launcher pod asks of its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodResources {
    pub memory_request_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_request_milli: u128,
    pub cpu_limit_milli: Option<u128>,
}

/// Memory: guest + overhead (and a memory limit, plus overhead, only when the spec sets one);
/// CPU: the spec's request, else a tenth of a core per vCPU; the spec's limit if any.
pub fn pod_resources(spec: &VirtualMachineInstanceSpec) -> Result<PodResources, MachineError> {
    let vcpus = u64::from(vcpus(spec)?);
    let guest = guest_memory_mib(spec)?;
    let overhead = OVERHEAD_BASE_MIB + OVERHEAD_PER_VCPU_MIB * vcpus + guest.div_ceil(512);
    let r = spec.domain.resources.as_ref();
    let get = |limits: bool, key: &str| {
        r.and_then(|r| {
            if limits {
                r.limits.as_ref()
            } else {
                r.requests.as_ref()
            }
        })
        .and_then(|m| m.get(key))
        .map(|q| q.0.clone())
    };
    let requested_memory = match get(false, "memory") {
        Some(q) => quantity("domain.resources.requests.memory", &q, parse_bytes)?,
        None => guest * MIB,
    };
    let memory_limit = match get(true, "memory") {
        Some(q) => {
            Some(quantity("domain.resources.limits.memory", &q, parse_bytes)? + overhead * MIB)
        }
        None => None,
    };
    let cpu_request = match get(false, "cpu") {
        Some(q) => quantity("domain.resources.requests.cpu", &q, parse_milli)?,
        None => CPU_MILLI_PER_VCPU * u128::from(vcpus),
    };
    let cpu_limit = match get(true, "cpu") {
        Some(q) => Some(quantity("domain.resources.limits.cpu", &q, parse_milli)?),
        None => None,
    };
    Ok(PodResources {
        memory_request_bytes: requested_memory.max(guest * MIB) + overhead * MIB,
        memory_limit_bytes: memory_limit,
        cpu_request_milli: cpu_request,
        cpu_limit_milli: cpu_limit,
    })
}

/// A disk and its volume, in the order the guest sees them (/dev/vda first).
#[derive(Clone, Debug, PartialEq)]
pub struct GuestDisk<'a> {
    pub disk: Disk,
    pub volume: &'a Volume,
}

/// The disks in guest order. Volumes without a disk get a virtio disk (as KubeVirt adds
/// them); the disk with the lowest bootOrder comes first (it is the boot disk), the others
/// keep their order.
pub fn guest_disks(spec: &VirtualMachineInstanceSpec) -> Result<Vec<GuestDisk<'_>>, MachineError> {
    let mut disks: Vec<GuestDisk> = Vec::new();
    for d in &spec.domain.devices.disks {
        let volume = spec
            .volumes
            .iter()
            .find(|v| v.name == d.name)
            .ok_or_else(|| MachineError::DiskWithoutVolume(d.name.clone()))?;
        disks.push(GuestDisk {
            disk: d.clone(),
            volume,
        });
    }
    for v in &spec.volumes {
        if !disks.iter().any(|g| g.disk.name == v.name) {
            disks.push(GuestDisk {
                disk: Disk {
                    name: v.name.clone(),
                    ..Default::default()
                },
                volume: v,
            });
        }
    }
    if let Some(first) = disks
        .iter()
        .enumerate()
        .filter_map(|(i, g)| g.disk.boot_order.map(|o| (o, i)))
        .min()
        .map(|(_, i)| i)
    {
        let boot = disks.remove(first);
        disks.insert(0, boot);
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Cpu, Memory, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn spec(json: serde_json::Value) -> VirtualMachineInstanceSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn vcpus_from_topology_or_cpu_resources() {
        let s = spec(serde_json::json!({"domain": {"cpu": {"cores": 2, "sockets": 2}}}));
        assert_eq!(vcpus(&s), Ok(4));
        let s = spec(serde_json::json!({"domain": {"resources": {"limits": {"cpu": "1500m"}}}}));
        assert_eq!(vcpus(&s), Ok(2));
        let s = spec(serde_json::json!({"domain": {}}));
        assert_eq!(vcpus(&s), Ok(1));
        let mut s = VirtualMachineInstanceSpec::default();
        s.domain.cpu = Some(Cpu {
            cores: Some(8),
            sockets: Some(8),
            ..Default::default()
        });
        assert_eq!(vcpus(&s), Err(MachineError::TooManyVcpus { vcpus: 64 }));
    }

    #[test]
    fn guest_memory_prefers_memory_guest() {
        let s = spec(serde_json::json!({"domain": {"memory": {"guest": "128Mi"},
            "resources": {"requests": {"memory": "256Mi"}}}}));
        assert_eq!(guest_memory_mib(&s), Ok(128));
        let s =
            spec(serde_json::json!({"domain": {"resources": {"requests": {"memory": "1024M"}}}}));
        assert_eq!(guest_memory_mib(&s), Ok(976));
        assert_eq!(
            guest_memory_mib(&spec(serde_json::json!({"domain": {}}))),
            Err(MachineError::NoMemory)
        );
        let mut s = VirtualMachineInstanceSpec::default();
        s.domain.memory = Some(Memory {
            guest: Some(Quantity("4Mi".into())),
            ..Default::default()
        });
        assert_eq!(guest_memory_mib(&s), Err(MachineError::TooLittleMemory(4)));
    }

    #[test]
    fn pod_asks_guest_memory_plus_overhead_and_a_tenth_core_per_vcpu() {
        let s = spec(
            serde_json::json!({"domain": {"cpu": {"cores": 2}, "memory": {"guest": "512Mi"}}}),
        );
        let r = pod_resources(&s).unwrap();
        assert_eq!(
            r.memory_request_bytes,
            (512 + OVERHEAD_BASE_MIB + 2 + 1) * MIB
        );
        assert_eq!(r.cpu_request_milli, 200);
        assert_eq!(r.memory_limit_bytes, None);
        let mut s = s;
        s.domain.resources = Some(ResourceRequirements {
            requests: Some([("cpu".to_string(), Quantity("10m".into()))].into()),
            limits: Some([("memory".to_string(), Quantity("1Gi".into()))].into()),
            ..Default::default()
        });
        let r = pod_resources(&s).unwrap();
        assert_eq!(r.cpu_request_milli, 10);
        assert_eq!(
            r.memory_limit_bytes,
            Some((1024 + OVERHEAD_BASE_MIB + 2 + 1) * MIB)
        );
    }

    #[test]
    fn disks_in_guest_order_with_the_boot_disk_first() {
        let s = spec(serde_json::json!({
            "domain": {"devices": {"disks": [
                {"name": "data", "disk": {"bus": "virtio"}},
                {"name": "root", "bootOrder": 1},
            ]}},
            "volumes": [
                {"name": "root", "containerDisk": {"image": "x"}},
                {"name": "data", "emptyDisk": {"capacity": "1Gi"}},
                {"name": "seed", "cloudInitNoCloud": {"userData": "#!/bin/sh"}},
            ]
        }));
        let names: Vec<_> = guest_disks(&s)
            .unwrap()
            .into_iter()
            .map(|g| g.disk.name)
            .collect();
        assert_eq!(names, ["root", "data", "seed"]);
        let bad = spec(serde_json::json!({"domain": {"devices": {"disks": [{"name": "x"}]}}}));
        assert_eq!(
            guest_disks(&bad),
            Err(MachineError::DiskWithoutVolume("x".into()))
        );
    }
}
