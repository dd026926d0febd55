//! Machine configuration (`/machine-config`) as Firecracker's API spells it.

use serde::{Deserialize, Serialize};

/// `PUT /machine-config` and the body of `GET /machine-config`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Firecracker's static template names are not supported; Kiln accepts `None`, `auto`, the
    /// name of a built-in template (`pvm-host`) or a path to a JSON template. Omitted: auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

/// `PATCH /machine-config`: only the given fields change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigurationUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub cpu_template: Option<String>,
    pub track_dirty_pages: Option<bool>,
    pub huge_pages: Option<String>,
}

impl MachineConfigurationUpdate {
    /// `base` with this update's fields applied.
    pub fn apply_to(&self, base: &MachineConfiguration) -> MachineConfiguration {
        MachineConfiguration {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.or(base.smt),
            cpu_template: self.cpu_template.clone().or(base.cpu_template.clone()),
            track_dirty_pages: self.track_dirty_pages.or(base.track_dirty_pages),
            huge_pages: self.huge_pages.clone().or(base.huge_pages.clone()),
        }
    }
}

/// `PUT /boot-source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}
