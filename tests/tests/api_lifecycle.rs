//! A real guest driven only through the HTTP API, as a Firecracker client would drive it:
//! configure (logger, metrics, boot source, machine, root and data drives, a NIC, entropy),
//! InstanceStart, pause (the vCPUs really stop) and resume, swap a drive's image, flush
//! metrics, Ctrl-Alt-Del → orderly guest reboot → exit. And the same kind of VM from
//! `--config-file`. Every response is checked against the OpenAPI document.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_tests::api_client::{ApiClient, OpenApi, Response};
use kiln_tests::guest_image::rootfs_with_script;
use kiln_tests::netns::NetNs;
use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm, scratch_dir};

const BOOT_LIMIT: Duration = Duration::from_secs(360);

/// Reports the devices, then spins in user space (natively: no VM exits) printing a tick with
/// the data disk's size now and then, so the host can see the guest run, stop and resize.
const SPIN_SCRIPT: &str = r#"read r < /sys/block/vda/serial
read s < /sys/block/vdb/size
read m < /sys/class/net/eth0/address
echo "GUEST_READY root=$r disk=$s mac=$m"
i=0
while :; do
  i=$((i+1))
  if [ $((i % 20000)) = 0 ]; then
    read s < /sys/block/vdb/size
    echo "TICK $i S=$s"
  fi
done
"#;

struct Checked {
    client: ApiClient,
    spec: OpenApi,
}

impl Checked {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let r = self.client.request(method, path, body);
        self.spec.check(method, path, &r);
        r
    }

    fn ok(&self, method: &str, path: &str, body: &str) {
        let r = self.call(method, path, Some(body));
        assert_eq!(r.status, 204, "{method} {path} {body}: {}", r.body);
    }

    fn state(&self) -> serde_json::Value {
        self.call("GET", "/kiln/v1/state", None).json()
    }
}

fn sparse(path: &Path, bytes: u64) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
}

fn expect_line(run: &mut VmmRun, needle: &str, limit: Duration) {
    assert!(
        run.wait_for_line(needle, limit).is_some(),
        "no {needle:?} within {limit:?}:\n{}",
        run.transcript()
    );
}

#[test]
fn lifecycle_through_the_api_pause_resume_drive_swap_ctrl_alt_del() {
    let dir = scratch_dir("api-lifecycle");
    let root = rootfs_with_script(&dir, SPIN_SCRIPT);
    let (small, big) = (dir.join("data-1m.img"), dir.join("data-2m.img"));
    sparse(&small, 1 << 20);
    sparse(&big, 2 << 20);
    let (sock, log, metrics) = (
        dir.join("api.sock"),
        dir.join("vmm.log"),
        dir.join("metrics.json"),
    );

    let ns = NetNs::new(&format!("kiln-api-{}", std::process::id()));
    let mut cmd = vec![kiln_vmm().display().to_string()];
    cmd.extend(
        [
            "--api-sock",
            &sock.display().to_string(),
            "--id",
            "lifecycle",
            "--boot-timer",
            "--linger",
        ]
        .map(String::from),
    );
    let mut run = VmmRun::spawn(Path::new("ip"), &ns.exec_args(&cmd));
    let api = Checked {
        client: ApiClient::new(&sock),
        spec: OpenApi::load(),
    };
    run.wait_for_socket(&sock, Duration::from_secs(10));

    api.ok(
        "PUT",
        "/logger",
        &format!(
            r#"{{"log_path": "{}", "level": "Info", "show_level": true, "show_log_origin": true}}"#,
            log.display()
        ),
    );
    api.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{}"}}"#, metrics.display()),
    );
    api.ok(
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 quiet kiln.action=run:/kiln-test.sh"}}"#,
            guest_dir().join("vmlinux").display()
        ),
    );
    api.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false}"#,
    );
    // The data drive first: the root drive still becomes /dev/vda.
    api.ok("PUT", "/drives/data", &format!(r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false, "cache_type": "Writeback"}}"#, small.display()));
    api.ok("PUT", "/drives/rootfs", &format!(r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false}}"#, root.display()));
    api.ok(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "kapi0", "guest_mac": "06:00:ac:10:00:02"}"#,
    );
    api.ok("PUT", "/entropy", "{}");
    api.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(api.call("GET", "/", None).json()["state"], "Running");
    assert_eq!(api.state()["state"], "Running");
    assert!(
        ns.has_link("kapi0"),
        "kiln-vmm created the TAP in its namespace"
    );
    // Configuration is frozen now.
    let r = api.call(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#),
    );
    assert!(
        r.status == 400 && r.fault_message().contains("after starting"),
        "{}",
        r.body
    );
    let r = api.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(r.status, 400);

    expect_line(
        &mut run,
        "GUEST_READY root=rootfs disk=2048 mac=06:00:ac:10:00:02",
        BOOT_LIMIT,
    );
    expect_line(&mut run, "TICK", Duration::from_secs(60));
    let boot_us = api.state()["boot_time_us"]
        .as_u64()
        .expect("boot time measured");
    assert!(boot_us > 0);

    // Pause: no vCPU time, no guest output. Resume: both again.
    api.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(api.call("GET", "/", None).json()["state"], "Paused");
    assert_eq!(api.state()["state"], "Paused");
    run.collect(Duration::from_millis(300));
    let (ticks, cpu) = (
        run.count("TICK"),
        run.thread_cpu_ticks("vcpu0").expect("vcpu0 thread"),
    );
    run.collect(Duration::from_secs(3));
    let paused_cpu = run.thread_cpu_ticks("vcpu0").unwrap() - cpu;
    assert_eq!(run.count("TICK"), ticks, "the guest printed while paused");
    assert!(
        paused_cpu <= 2,
        "vcpu0 used {paused_cpu} ticks of CPU while paused"
    );
    api.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(api.call("GET", "/", None).json()["state"], "Running");
    let cpu = run.thread_cpu_ticks("vcpu0").unwrap();
    run.collect(Duration::from_secs(3));
    let running_cpu = run.thread_cpu_ticks("vcpu0").unwrap() - cpu;
    assert!(
        run.count("TICK") > ticks,
        "the guest runs again after resume"
    );
    assert!(
        running_cpu > 20,
        "vcpu0 used only {running_cpu} ticks in 3 s after resume"
    );

    // A new, larger image for the data drive: the guest sees the new size.
    let r = api.call(
        "PATCH",
        "/drives/data",
        Some(r#"{"drive_id": "data", "path_on_host": "/nonexistent.img"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    api.ok(
        "PATCH",
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
            big.display()
        ),
    );
    expect_line(&mut run, "S=4096", Duration::from_secs(60));
    api.ok(
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0"}"#,
    );
    let cfg = api.call("GET", "/vm/config", None).json();
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["drives"][1]["path_on_host"], big.display().to_string());

    api.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a metrics line")).unwrap();
    assert!(
        last["api_server"]["requests"].as_u64().unwrap() >= 15,
        "{last}"
    );
    assert_eq!(last["vmm"]["state"], "Running");
    assert_eq!(last["vmm"]["boot_time_us"].as_u64(), Some(boot_us));

    // Ctrl-Alt-Del: the guest's init syncs and reboots; kiln-vmm stays for --linger.
    api.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    expect_line(
        &mut run,
        "kiln-init: Ctrl-Alt-Del: syncing and rebooting",
        Duration::from_secs(120),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let exited = loop {
        let s = api.state();
        if s["state"] == "Exited" || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(exited["state"], "Exited", "{exited}");
    assert_eq!(exited["exit"]["reason"], "Reboot", "{exited}");
    assert_eq!(exited["exit"]["exit_code"], 0, "{exited}");
    let r = api.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
    assert!(
        r.status == 400 && r.fault_message().contains("exited"),
        "{}",
        r.body
    );

    let log_text = std::fs::read_to_string(&log).expect("log file");
    for needle in [
        "INFO",
        "VM paused",
        "VM resumed",
        "drive data: now",
        "guest rebooted",
        ".rs:",
    ] {
        assert!(
            log_text.contains(needle),
            "log file lacks {needle:?}:\n{log_text}"
        );
    }
    run.signal(libc::SIGTERM);
    let status = run
        .wait_exit(Duration::from_secs(10))
        .expect("kiln-vmm exits on SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "the VM's status: {}",
        run.transcript()
    );
    assert!(!sock.exists(), "API socket removed");
    assert!(!ns.has_link("kapi0"), "the TAP kiln-vmm created is gone");
}

#[test]
fn config_file_boots_the_same_vm_and_get_vm_config_returns_it() {
    let dir = scratch_dir("api-config-file-boot");
    let script = "read r < /sys/block/vda/serial\necho \"CONFIG_GUEST root=$r\"\nexit 7\n";
    let root = rootfs_with_script(&dir, script);
    let sock = dir.join("api.sock");
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest_dir().join("vmlinux").display().to_string(),
            "boot_args": "console=ttyS0 quiet kiln.action=run:/kiln-test.sh"
        },
        "drives": [{
            "drive_id": "rootfs",
            "path_on_host": root.display().to_string(),
            "is_root_device": true,
            "is_read_only": false
        }],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "network-interfaces": [],
        "entropy": {},
        "balloon": null,
        "vsock": null
    });
    let file = dir.join("vm.json");
    std::fs::write(&file, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut run = VmmRun::spawn(
        &kiln_vmm(),
        &[
            "--config-file".into(),
            file.display().to_string(),
            "--api-sock".into(),
            sock.display().to_string(),
        ],
    );
    let api = Checked {
        client: ApiClient::new(&sock),
        spec: OpenApi::load(),
    };
    run.wait_for_socket(&sock, Duration::from_secs(10));
    assert_eq!(api.state()["state"], "Running");
    let served = api.call("GET", "/vm/config", None).json();
    assert_eq!(served["boot-source"], config["boot-source"]);
    assert_eq!(served["machine-config"]["vcpu_count"], 1);
    assert_eq!(served["machine-config"]["mem_size_mib"], 256);
    let drive = &served["drives"][0];
    for key in ["drive_id", "path_on_host", "is_root_device", "is_read_only"] {
        assert_eq!(drive[key], config["drives"][0][key], "{key}");
    }
    assert!(served["entropy"].is_object());
    // What GET /vm/config returns is itself a valid config file.
    let again = dir.join("again.json");
    std::fs::write(&again, served.to_string()).unwrap();
    let mut check = VmmRun::spawn(
        &kiln_vmm(),
        &[
            "--config-file".into(),
            again.display().to_string(),
            "--print-cmdline".into(),
        ],
    );
    let status = check
        .wait_exit(Duration::from_secs(10))
        .expect("--print-cmdline exits");
    assert_eq!(status.code(), Some(0), "{}", check.transcript());
    assert!(
        check
            .wait_for_line("root=/dev/vda rw", Duration::from_secs(1))
            .is_some(),
        "{}",
        check.transcript()
    );

    expect_line(&mut run, "CONFIG_GUEST root=rootfs", BOOT_LIMIT);
    let status = run
        .wait_exit(Duration::from_secs(120))
        .expect("kiln-vmm exits with the guest");
    assert_eq!(status.code(), Some(7), "{}", run.transcript());
    assert!(!sock.exists());
}
