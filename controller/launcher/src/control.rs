//! The controller's endpoint on the pod IP. Every request but the kubelet's probes carries the
//! VMI's token (`Authorization: Bearer`), which only the controller and this pod know (it is
//! derived from a key in kiln-system and handed over in the launch Secret): another pod can
//! reach the port but cannot read, pause or stop the VM.
//!
//!   GET /healthz                        the launcher answers (no token)
//!   GET /readyz                         200 while the guest runs and is not paused (no token)
//!   GET /v1/state[?after=R&wait_ms=T]   the launcher's state; with `after`, a long poll
//!   PUT /v1/pause, PUT /v1/unpause      pause or resume the vCPUs

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kiln_crd::launch::LauncherPhase;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::state::SharedState;
use crate::supervisor::Command;

/// Longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct Control {
    pub token: String,
    pub state: SharedState,
    pub commands: mpsc::Sender<Command>,
}

/// Serves the endpoint until the process ends.
pub async fn serve(listener: TcpListener, control: Arc<Control>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("control endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(answer(&control, req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // A client that shuts its write side after the request
                // (nc, scripts) still gets the answer.
                .half_close(true)
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!("control connection from {peer}: {e}");
            }
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(b) => {
            let mut r = reply(StatusCode::OK, b);
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Constant-time comparison of the presented token with ours.
fn authorized(control: &Control, req: &Request<Incoming>) -> bool {
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), control.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn answer(
    control: &Control,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            let s = control.state.get();
            return if s.phase == LauncherPhase::Running && !s.paused && s.guest_ready != Some(false)
            {
                reply(StatusCode::OK, "ready")
            } else if s.phase == LauncherPhase::Running && !s.paused {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the readiness probe does not pass",
                )
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, format!("{:?}", s.phase))
            };
        }
        _ => {}
    }
    if !authorized(control, &req) {
        warn!(
            "control endpoint: refused {} {path} from {peer} (no valid token)",
            req.method()
        );
        return reply(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/state") => {
            let mut after = None;
            let mut wait = MAX_WAIT;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("after", v)) => match v.parse::<u64>() {
                        Ok(n) => after = Some(n),
                        Err(_) => {
                            return reply(StatusCode::BAD_REQUEST, "after is a revision number")
                        }
                    },
                    Some(("wait_ms", v)) => match v.parse::<u64>() {
                        Ok(n) => wait = Duration::from_millis(n).min(MAX_WAIT),
                        Err(_) => return reply(StatusCode::BAD_REQUEST, "wait_ms is a number"),
                    },
                    _ => {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            format!("unknown parameter {pair:?}"),
                        )
                    }
                }
            }
            match after {
                Some(rev) => json(&control.state.wait_past(rev, wait).await),
                None => json(&control.state.get()),
            }
        }
        (&Method::PUT, "/v1/pause") | (&Method::PUT, "/v1/unpause") => {
            let (tx, rx) = oneshot::channel();
            let cmd = if path.ends_with("unpause") {
                Command::Unpause(tx)
            } else {
                Command::Pause(tx)
            };
            if control.commands.send(cmd).await.is_err() {
                return reply(StatusCode::CONFLICT, "the VM is not running");
            }
            match tokio::time::timeout(Duration::from_secs(10), rx).await {
                Ok(Ok(Ok(()))) => reply(StatusCode::NO_CONTENT, ""),
                Ok(Ok(Err(e))) => reply(StatusCode::CONFLICT, e),
                _ => reply(StatusCode::CONFLICT, "the VM is not running"),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, format!("no {} {path}", req.method())),
    }
}
