//! virtio-blk, virtio-net and virtio-rng with real I/O in real Linux guests on real KVM. The
//! guest boots from an ext4 root on virtio-blk and runs a test script (kiln.action=run:...);
//! the host checks the results from outside. Each boot checks several things: boots are slow
//! where guest ring 0 is emulated.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use devices::virtio::net::Tap;
use kiln_tests::guest_image::{debugfs_read, e2fsck, rootfs_with_script, sha256_file};
use kiln_tests::netns::NetNs;
use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm, scratch_dir};

/// Boot plus a script of a dozen busybox commands (each fork/exec costs seconds here).
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn vmm_args(root: &Path, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        "--kernel".to_string(),
        guest_dir().join("vmlinux").display().to_string(),
        "--mem".into(),
        "256".into(),
        "--cmdline".into(),
        "console=ttyS0 quiet root=/dev/vda rw kiln.action=run:/kiln-test.sh".into(),
        "--disk".into(),
        format!("{},id=kiln-root", root.display()),
    ];
    args.extend(extra.iter().cloned());
    args
}

fn line_value(run: &mut VmmRun, key: &str) -> String {
    let line = run
        .wait_for_line(&format!("{key} "), RUN_LIMIT)
        .unwrap_or_else(|| panic!("no {key} line:\n{}", run.transcript()));
    let at = line.text.find(key).unwrap_or(0) + key.len();
    line.text[at..].trim().to_owned()
}

fn expect_clean_exit(run: &mut VmmRun) {
    let status = run
        .wait_exit(RUN_LIMIT)
        .unwrap_or_else(|| panic!("VMM did not exit:\n{}", run.transcript()));
    assert_eq!(
        status.code(),
        Some(0),
        "guest script failed:\n{}",
        run.transcript()
    );
}

const DISK_SCRIPT: &str = r#"set -e
echo "SERIALS $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial)"
echo "VDB_RO $(cat /sys/block/vdb/ro)"
echo "VDB_SHA $(head -c 65536 /dev/vdb | sha256sum | cut -d' ' -f1)"
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null; then
  echo VDB_WRITE_SUCCEEDED; exit 1
fi
echo "HWRNG" $(od -An -tx1 -N64 -v /dev/hwrng)
# Thirty execs of busybox (glibc): on AVX-512 hosts without the CPU template's GLIBC_TUNABLES
# about one in ten crashes (the guest kernel, without XSAVE, keeps only SSE registers).
n=0; for i in 1 2 3 4 5 6 7 8 9 10; do x=$(echo abc | cat | tr -d b); [ "$x" = ac ] || n=$((n+1)); done
echo "PIPELINE_FAILURES $n"
dd if=/dev/vdb of=/dev/vdc bs=65536 count=16 conv=fsync 2>/dev/null
blkdiscard /dev/vdc
echo "kiln-note $(cat /proc/sys/kernel/random/boot_id)" > /kiln-note.txt
echo "NOTE $(cat /kiln-note.txt)"
"#;

/// ext4 root on virtio-blk: the guest reads disk serials (GET_ID), reads a read-only disk and
/// fails to write it, reads /dev/hwrng, runs thirty short-lived processes (none may crash),
/// discards a scratch disk, writes a file and powers off.
/// The host then finds the file, a clean filesystem, an unchanged read-only image and a
/// scratch image with no blocks allocated.
#[test]
fn ext4_root_read_only_disk_discard_and_entropy() {
    let dir = scratch_dir("virtio-disk");
    let root = rootfs_with_script(&dir, DISK_SCRIPT);
    let ro = dir.join("ro.img");
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&ro, &pattern).unwrap();
    let scratch = dir.join("scratch.img");
    std::fs::File::create(&scratch)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();

    let extra = [
        "--disk".to_string(),
        format!("{},ro,id=kiln-ro", ro.display()),
        "--disk".into(),
        scratch.display().to_string(),
        "--entropy".into(),
    ];
    let mut run = VmmRun::spawn(&kiln_vmm(), &vmm_args(&root, &extra));
    assert_eq!(line_value(&mut run, "SERIALS"), "kiln-root kiln-ro");
    assert_eq!(line_value(&mut run, "VDB_RO"), "1");
    let head = dir.join("ro-head");
    std::fs::write(&head, &pattern[..65536]).unwrap();
    assert_eq!(line_value(&mut run, "VDB_SHA"), sha256_file(&head));
    let random = line_value(&mut run, "HWRNG").replace(' ', "");
    assert_eq!(random.len(), 128, "64 bytes from /dev/hwrng: {random}");
    assert!(random.chars().any(|c| c != '0'), "{random}");
    assert_eq!(
        line_value(&mut run, "PIPELINE_FAILURES"),
        "0",
        "guest processes crashed:\n{}",
        run.transcript()
    );
    let note = line_value(&mut run, "NOTE");
    expect_clean_exit(&mut run);

    let (code, report) = e2fsck(&root, false);
    assert_eq!(code, 0, "the root filesystem is not clean:\n{report}");
    let written = debugfs_read(&root, "/kiln-note.txt").expect("/kiln-note.txt is on the disk");
    assert_eq!(String::from_utf8_lossy(&written).trim(), note);
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        pattern,
        "read-only image changed"
    );
    let meta = std::fs::metadata(&scratch).unwrap();
    assert_eq!(
        meta.len(),
        8 << 20,
        "discard must not change the image size"
    );
    assert_eq!(
        meta.blocks(),
        0,
        "discarded image still has blocks allocated"
    );
}

const FSYNC_BYTES: usize = 1 << 20;
const FSYNC_SCRIPT: &str = r#"set -e
yes kiln-durability | head -c 1048576 | dd of=/flushed bs=65536 conv=fsync 2>/dev/null
echo FLUSHED
sleep 600
"#;

/// A kill -9 of the VMM right after the guest's fsync returned loses nothing: after journal
/// recovery the file is complete.
#[test]
fn kill_9_after_fsync_loses_nothing() {
    let dir = scratch_dir("virtio-fsync");
    let root = rootfs_with_script(&dir, FSYNC_SCRIPT);
    let mut run = VmmRun::spawn(&kiln_vmm(), &vmm_args(&root, &[]));
    let flushed = run.wait_for_line("FLUSHED", RUN_LIMIT);
    run.signal(libc::SIGKILL);
    assert!(flushed.is_some(), "no FLUSHED line:\n{}", run.transcript());
    let status = run.wait_exit(Duration::from_secs(10)).expect("VMM killed");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );

    let (code, report) = e2fsck(&root, true);
    assert!(
        code <= 1,
        "e2fsck could not recover the filesystem ({code}):\n{report}"
    );
    let data = debugfs_read(&root, "/flushed").expect("/flushed survived");
    let expected: Vec<u8> = b"kiln-durability\n"
        .iter()
        .copied()
        .cycle()
        .take(FSYNC_BYTES)
        .collect();
    assert_eq!(data.len(), expected.len(), "flushed file length");
    assert!(data == expected, "flushed file content differs");
}

/// MiB sent host → guest (`KILN_NET_TEST_MIB`, default 8: the receive queue wraps hundreds of
/// times). Where guest ring 0 is emulated (kvm_pvm) TCP into the guest runs at 0.05–0.17 MB/s
/// under any VMM, QEMU included: one to three minutes.
fn net_test_mib() -> usize {
    let Ok(v) = std::env::var("KILN_NET_TEST_MIB") else {
        return 8;
    };
    match v.parse() {
        Ok(mib) if mib > 0 => mib,
        _ => panic!("KILN_NET_TEST_MIB={v:?}: give a whole number of MiB, at least 1"),
    }
}
/// MiB sent guest → host.
const NET_BACK_MIB: usize = 4;
const NET_LIMIT: Duration = Duration::from_secs(2400);

const NET_SCRIPT: &str = r#"set -e
ip link set eth0 up
ip addr add 10.0.2.2/24 dev eth0
echo "GUEST_MACS $(cat /sys/class/net/eth0/address) $(cat /sys/class/net/eth1/address)"
ip link set eth1 up
ip addr add 10.0.3.2/24 dev eth1
ping -c 1 -W 20 10.0.3.1 >/dev/null
echo SECOND_NIC_OK
ping -c 1 -W 20 10.0.2.1 >/dev/null
echo NET_READY
kiln-iobench tcprecv 10.0.2.1 5001
kiln-iobench tcpsend 10.0.2.1 5002 4
echo TX_DONE
"#;

/// kiln-iobench's test stream: xorshift64 (13, 7, 17), one low byte per step.
fn test_stream(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// In a private network namespace, two NICs: eth0 on a TAP kiln-vmm creates by name (and that
/// disappears with it), eth1 on a TAP descriptor the test opens and kiln-vmm inherits (as the
/// launcher pod will pass one). The guest pings the host on both, the host pings the guest,
/// then 8 MiB go host → guest and 4 MiB guest → host over TCP, SHA-256 compared at both ends.
#[test]
fn tap_networking_ping_both_ways_and_tcp_with_checksums() {
    let dir = scratch_dir("virtio-net");
    let root = rootfs_with_script(&dir, NET_SCRIPT);
    let data = test_stream(net_test_mib() << 20);
    let data_file = dir.join("data");
    std::fs::write(&data_file, &data).unwrap();
    let sent_sha = sha256_file(&data_file);
    let expected_back = test_stream(NET_BACK_MIB << 20);

    let ns = NetNs::new(&format!("kiln-test-{}", std::process::id()));
    ns.add_tap("kt1", "10.0.3.1/24");
    let inherited = ns
        .spawn_inside(|| Tap::open_named("kt1").expect("opening TAP kt1"))
        .join()
        .expect("TAP thread");
    let fd = inherited.as_raw_fd();

    let mut cmd = vec![kiln_vmm().display().to_string()];
    cmd.extend(vmm_args(
        &root,
        &[
            "--net".into(),
            "tap=kt0,mac=06:00:0a:00:02:02".into(),
            "--net".into(),
            format!("fd={fd},mac=06:00:0a:00:03:02"),
        ],
    ));
    let mut run = VmmRun::spawn_inheriting(Path::new("ip"), &ns.exec_args(&cmd), fd);
    // kiln-vmm creates kt0; the host side of it is ours to configure, as with any TAP.
    let created = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        ns.has_link("kt0")
    });
    assert!(
        created,
        "kiln-vmm did not create TAP kt0:\n{}",
        run.transcript()
    );
    ns.configure("kt0", "10.0.2.1/24");
    let server = ns.spawn_inside(move || {
        let send = TcpListener::bind("10.0.2.1:5001").expect("bind 5001");
        let recv = TcpListener::bind("10.0.2.1:5002").expect("bind 5002");
        let (mut c, _) = send.accept().expect("guest connects to 5001");
        c.write_all(&data).expect("sending to the guest");
        drop(c);
        let (mut c, _) = recv.accept().expect("guest connects to 5002");
        let mut back = Vec::new();
        c.read_to_end(&mut back).expect("receiving from the guest");
        back
    });
    assert_eq!(
        line_value(&mut run, "GUEST_MACS"),
        "06:00:0a:00:02:02 06:00:0a:00:03:02"
    );
    run.wait_for_line("SECOND_NIC_OK", RUN_LIMIT)
        .unwrap_or_else(|| panic!("no ping over the inherited TAP:\n{}", run.transcript()));
    run.wait_for_line("NET_READY", RUN_LIMIT)
        .unwrap_or_else(|| panic!("guest could not ping the host:\n{}", run.transcript()));
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "busybox", "ping", "-c", "2", "-W", "20", "10.0.2.2",
        ])
        .output()
        .expect("busybox ping");
    assert!(
        ping.status.success(),
        "host cannot ping the guest: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let guest_rx = run
        .wait_for_line("SHA256 tcprecv ", NET_LIMIT)
        .unwrap_or_else(|| panic!("guest did not receive:\n{}", run.transcript()));
    assert!(
        guest_rx.text.ends_with(&sent_sha),
        "guest received other bytes: {}",
        guest_rx.text
    );
    let guest_tx = run
        .wait_for_line("SHA256 tcpsend ", NET_LIMIT)
        .unwrap_or_else(|| panic!("guest did not send:\n{}", run.transcript()));
    let back = server.join().expect("host server");
    let back_file = dir.join("back");
    std::fs::write(&back_file, &back).unwrap();
    let back_sha = sha256_file(&back_file);
    assert!(
        guest_tx.text.ends_with(&back_sha),
        "host received other bytes than the guest sent"
    );
    assert!(
        back == expected_back,
        "guest sent other bytes than its test stream"
    );
    expect_clean_exit(&mut run);
}
