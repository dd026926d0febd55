//! Bad input to kiln-vmm: each case must end with a clear error within a second and leave
//! nothing running (the process has ended, reaped by the test).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm, scratch_dir, tiny_guest};

const LIMIT: Duration = Duration::from_secs(1);

/// Runs kiln-vmm with `args`, expects exit status `code` within a second and `needle` in stderr.
fn expect_error(args: &[&str], code: i32, needle: &str) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut run = VmmRun::spawn(&kiln_vmm(), &args);
    let status = run
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("kiln-vmm {args:?} still running after 10 s"));
    let took = run.spawned.elapsed();
    assert_eq!(status.code(), Some(code), "{args:?}:\n{}", run.transcript());
    assert!(
        run.stderr().contains(needle),
        "{args:?}: stderr lacks {needle:?}:\n{}",
        run.transcript()
    );
    // The exit status above proves kiln-vmm ended; it starts no other process (no seccomp
    // filter allows fork or exec), so nothing of it is left running.
    assert!(took < LIMIT, "{args:?} took {took:?}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p: PathBuf = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn missing_kernel() {
    expect_error(
        &["--kernel", "/nonexistent/kiln/vmlinux"],
        1,
        "cannot open kernel image /nonexistent/kiln/vmlinux: No such file or directory",
    );
}

#[test]
fn garbage_kernel() {
    let dir = scratch_dir("garbage");
    let k = write(&dir, "garbage", &[0x5a; 64 * 1024]);
    expect_error(&["--kernel", &k], 1, "is not a Linux kernel");
}

#[test]
fn kernel_that_is_not_x86_64_elf() {
    let dir = scratch_dir("foreign");
    let k = write(&dir, "aarch64.elf", &tiny_guest::foreign_elf(183));
    expect_error(
        &["--kernel", &k],
        1,
        "not an x86_64 kernel: machine type 183",
    );
    // A host program is an x86_64 ELF, but a position-independent one, not a kernel.
    expect_error(
        &["--kernel", "/bin/true"],
        1,
        "not an x86_64 kernel: ELF type 3",
    );
}

#[test]
fn memory_too_small() {
    let k = guest_dir().join("vmlinux").display().to_string();
    expect_error(
        &["--kernel", &k, "--mem", "4"],
        1,
        "guest memory must be at least 8 MiB",
    );
    expect_error(
        &["--kernel", &k, "--mem", "12"],
        1,
        "guest memory too small: the kernel needs memory up to",
    );
}

#[test]
fn memory_larger_than_the_host() {
    let k = guest_dir().join("vmlinux").display().to_string();
    expect_error(
        &["--kernel", &k, "--mem", "100000000"],
        1,
        "is more than this host has",
    );
}

#[test]
fn over_long_command_line() {
    let k = guest_dir().join("vmlinux").display().to_string();
    let long = "a".repeat(3000);
    expect_error(&["--kernel", &k, "--cmdline", &long], 1, "at most 2048");
    // Fits alone, but not with the platform and CPU-template options in front of it.
    let almost = "b".repeat(2040);
    expect_error(
        &["--kernel", &k, "--cmdline", &almost],
        1,
        "full guest command line",
    );
}

#[test]
fn initrd_larger_than_guest_memory() {
    let dir = scratch_dir("big-initrd");
    let initrd = dir.join("initrd.big");
    let f = std::fs::File::create(&initrd).unwrap();
    f.set_len(256 << 20).unwrap(); // sparse: costs no disk
    let k = guest_dir().join("vmlinux").display().to_string();
    expect_error(
        &[
            "--kernel",
            &k,
            "--initrd",
            &initrd.display().to_string(),
            "--mem",
            "128",
        ],
        1,
        "does not fit in guest memory (128 MiB)",
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_vcpu_count_and_template() {
    let k = guest_dir().join("vmlinux").display().to_string();
    expect_error(&["--kernel", &k, "--vcpus", "0"], 2, "0 is not in 1..=32");
    expect_error(&["--kernel", &k, "--vcpus", "33"], 2, "33 is not in 1..=32");
    expect_error(
        &["--kernel", &k, "--cpu-template", "no-such"],
        1,
        "unknown CPU template \"no-such\"",
    );
    let dir = scratch_dir("template");
    let t = write(&dir, "bad.json", br#"{"cpuid_modifiers": [{"leaf": "0x1", "modifiers": [{"register": "eax", "bitmap": "0b1"}]}]}"#);
    expect_error(&["--kernel", &k, "--cpu-template", &t], 1, "expected 32");
}

/// Bad disk and NIC options: parse errors are usage errors (2); images and TAPs that cannot be
/// used fail the start (1), naming the culprit.
#[test]
fn bad_virtio_device_options() {
    let dir = scratch_dir("bad-virtio");
    let kernel = guest_dir().join("vmlinux").display().to_string();
    let k = kernel.as_str();
    expect_error(
        &["--kernel", k, "--disk", "/nonexistent/kiln.img"],
        1,
        "cannot open disk image /nonexistent/kiln.img: No such file or directory",
    );
    expect_error(
        &["--kernel", k, "--disk", "/tmp,ro"],
        1,
        "disk image /tmp is a directory, not a regular file or block device",
    );
    let empty = write(&dir, "empty.img", b"");
    expect_error(
        &["--kernel", k, "--disk", &empty],
        1,
        "smaller than one 512-byte sector",
    );
    let img = write(&dir, "disk.img", &[0u8; 4096]);
    expect_error(
        &["--kernel", k, "--disk", &format!("{img},rw")],
        2,
        "is not ro or id=NAME",
    );
    expect_error(
        &[
            "--kernel",
            k,
            "--disk",
            &format!("{img},id=way-too-long-serial-number"),
        ],
        2,
        "must be 1 to 20 printable ASCII characters",
    );
    expect_error(
        &["--kernel", k, "--disk", &img, "--disk", &img],
        1,
        "is in use by another process (locked)",
    );
    expect_error(
        &["--kernel", k, "--net", "tap=a/b"],
        2,
        "TAP name \"a/b\" must be",
    );
    expect_error(
        &["--kernel", k, "--net", "tap=kt0,mac=01:00:5e:00:00:01"],
        2,
        "multicast",
    );
    expect_error(
        &["--kernel", k, "--net", "fd=77"],
        1,
        "fd 77 is not a TAP device",
    );
    let many: Vec<String> = (0..20)
        .flat_map(|_| ["--disk".to_string(), format!("{img},ro")])
        .collect();
    let mut args = vec!["--kernel", k];
    args.extend(many.iter().map(String::as_str));
    expect_error(&args, 1, "20 virtio devices requested; at most 19 fit");
}

#[test]
fn bad_config_files_and_api_flags() {
    let dir = scratch_dir("bad-config-file");
    let cases: &[(&str, &str)] = &[
        ("{", "config file"),
        (
            r#"{"boot-source": {"kernel_image_path": "/k"}, "cpus": 2}"#,
            "unknown field `cpus`",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#,
            "no boot source",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "/nonexistent"}}"#,
            "cannot open kernel image /nonexistent",
        ),
        (
            r#"{"vsock": {"guest_cid": 3, "uds_path": "/v"}}"#,
            "does not support vsock",
        ),
    ];
    for (i, (json, needle)) in cases.iter().enumerate() {
        let f = dir.join(format!("c{i}.json"));
        std::fs::write(&f, json).unwrap();
        expect_error(
            &["--no-api", "--config-file", &f.display().to_string()],
            2,
            needle,
        );
    }
    expect_error(&["--log-level", "info"], 2, "nothing to run");
    // A descriptor handed to an API-configured VM is checked before the API serves it; a config
    // file lists its own NICs.
    let sock = dir.join("api.sock").display().to_string();
    expect_error(
        &["--api-sock", &sock, "--net", "fd=77"],
        1,
        "fd 77 is not a TAP device",
    );
    assert!(!Path::new(&sock).exists(), "the API socket was left behind");
    let file = dir.join("c0.json").display().to_string();
    expect_error(
        &["--no-api", "--config-file", &file, "--net", "tap=kt0"],
        2,
        "--net needs --kernel or --api-sock",
    );
    expect_error(
        &["--no-api", "--api-sock", "/tmp/x"],
        2,
        "cannot be used with",
    );
}
