//! The contract between the controller and a launcher: the launch description (JSON in the
//! VMI's launch Secret, mounted into the pod) and where in the pod each thing lives. The
//! controller resolves everything it can (PVC sizes and modes, the kernel, the command line);
//! the launcher only carries it out.

use serde::{Deserialize, Serialize};

/// The launch Secret's mount: `launch.json` and `token`.
pub const LAUNCH_DIR: &str = "/var/run/kiln/launch";
pub const LAUNCH_FILE: &str = "launch.json";
pub const TOKEN_FILE: &str = "token";
/// emptyDir for copied containerDisks, empty disks, the NoCloud seed and a copied kernel.
pub const DISKS_DIR: &str = "/var/run/kiln/disks";
/// emptyDir where the first init container puts `kiln-disk-copy` for the image containers.
pub const TOOLS_DIR: &str = "/var/run/kiln/bin";
/// emptyDir (memory) for kiln-vmm's API socket.
pub const RUN_DIR: &str = "/var/run/kiln/run";
/// Filesystem-mode claims are mounted at `VOLUMES_DIR/<volume>`.
pub const VOLUMES_DIR: &str = "/var/run/kiln/volumes";
/// Block-mode claims appear at `DEVICES_DIR/<volume>`.
pub const DEVICES_DIR: &str = "/dev/kiln";
/// cloud-init Secrets are mounted at `SECRETS_DIR/<volume>-userdata` and `-networkdata`.
pub const SECRETS_DIR: &str = "/var/run/kiln/secrets";
/// Kiln's own guest kernel and initramfs, in the launcher image.
pub const DEFAULT_KERNEL: &str = "/usr/share/kiln/guest/vmlinux";
pub const DEFAULT_INITRD: &str = "/usr/share/kiln/guest/initramfs.cpio";
/// The copy helper in the launcher image (static: it also runs in image containers).
pub const DISK_COPY_BIN: &str = "/usr/bin/kiln-disk-copy";

/// Everything the launcher needs to run one VMI.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Kernel and initrd paths inside the pod.
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// The guest command line after kiln-vmm's platform options.
    pub cmdline: String,
    /// In guest order: the first is /dev/vda.
    #[serde(default)]
    pub disks: Vec<LaunchDisk>,
    #[serde(default)]
    pub entropy: bool,
    /// Seconds from the graceful shutdown request to the end of the pod.
    pub grace_period_seconds: u64,
    /// The guest's NIC on the pod network (none: the VM has no network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<LaunchNetwork>,
    /// The VMI's probes, run by the launcher against the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<LaunchProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<LaunchProbe>,
}

/// A probe of the guest with the kubelet's defaults applied and its port resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchProbe {
    pub check: ProbeCheck,
    pub initial_delay_seconds: u32,
    pub timeout_seconds: u32,
    pub period_seconds: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ProbeCheck {
    /// Passes when a TCP connection to the port opens.
    Tcp { port: u16 },
    /// Passes on an HTTP status from 200 to 399.
    Http {
        port: u16,
        path: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
    },
}

/// The TAP device the network setup creates in the pod; the launcher hands it to kiln-vmm.
pub const TAP_NAME: &str = "tap0";
/// The user and group a launcher pod runs as (KubeVirt's `qemu`, 107; the importer's too): the
/// network setup, which alone runs as root, leaves the TAP owned by it.
pub const LAUNCHER_UID: u32 = 107;
/// The lowest port a launcher may bind without a capability (the pod's own network
/// namespace): the DHCP server's 67.
pub const LAUNCHER_UNPRIVILEGED_PORT_START: u16 = 67;
/// The pod's own interface (the CNI's).
pub const POD_INTERFACE: &str = "eth0";
/// The bridge joining eth0 and the TAP under the bridge binding.
pub const BRIDGE_NAME: &str = "k6t-eth0";

/// How the guest's NIC reaches the pod network.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkBinding {
    /// A private guest network behind NAT to the pod IP.
    Masquerade,
    /// The TAP bridged to eth0; the guest takes the pod's IP and MAC.
    Bridge,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchNetwork {
    /// The interface's name in the VMI.
    pub name: String,
    pub binding: NetworkBinding,
    /// The guest NIC's MAC; empty under the bridge binding when the interface names none: the
    /// guest then takes the pod's.
    pub mac: String,
    /// Masquerade: the guest network ("10.0.2.0/24"): the gateway is its first address, the
    /// guest its second.
    pub vm_network_cidr: String,
    /// Masquerade: only these reach the guest (every port when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<LaunchPort>,
    /// The guest's DHCP hostname.
    pub hostname: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchPort {
    pub port: u16,
    /// "TCP" or "UDP".
    pub protocol: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchDisk {
    /// kiln-vmm's drive id, also the serial the guest reads.
    pub id: String,
    /// The VMI volume behind it.
    pub volume: String,
    pub image: DiskImage,
    #[serde(default)]
    pub read_only: bool,
    /// The root filesystem (kiln-vmm adds root=/dev/vda to the command line).
    #[serde(default)]
    pub root: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum DiskImage {
    /// An image file that is there when the launcher starts (a copied containerDisk).
    File { path: String },
    /// A raw image made sparse at `size_bytes` if it does not exist yet (a filesystem-mode
    /// claim's disk.img, an emptyDisk).
    Sparse { path: String, size_bytes: u64 },
    /// A block device (a block-mode claim).
    Device { path: String },
    /// A NoCloud seed the launcher writes at `path`.
    NoCloud {
        path: String,
        meta_data: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_data: Option<CloudData>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network_config: Option<CloudData>,
    },
}

/// Where a piece of cloud-init data comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", tag = "from")]
pub enum CloudData {
    Inline {
        text: String,
    },
    Base64 {
        text: String,
    },
    /// The first of `keys` present in the Secret mounted at `dir`.
    Secret {
        dir: String,
        keys: Vec<String>,
    },
}

/// What the launcher reports on `GET /v1/state` of its control endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LauncherState {
    /// Grows with every change (long poll: `?after=<revision>`).
    pub revision: u64,
    pub phase: LauncherPhase,
    /// The guest's boot time in this pod's current boot (kiln-vmm's boot timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_time_ms: Option<u64>,
    /// How often the guest rebooted inside this pod.
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub paused: bool,
    /// How the VM ended (PowerOff, Reboot, Panic, VcpuFailure, VcpuStuck, Killed, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The address the launcher's DHCP server leased to the guest, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<String>,
    /// The guest NIC's MAC (under the bridge binding, the pod's original one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// With a readiness probe: whether it passes now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ready: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LauncherPhase {
    /// Preparing disks, starting kiln-vmm.
    #[default]
    Starting,
    /// kiln-vmm runs the guest.
    Running,
    /// The guest is shutting down (graceful stop requested).
    Stopping,
    /// The VM ended; the launcher exits soon.
    Ended,
}
