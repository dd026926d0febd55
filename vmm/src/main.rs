//! kiln-vmm: boot a Linux guest from the command line and exit with the guest's outcome.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tracing::{error, info, Level};

use vmm::arch::x86_64::mptable::MAX_CPUS;
use vmm::builder::{build_vm, full_cmdline, resolve_template};
use vmm::resources::VmResources;
use vmm::runtime::{run_vm, TerminalMode};
use vmm::vm_exit::{exit_code, VmExit};
use vmm::vmm_config::machine_config::DEFAULT_MEM_MIB;
use vmm::vmm_config::{BootSourceConfig, DriveConfig, MachineConfig, NetConfig, SerialConfig};

/// Kiln's KVM virtual machine monitor: boots Linux directly (PVH vmlinux, or bzImage through
/// the 64-bit boot protocol) with a serial console and virtio-mmio disks, NICs and entropy.
///
/// Exit status: 0 guest powered off or rebooted; N the guest wrote N to the debug-exit port
/// (0xf4); 1 VMM error; 2 usage error; 3 guest kernel panic; 4 vCPU failure (emulation
/// failure, KVM internal error, stuck vCPU); 128+N stopped by signal N.
#[derive(Debug, Parser)]
#[command(name = "kiln-vmm", version)]
struct Cli {
    /// Kernel image: an x86_64 ELF vmlinux (PVH entry if present) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk (for example an uncompressed cpio archive).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line (default "console=ttyS0"). Kiln puts its platform options and the
    /// CPU template's before it, so options given here win.
    #[arg(long, value_name = "ARGS")]
    cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEM_MIB)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CPUS)))]
    vcpus: u8,
    /// CPU template: auto (pick the built-in template matching this host), none, a built-in
    /// name (pvm-host), or a path to a JSON template.
    #[arg(long, value_name = "TEMPLATE", default_value = "auto")]
    cpu_template: String,
    /// Serial console output: stdout (also feeds stdin to the guest), none, or a file path.
    #[arg(long, value_name = "DEST", default_value = "stdout")]
    serial_out: String,
    /// Enable the boot timer: a guest byte write of 123 at 0xd0000000 logs the boot time.
    #[arg(long)]
    boot_timer: bool,
    /// A virtio-blk disk backed by a raw image: PATH[,ro][,id=SERIAL]. Repeatable; the first is
    /// /dev/vda (boot from it with --cmdline "root=/dev/vda ..."). `ro` makes the disk read-only
    /// (writes fail with an I/O error); `id` is the serial the guest reads.
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<DriveConfig>,
    /// A virtio-net NIC on a TAP device: tap=NAME[,mac=MAC] (the interface is created when
    /// missing, which needs CAP_NET_ADMIN) or fd=N[,mac=MAC] (an inherited TAP descriptor opened
    /// with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR). Repeatable: eth0, eth1, ...
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<NetConfig>,
    /// A virtio-rng entropy device fed from the host's getrandom(2) (/dev/hwrng in the guest).
    #[arg(long)]
    entropy: bool,
    /// Fail the VM when a vCPU makes no progress for this many seconds (0 disables).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    stuck_timeout: u64,
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: Level,
    /// Print the full guest command line this configuration produces, and exit.
    #[arg(long)]
    print_cmdline: bool,
}

impl Cli {
    fn resources(&self) -> VmResources {
        let mut res = VmResources::new(BootSourceConfig {
            kernel_image_path: self.kernel.clone(),
            initrd_path: self.initrd.clone(),
            boot_args: self.cmdline.clone(),
        });
        let Ok(cpu_template) = self.cpu_template.parse();
        res.machine_config = MachineConfig {
            vcpu_count: self.vcpus,
            mem_size_mib: self.mem,
            cpu_template,
        };
        let Ok(serial) = self.serial_out.parse::<SerialConfig>();
        res.serial = serial;
        res.boot_timer = self.boot_timer;
        res.stuck_timeout =
            (self.stuck_timeout > 0).then(|| Duration::from_secs(self.stuck_timeout));
        res.drives = self.disks.clone();
        res.nets = self.nets.clone();
        res.entropy = self.entropy;
        res
    }
}

fn run(res: &VmResources, start: Instant) -> Result<VmExit, String> {
    let built = build_vm(res, start).map_err(|e| e.to_string())?;
    let _terminal = matches!(res.serial, SerialConfig::Stdout).then(TerminalMode::enter);
    run_vm(built, res.stuck_timeout, start).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(cli.log_level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let res = cli.resources();

    if cli.print_cmdline {
        return match resolve_template(&res).and_then(|t| full_cmdline(&res, t.as_ref())) {
            Ok(cmdline) => {
                println!("{cmdline}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("{e}");
                ExitCode::from(exit_code::VMM_ERROR as u8)
            }
        };
    }

    let code = match run(&res, start) {
        Ok(exit) => {
            let code = exit.exit_code();
            match exit {
                VmExit::Panic | VmExit::VcpuFailure(_) | VmExit::VcpuStuck(_) => {
                    error!("{} (exit status {code})", exit.describe())
                }
                _ => info!("{} (exit status {code})", exit.describe()),
            }
            code
        }
        Err(e) => {
            error!("{e}");
            exit_code::VMM_ERROR
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
