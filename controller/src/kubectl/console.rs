//! `kubectl kiln console`: the guest's serial console through the API server (an attach to the
//! launcher pod's compute container, whose stdio is the console), with the terminal in raw
//! mode; Ctrl-] detaches, as with virtctl.

use std::io::Write;

use k8s_openapi::api::core::v1::Pod;
use kiln_crd::names::COMPUTE_CONTAINER;
use kube::api::{Api, AttachParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ctrl-]: ends the session.
pub const ESCAPE: u8 = 0x1d;

/// The terminal on stdin in raw mode, restored on drop (nothing when stdin is not a terminal).
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        // SAFETY: isatty and tcgetattr only read the descriptor's state into our termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawTerminal(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Where the bytes typed go: everything up to Ctrl-] (None: detach).
pub fn before_escape(input: &[u8]) -> Option<&[u8]> {
    match input.iter().position(|&b| b == ESCAPE) {
        Some(_) => None,
        None => Some(input),
    }
}

/// Attaches to `pod`'s console until Ctrl-] or the guest's end.
pub async fn attach(pods: &Api<Pod>, pod: &str, vmi: &str) -> Result<(), String> {
    let params = AttachParams::default()
        .container(COMPUTE_CONTAINER)
        .stdin(true)
        .stdout(true)
        .stderr(false)
        .tty(false);
    let mut attached = pods
        .attach(pod, &params)
        .await
        .map_err(|e| format!("attaching to {pod}: {e}"))?;
    let (Some(mut remote_in), Some(mut remote_out)) = (attached.stdin(), attached.stdout()) else {
        return Err(format!("{pod} offers no console streams"));
    };
    eprint!("Successfully connected to {vmi} console. The escape sequence is ^]\r\n");
    let _raw = RawTerminal::enter();
    let to_guest = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            match before_escape(&buf[..n]) {
                Some(bytes) => {
                    if remote_in.write_all(bytes).await.is_err() {
                        return;
                    }
                    let _ = remote_in.flush().await;
                }
                None => return,
            }
        }
    };
    let from_guest = async {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        loop {
            match remote_out.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let _ = stdout.write_all(&buf[..n]);
                    let _ = stdout.flush();
                }
            }
        }
    };
    tokio::select! {
        _ = to_guest => {}
        _ = from_guest => {}
    }
    drop(_raw);
    eprintln!();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_right_bracket_detaches() {
        assert_eq!(before_escape(b"ls\n"), Some(&b"ls\n"[..]));
        assert_eq!(before_escape(b"x\x1d"), None);
    }
}
