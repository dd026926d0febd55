//! kiln-launcher: the main process of a VM's pod (container `compute`). Reads the launch
//! description the controller mounted, prepares the disks, runs kiln-vmm with the console on
//! the container's stdio, serves the controller's endpoint, and ends as the VM ends: exit 0
//! when the guest powered off or was stopped on request, 1 when it failed (the reason is the
//! container's termination message).

mod control;
mod disks;
mod network;
mod network_config;
mod probe;
mod seed;
mod state;
mod supervisor;
mod vmm;
mod vmm_client;

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use kiln_crd::launch::{LaunchSpec, LAUNCH_DIR, LAUNCH_FILE, RUN_DIR, TOKEN_FILE};
use kiln_crd::names::CONTROL_PORT;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::supervisor::{Outcome, Supervisor};

#[derive(Parser)]
#[command(
    version,
    about = "Runs one Kiln VM in its pod (started by Kiln's controller)"
)]
struct Cli {
    /// Folder with launch.json and token (the launch Secret).
    #[arg(long, default_value = LAUNCH_DIR)]
    launch_dir: PathBuf,
    /// The kiln-vmm binary.
    #[arg(long, default_value = "/usr/bin/kiln-vmm")]
    vmm: PathBuf,
    /// Folder for kiln-vmm's API socket.
    #[arg(long, default_value = RUN_DIR)]
    run_dir: PathBuf,
    /// Port of the controller's endpoint on the pod IP.
    #[arg(long, default_value_t = CONTROL_PORT)]
    port: u16,
    /// Set up the pod's network for the guest and exit (the network init container, which
    /// holds NET_ADMIN; the launcher itself needs none).
    #[arg(long)]
    setup_network: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail("StartFailed", &format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(run(cli))
}

/// Ends the launcher: the termination message says why (the controller shows it on the VMI).
fn finish(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::PoweredOff => {
            info!("the guest powered off");
            let _ = std::fs::write("/dev/termination-log", "PowerOff: the guest powered off");
            ExitCode::SUCCESS
        }
        Outcome::Stopped => {
            info!("the VM was stopped");
            let _ = std::fs::write(
                "/dev/termination-log",
                "Stopped: the VM was stopped on request",
            );
            ExitCode::SUCCESS
        }
        Outcome::Failed { reason, message } => fail(&reason, &message),
    }
}

/// Starts the DHCP server for the guest: on the TAP with the guest network's addresses
/// (masquerade), or on the bridge with the pod's own (bridge, from the init container's
/// handoff). Returns the guest's address, which the probes target.
fn start_dhcp(
    net: &kiln_crd::launch::LaunchNetwork,
    handoff: Option<&network::bridge::Handoff>,
    state: &state::SharedState,
) -> Result<Ipv4Addr, String> {
    use kiln_crd::launch::{BRIDGE_NAME, TAP_NAME};
    use network::dhcp;
    let client_mac = net
        .mac
        .parse::<devices::virtio::net::MacAddr>()
        .map_err(|e| format!("the guest's MAC: {e}"))?
        .0;
    let (dns, search) =
        dhcp::resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    // The pod's own address under bridge; the guest network's behind NAT under masquerade.
    let (server, client, prefix_len, router, mtu, device) = match handoff {
        Some(h) => (
            network::bridge::LAUNCHER_ADDRESS,
            h.address,
            h.prefix_len,
            h.gateway,
            u16::try_from(h.mtu).unwrap_or(1500),
            BRIDGE_NAME,
        ),
        None => {
            let (gateway, guest, prefix_len) =
                network::addresses(net).map_err(|e| e.to_string())?;
            (
                gateway,
                guest,
                prefix_len,
                gateway,
                network::tap_mtu(),
                TAP_NAME,
            )
        }
    };
    let lease = dhcp::Lease {
        server,
        client_mac,
        client,
        prefix_len,
        router,
        dns,
        search,
        hostname: net.hostname.clone(),
        mtu,
    };
    let socket = dhcp::bind(device).map_err(|e| format!("DHCP server on {device}: {e}"))?;
    info!(
        "DHCP: serving {}/{} (router {}, DNS {:?}, MTU {}) to {} on {device}",
        lease.client, lease.prefix_len, lease.router, lease.dns, lease.mtu, net.mac
    );
    let guest = lease.client;
    let state = state.clone();
    tokio::spawn(dhcp::serve(lease, socket, move |ip| {
        let ip = ip.to_string();
        state.update(|s| {
            if s.guest_ip.as_deref() != Some(ip.as_str()) {
                s.guest_ip = Some(ip);
            }
        })
    }));
    Ok(guest)
}

fn fail(reason: &str, message: &str) -> ExitCode {
    error!("{reason}: {message}");
    let _ = std::fs::write("/dev/termination-log", format!("{reason}: {message}"));
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> ExitCode {
    let spec_path = cli.launch_dir.join(LAUNCH_FILE);
    let mut spec: LaunchSpec = match std::fs::read(&spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => return fail("StartFailed", &format!("{}: {e}", spec_path.display())),
    };
    if cli.setup_network {
        return match &spec.network {
            Some(net) => match network::setup(net, &cli.run_dir).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("NetworkSetupFailed", &e.to_string()),
            },
            None => ExitCode::SUCCESS,
        };
    }
    let token = match std::fs::read_to_string(cli.launch_dir.join(TOKEN_FILE)) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => return fail("StartFailed", "the launch Secret has no token"),
    };
    info!(
        "VMI {}/{}: {} vCPU(s), {} MiB, {} disk(s)",
        spec.namespace,
        spec.name,
        spec.vcpus,
        spec.memory_mib,
        spec.disks.len()
    );
    let state = state::SharedState::new();
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    // Under the bridge binding the guest takes the pod's MAC, unless the interface names one.
    let handoff = match &spec.network {
        Some(net) if net.binding == kiln_crd::launch::NetworkBinding::Bridge => {
            match network::bridge::Handoff::load(&cli.run_dir) {
                Ok(h) => Some(h),
                Err(e) => return fail("NetworkSetupFailed", &e.to_string()),
            }
        }
        _ => None,
    };
    if let (Some(net), Some(h)) = (spec.network.as_mut(), &handoff) {
        if net.mac.is_empty() {
            net.mac = h.mac.clone();
        }
    }
    if let Some(net) = &spec.network {
        state.update(|s| s.guest_mac = Some(net.mac.clone()));
        let guest = match start_dhcp(net, handoff.as_ref(), &state) {
            Ok(g) => g,
            Err(e) => return fail("NetworkSetupFailed", &e),
        };
        if spec.readiness_probe.is_some() {
            state.update(|s| s.guest_ready = Some(false));
        }
        for (kind, probe) in [
            (probe::Kind::Readiness, spec.readiness_probe.clone()),
            (probe::Kind::Liveness, spec.liveness_probe.clone()),
        ] {
            if let Some(p) = probe {
                tokio::spawn(probe::run(kind, p, guest, state.clone(), cmd_tx.clone()));
            }
        }
    }
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, cli.port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return fail("StartFailed", &format!("listening on {addr}: {e}")),
    };
    let control = Arc::new(control::Control {
        token,
        state: state.clone(),
        commands: cmd_tx,
    });
    tokio::spawn(control::serve(listener, control));

    // SIGTERM (the kubelet stopping the pod) or SIGINT: shut the guest down gracefully.
    let (stop_tx, stop_rx) = watch::channel(false);
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let tx = stop_tx.clone();
        match signal(kind) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    if s.recv().await.is_some() {
                        info!("stop requested (signal)");
                        let _ = tx.send(true);
                    }
                });
            }
            Err(e) => return fail("StartFailed", &format!("cannot catch signals: {e}")),
        }
    }
    if let Err(e) = std::fs::create_dir_all(&cli.run_dir) {
        return fail("StartFailed", &format!("{}: {e}", cli.run_dir.display()));
    }
    let supervisor = Supervisor {
        socket: cli.run_dir.join("kiln-vmm.sock"),
        spec,
        vmm_bin: cli.vmm,
        state,
        commands: cmd_rx,
        stop: stop_rx,
    };
    finish(supervisor.run().await)
}
