//! Compatibility with a real Firecracker client: the official Firecracker Go SDK
//! (github.com/firecracker-microvm/firecracker-go-sdk v1.0.0, from the Go module proxy) runs
//! kiln-vmm in place of the firecracker binary and drives a guest through its whole life:
//! configure, start, pause, resume, Ctrl-Alt-Del shutdown. The program is
//! tests/firecracker-sdk/main.go; Go's module and build caches keep rebuilds cheap.

use std::process::Command;
use std::time::Duration;

use kiln_tests::guest_image::rootfs_with_script;
use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm, scratch_dir, workspace_root};

#[test]
fn the_firecracker_go_sdk_drives_kiln_vmm_unchanged() {
    let dir = scratch_dir("firecracker-sdk");
    let program = dir.join("firecracker-sdk");
    let src = workspace_root().join("tests/firecracker-sdk");
    let out = Command::new("go")
        .args(["build", "-mod=readonly", "-o"])
        .arg(&program)
        .arg(".")
        .current_dir(&src)
        .output()
        .unwrap_or_else(|e| panic!("running go (needed for this test; CI machines have it): {e}"));
    assert!(
        out.status.success(),
        "go build in {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );

    let root = rootfs_with_script(&dir, "echo SDK_GUEST_READY\nsleep 100000\n");
    let args = [
        kiln_vmm().display().to_string(),
        guest_dir().join("vmlinux").display().to_string(),
        root.display().to_string(),
        dir.join("api.sock").display().to_string(),
        "SDK_GUEST_READY".to_string(),
    ];
    let mut run = VmmRun::spawn(&program, &args);
    let status = run
        .wait_exit(Duration::from_secs(600))
        .unwrap_or_else(|| panic!("the SDK program did not finish:\n{}", run.transcript()));
    let transcript = run.transcript();
    assert_eq!(status.code(), Some(0), "{transcript}");
    for needle in [
        "putGuestBootSourceNoContent",
        "putGuestDriveByIdNoContent",
        "startInstance successful",
        "SDK_GUEST_READY",
        "VM paused",
        "VM resumed",
        "kiln-init: Ctrl-Alt-Del: syncing and rebooting",
        "firecracker exited: status=0",
        "SDK_OK",
    ] {
        assert!(transcript.contains(needle), "no {needle:?}:\n{transcript}");
    }
}
