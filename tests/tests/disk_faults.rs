//! Disk images on filesystems that lack what kiln-vmm prefers: on one without hole punching or
//! FALLOC_FL_ZERO_RANGE (ramfs) a discard costs nothing and leaves the data, and a write-zeroes
//! still zeroes. Needs root (a mount), as CI runs.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use devices::virtio::block::DiskImage;
use kiln_tests::scratch_dir;

/// A ramfs mounted under `dir` (it has no hole punching and no FALLOC_FL_ZERO_RANGE: every
/// mode but plain allocation is EOPNOTSUPP); unmounted when dropped.
struct RamfsMount(PathBuf);

impl RamfsMount {
    fn new(dir: &Path) -> RamfsMount {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let out = Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        RamfsMount(mnt)
    }
}

impl Drop for RamfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn on_a_filesystem_without_hole_punching_a_discard_is_free_and_write_zeroes_still_zeroes() {
    let dir = scratch_dir("disk-ramfs");
    let ramfs = RamfsMount::new(&dir);
    let path = ramfs.0.join("disk.img");
    let len: u64 = 64 << 20;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let pattern = vec![0xa5u8; 1 << 20];
    for i in 0..(len >> 20) {
        file.write_all_at(&pattern, i << 20).unwrap();
    }
    file.sync_all().unwrap();
    let disk = DiskImage::open(&path, false, None).unwrap();

    // A discard of the whole image: nothing rewritten, the data stays (the spec allows it).
    let t = Instant::now();
    disk.punch_hole(0, len, false).unwrap();
    let discard = t.elapsed();
    let mut probe = vec![0u8; 4096];
    file.read_exact_at(&mut probe, 32 << 20).unwrap();
    assert!(
        probe.iter().all(|b| *b == 0xa5),
        "a discard without hole punching rewrote the data"
    );
    assert!(
        discard < Duration::from_millis(50),
        "the discard took {discard:?}"
    );

    // A write-zeroes of 4 MiB: zeros, written the slow way, only where asked.
    disk.punch_hole(8 << 20, 4 << 20, true).unwrap();
    for (at, want) in [
        (8u64 << 20, 0u8),
        ((12 << 20) - 4096, 0),
        (12 << 20, 0xa5),
        ((8 << 20) - 4096, 0xa5),
    ] {
        file.read_exact_at(&mut probe, at).unwrap();
        assert!(probe.iter().all(|b| *b == want), "at {at}: want {want:#x}");
    }
    println!("no hole punching: a 64 MiB discard took {discard:?}");
}
