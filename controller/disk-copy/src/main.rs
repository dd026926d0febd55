//! kiln-disk-copy: brings a disk image (or a kernel) out of a container image into the pod.
//! It runs in an init container started from that image, which has no tools of its own, so
//! it is a static binary that the first init container installs from the launcher image:
//!
//!   kiln-disk-copy --install DIR      copy this program into DIR
//!   kiln-disk-copy SOURCE DEST [SOURCE DEST ...]
//!                                     copy each SOURCE to its DEST: a reflink where the
//!                                     filesystem allows, else only the data (holes and zero
//!                                     blocks stay holes); SOURCE may be a folder holding one
//!                                     file (KubeVirt's containerDisk layout: one image in /disk/)
//!
//! Errors go to stderr and to the container's termination message, which Kiln's controller
//! shows on the VMI.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const BLOCK: usize = 1 << 20;
const FICLONE: libc::c_ulong = 0x4004_9409;
const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, dir] if flag == "--install" => install(Path::new(dir)),
        pairs if !pairs.is_empty() && pairs.len() % 2 == 0 => pairs.chunks(2).try_for_each(|p| {
            let how = copy(Path::new(&p[0]), Path::new(&p[1]))?;
            eprintln!("kiln-disk-copy: {} -> {} ({how})", p[0], p[1]);
            Ok(())
        }),
        _ => Err("usage: kiln-disk-copy SOURCE DEST [SOURCE DEST ...] | --install DIR".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-disk-copy: {e}");
            let _ = fs::write("/dev/termination-log", &e);
            ExitCode::FAILURE
        }
    }
}

fn install(dir: &Path) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let dest = dir.join("kiln-disk-copy");
    fs::copy(&me, &dest).map_err(|e| format!("installing into {}: {e}", dir.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", dest.display()))
}

/// The file to copy: SOURCE itself, or the one regular file in the folder SOURCE.
fn source_file(source: &Path) -> Result<PathBuf, String> {
    let meta = fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
    if !meta.is_dir() {
        return Ok(source.to_path_buf());
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(source).map_err(|e| format!("{}: {e}", source.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", source.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            files.push(entry.path());
        }
    }
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => Err(format!(
            "{} holds no disk image (a containerDisk keeps its image in /disk/)",
            source.display()
        )),
        n => Err(format!(
            "{} holds {n} files; name the disk image with containerDisk.path",
            source.display()
        )),
    }
}

fn copy(source: &Path, dest: &Path) -> Result<&'static str, String> {
    let from = source_file(source)?;
    let name = from.display().to_string();
    let mut src = File::open(&from).map_err(|e| format!("{name}: {e}"))?;
    if !src
        .metadata()
        .map_err(|e| format!("{name}: {e}"))?
        .file_type()
        .is_file()
    {
        return Err(format!("{name} is not a regular file"));
    }
    let mut head = [0u8; 4];
    let n = src.read(&mut head).map_err(|e| format!("{name}: {e}"))?;
    if head[..n] == *QCOW2_MAGIC {
        return Err(format!(
            "{name} is a qcow2 image; Kiln boots raw images (qemu-img convert -O raw)"
        ));
    }
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = dest.with_extension("partial");
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let how = copy_into(&mut src, &mut out).map_err(|e| format!("copying {name}: {e}"))?;
    out.sync_all()
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(how)
}

/// Reflink if possible, else a sparse copy of the data ranges.
fn copy_into(src: &mut File, out: &mut File) -> io::Result<&'static str> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both are open files.
    if unsafe { libc::ioctl(out.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok("reflink");
    }
    let len = src.metadata()?.len();
    out.set_len(len)?;
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) = next_data(src, pos, len)? else {
            break;
        };
        let mut at = start;
        src.seek(SeekFrom::Start(at))?;
        while at < end {
            let want = ((end - at) as usize).min(BLOCK);
            src.read_exact(&mut buf[..want])?;
            // Zero blocks inside data ranges stay holes too.
            if buf[..want].iter().any(|&b| b != 0) {
                out.seek(SeekFrom::Start(at))?;
                out.write_all(&buf[..want])?;
            }
            at += want as u64;
        }
        pos = end;
    }
    Ok("sparse copy")
}

/// The next data range at or after `pos`: SEEK_DATA/SEEK_HOLE, or everything left where the
/// filesystem cannot tell.
fn next_data(src: &File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = src.as_raw_fd();
    // SAFETY: lseek on an open descriptor.
    let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None), // only a hole is left
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((pos, len))),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    let end = if end < 0 { len } else { end as u64 };
    Ok(Some((start as u64, end.min(len))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-disk-copy-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn copies_the_one_image_in_a_folder_keeping_holes() {
        let d = scratch("sparse");
        let disk = d.join("disk");
        fs::create_dir(&disk).unwrap();
        let img = disk.join("image.raw");
        let mut f = File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"kiln").unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&vec![0u8; 4 << 20]).unwrap(); // written zeroes
        f.seek(SeekFrom::Start(50 << 20)).unwrap();
        f.write_all(b"end").unwrap();
        drop(f);
        let dest = d.join("out/disk.img");
        copy(&disk, &dest).unwrap();
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len(), 64 << 20);
        assert_eq!(&got[1 << 20..(1 << 20) + 4], b"kiln");
        assert_eq!(&got[50 << 20..(50 << 20) + 3], b"end");
        assert!(got.iter().filter(|&&b| b != 0).count() == 7);
        // At most a few MiB allocated for 64 MiB of which 7 bytes are data.
        let blocks = fs::metadata(&dest).unwrap().blocks() * 512;
        assert!(blocks <= 8 << 20, "{blocks} bytes allocated");
        assert!(!d.join("out/disk.partial").exists());
    }

    #[test]
    fn refuses_qcow2_empty_and_ambiguous_folders() {
        let d = scratch("refuse");
        let empty = d.join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(copy(&empty, &d.join("x"))
            .unwrap_err()
            .contains("holds no disk image"));
        let two = d.join("two");
        fs::create_dir(&two).unwrap();
        fs::write(two.join("a"), b"a").unwrap();
        fs::write(two.join("b"), b"b").unwrap();
        assert!(copy(&two, &d.join("x"))
            .unwrap_err()
            .contains("holds 2 files"));
        let q = d.join("q.qcow2");
        fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        assert!(copy(&q, &d.join("x")).unwrap_err().contains("qcow2"));
        assert!(copy(&d.join("missing"), &d.join("x")).is_err());
    }
}
