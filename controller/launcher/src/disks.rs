//! Makes each disk of the launch description ready for kiln-vmm: sparse images created at
//! their size when missing (a claim's disk.img, an emptyDisk), copied images and devices
//! checked, the NoCloud seed written. Returns kiln-vmm's drives in guest order.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use api::models::Drive;
use kiln_crd::launch::{DiskImage, LaunchDisk};
use thiserror::Error;
use tracing::info;

use crate::seed::{self, SeedError};

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("volume {volume}: {path}: {error}")]
    Io {
        volume: String,
        path: String,
        error: std::io::Error,
    },
    #[error(
        "volume {volume}: {path} is a qcow2 image; Kiln boots raw images (qemu-img convert -O raw)"
    )]
    Qcow2 { volume: String, path: String },
    #[error("volume {volume}: {path} is not a block device")]
    NotABlockDevice { volume: String, path: String },
    #[error("volume {volume}: {error}")]
    Seed { volume: String, error: SeedError },
}

/// Prepares every disk; the drives to put, in order.
pub fn prepare(disks: &[LaunchDisk]) -> Result<Vec<Drive>, DiskError> {
    disks.iter().map(prepare_one).collect()
}

fn prepare_one(d: &LaunchDisk) -> Result<Drive, DiskError> {
    let io = |path: &str| {
        let volume = d.volume.clone();
        let path = path.to_string();
        move |error| DiskError::Io {
            volume,
            path,
            error,
        }
    };
    let path = match &d.image {
        DiskImage::File { path } => {
            let mut head = [0u8; 4];
            let n = std::fs::File::open(path)
                .and_then(|mut f| f.read(&mut head))
                .map_err(io(path))?;
            if head[..n] == *QCOW2_MAGIC {
                return Err(DiskError::Qcow2 {
                    volume: d.volume.clone(),
                    path: path.clone(),
                });
            }
            path.clone()
        }
        DiskImage::Sparse { path, size_bytes } => {
            if let Some(dir) = Path::new(path).parent() {
                std::fs::create_dir_all(dir).map_err(io(path))?;
            }
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(f) => {
                    f.set_len(*size_bytes).map_err(io(path))?;
                    info!(
                        "volume {}: created {path}, sparse, {size_bytes} bytes",
                        d.volume
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(path)(e)),
            }
            path.clone()
        }
        DiskImage::Device { path } => {
            let meta = std::fs::metadata(path).map_err(io(path))?;
            if !meta.file_type().is_block_device() {
                return Err(DiskError::NotABlockDevice {
                    volume: d.volume.clone(),
                    path: path.clone(),
                });
            }
            path.clone()
        }
        DiskImage::NoCloud {
            path,
            meta_data,
            user_data,
            network_config,
        } => {
            seed::write_nocloud(
                Path::new(path),
                meta_data,
                user_data.as_ref(),
                network_config.as_ref(),
            )
            .map_err(|error| DiskError::Seed {
                volume: d.volume.clone(),
                error,
            })?;
            path.clone()
        }
    };
    Ok(Drive {
        drive_id: d.id.clone(),
        path_on_host: Some(path),
        is_root_device: d.root,
        is_read_only: Some(d.read_only),
        partuuid: None,
        // Flushes reach the image: the guest's fsync means what it says.
        cache_type: Some("Writeback".into()),
        io_engine: None,
        rate_limiter: None,
        socket: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-disks-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn disk(volume: &str, image: DiskImage) -> LaunchDisk {
        LaunchDisk {
            id: volume.into(),
            volume: volume.into(),
            image,
            read_only: false,
            root: false,
        }
    }

    #[test]
    fn sparse_images_are_made_once_and_kept() {
        let d = scratch("sparse");
        let path = d.join("pvc/disk.img").display().to_string();
        let spec = disk(
            "data",
            DiskImage::Sparse {
                path: path.clone(),
                size_bytes: 1 << 30,
            },
        );
        let drives = prepare(std::slice::from_ref(&spec)).unwrap();
        assert_eq!(drives[0].path_on_host.as_deref(), Some(path.as_str()));
        assert_eq!(drives[0].cache_type.as_deref(), Some("Writeback"));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(meta.blocks() < 64, "sparse: {} blocks", meta.blocks());
        // Written data survives a second launch (a stop/start of the VM).
        std::fs::write(&path, b"guest data").unwrap();
        prepare(&[spec]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"guest data");
    }

    #[test]
    fn bad_images_are_refused_with_the_volume_named() {
        let d = scratch("bad");
        let q = d.join("q.img");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        let e = prepare(&[disk(
            "root",
            DiskImage::File {
                path: q.display().to_string(),
            },
        )]);
        assert!(matches!(e, Err(DiskError::Qcow2 { .. })), "{e:?}");
        let e = prepare(&[disk(
            "gone",
            DiskImage::File {
                path: d.join("missing").display().to_string(),
            },
        )])
        .unwrap_err();
        assert!(e.to_string().starts_with("volume gone: "), "{e}");
        let e = prepare(&[disk(
            "blk",
            DiskImage::Device {
                path: q.display().to_string(),
            },
        )]);
        assert!(matches!(e, Err(DiskError::NotABlockDevice { .. })), "{e:?}");
    }
}
