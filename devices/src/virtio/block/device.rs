//! The virtio-blk device: features and configuration space for an image, and the request
//! handler behind the single request queue (served on the VMM's event loop).

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::GuestMemoryMmap;

use super::disk::DiskImage;
use super::request::{handle_request, MAX_RANGES, MAX_RANGE_SECTORS};
use crate::virtio::chain::Chain;
use crate::virtio::{RequestHandler, SingleQueueDevice, COMMON_FEATURES, QUEUE_SIZE};

/// Data buffers per request: the queue minus the header and status buffers.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// A virtio-blk device on a disk image.
pub type Block = SingleQueueDevice<BlockRequests>;

pub struct BlockRequests {
    disk: DiskImage,
    features: u64,
    config: Vec<u8>,
}

impl Block {
    /// A disk whose guest flushes reach the image (VIRTIO_BLK_F_FLUSH, fdatasync).
    pub fn new(disk: DiskImage) -> std::io::Result<Block> {
        Self::with_flush(disk, true)
    }

    /// `flush` false leaves VIRTIO_BLK_F_FLUSH out (Firecracker's `Unsafe` cache type): the
    /// guest's writes end in the host's page cache without ever being synced.
    pub fn with_flush(disk: DiskImage, flush: bool) -> std::io::Result<Block> {
        let mut features = COMMON_FEATURES | (1 << VIRTIO_BLK_F_SEG_MAX);
        if flush {
            features |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if disk.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let config = config_space(disk.sectors());
        SingleQueueDevice::with_handler(BlockRequests {
            disk,
            features,
            config,
        })
    }
}

impl Block {
    /// Swaps the backing image (same read-only mode) and tells the driver the capacity may
    /// have changed. In-flight requests finished before this call: the device runs on the
    /// same thread as the caller.
    pub fn replace_disk(&mut self, disk: DiskImage) {
        let handler = self.handler_mut();
        handler.config = config_space(disk.sectors());
        handler.disk = disk;
        self.config_changed();
    }

    /// The image's read-only mode.
    pub fn read_only(&mut self) -> bool {
        self.handler_mut().disk.read_only()
    }
}

/// struct virtio_blk_config, little-endian, up to write_zeroes_may_unmap.
fn config_space(sectors: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &sectors.to_le_bytes()); // capacity
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
    put(36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
    put(40, &MAX_RANGES.to_le_bytes()); // max_discard_seg
    put(44, &1u32.to_le_bytes()); // discard_sector_alignment
    put(48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &MAX_RANGES.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

impl RequestHandler for BlockRequests {
    const DEVICE_TYPE: u32 = VIRTIO_ID_BLOCK;
    const NAME: &'static str = "virtio-blk";
    /// The virtio limit on a chain (4 GiB); each buffer is also checked against guest memory.
    const MAX_REQUEST_BYTES: u64 = u32::MAX as u64;

    fn features(&self) -> u64 {
        self.features
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn handle(&mut self, chain: &Chain, mem: &GuestMemoryMmap) -> u32 {
        handle_request(chain, mem, &self.disk)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
