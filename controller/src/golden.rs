//! The golden-image controllers side by side: DataVolumes (owning their claims and importer
//! pods, woken by the DataSources and DataVolumes they wait for and by the clone-source pods
//! serving them from other namespaces), DataSources (woken by their claims and DataVolumes),
//! DataImportCrons (woken by their imports) and the Kiln object (woken by the crons it owns).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kiln_crd::cdi::{DataImportCron, DataSource, DataVolume};
use kiln_crd::kiln::Kiln;
use kube::api::Api;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::warn;

use crate::context::Context;
use crate::datavolume::pod::{COMPONENT_LABEL, DATA_VOLUME_LABEL, IMPORTER_COMPONENT};
use crate::datavolume::{clone_source, csi_clone};
use crate::{boot_images, dataimportcron, datasource, datavolume};

/// DataVolumes in `ns` waiting on DataSource `name` (sourceRef).
fn waiting_on_source(dvs: &Store<DataVolume>, ns: &str, name: &str) -> Vec<ObjectRef<DataVolume>> {
    dvs.state()
        .into_iter()
        .filter(|d| {
            d.spec.source_ref.as_ref().is_some_and(|r| {
                r.name == name
                    && r.namespace.as_deref().or(d.metadata.namespace.as_deref()) == Some(ns)
            }) && !d.succeeded()
        })
        .map(|d| ObjectRef::from_obj(&*d))
        .collect()
}

/// DataVolumes cloning claim `ns`/`name` (source.pvc) that are not done.
fn cloning(dvs: &Store<DataVolume>, ns: &str, name: &str) -> Vec<ObjectRef<DataVolume>> {
    dvs.state()
        .into_iter()
        .filter(|d| {
            d.spec
                .source
                .as_ref()
                .and_then(|s| s.pvc.as_ref())
                .is_some_and(|p| {
                    p.name == name
                        && p.namespace.as_deref().or(d.metadata.namespace.as_deref()) == Some(ns)
                })
                && !d.succeeded()
        })
        .map(|d| ObjectRef::from_obj(&*d))
        .collect()
}

/// The DataVolume a clone-source pod (in another namespace) serves.
/// The DataVolume whose CSI clone across namespaces made this claim or volume: its uid is the
/// label's value (the temporary claim and the handed-over PV are in no namespace of its own).
fn handed_over_for(
    dvs: &Store<DataVolume>,
    labels: &BTreeMap<String, String>,
) -> Option<ObjectRef<DataVolume>> {
    let uid = labels.get(csi_clone::CLONE_FOR_LABEL)?;
    dvs.state()
        .into_iter()
        .find(|d| d.metadata.uid.as_deref() == Some(uid.as_str()))
        .map(|d| ObjectRef::from_obj(&*d))
}

fn clone_target(pod: Pod) -> Option<ObjectRef<DataVolume>> {
    let ns = pod.labels().get(clone_source::TARGET_NAMESPACE_LABEL)?;
    let name = pod.annotations().get(clone_source::TARGET_NAME_LABEL)?;
    Some(ObjectRef::new(name).within(ns))
}

fn sources_at(store: &Store<DataSource>, ns: &str, claim: &str) -> Vec<ObjectRef<DataSource>> {
    store
        .state()
        .into_iter()
        .filter(|d| datasource::points_at(d, ns, claim))
        .map(|d| ObjectRef::from_obj(&*d))
        .collect()
}

pub async fn run(client: Client, ctx: Arc<Context>, cfg: ControllerConfig) {
    // Right after an install the Kiln CRD may not be served yet: a few tries.
    for attempt in 1..=5 {
        match boot_images::ensure_kiln(&client).await {
            Ok(()) => break,
            Err(e) => warn!("the default Kiln object (attempt {attempt} of 5): {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    let importer_pods =
        watcher::Config::default().labels(&format!("{COMPONENT_LABEL}={IMPORTER_COMPONENT}"));
    let dv_claims = watcher::Config::default().labels(DATA_VOLUME_LABEL);
    let dv_controller = Controller::new(
        Api::<DataVolume>::all(client.clone()),
        watcher::Config::default(),
    );
    let dv_store = dv_controller.store();
    let (s1, s2) = (dv_store.clone(), dv_store.clone());
    let (s3, s4) = (dv_store.clone(), dv_store.clone());
    // Only the temporary claims and PVs of CSI clones across namespaces carry the label.
    let handed_over = watcher::Config::default().labels(csi_clone::CLONE_FOR_LABEL);
    let clone_sources = watcher::Config::default().labels(&format!(
        "{COMPONENT_LABEL}={}",
        clone_source::CLONE_SOURCE_COMPONENT
    ));
    let dvs = dv_controller
        .owns(Api::<Pod>::all(client.clone()), importer_pods)
        .watches(Api::<Pod>::all(client.clone()), clone_sources, clone_target)
        .owns(Api::<PersistentVolumeClaim>::all(client.clone()), dv_claims)
        .watches(
            Api::<DataSource>::all(client.clone()),
            watcher::Config::default(),
            move |ds| waiting_on_source(&s1, &ds.namespace().unwrap_or_default(), &ds.name_any()),
        )
        .watches(
            Api::<DataVolume>::all(client.clone()),
            watcher::Config::default(),
            move |dv| cloning(&s2, &dv.namespace().unwrap_or_default(), &dv.name_any()),
        )
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            handed_over.clone(),
            move |pvc| handed_over_for(&s3, pvc.labels()),
        )
        .watches(
            Api::<PersistentVolume>::all(client.clone()),
            handed_over,
            move |pv| handed_over_for(&s4, pv.labels()),
        )
        .with_config(cfg.clone())
        .run(datavolume::reconcile, datavolume::error_policy, ctx.clone())
        .for_each(|r| {
            if let Err(e) = r {
                warn!("DataVolume controller: {e}");
            }
            futures::future::ready(())
        });

    let ds_controller = Controller::new(
        Api::<DataSource>::all(client.clone()),
        watcher::Config::default(),
    );
    let ds_store = ds_controller.store();
    let (d1, d2) = (ds_store.clone(), ds_store);
    let sources = ds_controller
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            move |pvc| sources_at(&d1, &pvc.namespace().unwrap_or_default(), &pvc.name_any()),
        )
        .watches(
            Api::<DataVolume>::all(client.clone()),
            watcher::Config::default(),
            move |dv| sources_at(&d2, &dv.namespace().unwrap_or_default(), &dv.name_any()),
        )
        .with_config(cfg.clone())
        .run(datasource::reconcile, datasource::error_policy, ctx.clone())
        .for_each(|r| {
            if let Err(e) = r {
                warn!("DataSource controller: {e}");
            }
            futures::future::ready(())
        });

    let imports = watcher::Config::default().labels(dataimportcron::CRON_LABEL);
    let crons = Controller::new(
        Api::<DataImportCron>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(Api::<DataVolume>::all(client.clone()), imports, |dv| {
        let ns = dv.namespace().unwrap_or_default();
        dv.labels()
            .get(dataimportcron::CRON_LABEL)
            .map(|cron| ObjectRef::<DataImportCron>::new(cron).within(&ns))
    })
    .with_config(cfg.clone())
    .run(
        dataimportcron::reconcile,
        dataimportcron::error_policy,
        ctx.clone(),
    )
    .for_each(|r| {
        if let Err(e) = r {
            warn!("DataImportCron controller: {e}");
        }
        futures::future::ready(())
    });

    let boot_crons = watcher::Config::default().labels(boot_images::BOOT_IMAGE_LABEL);
    let kilns = Controller::new(Api::<Kiln>::all(client.clone()), watcher::Config::default())
        // Not `owns`: kube-runtime would look the cluster-scoped owner up in the cron's namespace.
        .watches(Api::<DataImportCron>::all(client), boot_crons, |_| {
            Some(ObjectRef::<Kiln>::new(kiln_crd::kiln::KILN_NAME))
        })
        .with_config(cfg)
        .run(boot_images::reconcile, boot_images::error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                warn!("Kiln controller: {e}");
            }
            futures::future::ready(())
        });
    tokio::join!(dvs, sources, crons, kilns);
}
