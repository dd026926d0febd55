//! Why an import failed, and whether trying again can help: the exit status tells the
//! controller (1: retried with back-off; 2: the DataVolume fails).

use std::io;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImportError {
    /// The source could not be reached or read (network, registry down, HTTP errors).
    #[error("reading the source: {0}")]
    Source(String),
    /// Writing the volume failed.
    #[error("writing the volume: {0}")]
    Write(io::Error),
    /// The data is not what it claims to be: a digest or checksum mismatch.
    #[error("{0}")]
    Integrity(String),
    /// An image Kiln cannot turn into a raw disk.
    #[error("unsupported image: {0}")]
    Format(String),
    #[error("the image's virtual size ({size} bytes) is larger than the volume's {capacity} bytes: give the DataVolume more storage")]
    TooLarge { size: u64, capacity: u64 },
    /// A containerDisk without a disk under /disk/.
    #[error("{0}")]
    NoDisk(String),
}

impl ImportError {
    pub fn read(e: io::Error) -> ImportError {
        // The verifying streams report a digest mismatch as an I/O error at the end.
        let text = e.to_string();
        if text.contains("digest") && (text.contains("mismatch") || text.contains("match")) {
            ImportError::Integrity(text)
        } else if e.kind() == io::ErrorKind::InvalidData {
            ImportError::Format(text)
        } else {
            ImportError::Source(text)
        }
    }

    pub fn write(e: io::Error) -> ImportError {
        ImportError::Write(e)
    }

    /// Whether another attempt can succeed (the data is the same next time for the others).
    pub fn transient(&self) -> bool {
        matches!(self, ImportError::Source(_) | ImportError::Write(_))
    }
}
