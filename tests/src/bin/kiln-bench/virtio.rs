//! kiln-bench virtio: disk and TCP throughput and the VMM's CPU time per GB moved, kiln-vmm
//! vs QEMU microvm on the same guest, disks and TAP (in a private network namespace).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_tests::guest_image::rootfs_with_script;
use kiln_tests::netns::NetNs;
use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm, scratch_dir};

use super::{arg_value, qemu_args, stats};

const LIMIT: Duration = Duration::from_secs(1200);
const CMDLINE: &str = "console=ttyS0 quiet root=/dev/vda rw kiln.action=run:/kiln-test.sh";
const DATA_DISK_MIB: u64 = 64;
const MAC: &str = "06:00:0a:00:02:02";

struct Params {
    disk_mib: u64,
    rand_secs: u64,
    net_mib: u64,
}

fn script(p: &Params) -> String {
    format!(
        r#"set -e
ip link set eth0 up
ip addr add 10.0.2.2/24 dev eth0
for d in /sys/block/vd*; do [ "$(cat $d/serial)" = kiln-data ] && DATA=/dev/${{d##*/}}; done
echo BENCH_START
kiln-iobench seqread $DATA {disk}
kiln-iobench seqwrite $DATA {disk}
kiln-iobench randread $DATA {rand}
kiln-iobench tcprecv 10.0.2.1 5001
kiln-iobench tcpsend 10.0.2.1 5002 {net}
echo BENCH_END
"#,
        disk = p.disk_mib,
        rand = p.rand_secs,
        net = p.net_mib
    )
}

/// One run's figures: MB/s for seqread, seqwrite, tcprecv (host → guest), tcpsend; IOPS for
/// randread; VMM CPU ms (all threads but the vCPUs') per GB moved.
#[derive(Default)]
struct Sample {
    seqread: f64,
    seqwrite: f64,
    randread_iops: f64,
    tcp_to_guest: f64,
    tcp_from_guest: f64,
    cpu_ms_per_gb: f64,
}

/// CPU seconds of every thread of `pid` except the vCPU threads (kiln-vmm "vcpuN",
/// QEMU "CPU N/KVM"): the device and event-loop work.
pub(crate) fn non_vcpu_cpu_secs(pid: i32) -> f64 {
    let tick = 100.0; // USER_HZ
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        if comm.starts_with("vcpu") || comm.starts_with("CPU ") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; here indices 11 and 12.
        let ticks: f64 =
            fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        total += ticks / tick;
    }
    total
}

fn result(run: &mut VmmRun, test: &str) -> (f64, f64, f64) {
    let line = run
        .wait_for_line(&format!("RESULT {test} "), LIMIT)
        .unwrap_or_else(|| panic!("no {test} result:\n{}", run.transcript()));
    let f: Vec<f64> = line
        .text
        .split_whitespace()
        .skip(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    (f[0], f[1], f[2])
}

fn run_once(kiln: bool, p: &Params, dir: &Path, ns: &NetNs) -> Sample {
    let root = rootfs_with_script(dir, &script(p));
    let data = dir.join("data.img");
    let pattern: Vec<u8> = (0..DATA_DISK_MIB << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&data, pattern).expect("writing the data disk");
    let net_bytes = (p.net_mib << 20) as usize;
    let server = ns.spawn_inside(move || {
        let to_guest = TcpListener::bind("10.0.2.1:5001").expect("bind 5001");
        let from_guest = TcpListener::bind("10.0.2.1:5002").expect("bind 5002");
        let (mut c, _) = to_guest.accept().expect("accept 5001");
        c.write_all(&vec![0x5au8; net_bytes]).expect("send");
        drop(c);
        let (mut c, _) = from_guest.accept().expect("accept 5002");
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
        sink.len()
    });

    let g = guest_dir();
    let vmm: Vec<String> = if kiln {
        vec![
            kiln_vmm().display().to_string(),
            "--kernel".into(),
            g.join("vmlinux").display().to_string(),
            "--mem".into(),
            "128".into(),
            "--serial-out".into(),
            "stdout".into(),
            "--cmdline".into(),
            CMDLINE.into(),
            "--disk".into(),
            format!("{},id=kiln-root", root.display()),
            "--disk".into(),
            format!("{},id=kiln-data", data.display()),
            "--net".into(),
            format!("tap=kt0,mac={MAC}"),
        ]
    } else {
        let cmdline = super::full_cmdline_with(&kiln_vmm(), g, CMDLINE);
        let mut a = vec!["qemu-system-x86_64".to_string()];
        a.extend(qemu_args(&[
            // Names the vCPU threads "CPU 0/KVM", so that their time can be told apart.
            "-name",
            "kiln-bench,debug-threads=on",
            "-nodefaults",
            "-serial",
            "stdio",
            "-kernel",
            &g.join("vmlinux").display().to_string(),
            "-append",
            &cmdline,
            "-drive",
            &format!("id=root,file={},format=raw,if=none", root.display()),
            "-device",
            "virtio-blk-device,drive=root,serial=kiln-root",
            "-drive",
            &format!("id=data,file={},format=raw,if=none", data.display()),
            "-device",
            "virtio-blk-device,drive=data,serial=kiln-data",
            "-netdev",
            "tap,id=n0,ifname=kt0,script=no,downscript=no",
            "-device",
            &format!("virtio-net-device,netdev=n0,mac={MAC}"),
        ]));
        a
    };
    let mut run = VmmRun::spawn(Path::new("ip"), &ns.exec_args(&vmm));
    run.wait_for_line("BENCH_START", LIMIT)
        .unwrap_or_else(|| panic!("guest did not start the benchmark:\n{}", run.transcript()));
    let cpu0 = non_vcpu_cpu_secs(run.pid());
    let sr = result(&mut run, "seqread");
    let sw = result(&mut run, "seqwrite");
    let rr = result(&mut run, "randread");
    let tr = result(&mut run, "tcprecv");
    let ts = result(&mut run, "tcpsend");
    run.wait_for_line("BENCH_END", LIMIT)
        .unwrap_or_else(|| panic!("no BENCH_END:\n{}", run.transcript()));
    let cpu = non_vcpu_cpu_secs(run.pid()) - cpu0;
    if run.wait_exit(Duration::from_secs(60)).is_none() {
        run.signal(libc::SIGTERM);
        let _ = run.wait_exit(Duration::from_secs(10));
    }
    let received = server.join().expect("host server");
    assert_eq!(received, net_bytes, "host received a short stream");
    let moved = sr.0 + sw.0 + rr.0 + tr.0 + ts.0;
    let mbs = |r: (f64, f64, f64)| r.0 / r.1 / 1e6;
    Sample {
        seqread: mbs(sr),
        seqwrite: mbs(sw),
        randread_iops: rr.2 / rr.1,
        tcp_to_guest: mbs(tr),
        tcp_from_guest: mbs(ts),
        cpu_ms_per_gb: cpu * 1e3 / (moved / 1e9),
    }
}

pub fn bench_virtio(args: &[String]) {
    let num = |name: &str, default: u64| {
        arg_value(args, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = num("--runs", 3) as usize;
    let p = Params {
        disk_mib: num("--disk-mib", 4),
        rand_secs: num("--rand-secs", 10),
        net_mib: num("--net-mib", 1),
    };
    let dir: PathBuf = scratch_dir("bench-virtio");
    let ns = NetNs::with_tap(
        &format!("kiln-bench-{}", std::process::id()),
        "kt0",
        "10.0.2.1/24",
    );
    println!(
        "virtio benchmark: {runs} alternating runs each; {} MiB sequential (O_DIRECT, 1 MiB), \
         4 KiB random reads for {} s, {} MiB TCP each way; guest 1 vCPU, 128 MiB",
        p.disk_mib, p.rand_secs, p.net_mib
    );
    let (mut k, mut q) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for kiln in [true, false] {
            let s = run_once(kiln, &p, &dir, &ns);
            println!(
                "run {i} {:5}: seqread {:.3} MB/s, seqwrite {:.3} MB/s, randread {:.1} IOPS, \
                 tcp to guest {:.4} MB/s, from guest {:.4} MB/s, VMM CPU {:.0} ms/GB",
                if kiln { "kiln" } else { "qemu" },
                s.seqread,
                s.seqwrite,
                s.randread_iops,
                s.tcp_to_guest,
                s.tcp_from_guest,
                s.cpu_ms_per_gb
            );
            if kiln {
                k.push(s)
            } else {
                q.push(s)
            }
        }
    }
    println!();
    println!("| metric (median of {runs}) | kiln-vmm | QEMU microvm | kiln / QEMU |");
    println!("|---|---|---|---|");
    type Get = fn(&Sample) -> f64;
    let rows: [(&str, Get); 6] = [
        ("sequential read MB/s", |s| s.seqread),
        ("sequential write MB/s", |s| s.seqwrite),
        ("4 KiB random read IOPS", |s| s.randread_iops),
        ("TCP host → guest MB/s", |s| s.tcp_to_guest),
        ("TCP guest → host MB/s", |s| s.tcp_from_guest),
        ("VMM CPU ms per GB moved (lower is better)", |s| {
            s.cpu_ms_per_gb
        }),
    ];
    for (name, get) in rows {
        let km = stats(&k.iter().map(get).collect::<Vec<_>>()).1;
        let qm = stats(&q.iter().map(get).collect::<Vec<_>>()).1;
        println!("| {name} | {km:.4} | {qm:.4} | {:.3} |", km / qm);
    }
    drop(ns);
    let _ = std::fs::remove_dir_all(dir);
}
