//! What an image stream is and how it becomes a raw disk: gzip and xz are decompressed on the
//! fly, qcow2 is staged in scratch space and converted (imago; backing files refused), raw is
//! copied; everything lands sparse in the target, which a failed import never replaces.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, Storage, StorageOpenOptions,
};

use crate::error::ImportError;
use crate::sparse::SparseWriter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
    Gzip,
    Xz,
}

/// The format `head` (the first bytes of an image) announces; formats Kiln does not convert
/// are refused by name.
pub fn detect(head: &[u8]) -> Result<Format, ImportError> {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(&[0x1f, 0x8b]) {
        Ok(Format::Gzip)
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Ok(Format::Xz)
    } else if starts(b"QFI\xfb") {
        Ok(Format::Qcow2)
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(ImportError::Format(
            "zstd-compressed images: compress with gzip or xz".into(),
        ))
    } else if starts(b"KDMV") || starts(b"# Disk DescriptorFile") {
        Err(ImportError::Format(
            "vmdk images: convert to raw or qcow2".into(),
        ))
    } else if starts(b"conectix") || starts(b"vhdxfile") {
        Err(ImportError::Format(
            "vhd/vhdx images: convert to raw or qcow2".into(),
        ))
    } else {
        Ok(Format::Raw)
    }
}

/// Where the disk goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// `disk.img` on a filesystem volume, or the block device.
    pub path: PathBuf,
    pub block: bool,
    /// Bytes the disk may have: a file is extended to this; a larger image is refused.
    pub capacity: Option<u64>,
    /// Where a qcow2 image is staged before conversion.
    pub scratch: PathBuf,
}

/// What was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub format: Format,
    /// The disk's size as the image defines it (before extending to the capacity).
    pub virtual_size: u64,
}

impl Target {
    /// The file written before it becomes the disk (files); the device itself (block).
    fn staging(&self) -> PathBuf {
        if self.block {
            self.path.clone()
        } else {
            let mut p = self.path.clone().into_os_string();
            p.push(".part");
            PathBuf::from(p)
        }
    }

    pub fn open(&self) -> io::Result<SparseWriter> {
        let file = if self.block {
            OpenOptions::new().write(true).open(&self.path)?
        } else {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.staging())?;
            // The launcher's pod reads and writes it through the importer's group.
            f.set_permissions(std::fs::Permissions::from_mode(0o660))?;
            f
        };
        Ok(SparseWriter::new(file, !self.block).with_limit(self.capacity))
    }

    fn check_fits(&self, size: u64) -> Result<(), ImportError> {
        match self.capacity {
            Some(cap) if size > cap => Err(ImportError::TooLarge {
                size,
                capacity: cap,
            }),
            _ => Ok(()),
        }
    }

    /// Makes the staged file the disk (after it was verified), extended to the capacity.
    pub fn commit(&self, w: SparseWriter, virtual_size: u64) -> Result<(), ImportError> {
        self.check_fits(virtual_size)?;
        let size = self.capacity.unwrap_or(virtual_size).max(virtual_size);
        w.finish(Some(size)).map_err(ImportError::write)?;
        if !self.block {
            std::fs::rename(self.staging(), &self.path).map_err(ImportError::write)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(ImportError::write)?;
            }
        }
        Ok(())
    }

    /// Removes what a failed import left (never the disk a previous import made).
    pub fn discard(&self) {
        if !self.block {
            let _ = std::fs::remove_file(self.staging());
        }
        let _ = std::fs::remove_file(self.scratch.join("image.qcow2"));
    }
}

/// Writes the image `src` yields into `target` as raw, decompressing and converting as its
/// format needs. Returns the writer (not yet committed: the caller verifies the source first).
pub fn write_image<'a>(
    src: Box<dyn Read + 'a>,
    target: &Target,
) -> Result<(SparseWriter, Written), ImportError> {
    let mut reader = BufReader::with_capacity(1 << 20, src);
    let mut format = detect(reader.fill_buf().map_err(ImportError::read)?)?;
    let mut decoded: Box<dyn Read + 'a> = match format {
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Format::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader)),
        _ => Box::new(reader),
    };
    if matches!(format, Format::Gzip | Format::Xz) {
        let mut inner = BufReader::with_capacity(1 << 20, decoded);
        let inner_format = detect(inner.fill_buf().map_err(ImportError::read)?)?;
        if matches!(inner_format, Format::Gzip | Format::Xz) {
            return Err(ImportError::Format("an image compressed twice".into()));
        }
        format = inner_format;
        decoded = Box::new(inner);
    }
    let mut w = target.open().map_err(ImportError::write)?;
    let virtual_size = match format {
        Format::Qcow2 => {
            let staged = target.scratch.join("image.qcow2");
            let mut f = File::create(&staged).map_err(ImportError::write)?;
            io::copy(&mut decoded, &mut f).map_err(ImportError::read)?;
            f.sync_all().map_err(ImportError::write)?;
            drop(f);
            let size = convert_qcow2(&staged, &mut w, target)?;
            let _ = std::fs::remove_file(&staged);
            size
        }
        _ => match w.copy_from(&mut decoded, &|_| {}) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                return Err(ImportError::TooLarge {
                    size: w.offset(),
                    capacity: target.capacity.unwrap_or_default(),
                })
            }
            Err(e) => return Err(ImportError::read(e)),
        },
    };
    Ok((
        w,
        Written {
            format,
            virtual_size,
        },
    ))
}

/// Copies a clone's source (a file or device) sparse: only the data, not the holes, of a file
/// is read (SEEK_DATA/SEEK_HOLE).
pub fn copy_claim(
    source: &Path,
    target: &Target,
    tick: &dyn Fn(u64),
) -> Result<(SparseWriter, u64), ImportError> {
    use std::os::unix::io::AsRawFd;
    let mut src = File::open(source)
        .map_err(|e| ImportError::Source(format!("{}: {e}", source.display())))?;
    let size = src.metadata().map(|m| m.len()).map_err(ImportError::read)?;
    let size = if size == 0 {
        // A device: its size is where it ends.
        io::Seek::seek(&mut src, io::SeekFrom::End(0)).map_err(ImportError::read)?
    } else {
        size
    };
    target.check_fits(size)?;
    let mut w = target.open().map_err(ImportError::write)?;
    let fd = src.as_raw_fd();
    let mut at: u64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while at < size {
        // The next data at or after `at`: ENXIO means only a hole is left; a file system
        // without SEEK_DATA makes everything data.
        let data = match lseek(fd, at, libc::SEEK_DATA) {
            Ok(d) => d.min(size),
            Err(libc::ENXIO) => size,
            Err(_) => at,
        };
        if data > at {
            w.skip(data - at).map_err(ImportError::write)?;
            tick(data - at);
            at = data;
        }
        if at >= size {
            break;
        }
        let hole = match lseek(fd, at, libc::SEEK_HOLE) {
            Ok(h) if h > at => h.min(size),
            _ => size,
        };
        while at < hole {
            let n = (hole - at).min(buf.len() as u64) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&src, &mut buf[..n], at)
                .map_err(ImportError::read)?;
            w.write(&buf[..n]).map_err(ImportError::write)?;
            tick(n as u64);
            at += n as u64;
        }
    }
    Ok((w, size))
}

/// lseek(2) for SEEK_DATA/SEEK_HOLE; the errno when it fails.
fn lseek(fd: i32, offset: u64, whence: i32) -> Result<u64, i32> {
    let off = i64::try_from(offset).map_err(|_| libc::EINVAL)?;
    // SAFETY: lseek only reads its integer arguments; `fd` is an open descriptor we own.
    let r = unsafe { libc::lseek(fd, off, whence) };
    u64::try_from(r).map_err(|_| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// Converts the staged qcow2 image to raw through `w`; returns its virtual size.
fn convert_qcow2(staged: &Path, w: &mut SparseWriter, target: &Target) -> Result<u64, ImportError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(ImportError::write)?;
    rt.block_on(async {
        let file = ImagoFile::open(StorageOpenOptions::new().filename(staged))
            .await
            .map_err(ImportError::read)?;
        let image = Qcow2::<ImagoFile>::builder(file)
            .open(DenyImplicitOpenGate::default())
            .await
            .map_err(|e| {
                ImportError::Format(format!(
                    "qcow2 image: {e} (images with backing or external data files are refused)"
                ))
            })?;
        let image = FormatAccess::new(image);
        let size = image.size();
        target.check_fits(size)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < size {
            let want = (size - at).min(buf.len() as u64);
            let (mapping, len) = image
                .get_mapping(at, want)
                .await
                .map_err(|e| ImportError::Format(format!("qcow2 image at {at}: {e}")))?;
            let len = len.clamp(1, want);
            match mapping {
                Mapping::Zero { .. } => w.skip(len).map_err(ImportError::write)?,
                Mapping::Eof { .. } => {
                    w.skip(size - at).map_err(ImportError::write)?;
                    break;
                }
                _ => {
                    let chunk = &mut buf[..len as usize];
                    image
                        .read(&mut *chunk, at)
                        .await
                        .map_err(|e| ImportError::Format(format!("qcow2 image at {at}: {e}")))?;
                    w.write(chunk).map_err(ImportError::write)?;
                }
            }
            at += len;
        }
        Ok(size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The image the qcow2 fixtures hold (tests/data, made by `qemu-img convert -f raw -O qcow2
    /// -o cluster_size=4096`, the second also with `-c`): 4 MiB, four 4 KiB blocks of a pattern.
    fn pattern() -> Vec<u8> {
        let mut data = vec![0u8; 4 << 20];
        for off in [0usize, 70000, (2 << 20) + 123, (4 << 20) - 4096] {
            for i in 0..4096 {
                data[off + i] = ((off + i * 7) % 251 + 1) as u8;
            }
        }
        data
    }

    fn target(name: &str, capacity: Option<u64>) -> Target {
        let dir = std::env::temp_dir().join(format!("kiln-import-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Target {
            path: dir.join("disk.img"),
            block: false,
            capacity,
            scratch: dir.clone(),
        }
    }

    fn import(bytes: Vec<u8>, t: &Target) -> Result<Written, ImportError> {
        let (w, written) = write_image(Box::new(std::io::Cursor::new(bytes)), t)?;
        t.commit(w, written.virtual_size)?;
        Ok(written)
    }

    #[test]
    fn formats_are_told_by_their_magic() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03").unwrap(), Format::Qcow2);
        assert_eq!(detect(&[0x1f, 0x8b, 8]).unwrap(), Format::Gzip);
        assert_eq!(detect(b"\xfd7zXZ\0").unwrap(), Format::Xz);
        assert_eq!(detect(&[0u8; 512]).unwrap(), Format::Raw);
        assert_eq!(detect(b"").unwrap(), Format::Raw);
        for refused in [&b"KDMV"[..], b"conectix", &[0x28, 0xb5, 0x2f, 0xfd]] {
            assert!(matches!(detect(refused), Err(ImportError::Format(_))));
        }
    }

    #[test]
    fn gzip_and_xz_images_arrive_raw_and_extended_to_the_capacity() {
        let raw = pattern();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&raw).unwrap();
        for (name, bytes, format) in [
            ("gz", gz.finish().unwrap(), Format::Raw),
            ("xz", xz.finish().unwrap(), Format::Raw),
        ] {
            let t = target(name, Some(8 << 20));
            let written = import(bytes, &t).unwrap();
            assert_eq!(
                written,
                Written {
                    format,
                    virtual_size: 4 << 20
                },
                "{name}"
            );
            let disk = std::fs::read(&t.path).unwrap();
            assert_eq!(disk.len(), 8 << 20, "{name}: extended to the capacity");
            assert!(disk[..raw.len()] == raw[..], "{name}: data");
            assert!(!t.staging().exists());
        }
    }

    #[test]
    fn qcow2_images_are_converted_to_raw() {
        for fixture in ["pattern.qcow2", "pattern-compressed.qcow2"] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/").to_string() + fixture;
            let bytes = std::fs::read(&path).unwrap();
            let t = target(fixture, None);
            let written = import(bytes, &t).unwrap();
            assert_eq!(
                written,
                Written {
                    format: Format::Qcow2,
                    virtual_size: 4 << 20
                }
            );
            assert!(std::fs::read(&t.path).unwrap() == pattern(), "{fixture}");
            assert!(!t.scratch.join("image.qcow2").exists(), "scratch cleaned");
        }
    }

    #[test]
    fn an_image_larger_than_the_volume_is_refused_and_leaves_no_disk() {
        let t = target("large", Some(1 << 20));
        let err = import(pattern(), &t).unwrap_err();
        assert!(matches!(err, ImportError::TooLarge { .. }), "{err}");
        assert!(!err.transient());
        t.discard();
        assert!(!t.path.exists() && !t.staging().exists());
        // qcow2: its virtual size is known before any data is written.
        let q = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/pattern.qcow2"
        ))
        .unwrap();
        assert!(matches!(import(q, &t), Err(ImportError::TooLarge { .. })));
    }

    #[test]
    fn a_failed_import_keeps_the_previous_disk() {
        let t = target("keep", None);
        std::fs::write(&t.path, b"previous").unwrap();
        let mut truncated = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        truncated.write_all(&pattern()).unwrap();
        let mut bytes = truncated.finish().unwrap();
        bytes.truncate(bytes.len() / 2);
        assert!(import(bytes, &t).is_err());
        t.discard();
        assert_eq!(std::fs::read(&t.path).unwrap(), b"previous");
    }

    #[test]
    fn clones_copy_data_and_keep_holes() {
        let src_t = target("clone-src", None);
        let mut image = pattern();
        image.resize(64 << 20, 0);
        std::fs::write(&src_t.path, &image).unwrap();
        let sparse = target("clone-src-sparse", None);
        let (w, n) = copy_claim(&src_t.path, &sparse, &|_| {}).unwrap();
        sparse.commit(w, n).unwrap();
        let t = target("clone", Some(128 << 20));
        let seen = std::sync::atomic::AtomicU64::new(0);
        let (w, n) = copy_claim(&sparse.path, &t, &|k| {
            seen.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(n, 64 << 20);
        t.commit(w, n).unwrap();
        let disk = std::fs::read(&t.path).unwrap();
        assert_eq!(disk.len(), 128 << 20);
        assert!(disk[..image.len()] == image[..]);
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&t.path).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "{allocated} bytes allocated");
    }
}
