//! One kiln-vmm process: started with its API socket, the boot timer and `--linger` (so its
//! exit reason can be read), the console on the launcher's own stdin/stdout (the container's:
//! `kubectl logs` and attach see it), the pod network's TAP as an inherited descriptor
//! (`--net fd=N`), configured and booted through the API, stopped by pid.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use api::models::{
    ActionType, BootSource, Drive, EntropyDevice, InstanceActionInfo, MachineConfiguration,
};
use hyper::Method;
use kiln_crd::launch::LaunchSpec;
use thiserror::Error;
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::vmm_client::{VmmApiError, VmmClient};

#[derive(Debug, Error)]
pub enum VmmError {
    #[error("starting {path}: {error}")]
    Spawn { path: String, error: std::io::Error },
    #[error(transparent)]
    Api(#[from] VmmApiError),
    #[error("{0} vCPUs: kiln-vmm takes at most 255")]
    Vcpus(u32),
}

pub struct VmmProcess {
    pub child: Child,
    pub client: VmmClient,
    socket: PathBuf,
}

impl VmmProcess {
    /// Starts kiln-vmm waiting on `socket`; `id` names it in its logs. `nic` is the guest's NIC:
    /// an open TAP descriptor of this process and the guest's MAC.
    pub fn spawn(
        bin: &Path,
        socket: &Path,
        id: &str,
        nic: Option<(RawFd, &str)>,
    ) -> Result<VmmProcess, VmmError> {
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new(bin);
        cmd.arg("--api-sock")
            .arg(socket)
            .args(["--boot-timer", "--linger", "--serial-out", "stdout", "--id"])
            .arg(id);
        if let Some((fd, mac)) = nic {
            cmd.arg("--net").arg(format!("fd={fd},mac={mac}"));
            // SAFETY: runs in the forked child before exec, where it only clears close-on-exec
            // on the child's copy of `fd` (fcntl is async-signal-safe), so kiln-vmm inherits it.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| VmmError::Spawn {
                path: bin.display().to_string(),
                error,
            })?;
        Ok(VmmProcess {
            child,
            client: VmmClient::new(socket),
            socket: socket.to_path_buf(),
        })
    }

    /// Configures the machine, kernel, drives and entropy (the NIC came with `spawn`), then boots.
    pub async fn configure_and_start(
        &self,
        spec: &LaunchSpec,
        drives: &[Drive],
    ) -> Result<(), VmmError> {
        let c = &self.client;
        c.wait_ready(Duration::from_secs(10)).await?;
        let vcpus = u8::try_from(spec.vcpus).map_err(|_| VmmError::Vcpus(spec.vcpus))?;
        c.send(
            Method::PUT,
            "/machine-config",
            &MachineConfiguration {
                vcpu_count: vcpus,
                mem_size_mib: spec.memory_mib,
                smt: None,
                cpu_template: None,
                track_dirty_pages: None,
                huge_pages: None,
            },
        )
        .await?;
        c.send(
            Method::PUT,
            "/boot-source",
            &BootSource {
                kernel_image_path: spec.kernel.clone(),
                initrd_path: spec.initrd.clone(),
                boot_args: Some(spec.cmdline.clone()),
            },
        )
        .await?;
        for d in drives {
            c.send(Method::PUT, &format!("/drives/{}", d.drive_id), d)
                .await?;
        }
        if spec.entropy {
            c.send(
                Method::PUT,
                "/entropy",
                &EntropyDevice { rate_limiter: None },
            )
            .await?;
        }
        c.send(
            Method::PUT,
            "/actions",
            &InstanceActionInfo {
                action_type: ActionType::InstanceStart,
            },
        )
        .await?;
        Ok(())
    }

    /// Asks kiln-vmm to end (SIGTERM stops the VM cleanly, or ends `--linger`) and waits; after
    /// `limit`, kills it. Only this launcher's own child is signalled, by its pid.
    pub async fn stop(&mut self, limit: Duration) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => info!("kiln-vmm ended ({status})"),
            Ok(Err(e)) => warn!("waiting for kiln-vmm: {e}"),
            Err(_) => {
                warn!("kiln-vmm did not end within {limit:?} of SIGTERM; killing it");
                let _ = self.child.kill().await;
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
