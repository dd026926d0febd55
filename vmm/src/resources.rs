//! The whole VM description: every validated config piece, and the guest command line they imply.

use std::time::Duration;

use thiserror::Error;

use crate::cpu_template::CpuTemplate;
use crate::vmm_config::machine_config::host_mem_mib;
use crate::vmm_config::{
    BootSourceConfig, BootSourceError, MachineConfig, MachineConfigError, SerialConfig,
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
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResourcesError {
    #[error(transparent)]
    BootSource(#[from] BootSourceError),
    #[error(transparent)]
    MachineConfig(#[from] MachineConfigError),
}

impl VmResources {
    pub fn new(boot_source: BootSourceConfig) -> Self {
        VmResources {
            boot_source,
            machine_config: MachineConfig::default(),
            serial: SerialConfig::default(),
            boot_timer: false,
            stuck_timeout: Some(DEFAULT_STUCK_TIMEOUT),
        }
    }

    /// Validation that needs neither files nor KVM; runs before anything is created.
    pub fn validate(&self) -> Result<(), ResourcesError> {
        self.boot_source.validate()?;
        self.machine_config.validate(host_mem_mib())?;
        Ok(())
    }

    /// The guest command line without device entries: platform options, then the CPU template's,
    /// then the user's (so the user has the last word).
    pub fn guest_cmdline(&self, template: Option<&CpuTemplate>) -> String {
        let mut parts = vec![PLATFORM_BOOT_ARGS];
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
}
