//! A raw disk image file: size in sectors, read-only flag, serial, and the host I/O calls.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::warn;
use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;

use crate::host_file::{open_checked, Accept, HostFileError};
use crate::virtio::chain::advance_iovecs;

pub const SECTOR_SIZE: u64 = 512;

#[derive(Debug, Error)]
pub enum DiskError {
    #[error(transparent)]
    File(#[from] HostFileError),
    #[error("disk image {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("disk image {0} is smaller than one 512-byte sector")]
    TooSmall(PathBuf),
    #[error("disk image {0} is in use by another process (locked)")]
    Locked(PathBuf),
    #[error("disk id {0:?} is longer than 20 bytes")]
    IdTooLong(String),
}

#[derive(Debug)]
pub struct DiskImage {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

impl DiskImage {
    /// Opens `path` (read-only if asked) and takes a lock on it: shared for read-only use,
    /// exclusive for writing, so two VMs never write one image.
    pub fn open(path: &Path, read_only: bool, id: Option<&str>) -> Result<DiskImage, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_owned(),
            source,
        };
        let (file, meta) = open_checked("disk image", path, !read_only, Accept::RegularOrBlock)?;
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        let lock = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            return Err(DiskError::Locked(path.to_owned()));
        }
        let len = if ft.is_block_device() {
            use std::io::Seek;
            (&file).seek(io::SeekFrom::End(0)).map_err(open_err)?
        } else {
            meta.len()
        };
        if len % SECTOR_SIZE != 0 {
            warn!(
                "disk image {}: size {len} is not a multiple of 512; the tail is not used",
                path.display()
            );
        }
        let sectors = len / SECTOR_SIZE;
        if sectors == 0 {
            return Err(DiskError::TooSmall(path.to_owned()));
        }
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        if let Some(id) = id {
            if id.len() > serial.len() {
                return Err(DiskError::IdTooLong(id.to_owned()));
            }
            serial[..id.len()].copy_from_slice(id.as_bytes());
        }
        Ok(DiskImage {
            file,
            sectors,
            read_only,
            id: serial,
        })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// Reads exactly the bytes the iovecs hold, from `offset`.
    pub fn read_vectored_at(&self, iov: Vec<libc::iovec>, offset: u64) -> io::Result<()> {
        self.vectored_at(iov, offset, |fd, iov, n, off| {
            // SAFETY: every iovec points at guest memory that stays mapped for the call.
            unsafe { libc::preadv(fd, iov, n, off) }
        })
    }

    /// Writes exactly the bytes the iovecs hold, at `offset`.
    pub fn write_vectored_at(&self, iov: Vec<libc::iovec>, offset: u64) -> io::Result<()> {
        self.vectored_at(iov, offset, |fd, iov, n, off| {
            // SAFETY: every iovec points at guest memory that stays mapped for the call.
            unsafe { libc::pwritev(fd, iov, n, off) }
        })
    }

    fn vectored_at(
        &self,
        mut iov: Vec<libc::iovec>,
        mut offset: u64,
        call: impl Fn(i32, *const libc::iovec, i32, i64) -> isize,
    ) -> io::Result<()> {
        while !iov.is_empty() {
            let count = iov.len().min(libc::UIO_MAXIOV as usize) as i32;
            let off =
                i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
            let n = call(self.file.as_raw_fd(), iov.as_ptr(), count, off);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            advance_iovecs(&mut iov, n as usize);
            offset += n as u64;
        }
        Ok(())
    }

    /// Data (and the metadata needed to read it back) reaches stable storage.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates a byte range so it reads back as zeros; the image keeps its size. Where the
    /// filesystem cannot punch holes, a discard (`must_zero` false: advice, the spec lets the
    /// data stay) does nothing, and a write-zeroes tries FALLOC_FL_ZERO_RANGE before it writes
    /// zeros: a guest's 32 × 2 GiB discard never rewrites the image on the event loop.
    pub fn punch_hole(&self, offset: u64, len: u64, must_zero: bool) -> io::Result<()> {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | keep, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            done => return done,
        }
        if !must_zero
            || self
                .fallocate(libc::FALLOC_FL_ZERO_RANGE | keep, offset, len)
                .is_ok()
        {
            return Ok(());
        }
        self.write_zeros(offset, len)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
        };
        // SAFETY: fallocate on a file descriptor we own; no memory is involved.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zeros(&self, mut offset: u64, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let zeros = vec![0u8; 64 * 1024];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}
