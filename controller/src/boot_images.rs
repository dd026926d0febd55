//! The Kiln object's reconciler: with `enableCommonBootImageImport` on it keeps one
//! DataImportCron (and so one DataSource) per common boot image in the boot-image namespace,
//! readable by every authenticated user; off, or with the Kiln object gone, they are removed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kiln_crd::cdi::{kind, DataImportCron};
use kiln_crd::conditions::{self, Condition};
use kiln_crd::kiln::{
    BootImageStatus, CommonBootImage, Kiln, KilnStatus, COMMON_BOOT_IMAGES, KILN_NAME,
};
use kiln_crd::names::FIELD_MANAGER;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::info;

use crate::context::{create_unless_exists, managed_by_kiln, Context, Error, Result};

/// On each DataImportCron the Kiln object manages: the boot image it imports.
pub const BOOT_IMAGE_LABEL: &str = "kiln.dev/common-boot-image";
/// The condition on the Kiln object: every managed DataImportCron is up to date.
pub const BOOT_IMAGES_READY: &str = "CommonBootImagesReady";
/// The ClusterRole (resources/deploy/user-roles.yaml) that lets users clone the boot images.
pub const OS_IMAGES_VIEW_ROLE: &str = "os-images.kiln.dev:view";
/// Status is refreshed this often even without a change (the crons wake it otherwise).
const RESYNC: Duration = Duration::from_secs(600);

pub async fn reconcile(kiln: Arc<Kiln>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.reconcile("kiln");
    let r = reconcile_kiln(&kiln, &ctx).await;
    ctx.settle(kiln.as_ref(), &timer, r).await
}

pub fn error_policy(kiln: Arc<Kiln>, _e: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(kiln.as_ref()))
}

/// The cron's name for boot image `name` (HCO's `<name>-image-cron`).
pub fn cron_name(name: &str) -> String {
    format!("{name}-image-cron")
}

/// A schedule every 12 hours at a minute derived from the Kiln object's uid, so that clusters
/// do not all pull at the same minute (HCO randomises it the same way).
pub fn schedule_for(uid: &str) -> String {
    let minute = uid
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        % 60;
    format!("{minute} */12 * * *")
}

/// Where `image` is pulled from: `docker://<registry>/<repository>`.
pub fn image_url(registry: &str, image: &CommonBootImage) -> String {
    format!("docker://{registry}/{}", image.repository)
}

/// The DataImportCron for `image`, as the body of a server-side apply. Its imports and
/// DataSource go with it (retentionPolicy None), so switching the gate off removes them.
pub fn cron_body(kiln: &Kiln, image: &CommonBootImage, registry: &str, ns: &str) -> Value {
    let owner = kiln.controller_owner_ref(&());
    json!({
        "apiVersion": "cdi.kiln.dev/v1beta1",
        "kind": "DataImportCron",
        "metadata": {
            "name": cron_name(image.name),
            "namespace": ns,
            "labels": {
                BOOT_IMAGE_LABEL: image.name,
                "app.kubernetes.io/managed-by": "kiln-controller",
            },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "schedule": schedule_for(kiln.metadata.uid.as_deref().unwrap_or_default()),
            "managedDataSource": image.name,
            "importsToKeep": 3,
            "garbageCollect": "Outdated",
            "retentionPolicy": "None",
            "template": {"spec": {
                "source": {"registry": {"url": image_url(registry, image)}},
                "storage": {"resources": {"requests": {"storage": image.size}}},
            }},
        },
    })
}

async fn reconcile_kiln(kiln: &Kiln, ctx: &Context) -> Result<Action> {
    let crons: Api<DataImportCron> = Api::all(ctx.client.clone());
    let managed = crons
        .list(&ListParams::default().labels(BOOT_IMAGE_LABEL))
        .await?
        .items;
    let on = kiln.metadata.deletion_timestamp.is_none()
        && kiln.spec.feature_gates.enable_common_boot_image_import;
    let ns = kiln.spec.boot_image_namespace().to_string();
    // Crons no longer wanted: all of them with the gate off, else those in another namespace.
    for dic in &managed {
        if on && dic.namespace().as_deref() == Some(ns.as_str()) {
            continue;
        }
        let api: Api<DataImportCron> =
            Api::namespaced(ctx.client.clone(), &dic.namespace().unwrap_or_default());
        match api
            .delete(&dic.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {
                info!(
                    "Kiln: removed DataImportCron {}/{}",
                    dic.namespace().unwrap_or_default(),
                    dic.name_any()
                );
                ctx.event(
                    kiln,
                    false,
                    "DataImportCronRemoved",
                    format!(
                        "removed DataImportCron {}/{}",
                        dic.namespace().unwrap_or_default(),
                        dic.name_any()
                    ),
                )
                .await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if kiln.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut status = KilnStatus::default();
    let ready;
    if on {
        ensure_namespace(ctx, &ns).await?;
        ensure_view_binding(ctx, &ns).await?;
        let api: Api<DataImportCron> = Api::namespaced(ctx.client.clone(), &ns);
        let mut behind = Vec::new();
        for image in COMMON_BOOT_IMAGES {
            let body = cron_body(kiln, image, &ctx.images.image_registry, &ns);
            let dic = api
                .patch(
                    &cron_name(image.name),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await?;
            let up = dic
                .status
                .as_ref()
                .is_some_and(|s| conditions::is_true(&s.conditions, kind::UP_TO_DATE));
            if !up {
                behind.push(image.name);
            }
            status.data_import_cron_templates.push(BootImageStatus {
                name: image.name.into(),
                namespace: ns.clone(),
                url: image_url(&ctx.images.image_registry, image),
            });
        }
        ready = if behind.is_empty() {
            Condition::new(
                BOOT_IMAGES_READY,
                true,
                "UpToDate",
                format!("the common boot images are imported in {ns}"),
            )
        } else {
            Condition::new(
                BOOT_IMAGES_READY,
                false,
                "Importing",
                format!(
                    "not imported yet in {ns}: {} (see their DataImportCrons)",
                    behind.join(", ")
                ),
            )
        };
    } else {
        ready = Condition::new(
            BOOT_IMAGES_READY,
            false,
            "Disabled",
            "spec.featureGates.enableCommonBootImageImport is false",
        );
    }
    let old = kiln.status.clone().unwrap_or_default();
    status.conditions = conditions::merge(&old.conditions, vec![ready], &Time(Timestamp::now()));
    if kiln.status.as_ref() != Some(&status) {
        let body = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "Kiln", "status": status});
        Api::<Kiln>::all(ctx.client.clone())
            .patch_status(
                &kiln.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// Creates the Kiln object with its defaults (the gates on) when there is none; an existing one
/// is left as it is. The spec is empty, so the API server's defaults fill it and a user's
/// `kubectl apply` of their own Kiln object owns every field it sets.
pub async fn ensure_kiln(client: &kube::Client) -> Result<()> {
    let api: Api<Kiln> = Api::all(client.clone());
    if api.get_opt(KILN_NAME).await?.is_some() {
        return Ok(());
    }
    // A DynamicObject, so that the body is exactly `spec: {}` (the typed spec would write out
    // every default, owned by the controller).
    let raw: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::erase::<Kiln>(&()));
    let default: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "Kiln",
        "metadata": {"name": KILN_NAME},
        "spec": {},
    }))?;
    if create_unless_exists(&raw, &default).await? {
        info!("created the Kiln object {KILN_NAME} with its defaults");
    }
    Ok(())
}

async fn ensure_namespace(ctx: &Context, ns: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    if api.get_opt(ns).await?.is_some() {
        return Ok(());
    }
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.into()),
            labels: Some(managed_by_kiln()),
            ..Default::default()
        },
        ..Default::default()
    };
    create_unless_exists(&api, &namespace).await?;
    Ok(())
}

/// Every authenticated user may see the boot images and clone them into their namespaces
/// (HCO's `os-images.kubevirt.io:view` binding).
async fn ensure_view_binding(ctx: &Context, ns: &str) -> Result<()> {
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(OS_IMAGES_VIEW_ROLE.into()),
            namespace: Some(ns.into()),
            labels: Some(managed_by_kiln()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: OS_IMAGES_VIEW_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: "system:authenticated".into(),
            namespace: None,
        }]),
    };
    let mut body = serde_json::to_value(&binding)?;
    body["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
    body["kind"] = json!("RoleBinding");
    Api::<RoleBinding>::namespaced(ctx.client.clone(), ns)
        .patch(
            OS_IMAGES_VIEW_ROLE,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kiln() -> Kiln {
        let mut k = Kiln::new("kiln", Default::default());
        k.metadata.uid = Some("0d7c4b9e-1111-2222-3333-444455556666".into());
        k
    }

    #[test]
    fn crons_follow_the_registry_are_owned_and_go_with_their_imports() {
        let body = cron_body(
            &kiln(),
            &COMMON_BOOT_IMAGES[1],
            "reg.local:5000",
            "kiln-os-images",
        );
        assert_eq!(body["metadata"]["name"], "debian-image-cron");
        assert_eq!(body["metadata"]["namespace"], "kiln-os-images");
        assert_eq!(body["metadata"]["labels"][BOOT_IMAGE_LABEL], "debian");
        assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Kiln");
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(body["spec"]["managedDataSource"], "debian");
        assert_eq!(body["spec"]["retentionPolicy"], "None");
        assert_eq!(
            body["spec"]["template"]["spec"]["source"]["registry"]["url"],
            "docker://reg.local:5000/containerdisks/debian:12"
        );
        // What the API server would store reads back as a valid DataImportCron spec.
        let spec: kiln_crd::cdi::DataImportCronSpec =
            serde_json::from_value(body["spec"].clone()).unwrap();
        assert_eq!(spec.imports_to_keep, 3);
        assert!(spec.collects_outdated());
    }

    #[test]
    fn schedules_run_twice_a_day_at_a_minute_of_their_own() {
        let a = schedule_for("0d7c4b9e-1111-2222-3333-444455556666");
        let b = schedule_for("a41f0000-1111-2222-3333-444455556666");
        assert!(a.ends_with(" */12 * * *"), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, schedule_for("0d7c4b9e-1111-2222-3333-444455556666"));
        for s in [a, b] {
            let minute: u32 = s.split(' ').next().unwrap().parse().unwrap();
            assert!(minute < 60);
            assert!(
                crate::dataimportcron::plan::parse_schedule(&s).is_ok(),
                "{s}"
            );
        }
    }
}
