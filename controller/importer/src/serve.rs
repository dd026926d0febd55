//! The source side of a clone across namespaces: serves one claim's disk, read-only, to the
//! importer in the target namespace that presents the clone's token (GET /disk.img), and
//! answers the readiness probe (GET /healthz) without one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncSeekExt, SeekFrom};
use tokio::net::TcpListener;
use tokio_util::io::ReaderStream;
use tracing::{info, warn};

use crate::error::ImportError;
use crate::progress::Progress;

/// The environment variable carrying the clone's token, on both sides.
pub const TOKEN_ENV: &str = "KILN_CLONE_TOKEN";
/// The path the disk is served at.
pub const DISK_PATH: &str = "/disk.img";
const CHUNK: usize = 1 << 20;

type Body = BoxBody<Bytes, std::io::Error>;

/// Whether `header` (an Authorization value) carries `token`, compared in constant time.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    !token.is_empty()
        && a.len() == b.len()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The size of a disk file or block device.
async fn disk_size(path: &Path) -> std::io::Result<u64> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(SeekFrom::End(0)).await
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    disk: Arc<PathBuf>,
    token: Arc<str>,
    progress: Arc<Progress>,
) -> Response<Body> {
    if req.uri().path() == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    if req.uri().path() != DISK_PATH || req.method() != Method::GET {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !authorized(header, &token) {
        return text(StatusCode::UNAUTHORIZED, "this clone's token is required");
    }
    let (file, size) = match tokio::fs::File::open(disk.as_path()).await {
        Ok(f) => match disk_size(&disk).await {
            Ok(size) => (f, size),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(e) => {
            let message = format!("{}: {e}", disk.display());
            return text(StatusCode::INTERNAL_SERVER_ERROR, &message);
        }
    };
    progress
        .total
        .store(size, std::sync::atomic::Ordering::Relaxed);
    info!("serving {} ({size} bytes)", disk.display());
    let stream = ReaderStream::with_capacity(file, CHUNK).map_ok(move |b| {
        progress.add(b.len() as u64);
        Frame::data(b)
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let headers = r.headers_mut();
    headers.insert(CONTENT_LENGTH, size.into());
    if let Ok(v) = "application/octet-stream".parse() {
        headers.insert(CONTENT_TYPE, v);
    }
    r
}

/// Serves `disk` on `addr` until the process is ended (the controller deletes the pod once
/// the clone is done).
pub async fn serve(
    addr: SocketAddr,
    disk: PathBuf,
    token: String,
    progress: Arc<Progress>,
) -> Result<(), ImportError> {
    if token.len() < 32 {
        return Err(ImportError::Format(format!(
            "serving needs a token of at least 32 characters in {TOKEN_ENV}"
        )));
    }
    disk_size(&disk)
        .await
        .map_err(|e| ImportError::Format(format!("{}: {e}", disk.display())))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ImportError::Source(format!("listening on {addr}: {e}")))?;
    info!("serving {} on {addr}", disk.display());
    let (disk, token): (Arc<PathBuf>, Arc<str>) = (Arc::new(disk), token.into());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (disk, token, progress) = (disk.clone(), token.clone(), progress.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (disk, token, progress) = (disk.clone(), token.clone(), progress.clone());
                async move { Ok::<_, Infallible>(answer(req, disk, token, progress).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                warn!("{peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_clone_token_is_let_through() {
        let token = "a".repeat(64);
        assert!(authorized(Some(&format!("Bearer {token}")), &token));
        assert!(!authorized(None, &token));
        assert!(!authorized(Some(&token), &token), "no Bearer scheme");
        assert!(!authorized(
            Some(&format!("Bearer {}", "b".repeat(64))),
            &token
        ));
        assert!(!authorized(Some(&format!("Bearer {token}a")), &token));
        assert!(
            !authorized(Some("Bearer "), ""),
            "an empty token admits nobody"
        );
    }

    #[tokio::test]
    async fn serves_the_disk_with_its_length_and_refuses_without_the_token() {
        let dir = std::env::temp_dir().join(format!("kiln-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        let data: Vec<u8> = (0..3 * CHUNK + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(&disk, &data).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let token = "t".repeat(40);
        let progress = Arc::new(Progress::default());
        tokio::spawn(serve(addr, disk, token.clone(), progress.clone()));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let url = format!("http://{addr}{DISK_PATH}");
        let mut health = None;
        for _ in 0..50 {
            if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await {
                health = Some(r.status());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(health, Some(reqwest::StatusCode::OK));
        let refused = client.get(&url).send().await.unwrap();
        assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
        let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        assert_eq!(r.content_length(), Some(data.len() as u64));
        let body = r.bytes().await.unwrap();
        assert!(body[..] == data[..], "the disk's bytes, unchanged");
        assert_eq!(progress.percent(), Some(100.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
