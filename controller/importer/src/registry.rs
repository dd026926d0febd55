//! A containerDisk from an OCI registry: the manifest (for linux/amd64) through the distribution
//! API, then its layers newest first until one holds a file under `disk/`; every blob is read to
//! its end, so oci-client's verifying stream checks it against its digest before the disk counts.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tracing::info;

use crate::error::ImportError;
use crate::format::{self, Target, Written};
use crate::progress::{Counting, Progress};
use crate::sparse::SparseWriter;

/// `docker://host[:port]/repository[:tag|@digest]` as a reference.
pub fn parse_url(url: &str) -> Result<Reference, ImportError> {
    let rest = url.strip_prefix("docker://").ok_or_else(|| {
        ImportError::Format(format!("registry url {url} does not start with docker://"))
    })?;
    rest.parse::<Reference>()
        .map_err(|e| ImportError::Format(format!("registry url {url}: {e}")))
}

pub fn client(insecure: &[String]) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
        ..Default::default()
    })
}

/// Imports `url` into `target`; returns what was written and the manifest's digest.
pub async fn import(
    url: &str,
    insecure: &[String],
    target: &Target,
    progress: Arc<Progress>,
) -> Result<(SparseWriter, Written, String), ImportError> {
    let reference = parse_url(url)?;
    let client = client(insecure);
    let (manifest, digest) = client
        .pull_image_manifest(&reference, &RegistryAuth::Anonymous)
        .await
        .map_err(|e| ImportError::Source(format!("{url}: {e}")))?;
    if let Some(pinned) = reference.digest() {
        if pinned != digest {
            return Err(ImportError::Integrity(format!(
                "{url}: the registry served manifest {digest}, not {pinned}"
            )));
        }
    }
    let total: i64 = manifest.layers.iter().map(|l| l.size.max(0)).sum();
    progress.total.store(
        u64::try_from(total).unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
    info!(
        "{url}: manifest {digest}, {} layers, {total} bytes",
        manifest.layers.len()
    );
    for layer in manifest.layers.iter().rev() {
        let media = layer.media_type.clone();
        if media.contains("zstd") {
            return Err(ImportError::Format(format!(
                "layer {} is zstd-compressed: push the containerDisk with gzip or uncompressed layers",
                layer.digest
            )));
        }
        let stream = client
            .pull_blob_stream(&reference, layer)
            .await
            .map_err(|e| ImportError::Source(format!("layer {}: {e}", layer.digest)))?;
        let body = StreamReader::new(stream.stream.map_err(io::Error::other));
        let reader = Counting {
            inner: SyncIoBridge::new(body),
            progress: progress.clone(),
        };
        let gzip = media.ends_with("gzip");
        let target = target.clone();
        let layer_digest = layer.digest.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<_, ImportError> {
            let raw: Box<dyn Read + Send> = if gzip {
                Box::new(flate2::read::GzDecoder::new(reader))
            } else {
                Box::new(reader)
            };
            let mut archive = tar::Archive::new(raw);
            let mut written = None;
            for entry in archive.entries().map_err(ImportError::read)? {
                let entry = entry.map_err(ImportError::read)?;
                let path = entry.path().map_err(ImportError::read)?.into_owned();
                if entry.header().entry_type().is_file() && in_disk_folder(&path) {
                    info!("layer {layer_digest}: disk {}", path.display());
                    written = Some(format::write_image(Box::new(entry), &target)?);
                    break;
                }
            }
            // Read the blob to its end: the digest is checked there.
            let mut rest = archive.into_inner();
            io::copy(&mut rest, &mut io::sink()).map_err(ImportError::read)?;
            Ok(written)
        })
        .await
        .map_err(|e| ImportError::Source(format!("import task: {e}")))?
        .map_err(|e| match e {
            // The registry checked the blob's digest when it was pushed: bytes that do not
            // decode are bytes that no longer match it.
            ImportError::Integrity(why) => ImportError::Integrity(format!(
                "layer {} does not match its digest: {why}",
                layer.digest
            )),
            other => other,
        })?;
        if let Some((w, written)) = found {
            return Ok((w, written, digest));
        }
    }
    Err(ImportError::NoDisk(format!(
        "{url} holds no file under /disk/ (a containerDisk's layout: ADD disk.img /disk/)"
    )))
}

/// `disk/NAME` (with or without a leading `./` or `/`).
fn in_disk_folder(path: &Path) -> bool {
    let mut parts = path.components().filter(|c| {
        !matches!(
            c,
            std::path::Component::CurDir | std::path::Component::RootDir
        )
    });
    matches!(parts.next(), Some(c) if c.as_os_str() == "disk") && parts.next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_tags_ports_and_digests() {
        let r =
            parse_url("docker://kiln-registry.kube-system.svc:5000/containerdisks/kiln-guest:v2")
                .unwrap();
        assert_eq!(r.registry(), "kiln-registry.kube-system.svc:5000");
        assert_eq!(r.repository(), "containerdisks/kiln-guest");
        assert_eq!(r.tag(), Some("v2"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_url(&format!("docker://127.0.0.1:5000/x@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert!(parse_url("http://x/y").is_err());
    }

    #[test]
    fn the_disk_is_a_file_under_disk() {
        assert!(in_disk_folder(Path::new("disk/rootfs.img")));
        assert!(in_disk_folder(Path::new("./disk/fedora.qcow2")));
        assert!(in_disk_folder(Path::new("/disk/x")));
        assert!(!in_disk_folder(Path::new("disk")));
        assert!(!in_disk_folder(Path::new("boot/disk/x")));
        assert!(!in_disk_folder(Path::new("diskette/x")));
    }
}
