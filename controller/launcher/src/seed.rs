//! The cloud-init NoCloud seed: a vfat image labelled `cidata` holding `meta-data`,
//! `user-data` and `network-config`, which cloud-init (and Kiln's own guest init) read from a
//! disk. Written with the fatfs crate; the data comes inline, base64 or from a mounted Secret.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use base64::Engine;
use kiln_crd::launch::CloudData;
use kiln_crd::volumes::MAX_CLOUD_INIT_BYTES;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SeedError {
    #[error("{what}: not valid base64: {error}")]
    Base64 { what: &'static str, error: String },
    #[error("{what}: the Secret mounted at {dir} has none of the keys {keys:?}")]
    SecretKey {
        what: &'static str,
        dir: String,
        keys: Vec<String>,
    },
    #[error("{what}: {size} bytes; a NoCloud seed carries at most {MAX_CLOUD_INIT_BYTES}")]
    TooLarge { what: &'static str, size: usize },
    #[error("writing the NoCloud seed {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

/// Reads one piece of cloud-init data.
pub fn resolve(what: &'static str, data: &CloudData) -> Result<Vec<u8>, SeedError> {
    let bytes = match data {
        CloudData::Inline { text } => text.clone().into_bytes(),
        CloudData::Base64 { text } => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| SeedError::Base64 {
                what,
                error: e.to_string(),
            })?,
        CloudData::Secret { dir, keys } => keys
            .iter()
            .find_map(|k| std::fs::read(Path::new(dir).join(k)).ok())
            .ok_or_else(|| SeedError::SecretKey {
                what,
                dir: dir.clone(),
                keys: keys.clone(),
            })?,
    };
    if bytes.len() > MAX_CLOUD_INIT_BYTES {
        return Err(SeedError::TooLarge {
            what,
            size: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Writes the seed image at `path` (replacing what is there).
pub fn write_seed(
    path: &Path,
    meta_data: &[u8],
    user_data: Option<&[u8]>,
    network_config: Option<&[u8]>,
) -> Result<(), SeedError> {
    let err = |error| SeedError::Write {
        path: path.display().to_string(),
        error,
    };
    let payload =
        meta_data.len() + user_data.map_or(0, <[u8]>::len) + network_config.map_or(0, <[u8]>::len);
    // Room for the FAT, the directory and cluster rounding; at least 1 MiB.
    let size = ((payload as u64 * 5 / 4 + (256 << 10)).max(1 << 20)).next_multiple_of(1 << 20);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    file.set_len(size).map_err(err)?;
    fatfs::format_volume(
        &file,
        fatfs::FormatVolumeOptions::new().volume_label(*b"cidata     "),
    )
    .map_err(err)?;
    let fs = fatfs::FileSystem::new(&file, fatfs::FsOptions::new()).map_err(err)?;
    let root = fs.root_dir();
    let put = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut f = root.create_file(name)?;
        f.truncate()?;
        f.write_all(data)?;
        f.flush()
    };
    put("meta-data", meta_data).map_err(err)?;
    if let Some(u) = user_data {
        put("user-data", u).map_err(err)?;
    }
    if let Some(n) = network_config {
        put("network-config", n).map_err(err)?;
    }
    drop(root);
    fs.unmount().map_err(err)?;
    File::sync_all(&file).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-seed-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn seed_is_a_cidata_vfat_holding_the_files() {
        let d = scratch("vfat");
        let img = d.join("seed.img");
        let user = b"#!/bin/sh\necho hello\n".to_vec();
        write_seed(
            &img,
            b"instance-id: i-1\nlocal-hostname: web\n",
            Some(&user),
            None,
        )
        .unwrap();
        let raw = std::fs::read(&img).unwrap();
        assert_eq!(raw.len(), 1 << 20);
        assert_eq!(&raw[510..512], &[0x55, 0xaa]);
        // The label where Kiln's guest init (and blkid) look: FAT12/16 BPB at 0x2b.
        assert_eq!(&raw[0x2b..0x2b + 11], b"cidata     ");
        let file = File::open(&img).unwrap();
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim(), "cidata");
        let mut got = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got.as_bytes(), user);
        assert!(fs.root_dir().open_file("network-config").is_err());
        // Linux's own checker reads it as a clean FAT filesystem when it is installed.
        if let Ok(out) = std::process::Command::new("fsck.vfat")
            .arg("-n")
            .arg(&img)
            .output()
        {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    #[test]
    fn data_comes_inline_base64_or_from_a_secret_and_is_bounded() {
        let d = scratch("data");
        std::fs::write(d.join("userData"), b"from secret").unwrap();
        let dir = d.display().to_string();
        let secret = CloudData::Secret {
            dir: dir.clone(),
            keys: vec!["userdata".into(), "userData".into()],
        };
        assert_eq!(resolve("user-data", &secret).unwrap(), b"from secret");
        let missing = CloudData::Secret {
            dir,
            keys: vec!["networkdata".into()],
        };
        assert!(matches!(
            resolve("network-data", &missing),
            Err(SeedError::SecretKey { .. })
        ));
        let b64 = CloudData::Base64 {
            text: "I2Nsb3VkLWNvbmZpZwo=".into(),
        };
        assert_eq!(resolve("user-data", &b64).unwrap(), b"#cloud-config\n");
        let bad = CloudData::Base64 { text: "!!".into() };
        assert!(matches!(
            resolve("user-data", &bad),
            Err(SeedError::Base64 { .. })
        ));
        let big = CloudData::Inline {
            text: "x".repeat(MAX_CLOUD_INIT_BYTES + 1),
        };
        assert!(matches!(
            resolve("user-data", &big),
            Err(SeedError::TooLarge { .. })
        ));
    }
}
