//! kiln-controller: turns VirtualMachines and VirtualMachineInstances into launcher pods (see
//! the kiln_controller crate); `kiln-controller crds` prints the CustomResourceDefinitions.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_controller::run::{run, Options};
use kiln_controller::vmi::pod::Images;

#[derive(Parser)]
#[command(version, about = "Kiln's Kubernetes controller")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The controller's namespace (its lease and token key): $POD_NAMESPACE, else kiln-system.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kiln-system")]
    namespace: String,
    /// The launcher image of VM pods.
    #[arg(long, env = "KILN_LAUNCHER_IMAGE", default_value = concat!("kiln.local/kiln-launcher:", env!("CARGO_PKG_VERSION")))]
    launcher_image: String,
    /// Its pull policy.
    #[arg(
        long,
        env = "KILN_LAUNCHER_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    launcher_pull_policy: String,
    /// The importer image of DataVolumes.
    #[arg(long, env = "KILN_IMPORTER_IMAGE", default_value = concat!("kiln.local/kiln-importer:", env!("CARGO_PKG_VERSION")))]
    importer_image: String,
    #[arg(
        long,
        env = "KILN_IMPORTER_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    importer_pull_policy: String,
    /// Registries reached over plain http (host:port), comma-separated, as CDI's
    /// insecureRegistries: DataVolume imports and DataImportCron digests.
    #[arg(long, env = "KILN_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// The registry the common boot images are imported from (host:port; the Kiln object's
    /// enableCommonBootImageImport).
    #[arg(
        long,
        env = "KILN_IMAGE_REGISTRY",
        default_value = "kiln-registry.kube-system.svc:5000"
    )]
    image_registry: String,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Act at once instead of electing a leader (a single replica, or out of the cluster).
    #[arg(long)]
    no_leader_election: bool,
    /// Reconciles in flight per controller.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (resources/deploy/crds.yaml).
    Crds,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crds) = cli.command {
        return match kiln_crd::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kiln-controller: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // The registry client's TLS (reqwest without a built-in provider): ring, as kube's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiln-controller: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = Options {
        namespace: cli.namespace,
        images: Images {
            launcher: cli.launcher_image,
            launcher_pull_policy: cli.launcher_pull_policy,
            importer: cli.importer_image,
            importer_pull_policy: cli.importer_pull_policy,
            insecure_registries: cli.insecure_registries,
            image_registry: cli.image_registry,
        },
        metrics_addr: cli.metrics_addr,
        leader_election: !cli.no_leader_election,
        concurrency: cli.concurrency,
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
