//! The controller's side of the launcher channel: one long poll per running VMI on its
//! launcher's endpoint (`GET /v1/state?after=R`, with the VMI's token), the last state seen
//! kept for reconciles, and a reconcile of the VMI triggered on every change. No polling: a
//! launcher answers when something changes or after a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use kiln_crd::launch::LauncherState;
use kiln_crd::names::CONTROL_PORT;
use kiln_crd::VirtualMachineInstance;
use kube::runtime::reflector::ObjectRef;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

/// How long a launcher may hold a long poll (it answers within a minute anyway).
const POLL_WAIT_MS: u64 = 55_000;
const REQUEST_LIMIT: Duration = Duration::from_secs(65);
const CONNECT_LIMIT: Duration = Duration::from_secs(3);

struct Watched {
    ip: String,
    task: JoinHandle<()>,
}

pub struct LauncherWatch {
    states: Arc<Mutex<HashMap<String, LauncherState>>>,
    watched: Mutex<HashMap<String, Watched>>,
    trigger: mpsc::UnboundedSender<ObjectRef<VirtualMachineInstance>>,
}

impl LauncherWatch {
    /// The watch and the stream of VMIs to reconcile because their launcher changed.
    pub fn new() -> (
        LauncherWatch,
        mpsc::UnboundedReceiver<ObjectRef<VirtualMachineInstance>>,
    ) {
        let (trigger, rx) = mpsc::unbounded_channel();
        (
            LauncherWatch {
                states: Arc::default(),
                watched: Mutex::default(),
                trigger,
            },
            rx,
        )
    }

    /// The last state the launcher of the VMI with `uid` reported.
    pub fn state(&self, uid: &str) -> Option<LauncherState> {
        self.states.lock().ok()?.get(uid).cloned()
    }

    /// Follows the launcher of `vmi` at `ip` (no-op when already following it there).
    pub fn follow(
        &self,
        vmi: ObjectRef<VirtualMachineInstance>,
        uid: &str,
        ip: &str,
        token: String,
    ) {
        let Ok(mut watched) = self.watched.lock() else {
            return;
        };
        if watched
            .get(uid)
            .is_some_and(|w| w.ip == ip && !w.task.is_finished())
        {
            return;
        }
        if let Some(old) = watched.remove(uid) {
            old.task.abort();
        }
        let states = self.states.clone();
        let trigger = self.trigger.clone();
        let (uid_owned, ip_owned) = (uid.to_string(), ip.to_string());
        let task = tokio::spawn(async move {
            follow_launcher(vmi, uid_owned, ip_owned, token, states, trigger).await;
        });
        watched.insert(
            uid.to_string(),
            Watched {
                ip: ip.to_string(),
                task,
            },
        );
    }

    /// Stops following the VMI with `uid` and forgets its state.
    pub fn forget(&self, uid: &str) {
        if let Some(w) = self.watched.lock().ok().and_then(|mut w| w.remove(uid)) {
            w.task.abort();
        }
        if let Ok(mut s) = self.states.lock() {
            s.remove(uid);
        }
    }

    /// How many launchers are followed (for tests and logs).
    pub fn followed(&self) -> usize {
        self.watched.lock().map(|w| w.len()).unwrap_or(0)
    }
}

async fn follow_launcher(
    vmi: ObjectRef<VirtualMachineInstance>,
    uid: String,
    ip: String,
    token: String,
    states: Arc<Mutex<HashMap<String, LauncherState>>>,
    trigger: mpsc::UnboundedSender<ObjectRef<VirtualMachineInstance>>,
) {
    let mut after: Option<u64> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let path = match after {
            None => "/v1/state".to_string(),
            Some(r) => format!("/v1/state?after={r}&wait_ms={POLL_WAIT_MS}"),
        };
        match request(&ip, &token, Method::GET, &path).await {
            Ok((200, body)) => match serde_json::from_slice::<LauncherState>(&body) {
                Ok(state) => {
                    backoff = Duration::from_millis(100);
                    if after != Some(state.revision) {
                        after = Some(state.revision);
                        if let Ok(mut s) = states.lock() {
                            s.insert(uid.clone(), state);
                        }
                        if trigger.send(vmi.clone()).is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Err(e) => debug!("launcher {ip}: unreadable state: {e}"),
            },
            Ok((status, _)) => debug!("launcher {ip}: {path} answered {status}"),
            // Not listening yet (still starting) or gone (the pod ended): try again later.
            Err(e) => debug!("launcher {ip}: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One request to a launcher's endpoint; (status, body).
pub async fn request(
    ip: &str,
    token: &str,
    method: Method,
    path: &str,
) -> Result<(u16, Bytes), String> {
    request_to(&format!("{ip}:{CONTROL_PORT}"), Some(token), method, path).await
}

/// One HTTP/1.1 request to `addr` (host:port), with a bearer token if given; (status, body).
pub async fn request_to(
    addr: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
) -> Result<(u16, Bytes), String> {
    let stream = tokio::time::timeout(CONNECT_LIMIT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr}: timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(REQUEST_LIMIT, fut)
        .await
        .map_err(|_| format!("{addr}{path}: no answer"))?
}
