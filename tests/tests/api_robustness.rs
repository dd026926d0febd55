//! The HTTP API before boot (no guest needed): every error case answered clearly and as the
//! OpenAPI document says, hostile clients dropped without harm, the socket private, stale
//! sockets replaced, live ones left alone. (Bad config files and API flags: bad_input.rs.)

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_tests::api_client::{parse_response, ApiClient, OpenApi, Response};
use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm, scratch_dir};

struct Api {
    run: VmmRun,
    client: ApiClient,
    spec: OpenApi,
}

impl Api {
    fn start(dir: &Path, extra: &[&str]) -> Api {
        let sock = dir.join("api.sock");
        let mut args = vec!["--api-sock".to_string(), sock.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut run = VmmRun::spawn(&kiln_vmm(), &args);
        run.wait_for_socket(&sock, Duration::from_secs(10));
        let client = ApiClient::new(&sock);
        Api {
            run,
            client,
            spec: OpenApi::load(),
        }
    }

    /// Sends a request and checks the answer against the OpenAPI document.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let r = self.client.request(method, path, body);
        self.spec.check(method, path, &r);
        r
    }

    fn expect_400(&self, method: &str, path: &str, body: &str, needle: &str) {
        let r = self.call(method, path, Some(body));
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.body);
        assert!(
            r.fault_message().contains(needle),
            "{method} {path} {body}: want {needle:?} in {:?}",
            r.fault_message()
        );
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.run.signal(libc::SIGTERM);
        let _ = self.run.wait_exit(Duration::from_secs(10));
    }
}

fn kernel() -> String {
    guest_dir().join("vmlinux").display().to_string()
}

fn image(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(bytes).unwrap();
    p
}

#[test]
fn errors_are_clear_and_documented_and_configuration_round_trips() {
    let dir = scratch_dir("api-errors");
    let api = Api::start(&dir, &["--id", "errors-vm"]);
    let info = api.call("GET", "/", None);
    assert_eq!(info.status, 200);
    assert_eq!(info.json()["id"], "errors-vm");
    assert_eq!(info.json()["state"], "Not started");
    assert_eq!(api.call("GET", "/version", None).status, 200);
    assert_eq!(
        api.call("GET", "/kiln/v1/state", None).json()["state"],
        "NotStarted"
    );

    // Paths, methods, bodies.
    assert_eq!(api.call("GET", "/balloon", None).status, 404);
    assert_eq!(api.call("GET", "/drives", None).status, 404);
    let r = api.call("DELETE", "/machine-config", None);
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, PUT, PATCH"))
    );
    assert_eq!(api.call("POST", "/actions", Some("{}")).status, 405);
    api.expect_400(
        "PUT",
        "/machine-config",
        "{\"vcpu_count\": 1,",
        "Invalid JSON body",
    );
    api.expect_400("PUT", "/machine-config", "", "Empty PUT");
    api.expect_400(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_count": 2}"#,
        "unknown field `cpu_count`",
    );
    api.expect_400(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": "two", "mem_size_mib": 128}"#,
        "invalid type",
    );
    api.expect_400(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 0, "mem_size_mib": 128}"#,
        "vCPU count",
    );
    api.expect_400(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 2}"#,
        "at least",
    );
    api.expect_400(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": true}"#,
        "smt",
    );
    api.expect_400(
        "PATCH",
        "/machine-config",
        r#"{"huge_pages": "2M"}"#,
        "huge_pages",
    );
    api.expect_400(
        "PUT",
        "/actions",
        r#"{"action_type": "Reboot"}"#,
        "unknown variant",
    );

    // Before boot only what makes sense before boot.
    api.expect_400("PATCH", "/vm", r#"{"state": "Paused"}"#, "before starting");
    api.expect_400(
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
        "before starting",
    );
    api.expect_400(
        "PATCH",
        "/drives/root",
        r#"{"drive_id": "root", "path_on_host": "/x"}"#,
        "before starting",
    );
    api.expect_400(
        "PUT",
        "/actions",
        r#"{"action_type": "FlushMetrics"}"#,
        "PUT /metrics first",
    );
    api.expect_400(
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        "no boot source",
    );

    // Resources are checked when they are put, and a refused one changes nothing.
    api.expect_400(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
        "cannot open kernel image /nonexistent/vmlinux",
    );
    let a = image(&dir, "a.img", 1 << 20);
    let b = image(&dir, "b.img", 1 << 20);
    let drive = |id: &str, path: &Path, root: bool| {
        format!(
            r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": {root}, "is_read_only": false}}"#,
            path.display()
        )
    };
    api.expect_400(
        "PUT",
        "/drives/root",
        &drive("other", &a, true),
        "does not match",
    );
    api.expect_400(
        "PUT",
        "/drives/bad.id",
        &drive("bad.id", &a, true),
        "Invalid drive_id",
    );
    api.expect_400(
        "PUT",
        "/drives/root",
        &drive("root", &dir.join("missing.img"), true),
        "cannot open drive image",
    );
    assert_eq!(
        api.call("PUT", "/drives/root", Some(&drive("root", &a, true)))
            .status,
        204
    );
    api.expect_400(
        "PUT",
        "/drives/data",
        &drive("data", &b, true),
        "both root devices",
    );
    api.expect_400(
        "PUT",
        "/drives/data",
        &drive("data", &a, false),
        "same image",
    );
    api.expect_400(
        "PUT",
        "/drives/data",
        &format!(r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "rate_limiter": {{"bandwidth": {{"size": 1, "refill_time": 1}}}}}}"#, b.display()),
        "rate_limiter",
    );
    assert_eq!(
        api.call("PUT", "/drives/data", Some(&drive("data", &b, false)))
            .status,
        204
    );
    api.expect_400(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "01:00:00:00:00:01"}"#,
        "multicast",
    );
    let nic =
        r#"{"iface_id": "eth0", "host_dev_name": "kiln-t0", "guest_mac": "06:00:ac:10:00:02"}"#;
    assert_eq!(
        api.call("PUT", "/network-interfaces/eth0", Some(nic))
            .status,
        204
    );
    api.expect_400(
        "PUT",
        "/network-interfaces/eth1",
        r#"{"iface_id": "eth1", "host_dev_name": "kiln-t0"}"#,
        "same TAP",
    );
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
        kernel()
    );
    assert_eq!(api.call("PUT", "/boot-source", Some(&boot)).status, 204);
    assert_eq!(
        api.call(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#)
        )
        .status,
        204
    );
    assert_eq!(
        api.call("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 192}"#))
            .status,
        204
    );
    assert_eq!(api.call("PUT", "/entropy", Some("{}")).status, 204);
    let mc = api.call("GET", "/machine-config", None).json();
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(2), Some(192))
    );

    let cfg = api.call("GET", "/vm/config", None).json();
    assert_eq!(cfg["boot-source"]["kernel_image_path"], kernel().as_str());
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 192);
    let drives = cfg["drives"].as_array().unwrap();
    assert_eq!(drives.len(), 2);
    assert_eq!(drives[0]["drive_id"], "root");
    assert_eq!(drives[0]["is_root_device"], true);
    assert_eq!(drives[1]["path_on_host"], b.display().to_string());
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "kiln-t0");
    assert_eq!(
        cfg["network-interfaces"][0]["guest_mac"],
        "06:00:ac:10:00:02"
    );
    assert!(cfg["entropy"].is_object());
    // Still the same VM, still not started.
    assert_eq!(api.call("GET", "/", None).json()["state"], "Not started");
}

/// Reads until EOF or `timeout`; true if the server closed the connection.
fn closed_within(s: &mut UnixStream, timeout: Duration) -> (bool, Vec<u8>) {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut raw = Vec::new();
    let closed = s.read_to_end(&mut raw).is_ok();
    (closed, raw)
}

#[test]
fn hostile_clients_are_refused_or_dropped_and_others_are_unaffected() {
    let dir = scratch_dir("api-hostile");
    let api = Api::start(&dir, &["--http-api-max-payload-size", "4096"]);

    // A body over the limit, announced or not.
    let big = format!(r#"{{"kernel_image_path": "{}"}}"#, "x".repeat(5000));
    let r = api.call("PUT", "/boot-source", Some(&big));
    assert_eq!(r.status, 413, "{}", r.body);
    let mut s = api.client.connect();
    let chunk = "y".repeat(3000);
    let chunked = format!(
        "PUT /boot-source HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    s.write_all(chunked.as_bytes()).unwrap();
    let (_, raw) = closed_within(&mut s, Duration::from_secs(10));
    let r = parse_response(&raw).expect("a response to the chunked upload");
    assert_eq!(r.status, 413);
    api.spec.check("PUT", "/boot-source", &r);

    // Not HTTP at all.
    let mut s = api.client.connect();
    s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let (closed, raw) = closed_within(&mut s, Duration::from_secs(10));
    assert!(closed, "garbage must end the connection");
    if let Some(r) = parse_response(&raw) {
        assert_eq!(r.status, 400);
    }

    // A client that sends one byte a second is cut off, and meanwhile others are served fast.
    let slow_sock = api.client.socket.clone();
    let slow = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&slow_sock).unwrap();
        let started = Instant::now();
        for b in b"GET / HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
            if s.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        started.elapsed()
    });
    // A client that starts a body and disconnects.
    {
        let mut s = api.client.connect();
        s.write_all(
            b"PUT /machine-config HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"vcpu",
        )
        .unwrap();
    }
    // A client that announces a body and never sends it: answered 408 after the timeout.
    let stalled_sock = api.client.socket.clone();
    let stalled = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&stalled_sock).unwrap();
        s.write_all(b"PUT /machine-config HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
        closed_within(&mut s, Duration::from_secs(20)).1
    });
    // Many clients at once.
    let started = Instant::now();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let c = api.client.clone();
            std::thread::spawn(move || c.get("/").status)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    let many = started.elapsed();
    assert!(many < Duration::from_secs(5), "100 clients took {many:?}");
    let t = Instant::now();
    assert_eq!(api.call("GET", "/", None).status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "GET / took {:?} next to a slow client",
        t.elapsed()
    );

    let cut_after = slow.join().unwrap();
    assert!(
        cut_after < Duration::from_secs(15),
        "slow client kept for {cut_after:?}"
    );
    let r = parse_response(&stalled.join().unwrap()).expect("a response to the stalled body");
    assert_eq!(r.status, 408);
    api.spec.check("PUT", "/machine-config", &r);
    // And the VMM is as it was.
    assert_eq!(
        api.call("GET", "/machine-config", None).json()["vcpu_count"],
        1
    );
}

#[test]
fn socket_is_private_stale_sockets_are_replaced_and_live_ones_kept() {
    let dir = scratch_dir("api-socket");
    let sock = dir.join("api.sock");
    // A socket file nobody listens on, as a killed VMM leaves behind.
    drop(UnixListener::bind(&sock).unwrap());
    let mut api = Api::start(&dir, &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "API socket mode {mode:o}");

    // A second VMM on a live socket refuses, and the first keeps serving.
    let mut second = VmmRun::spawn(
        &kiln_vmm(),
        &["--api-sock".into(), sock.display().to_string()],
    );
    let status = second
        .wait_exit(Duration::from_secs(10))
        .expect("second VMM exits");
    assert_eq!(status.code(), Some(1), "{}", second.transcript());
    assert!(
        second.stderr().contains("already listening"),
        "{}",
        second.transcript()
    );
    assert_eq!(api.call("GET", "/", None).status, 200);

    // Something that is not a socket is never replaced.
    let file = dir.join("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let mut third = VmmRun::spawn(
        &kiln_vmm(),
        &["--api-sock".into(), file.display().to_string()],
    );
    let status = third
        .wait_exit(Duration::from_secs(10))
        .expect("third VMM exits");
    assert_eq!(status.code(), Some(1), "{}", third.transcript());
    assert!(
        third.stderr().contains("not a socket"),
        "{}",
        third.transcript()
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    // SIGTERM while waiting for configuration: exit 128+15, socket removed.
    api.run.signal(libc::SIGTERM);
    let status = api
        .run
        .wait_exit(Duration::from_secs(10))
        .expect("VMM exits on SIGTERM");
    assert_eq!(status.code(), Some(143), "{}", api.run.transcript());
    assert!(!sock.exists(), "socket left behind");
}
