//! `kiln-bench vms`: Kiln on the development cluster, measured against kiln-vmm alone.
//!
//! 1. One VM, create → Running and → the guest's boot signal, alternating with standalone
//!    kiln-vmm boots of the same guest (Kiln's kernel and initramfs, 128 MiB, 1 vCPU): what the
//!    cluster adds.
//! 2. N Linux VMs created at once vs N standalone kiln-vmm started at once: boot-signal P50/P95.
//! 3. Control-plane scale, as KubeVirt's sig-performance lane: M kiln-tiny VMIs created 100 ms
//!    apart, alternating with as many plain pods of the launcher pod's shape (what the node
//!    itself needs to start such pods); creation → Running P50/P95, the controller's CPU and
//!    peak RSS, its API requests per VMI by verb and resource.
//! 4. Per-VM overhead: launcher and kiln-vmm memory outside guest RAM, and the pod's.
//!
//! Creations are POSTs with the cluster's admin certificate (curl); observations come from a
//! `kubectl get -w` stream, stamped as they arrive.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_tests::kube::Cluster;

use crate::{arg_num, arg_value};

mod boot;
mod memory;
mod scale;

pub(super) const NS: &str = "bench";
pub(super) const HOLD: &str = "console=ttyS0 quiet kiln.action=hold";

pub(super) fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s[rank.min(s.len() - 1)]
}

/// POSTs a JSON object to the API server (admin certificate); the time just before sending.
pub(super) fn post(c: &Cluster, path: &str, body: &str) -> Instant {
    let pki = c.dir.join("pki");
    let t = Instant::now();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ])
        .arg("--cacert")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(format!("https://127.0.0.1:6443{path}"))
        .args(["--data-binary", body])
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "POST {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

/// One update of a watched VMI or pod, stamped when it arrived.
pub(super) struct Seen {
    pub(super) at: Instant,
    pub(super) name: String,
    pub(super) phase: String,
    pub(super) boot_ms: Option<f64>,
}

/// Streams every update of `kind` (vmi or pods) in the bench namespace.
pub(super) fn watch(c: &Cluster, kind: &str) -> (std::process::Child, mpsc::Receiver<Seen>) {
    let mut child = Command::new(c.kubectl_path())
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["get", kind, "-n", NS, "-w", "-o"])
        .arg(r#"jsonpath={.metadata.name} {.status.phase} {.status.guestBootMilliseconds}{"\n"}"#)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let out = child.stdout.take().expect("watch output");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut f = line.split_whitespace();
            let (Some(name), phase) = (f.next(), f.next().unwrap_or("")) else {
                continue;
            };
            let seen = Seen {
                at: Instant::now(),
                name: name.to_string(),
                phase: phase.to_string(),
                boot_ms: f.next().and_then(|b| b.parse().ok()),
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// When each of `names` was first seen Running and first seen with its boot time.
pub(super) fn wait_all(
    rx: &mpsc::Receiver<Seen>,
    names: &[String],
    boot: bool,
    limit: Duration,
) -> HashMap<String, (Instant, Option<Instant>)> {
    let deadline = Instant::now() + limit;
    let mut got: HashMap<String, (Instant, Option<Instant>)> = HashMap::new();
    let done = |g: &HashMap<String, (Instant, Option<Instant>)>| {
        names
            .iter()
            .all(|n| g.get(n).is_some_and(|(_, b)| !boot || b.is_some()))
    };
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("VMIs not Running within {limit:?}"));
        if s.phase != "Running" || !names.contains(&s.name) {
            continue;
        }
        let e = got.entry(s.name).or_insert((s.at, None));
        if e.1.is_none() && s.boot_ms.is_some() {
            e.1 = Some(s.at);
        }
    }
    got
}

pub(super) fn linux_vm(name: &str) -> String {
    serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"memory": {"guest": "128Mi"}},
            "terminationGracePeriodSeconds": 1}}}
    })
    .to_string()
}

pub(super) fn tiny_vmi(name: &str) -> String {
    serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {"domain": {"memory": {"guest": "16Mi"}, "resources": {"requests": {"cpu": "10m"}},
            "firmware": {"kernelBoot": {"kernelArgs": "kiln.action=hold",
                "container": {"image": "kiln.local/kiln-guest-kernel:latest", "kernelPath": "/boot/kiln-tiny"}}}},
            "terminationGracePeriodSeconds": 1}
    })
    .to_string()
}

/// Deletes every object of `kinds` (comma-separated, as kubectl takes them) in the bench
/// namespace and waits until its pods are gone.
pub(super) fn delete_all(c: &Cluster, kinds: &str) {
    c.kubectl(&["delete", kinds, "-n", NS, "--all", "--timeout=300s"]);
    c.wait(
        "the bench's launcher pods gone",
        Duration::from_secs(300),
        || {
            c.kubectl(&["get", "pods", "-n", NS, "-o", "name"])
                .trim()
                .is_empty()
                .then_some(())
        },
    );
}

/// Numeric field `i` of /proc/PID/stat, counted from the state after the command name (1 is
/// the parent's pid, 11 and 12 utime and stime).
pub(super) fn stat_field(pid: i32, i: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(i)?
        .parse()
        .ok()
}

/// utime+stime (clock ticks) and VmHWM/VmRSS (KiB) of a process.
pub(super) fn proc_usage(pid: i32) -> (u64, u64, u64) {
    let ticks = stat_field(pid, 11).unwrap_or(0) + stat_field(pid, 12).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks, kib("VmHWM:"), kib("VmRSS:"))
}

/// The pid of the process whose executable is `exe` and whose environment or arguments say
/// `mark` (POD_NAME=..., or kiln-vmm's --id).
pub(super) fn find_pid(exe: &str, mark: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let path = std::fs::read_link(e.path().join("exe")).ok()?;
        if !path.ends_with(exe) {
            return None;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let hit = |b: &[u8]| b.split(|&x| x == 0).any(|v| v == mark.as_bytes());
        (hit(&env) || hit(&cmd)).then_some(pid)
    })
}

pub fn bench_vms(args: &[String]) {
    let runs: usize = arg_num(args, "--runs", 5);
    let batch_n: usize = arg_num(args, "--batch", 10);
    let rounds: usize = arg_num(args, "--rounds", 2);
    let scale_n: usize = arg_num(args, "--scale", 100);
    let scale_rounds: usize = arg_num(args, "--scale-rounds", 2);
    let only = arg_value(args, "--only");
    let want = |part: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p == part))
    };
    let c = Cluster::up("bench-vms");
    let leader = c.install_kiln();
    c.namespace(NS);
    let (mut watcher, rx) = watch(&c, "vmi");
    if want("single") {
        boot::single(&c, &rx, runs);
        println!();
    }
    if want("batch") {
        boot::batch(&c, &rx, batch_n, rounds);
        println!();
    }
    if want("scale") {
        scale::scale(&c, &rx, &leader, scale_n, scale_rounds);
        println!();
    }
    if want("overhead") {
        memory::overhead(&c, &rx);
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
}
