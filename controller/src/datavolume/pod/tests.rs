//! The importer pod as rendered for each kind of job.

use super::*;

pub(crate) fn images() -> Images {
    Images {
        launcher: "kiln.local/kiln-launcher:0.1.0".into(),
        launcher_pull_policy: "IfNotPresent".into(),
        importer: "kiln.local/kiln-importer:0.1.0".into(),
        importer_pull_policy: "IfNotPresent".into(),
        insecure_registries: vec!["kiln-registry.kube-system.svc:5000".into()],
        image_registry: "reg.local:5000".into(),
    }
}

fn dv() -> DataVolume {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "cdi.kiln.dev/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": "web-root", "namespace": "prod", "uid": "u-1"},
        "spec": {"source": {"blank": {}}, "storage": {}},
    }))
    .unwrap()
}

fn args(p: &Pod) -> Vec<String> {
    p.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
}

fn target(block: bool) -> TargetClaim {
    TargetClaim {
        name: "web-root".into(),
        block,
        capacity: (!block).then_some(1_000_000),
    }
}

#[test]
fn a_registry_import_writes_disk_img_as_the_importer_user() {
    let job = Job::Registry {
        url: "docker://kiln-registry.kube-system.svc:5000/containerdisks/kiln-guest:latest".into(),
    };
    let p = render(&dv(), &job, &target(false), &images());
    assert_eq!(p.metadata.name.as_deref(), Some("importer-web-root"));
    assert_eq!(
        args(&p),
        [
            "--source",
            "registry",
            "--url",
            "docker://kiln-registry.kube-system.svc:5000/containerdisks/kiln-guest:latest",
            "--target",
            "/data/disk.img",
            "--capacity",
            "1000000",
            "--owner-uid",
            "u-1",
            "--insecure-registry",
            "kiln-registry.kube-system.svc:5000",
        ]
    );
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let psc = spec.security_context.as_ref().unwrap();
    assert_eq!(
        (psc.run_as_non_root, psc.run_as_user),
        (Some(true), Some(IMPORTER_UID))
    );
    let sc = spec.containers[0].security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("DataVolume", Some(true))
    );
    let labels = p.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[COMPONENT_LABEL], IMPORTER_COMPONENT);
    assert_eq!(labels[DATA_VOLUME_LABEL], "web-root");
}

#[test]
fn a_clone_mounts_its_source_read_only_and_block_claims_are_devices() {
    let job = Job::Clone {
        claim: "golden".into(),
        block: true,
    };
    let p = render(&dv(), &job, &target(true), &images());
    assert_eq!(p.metadata.name.as_deref(), Some("clone-web-root"));
    let a = args(&p);
    assert!(
        a.windows(2)
            .any(|w| w == ["--source-path", "/dev/cdi-source-volume"]),
        "{a:?}"
    );
    assert!(
        a.windows(2)
            .any(|w| w == ["--target", "/dev/cdi-block-volume"]),
        "{a:?}"
    );
    assert!(a.windows(2).any(|w| w == ["--block", "true"]), "{a:?}");
    assert!(!a.iter().any(|x| x == "--capacity"));
    let spec = p.spec.as_ref().unwrap();
    let source = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "source")
        .unwrap();
    let claim = source.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("golden", Some(true))
    );
    let devices = spec.containers[0].volume_devices.as_ref().unwrap();
    assert_eq!(devices.len(), 2);
}

#[test]
fn http_imports_carry_their_checksum_and_names_fit_a_label() {
    let job = Job::Http {
        url: "http://images/x.qcow2".into(),
        checksum: Some(format!("sha256:{}", "0".repeat(64))),
    };
    let p = render(&dv(), &job, &target(false), &images());
    let a = args(&p);
    assert!(a
        .windows(2)
        .any(|w| w[0] == "--checksum" && w[1].starts_with("sha256:")));
    let long = pod_name(&"d".repeat(80), job.is_clone());
    assert!(long.len() <= 63 && long.starts_with("importer-"));
}

#[test]
fn termination_messages_say_how_the_import_ended() {
    let pod = |code: i32, message: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "importer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "message": message,
                    "finishedAt": "2026-12-03T10:00:00Z"}},
            }]},
        }))
        .unwrap()
    };
    let (code, o, at) = finished(&pod(
        2,
        r#"{"message":"checksum mismatch","transient":false}"#,
    ))
    .unwrap();
    assert_eq!(
        (code, o.message.as_str(), o.transient),
        (2, "checksum mismatch", false)
    );
    assert!(at.is_some());
    let (_, o, _) = finished(&pod(
        0,
        r#"{"message":"Import Complete","digest":"sha256:ab","virtualSize":5,"transient":false}"#,
    ))
    .unwrap();
    assert_eq!(o.digest.as_deref(), Some("sha256:ab"));
    // Not the importer's JSON (it crashed): the log tail, and retried.
    let (_, o, _) = finished(&pod(139, "segfault")).unwrap();
    assert_eq!((o.message.as_str(), o.transient), ("segfault", true));
}
