//! The VMM's main thread when no VM runs: serving the API until InstanceStart builds one, and,
//! with `--linger`, after it has ended until a stop signal arrives.

use std::os::fd::{AsRawFd, RawFd};

use api::oneshot;
use api::ApiResponse;
use tracing::{info, warn};

use super::preboot::{self, PrebootAction};
use super::{answer_after_exit, ApiReceiver, RunState, VmmInfo};
use crate::builder::BuiltVm;
use crate::resources::VmResources;
use crate::runtime::StopSignals;

/// Why the wait ended without a VM.
#[derive(Debug)]
pub enum WaitEnd {
    Signal(i32),
    ServerGone,
}

/// Waits until one of `fds` is readable; returns its index.
fn wait_readable(fds: &[RawFd]) -> Option<usize> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `polls` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        return polls.iter().position(|p| p.revents != 0);
    }
}

/// Serves configuration requests until InstanceStart builds a VM with `build`; a failed build
/// is answered with its error and the VMM keeps waiting.
pub fn serve_until_start(
    receiver: &ApiReceiver,
    res: &mut VmResources,
    info: &mut VmmInfo,
    signals: &StopSignals,
    mut build: impl FnMut(&VmResources) -> Result<BuiltVm, String>,
) -> Result<(BuiltVm, oneshot::Sender<ApiResponse>), WaitEnd> {
    info!("waiting for the VM's configuration on the API socket");
    loop {
        match wait_readable(&[receiver.event().as_raw_fd(), signals.as_raw_fd()]) {
            Some(0) => {
                let _ = receiver.event().read();
            }
            Some(_) => {
                if let Some(sig) = signals.read() {
                    info!("received signal {sig} before the VM started; exiting");
                    return Err(WaitEnd::Signal(sig));
                }
                continue;
            }
            None => return Err(WaitEnd::ServerGone),
        }
        while let Some(msg) = receiver.try_recv() {
            match preboot::handle(res, info, &msg.request) {
                PrebootAction::Reply(r) => {
                    let _ = msg.reply.send(r);
                }
                PrebootAction::Start => match build(res) {
                    Ok(built) => return Ok((built, msg.reply)),
                    Err(e) => {
                        warn!("InstanceStart failed: {e}");
                        let _ = msg.reply.send(ApiResponse::bad_request(format!(
                            "Cannot start the microVM: {e}"
                        )));
                    }
                },
            }
        }
    }
}

/// After the VM ended: answers reads (the run state says Exited) until a stop signal.
pub fn serve_after_exit(
    receiver: &ApiReceiver,
    res: &VmResources,
    info: &VmmInfo,
    state: &RunState,
    signals: &StopSignals,
) {
    info!("VM ended; serving the API until SIGTERM, SIGINT or SIGHUP (--linger)");
    loop {
        match wait_readable(&[receiver.event().as_raw_fd(), signals.as_raw_fd()]) {
            Some(0) => {
                let _ = receiver.event().read();
                while let Some(msg) = receiver.try_recv() {
                    let _ = msg
                        .reply
                        .send(answer_after_exit(info, res, state, &msg.request));
                }
            }
            Some(_) => {
                if signals.read().is_some() {
                    return;
                }
            }
            None => return,
        }
    }
}
