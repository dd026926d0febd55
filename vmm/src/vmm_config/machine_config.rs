//! Machine configuration: vCPU count, memory size, CPU template.

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
}

/// The host's total memory in MiB, from /proc/meminfo.
pub fn host_mem_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total_mib(&meminfo)
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
    fn meminfo_parsing() {
        let s = "MemTotal:       24576000 kB\nMemFree: 1 kB\n";
        assert_eq!(parse_mem_total_mib(s), Some(24000));
        assert_eq!(parse_mem_total_mib("nothing"), None);
    }
}
