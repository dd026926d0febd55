//! Golden images (issue 13) with real parts: versions of Kiln's guest pushed to the cluster's
//! registry as containerDisks, a DataImportCron importing each new digest on its schedule, the
//! DataSource moving only to complete imports, VMs cloning it through dataVolumeTemplates (a new
//! VM boots the new version, a running one keeps its disk), keep-N collection, a registry outage,
//! a tampered blob, and http imports (qcow2 converted, a checksum mismatch, progress).

use std::process::Command;
use std::time::Duration;

use kiln_tests::guest_dir;
use kiln_tests::kube::{ok, Cluster};

use super::{golden_transfers, BOOT};

pub(super) const NS: &str = "golden";
/// The registry as the host pushes to it, and as pods pull from it.
const PUSH: &str = "127.0.0.1:5000";
const PULL: &str = "kiln-registry.kube-system.svc:5000";
/// An import of the 64 MiB guest, or a failure, to show in the status.
pub(super) const IMPORT: Duration = Duration::from_secs(240);

/// Pushes Kiln's guest root filesystem carrying `/etc/kiln-image-version` = `version` to
/// `repo:latest` as a containerDisk (one uncompressed layer, the disk under /disk/).
fn push_guest(c: &Cluster, repo: &str, version: &str) {
    let work = c
        .dir
        .join(format!("image-{}-{version}", repo.replace('/', "-")));
    std::fs::create_dir_all(work.join("disk")).unwrap();
    let disk = work.join("disk/rootfs.img");
    std::fs::copy(guest_dir().join("rootfs.ext4"), &disk).unwrap();
    std::fs::write(work.join("version"), format!("{version}\n")).unwrap();
    let run = |cmd: &mut Command, what: &str| ok(&cmd.output().unwrap(), what);
    run(
        Command::new("debugfs").args([
            "-w",
            "-R",
            &format!(
                "write {} /etc/kiln-image-version",
                work.join("version").display()
            ),
            &disk.display().to_string(),
        ]),
        "debugfs write",
    );
    let layer = work.join("layer.tar");
    run(
        Command::new("tar").args([
            "--sort=name",
            "-C",
            &work.display().to_string(),
            "-cf",
            &layer.display().to_string(),
            "disk",
        ]),
        "tar",
    );
    let archive = work.join("image.tar");
    run(
        Command::new(kiln_tests::workspace_root().join("resources/cluster/oci-image.sh")).args([
            &layer.display().to_string(),
            &format!("kiln.local/{repo}:latest"),
            "[\"/bin/false\"]",
            &archive.display().to_string(),
        ]),
        "oci-image.sh",
    );
    run(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}", archive.display()),
            &format!("docker://{PUSH}/{repo}:latest"),
        ]),
        "skopeo copy",
    );
}

fn cron(keep: u32) -> String {
    format!(
        r#"apiVersion: cdi.kiln.dev/v1beta1
kind: DataImportCron
metadata: {{name: golden-guest}}
spec:
  schedule: "* * * * *"
  importsToKeep: {keep}
  managedDataSource: golden-guest
  template:
    spec:
      source: {{registry: {{url: "docker://{PULL}/golden/kiln-guest:latest"}}}}
      storage: {{resources: {{requests: {{storage: 128Mi}}}}}}
"#
    )
}

/// A VM whose root disk is its own clone of DataSource golden-guest; it prints the version.
fn vm(name: &str) -> String {
    format!(
        r#"apiVersion: kiln.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Always
  dataVolumeTemplates:
  - metadata: {{name: {name}-root}}
    spec:
      sourceRef: {{kind: DataSource, name: golden-guest}}
      storage: {{resources: {{requests: {{storage: 256Mi}}}}}}
  template:
    spec:
      domain:
        memory: {{guest: 128Mi}}
        resources: {{requests: {{cpu: 100m}}}}
        devices:
          disks:
          - {{name: root, disk: {{bus: virtio}}}}
          - {{name: cloudinit, disk: {{bus: virtio}}}}
      terminationGracePeriodSeconds: 5
      volumes:
      - {{name: root, dataVolume: {{name: {name}-root}}}}
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #!/bin/sh
            echo "KILN_IMAGE_VERSION=$(cat /etc/kiln-image-version) on $(cat /proc/partitions | grep -c vd) disks"
"#
    )
}

fn source_claim(c: &Cluster) -> String {
    c.field(NS, "datasource/golden-guest", "{.spec.source.pvc.name}")
}

fn imports(c: &Cluster) -> Vec<String> {
    let mut v: Vec<String> = c
        .kubectl(&[
            "get",
            "dv",
            "-n",
            NS,
            "-l",
            "cdi.kiln.dev/dataImportCron=golden-guest",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Waits for the DataSource to be Ready on a claim other than `old`; the claim.
fn wait_source_moves(c: &Cluster, old: &str, limit: Duration) -> String {
    c.wait(
        &format!("DataSource golden-guest moves off {old:?}"),
        limit,
        || {
            let claim = source_claim(c);
            let ready = c.field(
                NS,
                "datasource/golden-guest",
                "{.status.conditions[?(@.type=='Ready')].status}",
            );
            (!claim.is_empty() && claim != old && ready == "True").then_some(claim)
        },
    )
}

fn trigger(c: &Cluster) {
    c.kubectl(&[
        "annotate",
        "-n",
        NS,
        "dataimportcron/golden-guest",
        "cdi.kiln.dev/trigger-import=now",
        "--overwrite",
    ]);
}

fn wait_boot_version(c: &Cluster, vm: &str, version: &str) {
    let _slot = c.boots.take(1);
    c.wait_field(
        NS,
        &format!("vm/{vm}"),
        "{.status.printableStatus}",
        "Running",
        BOOT,
    );
    c.wait_console(NS, vm, &format!("KILN_IMAGE_VERSION={version} on"), BOOT);
}

pub(super) fn dv_phase(c: &Cluster, dv: &str) -> String {
    c.field(NS, &format!("dv/{dv}"), "{.status.phase}")
}

pub(super) fn ready_message(c: &Cluster, dv: &str) -> String {
    c.field(
        NS,
        &format!("dv/{dv}"),
        "{.status.conditions[?(@.type=='Ready')].message}",
    )
}

/// CDI manifests with what Kiln lacks are refused at admission, naming it.
fn refused(c: &Cluster) {
    let dv = |source: &str, extra: &str| {
        format!(
            "apiVersion: cdi.kiln.dev/v1beta1\nkind: DataVolume\nmetadata: {{name: refused}}\nspec:\n  source: {source}\n{extra}"
        )
    };
    let storage = "  storage: {resources: {requests: {storage: 1Gi}}}\n";
    let cases = [
        (dv("{s3: {url: 'https://bucket/x'}}", storage), "Kiln does not support s3 sources"),
        (
            dv("{blank: {}}", &format!("{storage}  contentType: archive\n")),
            "Kiln supports only contentType kubevirt",
        ),
        (
            dv("{registry: {url: 'docker://r/x', pullMethod: node}}", storage),
            "Kiln supports only registry.pullMethod pod",
        ),
        (dv("{blank: {}}", ""), "give the DataVolume exactly one of storage and pvc"),
        (
            dv("{http: {url: 'http://x/y', checksum: 'md5:00'}}", storage),
            "http.checksum is sha256:",
        ),
        (
            "apiVersion: cdi.kiln.dev/v1beta1\nkind: DataImportCron\nmetadata: {name: refused}\nspec:\n  schedule: '0 * * * *'\n  managedDataSource: x\n  template: {spec: {source: {http: {url: 'http://x/y'}}, storage: {}}}\n".to_string(),
            "Kiln's DataImportCrons import from a registry",
        ),
        (
            "apiVersion: cdi.kiln.dev/v1beta1\nkind: DataSource\nmetadata: {name: refused}\nspec: {source: {snapshot: {name: s}}}\n".to_string(),
            "Kiln does not support snapshot DataSources yet",
        ),
    ];
    for (yaml, message) in cases {
        let out = c.run(
            &["apply", "--dry-run=server", "-n", NS, "-f", "-"],
            Some(&yaml),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{yaml}");
        assert!(err.contains(message), "want {message:?} in:\n{err}");
    }
}

/// resources/examples/golden-images: all admitted; the cron imports Kiln's guest and the VM's
/// dataVolumeTemplate clones it (the VM kept Halted: its boot proves nothing the VMs below do not).
fn examples(c: &Cluster) {
    let ns = c.namespace("golden-example");
    let dir = kiln_tests::workspace_root().join("resources/examples/golden-images");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "dv-http-qcow2.yaml",
            "kiln-guest-cron.yaml",
            "vm-from-datasource.yaml"
        ]
    );
    for f in &files {
        ok(
            &c.run(
                &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
                Some(&read(f)),
            ),
            f,
        );
    }
    c.apply(&ns, &read("kiln-guest-cron.yaml"));
    c.apply(
        &ns,
        &read("vm-from-datasource.yaml").replace("runStrategy: Always", "runStrategy: Halted"),
    );
    c.wait_field(
        &ns,
        "datasource/kiln-guest",
        "{.status.conditions[?(@.type=='Ready')].status}",
        "True",
        IMPORT,
    );
    c.wait_field(&ns, "dv/web-root", "{.status.phase}", "Succeeded", IMPORT);
    let owner = c.field(&ns, "dv/web-root", "{.metadata.ownerReferences[0].kind}");
    assert_eq!(owner, "VirtualMachine");
    c.wait_field(
        &ns,
        "vm/web",
        "{.status.printableStatus}",
        "Stopped",
        IMPORT,
    );
    c.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

pub fn golden_images(c: &Cluster) {
    c.namespace(NS);
    refused(c);
    examples(c);
    push_guest(c, "golden/kiln-guest", "1");
    c.apply(NS, &cron(2));
    // The first run imports at once; the DataSource appears once that import succeeded.
    let first = wait_source_moves(c, "", IMPORT);
    assert_eq!(imports(c), std::slice::from_ref(&first));
    assert_eq!(dv_phase(c, &first), "Succeeded");
    let digest1 = c.field(NS, &format!("dv/{first}"), "{.status.sourceDigest}");
    assert!(digest1.starts_with("sha256:"), "{digest1}");
    assert!(
        first.starts_with(&format!("golden-guest-{}", &digest1[7..19])),
        "{first}"
    );
    c.wait_field(
        NS,
        "dataimportcron/golden-guest",
        "{.status.conditions[?(@.type=='UpToDate')].status}",
        "True",
        IMPORT,
    );

    c.apply(NS, &vm("gold-a"));
    wait_boot_version(c, "gold-a", "1");
    let a_run = c.field(NS, "vmi/gold-a", "{.metadata.uid}");

    // A new digest under the same tag: the every-minute schedule imports it, then the
    // DataSource moves; VMs created afterwards boot it.
    push_guest(c, "golden/kiln-guest", "2");
    let second = wait_source_moves(c, &first, Duration::from_secs(150) + IMPORT);
    assert_eq!(
        c.field(
            NS,
            "dataimportcron/golden-guest",
            "{.status.lastImportedPVC.name}"
        ),
        second
    );
    // gold-b the one-click way: kubectl kiln create vm --datasource.
    let user_data = c.dir.join("gold-b-user-data");
    std::fs::write(
        &user_data,
        "#!/bin/sh\necho \"KILN_IMAGE_VERSION=$(cat /etc/kiln-image-version) on $(grep -c vd /proc/partitions) disks\"\n",
    )
    .unwrap();
    let printed = ok(
        &c.kiln(
            NS,
            &["create", "vm", "gold-b", "--datasource", "golden-guest"],
            None,
        ),
        "kubectl kiln create vm (print)",
    );
    assert!(
        printed.contains("sourceRef:") && printed.contains("name: golden-guest"),
        "{printed}"
    );
    ok(
        &c.kiln(
            NS,
            &[
                "create",
                "vm",
                "gold-b",
                "--datasource",
                "golden-guest",
                "--size",
                "256Mi",
                "--memory",
                "128Mi",
                "--cloud-init-user-data",
                &user_data.display().to_string(),
                "--apply",
            ],
            None,
        ),
        "kubectl kiln create vm --apply",
    );
    wait_boot_version(c, "gold-b", "2");
    // gold-a runs on as it was: the same run, its own clone of version 1.
    assert_eq!(c.field(NS, "vmi/gold-a", "{.metadata.uid}"), a_run);
    assert_eq!(c.field(NS, "vmi/gold-a", "{.status.phase}"), "Running");
    assert!(c.console(NS, "gold-a").contains("KILN_IMAGE_VERSION=1 on"));

    // A third version, imported now (the trigger annotation): importsToKeep 2 removes the first.
    push_guest(c, "golden/kiln-guest", "3");
    trigger(c);
    let third = wait_source_moves(c, &second, IMPORT);
    c.wait("the oldest import collected", IMPORT, || {
        (imports(c) == {
            let mut v = vec![second.clone(), third.clone()];
            v.sort();
            v
        })
        .then_some(())
    });
    assert_eq!(
        dv_phase(c, "gold-a-root"),
        "Succeeded",
        "a VM's clone stays"
    );
    assert_eq!(c.field(NS, "vmi/gold-a", "{.metadata.uid}"), a_run);

    // An unchanged digest imports nothing.
    let last_run = c.field(
        NS,
        "dataimportcron/golden-guest",
        "{.status.lastExecutionTimestamp}",
    );
    trigger(c);
    c.wait("the run with an unchanged digest", IMPORT, || {
        let t = c.field(
            NS,
            "dataimportcron/golden-guest",
            "{.status.lastExecutionTimestamp}",
        );
        let annotated = c.field(
            NS,
            "dataimportcron/golden-guest",
            "{.metadata.annotations.cdi\\.kiln\\.dev/trigger-import}",
        );
        (t != last_run && annotated.is_empty()).then_some(())
    });
    assert_eq!(imports(c).len(), 2);
    assert_eq!(source_claim(c), third);

    registry_outage(c, &third);
    tampered_blob(c);
    golden_transfers::http_imports(c);
    golden_transfers::clone_across_namespaces(c, "golden-guest");
    golden_transfers::csi_clones(c, &source_claim(c));
}

/// The registry stops: the cron reports it and backs off, an import retries with back-off, the
/// DataSource stays usable; once the registry is back both recover.
fn registry_outage(c: &Cluster, current: &str) {
    ok(&c.script(&["registry", "stop"]), "registry stop");
    trigger(c);
    c.wait_field(
        NS,
        "dataimportcron/golden-guest",
        "{.status.conditions[?(@.type=='Progressing')].reason}",
        "RegistryUnavailable",
        IMPORT,
    );
    c.apply(
        NS,
        &format!(
            r#"apiVersion: cdi.kiln.dev/v1beta1
kind: DataVolume
metadata: {{name: during-outage}}
spec:
  source: {{registry: {{url: "docker://{PULL}/golden/kiln-guest:latest"}}}}
  storage: {{resources: {{requests: {{storage: 128Mi}}}}}}
"#
        ),
    );
    c.wait("the import during the outage retried", IMPORT, || {
        let restarts = c.field(NS, "dv/during-outage", "{.status.restartCount}");
        (restarts.parse::<u32>().unwrap_or(0) >= 1).then_some(())
    });
    // Between attempts the DataVolume stays ImportInProgress and says why the last one failed.
    c.wait(
        "the Running condition names the unreachable registry",
        IMPORT,
        || {
            let why = c.field(
                NS,
                "dv/during-outage",
                "{.status.conditions[?(@.type=='Running')].message}",
            );
            (why.contains(PULL) && dv_phase(c, "during-outage") == "ImportInProgress").then_some(())
        },
    );
    assert_eq!(
        source_claim(c),
        current,
        "the DataSource stays on the last import"
    );
    assert_eq!(
        c.field(
            NS,
            "datasource/golden-guest",
            "{.status.conditions[?(@.type=='Ready')].status}"
        ),
        "True"
    );
    ok(&c.script(&["registry", "start"]), "registry start");
    c.wait_field(
        NS,
        "dv/during-outage",
        "{.status.phase}",
        "Succeeded",
        IMPORT,
    );
    trigger(c);
    // UpToDate may have stayed True through the outage (the last import is still current), so
    // the recovery shows in Progressing: the run after the restart resolved the tag again.
    c.wait_field(
        NS,
        "dataimportcron/golden-guest",
        "{.status.conditions[?(@.type=='Progressing')].reason}",
        "NoImport",
        IMPORT,
    );
    assert_eq!(
        c.field(
            NS,
            "dataimportcron/golden-guest",
            "{.status.conditions[?(@.type=='UpToDate')].status}"
        ),
        "True"
    );
}

/// A blob whose bytes no longer match its digest: the import fails, for good.
fn tampered_blob(c: &Cluster) {
    push_guest(c, "golden/tampered", "t");
    let manifest = ok(
        &Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &format!("http://{PUSH}/v2/golden/tampered/manifests/latest"),
            ])
            .output()
            .unwrap(),
        "the tampered image's manifest",
    );
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let layer = m["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let blob = c.dir.join(format!(
        "registry/docker/registry/v2/blobs/sha256/{}/{layer}/data",
        &layer[..2]
    ));
    let mut bytes = std::fs::read(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    c.apply(
        NS,
        &format!(
            r#"apiVersion: cdi.kiln.dev/v1beta1
kind: DataVolume
metadata: {{name: tampered}}
spec:
  source: {{registry: {{url: "docker://{PULL}/golden/tampered:latest"}}}}
  storage: {{resources: {{requests: {{storage: 128Mi}}}}}}
"#
        ),
    );
    c.wait_field(NS, "dv/tampered", "{.status.phase}", "Failed", IMPORT);
    let why = ready_message(c, "tampered");
    assert!(why.to_lowercase().contains("digest"), "{why}");
    assert_eq!(c.field(NS, "dv/tampered", "{.status.restartCount}"), "0");
}
