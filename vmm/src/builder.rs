//! Builds a ready-to-run VM from a validated description: KVM VM, memory, kernel, initrd,
//! command line, MP table, boot information, devices and configured vCPUs.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use linux_loader::cmdline::Cmdline;
use thiserror::Error;
use tracing::{debug, info};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::boot::{self, BootInfoError};
use crate::arch::x86_64::cpuid::HostCpuid;
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};
use crate::arch::x86_64::mptable::{self, MpTableError};
use crate::arch::x86_64::regs::EntryMode;
use crate::boot_loader::{self, LoadError, LoadedKernel};
use crate::cpu_template::{CpuTemplate, CpuTemplateError};
use crate::device_manager::{attach_devices, DeviceError, PlatformDevices};
use crate::resources::{ResourcesError, VmResources};
use crate::vm_exit::ExitCoordinator;
use crate::vmm_config::boot_source::{check_cmdline, BootSourceError};
use crate::vstate::memory::{create_guest_memory, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuBootConfig, VcpuError};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    #[error(transparent)]
    CpuTemplate(#[from] CpuTemplateError),
    #[error("full guest command line (platform + CPU template + yours): {0}")]
    Cmdline(BootSourceError),
    #[error("full guest command line: {0}")]
    CmdlineBuild(linux_loader::cmdline::Error),
    #[error("writing the command line: {0}")]
    CmdlineLoad(linux_loader::loader::Error),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("{requested} vCPUs requested, KVM on this host allows {max}")]
    TooManyVcpus { requested: u8, max: usize },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    #[error(transparent)]
    BootInfo(#[from] BootInfoError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("creating the exit notifier: {0}")]
    ExitEvent(std::io::Error),
}

/// A VM with everything set up, vCPUs not yet running.
pub struct BuiltVm {
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
    pub vcpus: Vec<Vcpu>,
    pub devices: PlatformDevices,
    pub exits: Arc<ExitCoordinator>,
    pub cmdline: String,
}

/// The CPU template the description selects, resolved against this host.
pub fn resolve_template(res: &VmResources) -> Result<Option<CpuTemplate>, BuildError> {
    Ok(res
        .machine_config
        .cpu_template
        .resolve(Path::new("/sys/module"))?)
}

/// The complete guest command line, checked against Linux's limit.
pub fn full_cmdline(
    res: &VmResources,
    template: Option<&CpuTemplate>,
) -> Result<String, BuildError> {
    let cmdline = res.guest_cmdline(template);
    check_cmdline(&cmdline).map_err(BuildError::Cmdline)?;
    Ok(cmdline)
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BuildError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuildError::CmdlineBuild)?;
    c.insert_str(cmdline).map_err(BuildError::CmdlineBuild)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &c)
        .map_err(BuildError::CmdlineLoad)
}

/// Logs how long a build step took (debug level), for start-up profiling.
fn step(name: &str, since: &mut Instant) {
    debug!(
        "build step {name}: {:.3} ms",
        since.elapsed().as_secs_f64() * 1e3
    );
    *since = Instant::now();
}

/// KVM VM with irqchip and PIT; memory slots come later, on their own thread.
fn create_vm(vcpu_count: u8) -> Result<Vm, BuildError> {
    let vm = Vm::new()?;
    if usize::from(vcpu_count) > vm.max_vcpus() {
        return Err(BuildError::TooManyVcpus {
            requested: vcpu_count,
            max: vm.max_vcpus(),
        });
    }
    vm.setup_platform()?;
    Ok(vm)
}

/// Kernel, initrd, command line, MP table and boot information, all in guest memory.
fn load_guest(
    res: &VmResources,
    mem: &GuestMemoryMmap,
    cmdline: &str,
) -> Result<LoadedKernel, BuildError> {
    let mut t = Instant::now();
    let mc = &res.machine_config;
    let mem_bytes = mc.mem_bytes();
    let bs = res.boot_source()?;
    let kernel = boot_loader::load_kernel(mem, mem_bytes, &bs.kernel_image_path)?;
    debug!(
        "kernel entry {:#x} ({:?}), ends at {:#x}",
        kernel.entry, kernel.mode, kernel.end
    );
    let initrd = match &bs.initrd_path {
        Some(p) => Some(boot_loader::load_initrd(mem, mem_bytes, p, &kernel)?),
        None => None,
    };
    step("load kernel and initrd", &mut t);
    write_cmdline(mem, cmdline)?;
    mptable::setup_mptable(mem, mc.vcpu_count)?;
    match kernel.mode {
        EntryMode::Pvh => boot::setup_pvh(mem, mem_bytes, cmdline.len(), initrd)?,
        EntryMode::Linux64 => {
            boot::setup_zero_page(mem, mem_bytes, kernel.setup_header, cmdline.len(), initrd)?
        }
    }
    step("boot information", &mut t);
    Ok(kernel)
}

/// Everything that needs the VM but not its memory slot: guest loading, devices, vCPUs.
fn prepare_guest(
    res: &VmResources,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    cmdline: &str,
    template: Option<&CpuTemplate>,
    start: Instant,
) -> Result<
    (
        LoadedKernel,
        PlatformDevices,
        Vec<Vcpu>,
        Arc<ExitCoordinator>,
    ),
    BuildError,
> {
    let mut t = Instant::now();
    let mc = &res.machine_config;
    let kernel = load_guest(res, mem, cmdline)?;

    let exits = Arc::new(ExitCoordinator::new().map_err(BuildError::ExitEvent)?);
    let devices = attach_devices(vm, mem, res, exits.clone(), start)?;
    step("devices", &mut t);

    let supported_cpuid = vm
        .kvm()
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(VmError::SupportedCpuid)?;
    let tsc_deadline = vm.kvm().check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let boot_cfg = VcpuBootConfig {
        mem,
        supported_cpuid: &supported_cpuid,
        host: HostCpuid::detect(tsc_deadline),
        template,
        vcpu_count: mc.vcpu_count,
        mode: kernel.mode,
        entry: kernel.entry,
    };
    let mut vcpus = Vec::with_capacity(mc.vcpu_count.into());
    for index in 0..mc.vcpu_count {
        let vcpu = Vcpu::new(vm, index)?;
        vcpu.configure(&boot_cfg)?;
        vcpus.push(vcpu);
    }
    step("vCPUs", &mut t);
    Ok((kernel, devices, vcpus, exits))
}

/// Builds the VM that `res` describes. `start` is the VMM's start time (for boot timing).
pub fn build_vm(res: &VmResources, start: Instant) -> Result<BuiltVm, BuildError> {
    let mut t = Instant::now();
    res.validate()?;
    let template = resolve_template(res)?;
    match &template {
        Some(t) => info!("CPU template: {}", t.name),
        None => info!("CPU template: none"),
    }
    let cmdline = full_cmdline(res, template.as_ref())?;
    let mc = &res.machine_config;
    let mem = create_guest_memory(mc.mem_bytes())?;
    step("validate, template, map memory", &mut t);

    let vm = create_vm(mc.vcpu_count)?;
    step("create VM, irqchip and PIT", &mut t);

    // Registering the memory slot waits for KVM (milliseconds); nothing else needs it before
    // the first KVM_RUN, so it runs beside loading the guest and setting up devices and vCPUs.
    // The thread's own start-up maps memory (stack, allocator arena), which needs the address
    // space lock for writing; a writer waiting on it would stall every page fault the main
    // thread takes while loading the kernel. So loading starts once the thread is running.
    let started = Barrier::new(2);
    let (kernel, devices, vcpus, exits) = std::thread::scope(|scope| {
        let slots = std::thread::Builder::new()
            .name("vm-memory".into())
            .spawn_scoped(scope, || {
                started.wait();
                vm.register_memory(&mem)
            });
        if slots.is_ok() {
            started.wait();
        }
        let rest = prepare_guest(res, &vm, &mem, &cmdline, template.as_ref(), start);
        let slots = match slots {
            Ok(handle) => handle
                .join()
                .unwrap_or(Err(VmError::MemorySlotThread(None)))
                .map_err(BuildError::from),
            Err(e) => Err(BuildError::from(VmError::MemorySlotThread(Some(e)))),
        };
        // The user's input (kernel, initrd) is the likelier mistake: report it first.
        let rest = rest?;
        slots?;
        Ok::<_, BuildError>(rest)
    })?;
    step("guest, devices, vCPUs and memory slot ready", &mut t);
    info!(
        "VM built in {:.3} ms: {} vCPU(s), {} MiB, {:?} entry; command line: {cmdline}",
        start.elapsed().as_secs_f64() * 1e3,
        mc.vcpu_count,
        mc.mem_size_mib,
        kernel.mode
    );
    Ok(BuiltVm {
        vm,
        mem,
        vcpus,
        devices,
        exits,
        cmdline,
    })
}
