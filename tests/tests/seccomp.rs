//! seccomp on real KVM with tiny guests: the built-in filters let a VM boot and stop, and a
//! system call outside a thread's list is fatal for each thread kind (main, vCPU, API), with a
//! line naming the thread and the call and a metrics record; every thread drops its capabilities.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_tests::api_vm::ApiVm;
use kiln_tests::process::VmmRun;
use kiln_tests::{kiln_vmm, scratch_dir, tiny_guest, workspace_root};

const EXIT_BAD_SYSCALL: i32 = 148;

/// The built-in filters with `syscall` taken out of `kind`'s list, written to `dir`.
fn filters_without(dir: &Path, kind: &str, syscall: &str) -> PathBuf {
    let path = workspace_root().join("resources/seccomp/x86_64.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rules = doc[kind]["filter"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| r["syscall"] != syscall);
    assert_eq!(rules.len(), before - 1, "{kind} allows {syscall} today");
    let out = dir.join(format!("without-{kind}-{syscall}.json"));
    std::fs::write(&out, doc.to_string()).unwrap();
    out
}

fn tiny_kernel(dir: &Path, code: &[u8]) -> String {
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, tiny_guest::pvh_elf(code)).unwrap();
    kernel.display().to_string()
}

fn flags_vm(kernel: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--kernel", kernel, "--mem", "16", "--serial-out", "none"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs the tiny guest `kernel` with `extra` flags; expects exit status `code` within 10 s.
fn expect_exit(kernel: &str, extra: &[&str], code: i32) -> VmmRun {
    let mut run = VmmRun::spawn(&kiln_vmm(), &flags_vm(kernel, extra));
    let status = run.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(code),
        "{}",
        run.transcript()
    );
    run
}

fn expect_killed(run: &mut VmmRun, thread: &str, syscall: u32) {
    let status = run.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(EXIT_BAD_SYSCALL),
        "{}",
        run.transcript()
    );
    let want = format!("seccomp: thread {thread} made system call {syscall},");
    assert!(run.stderr().contains(&want), "{want}\n{}", run.transcript());
}

#[test]
fn the_built_in_filters_are_on_by_default_and_a_vm_runs_under_them() {
    let dir = scratch_dir("seccomp-default");
    let kernel = tiny_kernel(&dir, &tiny_guest::debug_exit(42));
    let run = expect_exit(&kernel, &[], 42);
    assert!(
        !run.stderr().contains("seccomp filters are off"),
        "{}",
        run.transcript()
    );
    let off = expect_exit(&kernel, &["--no-seccomp"], 42);
    assert!(
        off.stderr().contains("seccomp filters are off"),
        "{}",
        off.transcript()
    );
}

#[test]
fn every_thread_of_a_running_vm_is_filtered_and_holds_no_capabilities() {
    let dir = scratch_dir("seccomp-proc");
    let kernel = tiny_kernel(&dir, tiny_guest::SPIN);
    let mut vm = ApiVm::spawn(&dir, &["--serial-out", "none", "--stuck-timeout", "0"]);
    vm.configure_tiny(Path::new(&kernel), None, 2);
    // Answered once every thread has installed its filter.
    vm.start();
    let run = &mut vm.run;
    let tasks = PathBuf::from(format!("/proc/{}/task", run.pid()));
    let mut seen = Vec::new();
    for t in std::fs::read_dir(&tasks).unwrap() {
        let t = t.unwrap().path();
        let name = std::fs::read_to_string(t.join("comm"))
            .unwrap()
            .trim()
            .to_string();
        if name.starts_with("kvm-") {
            continue; // KVM's own kernel worker (kvm-nx-lpage-recovery), not a kiln-vmm thread
        }
        let status = std::fs::read_to_string(t.join("status")).unwrap();
        let seccomp = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
        let nnp = status
            .lines()
            .find(|l| l.starts_with("NoNewPrivs:"))
            .unwrap();
        assert!(seccomp.ends_with('2'), "{name}: {seccomp}");
        assert!(nnp.ends_with('1'), "{name}: {nnp}");
        // The test runs as root: the threads started with every capability and dropped them.
        for set in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:", "CapBnd:"] {
            let line = status.lines().find(|l| l.starts_with(set)).unwrap();
            assert!(line.ends_with("0000000000000000"), "{name}: {line}");
        }
        seen.push(name);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["api", "kiln-vmm", "vcpu0", "vcpu1"],
        "threads of the running VM"
    );
    run.signal(libc::SIGTERM);
    assert_eq!(
        run.wait_exit(Duration::from_secs(5)).and_then(|s| s.code()),
        Some(143)
    );
}

#[test]
fn a_forbidden_call_on_a_vcpu_thread_is_fatal_and_counted_in_metrics() {
    let dir = scratch_dir("seccomp-vcpu");
    let kernel = tiny_kernel(&dir, tiny_guest::SPIN);
    let filter = filters_without(&dir, "vcpu", "ioctl").display().to_string();
    let metrics = dir.join("metrics.json");
    let vm = ApiVm::spawn(&dir, &["--serial-out", "none", "--seccomp-filter", &filter]);
    vm.configure_tiny(Path::new(&kernel), None, 1);
    vm.put_ok(
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    let ApiVm { mut run, api } = vm;
    // The reply may or may not arrive before the process dies: KVM_RUN is the vCPU's first ioctl.
    let body = r#"{"action_type": "InstanceStart"}"#;
    let mut s = api.connect();
    let request = format!(
        "PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = std::io::Write::write_all(&mut s, request.as_bytes());
    expect_killed(&mut run, "vcpu0", libc::SYS_ioctl as u32);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["seccomp"]["num_faults"], 1, "{text}");
    assert_eq!(last["seccomp"]["thread"], "vcpu0", "{text}");
    assert_eq!(last["seccomp"]["syscall"], libc::SYS_ioctl, "{text}");
}

#[test]
fn a_forbidden_call_on_the_main_thread_is_fatal() {
    let dir = scratch_dir("seccomp-main");
    let kernel = tiny_kernel(&dir, tiny_guest::SPIN);
    let filter = filters_without(&dir, "main", "epoll_wait");
    let f = filter.display().to_string();
    let mut run = VmmRun::spawn(
        &kiln_vmm(),
        &flags_vm(&kernel, &["--seccomp-filter", &f, "--stuck-timeout", "0"]),
    );
    expect_killed(&mut run, "main", libc::SYS_epoll_wait as u32);
}

#[test]
fn a_forbidden_call_on_the_api_thread_is_fatal() {
    let dir = scratch_dir("seccomp-api");
    let filter = filters_without(&dir, "api", "accept4");
    let sock = dir.join("api.sock");
    let args = [
        "--api-sock".to_string(),
        sock.display().to_string(),
        "--seccomp-filter".into(),
        filter.display().to_string(),
    ];
    let mut run = VmmRun::spawn(&kiln_vmm(), &args);
    // The first connection makes the server accept it.
    run.wait_for_socket(&sock, Duration::from_secs(10));
    expect_killed(&mut run, "api", libc::SYS_accept4 as u32);
}

#[test]
fn a_bad_filter_file_is_a_clear_error() {
    let dir = scratch_dir("seccomp-bad-file");
    let kernel = tiny_kernel(&dir, &tiny_guest::debug_exit(0));
    let partial = dir.join("partial.json");
    std::fs::write(
        &partial,
        r#"{"main": {"default_action": "trap", "filter_action": "allow", "filter": [{"syscall": "read"}]}}"#,
    )
    .unwrap();
    let p = partial.display().to_string();
    let run = expect_exit(&kernel, &["--seccomp-filter", &p], 1);
    assert!(
        run.stderr().contains("has no filter for the vcpu threads"),
        "{}",
        run.transcript()
    );
}

/// Large request bodies grow and then shrink the API thread's heap: with glibc's per-thread
/// arenas the first shrink opened /proc/sys/vm/overcommit_memory under the filter and killed
/// kiln-vmm (seen as a flaky api_robustness run). One arena never does.
#[test]
fn large_request_bodies_on_the_api_thread_stay_inside_its_filter() {
    let dir = scratch_dir("seccomp-big-bodies");
    let vm = ApiVm::spawn(&dir, &["--http-api-max-payload-size", "1000000"]);
    for pad in [70_000, 100_000, 120_000, 100_000, 500_000, 90_000] {
        let body = format!(
            r#"{{"vcpu_count": 1, "mem_size_mib": 128{}}}"#,
            " ".repeat(pad)
        );
        vm.put_ok("/machine-config", &body);
    }
    assert_eq!(
        vm.api.get("/machine-config").status,
        200,
        "{}",
        vm.run.transcript()
    );
}
