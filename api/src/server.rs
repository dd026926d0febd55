//! The HTTP/1.1 server on a unix socket: one thread with its own small async runtime, bounded
//! bodies, timeouts for slow clients, and a hand-off of each routed request to the VMM.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, warn};

use crate::request::{route, ApiRequest};
use crate::response::ApiResponse;

/// Firecracker's default limit for a request body.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// Receives routed requests; the VMM answers each on its `reply` channel.
pub trait RequestSink: Send + Sync + 'static {
    /// Hands `request` over; false when the VMM no longer takes requests.
    fn submit(&self, request: ApiRequest, reply: oneshot::Sender<ApiResponse>) -> bool;
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub max_payload: usize,
    /// Time a client has to send a request's headers, and separately its body.
    pub read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_payload: DEFAULT_MAX_PAYLOAD,
            read_timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }
}

/// Requests served and refused, for the metrics file.
#[derive(Debug, Default)]
pub struct ApiCounters {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("API socket {0}: a kiln-vmm (or another program) is already listening there")]
    InUse(PathBuf),
    #[error("API socket {0}: the path exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("API socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("starting the API thread: {0}")]
    Thread(io::Error),
    #[error("API server thread: {0}")]
    ThreadStart(String),
}

/// Binds the API socket, readable and writable by the owner only. A leftover socket file that
/// nobody listens on is replaced; a live one, or any other file, is left alone.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let io_err = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_owned()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        debug!("removing stale API socket {}", path.display());
        std::fs::remove_file(path).map_err(io_err)?;
    }
    // The socket is created with the process umask; a tight umask around bind() closes the
    // window in which another user could connect before the chmod.
    // SAFETY: umask only swaps the process file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    listener.set_nonblocking(true).map_err(io_err)?;
    Ok(listener)
}

/// Serves the API on its own thread until the process ends. `thread_start` runs on that thread
/// once its runtime exists, before the first request (kiln-vmm installs the thread's seccomp
/// filter there); its error, or the runtime's, is returned here and the thread serves nothing.
pub fn spawn(
    listener: UnixListener,
    sink: Arc<dyn RequestSink>,
    config: ServerConfig,
    counters: Arc<ApiCounters>,
    thread_start: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            // The runtime first: what it creates (epoll, eventfd, and with tokio's `signal`
            // feature a socket pair) is set up before `thread_start` narrows the thread's calls.
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| format!("cannot start the API thread's runtime: {e}"))
                .and_then(|rt| thread_start().map(|()| rt));
            let rt = match started {
                Ok(rt) => {
                    let _ = started_tx.send(Ok(()));
                    rt
                }
                Err(why) => {
                    let _ = started_tx.send(Err(why));
                    return;
                }
            };
            rt.block_on(serve(listener, sink, config, counters));
        })
        .map_err(ServerError::Thread)?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(why)) => Err(ServerError::ThreadStart(why)),
        Err(_) => Err(ServerError::ThreadStart(
            "the API thread ended at start".into(),
        )),
    }
}

async fn serve(
    listener: UnixListener,
    sink: Arc<dyn RequestSink>,
    config: ServerConfig,
    counters: Arc<ApiCounters>,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!("API server: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let config = Arc::new(config);
    loop {
        // Back-pressure: past the limit, new connections wait in the socket's backlog.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!("API server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (sink, config, counters) = (sink.clone(), config.clone(), counters.clone());
        tokio::spawn(async move {
            let service =
                service_fn(|req| handle(req, sink.clone(), config.clone(), counters.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(config.read_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!("API connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    sink: Arc<dyn RequestSink>,
    config: Arc<ServerConfig>,
    counters: Arc<ApiCounters>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let response = answer(req, &method, &path, &sink, &config).await;
    if response.status >= 400 {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        debug!("API {method} {path} -> {}", response.status);
    }
    Ok(to_http(response))
}

async fn answer(
    req: Request<Incoming>,
    method: &str,
    path: &str,
    sink: &Arc<dyn RequestSink>,
    config: &ServerConfig,
) -> ApiResponse {
    let too_large = || {
        ApiResponse::error(
            413,
            format!(
                "Request body is larger than the limit of {} bytes.",
                config.max_payload
            ),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > config.max_payload as u64) {
        return too_large();
    }
    let body = Limited::new(req.into_body(), config.max_payload);
    let raw = match tokio::time::timeout(config.read_timeout, body.collect()).await {
        Err(_) => {
            return ApiResponse::error(
                408,
                format!(
                    "The request body did not arrive within {:?}.",
                    config.read_timeout
                ),
            )
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => return ApiResponse::bad_request(format!("Reading the request body: {e}")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let request = match route(method, path, &raw) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let (tx, rx) = oneshot::channel();
    if !sink.submit(request, tx) {
        return ApiResponse::error(503, "The VMM is shutting down.");
    }
    rx.await
        .unwrap_or_else(|_| ApiResponse::error(503, "The VMM stopped before answering."))
}

fn to_http(r: ApiResponse) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(Full::new(Bytes::from(r.body.clone().unwrap_or_default())));
    *resp.status_mut() = status;
    if r.body.is_some() {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(allow) = r.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        resp.headers_mut().insert(ALLOW, allow);
    }
    resp
}
