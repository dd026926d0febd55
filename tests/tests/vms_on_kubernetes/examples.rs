//! Every manifest in resources/examples, applied as a user would; and KubeVirt's own examples
//! (its `examples/` folder, from the kubevirt.io/kubevirt Go module) for what Kiln supports, with
//! only their apiVersion and image names changed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kiln_tests::boot_slots::BootSlot;
use kiln_tests::kube::{ok, Cluster};
use kiln_tests::{guest_dir, scratch_dir, workspace_root};

use super::{BOOT, TINY};

const MARKER: &str = "KILN_GUEST_OK";

fn example(name: &str) -> String {
    let path = workspace_root().join("resources/examples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the guest prints for `command` typed on its console (kubectl kiln console).
fn console_session(c: &Cluster, ns: &str, vmi: &str, command: &str) -> String {
    c.console_session(ns, vmi, command, Duration::from_secs(120))
}

/// The examples that boot a Linux guest as soon as they are applied.
const LINUX_EXAMPLES: [&str; 4] = [
    "vm-cloud-init-secret.yaml",
    "vm-containerdisk.yaml",
    "vm-empty-disk.yaml",
    "vm-kernel-boot.yaml",
];

/// Deletes VM `vm` (its guest stops using the cores), then gives its boot slot back.
fn done_with(c: &Cluster, ns: &str, vm: &str, slot: BootSlot<'_>) {
    c.kubectl(&["delete", "-n", ns, &format!("vm/{vm}"), "--wait=false"]);
    drop(slot);
}

pub fn kiln_examples(c: &Cluster) {
    let ns = c.namespace("examples");
    let mut files: Vec<String> = std::fs::read_dir(workspace_root().join("resources/examples"))
        .expect("resources/examples")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    // Those that boot Linux wait for a boot slot; the rest (kiln-tiny, stopped) go in at once.
    for f in files
        .iter()
        .filter(|f| !LINUX_EXAMPLES.contains(&f.as_str()))
    {
        c.apply(&ns, &example(f));
    }
    let expected = [
        "vm-cloud-init-secret.yaml",
        "vm-containerdisk.yaml",
        "vm-empty-disk.yaml",
        "vm-kernel-boot.yaml",
        "vm-manual.yaml",
        "vm-pvc-root.yaml",
        "vm-scheduling.yaml",
        "vm-tiny.yaml",
        "vmi-standalone.yaml",
    ];
    assert_eq!(files, expected, "every example is checked below");

    // Control-plane examples (kiln-tiny).
    for vm in ["tiny", "placed"] {
        c.wait_field(
            &ns,
            &format!("vm/{vm}"),
            "{.status.printableStatus}",
            "Running",
            TINY,
        );
    }
    c.wait_field(&ns, "vmi/standalone", "{.status.phase}", "Running", TINY);
    assert_eq!(
        c.field(&ns, "vm/manual", "{.status.printableStatus}"),
        "Stopped"
    );
    let pod = c.launcher_pod(&ns, "placed");
    let p = c.get(&ns, &format!("pod/{pod}")).expect("placed's pod");
    assert_eq!(p["metadata"]["labels"]["tier"], "backend");
    assert_eq!(p["metadata"]["labels"]["vm.kiln.dev/name"], "placed");
    assert_eq!(
        p["metadata"]["annotations"]["example.kiln.dev/owner"],
        "team-a"
    );
    assert_eq!(p["spec"]["priorityClassName"], "kiln-example-high");
    assert_eq!(p["spec"]["nodeSelector"]["kubernetes.io/os"], "linux");
    assert!(p["spec"]["tolerations"]
        .to_string()
        .contains("example.kiln.dev/dedicated"));
    assert!(p["spec"]["affinity"]["nodeAffinity"].is_object());
    let selected = c.kubectl(&[
        "get",
        "pods",
        "-n",
        &ns,
        "-l",
        "app=placed,tier=backend",
        "-o",
        "name",
    ]);
    assert_eq!(
        selected.trim(),
        format!("pod/{pod}"),
        "template labels select the VM's pod"
    );

    // Linux guests, one boot slot each, deleted once checked so that later boots run faster.
    let slot = c.boots.take(1);
    c.apply(&ns, &example("vm-containerdisk.yaml"));
    c.wait_console(&ns, "demo", "Kiln guest shell", BOOT);
    let said = console_session(c, &ns, "demo", "cat /proc/cmdline");
    assert!(
        said.contains("root=/dev/vda"),
        "Kiln's kernel boots the containerDisk: {said}"
    );
    assert!(!c
        .field(&ns, "vmi/demo", "{.status.guestBootDuration}")
        .is_empty());
    done_with(c, &ns, "demo", slot);

    let slot = c.boots.take(1);
    c.apply(&ns, &example("vm-cloud-init-secret.yaml"));
    let web = c.wait_console(&ns, "web", "user-data from a Secret ran on web-1", BOOT);
    assert!(
        web.contains("kiln-init: hostname web-1 (NoCloud seed)"),
        "{web}"
    );
    // Its network-config replaced DHCP: the guest applied its address, gateway, MTU and DNS;
    // the probe passes once httpd serves, and the Service then has the pod.
    assert!(
        web.contains(
            "kiln-init: eth0 10.0.2.2 netmask 255.255.255.0 gateway 10.0.2.1 mtu 1400 \
             dns 10.96.0.10 (NoCloud network-config)"
        ) && !web.contains("DHCP on eth0"),
        "{web}"
    );
    c.wait_field(
        &ns,
        "vmi/web",
        "{.status.conditions[?(@.type=='Ready')].status}",
        "True",
        BOOT,
    );
    let pod = c.launcher_pod(&ns, "web");
    let ip = c.field(&ns, &format!("pod/{pod}"), "{.status.podIP}");
    c.wait(&format!("{ns}: web in its Service"), TINY, || {
        (c.field(&ns, "endpoints/web", "{.subsets[*].addresses[*].ip}") == ip).then_some(())
    });
    // A pod's request reaches the guest and its answer comes back through the static gateway.
    let page = super::busybox(
        c,
        &ns,
        "web-client",
        "timeout 60 wget -q -O - http://web/; echo \"wget exit $?\"",
    );
    assert!(
        page.contains("hello from web-1") && page.contains("wget exit 0"),
        "{page}"
    );
    done_with(c, &ns, "web", slot);

    let slot = c.boots.take(1);
    c.apply(&ns, &example("vm-empty-disk.yaml"));
    let scratch = c.wait_console(&ns, "scratch", "Kiln guest shell", BOOT);
    assert!(scratch.contains(MARKER));
    let said = console_session(
        c,
        &ns,
        "scratch",
        "cat /sys/block/vdb/serial /sys/block/vdb/size; ls /dev/hwrng",
    );
    assert!(
        said.contains("scratch-disk") && said.contains("4194304") && said.contains("/dev/hwrng"),
        "{said}"
    );
    done_with(c, &ns, "scratch", slot);

    let slot = c.boots.take(1);
    c.apply(&ns, &example("vm-kernel-boot.yaml"));
    let kb = c.wait_console(&ns, "kernel-boot", "KILN_HOLDING", BOOT);
    assert!(kb.contains(MARKER), "{kb}");
    done_with(c, &ns, "kernel-boot", slot);

    // A root disk on a claim keeps what the guest wrote across a stop and a start.
    c.wait_field(
        &ns,
        "job/persistent-root-import",
        "{.status.succeeded}",
        "1",
        Duration::from_secs(180),
    );
    let slot = c.boots.take(1);
    ok(
        &c.kiln(&ns, &["start", "persistent"], None),
        "kubectl kiln start persistent",
    );
    c.wait_console(
        &ns,
        "persistent",
        "first boot: wrote /root/first-boot",
        BOOT,
    );
    let written = console_session(c, &ns, "persistent", "cat /root/first-boot; sync");
    ok(
        &c.kiln(&ns, &["stop", "persistent"], None),
        "kubectl kiln stop persistent",
    );
    c.wait_field(
        &ns,
        "vm/persistent",
        "{.status.printableStatus}",
        "Stopped",
        BOOT,
    );
    ok(
        &c.kiln(&ns, &["start", "persistent"], None),
        "kubectl kiln start persistent",
    );
    let again = c.wait_console(&ns, "persistent", "Kiln guest shell", BOOT);
    assert!(
        again.contains("user-data already ran for instance"),
        "cloud-init runs user-data once per instance: {again}"
    );
    let read = console_session(c, &ns, "persistent", "cat /root/first-boot");
    let stamp = written
        .lines()
        .find(|l| l.contains("UTC"))
        .unwrap_or_else(|| panic!("no date in {written}"));
    assert!(
        read.contains(stamp.trim()),
        "the file the first boot wrote survives: {stamp:?} in {read}"
    );
    done_with(c, &ns, "persistent", slot);
    c.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// kubevirt.io/kubevirt's examples folder (the Go module proxy serves the repository's files).
fn kubevirt_examples_dir() -> PathBuf {
    let out = Command::new("go")
        .args(["mod", "download", "-json", "kubevirt.io/kubevirt@v1.7.0"])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("running go (KubeVirt's examples come from its Go module)");
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("go mod download -json");
    PathBuf::from(json["Dir"].as_str().expect("the module's folder")).join("examples")
}

/// A KubeVirt manifest with only its apiVersion and its container-disk images changed.
fn kiln_version(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("apiVersion: kubevirt.io/") {
                "apiVersion: kiln.dev/v1alpha1".to_string()
            } else if l.contains("image:") && l.contains("container-disk") {
                let indent = &l[..l.find("image:").unwrap_or(0)];
                format!("{indent}image: kiln.local/containerdisks/kiln-guest:latest")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A claim holding Kiln's guest as disk.img, filled by the import Job of vm-pvc-root.yaml.
fn guest_claim(c: &Cluster, ns: &str, claim: &str) {
    let yaml = example("vm-pvc-root.yaml")
        .split("\n---\n")
        .take(2)
        .collect::<Vec<_>>()
        .join("\n---\n")
        .replace("persistent-root", claim);
    c.apply(ns, &yaml);
}

/// A block-mode PersistentVolume on a loop device holding Kiln's guest, and its claim.
struct BlockClaim {
    device: String,
}

impl BlockClaim {
    fn new(c: &Cluster, ns: &str, claim: &str) -> BlockClaim {
        let image = scratch_dir("block-pvc").join("root.img");
        std::fs::copy(guest_dir().join("rootfs.ext4"), &image).expect("copying the rootfs");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .expect("losetup");
        let device = ok(&out, "losetup --find --show").trim().to_string();
        let node = c.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
        c.apply(
            ns,
            &format!(
                r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: {claim}-pv}}
spec:
  capacity: {{storage: 64Mi}}
  volumeMode: Block
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {{namespace: {ns}, name: {claim}}}
  local: {{path: {device}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{node}]}}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}}}
spec:
  volumeMode: Block
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: {claim}-pv
  resources: {{requests: {{storage: 64Mi}}}}
"#
            ),
        );
        BlockClaim { device }
    }
}

impl Drop for BlockClaim {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

pub fn kubevirt_examples(c: &Cluster) {
    let ns = c.namespace("kubevirt");
    let dir = kubevirt_examples_dir();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("KubeVirt's examples/{name}: {e}"))
    };
    // What the examples expect to exist: their PriorityClass (KubeVirt's own manifest) and claims.
    c.apply(&ns, &read("non-preemtible.yaml"));
    guest_claim(c, &ns, "disk-alpine");
    c.apply(&ns, "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: disk-custom}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}\n");
    let block = BlockClaim::new(c, &ns, "local-block-storage-cirros");
    c.wait_field(
        &ns,
        "job/disk-alpine-import",
        "{.status.succeeded}",
        "1",
        Duration::from_secs(180),
    );

    // The stopped VMs first (no boot), each booting one in its own boot slot after.
    for name in [
        "vm-cirros.yaml",
        "vm-priorityclass.yaml",
        "vm-alpine-multipvc.yaml",
    ] {
        c.apply(&ns, &kiln_version(&read(name)));
    }
    // VMs created stopped (running: false, runStrategy: Halted) are Stopped.
    for vm in ["vm-cirros", "vm-non-preemtible", "vm-alpine-multipvc"] {
        c.wait_field(
            &ns,
            &format!("vm/{vm}"),
            "{.status.printableStatus}",
            "Stopped",
            TINY,
        );
    }
    let slot = c.boots.take(1);
    ok(
        &c.kiln(&ns, &["start", "vm-cirros"], None),
        "kubectl kiln start vm-cirros",
    );
    assert_eq!(
        c.field(&ns, "vm/vm-cirros", "{.spec.runStrategy}"),
        "Always",
        "Halted starts as Always"
    );
    c.wait_console(&ns, "vm-cirros", "printed from cloud-init userdata", BOOT);
    done_with(c, &ns, "vm-cirros", slot);

    // vmi-nocloud boots to its cloud-init marker. The containerDisk and the filesystem claim
    // boot in Kiln's examples and the block claim below, so vmi-ephemeral and vmi-pvc are
    // admitted and their launcher runs with the example's disk, without a boot of their own
    // (CI's time goes to boots that prove something new).
    let container_disk = (
        "{.spec.initContainers[*].image}",
        "kiln.local/containerdisks/",
    );
    let vmi_example = |name: &str, marker: Option<&str>, (field, want): (&str, &str)| {
        let slot = marker.map(|_| c.boots.take(1));
        c.apply(&ns, &kiln_version(&read(&format!("{name}.yaml"))));
        if let Some(marker) = marker {
            c.wait_console(&ns, name, marker, BOOT);
        }
        c.wait_field(
            &ns,
            &format!("vmi/{name}"),
            "{.status.phase}",
            "Running",
            TINY,
        );
        let pod = c.launcher_pod(&ns, name);
        let got = c.field(&ns, &format!("pod/{pod}"), field);
        assert!(
            got.contains(want),
            "{name}'s launcher pod: {field} is {got:?}"
        );
        c.kubectl(&[
            "delete",
            "-n",
            &ns,
            &format!("vmi/{name}"),
            "--timeout=120s",
        ]);
        drop(slot);
    };
    vmi_example(
        "vmi-nocloud",
        Some("printed from cloud-init userdata"),
        container_disk,
    );
    vmi_example("vmi-ephemeral", None, container_disk);
    vmi_example(
        "vmi-pvc",
        None,
        (
            "{.spec.volumes[*].persistentVolumeClaim.claimName}",
            "disk-alpine",
        ),
    );

    // KubeVirt 1.7 dropped its block-claim example: the same VMI on a block-mode claim.
    let slot = c.boots.take(1);
    let block_vmi = kiln_version(&read("vmi-pvc.yaml"))
        .replace("name: vmi-pvc", "name: vmi-block-pvc")
        .replace("vmi-pvc", "vmi-block-pvc")
        .replace(
            "claimName: disk-alpine",
            "claimName: local-block-storage-cirros",
        )
        .replace("pvcdisk", "blockpvcdisk");
    c.apply(&ns, &block_vmi);
    let blk = c.wait_console(&ns, "vmi-block-pvc", MARKER, BOOT);
    assert!(
        blk.contains("/dev/kiln/blockpvcdisk"),
        "the block claim is the disk itself: {blk}"
    );
    c.kubectl(&["delete", "-n", &ns, "vmi/vmi-block-pvc", "--timeout=120s"]);
    drop(slot);

    // KubeVirt's masquerade example: its interface and forwarded port, the pod IP in status.
    let slot = c.boots.take(1);
    c.apply(&ns, &kiln_version(&read("vmi-masquerade.yaml")));
    c.wait_field(
        &ns,
        "vmi/vmi-masquerade",
        "{.status.phase}",
        "Running",
        BOOT,
    );
    let pod = c.launcher_pod(&ns, "vmi-masquerade");
    assert_eq!(
        c.field(&ns, "vmi/vmi-masquerade", "{.status.interfaces[0].name}"),
        "testmasquerade"
    );
    c.wait(
        &format!("{ns}: vmi-masquerade reports its IP"),
        TINY,
        || {
            let ip = c.field(
                &ns,
                "vmi/vmi-masquerade",
                "{.status.interfaces[0].ipAddress}",
            );
            (!ip.is_empty() && ip == c.field(&ns, &format!("pod/{pod}"), "{.status.podIP}"))
                .then_some(())
        },
    );
    assert_eq!(
        c.field(
            &ns,
            &format!("pod/{pod}"),
            "{.spec.containers[0].ports[?(@.name=='http')].containerPort}"
        ),
        "80"
    );
    c.kubectl(&["delete", "-n", &ns, "vmi/vmi-masquerade", "--timeout=120s"]);
    drop(slot);
    c.kubectl(&[
        "delete",
        "-n",
        &ns,
        "pvc/local-block-storage-cirros",
        "--timeout=60s",
    ]);
    c.kubectl(&[
        "delete",
        "pv/local-block-storage-cirros-pv",
        "--timeout=60s",
    ]);
    drop(block);
    c.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
