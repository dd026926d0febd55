//! Running the controller: the client (its API requests counted), the metrics endpoint, leader
//! election (one active replica; a replica that loses the lease exits and comes back as a
//! standby), the caches, and the VM and VMI controllers side by side.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kiln_crd::cdi::DataVolume;
use kiln_crd::names::{LAUNCHER_LABEL, LAUNCHER_LABEL_VALUE};
use kiln_crd::{VirtualMachine, VirtualMachineInstance};
use kube::api::Api;
use kube::client::ClientBuilder;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use thiserror::Error;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{error, info, warn};

use crate::context::Context;
use crate::launcher_watch::LauncherWatch;
use crate::metrics::{self, Metrics};
use crate::token::TokenKey;
use crate::vmi::pod::Images;
use crate::{vm, vmi};

#[derive(Debug, Error)]
pub enum RunError {
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
    #[error("this replica lost the lease; exiting so that it comes back as a standby")]
    LostLease,
}

pub struct Options {
    /// The controller's own namespace (its token key and lease live there).
    pub namespace: String,
    pub images: Images,
    pub metrics_addr: SocketAddr,
    /// Elect a leader (off: this process acts at once, for a single replica).
    pub leader_election: bool,
    /// Concurrent reconciles per controller.
    pub concurrency: u16,
}

pub async fn run(opts: Options) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let config = kube::Config::infer().await?;
    let counting = {
        let m = metrics.clone();
        tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
            m.count_request(req.method().as_str(), req.uri().path(), req.uri().query());
            req
        })
    };
    let client: Client = ClientBuilder::try_from(config)?
        .with_layer(&counting)
        .build();
    {
        let (m, addr) = (metrics.clone(), opts.metrics_addr);
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m).await {
                error!("metrics endpoint on {addr}: {e}");
            }
        });
    }

    // Ready (the process is up) while standing by; while syncing its caches as leader, not.
    metrics.ready.store(true, Ordering::Release);
    let mut lease = None;
    if opts.leader_election {
        let mut builder =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "kiln-controller")
                .with_namespace(&opts.namespace)
                .with_duration(15)
                .with_grace(5);
        // The lease names the leading pod (kubectl get lease -n kiln-system kiln-controller).
        if let Ok(pod) = std::env::var("POD_NAME") {
            builder = builder.with_identity(pod);
        }
        let manager = builder.build().await?;
        let (mut leading, task) = manager.watch().await;
        info!(
            "waiting to lead (lease kiln-controller in {})",
            opts.namespace
        );
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return Err(RunError::LostLease);
            }
        }
        info!("leading");
        lease = Some((leading, task));
    }
    metrics.ready.store(false, Ordering::Release);
    metrics.leader.set(1);

    let tokens = TokenKey::load_or_create(client.clone(), &opts.namespace).await?;
    let launcher_pods =
        watcher::Config::default().labels(&format!("{LAUNCHER_LABEL}={LAUNCHER_LABEL_VALUE}"));
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    // One watch of launcher pods fills the cache reconciles read and wakes their VMIs.
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), launcher_pods),
    )
    .default_backoff()
    .touched_objects();

    let (launchers, changed) = LauncherWatch::new();
    let vmi_controller = Controller::new(
        Api::<VirtualMachineInstance>::all(client.clone()),
        watcher::Config::default(),
    );
    let vmi_store = vmi_controller.store();
    *metrics.vmi_store.lock().unwrap_or_else(|p| p.into_inner()) = Some(vmi_store.clone());
    let reporter = Reporter {
        controller: "kiln-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        metrics.clone(),
        launchers,
        tokens,
        opts.images,
        pod_store,
        vmi_store.clone(),
    ));
    let claims_store = vmi_store.clone();
    let dv_store = vmi_store.clone();
    let cfg = ControllerConfig::default().concurrency(opts.concurrency);
    let cfg_golden = cfg.clone();
    let vmis = vmi_controller
        .owns_stream(pod_events)
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            move |pvc| vmis_using(&claims_store, &pvc.metadata),
        )
        .watches(
            Api::<DataVolume>::all(client.clone()),
            watcher::Config::default(),
            move |dv| vmis_using(&dv_store, &dv.metadata),
        )
        .reconcile_on(UnboundedReceiverStream::new(changed))
        .with_config(cfg.clone())
        .run(vmi::reconcile, vmi::error_policy, ctx.clone())
        .for_each(|r| {
            if let Err(e) = r {
                warn!("VMI controller: {e}");
            }
            futures::future::ready(())
        });
    let vms = Controller::new(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<VirtualMachineInstance>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<DataVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(cfg)
    .run(vm::reconcile, vm::error_policy, ctx.clone())
    .for_each(|r| {
        if let Err(e) = r {
            warn!("VM controller: {e}");
        }
        futures::future::ready(())
    });
    let golden = crate::golden::run(client.clone(), ctx.clone(), cfg_golden);
    let ready = {
        let (m, store) = (metrics.clone(), vmi_store);
        async move {
            if store.wait_until_ready().await.is_ok() {
                m.ready.store(true, Ordering::Release);
                info!("caches filled; reconciling");
            }
            std::future::pending::<()>().await
        }
    };
    let lost = async move {
        match lease {
            Some((mut leading, _task)) => {
                while *leading.borrow_and_update() {
                    if leading.changed().await.is_err() {
                        break;
                    }
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = vmis => Ok(()),
        _ = vms => Ok(()),
        _ = golden => Ok(()),
        _ = ready => Ok(()),
        _ = lost => {
            metrics.leader.set(0);
            // Give the other replica the lease quickly rather than waiting for it to expire.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(RunError::LostLease)
        }
        _ = stop_signal() => {
            info!("stopping");
            Ok(())
        }
    }
}

/// The VMIs that use the claim named by `meta` (a claim, or the DataVolume filling it): a claim
/// that appears or binds, or a DataVolume that succeeds, wakes the VMIs waiting for it.
fn vmis_using(
    store: &reflector::Store<VirtualMachineInstance>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<ObjectRef<VirtualMachineInstance>> {
    let ns = meta.namespace.as_deref().unwrap_or_default();
    let name = meta.name.as_deref().unwrap_or_default();
    store
        .state()
        .into_iter()
        .filter(|v| v.metadata.namespace.as_deref() == Some(ns) && vmi::uses_claim(v, name))
        .map(|v| ObjectRef::from_obj(&*v))
        .collect()
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
