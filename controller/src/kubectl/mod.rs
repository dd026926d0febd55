//! The `kubectl kiln` plugin: virtctl's verbs for Kiln VMs (start, stop, restart, pause,
//! unpause, console) and a status summary. It talks only to the API server, with the user's
//! own kubeconfig and permissions.

pub mod console;
pub mod create;
pub mod expose;
pub mod lifecycle;

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Pod;
use kiln_crd::cdi::DataSource;
use kiln_crd::conditions::{self, kind};
use kiln_crd::kiln::{Kiln, DEFAULT_BOOT_IMAGE_NAMESPACE, KILN_NAME};
use kiln_crd::{VirtualMachine, VirtualMachineInstance, VmiPhase};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use crate::vmi::PAUSED_ANNOTATION;
use lifecycle::Change;

#[derive(Parser)]
#[command(
    name = "kubectl-kiln",
    version,
    about = "Kiln VMs from kubectl: create, start, stop, restart, pause, unpause, console, expose, status"
)]
pub struct Cli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Vm,
    Vmi,
}

#[derive(Subcommand)]
pub enum CreateKind {
    /// A VM whose root disk is its own clone of a DataSource (a golden image).
    Vm {
        name: String,
        /// The DataSource to clone: NAME (this namespace, else the common boot images') or
        /// NAMESPACE/NAME.
        #[arg(long)]
        datasource: String,
        /// The clone's size (default: the source's).
        #[arg(long)]
        size: Option<String>,
        /// The clone's StorageClass (default: the cluster's). The source's class makes it a CSI
        /// clone where that class supports one (kiln-csi-hostpath in the dev cluster).
        #[arg(long)]
        storage_class: Option<String>,
        #[arg(long, default_value = "512Mi")]
        memory: String,
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// A file of cloud-init user-data for a NoCloud seed.
        #[arg(long)]
        cloud_init_user_data: Option<std::path::PathBuf>,
        /// Create it (default: print it as YAML, as virtctl create does).
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Subcommand)]
pub enum Command {
    /// Make an object from a few flags (virtctl create): `create vm NAME --datasource DS`.
    Create {
        #[command(subcommand)]
        what: CreateKind,
    },
    /// Start a VM (as its run strategy allows).
    Start { name: String },
    /// Stop a VM: the guest is asked to shut down within its grace period.
    Stop { name: String },
    /// Restart a VM: stop its current run and start a new one.
    Restart { name: String },
    /// Pause a VM's or VMI's vCPUs.
    Pause { kind: Kind, name: String },
    /// Resume a paused VM or VMI.
    Unpause { kind: Kind, name: String },
    /// Attach to a VMI's serial console (Ctrl-] detaches).
    Console { name: String },
    /// Where a VM (or VMI) is: status, phase, node, pod, boot time, restarts.
    Status { name: String },
    /// Create a Service for a VM's (or VMI's) launcher pods, as virtctl expose does.
    Expose {
        kind: Kind,
        name: String,
        /// The Service's port.
        #[arg(long)]
        port: u16,
        /// The guest's port (default: --port).
        #[arg(long)]
        target_port: Option<u16>,
        /// The Service's type.
        #[arg(long = "type", value_enum, default_value = "ClusterIP")]
        service_type: expose::ServiceType,
        /// The Service's name (default: the VM's).
        #[arg(long = "name")]
        service_name: Option<String>,
        #[arg(long, value_enum, default_value = "TCP")]
        protocol: expose::Protocol,
    },
}

/// A bare DataSource NAME is this namespace's; when it has none of that name but the common
/// boot images (the Kiln object's namespace, kiln-os-images by default) do, theirs: so
/// `--datasource debian` is the one-click create. NAMESPACE/NAME is taken as it is.
async fn resolve_datasource(client: &Client, ns: &str, datasource: &str) -> String {
    if datasource.contains('/') {
        return datasource.to_string();
    }
    let here: Api<DataSource> = Api::namespaced(client.clone(), ns);
    if !matches!(here.get_opt(datasource).await, Ok(None)) {
        return datasource.to_string();
    }
    let images_ns = match Api::<Kiln>::all(client.clone()).get_opt(KILN_NAME).await {
        Ok(Some(k)) => k.spec.boot_image_namespace().to_string(),
        _ => DEFAULT_BOOT_IMAGE_NAMESPACE.to_string(),
    };
    let common: Api<DataSource> = Api::namespaced(client.clone(), &images_ns);
    match common.get_opt(datasource).await {
        Ok(Some(_)) if images_ns != ns => {
            eprintln!("DataSource {datasource}: the common boot image in {images_ns}");
            format!("{images_ns}/{datasource}")
        }
        _ => datasource.to_string(),
    }
}

pub async fn run(cli: Cli) -> Result<(), String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("kubeconfig: {e}"))?;
    let ns = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    let get_vm = |name: String| {
        let vms = vms.clone();
        async move {
            vms.get_opt(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("virtualmachine.kiln.dev \"{name}\" not found"))
        }
    };
    let get_vmi = |name: String| {
        let vmis = vmis.clone();
        async move { vmis.get_opt(&name).await.map_err(|e| e.to_string()) }
    };
    match cli.command {
        Command::Create {
            what:
                CreateKind::Vm {
                    ref name,
                    ref datasource,
                    ref size,
                    ref storage_class,
                    ref memory,
                    cpus,
                    ref cloud_init_user_data,
                    apply,
                },
        } => {
            let user_data = match cloud_init_user_data {
                Some(p) => {
                    Some(std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?)
                }
                None => None,
            };
            let datasource = &resolve_datasource(&client, &ns, datasource).await;
            let vm = create::vm(&create::CreateVm {
                name,
                datasource,
                size: size.as_deref(),
                storage_class: storage_class.as_deref(),
                memory,
                cpus,
                user_data: user_data.as_deref(),
            })?;
            if !apply {
                print!("{}", serde_yaml::to_string(&vm).map_err(|e| e.to_string())?);
                return Ok(());
            }
            vms.create(&Default::default(), &vm)
                .await
                .map_err(|e| format!("creating VM {name}: {e}"))?;
            println!("VM {name} created; its disk is a clone of DataSource {datasource}");
            Ok(())
        }
        Command::Start { ref name }
        | Command::Stop { ref name }
        | Command::Restart { ref name } => {
            let vm = get_vm(name.clone()).await?;
            let vmi = get_vmi(name.clone()).await?;
            let vmi = lifecycle::own_vmi(&vm, vmi.as_ref());
            let (verb, change) = match &cli.command {
                Command::Start { .. } => ("start", lifecycle::start(&vm, vmi)),
                Command::Stop { .. } => ("stop", lifecycle::stop(&vm, vmi)),
                _ => ("restart", lifecycle::restart(&vm, vmi)),
            };
            let change = change.map_err(|e| format!("{verb} {name}: {e}"))?;
            let result = match change {
                Change::Spec(p) => {
                    vms.patch(name, &PatchParams::default(), &json_patch(p)?)
                        .await
                }
                Change::Status(p) => {
                    vms.patch_status(name, &PatchParams::default(), &json_patch(p)?)
                        .await
                }
            };
            result.map_err(|e| format!("{verb} {name}: {e} (changed meanwhile? try again)"))?;
            println!("VM {name} was scheduled to {verb}");
            Ok(())
        }
        Command::Pause { ref name, .. } | Command::Unpause { ref name, .. } => {
            let pause = matches!(cli.command, Command::Pause { .. });
            let name = name.clone();
            let vmi = get_vmi(name.clone())
                .await?
                .ok_or_else(|| format!("VMI {name} does not exist (is the VM running?)"))?;
            let st = vmi.status.clone().unwrap_or_default();
            if st.phase != VmiPhase::Running {
                return Err(format!("VMI {name} is not running"));
            }
            let paused = conditions::is_true(&st.conditions, kind::PAUSED);
            if pause && paused {
                return Err(format!("VMI {name} is already paused"));
            }
            if !pause && !paused {
                return Err(format!("VMI {name} is not paused"));
            }
            let value = if pause {
                json!("true")
            } else {
                serde_json::Value::Null
            };
            let patch = json!({"metadata": {"annotations": {PAUSED_ANNOTATION: value}}});
            vmis.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "VMI {name} was scheduled to {}",
                if pause { "pause" } else { "unpause" }
            );
            Ok(())
        }
        Command::Console { name } => {
            let vmi = get_vmi(name.clone())
                .await?
                .ok_or_else(|| format!("VMI {name} does not exist (is the VM running?)"))?;
            let st = vmi.status.clone().unwrap_or_default();
            let Some(pod) = st
                .launcher_pod
                .filter(|_| matches!(st.phase, VmiPhase::Running | VmiPhase::Scheduled))
            else {
                return Err(format!("VMI {name} is not running (phase {:?})", st.phase));
            };
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            console::attach(&pods, &pod, &name).await
        }
        Command::Expose {
            kind,
            ref name,
            port,
            target_port,
            service_type,
            ref service_name,
            protocol,
        } => {
            match kind {
                Kind::Vm => drop(get_vm(name.clone()).await?),
                Kind::Vmi => {
                    get_vmi(name.clone())
                        .await?
                        .ok_or_else(|| format!("VMI {name} does not exist"))?;
                }
            }
            let svc = expose::service(
                &expose::Expose {
                    kind,
                    name,
                    service: service_name.as_deref(),
                    port,
                    target_port,
                    service_type,
                    protocol,
                },
                &ns,
            );
            let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client, &ns);
            let created = services
                .create(&Default::default(), &svc)
                .await
                .map_err(|e| format!("creating the Service: {e}"))?;
            println!(
                "Service {} successfully exposed for {} {name}",
                created.metadata.name.unwrap_or_default(),
                match kind {
                    Kind::Vm => "vm",
                    Kind::Vmi => "vmi",
                }
            );
            Ok(())
        }
        Command::Status { name } => {
            let vm = vms.get_opt(&name).await.map_err(|e| e.to_string())?;
            let vmi = get_vmi(name.clone()).await?;
            if vm.is_none() && vmi.is_none() {
                return Err(format!("no VM or VMI {name} in {ns}"));
            }
            print!("{}", status_text(vm.as_ref(), vmi.as_ref()));
            Ok(())
        }
    }
}

fn json_patch(ops: serde_json::Value) -> Result<Patch<()>, String> {
    serde_json::from_value(ops)
        .map(Patch::Json)
        .map_err(|e| e.to_string())
}

/// The summary `kubectl kiln status` prints.
pub fn status_text(vm: Option<&VirtualMachine>, vmi: Option<&VirtualMachineInstance>) -> String {
    let mut out = String::new();
    if let Some(vm) = vm {
        let st = vm.status.clone().unwrap_or_default();
        out.push_str(&format!(
            "VM {}: {} (runStrategy {}, ready {}, restarts {})\n",
            vm.metadata.name.as_deref().unwrap_or(""),
            st.printable_status.as_deref().unwrap_or("-"),
            vm.spec.strategy().as_str(),
            st.ready,
            st.restart_count,
        ));
        if let Some(f) = &st.start_failure {
            out.push_str(&format!(
                "  {} failed run(s) in a row; next start after {}\n",
                f.consecutive_fail_count,
                f.retry_after_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(v) = vmi {
        let st = v.status.clone().unwrap_or_default();
        out.push_str(&format!(
            "VMI {}: {:?} on {} in pod {}\n",
            v.metadata.name.as_deref().unwrap_or(""),
            st.phase,
            st.node_name.as_deref().unwrap_or("-"),
            st.launcher_pod.as_deref().unwrap_or("-"),
        ));
        out.push_str(&format!(
            "  guest boot time {}, guest reboots {}{}\n",
            st.guest_boot_duration.as_deref().unwrap_or("-"),
            st.restart_count,
            st.reason.map(|r| format!(", {r}")).unwrap_or_default()
        ));
        for c in &st.conditions {
            out.push_str(&format!(
                "  {}={}{}\n",
                c.type_,
                c.status,
                c.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}
