//! The whole VM description: every validated config piece, and the guest command line they imply.

use std::time::Duration;

use thiserror::Error;

use crate::arch::x86_64::layout::{virtio_slot, MAX_VIRTIO_DEVICES, VIRTIO_MMIO_SIZE};
use crate::cpu_template::CpuTemplate;
use crate::vmm_config::machine_config::host_mem_mib;
use crate::vmm_config::{
    BootSourceConfig, BootSourceError, DriveConfig, DriveConfigError, MachineConfig,
    MachineConfigError, NetConfig, SerialConfig,
};

/// Options Kiln's platform always puts first on the command line (later options override them):
/// the platform has no ACPI tables and no PCI bus (devices come from the MP table and the
/// command line), reboot goes through the i8042 controller, and on panic the kernel reboots at
/// once with the BIOS warm-reset flag set, which is how kiln-vmm tells a panic from a reboot.
pub const PLATFORM_BOOT_ARGS: &str = "acpi=off pci=off reboot=k,panic_warm panic=-1";

/// Default time a vCPU may stay stuck (no progress while runnable) before the VM is failed.
pub const DEFAULT_STUCK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmResources {
    pub boot_source: BootSourceConfig,
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
}

impl VmResources {
    pub fn new(boot_source: BootSourceConfig) -> Self {
        VmResources {
            boot_source,
            machine_config: MachineConfig::default(),
            serial: SerialConfig::default(),
            boot_timer: false,
            stuck_timeout: Some(DEFAULT_STUCK_TIMEOUT),
            drives: Vec::new(),
            nets: Vec::new(),
            entropy: false,
        }
    }

    /// Validation that needs neither files nor KVM; runs before anything is created.
    pub fn validate(&self) -> Result<(), ResourcesError> {
        self.boot_source.validate()?;
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

    /// Every virtio device, in layout order: device `i` gets `virtio_slot(i)`.
    pub fn virtio_devices(&self) -> impl Iterator<Item = VirtioDeviceConfig<'_>> {
        let drives = self.drives.iter().map(VirtioDeviceConfig::Drive);
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

    /// The guest command line: platform options and virtio device entries, then the CPU
    /// template's, then the user's (so the user has the last word).
    pub fn guest_cmdline(&self, template: Option<&CpuTemplate>) -> String {
        let devices = self.virtio_cmdline();
        let mut parts = vec![PLATFORM_BOOT_ARGS];
        parts.extend(devices.iter().map(String::as_str));
        if let Some(t) = template {
            if !t.kernel_cmdline.is_empty() {
                parts.push(&t.kernel_cmdline);
            }
        }
        let user = self.boot_source.boot_args().trim();
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
        r.boot_source.boot_args = Some(String::new());
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
