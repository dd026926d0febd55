//! The development cluster (resources/cluster/cluster, issue 5): `up` brings a node to Ready
//! with Kubernetes built from its official Go modules; a pod runs to completion and its log is
//! read through the API; a PVC binds through the local-path provisioner (which itself reaches
//! the API server through the kubernetes service, so kube-proxy works) and pods write and read
//! it; CoreDNS resolves the kubernetes service; a pod that requests devices.kiln.dev/kvm sees /dev/kvm and one that does not, does not;
//! Kiln's kiln-vmm image (`load-images`) boots a tiny guest inside a pod; `down` leaves none of
//! the processes, mounts, network namespaces, interfaces or iptables chains it made. Uses its
//! own cluster folder, but the fixed ports (6443, 2379) and bridge (kiln0): stop a developer
//! cluster on the same machine first.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kiln_tests::kube::ok;
use kiln_tests::{guest_dir, kiln_vmm, scratch_dir, tiny_guest, workspace_root};

fn cluster(dir: &Path, args: &[&str]) -> Output {
    Command::new(workspace_root().join("resources/cluster/cluster"))
        .args(args)
        .env("KILN_CLUSTER_DIR", dir)
        .env("KILN_VMM", kiln_vmm())
        .env("KILN_BIN", kiln_vmm().parent().unwrap_or(Path::new(".")))
        .env("KILN_GUEST_DIR", guest_dir())
        .output()
        .expect("running resources/cluster/cluster")
}

fn kubectl(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["kubectl"];
    all.extend_from_slice(args);
    ok(&cluster(dir, &all), &format!("kubectl {}", args.join(" ")))
}

/// Brings the cluster down however the test ends.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = cluster(self.0, &["down"]);
    }
}

/// A pod running `script` in kiln.local/busybox:dev; `container` is appended to its container's
/// fields, `spec` to the pod spec's.
fn pod(name: &str, script: &str, container: &str, spec: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
 "spec": {{"restartPolicy": "Never", "containers": [{{"name": "main",
  "image": "kiln.local/busybox:dev", "imagePullPolicy": "Never",
  "command": ["/bin/sh", "-c", "{script}"]{container}}}]{spec}}}}}"#
    )
}

fn apply(dir: &Path, name: &str, json: &str) {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, json).unwrap();
    kubectl(dir, &["apply", "-f", &file.display().to_string()]);
}

/// Creates the pod, waits until it has ended, and returns its phase and log.
fn finish_pod(dir: &Path, name: &str, json: &str) -> (String, String) {
    apply(dir, name, json);
    let deadline = Instant::now() + Duration::from_secs(180);
    let phase = loop {
        let out = cluster(
            dir,
            &[
                "kubectl",
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.status.phase}",
            ],
        );
        let phase = String::from_utf8_lossy(&out.stdout).into_owned();
        if phase == "Succeeded" || phase == "Failed" || Instant::now() > deadline {
            break phase;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let logs = cluster(dir, &["kubectl", "logs", name]);
    (phase, String::from_utf8_lossy(&logs.stdout).into_owned())
}

/// Runs the pod to completion, which must succeed; returns its log.
fn run_pod(dir: &Path, name: &str, json: &str) -> String {
    let (phase, logs) = finish_pod(dir, name, json);
    let describe = cluster(dir, &["kubectl", "describe", "pod", name]);
    assert_eq!(
        phase,
        "Succeeded",
        "{logs}\n{}",
        String::from_utf8_lossy(&describe.stdout)
    );
    logs
}

#[test]
fn cluster_up_runs_pods_volumes_and_vms_and_down_leaves_nothing() {
    let dir = scratch_dir("cluster");
    let kubelet_folder_existed = Path::new("/var/lib/kubelet").exists();
    let _down = Down(&dir);
    let crashed = crashed_cluster_left_its_owner_file();
    let up = cluster(&dir, &["up"]);
    let kubeconfig = ok(&up, "cluster up");
    if let Some(crashed) = crashed {
        let stderr = String::from_utf8_lossy(&up.stderr);
        assert!(
            stderr.contains(&format!(
                "the cluster in {} ended without down",
                crashed.display()
            )),
            "{stderr}"
        );
    }
    assert_eq!(
        kubeconfig.trim(),
        dir.join("admin.kubeconfig").display().to_string()
    );
    let node = kubectl(&dir, &["get", "nodes", "-o", "wide"]);
    assert!(node.contains(" Ready ") && node.contains("v1.34"), "{node}");
    // Idempotent: a second `up` finds everything running.
    ok(&cluster(&dir, &["up"]), "second cluster up");
    one_cluster_per_machine(&dir);

    let logs = run_pod(
        &dir,
        "hello",
        &pod(
            "hello",
            "echo hello from a pod; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace",
            "",
            "",
        ),
    );
    assert_eq!(logs, "hello from a pod\ndefault");
    // Cluster DNS (CoreDNS) answers for services, reached through kube-proxy's service rules.
    let dns = run_pod(
        &dir,
        "dns",
        &pod(
            "dns",
            "cat /etc/resolv.conf; nslookup kubernetes.default.svc.cluster.local",
            "",
            "",
        ),
    );
    assert!(dns.contains("nameserver 10.96.0.10"), "{dns}");
    assert!(
        dns.contains("kubernetes.default.svc.cluster.local")
            && dns.lines().any(|l| l.trim() == "Address: 10.96.0.1"),
        "{dns}"
    );

    persistent_volume_claims_bind_and_keep_data(&dir);
    kvm_only_for_pods_that_request_it(&dir);
    kiln_vmm_image_boots_a_guest_in_a_pod(&dir);

    let mut components: Vec<(String, i32)> = std::fs::read_dir(dir.join("pids"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), pid))
        })
        .collect();
    components.sort();
    let names: Vec<&str> = components.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "containerd",
            "csi-hostpath",
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-proxy",
            "kube-scheduler",
            "kubelet",
            "kvm-device-plugin",
            "registry",
        ],
        "one pid file per component"
    );
    let pids: Vec<i32> = components.iter().map(|(_, pid)| *pid).collect();
    // All still running after the second `up` and the workloads.
    for pid in &pids {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} has exited: {}",
            ok(&cluster(&dir, &["status"]), "status")
        );
    }
    ok(&cluster(&dir, &["down"]), "cluster down");
    down_left_nothing(&dir, &pids);
    // The kubelet's fixed device-plugin folder goes too, when `up` made it.
    assert!(
        kubelet_folder_existed || !Path::new("/var/lib/kubelet").exists(),
        "/var/lib/kubelet left behind"
    );
    ok(&cluster(&dir, &["down"]), "second cluster down");
}

/// A cluster whose run was killed before `down` leaves /run/kiln-cluster/owner naming its
/// folder, though none of its processes runs: `up` elsewhere must take over, not refuse (nor
/// fail silently, as it once did). Staged only when no cluster owns the machine.
fn crashed_cluster_left_its_owner_file() -> Option<std::path::PathBuf> {
    let owner = Path::new("/run/kiln-cluster/owner");
    if owner.exists() {
        return None;
    }
    let crashed = scratch_dir("cluster-crashed");
    let mut gone = Command::new("true").spawn().expect("running true");
    gone.wait().expect("waiting for true");
    std::fs::create_dir_all(crashed.join("pids")).expect("pids folder");
    std::fs::write(crashed.join("pids/etcd"), gone.id().to_string()).expect("pid file");
    std::fs::create_dir_all("/run/kiln-cluster").expect("/run/kiln-cluster");
    std::fs::write(owner, crashed.display().to_string()).expect("owner file");
    Some(crashed)
}

/// Another cluster folder's `up` is refused at once with the way out, and its `down` leaves the
/// running cluster's machine-wide pieces alone (the pods after this prove the cluster works).
fn one_cluster_per_machine(dir: &Path) {
    let other = scratch_dir("cluster-other");
    let started = Instant::now();
    let refused = cluster(&other, &["up"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a second cluster came up: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "the cluster in {} is up on this machine",
            dir.display()
        )) && stderr.contains("down"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusal took {:?}",
        started.elapsed()
    );
    let down = ok(&cluster(&other, &["down"]), "down of another folder");
    assert!(down.is_empty(), "{down}");
    assert!(Path::new("/sys/class/net/kiln0").exists(), "kiln0 removed");
    assert!(
        Path::new("/run/kiln-cluster/containerd.sock").exists(),
        "containerd socket removed"
    );
}

/// The default StorageClass (local-path) binds a claim when its first pod is scheduled; data a
/// pod writes is there for the next pod; deleting the claim deletes the volume and its folder.
fn persistent_volume_claims_bind_and_keep_data(dir: &Path) {
    apply(
        dir,
        "pvc",
        r#"{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}"#,
    );
    let mount = r#", "volumeMounts": [{"name": "data", "mountPath": "/data"}]"#;
    let claim =
        r#", "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]"#;
    let written = run_pod(
        dir,
        "writer",
        &pod(
            "writer",
            "echo kept > /data/file && echo wrote",
            mount,
            claim,
        ),
    );
    assert_eq!(written, "wrote\n");
    let bound = kubectl(
        dir,
        &[
            "get",
            "pvc",
            "data",
            "-o",
            "jsonpath={.status.phase} {.spec.storageClassName} {.spec.volumeName}",
        ],
    );
    let parts: Vec<&str> = bound.split(' ').collect();
    assert_eq!(parts[..2], ["Bound", "local-path"], "{bound}");
    let volume = parts[2];
    let folder = kubectl(
        dir,
        &["get", "pv", volume, "-o", "jsonpath={.spec.local.path}"],
    );
    assert!(
        folder.starts_with(&dir.join("volumes").display().to_string()),
        "{folder}"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&folder).join("file")).unwrap(),
        "kept\n"
    );
    let read = run_pod(
        dir,
        "reader",
        &pod("reader", "cat /data/file", mount, claim),
    );
    assert_eq!(read, "kept\n");

    kubectl(dir, &["delete", "pod", "writer", "reader"]);
    kubectl(dir, &["delete", "pvc", "data"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&folder).exists() || !kubectl(dir, &["get", "pv", "-o", "name"]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "volume {volume} or {folder} still there after its claim was deleted"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// /dev/kvm the Kubernetes way: only for pods that ask for it.
fn kvm_only_for_pods_that_request_it(dir: &Path) {
    let kvm = r#", "resources": {"limits": {"devices.kiln.dev/kvm": "1"}}"#;
    let probe = "if [ -c /dev/kvm ]; then echo kvm: yes; ls -l /dev/kvm; else echo kvm: no; fi";
    let with = run_pod(dir, "with-kvm", &pod("with-kvm", probe, kvm, ""));
    assert!(with.starts_with("kvm: yes\ncrw"), "{with}");
    assert!(
        with.contains(" 10, 232 "),
        "the real /dev/kvm (10:232): {with}"
    );
    let without = run_pod(dir, "without-kvm", &pod("without-kvm", probe, "", ""));
    assert_eq!(without, "kvm: no\n");
}

/// `load-images` packs the release kiln-vmm into kiln.local/kiln-vmm:VERSION and pushes it to
/// the cluster's registry, which containerd pulls it from; in a pod holding
/// devices.kiln.dev/kvm it boots a tiny guest (from a ConfigMap) whose exit status becomes the
/// container's.
fn kiln_vmm_image_boots_a_guest_in_a_pod(dir: &Path) {
    ok(&cluster(dir, &["load-images"]), "load-images");
    let version = env!("CARGO_PKG_VERSION");
    let guest = dir.join("tiny.elf");
    std::fs::write(&guest, tiny_guest::pvh_elf(&tiny_guest::debug_exit(42))).unwrap();
    kubectl(
        dir,
        &[
            "create",
            "configmap",
            "tiny-guest",
            &format!("--from-file=tiny.elf={}", guest.display()),
        ],
    );
    let json = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "vm"}},
 "spec": {{"restartPolicy": "Never", "containers": [{{"name": "vmm",
  "image": "kiln.local/kiln-vmm:{version}", "imagePullPolicy": "IfNotPresent",
  "args": ["--kernel", "/guest/tiny.elf", "--mem", "16", "--serial-out", "none"],
  "resources": {{"limits": {{"devices.kiln.dev/kvm": "1"}}}},
  "volumeMounts": [{{"name": "guest", "mountPath": "/guest"}}]}}],
  "volumes": [{{"name": "guest", "configMap": {{"name": "tiny-guest"}}}}]}}}}"#
    );
    let (phase, logs) = finish_pod(dir, "vm", &json);
    let exit = kubectl(
        dir,
        &[
            "get",
            "pod",
            "vm",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}",
        ],
    );
    assert_eq!((phase.as_str(), exit.as_str()), ("Failed", "42"), "{logs}");
    assert!(logs.contains("guest powered off (status 42)"), "{logs}");
}

fn down_left_nothing(dir: &Path, pids: &[i32]) {
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still runs"
        );
    }
    let shims = Command::new("pgrep")
        .args(["-f", "containerd-shim"])
        .output()
        .unwrap();
    assert!(
        shims.stdout.is_empty(),
        "containerd shims left: {}",
        String::from_utf8_lossy(&shims.stdout)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            l.contains(&*dir.to_string_lossy())
                || l.contains("/run/kiln-cluster")
                || l.contains("/run/netns/cni-")
        })
        .collect();
    assert!(ours.is_empty(), "mounts left: {ours:?}");
    assert!(
        !Path::new("/sys/class/net/kiln0").exists(),
        "bridge kiln0 left"
    );
    assert!(
        !Path::new("/var/lib/kubelet/device-plugins/kiln-kvm.sock").exists(),
        "device plugin socket left"
    );
    for save in ["iptables-save", "ip6tables-save"] {
        let rules = Command::new(save).output().unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        let kube: Vec<&str> = rules.lines().filter(|l| l.contains("KUBE-")).collect();
        assert!(kube.is_empty(), "{save}: Kubernetes rules left: {kube:?}");
    }
}
