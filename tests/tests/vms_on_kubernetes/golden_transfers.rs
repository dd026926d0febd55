//! Golden images moving between places: http imports (qcow2 converted to raw, a checksum
//! mismatch, progress during a slow transfer), clones of a DataSource into another namespace
//! (refused until RBAC allows it, then streamed by a clone-source pod that ends with the clone),
//! and CSI clones by the dev cluster's hostpath.csi.kiln.dev driver.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use kiln_tests::image_server::{ImageServer, Served};
use kiln_tests::kube::{ok, Cluster};

use super::busybox_with_claim;
use super::golden_images::{ready_message, IMPORT, NS};

/// A pod in `ns` that mounts claim `claim` at /data and runs `script`; its log.
fn inspect_claim(c: &Cluster, ns: &str, name: &str, claim: &str, script: &str) -> String {
    busybox_with_claim(c, ns, name, script, Some(claim))
}

fn sha256_of(path: &Path) -> String {
    let out = ok(
        &Command::new("sha256sum").arg(path).output().unwrap(),
        "sha256sum",
    );
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// http: a qcow2 image arrives raw and extended to the claim; a wrong checksum fails and leaves
/// no disk; a slow transfer shows its progress.
pub(super) fn http_imports(c: &Cluster) {
    let fixtures = kiln_tests::workspace_root().join("controller/importer/tests/data");
    let qcow2 = std::fs::read(fixtures.join("pattern.qcow2")).unwrap();
    let qcow2_sum = sha256_of(&fixtures.join("pattern.qcow2"));
    let big: Vec<u8> = (0..160u32 << 20).map(|i| (i % 251) as u8).collect();
    let files = HashMap::from([
        (
            "pattern.qcow2".to_string(),
            Served {
                bytes: qcow2,
                rate: None,
            },
        ),
        (
            "slow.img".to_string(),
            Served {
                bytes: big,
                rate: Some(8 << 20),
            },
        ),
    ]);
    let server = ImageServer::start(files);
    let node_ip = c.kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].status.addresses[?(@.type=='InternalIP')].address}",
    ]);
    let base = format!("http://{}:{}", node_ip.trim(), server.port);
    let dv = |name: &str, file: &str, checksum: &str, size: &str| {
        format!(
            r#"apiVersion: cdi.kiln.dev/v1beta1
kind: DataVolume
metadata: {{name: {name}}}
spec:
  source: {{http: {{url: "{base}/{file}"{checksum}}}}}
  storage: {{resources: {{requests: {{storage: {size}}}}}}}
"#
        )
    };
    c.apply(
        NS,
        &dv(
            "from-qcow2",
            "pattern.qcow2",
            &format!(", checksum: \"sha256:{qcow2_sum}\""),
            "64Mi",
        ),
    );
    c.apply(
        NS,
        &dv(
            "bad-checksum",
            "pattern.qcow2",
            &format!(", checksum: \"sha256:{}\"", "0".repeat(64)),
            "64Mi",
        ),
    );
    c.apply(NS, &dv("slow", "slow.img", "", "256Mi"));
    // Progress while the 160 MiB arrive at 8 MiB/s.
    let seen = c.wait("a progress between 0% and 100%", IMPORT, || {
        let p = c.field(NS, "dv/slow", "{.status.progress}");
        let v: f64 = p.trim_end_matches('%').parse().unwrap_or(0.0);
        (v > 0.0 && v < 100.0).then_some(p)
    });
    eprintln!("golden-images: dv/slow progress {seen}");
    c.wait_field(NS, "dv/from-qcow2", "{.status.phase}", "Succeeded", IMPORT);
    // The raw disk: the pattern's 4 MiB (sha256 of tests/data's raw image), then zeros up to
    // the claim less the filesystem overhead.
    let log = inspect_claim(
        c,
        NS,
        "inspect-qcow2",
        "from-qcow2",
        "stat -c %s /data/disk.img; head -c 4194304 /data/disk.img | sha256sum",
    );
    // 64 MiB less 5.5%, rounded down to whole MiB.
    let capacity = 60u64 << 20;
    assert!(log.contains(&capacity.to_string()), "{log}");
    assert!(
        log.contains("0a859c323abf86945f8a3c6deeadb18562b15caef0ef59a7ff8f7c66f10206e2"),
        "{log}"
    );
    c.wait_field(NS, "dv/bad-checksum", "{.status.phase}", "Failed", IMPORT);
    let why = ready_message(c, "bad-checksum");
    assert!(why.contains("checksum mismatch"), "{why}");
    let left = inspect_claim(c, NS, "inspect-bad", "bad-checksum", "ls -a /data");
    assert!(
        !left.contains("disk.img"),
        "a failed import leaves no disk: {left}"
    );
    c.wait_field(NS, "dv/slow", "{.status.phase}", "Succeeded", IMPORT);
    assert_eq!(c.field(NS, "dv/slow", "{.status.progress}"), "100.0%");
    drop(server);
}

/// A DataVolume in another namespace cloning DataSource `source` of [`NS`]: Pending with the
/// RBAC it needs, then, once a RoleBinding grants its namespace the os-images role, a copy whose
/// bytes match the source's; the clone-source pod and the finalizer go when it is done.
pub(super) fn clone_across_namespaces(c: &Cluster, source: &str) {
    let other = c.namespace("golden-elsewhere");
    let dv = format!(
        r#"apiVersion: cdi.kiln.dev/v1beta1
kind: DataVolume
metadata: {{name: from-golden}}
spec:
  sourceRef: {{kind: DataSource, name: {source}, namespace: {NS}}}
  storage: {{}}
"#
    );
    c.apply(&other, &dv);
    let ready = "{.status.conditions[?(@.type=='Ready')].reason}";
    c.wait_field(&other, "dv/from-golden", ready, "CloneUnauthorized", IMPORT);
    let why = c.field(
        &other,
        "dv/from-golden",
        "{.status.conditions[?(@.type=='Ready')].message}",
    );
    assert!(
        why.contains("datavolumes/source") && why.contains("os-images.kiln.dev:view"),
        "{why}"
    );
    assert_eq!(
        c.field(&other, "dv/from-golden", "{.status.phase}"),
        "Pending"
    );
    c.apply(
        NS,
        &format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: clone-to-{other}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: os-images.kiln.dev:view}}
subjects: [{{kind: Group, apiGroup: rbac.authorization.k8s.io, name: "system:serviceaccounts:{other}"}}]
"#
        ),
    );
    c.wait_field(
        &other,
        "dv/from-golden",
        "{.status.phase}",
        "Succeeded",
        IMPORT * 2,
    );
    let events = c.kubectl(&[
        "get",
        "events",
        "-n",
        &other,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("CloneSucceeded"), "{events}");
    // The clone-source pod ends with the clone, and the finalizer goes with it.
    c.wait("the clone-source pod gone", IMPORT, || {
        let left = c.kubectl(&[
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/component=kiln-clone-source",
            "-o",
            "name",
        ]);
        left.trim().is_empty().then_some(())
    });
    assert_eq!(
        c.field(&other, "dv/from-golden", "{.metadata.finalizers}"),
        ""
    );
    // The same bytes: the source disk, then zeros up to the clone's capacity.
    let claim = c.field(
        NS,
        &format!("datasource/{source}"),
        "{.spec.source.pvc.name}",
    );
    let script = "stat -c %s /data/disk.img; sha256sum < /data/disk.img";
    let source_log = inspect_claim(c, NS, "inspect-clone-source", &claim, script);
    let size: u64 = source_log
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("the source's size: {source_log}"));
    let source_sum = source_log.lines().nth(1).unwrap_or_default().to_string();
    let clone_log = inspect_claim(
        c,
        &other,
        "inspect-clone",
        "from-golden",
        &format!("head -c {size} /data/disk.img | sha256sum; tail -c +{} /data/disk.img | tr -d '\\0' | wc -c", size + 1),
    );
    let mut lines = clone_log.lines();
    assert_eq!(lines.next().unwrap_or_default(), source_sum, "{clone_log}");
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "zeros after the image: {clone_log}"
    );
    c.kubectl(&["delete", "-n", &other, "dv/from-golden", "--timeout=60s"]);
}

/// A DataVolume of StorageClass `class` cloning claim `src_ns`/`src`, in `ns`.
fn clone_dv(name: &str, src_ns: &str, src: &str, class: &str, mode: &str) -> String {
    format!(
        r#"apiVersion: cdi.kiln.dev/v1beta1
kind: DataVolume
metadata: {{name: {name}}}
spec:
  source: {{pvc: {{namespace: {src_ns}, name: {src}}}}}
  storage: {{storageClassName: {class}, volumeMode: {mode}, resources: {{requests: {{storage: 256Mi}}}}}}
"#
    )
}

/// Where the hostpath.csi.kiln.dev driver keeps claim `ns`/`claim`'s disk on this host.
fn csi_disk(c: &Cluster, ns: &str, claim: &str, block: bool) -> std::path::PathBuf {
    let pv = c.field(ns, &format!("pvc/{claim}"), "{.spec.volumeName}");
    assert_eq!(
        c.field("", &format!("pv/{pv}"), "{.spec.csi.driver}"),
        CSI_DRIVER,
        "{ns}/{claim}'s volume {pv}"
    );
    let dir = c.dir.join("csi-volumes").join(&pv);
    if block {
        dir.join("disk.img")
    } else {
        dir.join("data/disk.img")
    }
}

/// The events of `ns` that name `dv`, as "reason: message" lines.
fn events_of(c: &Cluster, ns: &str, dv: &str) -> String {
    c.kubectl(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("involvedObject.name={dv}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])
}

const CSI_CLASS: &str = "kiln-csi-hostpath";
const CSI_DRIVER: &str = "hostpath.csi.kiln.dev";

/// CSI clones: the golden claim (local-path) is copied host-assisted into the CSI driver's
/// class in both volume modes; from there a clone in the same namespace and one into another
/// namespace (its volume handed over from a temporary claim) are the driver's own copies, with
/// no clone pod, the same bytes, and their volumes deleted with them. Runs after
/// [`clone_across_namespaces`], whose RoleBinding lets `golden-elsewhere` clone from NS.
pub(super) fn csi_clones(c: &Cluster, golden_claim: &str) {
    let other = "golden-elsewhere";
    for (name, mode) in [("csi-golden", "Filesystem"), ("csi-golden-block", "Block")] {
        c.apply(NS, &clone_dv(name, NS, golden_claim, CSI_CLASS, mode));
    }
    for name in ["csi-golden", "csi-golden-block"] {
        c.wait_field(
            NS,
            &format!("dv/{name}"),
            "{.status.phase}",
            "Succeeded",
            IMPORT * 2,
        );
        let events = events_of(c, NS, name);
        assert!(
            events.contains("CloneSucceeded") && !events.contains("(CSI clone)"),
            "across classes the copy is host-assisted:\n{events}"
        );
    }
    let golden_fs = csi_disk(c, NS, "csi-golden", false);
    let golden_block = csi_disk(c, NS, "csi-golden-block", true);
    let size = std::fs::metadata(&golden_fs).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "{golden_fs:?}");

    c.apply(
        NS,
        &clone_dv("csi-same", NS, "csi-golden", CSI_CLASS, "Filesystem"),
    );
    c.apply(
        other,
        &clone_dv(
            "csi-other-block",
            NS,
            "csi-golden-block",
            CSI_CLASS,
            "Block",
        ),
    );
    for (ns, name) in [(NS, "csi-same"), (other, "csi-other-block")] {
        c.wait_field(
            ns,
            &format!("dv/{name}"),
            "{.status.phase}",
            "Succeeded",
            IMPORT,
        );
        let events = events_of(c, ns, name);
        assert!(
            events.contains("CSICloneInProgress") && events.contains("(CSI clone)"),
            "{ns}/{name}:\n{events}"
        );
        assert!(
            !events.contains("CloneScheduled"),
            "a CSI clone runs no clone pod: {ns}/{name}:\n{events}"
        );
    }
    assert_eq!(
        c.field(NS, "pvc/csi-same", "{.spec.dataSource.name}"),
        "csi-golden"
    );
    assert_eq!(
        sha256_of(&csi_disk(c, NS, "csi-same", false)),
        sha256_of(&golden_fs)
    );
    // The block clone is the source's image grown to 256Mi with zeros.
    let block = csi_disk(c, other, "csi-other-block", true);
    assert_eq!(
        std::fs::metadata(&block).map(|m| m.len()).ok(),
        Some(256 << 20)
    );
    assert_eq!(sha256_of(&block), sha256_of(&golden_block));
    // The handover left nothing behind: no temporary claim, the volume's own reclaim policy,
    // no finalizer on the DataVolume.
    let temporary = c.kubectl(&[
        "get",
        "pvc",
        "-n",
        NS,
        "-l",
        "cdi.kiln.dev/csi-clone-for",
        "-o",
        "name",
    ]);
    assert!(temporary.trim().is_empty(), "{temporary}");
    let pv = c.field(other, "pvc/csi-other-block", "{.spec.volumeName}");
    assert_eq!(
        c.field(
            "",
            &format!("pv/{pv}"),
            "{.spec.persistentVolumeReclaimPolicy}"
        ),
        "Delete"
    );
    assert_eq!(
        c.field(other, "dv/csi-other-block", "{.metadata.finalizers}"),
        ""
    );
    // Deleting the DataVolume deletes its claim, then the driver deletes the volume.
    c.kubectl(&["delete", "-n", other, "dv/csi-other-block", "--timeout=60s"]);
    let folder = c.dir.join("csi-volumes").join(&pv);
    c.wait("the handed-over volume deleted", IMPORT, || {
        (!folder.exists()).then_some(())
    });
    for name in ["csi-same", "csi-golden", "csi-golden-block"] {
        c.kubectl(&["delete", "-n", NS, &format!("dv/{name}"), "--timeout=60s"]);
    }
}
