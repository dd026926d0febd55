//! Machine configuration: vCPU count, memory size, CPU template (CLI flags or `/machine-config`).

use api::models::MachineConfiguration;
use thiserror::Error;

use crate::arch::x86_64::mptable::MAX_CPUS;
use crate::cpu_template::TemplateChoice;

pub const DEFAULT_MEM_MIB: u64 = 128;
pub const DEFAULT_VCPUS: u8 = 1;
/// Below this Linux cannot even hold its own page tables and memory map; the kernel image
/// size is checked separately when it is loaded.
pub const MIN_MEM_MIB: u64 = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    pub cpu_template: TemplateChoice,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: DEFAULT_VCPUS,
            mem_size_mib: DEFAULT_MEM_MIB,
            cpu_template: TemplateChoice::Auto,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MachineConfigError {
    #[error("vCPU count must be between 1 and {MAX_CPUS}, got {0}")]
    VcpuCount(u64),
    #[error("guest memory must be at least {MIN_MEM_MIB} MiB, got {0} MiB")]
    MemTooSmall(u64),
    #[error("guest memory of {requested} MiB is more than this host has ({host} MiB)")]
    MemTooLarge { requested: u64, host: u64 },
    #[error("{0} is not supported by kiln-vmm (only {1})")]
    Unsupported(&'static str, &'static str),
}

impl TryFrom<&MachineConfiguration> for MachineConfig {
    type Error = MachineConfigError;

    /// Firecracker's machine configuration; the values are range-checked by `validate`.
    fn try_from(m: &MachineConfiguration) -> Result<Self, Self::Error> {
        if m.smt == Some(true) {
            return Err(MachineConfigError::Unsupported("smt: true", "false"));
        }
        if m.track_dirty_pages == Some(true) {
            return Err(MachineConfigError::Unsupported(
                "track_dirty_pages: true",
                "false",
            ));
        }
        if m.huge_pages.as_deref().is_some_and(|h| h != "None") {
            return Err(MachineConfigError::Unsupported(
                "huge_pages other than None",
                "None",
            ));
        }
        let cpu_template = match m.cpu_template.as_deref() {
            None | Some("auto") | Some("Auto") => TemplateChoice::Auto,
            Some("None") | Some("none") => TemplateChoice::None,
            Some(other) => {
                let Ok(choice) = other.parse();
                choice
            }
        };
        Ok(MachineConfig {
            vcpu_count: m.vcpu_count,
            mem_size_mib: m.mem_size_mib,
            cpu_template,
        })
    }
}

impl MachineConfig {
    /// Validates against the host's physical memory (`host_mem_mib`, from /proc/meminfo).
    pub fn validate(&self, host_mem_mib: Option<u64>) -> Result<(), MachineConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_CPUS {
            return Err(MachineConfigError::VcpuCount(self.vcpu_count.into()));
        }
        if self.mem_size_mib < MIN_MEM_MIB {
            return Err(MachineConfigError::MemTooSmall(self.mem_size_mib));
        }
        if let Some(host) = host_mem_mib {
            if self.mem_size_mib > host {
                return Err(MachineConfigError::MemTooLarge {
                    requested: self.mem_size_mib,
                    host,
                });
            }
        }
        Ok(())
    }

    pub fn mem_bytes(&self) -> u64 {
        self.mem_size_mib << 20
    }

    /// The API's view (`GET /machine-config`); an automatic CPU template is left out.
    pub fn to_api(&self) -> MachineConfiguration {
        MachineConfiguration {
            vcpu_count: self.vcpu_count,
            mem_size_mib: self.mem_size_mib,
            smt: Some(false),
            cpu_template: match &self.cpu_template {
                TemplateChoice::Auto => None,
                TemplateChoice::None => Some("None".into()),
                TemplateChoice::Builtin(name) => Some(name.clone()),
                TemplateChoice::File(path) => Some(path.display().to_string()),
            },
            track_dirty_pages: Some(false),
            huge_pages: Some("None".into()),
        }
    }
}

/// The host's total memory in MiB, from /proc/meminfo (read once: it does not change, and API
/// requests validate against it).
pub fn host_mem_mib() -> Option<u64> {
    static HOST_MEM_MIB: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *HOST_MEM_MIB.get_or_init(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        parse_mem_total_mib(&meminfo)
    })
}

fn parse_mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let mut c = MachineConfig::default();
        assert!(c.validate(Some(1024)).is_ok());
        c.vcpu_count = 0;
        assert_eq!(c.validate(None), Err(MachineConfigError::VcpuCount(0)));
        c.vcpu_count = MAX_CPUS + 1;
        assert!(c.validate(None).is_err());
        c.vcpu_count = 2;
        c.mem_size_mib = 4;
        assert_eq!(c.validate(None), Err(MachineConfigError::MemTooSmall(4)));
        c.mem_size_mib = 2048;
        assert_eq!(
            c.validate(Some(1024)),
            Err(MachineConfigError::MemTooLarge {
                requested: 2048,
                host: 1024
            })
        );
    }

    #[test]
    fn api_round_trip_and_unsupported_fields() {
        let mut m = MachineConfiguration {
            vcpu_count: 2,
            mem_size_mib: 256,
            cpu_template: Some("pvm-host".into()),
            ..Default::default()
        };
        let c = MachineConfig::try_from(&m).unwrap();
        assert_eq!(c.cpu_template, TemplateChoice::Builtin("pvm-host".into()));
        assert_eq!(MachineConfig::try_from(&c.to_api()).unwrap(), c);
        m.cpu_template = Some("None".into());
        assert_eq!(
            MachineConfig::try_from(&m).unwrap().cpu_template,
            TemplateChoice::None
        );
        m.smt = Some(true);
        assert!(MachineConfig::try_from(&m).is_err());
        m.smt = None;
        m.huge_pages = Some("2M".into());
        assert!(MachineConfig::try_from(&m).is_err());
    }

    #[test]
    fn meminfo_parsing() {
        let s = "MemTotal:       24576000 kB\nMemFree: 1 kB\n";
        assert_eq!(parse_mem_total_mib(s), Some(24000));
        assert_eq!(parse_mem_total_mib("nothing"), None);
    }
}
