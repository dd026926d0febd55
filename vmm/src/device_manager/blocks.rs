//! Handles on the VM's virtio-blk devices by drive id, for the API's post-boot drive updates.

use std::path::Path;
use std::sync::{Arc, Mutex};

use devices::virtio::block::{Block, DiskError, DiskImage};
use thiserror::Error;
use tracing::info;

#[derive(Debug, Error)]
pub enum DriveUpdateError {
    #[error("no drive {0:?} in this VM")]
    NoSuchDrive(String),
    #[error("drive {0}: {1}")]
    Disk(String, DiskError),
}

/// The VM's block devices, each with its drive id.
#[derive(Clone, Default)]
pub struct BlockDevices(pub Vec<(String, Arc<Mutex<Block>>)>);

impl BlockDevices {
    /// Points drive `id` at a new image: opened (and locked) first, so a bad path changes
    /// nothing; the guest gets a configuration-change interrupt and re-reads the capacity.
    pub fn replace_image(&self, id: &str, path: &Path) -> Result<(), DriveUpdateError> {
        let (_, dev) = self
            .0
            .iter()
            .find(|(d, _)| d == id)
            .ok_or_else(|| DriveUpdateError::NoSuchDrive(id.into()))?;
        let mut dev = match dev.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let serial: String = id.chars().take(20).collect();
        let disk = DiskImage::open(path, dev.read_only(), Some(&serial))
            .map_err(|e| DriveUpdateError::Disk(id.into(), e))?;
        info!(
            "drive {id}: now {} ({} MiB)",
            path.display(),
            disk.sectors() >> 11
        );
        dev.replace_disk(disk);
        Ok(())
    }
}
