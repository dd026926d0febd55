//! `kiln-bench api`: how fast kiln-vmm's API is ready (process start → socket accepting and
//! first answer, wall and CPU time) and request latency (p50/p99/max over N requests) for
//! GET / and PUT /machine-config, on one kept-alive connection and with a new connection per
//! request; before boot, and with `--running` also while a guest runs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::api_client::parse_response;
use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm, scratch_dir};

use crate::{arg_num, kiln_args, stats, BOOT_LIMIT, MARKER};

/// CPU time of every thread of `pid` so far, in ms (scheduler statistics: ns resolution).
fn process_cpu_ms(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e6
}

fn request_bytes(method: &str, path: &str, body: &str, close: bool) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// Sends one request on `s` and reads exactly one response; returns its status.
fn exchange(s: &mut UnixStream, req: &[u8]) -> u16 {
    s.write_all(req).expect("sending");
    let mut raw = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(r) = parse_response(&raw) {
            return r.status;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => panic!("connection closed mid-response"),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

fn spawn_api_only(sock: &Path) -> Child {
    Command::new(kiln_vmm())
        .args([
            "--api-sock",
            &sock.display().to_string(),
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning kiln-vmm")
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

struct Startup {
    accept_ms: f64,
    answer_ms: f64,
    cpu_ms: f64,
}

fn startup_once(dir: &Path, i: usize) -> Startup {
    let sock = dir.join(format!("start-{i}.sock"));
    let t0 = Instant::now();
    let child = spawn_api_only(&sock);
    let mut s = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_micros(50));
    };
    let accept_ms = t0.elapsed().as_secs_f64() * 1e3;
    let status = exchange(&mut s, &request_bytes("GET", "/", "", false));
    let answer_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 200);
    let cpu_ms = process_cpu_ms(child.id());
    stop(child);
    Startup {
        accept_ms,
        answer_ms,
        cpu_ms,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latency of `n` requests, in µs: (p50, p99, max).
fn latency(
    sock: &Path,
    method: &str,
    path: &str,
    body: &str,
    n: usize,
    keep_alive: bool,
) -> (f64, f64, f64) {
    let mut samples = Vec::with_capacity(n);
    let req = request_bytes(method, path, body, !keep_alive);
    let mut conn = keep_alive.then(|| UnixStream::connect(sock).expect("connect"));
    for _ in 0..n {
        let t = Instant::now();
        let status = match &mut conn {
            Some(s) => exchange(s, &req),
            None => exchange(&mut UnixStream::connect(sock).expect("connect"), &req),
        };
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(status == 200 || status == 204, "{method} {path}: {status}");
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[n - 1],
    )
}

/// The machine's floor: a thread that answers every request with a fixed 200 at once, over the
/// same kind of socket, measured the same way in the same run.
fn spawn_echo(sock: &Path) {
    let listener = std::os::unix::net::UnixListener::bind(sock).expect("binding the echo socket");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let close = String::from_utf8_lossy(&buf[..n]).contains("Connection: close");
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                    if conn.write_all(reply).is_err() || close {
                        break;
                    }
                }
            });
        }
    });
}

fn latency_table(sock: &Path, n: usize, phase: &str) {
    let mc = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
    let cases: &[(&str, &str, &str)] = if phase == "before boot" {
        &[("GET", "/", ""), ("PUT", "/machine-config", mc)]
    } else {
        // After boot PUT /machine-config is refused (400): GET it instead.
        &[("GET", "/", ""), ("GET", "/machine-config", "")]
    };
    for (method, path, body) in cases {
        for keep in [true, false] {
            let (p50, p99, max) = latency(sock, method, path, body, n, keep);
            println!(
                "| {method} {path} | {phase} | {} | {n} | {p50:.0} | {p99:.0} | {max:.0} |",
                if keep {
                    "kept alive"
                } else {
                    "new per request"
                }
            );
        }
    }
}

pub fn bench_api(args: &[String]) {
    let runs: usize = arg_num(args, "--runs", 20);
    let n: usize = arg_num(args, "--requests", 1000);
    let running = args.iter().any(|a| a == "--running");
    let dir = scratch_dir("bench-api");

    let samples: Vec<Startup> = (0..runs).map(|i| startup_once(&dir, i)).collect();
    let col = |f: fn(&Startup) -> f64| stats(&samples.iter().map(f).collect::<Vec<_>>());
    println!("kiln-vmm --api-sock: process start → API ready ({runs} runs; ms)\n");
    println!("| measure | min | median | max |");
    println!("|---|---|---|---|");
    for (name, (min, med, max)) in [
        (
            "wall: spawn → socket accepts a connection",
            col(|s| s.accept_ms),
        ),
        ("wall: spawn → first GET / answered", col(|s| s.answer_ms)),
        ("CPU (all threads) at the first answer", col(|s| s.cpu_ms)),
    ] {
        println!("| {name} | {min:.2} | {med:.2} | {max:.2} |");
    }

    println!("\nRequest latency (µs)\n");
    println!("| request | VM | connection | n | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    let echo = dir.join("echo.sock");
    spawn_echo(&echo);
    for keep in [true, false] {
        let (p50, p99, max) = latency(&echo, "GET", "/", "", n, keep);
        println!(
            "| floor: fixed reply from a thread | - | {} | {n} | {p50:.0} | {p99:.0} | {max:.0} |",
            if keep {
                "kept alive"
            } else {
                "new per request"
            }
        );
    }
    let sock = dir.join("latency.sock");
    let child = spawn_api_only(&sock);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    latency_table(&sock, n, "before boot");
    stop(child);

    if running {
        let sock: PathBuf = dir.join("running.sock");
        let g = guest_dir();
        let mut a = kiln_args(
            g,
            &[
                "--api-sock",
                &sock.display().to_string(),
                "--serial-out",
                "stdout",
            ],
        );
        if let Some(c) = a.iter().position(|x| x == "--cmdline") {
            a[c + 1] = "console=ttyS0 quiet kiln.action=hold".into();
        }
        let mut run = VmmRun::spawn(&kiln_vmm(), &a);
        assert!(
            run.wait_for_line(MARKER, BOOT_LIMIT).is_some(),
            "{}",
            run.transcript()
        );
        latency_table(&sock, n, "running");
        run.signal(libc::SIGTERM);
        let _ = run.wait_exit(Duration::from_secs(10));
    }
}
