//! Real Linux guests on real KVM: boot to the user-space marker and end the VM each way a
//! guest can (power-off, reboot, panic) or the host can (SIGTERM). Boots are slow where guest
//! ring 0 is emulated (about 30 s here), so each boot checks several things.

use std::time::Duration;

use kiln_tests::process::{Stream, VmmRun};
use kiln_tests::{guest_dir, kiln_vmm};

/// Generous: CI has two cores shared by parallel boots, and a bzImage decompresses emulated.
const BOOT_LIMIT: Duration = Duration::from_secs(360);
const MARKER: &str = "KILN_GUEST_OK";

fn boot(kernel: &str, extra_cmdline: &str, args: &[&str]) -> VmmRun {
    let g = guest_dir();
    let mut all = vec![
        "--kernel".to_string(),
        g.join(kernel).display().to_string(),
        "--initrd".into(),
        g.join("initramfs.cpio").display().to_string(),
        "--cmdline".into(),
        format!("console=ttyS0 quiet {extra_cmdline}"),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    VmmRun::spawn(&kiln_vmm(), &all)
}

fn expect_line(run: &mut VmmRun, needle: &str) {
    let found = run.wait_for_line(needle, BOOT_LIMIT);
    assert!(
        found.is_some(),
        "no {needle:?} within {BOOT_LIMIT:?}:\n{}",
        run.transcript()
    );
}

/// As `expect_line`, and the line is exactly `line` ("KILN_CPUS_ONLINE 0" is not "... 0-1").
fn expect_exact_line(run: &mut VmmRun, line: &str) {
    let found = run.wait_for_line(line, BOOT_LIMIT);
    assert_eq!(
        found.as_ref().map(|l| l.text.trim()),
        Some(line),
        "{}",
        run.transcript()
    );
}

fn expect_exit(run: &mut VmmRun, code: i32, message: &str) {
    let status = run
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("VMM did not exit:\n{}", run.transcript()));
    assert_eq!(status.code(), Some(code), "{}", run.transcript());
    assert!(
        run.stderr().contains(message),
        "no {message:?}:\n{}",
        run.transcript()
    );
}

/// Also the watchdog's regression test: after the marker the init spins in user space
/// (`for (;;);`, one RIP) three times longer than the stuck timeout, which once made kiln-vmm
/// fail a healthy VM ("runnable at RIP 0x401030", exit 4); now the guest powers off on time.
#[test]
fn vmlinux_boots_to_user_space_spins_and_powers_off() {
    let mut run = boot(
        "vmlinux",
        "kiln.action=spin:12",
        &["--boot-timer", "--stuck-timeout", "4"],
    );
    expect_line(&mut run, MARKER);
    let marker = run.seen.iter().find(|l| l.text.contains(MARKER)).cloned();
    assert_eq!(
        marker.map(|l| l.stream),
        Some(Stream::Stdout),
        "the console is on stdout"
    );
    expect_exact_line(&mut run, "KILN_CPUS_ONLINE 0");
    // The init wrote 123 to the boot-timer page after printing the marker.
    expect_line(&mut run, "guest boot time: ");
    expect_line(&mut run, "KILN_SPINNING");
    expect_line(&mut run, "spun in user space");
    expect_exit(&mut run, 0, "guest powered off (status 0)");
    let first = run.stderr();
    assert!(!first.contains("runnable at RIP"), "{first}");
    assert!(
        first.contains("CPU template: pvm-host") || !kiln_tests::host_is_pvm(),
        "{first}"
    );
    assert!(
        first.contains("Pvh entry"),
        "vmlinux boots through its PVH entry: {first}"
    );
}

#[test]
fn two_vcpus_boot_and_guest_reboot_ends_the_vmm() {
    let mut run = boot("vmlinux", "kiln.action=reboot", &["--vcpus", "2"]);
    expect_line(&mut run, MARKER);
    expect_exact_line(&mut run, "KILN_CPUS_ONLINE 0-1");
    expect_exit(&mut run, 0, "guest rebooted");
}

#[test]
fn bzimage_boots_and_a_guest_panic_is_a_failure() {
    let mut run = boot("bzImage", "kiln.action=panic", &[]);
    expect_line(&mut run, MARKER);
    expect_line(&mut run, "Kernel panic - not syncing");
    expect_exit(&mut run, 3, "guest kernel panicked");
    assert!(
        run.stderr().contains("Linux64 entry"),
        "{}",
        run.transcript()
    );
}

#[test]
fn sigterm_stops_a_booting_vm_cleanly() {
    let mut run = boot("vmlinux", "", &[]);
    expect_line(&mut run, "first guest instruction");
    std::thread::sleep(Duration::from_secs(2));
    run.signal(libc::SIGTERM);
    let status = run
        .wait_exit(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("still running 3 s after SIGTERM:\n{}", run.transcript()));
    assert_eq!(status.code(), Some(143), "{}", run.transcript());
    assert!(
        run.stderr().contains("stopped by signal 15"),
        "{}",
        run.transcript()
    );
}
