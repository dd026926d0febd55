//! The development cluster (resources/cluster/cluster, issue 5): `up` brings a node to Ready
//! with Kubernetes built from its official Go modules; a pod runs to completion and its log is
//! read through the API; a pod that requests devices.kiln.dev/kvm sees /dev/kvm and one that
//! does not, does not; `down` leaves none of the processes, mounts, network namespaces or
//! interfaces it made. Uses its own cluster folder, but the fixed ports (6443, 2379) and bridge
//! (kiln0): stop a developer cluster on the same machine first.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kiln_tests::{scratch_dir, workspace_root};

fn cluster(dir: &Path, args: &[&str]) -> Output {
    Command::new(workspace_root().join("resources/cluster/cluster"))
        .args(args)
        .env("KILN_CLUSTER_DIR", dir)
        .output()
        .expect("running resources/cluster/cluster")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Brings the cluster down however the test ends.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = cluster(self.0, &["down"]);
    }
}

/// A pod running `script` in kiln.local/busybox:dev, with `resources` for its container.
fn pod(name: &str, script: &str, resources: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
 "spec": {{"restartPolicy": "Never", "dnsPolicy": "Default", "containers": [{{"name": "main",
  "image": "kiln.local/busybox:dev", "imagePullPolicy": "Never", "resources": {resources},
  "command": ["/bin/sh", "-c", "{script}"]}}]}}}}"#
    )
}

/// Creates the pod, waits until it has run, and returns its log.
fn run_pod(dir: &Path, name: &str, json: &str) -> String {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, json).unwrap();
    ok(
        &cluster(
            dir,
            &["kubectl", "apply", "-f", &file.display().to_string()],
        ),
        "apply",
    );
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
    let describe = cluster(dir, &["kubectl", "describe", "pod", name]);
    assert_eq!(
        phase,
        "Succeeded",
        "{}",
        String::from_utf8_lossy(&describe.stdout)
    );
    ok(&cluster(dir, &["kubectl", "logs", name]), "logs")
}

#[test]
fn cluster_up_runs_a_pod_and_down_leaves_nothing() {
    let dir = scratch_dir("cluster");
    let _down = Down(&dir);
    let kubeconfig = ok(&cluster(&dir, &["up"]), "cluster up");
    assert_eq!(
        kubeconfig.trim(),
        dir.join("admin.kubeconfig").display().to_string()
    );
    let node = ok(
        &cluster(&dir, &["kubectl", "get", "nodes", "-o", "wide"]),
        "get nodes",
    );
    assert!(node.contains(" Ready ") && node.contains("v1.34"), "{node}");
    // Idempotent: a second `up` finds everything running.
    ok(&cluster(&dir, &["up"]), "second cluster up");

    let logs = run_pod(
        &dir,
        "hello",
        &pod(
            "hello",
            "echo hello from a pod; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace",
            "{}",
        ),
    );
    assert_eq!(logs, "hello from a pod\ndefault");

    // /dev/kvm the Kubernetes way: only for pods that ask for it.
    let kvm = r#"{"limits": {"devices.kiln.dev/kvm": "1"}}"#;
    let probe = "if [ -c /dev/kvm ]; then echo kvm: yes; ls -l /dev/kvm; else echo kvm: no; fi";
    let with = run_pod(&dir, "with-kvm", &pod("with-kvm", probe, kvm));
    assert!(with.starts_with("kvm: yes\ncrw"), "{with}");
    assert!(
        with.contains(" 10, 232 "),
        "the real /dev/kvm (10:232): {with}"
    );
    let without = run_pod(&dir, "without-kvm", &pod("without-kvm", probe, "{}"));
    assert_eq!(without, "kvm: no\n");

    let pids: Vec<i32> = std::fs::read_dir(dir.join("pids"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect();
    assert_eq!(
        pids.len(),
        7,
        "etcd, apiserver, controller-manager, scheduler, containerd, kubelet, kvm device plugin"
    );
    ok(&cluster(&dir, &["down"]), "cluster down");
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
    ok(&cluster(&dir, &["down"]), "second cluster down");
}
