//! Checks a guest descriptor chain before a device touches it: every buffer inside guest memory,
//! the chain finite (no loop, no index past the table), the total length bounded.

use thiserror::Error;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (the guest reads it back).
    pub writable: bool,
}

/// A checked chain: the head index (for the used ring) and its buffers in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("buffer at {addr:#x} of {len} bytes is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("chain loops or links past the descriptor table")]
    Unterminated,
    #[error("chain of {0} bytes is longer than the device accepts")]
    TooLong(u64),
    #[error("a device-readable buffer follows a device-writable one")]
    ReadableAfterWritable,
    #[error("chain has no buffers")]
    Empty,
    #[error("{0}")]
    Layout(&'static str),
}

impl Chain {
    /// Walks `chain`, checking each buffer against `mem`; `max_bytes` bounds the total length.
    pub fn parse(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        max_bytes: u64,
    ) -> Result<Chain, ChainError> {
        let head = chain.head_index();
        let mut segments = Vec::new();
        let mut total = 0u64;
        let mut last_has_next = false;
        for desc in chain {
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
                writable: desc.is_write_only(),
            };
            let access = if seg.writable {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !mem.check_range(seg.addr, seg.len as usize, access) {
                return Err(ChainError::OutsideMemory {
                    addr: seg.addr.0,
                    len: seg.len,
                });
            }
            if !seg.writable && segments.last().is_some_and(|s: &Segment| s.writable) {
                return Err(ChainError::ReadableAfterWritable);
            }
            total += u64::from(seg.len);
            if total > max_bytes {
                return Err(ChainError::TooLong(total));
            }
            last_has_next = desc.has_next();
            segments.push(seg);
        }
        // The iterator stops silently after queue-size descriptors or at an index outside the
        // table; a last descriptor that still points onwards means the chain never ended.
        if last_has_next {
            return Err(ChainError::Unterminated);
        }
        if segments.is_empty() {
            return Err(ChainError::Empty);
        }
        Ok(Chain { head, segments })
    }

    pub fn readable(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| !s.writable)
    }

    pub fn writable(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.writable)
    }
}

/// Host iovecs for guest buffers, for one vectored system call. Each buffer was checked against
/// guest memory by `Chain::parse`; one that is not (now) fully mapped is an error.
pub fn iovecs(mem: &GuestMemoryMmap, segments: &[Segment]) -> Result<Vec<libc::iovec>, ChainError> {
    let mut out = Vec::with_capacity(segments.len());
    for seg in segments {
        let access = if seg.writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let outside = || ChainError::OutsideMemory {
            addr: seg.addr.0,
            len: seg.len,
        };
        for slice in mem
            .get_slices(seg.addr, seg.len as usize, access)
            .map_err(|_| outside())?
        {
            let slice = slice.map_err(|_| outside())?;
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(out)
}

/// Drops the first `n` bytes from `iov` (after a short vectored read or write).
pub fn advance_iovecs(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut skip = 0;
    for v in iov.iter_mut() {
        if n < v.iov_len {
            // SAFETY: stays inside the same buffer (n < its length).
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            break;
        }
        n -= v.iov_len;
        skip += 1;
    }
    iov.drain(..skip);
}
