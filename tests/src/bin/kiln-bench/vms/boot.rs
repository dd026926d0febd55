//! kiln-bench vms, boot latency: one VM alternating with standalone kiln-vmm, and N at once.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_tests::kube::Cluster;
use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm};

use super::{delete_all, linux_vm, percentile, post, wait_all, Seen, HOLD, NS};

/// Standalone kiln-vmm: `n` started at once; seconds from each spawn to first instruction
/// and to the boot signal.
fn standalone(n: usize) -> Vec<(f64, f64)> {
    let g = guest_dir();
    let args: Vec<String> = [
        "--kernel",
        &g.join("vmlinux").display().to_string(),
        "--initrd",
        &g.join("initramfs.cpio").display().to_string(),
        "--cmdline",
        HOLD,
        "--mem",
        "128",
        "--boot-timer",
        "--serial-out",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut runs: Vec<VmmRun> = (0..n).map(|_| VmmRun::spawn(&kiln_vmm(), &args)).collect();
    let times = runs
        .iter_mut()
        .map(|r| {
            let first = r
                .wait_for_line("first guest instruction", Duration::from_secs(30))
                .expect("kiln-vmm starts");
            let boot = r
                .wait_for_line("guest boot time", Duration::from_secs(900))
                .expect("the guest boots");
            (first.at.as_secs_f64(), boot.at.as_secs_f64())
        })
        .collect();
    for r in &mut runs {
        r.signal(libc::SIGTERM);
        r.wait_exit(Duration::from_secs(10));
    }
    times
}

pub(super) fn single(c: &Cluster, rx: &mpsc::Receiver<Seen>, runs: usize) {
    let (mut running, mut booted, mut alone_first, mut alone_boot) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let name = format!("one-{i}");
        let t0 = post(
            c,
            &format!("/apis/kiln.dev/v1alpha1/namespaces/{NS}/virtualmachines"),
            &linux_vm(&name),
        );
        let got = wait_all(
            rx,
            std::slice::from_ref(&name),
            true,
            Duration::from_secs(600),
        );
        let (r, b) = got[&name];
        running.push((r - t0).as_secs_f64());
        booted.push((b.unwrap_or(r) - t0).as_secs_f64());
        delete_all(c, "vm");
        let s = standalone(1)[0];
        alone_first.push(s.0);
        alone_boot.push(s.1);
        println!(
            "run {}: cluster Running {:.2} s, boot signal {:.2} s | kiln-vmm first instruction {:.3} s, boot signal {:.2} s",
            i + 1, running[i], booted[i], s.0, s.1
        );
    }
    let (rb, ab) = (percentile(&booted, 50.0), percentile(&alone_boot, 50.0));
    println!();
    println!("One Linux VM (Kiln's kernel + initramfs, 128 MiB, 1 vCPU), {runs} runs alternating (seconds, P50)");
    crate::table_header(&[("interval", 52), ("cluster", 8), ("kiln-vmm", 8)]);
    println!(
        "| {:<52} | {:>8.2} | {:>8.3} |",
        "create (POST) / spawn -> Running / first instruction",
        percentile(&running, 50.0),
        percentile(&alone_first, 50.0)
    );
    println!(
        "| {:<52} | {:>8.2} | {:>8.2} |",
        "create / spawn -> guest boot signal", rb, ab
    );
    let added: Vec<f64> = booted.iter().zip(&alone_boot).map(|(a, b)| a - b).collect();
    println!(
        "cluster's added time to the boot signal: P50 {:.2} s (per pair), {:.2} s (of the P50s)",
        percentile(&added, 50.0),
        rb - ab
    );
}

pub(super) fn batch(c: &Cluster, rx: &mpsc::Receiver<Seen>, n: usize, rounds: usize) {
    let (mut cluster, mut alone) = (vec![], vec![]);
    for round in 0..rounds {
        let names: Vec<String> = (0..n).map(|i| format!("batch-{round}-{i}")).collect();
        let starts: Vec<Instant> = names
            .iter()
            .map(|name| {
                post(
                    c,
                    &format!("/apis/kiln.dev/v1alpha1/namespaces/{NS}/virtualmachines"),
                    &linux_vm(name),
                )
            })
            .collect();
        let got = wait_all(rx, &names, true, Duration::from_secs(1800));
        for (name, t0) in names.iter().zip(&starts) {
            let (r, b) = got[name];
            cluster.push((b.unwrap_or(r) - *t0).as_secs_f64());
        }
        delete_all(c, "vm");
        alone.extend(standalone(n).into_iter().map(|(_, b)| b));
        println!(
            "round {}: cluster P50 {:.1} s, kiln-vmm P50 {:.1} s",
            round + 1,
            percentile(&cluster, 50.0),
            percentile(&alone, 50.0)
        );
    }
    let (c50, c95, a50, a95) = (
        percentile(&cluster, 50.0),
        percentile(&cluster, 95.0),
        percentile(&alone, 50.0),
        percentile(&alone, 95.0),
    );
    println!();
    println!("{n} Linux VMs at once vs {n} kiln-vmm at once, {rounds} round(s): create/spawn -> boot signal (seconds)");
    crate::table_header(&[("", 10), ("P50", 8), ("P95", 8)]);
    println!("| {:<10} | {c50:>8.1} | {c95:>8.1} |", "cluster");
    println!("| {:<10} | {a50:>8.1} | {a95:>8.1} |", "kiln-vmm");
    println!(
        "| {:<10} | {:>8.3} | {:>8.3} |",
        "ratio",
        c50 / a50,
        c95 / a95
    );
}
