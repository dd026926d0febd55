//! Guest RAM: anonymous mappings laid out around the 32-bit device window.

use thiserror::Error;
use tracing::debug;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::ram_regions;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot map {mib} MiB of guest memory: {detail}")]
    Map { mib: u64, detail: String },
}

/// Maps `mem_bytes` of guest RAM (lazily backed: untouched pages cost nothing).
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<_> = ram_regions(mem_bytes)
        .into_iter()
        .map(|(addr, len)| (addr, len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Map {
        mib: mem_bytes >> 20,
        detail: e.to_string(),
    })?;
    for region in mem.iter() {
        // Transparent huge pages: loading the kernel touches ~10 MB, and 2 MiB pages turn
        // thousands of page faults into a handful. Advisory only; without THP nothing changes.
        // SAFETY: the range is exactly one live mapping owned by `mem`.
        let rc = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if rc != 0 {
            debug!(
                "madvise(MADV_HUGEPAGE) on guest memory: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(mem)
}
