//! The VMI's readiness and liveness probes, run by the launcher against the guest's address on
//! the TAP, with the kubelet's semantics (initial delay, period, timeout, success and failure
//! thresholds), counted afresh for every boot. Readiness shows on the launcher's /readyz (and
//! so on the pod, its Services and the VMI); a liveness failure ends the VM as Failed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kiln_crd::launch::{LaunchProbe, LauncherPhase, ProbeCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::state::SharedState;
use crate::supervisor::Command;

/// One check of the guest: Ok when it passes, Err with what failed.
pub async fn check(guest: Ipv4Addr, probe: &LaunchProbe) -> Result<(), String> {
    let limit = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    let attempt = async {
        match &probe.check {
            ProbeCheck::Tcp { port } => TcpStream::connect(SocketAddr::from((guest, *port)))
                .await
                .map(drop)
                .map_err(|e| format!("TCP {guest}:{port}: {e}")),
            ProbeCheck::Http {
                port,
                path,
                headers,
            } => http_status(guest, *port, path, headers)
                .await
                .and_then(|code| {
                    if (200..400).contains(&code) {
                        Ok(())
                    } else {
                        Err(format!("HTTP GET {path} on port {port}: status {code}"))
                    }
                }),
        }
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// The status code of `GET path` (HTTP/1.0-style: one request, the connection closes).
async fn http_status(
    guest: Ipv4Addr,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let mut stream = TcpStream::connect(SocketAddr::from((guest, port)))
        .await
        .map_err(|e| format!("HTTP {guest}:{port}: {e}"))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {guest}:{port}\r\nUser-Agent: kiln-probe\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("HTTP {guest}:{port}: sending: {e}"))?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = stream
            .read(&mut head[got..])
            .await
            .map_err(|e| format!("HTTP {guest}:{port}: reading: {e}"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    status_code(&head[..got]).ok_or_else(|| format!("HTTP {guest}:{port}: no status line"))
}

/// The code of an HTTP status line ("HTTP/1.1 200 OK").
pub fn status_code(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    let mut words = text.split(' ');
    words.next().filter(|v| v.starts_with("HTTP/"))?;
    words.next()?.parse().ok()
}

/// Which probe a loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Readiness,
    Liveness,
}

/// Runs `probe` for the launcher's lifetime: it probes only while the guest runs unpaused,
/// and starts over (initial delay, counts) with every boot.
pub async fn run(
    kind: Kind,
    probe: LaunchProbe,
    guest: Ipv4Addr,
    state: SharedState,
    commands: mpsc::Sender<Command>,
) {
    let period = Duration::from_secs(u64::from(probe.period_seconds.max(1)));
    loop {
        // Wait for a boot to be running.
        let mut seen = state.get();
        while seen.phase != LauncherPhase::Running {
            seen = state
                .wait_past(seen.revision, Duration::from_secs(60))
                .await;
        }
        let restarts = seen.restarts;
        tokio::time::sleep(Duration::from_secs(u64::from(probe.initial_delay_seconds))).await;
        let (mut passes, mut failures) = (0u32, 0u32);
        let mut ready = false;
        loop {
            let now = state.get();
            if now.phase != LauncherPhase::Running || now.restarts != restarts {
                break;
            }
            if !now.paused {
                match check(guest, &probe).await {
                    Ok(()) => {
                        passes += 1;
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        passes = 0;
                        if failures == 1 || failures == probe.failure_threshold {
                            info!(
                                "{kind:?} probe failed ({failures}/{}): {e}",
                                probe.failure_threshold
                            );
                        }
                    }
                }
                match kind {
                    Kind::Readiness => {
                        let now_ready = if ready {
                            failures < probe.failure_threshold
                        } else {
                            passes >= probe.success_threshold
                        };
                        if now_ready != ready {
                            info!(
                                "readiness probe: the guest is {}ready",
                                if now_ready { "" } else { "not " }
                            );
                            ready = now_ready;
                            state.update(|s| s.guest_ready = Some(ready));
                        }
                    }
                    Kind::Liveness if failures >= probe.failure_threshold => {
                        warn!("liveness probe failed {failures} times in a row; ending the VM");
                        let _ = commands
                            .send(Command::Fail {
                                reason: "LivenessProbeFailed".into(),
                                message: format!(
                                    "the liveness probe failed {failures} times in a row"
                                ),
                            })
                            .await;
                        return;
                    }
                    Kind::Liveness => {}
                }
            }
            tokio::time::sleep(period).await;
        }
        if kind == Kind::Readiness {
            state.update(|s| s.guest_ready = Some(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_give_their_code() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(status_code(b"SSH-2.0-Open"), None);
        assert_eq!(status_code(b"HTTP/1.1"), None);
    }

    #[tokio::test]
    async fn tcp_and_http_checks_pass_and_fail() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut code = 200;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\n\r\n").as_bytes())
                    .await;
                code = 503;
            }
        });
        let probe = |check| LaunchProbe {
            check,
            initial_delay_seconds: 0,
            timeout_seconds: 2,
            period_seconds: 1,
            success_threshold: 1,
            failure_threshold: 1,
        };
        let local = Ipv4Addr::LOCALHOST;
        let http = probe(ProbeCheck::Http {
            port,
            path: "/healthz".into(),
            headers: vec![("X-Probe".into(), "1".into())],
        });
        assert_eq!(check(local, &http).await, Ok(()));
        let second = check(local, &http).await.unwrap_err();
        assert!(second.contains("status 503"), "{second}");
        assert_eq!(check(local, &probe(ProbeCheck::Tcp { port })).await, Ok(()));
        let closed = check(local, &probe(ProbeCheck::Tcp { port: 1 })).await;
        assert!(closed.is_err());
    }
}
