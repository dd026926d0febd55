//! `spec.domain`: the virtual hardware, in KubeVirt's `kubevirt.io/v1` field names. What Kiln
//! supports is typed; the KubeVirt fields it does not support are accepted by the schema only
//! to be refused by a rule that names them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::network::Interface;
use crate::rules::{any_object, any_object_list, refuse, refuse_true, rule, rule_expr};

/// Most disks a VM can have: kiln-vmm has 19 virtio-mmio slots, one is kept for entropy.
pub const MAX_DISKS: u32 = 18;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = refuse("clock", "domain.clock: Kiln's guests keep time with kvm-clock"),
    validation = refuse("features", "domain.features (ACPI, APIC, Hyper-V, SMM, ...): Kiln's machine has no ACPI and needs none of them; remove domain.features"),
    validation = refuse("ioThreadsPolicy", "domain.ioThreadsPolicy: kiln-vmm serves every disk from its event loop"),
    validation = refuse("ioThreads", "domain.ioThreads: kiln-vmm serves every disk from its event loop"),
    validation = refuse("chassis", "domain.chassis: Kiln has no SMBIOS tables"),
    validation = refuse("launchSecurity", "domain.launchSecurity (SEV, TDX): Kiln does not run confidential guests"),
)]
pub struct DomainSpec {
    /// Requests and limits of the launcher pod; `requests.memory` is the guest's memory when
    /// `memory.guest` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    #[serde(default)]
    pub devices: Devices,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub clock: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub features: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_threads_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub io_threads: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub chassis: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub launch_security: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = refuse_true(
    "overcommitGuestOverhead",
    "resources.overcommitGuestOverhead: Kiln's overhead is small and always requested"
))]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overcommit_guest_overhead: Option<bool>,
}

/// The vCPU topology: the guest gets cores × sockets × threads vCPUs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "(has(self.cores) ? self.cores : 1) * (has(self.sockets) ? self.sockets : 1) * (has(self.threads) ? self.threads : 1) <= 32",
        "domain.cpu: cores × sockets × threads is at most 32 vCPUs in Kiln"
    ),
    validation = rule(
        "!has(self.model) || self.model in ['', 'host-passthrough', 'host-model']",
        "domain.cpu.model: Kiln gives guests the host's CPU (shaped by its CPU template); use host-passthrough, host-model or leave it out"
    ),
    validation = refuse("maxSockets", "domain.cpu.maxSockets: Kiln has no CPU hotplug"),
    validation = refuse("features", "domain.cpu.features: Kiln's CPU templates decide the guest's CPUID"),
    validation = refuse_true("dedicatedCpuPlacement", "domain.cpu.dedicatedCpuPlacement: Kiln does not pin vCPUs yet"),
    validation = refuse("numa", "domain.cpu.numa: Kiln guests have one NUMA node"),
    validation = refuse_true("isolateEmulatorThread", "domain.cpu.isolateEmulatorThread: Kiln does not pin threads"),
    validation = refuse("realtime", "domain.cpu.realtime: Kiln does not pin vCPUs"),
)]
pub struct Cpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub sockets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub threads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sockets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object_list")]
    pub features: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_cpu_placement: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub numa: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolate_emulator_thread: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub realtime: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = refuse("hugepages", "domain.memory.hugepages: kiln-vmm backs guest RAM with transparent huge pages by itself"),
    validation = refuse("maxGuest", "domain.memory.maxGuest: Kiln has no memory hotplug"),
)]
pub struct Memory {
    /// The memory the guest sees (at least 8Mi; whole MiB are used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub hugepages: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_guest: Option<Quantity>,
}

/// KubeVirt's machine type. Kiln has one machine of its own (a microVM, no PCI): only the
/// empty type KubeVirt's examples write is accepted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rule_expr(
    "!has(self.type) || self.type == ''",
    "'Kiln does not support machine type ' + self.type + ': it has one machine of its own (a microVM without PCI); remove domain.machine'"
))]
pub struct Machine {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = refuse("bootloader", "domain.firmware.bootloader (BIOS, EFI): Kiln boots Linux directly; use firmware.kernelBoot, or leave firmware out to boot Kiln's own kernel"),
    validation = refuse("serial", "domain.firmware.serial: Kiln has no SMBIOS tables"),
    validation = refuse("acpi", "domain.firmware.acpi: Kiln's machine has no ACPI"),
)]
pub struct Firmware {
    /// The machine's UUID. Kiln has no SMBIOS to show it; it is the NoCloud instance-id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot: Option<KernelBoot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub bootloader: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub acpi: Option<Value>,
}

/// Boot a kernel (and initrd) taken from a container image, with its own command line.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "has(self.container)",
        "firmware.kernelBoot needs a container: the image and the kernel's path in it"
    ),
    validation = rule(
        "!has(self.kernelArgs) || (has(self.container) && has(self.container.kernelPath))",
        "firmware.kernelBoot.kernelArgs need container.kernelPath: there is no kernel to pass them to"
    ),
)]
pub struct KernelBoot {
    /// The guest's command line (Kiln adds console=ttyS0 unless it names a console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1800))]
    pub kernel_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KernelBootContainer>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "has(self.kernelPath) || has(self.initrdPath)",
        "firmware.kernelBoot.container needs kernelPath (and optionally initrdPath)"
    ),
    validation = rule(
        "!has(self.kernelPath) || self.kernelPath.startsWith('/')",
        "firmware.kernelBoot.container.kernelPath is an absolute path in the image"
    ),
    validation = rule(
        "!has(self.initrdPath) || self.initrdPath.startsWith('/')",
        "firmware.kernelBoot.container.initrdPath is an absolute path in the image"
    ),
    validation = rule(
        "has(self.kernelPath)",
        "firmware.kernelBoot.container.kernelPath is required: Kiln boots no firmware that could find a kernel itself"
    ),
)]
pub struct KernelBootContainer {
    #[schemars(length(min = 1))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// Kubernetes' image pull policies (KubeVirt's `imagePullPolicy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }

    /// Kubernetes' default: Always for `:latest` or no tag, IfNotPresent otherwise.
    pub fn default_for(image: &str) -> PullPolicy {
        let name = image.rsplit('/').next().unwrap_or(image);
        if image.contains('@') {
            return PullPolicy::IfNotPresent;
        }
        match name.rsplit_once(':') {
            Some((_, "latest")) | None => PullPolicy::Always,
            Some(_) => PullPolicy::IfNotPresent,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "!has(self.disks) || self.disks.all(d, self.disks.exists_one(e, e.name == d.name))",
        "domain.devices.disks: two disks have the same name"
    ),
    validation = rule(
        "!has(self.interfaces) || self.interfaces.all(i, self.interfaces.exists_one(j, j.name == i.name))",
        "domain.devices.interfaces: two interfaces have the same name"
    ),
    validation = rule(
        "!has(self.interfaces) || self.interfaces.size() <= 1",
        "domain.devices.interfaces: Kiln VMs have one interface, on the pod network"
    ),
    validation = refuse("inputs", "input devices (domain.devices.inputs): Kiln's machine has only its keyboard controller"),
    validation = refuse("gpus", "GPUs (domain.devices.gpus)"),
    validation = refuse("hostDevices", "host device passthrough (domain.devices.hostDevices)"),
    validation = refuse("filesystems", "shared filesystems (domain.devices.filesystems, virtiofs)"),
    validation = refuse("watchdog", "watchdog devices (domain.devices.watchdog)"),
    validation = refuse("sound", "sound devices (domain.devices.sound)"),
    validation = refuse("tpm", "TPM devices (domain.devices.tpm)"),
    validation = refuse("video", "video devices (domain.devices.video): Kiln VMs have a serial console only"),
    validation = refuse("panicDevices", "panic devices (domain.devices.panicDevices): kiln-vmm tells a guest panic apart by itself"),
    validation = refuse("clientPassthrough", "USB client passthrough (domain.devices.clientPassthrough)"),
    validation = refuse("downwardMetrics", "downward metrics (domain.devices.downwardMetrics)"),
    validation = refuse_true("useVirtioTransitional", "transitional virtio (domain.devices.useVirtioTransitional): kiln-vmm speaks virtio 1.x over MMIO"),
    validation = refuse_true("autoattachGraphicsDevice", "graphics (domain.devices.autoattachGraphicsDevice: true): Kiln VMs have a serial console"),
    validation = refuse_true("autoattachMemBalloon", "memory balloons (domain.devices.autoattachMemBalloon: true)"),
    validation = refuse_true("autoattachInputDevice", "input devices (domain.devices.autoattachInputDevice: true)"),
    validation = refuse_true("autoattachVSOCK", "vsock (domain.devices.autoattachVSOCK: true)"),
    validation = rule(
        "!has(self.autoattachSerialConsole) || self.autoattachSerialConsole",
        "domain.devices.autoattachSerialConsole: false is not supported: the serial console is how Kiln shows the guest (kubectl logs, kubectl kiln console)"
    ),
    validation = refuse_true("blockMultiQueue", "multi-queue disks (domain.devices.blockMultiQueue)"),
    validation = refuse_true("networkInterfaceMultiqueue", "multi-queue NICs (domain.devices.networkInterfaceMultiqueue)"),
)]
pub struct Devices {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 18))]
    pub disks: Vec<Disk>,
    /// A virtio-rng device fed from the host's random source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Rng>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_hotplug: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_serial_console: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_serial_console: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_pod_interface: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_graphics_device: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_mem_balloon: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_input_device: Option<bool>,
    #[serde(
        default,
        rename = "autoattachVSOCK",
        skip_serializing_if = "Option::is_none"
    )]
    pub autoattach_vsock: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_virtio_transitional: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_multi_queue: Option<bool>,
    #[serde(
        default,
        rename = "networkInterfaceMultiqueue",
        skip_serializing_if = "Option::is_none"
    )]
    pub network_interface_multiqueue: Option<bool>,
    /// The guest's NICs; none given: one masquerade interface on the pod network, unless
    /// `autoattachPodInterface` is false.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object_list")]
    pub inputs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object_list")]
    pub gpus: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object_list")]
    pub host_devices: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object_list")]
    pub filesystems: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub watchdog: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub sound: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub tpm: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub video: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object_list")]
    pub panic_devices: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub client_passthrough: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub downward_metrics: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct Rng {}

/// A disk the guest sees; `name` is the volume behind it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule_expr(
        "!has(self.lun) && !has(self.cdrom)",
        "'disk ' + self.name + ': Kiln attaches volumes as disks only (disk: {bus: virtio}), not as ' + (has(self.lun) ? 'lun' : 'cdrom')"
    ),
    validation = rule_expr(
        "!has(self.cache) || self.cache in ['none', 'writethrough', 'writeback']",
        "'disk ' + self.name + ': cache is none, writethrough or writeback, not ' + self.cache"
    ),
    validation = rule_expr(
        "!has(self.io)",
        "'disk ' + self.name + ': Kiln has one I/O path (remove io: ' + self.io + ')'"
    ),
    validation = rule_expr(
        "!has(self.dedicatedIOThread) || !self.dedicatedIOThread",
        "'disk ' + self.name + ': Kiln serves every disk from its event loop (remove dedicatedIOThread)'"
    ),
    validation = rule_expr(
        "!has(self.shareable) || !self.shareable",
        "'disk ' + self.name + ': kiln-vmm locks each writable image for one VM (remove shareable)'"
    ),
    validation = rule_expr(
        "!has(self.blockSize) && !has(self.errorPolicy) && !has(self.changedBlockTracking) && !has(self.tag)",
        "'disk ' + self.name + ': Kiln does not support blockSize, errorPolicy, changedBlockTracking or tag'"
    ),
)]
pub struct Disk {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    /// The lowest boot order is the boot disk: it becomes /dev/vda (Kiln's root filesystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub boot_order: Option<u32>,
    /// What the guest reads as the disk's serial: letters, digits, '_' and '-', at most 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,20}$"))]
    pub serial: Option<String>,
    /// none and writethrough flush to the image when the guest flushes; writeback too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "dedicatedIOThread")]
    pub dedicated_io_thread: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shareable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub block_size: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub lun: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub cdrom: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule_expr(
        "!has(self.bus) || self.bus == 'virtio'",
        "'Kiln supports only bus virtio, not ' + self.bus + ' (disk.bus)'"
    ),
    validation = refuse("pciAddress", "disk.pciAddress: Kiln's machine has no PCI (its disks are virtio-mmio)"),
)]
pub struct DiskTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    #[serde(default, rename = "readonly", skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::PullPolicy;

    #[test]
    fn pull_policy_defaults_as_kubernetes() {
        for (image, want) in [
            (
                "kiln.local/containerdisks/kiln-guest:latest",
                PullPolicy::Always,
            ),
            ("kiln.local/containerdisks/kiln-guest", PullPolicy::Always),
            ("localhost:5000/kiln-guest", PullPolicy::Always),
            ("localhost:5000/kiln-guest:v1", PullPolicy::IfNotPresent),
            ("kiln.local/x@sha256:abcd", PullPolicy::IfNotPresent),
        ] {
            assert_eq!(PullPolicy::default_for(image), want, "{image}");
        }
    }
}
