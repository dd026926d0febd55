//! One virtio-blk request: parsed from a checked descriptor chain, then executed on the image.
//! Every malformed request gets an error status (when it has a status byte), never a panic.

use tracing::debug;
use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::{DiskImage, SECTOR_SIZE};
use crate::virtio::chain::{iovecs, Chain, Segment};

/// Header: type (u32), reserved (u32), sector (u64).
const HEADER_LEN: u32 = 16;
/// One discard / write-zeroes range: sector (u64), sectors (u32), flags (u32).
const RANGE_LEN: u64 = 16;
/// Discard and write-zeroes ranges per request the device accepts.
pub const MAX_RANGES: u32 = 32;
/// Sectors per discard or write-zeroes range the device accepts (2 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 22;

/// The used-ring length for a request: data bytes written to the guest plus the status byte,
/// or 0 when the chain has nowhere to put a status.
pub fn handle_request(chain: &Chain, mem: &GuestMemoryMmap, disk: &DiskImage) -> u32 {
    let Some(status_at) = status_address(chain) else {
        debug!("virtio-blk: request without a status byte; dropped");
        return 0;
    };
    let (status, written) = match execute(chain, mem, disk) {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(status) => (status, 0),
    };
    if mem.write_obj(status as u8, status_at).is_err() {
        return 0;
    }
    written + 1
}

/// The last byte of the last buffer, if that buffer is device-writable.
fn status_address(chain: &Chain) -> Option<GuestAddress> {
    let last = chain.segments.last()?;
    (last.writable && last.len >= 1).then(|| GuestAddress(last.addr.0 + u64::from(last.len) - 1))
}

/// Runs the request; the data length written to the guest, or the error status.
fn execute(chain: &Chain, mem: &GuestMemoryMmap, disk: &DiskImage) -> Result<u32, u32> {
    let segs = &chain.segments;
    let header = segs.first().filter(|s| !s.writable && s.len >= HEADER_LEN);
    let Some(header) = header else {
        debug!("virtio-blk: first buffer is not a readable 16-byte header");
        return Err(VIRTIO_BLK_S_IOERR);
    };
    let ty: u32 = mem.read_obj(header.addr).map_err(|_| VIRTIO_BLK_S_IOERR)?;
    let sector: u64 = mem
        .read_obj(GuestAddress(header.addr.0 + 8))
        .map_err(|_| VIRTIO_BLK_S_IOERR)?;
    // Between the header and the status buffer.
    let data = &segs[1..segs.len() - 1];
    let data_len: u64 = data.iter().map(|s| u64::from(s.len)).sum();
    let all = |writable: bool| data.iter().all(|s| s.writable == writable);

    match ty {
        VIRTIO_BLK_T_IN => {
            if !all(true) {
                return Err(VIRTIO_BLK_S_IOERR);
            }
            let offset = check_range(disk, sector, data_len)?;
            let iov = iovecs(mem, data).map_err(|_| VIRTIO_BLK_S_IOERR)?;
            disk.read_vectored_at(iov, offset).map_err(io_error)?;
            u32::try_from(data_len).map_err(|_| VIRTIO_BLK_S_IOERR)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() || !all(false) {
                return Err(VIRTIO_BLK_S_IOERR);
            }
            let offset = check_range(disk, sector, data_len)?;
            let iov = iovecs(mem, data).map_err(|_| VIRTIO_BLK_S_IOERR)?;
            disk.write_vectored_at(iov, offset).map_err(io_error)?;
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only() {
                disk.flush().map_err(io_error)?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let Some(buf) = data.first().filter(|s| s.writable && data.len() == 1) else {
                return Err(VIRTIO_BLK_S_IOERR);
            };
            let id = disk.id();
            let n = id.len().min(buf.len as usize);
            mem.write_slice(&id[..n], buf.addr)
                .map_err(|_| VIRTIO_BLK_S_IOERR)?;
            Ok(n as u32)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if disk.read_only() || !all(false) {
                return Err(VIRTIO_BLK_S_IOERR);
            }
            let must_zero = ty == VIRTIO_BLK_T_WRITE_ZEROES;
            punch_ranges(mem, disk, data, data_len, must_zero)?;
            Ok(0)
        }
        other => {
            debug!("virtio-blk: unsupported request type {other}");
            Err(VIRTIO_BLK_S_UNSUPP)
        }
    }
}

fn io_error(e: std::io::Error) -> u32 {
    debug!("virtio-blk: I/O error: {e}");
    VIRTIO_BLK_S_IOERR
}

/// Byte offset of `sector` if `len` bytes from there are whole sectors inside the disk.
fn check_range(disk: &DiskImage, sector: u64, len: u64) -> Result<u64, u32> {
    let sectors = len / SECTOR_SIZE;
    let inside = sector
        .checked_add(sectors)
        .is_some_and(|end| end <= disk.sectors());
    if !len.is_multiple_of(SECTOR_SIZE) || !inside {
        debug!("virtio-blk: {len} bytes at sector {sector} is not inside the disk");
        return Err(VIRTIO_BLK_S_IOERR);
    }
    Ok(sector * SECTOR_SIZE)
}

/// Discard and write-zeroes both deallocate: the ranges read back as zeros and a sparse image
/// stays sparse.
fn punch_ranges(
    mem: &GuestMemoryMmap,
    disk: &DiskImage,
    data: &[Segment],
    data_len: u64,
    must_zero: bool,
) -> Result<(), u32> {
    if data.len() != 1
        || !data_len.is_multiple_of(RANGE_LEN)
        || data_len / RANGE_LEN > MAX_RANGES.into()
    {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    let buf = data[0];
    for i in 0..data_len / RANGE_LEN {
        let at = GuestAddress(buf.addr.0 + i * RANGE_LEN);
        let sector: u64 = mem.read_obj(at).map_err(|_| VIRTIO_BLK_S_IOERR)?;
        let count: u32 = mem
            .read_obj(GuestAddress(at.0 + 8))
            .map_err(|_| VIRTIO_BLK_S_IOERR)?;
        if count > MAX_RANGE_SECTORS {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        let len = u64::from(count) * SECTOR_SIZE;
        let offset = check_range(disk, sector, len)?;
        disk.punch_hole(offset, len, must_zero).map_err(io_error)?;
    }
    Ok(())
}
