//! An image over http(s): streamed, its bytes hashed against the checksum when one is given
//! (the disk counts only if it matches), decompressed and converted by `format`.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::TryStreamExt;
use sha2::{Digest, Sha256, Sha512};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tracing::info;

use crate::error::ImportError;
use crate::format::{self, Target, Written};
use crate::progress::{Counting, Progress};
use crate::sparse::SparseWriter;

/// A checksum to verify: `sha256:HEX` or `sha512:HEX`.
#[derive(Clone, Debug)]
pub struct Checksum {
    pub algorithm: &'static str,
    pub hex: String,
}

impl Checksum {
    pub fn parse(text: &str) -> Result<Checksum, ImportError> {
        let (alg, hex) = text
            .split_once(':')
            .ok_or_else(|| ImportError::Format(format!("checksum {text}: give ALGORITHM:HEX")))?;
        let (algorithm, len) = match alg {
            "sha256" => ("sha256", 64),
            "sha512" => ("sha512", 128),
            other => {
                return Err(ImportError::Format(format!(
                    "checksum algorithm {other}: Kiln verifies sha256 and sha512"
                )))
            }
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImportError::Format(format!(
                "checksum {text}: {algorithm} takes {len} hex digits"
            )));
        }
        Ok(Checksum {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Arc<std::sync::Mutex<Option<Hasher>>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut h) = self.hasher.lock() {
            match h.as_mut() {
                Some(Hasher::Sha256(s)) => s.update(&buf[..n]),
                Some(Hasher::Sha512(s)) => s.update(&buf[..n]),
                None => {}
            }
        }
        Ok(n)
    }
}

/// Imports `url` into `target`; returns what was written and the checksum verified (if any).
pub async fn import(
    url: &str,
    checksum: Option<Checksum>,
    target: &Target,
    progress: Arc<Progress>,
) -> Result<(SparseWriter, Written, Option<String>), ImportError> {
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| ImportError::Source(format!("http client: {e}")))?;
    let mut request = client.get(url);
    // A clone across namespaces: the source pod's token.
    if let Ok(token) = std::env::var(crate::serve::TOKEN_ENV) {
        request = request.bearer_auth(token);
    }
    let resp = request
        .send()
        .await
        .map_err(|e| ImportError::Source(format!("{url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(ImportError::Source(format!(
            "{url}: HTTP {}",
            resp.status()
        )));
    }
    let length = resp.content_length().unwrap_or(0);
    progress.total.store(length, Ordering::Relaxed);
    info!("{url}: {length} bytes");
    let body = StreamReader::new(resp.bytes_stream().map_err(io::Error::other));
    let hasher = Arc::new(std::sync::Mutex::new(checksum.as_ref().map(|c| {
        if c.algorithm == "sha512" {
            Hasher::Sha512(Sha512::new())
        } else {
            Hasher::Sha256(Sha256::new())
        }
    })));
    let reader = Hashing {
        inner: Counting {
            inner: SyncIoBridge::new(body),
            progress,
        },
        hasher: hasher.clone(),
    };
    let target = target.clone();
    let (w, written) = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let r = format::write_image(Box::new(&mut reader), &target)?;
        // A decoder may stop before the end of what was served: hash all of it.
        io::copy(&mut reader, &mut io::sink()).map_err(ImportError::read)?;
        Ok::<_, ImportError>(r)
    })
    .await
    .map_err(|e| ImportError::Source(format!("import task: {e}")))??;
    let Some(want) = checksum else {
        return Ok((w, written, None));
    };
    let got = match hasher.lock().ok().and_then(|mut h| h.take()) {
        Some(Hasher::Sha256(s)) => hex(&s.finalize()),
        Some(Hasher::Sha512(s)) => hex(&s.finalize()),
        None => String::new(),
    };
    if got != want.hex {
        return Err(ImportError::Integrity(format!(
            "{url}: checksum mismatch: {} {got} served, {} {} expected",
            want.algorithm, want.algorithm, want.hex
        )));
    }
    Ok((w, written, Some(format!("{}:{got}", want.algorithm))))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_name_their_algorithm() {
        let c = Checksum::parse(&format!("sha256:{}", "A".repeat(64))).unwrap();
        assert_eq!(
            (c.algorithm, c.hex.as_str()),
            ("sha256", "a".repeat(64).as_str())
        );
        assert!(Checksum::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            "md5:abc",
            "sha256:xyz",
            "sha256",
            &format!("sha256:{}", "0".repeat(63)),
        ] {
            assert!(Checksum::parse(bad).is_err(), "{bad}");
        }
    }
}
