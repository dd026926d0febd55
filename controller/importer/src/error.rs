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
    /// The data is not what it claims to be: a digest or checksum mismatch, corrupt data.
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
        // (oci-client: "Invalid digest. Expected X, got Y"); a decoder's corrupt-data error is
        // data that is not what was published. Connection errors and truncation may pass.
        let text = e.to_string();
        if text.contains("Invalid digest") || (text.contains("digest") && text.contains("mismatch"))
        {
            ImportError::Integrity(text)
        } else if matches!(
            e.kind(),
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
        ) {
            ImportError::Integrity(format!("corrupt data: {text}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_data_fails_for_good_and_connection_errors_are_retried() {
        let digest = io::Error::other("Invalid digest. Expected sha256:aa, got sha256:bb");
        assert!(matches!(
            ImportError::read(digest),
            ImportError::Integrity(_)
        ));
        let gzip = io::Error::new(
            io::ErrorKind::InvalidInput,
            "corrupt gzip stream does not have a matching checksum",
        );
        let e = ImportError::read(gzip);
        assert!(
            matches!(e, ImportError::Integrity(_)) && !e.transient(),
            "{e}"
        );
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(ImportError::read(reset).transient());
        let cut = io::Error::new(io::ErrorKind::UnexpectedEof, "cut");
        assert!(ImportError::read(cut).transient());
    }
}
