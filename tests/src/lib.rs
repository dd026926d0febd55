//! Helpers shared by Kiln's end-to-end tests and benchmarks: where the guest artefacts and the
//! kiln-vmm binary are, running a VMM with timestamped output, and tiny hand-made guests.

pub mod api_client;
pub mod api_vm;
pub mod boot_slots;
pub mod guest_image;
pub mod image_server;
pub mod kube;
pub mod netns;
pub mod process;
pub mod tiny_guest;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The kiln-vmm binary: `$KILN_VMM`, else the one Cargo built beside this test (the same
/// target folder, `CARGO_TARGET_DIR` included, and the same profile: `cargo test --workspace`
/// builds it there).
pub fn kiln_vmm() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_VMM") {
        return PathBuf::from(p);
    }
    // A test binary lives in <target>/<profile>/deps/.
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("kiln-vmm")));
    match beside {
        Some(p) if p.is_file() => p,
        other => panic!(
            "kiln-vmm is not built beside this test ({other:?}): run `cargo test --workspace` \
             (or `cargo build` with the same profile), or set KILN_VMM"
        ),
    }
}

/// Folder with the guest artefacts (vmlinux, bzImage, initramfs.cpio, ...): `$KILN_GUEST_DIR`,
/// else whatever `resources/guest/build.sh` prints (it builds once, then answers from cache).
pub fn guest_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(p) = std::env::var_os("KILN_GUEST_DIR") {
            return PathBuf::from(p);
        }
        let script = workspace_root().join("resources/guest/build.sh");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A unique scratch folder for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Whether the host's KVM is the nested kvm_pvm module (guest ring 0 runs in an emulator).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").is_dir()
}
