//! kiln-bench vms, control-plane scale: many kiln-tiny VMIs created 100 ms apart, against the
//! same number of plain pods of the launcher pod's shape (its images and init containers, no
//! Kiln process): what Kiln costs above what the node spends starting such pods.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_tests::kube::Cluster;

use super::NS;
use super::{delete_all, find_pid, percentile, post, proc_usage, tiny_vmi, wait_all, watch, Seen};

/// The leader's API requests so far, by `verb resource`.
fn api_requests(c: &Cluster, leader: &str) -> HashMap<String, f64> {
    let out = c.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/kiln-system/pods/{leader}:8080/proxy/metrics"),
    ]);
    let label = |l: &str, key: &str| {
        let start = l.find(&format!("{key}=\""))? + key.len() + 2;
        Some(l[start..].split('"').next()?.to_string())
    };
    out.lines()
        .filter(|l| l.starts_with("kiln_controller_api_requests_total{"))
        .filter_map(|l| {
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((
                format!("{} {}", label(l, "verb")?, label(l, "resource")?),
                n,
            ))
        })
        .collect()
}

/// What a paced run measured: seconds from each creation to Running, and from the first
/// creation to the last Running.
struct Paced {
    times: Vec<f64>,
    all: f64,
}

/// POSTs `bodies` to `path` 100 ms apart and waits until each is Running.
fn paced(c: &Cluster, rx: &mpsc::Receiver<Seen>, path: &str, bodies: &[(String, String)]) -> Paced {
    let start = Instant::now();
    let mut starts = Vec::new();
    for (i, (_, body)) in bodies.iter().enumerate() {
        let due = start + Duration::from_millis(100 * i as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        starts.push(post(c, path, body));
    }
    let names: Vec<String> = bodies.iter().map(|(n, _)| n.clone()).collect();
    let got: HashMap<String, (Instant, Option<Instant>)> =
        wait_all(rx, &names, false, Duration::from_secs(900));
    let all = start.elapsed().as_secs_f64();
    let times = names
        .iter()
        .zip(&starts)
        .map(|(n, t0)| (got[n].0 - *t0).as_secs_f64())
        .collect();
    Paced { times, all }
}

/// A pod shaped like a kiln-tiny VMI's launcher pod: the launcher image installing the copier,
/// the kernel image copying kiln-tiny, then a main container that only sleeps.
fn plain_pod(name: &str, launcher_image: &str) -> String {
    let requests = serde_json::json!({"requests": {"cpu": "10m", "memory": "16Mi"}});
    let mount = |v: &str, at: &str| serde_json::json!({"name": v, "mountPath": at});
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": false,
            "enableServiceLinks": false, "terminationGracePeriodSeconds": 1,
            "initContainers": [
                {"name": "kiln-tools", "image": launcher_image, "imagePullPolicy": "IfNotPresent",
                 "command": ["/usr/bin/kiln-disk-copy", "--install", "/tools"],
                 "resources": requests, "volumeMounts": [mount("tools", "/tools")]},
                {"name": "kernel-boot", "image": "kiln.local/kiln-guest-kernel:latest",
                 "command": ["/tools/kiln-disk-copy", "/boot/kiln-tiny", "/disks/kernel"],
                 "resources": requests,
                 "volumeMounts": [mount("tools", "/tools"), mount("disks", "/disks")]}],
            "containers": [
                {"name": "main", "image": "kiln.local/busybox:dev", "imagePullPolicy": "IfNotPresent",
                 "command": ["sleep", "3600"], "resources": requests,
                 "volumeMounts": [mount("disks", "/disks"), mount("run", "/run/kiln")]}],
            "volumes": [
                {"name": "disks", "emptyDir": {}},
                {"name": "run", "emptyDir": {"medium": "Memory"}},
                {"name": "tools", "emptyDir": {"medium": "Memory"}}]}
    })
    .to_string()
}

pub(super) fn scale(c: &Cluster, rx: &mpsc::Receiver<Seen>, leader: &str, n: usize, rounds: usize) {
    let pid = find_pid("kiln-controller", &format!("POD_NAME={leader}"))
        .expect("the leading controller's process");
    let launcher_image = c.field(
        "kiln-system",
        "deploy/kiln-controller",
        r#"{.spec.template.spec.containers[0].env[?(@.name=="KILN_LAUNCHER_IMAGE")].value}"#,
    );
    let (mut kiln, mut plain) = (Vec::new(), Vec::new());
    let (mut ticks, mut requests) = (0, HashMap::<String, f64>::new());
    for round in 0..rounds {
        let (t_before, _, _) = proc_usage(pid);
        let requests_before = api_requests(c, leader);
        let vmis: Vec<(String, String)> = (0..n)
            .map(|i| {
                let name = format!("scale-{round}-{i}");
                let body = tiny_vmi(&name);
                (name, body)
            })
            .collect();
        let k = paced(
            c,
            rx,
            &format!("/apis/kiln.dev/v1alpha1/namespaces/{NS}/virtualmachineinstances"),
            &vmis,
        );
        // Let the status writes that follow Running settle before counting.
        std::thread::sleep(Duration::from_secs(3));
        ticks += proc_usage(pid).0 - t_before;
        for (key, v) in api_requests(c, leader) {
            let before = requests_before.get(&key).copied().unwrap_or(0.0);
            *requests.entry(key).or_default() += v - before;
        }
        delete_all(c, "vmi");

        let pods: Vec<(String, String)> = (0..n)
            .map(|i| {
                let name = format!("plain-{round}-{i}");
                let body = plain_pod(&name, &launcher_image);
                (name, body)
            })
            .collect();
        let (mut pod_watcher, pod_rx) = watch(c, "pods");
        let p = paced(c, &pod_rx, &format!("/api/v1/namespaces/{NS}/pods"), &pods);
        let _ = pod_watcher.kill();
        let _ = pod_watcher.wait();
        delete_all(c, "pods");
        println!(
            "round {}: Kiln VMIs P50 {:.1} s, all Running {:.1} s | plain pods P50 {:.1} s, all Running {:.1} s",
            round + 1,
            percentile(&k.times, 50.0),
            k.all,
            percentile(&p.times, 50.0),
            p.all
        );
        kiln.push(k);
        plain.push(p);
    }
    let (_, hwm, rss) = proc_usage(pid);
    let per_vmi = (n * rounds) as f64;
    let mut requests: Vec<(String, f64)> = requests
        .into_iter()
        .map(|(k, v)| (k, v / per_vmi))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    requests.sort_by(|a, b| b.1.total_cmp(&a.1));
    let pooled = |runs: &[Paced]| -> (Vec<f64>, Vec<f64>) {
        let times = runs.iter().flat_map(|r| r.times.iter().copied()).collect();
        let alls = runs.iter().map(|r| r.all).collect();
        (times, alls)
    };
    let (kiln, kiln_all) = pooled(&kiln);
    let (plain, plain_all) = pooled(&plain);

    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    println!();
    println!("{n} kiln-tiny VMIs created 100 ms apart (KubeVirt's sig-performance lane: P50 ~17-19 s, P95 ~27-29 s),");
    println!(
        "then {n} plain pods of the launcher pod's shape (2 init containers + 1) the same way;"
    );
    println!("{rounds} round(s), times pooled (seconds; 'all Running': median of the rounds)");
    crate::table_header(&[
        ("", 30),
        ("Kiln VMIs", 10),
        ("plain pods", 10),
        ("Kiln adds", 10),
    ]);
    let row = |what: &str, k: f64, p: f64| {
        println!("| {what:<30} | {k:>10.2} | {p:>10.2} | {:>10.2} |", k - p);
    };
    for (what, q) in [("P50", 50.0), ("P95", 95.0), ("max", 100.0)] {
        row(
            &format!("creation -> Running, {what}"),
            percentile(&kiln, q),
            percentile(&plain, q),
        );
    }
    row(
        "first creation -> all Running",
        crate::stats(&kiln_all).1,
        crate::stats(&plain_all).1,
    );
    println!();
    crate::table_header(&[("Kiln's controller during the VMI run", 40), ("", 10)]);
    println!(
        "| {:<40} | {:>8.2} s |",
        "CPU (user+system) per round",
        ticks as f64 / hz / rounds as f64
    );
    println!(
        "| {:<40} | {:>6} MiB |",
        "RSS now / peak",
        format!("{} / {}", rss / 1024, hwm / 1024)
    );
    println!(
        "| {:<40} | {:>10.1} |",
        "API requests per VMI",
        requests.iter().map(|r| r.1).sum::<f64>()
    );
    for (what, per_vmi) in &requests {
        println!("| {:<40} | {per_vmi:>10.2} |", format!("  {what}"));
    }
}
