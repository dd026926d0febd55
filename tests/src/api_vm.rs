//! kiln-vmm driven through its API socket, as the tiny-guest tests use it: spawned with
//! `--api-sock` in a scratch folder, configured with PUTs, started with InstanceStart.

use std::path::Path;
use std::time::Duration;

use crate::api_client::{ApiClient, Response};
use crate::kiln_vmm;
use crate::process::VmmRun;

pub struct ApiVm {
    pub run: VmmRun,
    pub api: ApiClient,
}

impl ApiVm {
    /// Spawns kiln-vmm on `dir/api.sock` with `flags`; returns once the socket accepts.
    pub fn spawn(dir: &Path, flags: &[&str]) -> ApiVm {
        let sock = dir.join("api.sock");
        let mut args = vec!["--api-sock".to_string(), sock.display().to_string()];
        args.extend(flags.iter().map(|s| s.to_string()));
        let mut run = VmmRun::spawn(&kiln_vmm(), &args);
        run.wait_for_socket(&sock, Duration::from_secs(10));
        ApiVm {
            run,
            api: ApiClient::new(&sock),
        }
    }

    /// PUTs `body` to `path` and expects 204.
    pub fn put_ok(&self, path: &str, body: &str) {
        let r: Response = self.api.put(path, body);
        assert_eq!(
            r.status,
            204,
            "PUT {path}: {}\n{}",
            r.body,
            self.run.transcript()
        );
    }

    /// A tiny guest's boot source (`kernel`, with `boot_args` if any) and machine
    /// (`vcpus`, 16 MiB).
    pub fn configure_tiny(&self, kernel: &Path, boot_args: Option<&str>, vcpus: u8) {
        let args = boot_args
            .map(|a| format!(r#", "boot_args": "{a}""#))
            .unwrap_or_default();
        self.put_ok(
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{}"{args}}}"#, kernel.display()),
        );
        self.put_ok(
            "/machine-config",
            &format!(r#"{{"vcpu_count": {vcpus}, "mem_size_mib": 16}}"#),
        );
    }

    /// InstanceStart; answered once every thread runs under its seccomp filter.
    pub fn start(&self) {
        self.put_ok("/actions", r#"{"action_type": "InstanceStart"}"#);
    }
}
