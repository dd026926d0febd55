//! The cloud-init NoCloud seed: a vfat image labelled `cidata` holding `meta-data`,
//! `user-data` and `network-config` (and `kiln-network`, that file as Kiln's guest applies it),
//! which cloud-init and Kiln's own guest init read from a disk. Written with the fatfs crate;
//! the data comes inline, base64 or from a mounted Secret.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use base64::Engine;
use kiln_crd::launch::CloudData;
use kiln_crd::volumes::MAX_CLOUD_INIT_BYTES;
use thiserror::Error;
use tracing::warn;

use crate::network_config;

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

/// Writes the NoCloud seed at `path`: meta-data, the user-data and network-config when given,
/// and `kiln-network` when the network-config is one Kiln's guest can apply (why not is logged:
/// a cloud-init guest may still read it).
pub fn write_nocloud(
    path: &Path,
    meta_data: &str,
    user_data: Option<&CloudData>,
    network_config: Option<&CloudData>,
) -> Result<(), SeedError> {
    let user = user_data.map(|u| resolve("user-data", u)).transpose()?;
    let net = network_config
        .map(|n| resolve("network-config", n))
        .transpose()?;
    let kiln_network = net.as_deref().and_then(|n| match network_config::parse(n) {
        Ok(guest) => Some(guest.render()),
        Err(e) => {
            warn!("{e}; Kiln's guest will not apply it (cloud-init guests read it themselves)");
            None
        }
    });
    let mut files = vec![("meta-data", meta_data.as_bytes())];
    files.extend(user.as_deref().map(|u| ("user-data", u)));
    files.extend(net.as_deref().map(|n| ("network-config", n)));
    files.extend(
        kiln_network
            .as_deref()
            .map(|k| (network_config::KILN_NETWORK_FILE, k.as_bytes())),
    );
    write_seed(path, &files)
}

/// Writes the seed image at `path` (replacing what is there) holding `files`: name and
/// content (`meta-data`, `user-data`, `network-config`, ...).
pub fn write_seed(path: &Path, files: &[(&str, &[u8])]) -> Result<(), SeedError> {
    let err = |error| SeedError::Write {
        path: path.display().to_string(),
        error,
    };
    let payload: usize = files.iter().map(|(_, data)| data.len()).sum();
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
    for (name, data) in files {
        put(name, data).map_err(err)?;
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
            &[
                ("meta-data", b"instance-id: i-1\nlocal-hostname: web\n"),
                ("user-data", &user),
            ],
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

    fn read_file(img: &Path, name: &str) -> Option<String> {
        let fs = fatfs::FileSystem::new(File::open(img).unwrap(), fatfs::FsOptions::new()).unwrap();
        let mut got = String::new();
        let mut f = fs.root_dir().open_file(name).ok()?;
        f.read_to_string(&mut got).unwrap();
        Some(got)
    }

    #[test]
    fn a_network_config_comes_with_kiln_network_when_kilns_guest_can_apply_it() {
        let d = scratch("netcfg");
        let img = d.join("seed.img");
        let net = "version: 2\nethernets: {eth0: {addresses: [10.0.2.2/24], gateway4: 10.0.2.1}}\n";
        let inline = |text: &str| CloudData::Inline { text: text.into() };
        write_nocloud(&img, "instance-id: i-1\n", None, Some(&inline(net))).unwrap();
        assert_eq!(read_file(&img, "network-config").as_deref(), Some(net));
        assert_eq!(
            read_file(&img, "kiln-network").as_deref(),
            Some("mode: static\naddress: 10.0.2.2\nnetmask: 255.255.255.0\ngateway: 10.0.2.1\n")
        );
        assert_eq!(read_file(&img, "user-data"), None);
        // One the guest cannot apply is still written, unchanged, for a cloud-init guest.
        let bonds = "version: 2\nbonds: {bond0: {interfaces: [eth0]}}\n";
        write_nocloud(&img, "instance-id: i-2\n", None, Some(&inline(bonds))).unwrap();
        assert_eq!(read_file(&img, "network-config").as_deref(), Some(bonds));
        assert_eq!(read_file(&img, "kiln-network"), None);
        assert_eq!(
            read_file(&img, "meta-data").as_deref(),
            Some("instance-id: i-2\n")
        );
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
