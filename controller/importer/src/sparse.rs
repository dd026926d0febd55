//! Writing a disk image sparse: blocks of zeros become holes in a file (a device gets them
//! written, since its old contents would otherwise show through), and the file ends at the
//! image's size or the volume's, whichever the caller sets.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// The granularity of holes: the usual filesystem block.
const BLOCK: usize = 4096;
/// How much is read at a time.
const CHUNK: usize = 1 << 20;

pub struct SparseWriter {
    file: File,
    /// Holes are left only in regular files.
    holes: bool,
    offset: u64,
    /// Writing beyond this fails (FileTooLarge): the image does not fit the volume.
    limit: Option<u64>,
}

fn is_zero(block: &[u8]) -> bool {
    // Word-wise: the compiler vectorises this; a byte loop is several times slower.
    let words = block.chunks_exact(8);
    let tail = words.remainder();
    words
        .map(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .fold(0, |acc, w| acc | w)
        == 0
        && tail.iter().all(|b| *b == 0)
}

impl SparseWriter {
    pub fn new(file: File, holes: bool) -> SparseWriter {
        SparseWriter {
            file,
            holes,
            offset: 0,
            limit: None,
        }
    }

    pub fn with_limit(mut self, limit: Option<u64>) -> SparseWriter {
        self.limit = limit;
        self
    }

    fn check_limit(&self, len: u64) -> io::Result<()> {
        match self.limit {
            Some(l) if self.offset + len > l => Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("the image is larger than the volume's {l} bytes"),
            )),
            _ => Ok(()),
        }
    }

    /// Bytes of the image so far (holes included).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Writes `data` at the current offset, skipping blocks of zeros in files.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.check_limit(data.len() as u64)?;
        if !self.holes {
            self.file.write_all_at(data, self.offset)?;
            self.offset += data.len() as u64;
            return Ok(());
        }
        let mut run_start: Option<usize> = None;
        for (i, block) in data.chunks(BLOCK).enumerate() {
            let at = i * BLOCK;
            match (is_zero(block), run_start) {
                (false, None) => run_start = Some(at),
                (true, Some(s)) => {
                    self.file
                        .write_all_at(&data[s..at], self.offset + s as u64)?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run_start {
            self.file.write_all_at(&data[s..], self.offset + s as u64)?;
        }
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Skips `len` bytes known to be zero (a hole in the source).
    pub fn skip(&mut self, len: u64) -> io::Result<()> {
        self.check_limit(len)?;
        if !self.holes {
            let zeros = vec![0u8; CHUNK];
            let mut left = len;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                self.file.write_all_at(&zeros[..n], self.offset)?;
                self.offset += n as u64;
                left -= n as u64;
            }
            return Ok(());
        }
        self.offset += len;
        Ok(())
    }

    /// Copies everything `src` yields; returns the bytes copied. `tick` sees each chunk's size.
    pub fn copy_from(&mut self, src: &mut dyn Read, tick: &dyn Fn(u64)) -> io::Result<u64> {
        let mut buf = vec![0u8; CHUNK];
        let start = self.offset;
        loop {
            // Fill whole chunks where the source allows (decoders return small reads), so that
            // zero detection sees whole blocks.
            let mut filled = 0;
            while filled < buf.len() {
                match src.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if filled == 0 {
                break;
            }
            self.write(&buf[..filled])?;
            tick(filled as u64);
            if filled < buf.len() {
                break;
            }
        }
        Ok(self.offset - start)
    }

    /// Ends the image: a file is cut or extended to `size` (None: where the data ended) and
    /// flushed to stable storage.
    pub fn finish(self, size: Option<u64>) -> io::Result<File> {
        if self.holes {
            self.file.set_len(size.unwrap_or(self.offset))?;
        }
        self.file.sync_all()?;
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes_and_data_survives() {
        let dir = std::env::temp_dir().join(format!("kiln-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        let mut image = vec![0u8; 8 << 20];
        image[5] = 1;
        image[(4 << 20) + 4095] = 7;
        image[(8 << 20) - 1] = 9;
        let mut w = SparseWriter::new(File::create(&path).unwrap(), true);
        let n = w.copy_from(&mut &image[..], &|_| {}).unwrap();
        assert_eq!(n, image.len() as u64);
        w.finish(Some(16 << 20)).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 16 << 20);
        assert_eq!(&back[..image.len()], &image[..]);
        assert!(back[image.len()..].iter().all(|b| *b == 0));
        // Three data blocks; the rest are holes.
        let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(blocks <= 64 * 1024, "{blocks} bytes allocated");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
