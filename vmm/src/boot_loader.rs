//! Loading the kernel (ELF vmlinux or bzImage) and the initrd into guest memory, with the checks
//! that turn a wrong file or too little memory into a clear error.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use devices::host_file::{open_checked, Accept, HostFileError};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::boot::InitrdPlacement;
use crate::arch::x86_64::layout::{low_ram_end, HIMEM_START};
use crate::arch::x86_64::regs::EntryMode;

const PAGE_SIZE: u64 = 4096;
const MIB: u64 = 1 << 20;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// xloadflags bit: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
const STARTUP_64_OFFSET: u64 = 0x200;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    File(#[from] HostFileError),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Linux kernel: expected an x86_64 ELF vmlinux or a bzImage")]
    UnknownFormat { path: PathBuf },
    #[error("{path} is an ELF file but not an x86_64 kernel: {why}")]
    NotX86_64Elf { path: PathBuf, why: String },
    #[error("{path} is a bzImage without a 64-bit entry point (boot protocol {version:#x}, xloadflags {xloadflags:#x})")]
    BzImageNot64Bit {
        path: PathBuf,
        version: u16,
        xloadflags: u16,
    },
    #[error("{path} is not a usable bzImage: {why}")]
    BadBzImage { path: PathBuf, why: String },
    #[error("guest memory too small: the kernel needs memory up to {needed_mib} MiB, the VM has {have_mib} MiB")]
    KernelDoesNotFit { needed_mib: u64, have_mib: u64 },
    #[error("loading kernel {path}: {source}")]
    Loader {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("initrd {path} is empty")]
    EmptyInitrd { path: PathBuf },
    #[error("initrd {path} ({size_mib} MiB) does not fit in guest memory ({have_mib} MiB) above the kernel (which ends at {kernel_end_mib} MiB)")]
    InitrdDoesNotFit {
        path: PathBuf,
        size_mib: u64,
        have_mib: u64,
        kernel_end_mib: u64,
    },
}

/// Where and how the kernel was loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: u64,
    pub mode: EntryMode,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
    /// First address above everything the kernel occupies while it starts (bss, decompression).
    pub end: u64,
    /// Highest address an initrd may end at (bzImage `initrd_addr_max`).
    pub initrd_limit: u64,
}

fn open(what: &'static str, path: &Path) -> Result<File, LoadError> {
    Ok(open_checked(what, path, false, Accept::Regular)?.0)
}

fn mib_up(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// Little-endian fields of a header; `None` when the field lies past the end of `b`.
fn field<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    field(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    field(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    field(b, off).map(u64::from_le_bytes)
}

/// Validates an ELF header and program headers; returns the end of the highest PT_LOAD segment.
fn check_elf(path: &Path, image: &[u8]) -> Result<u64, LoadError> {
    let bad = |why: String| LoadError::NotX86_64Elf {
        path: path.into(),
        why,
    };
    if image.len() < 64 {
        return Err(bad("truncated ELF header".into()));
    }
    if image[4] != ELFCLASS64 {
        return Err(bad(format!("ELF class {} (need 64-bit)", image[4])));
    }
    if image[5] != ELFDATA2LSB {
        return Err(bad("big-endian".into()));
    }
    // Every field below lies in the first 64 bytes, which are present.
    let at16 = |off| u16_at(image, off).unwrap_or(0);
    let machine = at16(18);
    if machine != EM_X86_64 {
        return Err(bad(format!(
            "machine type {machine} (x86_64 is {EM_X86_64})"
        )));
    }
    let kind = at16(16);
    if kind != ET_EXEC {
        return Err(bad(format!(
            "ELF type {kind}, a vmlinux is an executable (type {ET_EXEC})"
        )));
    }
    let phoff = u64_at(image, 32).unwrap_or(u64::MAX);
    let phentsize = u64::from(at16(54));
    let phnum = u64::from(at16(56));
    if phentsize < 56 || phnum == 0 {
        return Err(bad("no program headers".into()));
    }
    let outside = || bad("program headers lie outside the file".into());
    let mut end = 0u64;
    for i in 0..phnum {
        let off = usize::try_from(phoff.checked_add(i * phentsize).ok_or_else(outside)?)
            .map_err(|_| outside())?;
        let (kind, paddr, memsz) = match (
            u32_at(image, off),
            u64_at(image, off.saturating_add(24)),
            u64_at(image, off.saturating_add(40)),
        ) {
            (Some(k), Some(p), Some(m)) => (k, p, m),
            _ => return Err(outside()),
        };
        if kind == PT_LOAD {
            let seg_end = paddr
                .checked_add(memsz)
                .ok_or_else(|| bad("segment wraps the address space".into()))?;
            end = end.max(seg_end);
        }
    }
    if end == 0 {
        return Err(bad("no loadable segments".into()));
    }
    Ok(end)
}

/// Loads the kernel at `path` into `mem` (which has `mem_bytes` of RAM).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    path: &Path,
) -> Result<LoadedKernel, LoadError> {
    let mut file = open("kernel image", path)?;
    let read_err = |source| LoadError::Read {
        what: "kernel image",
        path: path.into(),
        source,
    };
    // Enough for the ELF header and program headers or the bzImage setup header.
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]).map_err(read_err)? {
            0 => break,
            k => n += k,
        }
    }
    head.truncate(n);
    let have = low_ram_end(mem_bytes);
    let loader_err = |source| LoadError::Loader {
        path: path.into(),
        source,
    };

    if head.starts_with(ELF_MAGIC) {
        let end = check_elf(path, &head)?;
        if end > have {
            return Err(LoadError::KernelDoesNotFit {
                needed_mib: mib_up(end),
                have_mib: mem_bytes / MIB,
            });
        }
        let r =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(loader_err)?;
        let (entry, mode) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (addr.0, EntryMode::Pvh),
            _ => (r.kernel_load.0, EntryMode::Linux64),
        };
        return Ok(LoadedKernel {
            entry,
            mode,
            setup_header: None,
            end,
            initrd_limit: have,
        });
    }

    if head.len() >= BZIMAGE_MAGIC_OFFSET + 4
        && &head[BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4] == BZIMAGE_MAGIC
    {
        let bad = |why: &str| LoadError::BadBzImage {
            path: path.into(),
            why: why.into(),
        };
        // The setup header runs to init_size (0x260..0x264) in every 64-bit boot protocol.
        let truncated = || bad("truncated bzImage setup header");
        let version = u16_at(&head, 0x206).ok_or_else(truncated)?;
        let xloadflags = if version >= 0x20c {
            u16_at(&head, 0x236).ok_or_else(truncated)?
        } else {
            0
        };
        if xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoadError::BzImageNot64Bit {
                path: path.into(),
                version,
                xloadflags,
            });
        }
        // The kernel decompresses itself to its preferred address and needs init_size there.
        let pref_address = u64_at(&head, 0x258).ok_or_else(truncated)?;
        let init_size = u64::from(u32_at(&head, 0x260).ok_or_else(truncated)?);
        let end = pref_address
            .max(HIMEM_START)
            .checked_add(init_size)
            .ok_or_else(|| bad("pref_address + init_size wraps the address space"))?;
        if end > have {
            return Err(LoadError::KernelDoesNotFit {
                needed_mib: mib_up(end),
                have_mib: mem_bytes / MIB,
            });
        }
        let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(loader_err)?;
        let header = r.setup_header;
        let initrd_max = header
            .map(|h| u64::from(h.initrd_addr_max))
            .filter(|m| *m > 0)
            .unwrap_or(u64::from(u32::MAX));
        return Ok(LoadedKernel {
            entry: r.kernel_load.0 + STARTUP_64_OFFSET,
            mode: EntryMode::Linux64,
            setup_header: header,
            end: end.max(r.kernel_end),
            initrd_limit: have.min(initrd_max + 1),
        });
    }
    Err(LoadError::UnknownFormat { path: path.into() })
}

/// Loads the initrd as high as possible below the device window, page-aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<InitrdPlacement, LoadError> {
    let mut file = open("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| LoadError::Read {
            what: "initrd",
            path: path.into(),
            source,
        })?
        .len();
    if size == 0 {
        return Err(LoadError::EmptyInitrd { path: path.into() });
    }
    let too_big = || LoadError::InitrdDoesNotFit {
        path: path.into(),
        size_mib: mib_up(size),
        have_mib: mem_bytes / MIB,
        kernel_end_mib: mib_up(kernel.end),
    };
    let address = kernel
        .initrd_limit
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel.end)
        .ok_or_else(too_big)?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, size as usize)
        .map_err(|e| LoadError::Read {
            what: "initrd",
            path: path.into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(InitrdPlacement { address, size })
}

#[cfg(test)]
mod tests;
