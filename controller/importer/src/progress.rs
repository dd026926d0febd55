//! Import progress: bytes of the source read so far against its size, counted by a reader
//! wrapper and served as CDI's Prometheus metric on the pod's port, where the controller reads it.

use std::convert::Infallible;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::warn;

/// The metric's name (CDI's is kubevirt_cdi_import_progress_total).
pub const METRIC: &str = "kiln_cdi_import_progress_total";

#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    /// 0: not known (yet).
    pub total: AtomicU64,
}

impl Progress {
    /// Percent done, if the total is known.
    pub fn percent(&self) -> Option<f64> {
        let total = self.total.load(Ordering::Relaxed);
        (total > 0).then(|| {
            let done = self.done.load(Ordering::Relaxed).min(total);
            done as f64 * 100.0 / total as f64
        })
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text the endpoint serves.
    pub fn render(&self, owner_uid: &str) -> String {
        let value = self.percent().unwrap_or(0.0);
        format!(
            "# HELP {METRIC} The import's progress in percent.\n# TYPE {METRIC} counter\n{METRIC}{{ownerUID=\"{owner_uid}\"}} {value:.2}\n"
        )
    }
}

/// Counts what passes through it.
pub struct Counting<R> {
    pub inner: R,
    pub progress: Arc<Progress>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// Serves `/metrics` until the process ends.
pub async fn serve(addr: SocketAddr, progress: Arc<Progress>, owner_uid: String) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!("progress endpoint on {addr}: {e} (progress will not be reported)");
            return;
        }
    };
    let owner_uid: Arc<str> = owner_uid.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (progress, owner_uid) = (progress.clone(), owner_uid.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = match req.uri().path() {
                    "/metrics" => Some(progress.render(&owner_uid)),
                    _ => None,
                };
                async move {
                    let mut r = Response::new(Full::new(Bytes::from(
                        body.clone().unwrap_or_else(|| "not found".into()),
                    )));
                    if body.is_none() {
                        *r.status_mut() = StatusCode::NOT_FOUND;
                    }
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_a_percentage_of_the_known_total() {
        let p = Arc::new(Progress::default());
        assert_eq!(p.percent(), None);
        p.total.store(200, Ordering::Relaxed);
        let mut r = Counting {
            inner: &[0u8; 90][..],
            progress: p.clone(),
        };
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(p.percent(), Some(45.0));
        assert!(p
            .render("u1")
            .contains("kiln_cdi_import_progress_total{ownerUID=\"u1\"} 45.00"));
    }
}
