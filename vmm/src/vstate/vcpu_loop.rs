//! The vCPU thread: runs KVM_RUN, dispatches port and MMIO exits to devices, turns guest
//! resets and failures into VM exits, and reports its progress to the stuck-vCPU watchdog.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use kvm_bindings::{
    KVM_MP_STATE_RUNNABLE, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::VcpuExit;
use tracing::{debug, info};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::pause::PauseControl;
use super::vcpu::Vcpu;
use crate::seccomp::{Filters, ThreadKind};
use crate::vm_exit::{ExitCoordinator, VmExit};

/// Progress of one vCPU as the watchdog sees it; times are ms since VMM start plus one
/// (zero means "not set").
#[derive(Debug, Default)]
pub struct VcpuHealth {
    /// Set while the thread is inside KVM_RUN.
    pub in_guest_since: AtomicU64,
    /// Set while the vCPU is runnable but found at the same RIP at every sample.
    pub stalled_since: AtomicU64,
    pub last_rip: AtomicU64,
}

/// What a vCPU thread shares with the rest of the VMM.
pub struct VcpuContext {
    pub io: Arc<IoManager>,
    pub exits: Arc<ExitCoordinator>,
    pub stop: Arc<AtomicBool>,
    pub health: Arc<VcpuHealth>,
    pub pause: Arc<PauseControl>,
    pub mem: GuestMemoryMmap,
    pub start: Instant,
    pub filters: Filters,
    /// Passed once every thread's seccomp filter is on.
    pub gate: Arc<Barrier>,
}

/// Milliseconds since `start`, plus one so that zero can mean "unset".
pub fn stamp(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64 + 1
}

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; KVM_RUN then returns EINTR when the signal arrives.
pub fn register_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

enum Step {
    Continue,
    Exit(VmExit),
    /// KVM_EXIT_INTERNAL_ERROR: described with registers and instruction bytes, then fatal.
    InternalError,
}

/// Runs `vcpu` until the VM stops. Any reason to end the VM goes to `ctx.exits`.
pub fn run_vcpu(mut vcpu: Vcpu, ctx: VcpuContext) {
    let index = vcpu.index;
    let installed = ctx
        .filters
        .install(ThreadKind::Vcpu, &format!("vcpu{index}"));
    ctx.gate.wait();
    if let Err(e) = installed {
        ctx.exits
            .request(VmExit::VcpuFailure(format!("vCPU {index}: {e}")));
        return;
    }
    if index == 0 {
        info!(
            "first guest instruction {:.3} ms after VMM start (CLOCK_MONOTONIC {:.6} s)",
            ctx.start.elapsed().as_secs_f64() * 1e3,
            monotonic_seconds()
        );
    }
    while !ctx.stop.load(Ordering::Acquire) {
        if ctx.pause.requested() {
            ctx.pause.park(&ctx.stop);
            // Time spent paused is not a stall.
            ctx.health.stalled_since.store(0, Ordering::Release);
            continue;
        }
        ctx.health
            .in_guest_since
            .store(stamp(ctx.start), Ordering::Release);
        let result = vcpu.fd.run();
        ctx.health.in_guest_since.store(0, Ordering::Release);
        let step = match result {
            Ok(exit) => handle_exit(index, exit, &ctx),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                sample_progress(&vcpu, &ctx);
                Step::Continue
            }
            Err(e) => Step::Exit(VmExit::VcpuFailure(format!("vCPU {index}: KVM_RUN: {e}"))),
        };
        let exit = match step {
            Step::Continue => continue,
            Step::Exit(exit) => exit,
            Step::InternalError => {
                VmExit::VcpuFailure(describe_internal_error(&mut vcpu, &ctx.mem))
            }
        };
        ctx.exits.request(exit);
        break;
    }
    debug!("vCPU {index} stopped");
}

fn handle_exit(index: u8, exit: VcpuExit, ctx: &VcpuContext) -> Step {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if ctx.io.pio_read(PioAddress(port), data).is_err() {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            let _ = ctx.io.pio_write(PioAddress(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if ctx.io.mmio_read(MmioAddress(addr), data).is_err() {
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            let _ = ctx.io.mmio_write(MmioAddress(addr), data);
        }
        VcpuExit::Shutdown => return Step::Exit(VmExit::Reset { triple_fault: true }),
        VcpuExit::SystemEvent(kind, _) => {
            return Step::Exit(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff(0),
                KVM_SYSTEM_EVENT_RESET => VmExit::Reset {
                    triple_fault: false,
                },
                KVM_SYSTEM_EVENT_CRASH => VmExit::Panic,
                other => VmExit::VcpuFailure(format!(
                    "vCPU {index}: unknown KVM system event {other}"
                )),
            })
        }
        VcpuExit::InternalError => return Step::InternalError,
        VcpuExit::FailEntry(reason, cpu) => {
            return Step::Exit(VmExit::VcpuFailure(format!(
                "vCPU {index}: KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})"
            )))
        }
        VcpuExit::Intr => {}
        VcpuExit::Hlt => {
            return Step::Exit(VmExit::VcpuFailure(format!(
                "vCPU {index}: halted outside the in-kernel irqchip"
            )))
        }
        other => {
            return Step::Exit(VmExit::VcpuFailure(format!(
                "vCPU {index}: unexpected KVM exit {other:?}"
            )))
        }
    }
    Step::Continue
}

/// After a kick: is this vCPU making progress? Idle (halted or waiting for SIPI) counts as fine.
fn sample_progress(vcpu: &Vcpu, ctx: &VcpuContext) {
    let health = &ctx.health;
    let runnable = matches!(vcpu.fd.get_mp_state(), Ok(s) if s.mp_state == KVM_MP_STATE_RUNNABLE);
    let regs = vcpu.fd.get_regs().ok();
    let rip = regs.as_ref().map(|r| r.rip);
    let same_place =
        runnable && rip.is_some() && rip == Some(health.last_rip.load(Ordering::Acquire));
    let stuck = same_place
        && regs.as_ref().is_some_and(|r| {
            let cpl = vcpu.fd.get_sregs().map(|s| s.cs.selector & 3).unwrap_or(0);
            cannot_progress(cpl, r.rflags & RFLAGS_IF != 0)
        });
    if stuck {
        let _ = health.stalled_since.compare_exchange(
            0,
            stamp(ctx.start),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    } else {
        health.stalled_since.store(0, Ordering::Release);
        health.last_rip.store(rip.unwrap_or(0), Ordering::Release);
    }
}

const RFLAGS_IF: u64 = 1 << 9;

/// Whether a vCPU found runnable at the same instruction at every sample cannot be making
/// progress: only guest kernel code (CPL 0) with interrupts off. A user process spinning in
/// `for (;;);` sits at one RIP too, but its kernel's timer interrupts still run and can
/// preempt, signal or kill it; a kernel spinning with interrupts on still services them.
pub fn cannot_progress(cpl: u16, interrupts_enabled: bool) -> bool {
    cpl == 0 && !interrupts_enabled
}

/// Builds the report for KVM_EXIT_INTERNAL_ERROR: suberror, RIP, mode and instruction bytes.
fn describe_internal_error(vcpu: &mut Vcpu, mem: &GuestMemoryMmap) -> String {
    let index = vcpu.index;
    // SAFETY: KVM filled the `internal` member of the exit union for this exit reason.
    let (suberror, ndata) = unsafe {
        let internal = vcpu.fd.get_kvm_run().__bindgen_anon_1.internal;
        (internal.suberror, internal.ndata)
    };
    let what = match suberror {
        1 => "emulation failure: KVM's instruction emulator cannot execute this instruction",
        2 => "simultaneous exceptions",
        3 => "error while delivering an event",
        4 => "unexpected exit reason",
        _ => "unknown suberror",
    };
    let Ok(regs) = vcpu.fd.get_regs() else {
        return format!(
            "vCPU {index}: KVM internal error {suberror} ({what}); registers unavailable"
        );
    };
    let sregs = vcpu.fd.get_sregs().ok();
    let (mode, linear) = match &sregs {
        Some(s) if s.cr0 & 1 == 0 => (
            "real mode",
            (u64::from(s.cs.selector) << 4) + (regs.rip & 0xffff),
        ),
        Some(s) if s.cs.l == 1 => ("64-bit", regs.rip),
        Some(s) => ("32-bit protected mode", s.cs.base.wrapping_add(regs.rip)),
        None => ("unknown mode", regs.rip),
    };
    let paging = sregs.as_ref().is_some_and(|s| s.cr0 & (1 << 31) != 0);
    let cpl = sregs.as_ref().map(|s| s.cs.selector & 3).unwrap_or(0);
    let phys = if paging {
        vcpu.fd
            .translate_gva(linear)
            .ok()
            .filter(|t| t.valid != 0)
            .map(|t| t.physical_address)
    } else {
        Some(linear)
    };
    let bytes = phys
        .and_then(|p| {
            let mut buf = [0u8; 15];
            let n = mem.read(&mut buf, GuestAddress(p)).ok()?;
            Some(
                buf[..n]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .unwrap_or_else(|| "unavailable (RIP does not map to guest RAM)".into());
    format!(
        "vCPU {index}: KVM internal error {suberror} ({what}) at RIP {:#x} ({mode}, CPL {cpl}); instruction bytes at RIP: {bytes}; {ndata} words of KVM detail; the host's `dmesg | tail` may say more",
        regs.rip
    )
}

fn monotonic_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::cannot_progress;

    #[test]
    fn only_kernel_code_with_interrupts_off_cannot_progress() {
        assert!(cannot_progress(0, false), "cli; jmp $ in the kernel");
        assert!(
            !cannot_progress(0, true),
            "a kernel loop still takes interrupts"
        );
        assert!(!cannot_progress(3, true), "for (;;); in a user process");
        assert!(
            !cannot_progress(3, false),
            "user mode cannot hold interrupts off"
        );
    }
}
