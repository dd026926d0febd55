//! Guest disk images for tests: a private copy of the rootfs with a test script in it, and
//! host-side checks of an image with e2fsprogs (e2fsck, debugfs).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::guest_dir;

/// Where test scripts go inside the rootfs; boot them with `kiln.action=run:/kiln-test.sh`.
pub const TEST_SCRIPT: &str = "/kiln-test.sh";

/// A writable copy of the guest rootfs in `dir` (the cached one is shared and must not change),
/// with `script` installed as [`TEST_SCRIPT`].
pub fn rootfs_with_script(dir: &Path, script: &str) -> PathBuf {
    let image = dir.join("rootfs.ext4");
    std::fs::copy(guest_dir().join("rootfs.ext4"), &image)
        .unwrap_or_else(|e| panic!("copying the rootfs to {}: {e}", image.display()));
    let script_file = dir.join("kiln-test.sh");
    std::fs::write(&script_file, script).unwrap();
    debugfs_write(&image, &script_file, TEST_SCRIPT);
    image
}

/// Copies host file `src` into the ext4 image at `dst`.
pub fn debugfs_write(image: &Path, src: &Path, dst: &str) {
    let cmd = format!("write {} {dst}", src.display());
    let out = Command::new("debugfs")
        .args(["-w", "-R", &cmd])
        .arg(image)
        .output()
        .expect("running debugfs (e2fsprogs)");
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("rror"),
        "debugfs {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The contents of `path` in the ext4 image, or `None` if it is not there.
pub fn debugfs_read(image: &Path, path: &str) -> Option<Vec<u8>> {
    let stat = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(image)
        .output()
        .expect("running debugfs (e2fsprogs)");
    if String::from_utf8_lossy(&stat.stderr).contains("not found") {
        return None;
    }
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("running debugfs (e2fsprogs)");
    Some(out.stdout)
}

/// Runs e2fsck: `-fn` (check only) or `-fy` (repair, replaying the journal). Returns the exit
/// code and the report.
pub fn e2fsck(image: &Path, repair: bool) -> (i32, String) {
    let out = Command::new("e2fsck")
        .arg(if repair { "-fy" } else { "-fn" })
        .arg(image)
        .output()
        .expect("running e2fsck (e2fsprogs)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), report)
}

/// `sha256sum` of a host file, as hex.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    let digest = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    // Never "" (which every string ends with, and which would then match anything).
    assert!(
        out.status.success() && digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "sha256sum {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    digest
}
