//! A client of kiln-vmm's HTTP API on its unix socket: one connection per request (the socket
//! is local; requests are few), JSON in and out, kiln-vmm's `fault_message` in errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use api::models::KilnVmState;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use thiserror::Error;
use tokio::net::UnixStream;

#[derive(Debug, Error)]
pub enum VmmApiError {
    #[error("kiln-vmm's API socket {0}: {1}")]
    Connect(PathBuf, std::io::Error),
    #[error("kiln-vmm's API: {0}")]
    Http(String),
    #[error("kiln-vmm refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("kiln-vmm's API answered {what} with unreadable JSON: {error}")]
    Json { what: String, error: String },
}

#[derive(Clone)]
pub struct VmmClient {
    socket: PathBuf,
}

impl VmmClient {
    pub fn new(socket: &Path) -> VmmClient {
        VmmClient {
            socket: socket.to_path_buf(),
        }
    }

    /// Waits for kiln-vmm to listen (it binds within milliseconds of starting).
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), VmmApiError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(VmmApiError::Connect(self.socket.clone(), e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, Bytes), VmmApiError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| VmmApiError::Connect(self.socket.clone(), e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| VmmApiError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"))
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| VmmApiError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| VmmApiError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| VmmApiError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// A PUT or PATCH that kiln-vmm answers with 204.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<(), VmmApiError> {
        let what = format!("{method} {path}");
        let json = serde_json::to_string(body).map_err(|e| VmmApiError::Json {
            what: what.clone(),
            error: e.to_string(),
        })?;
        let (status, bytes) = self.call(method, path, Some(json)).await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(VmmApiError::Refused { what, message })
    }

    /// The run state; with `after`, waits up to `wait` for the revision to pass it.
    pub async fn state(
        &self,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<KilnVmState, VmmApiError> {
        let path = match after {
            Some(rev) => format!(
                "/kiln/v1/state?after_revision={rev}&wait_ms={}",
                wait.as_millis()
            ),
            None => "/kiln/v1/state".to_string(),
        };
        let (status, bytes) = self.call(Method::GET, &path, None).await?;
        if status != 200 {
            return Err(VmmApiError::Refused {
                what: format!("GET {path}"),
                message: format!("HTTP {status}"),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| VmmApiError::Json {
            what: format!("GET {path}"),
            error: e.to_string(),
        })
    }
}
