//! kiln-bench vms, per-VM memory outside guest RAM.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use kiln_tests::kube::Cluster;

use super::{
    delete_all, find_pid, linux_vm, post, proc_usage, stat_field, tiny_vmi, wait_all, Seen, NS,
};

/// Resident KiB of kiln-vmm outside guest RAM (its mapping of exactly `guest_kib`; glibc's
/// 64 MiB malloc arenas can be larger than a small guest's), and inside it.
fn rss_split(pid: i32, guest_kib: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps: Vec<(u64, u64)> = Vec::new(); // (size KiB, rss KiB)
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) => maps.push((v.parse().unwrap_or(0), 0)),
            (Some("Rss:"), Some(v)) => {
                if let Some(m) = maps.last_mut() {
                    m.1 = v.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    let total: u64 = maps.iter().map(|m| m.1).sum();
    let guest = maps.iter().find(|m| m.0 == guest_kib).map_or(0, |m| m.1);
    (total - guest, guest)
}

/// The pod cgroup's working set (usage minus inactive file pages, as the kubelet counts it).
fn pod_working_set(pid: i32) -> Option<u64> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cg
        .lines()
        .find_map(|l| l.split(':').nth(2).filter(|_| l.contains(":memory:")))?;
    let pod = Path::new("/sys/fs/cgroup/memory")
        .join(path.trim_start_matches('/'))
        .parent()?
        .to_path_buf();
    let usage: u64 = std::fs::read_to_string(pod.join("memory.usage_in_bytes"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(pod.join("memory.stat")).ok()?;
    let inactive: u64 = stat
        .lines()
        .find(|l| l.starts_with("total_inactive_file "))
        .and_then(|l| l.split(' ').nth(1)?.parse().ok())
        .unwrap_or(0);
    Some((usage - inactive) / 1024)
}

pub(super) fn overhead(c: &Cluster, rx: &mpsc::Receiver<Seen>) {
    post(
        c,
        &format!("/apis/kiln.dev/v1alpha1/namespaces/{NS}/virtualmachines"),
        &linux_vm("mem-linux"),
    );
    post(
        c,
        &format!("/apis/kiln.dev/v1alpha1/namespaces/{NS}/virtualmachineinstances"),
        &tiny_vmi("mem-tiny"),
    );
    // Both at once: an update of one is not there to be seen again while waiting for the
    // other. kiln-tiny signals the boot timer too.
    wait_all(
        rx,
        &["mem-linux".to_string(), "mem-tiny".to_string()],
        true,
        Duration::from_secs(600),
    );
    std::thread::sleep(Duration::from_secs(5));
    println!("Per-VM memory (KiB), guests idle after boot");
    crate::table_header(&[
        ("VM", 10),
        ("guest RAM rss", 14),
        ("kiln-vmm else", 13),
        ("launcher", 12),
        ("both outside", 12),
        ("pod - guest rss", 15),
    ]);
    for (vm, guest_mib) in [("mem-linux", 128), ("mem-tiny", 16)] {
        let vmm = find_pid("kiln-vmm", vm).expect("kiln-vmm of the VM");
        let launcher = stat_field(vmm, 1)
            .and_then(|p| i32::try_from(p).ok())
            .expect("the launcher is kiln-vmm's parent");
        let (else_kib, guest_kib) = rss_split(vmm, guest_mib * 1024);
        let (_, _, launcher_kib) = proc_usage(launcher);
        let pod = pod_working_set(launcher).map(|w| w.saturating_sub(guest_kib));
        println!(
            "| {vm:<10} | {guest_kib:>14} | {else_kib:>13} | {launcher_kib:>12} | {:>12} | {:>15} |",
            else_kib + launcher_kib,
            pod.map_or("-".into(), |p| p.to_string())
        );
    }
    delete_all(c, "vm,vmi");
}
