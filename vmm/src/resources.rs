//! The whole VM description: every validated config piece, and the guest command line they imply.

use std::time::Duration;

use thiserror::Error;

use crate::arch::x86_64::layout::{virtio_slot, MAX_VIRTIO_DEVICES, VIRTIO_MMIO_SIZE};
use crate::cpu_template::CpuTemplate;
use crate::vmm_config::machine_config::host_mem_mib;
use api::models::{Logger, Metrics};

use crate::vmm_config::{
    BootSourceConfig, BootSourceError, DriveConfig, DriveConfigError, MachineConfig,
    MachineConfigError, NetConfig, SerialConfig,
};

/// Options Kiln's platform always puts first on the command line (later options override them):
/// the platform has no ACPI tables and no PCI bus (devices come from the MP table and the
/// command line), reboot goes through the i8042 controller, and on panic the kernel reboots at
/// once with the BIOS warm-reset flag set, which is how kiln-vmm tells a panic from a reboot.
/// The i8042 has a keyboard port only (no mouse port, no multiplexer) and answers no keyboard
/// commands, so the guest skips probing them.
pub const PLATFORM_BOOT_ARGS: &str =
    "acpi=off pci=off reboot=k,panic_warm panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Default time a vCPU may stay stuck (no progress while runnable) before the VM is failed.
pub const DEFAULT_STUCK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmResources {
    /// `None` until the API's `PUT /boot-source`.
    pub boot_source: Option<BootSourceConfig>,
    pub machine_config: MachineConfig,
    pub serial: SerialConfig,
    /// Register the boot-timer device (Firecracker's `--boot-timer`).
    pub boot_timer: bool,
    /// `None` disables the stuck-vCPU watchdog.
    pub stuck_timeout: Option<Duration>,
    /// virtio-blk disks; the first is /dev/vda in the guest.
    pub drives: Vec<DriveConfig>,
    /// virtio-net NICs, eth0 first.
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device.
    pub entropy: bool,
    /// The API's logger and metrics settings, kept for `GET /vm/config`.
    pub logger: Option<Logger>,
    pub metrics: Option<Metrics>,
}

/// One virtio device of the VM, in the order they are laid out (disks, NICs, entropy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioDeviceConfig<'a> {
    Drive(&'a DriveConfig),
    Net(&'a NetConfig),
    Entropy,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResourcesError {
    #[error(transparent)]
    BootSource(#[from] BootSourceError),
    #[error(transparent)]
    MachineConfig(#[from] MachineConfigError),
    #[error(transparent)]
    Drive(#[from] DriveConfigError),
    #[error(
        "{0} virtio devices requested; at most {MAX_VIRTIO_DEVICES} fit (one interrupt line each)"
    )]
    TooManyDevices(usize),
    #[error("no boot source: PUT /boot-source (or give --kernel) first")]
    NoBootSource,
    #[error("drives {0} and {1} are both root devices; only one can be")]
    TwoRootDevices(String, String),
    #[error("drives {0} and {1} use the same image {2}")]
    SameImage(String, String, String),
}

impl VmResources {
    pub fn new(boot_source: BootSourceConfig) -> Self {
        VmResources {
            boot_source: Some(boot_source),
            machine_config: MachineConfig::default(),
            serial: SerialConfig::default(),
            boot_timer: false,
            stuck_timeout: Some(DEFAULT_STUCK_TIMEOUT),
            drives: Vec::new(),
            nets: Vec::new(),
            entropy: false,
            logger: None,
            metrics: None,
        }
    }

    /// A description with nothing configured yet (the API's starting point).
    pub fn empty() -> Self {
        VmResources {
            boot_source: None,
            ..VmResources::new(BootSourceConfig {
                kernel_image_path: Default::default(),
                initrd_path: None,
                boot_args: None,
            })
        }
    }

    /// Adds a drive, or replaces the one with the same id.
    pub fn set_drive(&mut self, drive: DriveConfig) -> Result<(), ResourcesError> {
        for other in self.drives.iter().filter(|d| d.drive_id != drive.drive_id) {
            if other.is_root_device && drive.is_root_device {
                return Err(ResourcesError::TwoRootDevices(
                    other.drive_id.clone(),
                    drive.drive_id.clone(),
                ));
            }
            if other.path_on_host == drive.path_on_host {
                return Err(ResourcesError::SameImage(
                    other.drive_id.clone(),
                    drive.drive_id.clone(),
                    drive.path_on_host.display().to_string(),
                ));
            }
        }
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(slot) => *slot = drive,
            None => self.drives.push(drive),
        }
        // Listed as laid out: the root drive is /dev/vda.
        self.drives.sort_by_key(|d| !d.is_root_device);
        Ok(())
    }

    /// Adds a NIC, or replaces the one with the same id.
    pub fn set_net(&mut self, net: NetConfig) {
        match self.nets.iter_mut().find(|n| n.iface_id == net.iface_id) {
            Some(slot) => *slot = net,
            None => self.nets.push(net),
        }
    }

    /// The boot source, which must be set by now.
    pub fn boot_source(&self) -> Result<&BootSourceConfig, ResourcesError> {
        self.boot_source
            .as_ref()
            .ok_or(ResourcesError::NoBootSource)
    }

    /// Validation that needs neither files nor KVM; runs before anything is created.
    pub fn validate(&self) -> Result<(), ResourcesError> {
        self.boot_source()?.validate()?;
        self.machine_config.validate(host_mem_mib())?;
        for d in &self.drives {
            d.validate()?;
        }
        let count = self.virtio_devices().count();
        if count > MAX_VIRTIO_DEVICES {
            return Err(ResourcesError::TooManyDevices(count));
        }
        Ok(())
    }

    /// Every virtio device, in layout order: device `i` gets `virtio_slot(i)`. The root drive
    /// comes first (it is /dev/vda), then the other drives, NICs and the entropy device.
    pub fn virtio_devices(&self) -> impl Iterator<Item = VirtioDeviceConfig<'_>> {
        let root = self.drives.iter().filter(|d| d.is_root_device);
        let others = self.drives.iter().filter(|d| !d.is_root_device);
        let drives = root.chain(others).map(VirtioDeviceConfig::Drive);
        let nets = self.nets.iter().map(VirtioDeviceConfig::Net);
        let entropy = self.entropy.then_some(VirtioDeviceConfig::Entropy);
        drives.chain(nets).chain(entropy)
    }

    /// `virtio_mmio.device=` entries telling the guest where each virtio device is.
    fn virtio_cmdline(&self) -> Vec<String> {
        (0..self.virtio_devices().count())
            .map(|i| {
                let (base, irq) = virtio_slot(i);
                format!(
                    "virtio_mmio.device={}K@{base:#x}:{irq}",
                    VIRTIO_MMIO_SIZE >> 10
                )
            })
            .collect()
    }

    /// `root=` for a root drive (it is always /dev/vda), with `ro` or `rw`.
    fn root_cmdline(&self) -> Option<String> {
        let root = self.drives.iter().find(|d| d.is_root_device)?;
        let mode = if root.is_read_only { "ro" } else { "rw" };
        Some(match &root.partuuid {
            Some(uuid) => format!("root=PARTUUID={uuid} {mode}"),
            None => format!("root=/dev/vda {mode}"),
        })
    }

    /// The guest command line: platform options, virtio device entries and the root drive,
    /// then the CPU template's, then the user's (so the user has the last word).
    pub fn guest_cmdline(&self, template: Option<&CpuTemplate>) -> String {
        let devices = self.virtio_cmdline();
        let root = self.root_cmdline();
        let mut parts = vec![PLATFORM_BOOT_ARGS];
        parts.extend(devices.iter().map(String::as_str));
        parts.extend(root.as_deref());
        if let Some(t) = template {
            if !t.kernel_cmdline.is_empty() {
                parts.push(&t.kernel_cmdline);
            }
        }
        let user = self
            .boot_source
            .as_ref()
            .map_or(crate::vmm_config::boot_source::DEFAULT_BOOT_ARGS, |b| {
                b.boot_args()
            })
            .trim();
        if !user.is_empty() {
            parts.push(user);
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_order_is_platform_template_user() {
        let mut r = VmResources::new(BootSourceConfig {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: Some(" console=ttyS0 panic=5 ".into()),
        });
        let t = CpuTemplate::from_json("t", r#"{"kernel_cmdline": "noxsave"}"#).unwrap();
        assert_eq!(
            r.guest_cmdline(Some(&t)),
            format!("{PLATFORM_BOOT_ARGS} noxsave console=ttyS0 panic=5")
        );
        if let Some(b) = r.boot_source.as_mut() {
            b.boot_args = Some(String::new());
        }
        assert_eq!(r.guest_cmdline(None), PLATFORM_BOOT_ARGS);
    }

    #[test]
    fn virtio_devices_are_laid_out_disks_first_and_listed_on_the_cmdline() {
        let mut r = VmResources::new(BootSourceConfig {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: Some("root=/dev/vda".into()),
        });
        r.nets.push("tap=t0".parse().unwrap());
        r.drives.push("/a.img".parse().unwrap());
        r.drives.push("/b.img,ro".parse().unwrap());
        r.entropy = true;
        let kinds: Vec<_> = r.virtio_devices().collect();
        assert!(
            matches!(kinds[0], VirtioDeviceConfig::Drive(d) if d.path_on_host.ends_with("a.img"))
        );
        assert!(matches!(kinds[2], VirtioDeviceConfig::Net(_)));
        assert_eq!(kinds[3], VirtioDeviceConfig::Entropy);
        assert_eq!(
            r.guest_cmdline(None),
            format!(
                "{PLATFORM_BOOT_ARGS} virtio_mmio.device=4K@0xd0001000:5 \
                 virtio_mmio.device=4K@0xd0002000:6 virtio_mmio.device=4K@0xd0003000:7 \
                 virtio_mmio.device=4K@0xd0004000:8 root=/dev/vda"
            )
        );
    }

    #[test]
    fn the_root_drive_is_vda_and_gets_root_on_the_cmdline() {
        let mut r = VmResources::empty();
        assert_eq!(r.validate(), Err(ResourcesError::NoBootSource));
        let drive = |id: &str, path: &str, root: bool| DriveConfig {
            drive_id: id.into(),
            path_on_host: path.into(),
            is_root_device: root,
            ..path.parse().unwrap()
        };
        r.set_drive(drive("data", "/d.img", false)).unwrap();
        r.set_drive(drive("root", "/r.img", true)).unwrap();
        assert_eq!(r.drives[0].drive_id, "root");
        assert!(r
            .guest_cmdline(None)
            .contains("root=/dev/vda rw console=ttyS0"));
        assert!(matches!(
            r.set_drive(drive("other", "/o.img", true)),
            Err(ResourcesError::TwoRootDevices(..))
        ));
        assert!(matches!(
            r.set_drive(drive("other", "/d.img", false)),
            Err(ResourcesError::SameImage(..))
        ));
        let mut ro = drive("root", "/r.img", true);
        ro.is_read_only = true;
        ro.partuuid = Some("0eaa91a0-01".into());
        r.set_drive(ro).unwrap();
        assert_eq!(r.drives.len(), 2, "same id replaces");
        assert!(r
            .guest_cmdline(None)
            .contains("root=PARTUUID=0eaa91a0-01 ro"));
    }

    #[test]
    fn more_virtio_devices_than_interrupt_lines_are_refused() {
        let mut r = VmResources::new(BootSourceConfig {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        });
        r.drives = (0..MAX_VIRTIO_DEVICES)
            .map(|i| format!("/d{i}").parse().unwrap())
            .collect();
        r.validate()
            .unwrap_or_else(|e| panic!("{MAX_VIRTIO_DEVICES} devices must fit: {e}"));
        r.entropy = true;
        assert_eq!(
            r.validate(),
            Err(ResourcesError::TooManyDevices(MAX_VIRTIO_DEVICES + 1))
        );
    }
}
