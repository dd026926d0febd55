//! kiln-bench: boot-latency and device benchmarks that print a table.
//!
//!   kiln-bench boot    [--runs N] [--qemu PATH]   kiln-vmm vs QEMU microvm, alternating
//!   kiln-bench startup [--runs N]                 kiln-vmm process start -> first guest instruction
//!   kiln-bench overhead [--runs N] [--qemu PATH]  whole-VMM cost: spawn -> tiny guest exits -> reaped
//!   kiln-bench virtio [--runs N] [--disk-mib M] [--rand-secs S] [--net-mib M]
//!                                                 disk and TCP throughput, VMM CPU per GB, vs QEMU
//!   kiln-bench api [--runs N] [--requests N] [--running]
//!                                                 API start-up (wall, CPU) and request latency
//!   kiln-bench vms [--runs N] [--batch N] [--rounds N] [--scale N] [--only single,batch,scale,overhead]
//!                                                 Kiln on the development cluster vs kiln-vmm
//!                                                 alone (as root; brings its own cluster up)
//!   kiln-bench net [--rounds N] [--mib M] [--connects N]
//!                                                 TCP through the pod network (masquerade) vs the
//!                                                 same guest on a TAP; connect latency VM vs pod
//!   kiln-bench golden [--runs N] [--mib M]        clone time host-assisted vs CSI, and DataSource
//!                                                 -> VM Running (as root; its own cluster)
//!
//! Both use the default guest (resources/guest/build.sh) and the kiln-vmm from `KILN_VMM` or
//! target/. Runs alternate so that a noisy shared machine affects both sides alike.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod api;
mod golden;
mod net;
mod virtio;
mod vms;

use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm};

const MARKER: &str = "KILN_GUEST_OK";
const BOOT_LIMIT: Duration = Duration::from_secs(600);
const USER_CMDLINE: &str = "console=ttyS0 quiet";

fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// (min, median, max); NaN for no values.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (s[0], median, s[s.len() - 1])
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The number after `name`, or `default` when it is absent or not a number.
fn arg_num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg_value(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn kiln_args(g: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--kernel".to_string(),
        g.join("vmlinux").display().to_string(),
        "--initrd".into(),
        g.join("initramfs.cpio").display().to_string(),
        "--cmdline".into(),
        USER_CMDLINE.into(),
        "--mem".into(),
        "128".into(),
        "--vcpus".into(),
        "1".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// QEMU microvm as in the shared guest notes (no ACPI, isa-debug-exit at 0xf4), 128 MiB, 1 vCPU,
/// plus `extra`. QEMU 7.2 cannot set IA32_ARCH_CAPABILITIES on this host's KVM with plain
/// `-cpu host`, hence `-arch-capabilities`.
fn qemu_args(extra: &[&str]) -> Vec<String> {
    [
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-M",
        "microvm,acpi=off",
        "-m",
        "128",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// The complete command line kiln-vmm gives the guest, so QEMU can get exactly the same.
fn full_cmdline(kiln: &Path, g: &Path) -> String {
    full_cmdline_with(kiln, g, USER_CMDLINE)
}

/// Like [`full_cmdline`] with another user part (and no devices: QEMU adds its own entries).
fn full_cmdline_with(kiln: &Path, g: &Path, user: &str) -> String {
    let mut args = kiln_args(g, &["--print-cmdline"]);
    if let Some(i) = args.iter().position(|a| a == "--cmdline") {
        args[i + 1] = user.into();
    }
    let out = Command::new(kiln)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", kiln.display()));
    assert!(out.status.success(), "kiln-vmm --print-cmdline failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct BootSample {
    marker: f64,
    /// Guest uptime printed in the marker: time since the guest kernel's clock started.
    uptime: Option<f64>,
    exit: f64,
    first_insn_ms: Option<f64>,
}

/// One boot: seconds from spawn to the marker and to process exit.
fn boot_once(program: &Path, args: &[String], t_spawn_mono: &mut f64) -> BootSample {
    *t_spawn_mono = monotonic();
    let mut run = VmmRun::spawn(program, args);
    let marker = run.wait_for_line(MARKER, BOOT_LIMIT).unwrap_or_else(|| {
        panic!(
            "{} never printed {MARKER}:\n{}",
            program.display(),
            run.transcript()
        )
    });
    // A VMM that hangs after the marker is a failure, not a long exit time.
    if run.wait_exit(Duration::from_secs(120)).is_none() {
        panic!(
            "{} did not exit within 120 s after the marker:\n{}",
            program.display(),
            run.transcript()
        );
    }
    let exit = run.spawned.elapsed().as_secs_f64();
    let first_insn_ms = run
        .seen
        .iter()
        .find_map(|l| parse_monotonic(&l.text))
        .map(|m| (m - *t_spawn_mono) * 1e3);
    let uptime = marker
        .text
        .split("uptime=")
        .nth(1)
        .and_then(|u| u.split_whitespace().next())
        .and_then(|u| u.parse().ok());
    BootSample {
        marker: marker.at.as_secs_f64(),
        uptime,
        exit,
        first_insn_ms,
    }
}

/// The CLOCK_MONOTONIC stamp in kiln-vmm's "first guest instruction" log line.
fn parse_monotonic(line: &str) -> Option<f64> {
    if !line.contains("first guest instruction") {
        return None;
    }
    let rest = line.split("CLOCK_MONOTONIC ").nth(1)?;
    rest.trim_end_matches([')', ' ', 's'])
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn vmm_reported_ms(line: &str) -> Option<f64> {
    let rest = line.split("first guest instruction ").nth(1)?;
    rest.split(" ms").next()?.parse().ok()
}

fn bench_boot(args: &[String]) {
    let runs: usize = arg_num(args, "--runs", 5);
    let qemu =
        PathBuf::from(arg_value(args, "--qemu").unwrap_or_else(|| "qemu-system-x86_64".into()));
    let kiln = kiln_vmm();
    let g = guest_dir();
    let cmdline = full_cmdline(&kiln, g);
    let k_args = kiln_args(g, &["--serial-out", "stdout"]);
    let q_args = qemu_args(&[
        "-kernel",
        &g.join("vmlinux").display().to_string(),
        "-initrd",
        &g.join("initramfs.cpio").display().to_string(),
        "-append",
        &cmdline,
    ]);

    println!("guest: {}", g.display());
    println!("command line (both): {cmdline}");
    let (mut k, mut q) = (Vec::new(), Vec::new());
    let mut t0 = 0.0;
    for i in 0..runs {
        let s = boot_once(&kiln, &k_args, &mut t0);
        println!(
            "run {}: kiln-vmm marker {:.2} s, exit {:.2} s",
            i + 1,
            s.marker,
            s.exit
        );
        k.push(s);
        let s = boot_once(&qemu, &q_args, &mut t0);
        println!(
            "run {}: qemu     marker {:.2} s, exit {:.2} s",
            i + 1,
            s.marker,
            s.exit
        );
        q.push(s);
    }
    let row = |name: &str, v: &[BootSample]| {
        let (a, b, c) = stats(&v.iter().map(|s| s.marker).collect::<Vec<_>>());
        let (_, e, _) = stats(&v.iter().map(|s| s.exit).collect::<Vec<_>>());
        let up: Vec<f64> = v.iter().filter_map(|s| s.uptime).collect();
        let up = if up.is_empty() {
            f64::NAN
        } else {
            stats(&up).1
        };
        println!("| {name:<22} | {a:>7.2} | {b:>7.2} | {c:>7.2} | {e:>8.2} | {up:>12.2} |");
        b
    };
    println!();
    println!("Process start to user-space marker, {runs} runs each, alternating (seconds);");
    println!(
        "'guest up' is the guest's own uptime at the marker (time since its kernel clock started)"
    );
    table_header(&[
        ("VMM", 22),
        ("min", 7),
        ("median", 7),
        ("max", 7),
        ("exit med", 8),
        ("guest up med", 12),
    ]);
    let km = row("kiln-vmm", &k);
    let qm = row("QEMU -M microvm", &q);
    println!();
    println!("median ratio kiln/QEMU: {:.3}", km / qm);
    let fi: Vec<f64> = k.iter().filter_map(|s| s.first_insn_ms).collect();
    if !fi.is_empty() {
        let (a, b, c) = stats(&fi);
        println!("kiln-vmm process start -> first guest instruction: min {a:.2} / median {b:.2} / max {c:.2} ms");
    }
}

/// Prints a markdown table's header row and rule: the first column left-aligned, the others
/// right-aligned, each padded to its width (as the rows below it are).
pub(crate) fn table_header(columns: &[(&str, usize)]) {
    let cells: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (name, w))| match i {
            0 => format!(" {name:<w$} "),
            _ => format!(" {name:>w$} "),
        })
        .collect();
    let rule: Vec<String> = columns.iter().map(|(_, w)| "-".repeat(w + 2)).collect();
    println!("|{}|", cells.join("|"));
    println!("|{}|", rule.join("|"));
}

fn bench_startup(args: &[String]) {
    let runs: usize = arg_num(args, "--runs", 20);
    let kiln = kiln_vmm();
    let g = guest_dir();
    let k_args = kiln_args(g, &["--serial-out", "none"]);
    let (mut external, mut internal) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = monotonic();
        let mut run = VmmRun::spawn(&kiln, &k_args);
        let line = run
            .wait_for_line("first guest instruction", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no first-instruction line:\n{}", run.transcript()));
        run.signal(libc::SIGTERM);
        run.wait_exit(Duration::from_secs(5));
        if let Some(m) = parse_monotonic(&line.text) {
            external.push((m - t0) * 1e3);
        }
        if let Some(ms) = vmm_reported_ms(&line.text) {
            internal.push(ms);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "kiln-vmm start-up, {runs} runs (vmlinux + initramfs.cpio, 128 MiB, 1 vCPU; milliseconds)"
    );
    table_header(&[("interval", 46), ("min", 6), ("median", 6), ("max", 6)]);
    for (name, v) in [
        ("spawn (fork+exec) -> first guest instruction", &external),
        ("main() -> first guest instruction", &internal),
    ] {
        let (a, b, c) = stats(v);
        println!("| {name:<46} | {a:>6.2} | {b:>6.2} | {c:>6.2} |");
    }
}

/// VMM overhead: a guest whose first instruction writes the debug-exit port. Spawn to reaped
/// process is then all VMM (and, for QEMU, firmware) time; alternating kiln-vmm and QEMU.
fn bench_overhead(args: &[String]) {
    let runs: usize = arg_num(args, "--runs", 20);
    let qemu =
        PathBuf::from(arg_value(args, "--qemu").unwrap_or_else(|| "qemu-system-x86_64".into()));
    let kiln = kiln_vmm();
    let dir = kiln_tests::scratch_dir("bench-overhead");
    let elf = dir.join("exit0.elf");
    std::fs::write(
        &elf,
        kiln_tests::tiny_guest::pvh_elf(&kiln_tests::tiny_guest::debug_exit(0)),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", elf.display()));
    let elf = elf.display().to_string();
    let k_args: Vec<String> = ["--kernel", &elf, "--mem", "128", "--serial-out", "none"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let q_args = qemu_args(&["-kernel", &elf]);
    // Only a run that ended the way the guest asked counts: kiln-vmm exits with the value
    // written (0); QEMU's isa-debug-exit with (value << 1) | 1.
    let time = |program: &Path, a: &[String], want: i32| {
        let mut run = VmmRun::spawn(program, a);
        let status = run
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{} did not exit:\n{}", program.display(), run.transcript()));
        assert_eq!(
            status.code(),
            Some(want),
            "{} ended with {status}, not the guest's exit:\n{}",
            program.display(),
            run.transcript()
        );
        run.spawned.elapsed().as_secs_f64() * 1e3
    };
    let (mut k, mut q) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        k.push(time(&kiln, &k_args, 0));
        q.push(time(&qemu, &q_args, 1));
    }
    println!("VMM overhead: spawn -> guest writes the exit port at its first instruction -> process reaped");
    println!("{runs} runs each, alternating; 128 MiB, 1 vCPU (milliseconds)");
    table_header(&[("VMM", 22), ("min", 7), ("median", 7), ("max", 7)]);
    for (name, v) in [("kiln-vmm", &k), ("QEMU -M microvm", &q)] {
        let (a, b, c) = stats(v);
        println!("| {name:<22} | {a:>7.1} | {b:>7.1} | {c:>7.1} |");
    }
    println!();
    println!("median ratio kiln/QEMU: {:.3}", stats(&k).1 / stats(&q).1);
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("boot") => bench_boot(&args[1..]),
        Some("startup") => bench_startup(&args[1..]),
        Some("overhead") => bench_overhead(&args[1..]),
        Some("virtio") => virtio::bench_virtio(&args[1..]),
        Some("api") => api::bench_api(&args[1..]),
        Some("vms") => vms::bench_vms(&args[1..]),
        Some("net") => net::bench_net(&args[1..]),
        Some("golden") => golden::bench_golden(&args[1..]),
        _ => {
            eprintln!(
                "usage: kiln-bench boot|startup|overhead|virtio|api|vms|net|golden [--runs N] ... (see the top of main.rs)"
            );
            std::process::exit(2);
        }
    }
}
