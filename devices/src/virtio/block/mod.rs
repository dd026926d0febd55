//! virtio-blk on a raw image file: read, write, flush, GET_ID, discard and write-zeroes.

mod device;
mod disk;
mod request;

pub use device::Block;
pub use disk::{DiskError, DiskImage, SECTOR_SIZE};
