//! Opening the host files a user names (kernels, initrds, disk images, CPU templates, config
//! files) without ever blocking on them: a FIFO or a device is refused by its type, not waited on.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What kinds of file a caller accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Regular files only (kernels, initrds, templates, config files).
    Regular,
    /// Regular files and block devices (disk images).
    RegularOrBlock,
}

#[derive(Debug, Error)]
pub enum HostFileError {
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {path} is {kind}, not {wanted}")]
    WrongType {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
        wanted: &'static str,
    },
    #[error("{what} {path} is larger than {limit} bytes")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        limit: u64,
    },
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn kind_name(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a regular file"
    }
}

/// Opens `path` (for writing too when `write`) with `O_NONBLOCK`, so opening a FIFO returns at
/// once; checks the type against `accept`, then clears `O_NONBLOCK` for ordinary blocking I/O.
pub fn open_checked(
    what: &'static str,
    path: &Path,
    write: bool,
    accept: Accept,
) -> Result<(File, Metadata), HostFileError> {
    let open_err = |source| HostFileError::Open {
        what,
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    let t = meta.file_type();
    let ok = t.is_file() || (accept == Accept::RegularOrBlock && t.is_block_device());
    if !ok {
        return Err(HostFileError::WrongType {
            what,
            path: path.to_owned(),
            kind: kind_name(&meta),
            wanted: match accept {
                Accept::Regular => "a regular file",
                Accept::RegularOrBlock => "a regular file or block device",
            },
        });
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; no memory is involved.
    let cleared = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(open_err(io::Error::last_os_error()));
    }
    Ok((file, meta))
}

/// Reads a regular file of at most `limit` bytes as UTF-8 text.
pub fn read_text(what: &'static str, path: &Path, limit: u64) -> Result<String, HostFileError> {
    let (file, _) = open_checked(what, path, false, Accept::Regular)?;
    let read_err = |source| HostFileError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    // Read one byte past the limit: the file may have grown since fstat.
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > limit {
        return Err(HostFileError::TooLarge {
            what,
            path: path.to_owned(),
            limit,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kiln-host-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_fifo_is_refused_at_once_for_reading_and_writing() {
        let fifo = temp("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = Instant::now();
        let err = open_checked("kernel image", &fifo, false, Accept::Regular).unwrap_err();
        assert!(
            err.to_string().ends_with("is a FIFO, not a regular file"),
            "{err}"
        );
        // Read-write (a writable drive) opens without a reader too, and is refused by type.
        let err = open_checked("drive image", &fifo, true, Accept::RegularOrBlock).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is a FIFO, not a regular file or block device"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        std::fs::remove_file(fifo).unwrap();
    }

    #[test]
    fn devices_and_directories_are_named_by_type() {
        let err = read_text("CPU template", Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("is a character device"), "{err}");
        let err = open_checked("initrd", Path::new("/"), false, Accept::Regular).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[test]
    fn text_is_read_up_to_its_limit_only() {
        let p = temp("text");
        std::fs::write(&p, "x".repeat(100)).unwrap();
        assert_eq!(read_text("config file", &p, 100).unwrap().len(), 100);
        let err = read_text("config file", &p, 99).unwrap_err();
        assert!(err.to_string().contains("larger than 99 bytes"), "{err}");
        // The descriptor is blocking again after the check.
        let (f, _) = open_checked("config file", &p, false, Accept::Regular).unwrap();
        // SAFETY: F_GETFL on a descriptor we own.
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        std::fs::remove_file(p).unwrap();
    }
}
