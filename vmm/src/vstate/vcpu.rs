//! Creating and configuring one vCPU: CPUID, MSRs, boot registers, local APIC.

use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use super::vm::Vm;
use crate::arch::x86_64::cpuid::HostCpuid;
use crate::arch::x86_64::regs::{self, EntryMode, RegsError};
use crate::arch::x86_64::{cpuid, interrupts, msr};
use crate::cpu_template::CpuTemplate;

#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {index}: {source}")]
    Create {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM_SET_CPUID2: {source}")]
    SetCpuid {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: MSR list: {detail}")]
    MsrList { index: u8, detail: String },
    #[error("vCPU {index}: KVM_SET_MSRS: {source}")]
    SetMsrs {
        index: u8,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM refused MSR {msr:#x}")]
    MsrRefused { index: u8, msr: u32 },
    #[error("vCPU {index}: {source}")]
    Regs { index: u8, source: RegsError },
    #[error("vCPU {index}: setting LAPIC LINT pins: {source}")]
    Lapic {
        index: u8,
        source: kvm_ioctls::Error,
    },
}

/// What every vCPU needs to know to start.
pub struct VcpuBootConfig<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub supported_cpuid: &'a CpuId,
    pub host: HostCpuid,
    pub template: Option<&'a CpuTemplate>,
    pub vcpu_count: u8,
    pub mode: EntryMode,
    pub entry: u64,
}

pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Vcpu { index, fd })
    }

    /// Sets CPUID, MSRs, LAPIC pins and, for the boot vCPU, the entry registers.
    pub fn configure(&self, cfg: &VcpuBootConfig) -> Result<(), VcpuError> {
        let index = self.index;
        let mut cpuid_entries = cfg.supported_cpuid.clone();
        cpuid::normalize(
            cpuid_entries.as_mut_slice(),
            index,
            cfg.vcpu_count,
            &cfg.host,
        );
        if let Some(t) = cfg.template {
            t.apply_cpuid(cpuid_entries.as_mut_slice());
        }
        self.fd
            .set_cpuid2(&cpuid_entries)
            .map_err(|source| VcpuError::SetCpuid { index, source })?;

        self.set_boot_msrs(cfg.template, cpuid::is_amd(cpuid_entries.as_slice()))?;

        let regs_err = |source| VcpuError::Regs { index, source };
        if index == 0 {
            regs::setup_regs(&self.fd, cfg.mode, cfg.entry).map_err(regs_err)?;
            regs::setup_sregs(cfg.mem, &self.fd, cfg.mode).map_err(regs_err)?;
        }
        regs::setup_fpu(&self.fd).map_err(regs_err)?;
        interrupts::set_lint(&self.fd).map_err(|source| VcpuError::Lapic { index, source })
    }

    fn set_boot_msrs(&self, template: Option<&CpuTemplate>, amd: bool) -> Result<(), VcpuError> {
        let index = self.index;
        let mut entries = msr::boot_msrs(amd);
        if let Some(t) = template {
            t.apply_msrs(&mut entries, |msr_index| {
                self.read_msr(msr_index).unwrap_or(0)
            });
        }
        let msrs = Msrs::from_entries(&entries).map_err(|e| VcpuError::MsrList {
            index,
            detail: format!("{e:?}"),
        })?;
        let written = self
            .fd
            .set_msrs(&msrs)
            .map_err(|source| VcpuError::SetMsrs { index, source })?;
        if written < entries.len() {
            return Err(VcpuError::MsrRefused {
                index,
                msr: entries[written].index,
            });
        }
        Ok(())
    }

    fn read_msr(&self, msr_index: u32) -> Option<u64> {
        let mut msrs = Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: msr_index,
            ..Default::default()
        }])
        .ok()?;
        match self.fd.get_msrs(&mut msrs) {
            Ok(1) => msrs.as_slice().first().map(|e| e.data),
            _ => None,
        }
    }
}
