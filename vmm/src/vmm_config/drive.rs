//! A virtio-blk disk: image path, read-only flag and serial (`--disk path[,ro][,id=NAME]`).

use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// Longest serial a virtio-blk device reports (VIRTIO_BLK_ID_BYTES).
pub const MAX_DRIVE_ID_LEN: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    pub path_on_host: PathBuf,
    pub is_read_only: bool,
    /// Serial the guest reads with GET_ID (/sys/block/vdX/serial).
    pub id: Option<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DriveConfigError {
    #[error("--disk needs an image path first: path[,ro][,id=NAME]")]
    MissingPath,
    #[error("disk option {0:?} is not ro or id=NAME")]
    UnknownOption(String),
    #[error("disk id {0:?} must be 1 to 20 printable ASCII characters")]
    BadId(String),
}

impl DriveConfig {
    pub fn validate(&self) -> Result<(), DriveConfigError> {
        if let Some(id) = &self.id {
            let printable = id.bytes().all(|b| b.is_ascii_graphic());
            if id.is_empty() || id.len() > MAX_DRIVE_ID_LEN || !printable {
                return Err(DriveConfigError::BadId(id.clone()));
            }
        }
        Ok(())
    }
}

impl FromStr for DriveConfig {
    type Err = DriveConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(DriveConfigError::MissingPath)?;
        let mut cfg = DriveConfig {
            path_on_host: path.into(),
            is_read_only: false,
            id: None,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => cfg.is_read_only = true,
                Some(("id", id)) => cfg.id = Some(id.to_owned()),
                _ => return Err(DriveConfigError::UnknownOption(opt.to_owned())),
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_flags_and_id() {
        let d: DriveConfig = "/img/root.ext4,ro,id=root-disk".parse().unwrap();
        assert_eq!(d.path_on_host, PathBuf::from("/img/root.ext4"));
        assert!(d.is_read_only);
        assert_eq!(d.id.as_deref(), Some("root-disk"));
        let d: DriveConfig = "disk.img".parse().unwrap();
        assert!(!d.is_read_only && d.id.is_none());
    }

    #[test]
    fn rejects_bad_options_and_ids() {
        assert_eq!(
            "".parse::<DriveConfig>(),
            Err(DriveConfigError::MissingPath)
        );
        assert_eq!(
            "a.img,rw".parse::<DriveConfig>(),
            Err(DriveConfigError::UnknownOption("rw".into()))
        );
        let long = format!("a.img,id={}", "x".repeat(21));
        assert!(matches!(
            long.parse::<DriveConfig>(),
            Err(DriveConfigError::BadId(_))
        ));
        assert!(matches!(
            "a.img,id=".parse::<DriveConfig>(),
            Err(DriveConfigError::BadId(_))
        ));
        assert!(matches!(
            "a.img,id=a b".parse::<DriveConfig>(),
            Err(DriveConfigError::BadId(_))
        ));
    }
}
