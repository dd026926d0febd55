//! kiln-vmm: boot a Linux guest from the command line, a config file or the HTTP API, and exit
//! with the guest's outcome.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use devices::virtio::net::{Tap, TapError};
use tracing::{error, info, warn, Level};

use vmm::arch::x86_64::mptable::MAX_CPUS;
use vmm::builder::{build_vm, full_cmdline, resolve_template};
use vmm::logger::{self, LogControl};
use vmm::resources::VmResources;
use vmm::rpc_interface::runtime::RuntimeApi;
use vmm::rpc_interface::waiting::{serve_after_exit, serve_until_start, WaitEnd};
use vmm::rpc_interface::{api_channel, preboot, RunState, VmmInfo};
use vmm::runtime::{run_vm, StopSignals, TerminalMode};
use vmm::seccomp::{Filters, SeccompChoice, ThreadKind};
use vmm::vm_exit::{exit_code, VmExit};
use vmm::vmm_config::machine_config::DEFAULT_MEM_MIB;
use vmm::vmm_config::{
    BootSourceConfig, DriveConfig, MachineConfig, NetConfig, SerialConfig, TapBackend,
};

/// Kiln's KVM virtual machine monitor: boots Linux directly (PVH vmlinux, or bzImage through
/// the 64-bit boot protocol) with a serial console and virtio-mmio disks, NICs and entropy.
///
/// Three ways to describe the VM: --kernel and the options after it; --config-file (the JSON of
/// the API's GET /vm/config); or the Firecracker-compatible HTTP API on --api-sock, which waits
/// for configuration and InstanceStart. With --api-sock and one of the others, the VM boots at
/// once and the API serves the running VM.
///
/// Exit status: 0 guest powered off or rebooted; N the guest wrote N to the debug-exit port
/// (0xf4); 1 VMM error; 2 usage error; 3 guest kernel panic; 4 vCPU failure (emulation
/// failure, KVM internal error, stuck vCPU); 128+N stopped by signal N.
#[derive(Debug, Parser)]
#[command(name = "kiln-vmm", version)]
struct Cli {
    /// Serve the HTTP API on this unix socket (created owner-only; a stale one is replaced).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Boot the VM this JSON file describes (the format of GET /vm/config).
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    config_file: Option<PathBuf>,
    /// No API socket (Firecracker's flag; kiln-vmm serves no API unless --api-sock is given).
    #[arg(long, conflicts_with = "api_sock")]
    no_api: bool,
    /// Instance id reported by GET /.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    id: String,
    /// Largest API request body accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = api::server::DEFAULT_MAX_PAYLOAD)]
    http_api_max_payload_size: usize,
    /// After the VM ends keep serving the API (GET /kiln/v1/state shows the exit) until
    /// SIGTERM, SIGINT or SIGHUP; then exit with the VM's status.
    #[arg(long, requires = "api_sock")]
    linger: bool,
    /// Run without seccomp filters (Firecracker's flag). Filters are on by default.
    #[arg(long)]
    no_seccomp: bool,
    /// Use these seccomp filters instead of the built-in ones: a JSON document in seccompiler's
    /// format with a filter for each thread kind (main, vcpu, api); see docs/security.md.
    #[arg(long, value_name = "FILE", conflicts_with = "no_seccomp")]
    seccomp_filter: Option<PathBuf>,
    /// Kernel image: an x86_64 ELF vmlinux (PVH entry if present) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (for example an uncompressed cpio archive).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line (default "console=ttyS0"). Kiln puts its platform options and the
    /// CPU template's before it, so options given here win.
    #[arg(long, value_name = "ARGS", requires = "kernel")]
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
    #[arg(long = "disk", value_name = "SPEC", requires = "kernel")]
    disks: Vec<DriveConfig>,
    /// A virtio-net NIC on a TAP device: tap=NAME[,mac=MAC] (the interface is created when
    /// missing, which needs CAP_NET_ADMIN) or fd=N[,mac=MAC] (an inherited TAP descriptor opened
    /// with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR). Repeatable: eth0, eth1, ... With --api-sock alone
    /// these NICs (ids net0, net1, ...) come before any the API adds: the way to hand an
    /// API-configured VM a descriptor, which only a parent process can give.
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<NetConfig>,
    /// A virtio-rng entropy device fed from the host's getrandom(2) (/dev/hwrng in the guest).
    #[arg(long, requires = "kernel")]
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
    /// Settings that apply however the VM is described.
    fn apply_process_options(&self, res: &mut VmResources) {
        let Ok(serial) = self.serial_out.parse::<SerialConfig>();
        res.serial = serial;
        res.boot_timer = self.boot_timer;
        res.stuck_timeout =
            (self.stuck_timeout > 0).then(|| Duration::from_secs(self.stuck_timeout));
    }

    /// The VM `--kernel` and the options after it describe.
    fn resources_from_flags(&self, kernel: &Path) -> VmResources {
        let mut res = VmResources::new(BootSourceConfig {
            kernel_image_path: kernel.to_owned(),
            initrd_path: self.initrd.clone(),
            boot_args: self.cmdline.clone(),
        });
        let Ok(cpu_template) = self.cpu_template.parse();
        res.machine_config = MachineConfig {
            vcpu_count: self.vcpus,
            mem_size_mib: self.mem,
            cpu_template,
        };
        res.drives = self.disks.clone();
        for (i, d) in res.drives.iter_mut().enumerate() {
            if d.drive_id.is_empty() {
                d.drive_id = format!("disk{i}");
            }
        }
        res.nets = self.numbered_nets();
        res.entropy = self.entropy;
        res
    }

    /// The `--net` NICs, named net0, net1, ...
    fn numbered_nets(&self) -> Vec<NetConfig> {
        let mut nets = self.nets.clone();
        for (i, n) in nets.iter_mut().enumerate() {
            n.iface_id = format!("net{i}");
        }
        nets
    }

    /// The `--net` NICs for an API-configured VM; an inherited descriptor is checked now, since
    /// no API call could replace it later.
    fn checked_nets(&self) -> Result<Vec<NetConfig>, TapError> {
        let nets = self.numbered_nets();
        for n in &nets {
            if let TapBackend::Fd(fd) = n.tap {
                Tap::from_fd(fd)?;
            }
        }
        Ok(nets)
    }
}

/// Removes the API socket when kiln-vmm exits normally.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How a run ended without a guest outcome.
enum Failure {
    Usage(String),
    Vmm(String),
    Signal(i32),
}

fn vmm_err(e: impl std::fmt::Display) -> Failure {
    Failure::Vmm(e.to_string())
}

fn run(cli: &Cli, log: LogControl, start: Instant) -> Result<i32, Failure> {
    if cli.kernel.is_none() && cli.config_file.is_none() && cli.api_sock.is_none() {
        return Err(Failure::Usage(
            "nothing to run: give --kernel, --config-file or --api-sock (see --help)".into(),
        ));
    }
    if !cli.nets.is_empty()
        && (cli.config_file.is_some() || (cli.kernel.is_none() && cli.api_sock.is_none()))
    {
        return Err(Failure::Usage(
            "--net needs --kernel or --api-sock (a config file lists its NICs itself)".into(),
        ));
    }
    // Before any thread exists, so that every thread inherits the blocked stop signals.
    let signals = StopSignals::install().map_err(vmm_err)?;
    let filters = Filters::prepare(&match (&cli.seccomp_filter, cli.no_seccomp) {
        (Some(file), _) => SeccompChoice::File(file.clone()),
        (None, true) => SeccompChoice::None,
        (None, false) => SeccompChoice::Default,
    })
    .map_err(vmm_err)?;
    if !filters.enabled() {
        warn!("seccomp filters are off (--no-seccomp)");
    }
    let mut info = new_info(cli, log, start);
    let (receiver, _socket) = match &cli.api_sock {
        Some(path) => {
            let listener = api::bind(path).map_err(vmm_err)?;
            let socket = SocketFile(path.clone());
            let (sender, receiver) = api_channel().map_err(vmm_err)?;
            let config = api::ServerConfig {
                max_payload: cli.http_api_max_payload_size,
                ..Default::default()
            };
            let api_filters = filters.clone();
            api::spawn(listener, sender, config, info.counters.clone(), move || {
                api_filters
                    .install(ThreadKind::Api, "api")
                    .map_err(|e| e.to_string())
            })
            .map_err(vmm_err)?;
            info!(
                "API listening on {} after {:.3} ms",
                path.display(),
                start.elapsed().as_secs_f64() * 1e3
            );
            (Some(receiver), Some(socket))
        }
        None => (None, None),
    };

    let described = match (&cli.config_file, &cli.kernel) {
        (Some(file), _) => {
            Some(preboot::from_config_file(file, &mut info).map_err(Failure::Usage)?)
        }
        (None, Some(kernel)) => Some(cli.resources_from_flags(kernel)),
        (None, None) => None,
    };
    let (built, res, start_reply) = match (described, &receiver) {
        (Some(mut res), _) => {
            cli.apply_process_options(&mut res);
            (build_vm(&res, start).map_err(vmm_err)?, res, None)
        }
        (None, Some(receiver)) => {
            let mut res = VmResources::empty();
            cli.apply_process_options(&mut res);
            res.nets = cli.checked_nets().map_err(vmm_err)?;
            let waited = serve_until_start(receiver, &mut res, &mut info, &signals, |r| {
                build_vm(r, start).map_err(|e| e.to_string())
            });
            match waited {
                Ok((built, reply)) => (built, res, Some(reply)),
                Err(WaitEnd::Signal(sig)) => return Err(Failure::Signal(sig)),
                Err(WaitEnd::ServerGone) => {
                    return Err(Failure::Vmm("the API server stopped".into()))
                }
            }
        }
        (None, None) => return Err(Failure::Usage("nothing to run".into())),
    };
    info.vm_started = Some(start.elapsed());

    let terminal = matches!(res.serial, SerialConfig::Stdout).then(TerminalMode::enter);
    let stuck_timeout = res.stuck_timeout;
    let api = receiver.map(|receiver| RuntimeApi {
        receiver,
        info,
        res,
        start_reply,
        waiters: Vec::new(),
    });
    let (exit, api) = run_vm(
        built,
        stuck_timeout,
        start,
        signals.try_clone().map_err(vmm_err)?,
        api,
        &filters,
    )
    .map_err(vmm_err)?;
    drop(terminal);
    let code = exit.exit_code();
    match exit {
        VmExit::Panic | VmExit::VcpuFailure(_) | VmExit::VcpuStuck(_) => {
            error!("{} (exit status {code})", exit.describe())
        }
        _ => info!("{} (exit status {code})", exit.describe()),
    }
    if let Some(mut api) = api {
        let state = RunState::Exited(exit);
        api.info.revision += 1;
        let mut waiting = std::mem::take(&mut api.waiters);
        for w in &mut waiting {
            w.after = 0; // every reader is due: the VM has ended
        }
        api.info.answer_waiters(&mut waiting, &state);
        if cli.linger {
            serve_after_exit(&api.receiver, &api.res, &api.info, &state, &signals);
        }
    }
    Ok(code)
}

fn new_info(cli: &Cli, log: LogControl, start: Instant) -> VmmInfo {
    VmmInfo {
        id: cli.id.clone(),
        start,
        counters: Arc::default(),
        log,
        metrics: None,
        vm_started: None,
        boot_time: None,
        revision: 0,
    }
}

/// `--print-cmdline`: the guest command line the VM described by --kernel or --config-file gets.
fn print_cmdline(cli: &Cli, log: LogControl, start: Instant) -> ExitCode {
    let res = match (&cli.config_file, &cli.kernel) {
        (Some(file), _) => preboot::from_config_file(file, &mut new_info(cli, log, start)),
        (None, Some(kernel)) => Ok(cli.resources_from_flags(kernel)),
        (None, None) => Err("--print-cmdline needs --kernel or --config-file".into()),
    };
    let cmdline = res.and_then(|res| {
        resolve_template(&res)
            .and_then(|t| full_cmdline(&res, t.as_ref()))
            .map_err(|e| e.to_string())
    });
    match cmdline {
        Ok(cmdline) => {
            println!("{cmdline}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::from(exit_code::VMM_ERROR as u8)
        }
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = Cli::parse();
    let log = logger::init(cli.log_level);

    if cli.print_cmdline {
        return print_cmdline(&cli, log, start);
    }

    let code = match run(&cli, log, start) {
        Ok(code) => code,
        Err(Failure::Usage(e)) => {
            error!("{e}");
            2
        }
        Err(Failure::Vmm(e)) => {
            error!("{e}");
            exit_code::VMM_ERROR
        }
        Err(Failure::Signal(sig)) => exit_code::SIGNAL_BASE + sig,
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
