//! What every reconcile shares: the client, the caches, the event recorder, the metrics, the
//! launcher channel, the token key and the images to run; and the controller's error type.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kiln_crd::VirtualMachineInstance;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use thiserror::Error;
use tracing::warn;

use crate::launcher_watch::LauncherWatch;
use crate::metrics::{Metrics, ReconcileTimer};
use crate::token::TokenKey;
use crate::vmi::pod::{Images, LAUNCHER_SERVICE_ACCOUNT};

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("serialising: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The wait before retrying after `failures` failed reconciles in a row: 1 s, 2 s, 4 s, ...
/// at most [`MAX_ERROR_BACKOFF`].
fn backoff_after(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(MAX_ERROR_BACKOFF)
}

/// How logs and the back-off name an object: `VirtualMachine ns/name`.
fn backoff_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    let m = obj.meta();
    format!(
        "{} {}/{}",
        K::kind(&()),
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// Adds `finalizer` to `obj`; false if it was there already (the reconcile goes on).
pub async fn add_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = obj.meta().finalizers.as_deref().unwrap_or_default();
    if list.iter().any(|f| f == finalizer) {
        return Ok(false);
    }
    let patch = if list.is_empty() {
        serde_json::json!([{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}])
    } else {
        serde_json::json!([{"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}])
    };
    let name = obj.meta().name.as_deref().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(patch)?),
    )
    .await?;
    Ok(true)
}

/// Removes `finalizer` from `obj`, if it is there: a JSON patch that first tests the entry, so
/// a concurrent change to the list fails the patch instead of removing another entry. An
/// object already gone (404) or changed (422, retried by the next reconcile) is not an error.
pub async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(i) = obj
        .meta()
        .finalizers
        .iter()
        .flatten()
        .position(|f| f == finalizer)
    else {
        return Ok(());
    };
    let patch = serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": finalizer},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]);
    let name = obj.meta().name.as_deref().unwrap_or_default();
    match api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(patch)?),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates `obj`; one that exists already (409) is left as it is. True when this call made it.
pub async fn create_unless_exists<K>(api: &Api<K>, obj: &K) -> Result<bool>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletes object `name`; one already gone (404) is no error.
pub async fn delete_unless_gone<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The label on what the controller makes for the cluster (service accounts, namespaces, ...).
pub fn managed_by_kiln() -> std::collections::BTreeMap<String, String> {
    [(
        "app.kubernetes.io/managed-by".to_string(),
        "kiln-controller".to_string(),
    )]
    .into()
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub launchers: LauncherWatch,
    pub tokens: TokenKey,
    pub images: Images,
    /// Launcher pods, as watched (label kiln.dev=kiln-launcher).
    pub pods: Store<Pod>,
    /// VMIs, as the VMI controller watches them.
    pub vmis: Store<VirtualMachineInstance>,
    /// Namespaces where the launcher ServiceAccount is known to exist.
    accounts: Mutex<HashSet<String>>,
    /// Consecutive failed reconciles per object, for the error back-off.
    failures: Mutex<HashMap<String, u32>>,
}

/// The longest wait between retries of a failing reconcile.
pub const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(300);

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        launchers: LauncherWatch,
        tokens: TokenKey,
        images: Images,
        pods: Store<Pod>,
        vmis: Store<VirtualMachineInstance>,
    ) -> Context {
        Context {
            client,
            recorder,
            metrics,
            launchers,
            tokens,
            images,
            pods,
            vmis,
            accounts: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// After a failed reconcile of `obj`: when to retry (1 s, 2 s, 4 s, ... at most 5 minutes).
    pub fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let n = self.failures.lock().map_or(1, |mut f| {
            let n = f.entry(backoff_key(obj)).or_insert(0);
            *n = n.saturating_add(1);
            *n
        });
        backoff_after(n)
    }

    /// The end of a reconcile of `obj`: a success starts its back-off over; a failure is
    /// counted in the metrics and logged, and the first of a run of failures is a Warning event
    /// on the object (`kubectl describe` shows it), unless it is a write conflict (retried at
    /// once, nothing for the user to do).
    pub async fn settle<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        timer: &ReconcileTimer<'_>,
        r: Result<Action>,
    ) -> Result<Action> {
        match &r {
            Ok(_) => {
                if let Ok(mut f) = self.failures.lock() {
                    f.remove(&backoff_key(obj));
                }
            }
            Err(e) => {
                timer.failed();
                warn!("{}: {e}", backoff_key(obj));
                let first = self
                    .failures
                    .lock()
                    .is_ok_and(|f| !f.contains_key(&backoff_key(obj)));
                let conflict = matches!(e, Error::Kube(kube::Error::Api(a)) if a.code == 409);
                if first && !conflict {
                    self.event(
                        obj,
                        true,
                        "ReconcileError",
                        format!("{e} (retried with back-off)"),
                    )
                    .await;
                }
            }
        }
        r
    }

    /// Records an event on `obj` (failures to record are logged, not fatal).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!("recording event {reason}: {e}");
        }
    }

    /// Makes sure the namespace has the launcher ServiceAccount (no permissions; its token is
    /// never mounted). Once per namespace per controller run.
    pub async fn ensure_launcher_account(&self, namespace: &str) -> Result<()> {
        if self.accounts.lock().is_ok_and(|a| a.contains(namespace)) {
            return Ok(());
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some(LAUNCHER_SERVICE_ACCOUNT.into()),
                labels: Some(managed_by_kiln()),
                ..Default::default()
            },
            automount_service_account_token: Some(false),
            ..Default::default()
        };
        create_unless_exists(&api, &sa).await?;
        if let Ok(mut a) = self.accounts.lock() {
            a.insert(namespace.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_backoff_doubles_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|n| backoff_after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff_after(0).as_secs(), 1);
        assert_eq!(backoff_after(u32::MAX), MAX_ERROR_BACKOFF);
    }

    #[test]
    fn objects_are_named_by_kind_namespace_and_name() {
        let mut vmi = VirtualMachineInstance::new("web", Default::default());
        vmi.metadata.namespace = Some("prod".into());
        assert_eq!(backoff_key(&vmi), "VirtualMachineInstance prod/web");
    }
}
