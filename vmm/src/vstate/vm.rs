//! The KVM VM: memory slots, in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT, irqfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use thiserror::Error;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};

#[derive(Debug, Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a capability Kiln needs: {0:?}")]
    MissingCap(Cap),
    #[error("KVM_CREATE_VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM platform setup ({what}): {source}")]
    Platform {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_USER_MEMORY_REGION: {0}")]
    MemorySlot(kvm_ioctls::Error),
    #[error("memory slot thread failed{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    MemorySlotThread(Option<std::io::Error>),
    #[error("KVM_IRQFD for GSI {gsi}: {source}")]
    Irqfd { gsi: u32, source: kvm_ioctls::Error },
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
}

const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::ExtCpuid,
];

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm, checks the API and capabilities, creates the VM.
    pub fn new() -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(VmError::ApiVersion(version));
        }
        if let Some(cap) = REQUIRED_CAPS.iter().find(|c| !kvm.check_extension(**c)) {
            return Err(VmError::MissingCap(*cap));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        Ok(Vm { kvm, fd })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// In-kernel PIC/IOAPIC/LAPIC and PIT, plus the TSS and identity-map pages KVM needs.
    pub fn setup_platform(&self) -> Result<(), VmError> {
        let p = |what| move |source| VmError::Platform { what, source };
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(p("identity map address"))?;
        self.fd
            .set_tss_address(KVM_TSS_START as usize)
            .map_err(p("TSS address"))?;
        self.fd.create_irq_chip().map_err(p("irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(p("PIT"))
    }

    /// One KVM memory slot per guest RAM region.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM (the
            // VMM keeps both until exit); KVM only accesses it while the VM exists.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(VmError::MemorySlot)?;
        }
        Ok(())
    }

    /// Writes to `evt` raise interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }
}
