//! A virtio-blk disk: from `--disk path[,ro][,id=NAME]` or from the API's Drive resource.

use std::path::PathBuf;
use std::str::FromStr;

use api::models::{no_rate_limiter, Drive};
use thiserror::Error;

/// Longest serial a virtio-blk device reports (VIRTIO_BLK_ID_BYTES).
pub const MAX_DRIVE_ID_LEN: usize = 20;

/// Whether the guest's flushes reach the host's disk (Firecracker's `cache_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    /// VIRTIO_BLK_F_FLUSH is offered; a flush completes after fdatasync.
    #[default]
    Writeback,
    /// No flush feature: writes land in the host's page cache (Firecracker's default).
    Unsafe,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    /// The API's id (`--disk` drives are named disk0, disk1, ... unless `id=` names them).
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_read_only: bool,
    /// Boot from this disk: it becomes /dev/vda and `root=` goes on the command line.
    pub is_root_device: bool,
    /// With `is_root_device`: `root=PARTUUID=<this>` instead of `root=/dev/vda`.
    pub partuuid: Option<String>,
    pub cache_type: CacheType,
    /// Serial the guest reads with GET_ID (/sys/block/vdX/serial).
    pub serial: Option<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DriveConfigError {
    #[error("--disk needs an image path first: path[,ro][,id=NAME]")]
    MissingPath,
    #[error("disk option {0:?} is not ro or id=NAME")]
    UnknownOption(String),
    #[error("disk id {0:?} must be 1 to 20 printable ASCII characters")]
    BadId(String),
    #[error("drive {0}: path_on_host is required (vhost-user drives are not supported)")]
    NoPath(String),
    #[error("drive {0}: {1} is not supported by kiln-vmm")]
    Unsupported(String, &'static str),
    #[error("drive {0}: cache_type must be Unsafe or Writeback, not {1:?}")]
    BadCacheType(String, String),
    #[error("drive {0}: io_engine must be Sync, not {1:?}")]
    BadIoEngine(String, String),
    #[error("drive {0}: partuuid {1:?} must be letters, digits and '-' (at most 36)")]
    BadPartuuid(String, String),
}

impl DriveConfig {
    pub fn validate(&self) -> Result<(), DriveConfigError> {
        if let Some(id) = &self.serial {
            let printable = id.bytes().all(|b| b.is_ascii_graphic());
            if id.is_empty() || id.len() > MAX_DRIVE_ID_LEN || !printable {
                return Err(DriveConfigError::BadId(id.clone()));
            }
        }
        if let Some(p) = &self.partuuid {
            let ok = !p.is_empty()
                && p.len() <= 36
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(DriveConfigError::BadPartuuid(
                    self.drive_id.clone(),
                    p.clone(),
                ));
            }
        }
        Ok(())
    }

    /// The API's view of this drive.
    pub fn to_api(&self) -> Drive {
        Drive {
            drive_id: self.drive_id.clone(),
            path_on_host: Some(self.path_on_host.display().to_string()),
            is_root_device: self.is_root_device,
            is_read_only: Some(self.is_read_only),
            partuuid: self.partuuid.clone(),
            cache_type: Some(
                match self.cache_type {
                    CacheType::Writeback => "Writeback",
                    CacheType::Unsafe => "Unsafe",
                }
                .into(),
            ),
            io_engine: Some("Sync".into()),
            rate_limiter: None,
            socket: None,
        }
    }
}

impl TryFrom<&Drive> for DriveConfig {
    type Error = DriveConfigError;

    fn try_from(d: &Drive) -> Result<Self, Self::Error> {
        let id = || d.drive_id.clone();
        if !no_rate_limiter(&d.rate_limiter) {
            return Err(DriveConfigError::Unsupported(id(), "rate_limiter"));
        }
        if d.socket.is_some() {
            return Err(DriveConfigError::Unsupported(id(), "socket (vhost-user)"));
        }
        let path = d
            .path_on_host
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| DriveConfigError::NoPath(id()))?;
        let cache_type = match d.cache_type.as_deref() {
            None | Some("Unsafe") => CacheType::Unsafe,
            Some("Writeback") => CacheType::Writeback,
            Some(other) => return Err(DriveConfigError::BadCacheType(id(), other.into())),
        };
        match d.io_engine.as_deref() {
            None | Some("Sync") => {}
            Some(other) => return Err(DriveConfigError::BadIoEngine(id(), other.into())),
        }
        // The guest reads the drive id as the disk's serial, as with Firecracker.
        let serial: String = d.drive_id.chars().take(MAX_DRIVE_ID_LEN).collect();
        let cfg = DriveConfig {
            drive_id: d.drive_id.clone(),
            path_on_host: path.into(),
            is_read_only: d.is_read_only.unwrap_or(false),
            is_root_device: d.is_root_device,
            partuuid: d.partuuid.clone(),
            cache_type,
            serial: Some(serial),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl FromStr for DriveConfig {
    type Err = DriveConfigError;

    /// `--disk`: the drive id is the `id=` serial when given (else set by the caller).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(DriveConfigError::MissingPath)?;
        let mut cfg = DriveConfig {
            drive_id: String::new(),
            path_on_host: path.into(),
            is_read_only: false,
            is_root_device: false,
            partuuid: None,
            cache_type: CacheType::Writeback,
            serial: None,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => cfg.is_read_only = true,
                Some(("id", id)) => {
                    cfg.serial = Some(id.to_owned());
                    cfg.drive_id = id.to_owned();
                }
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
        assert_eq!(d.serial.as_deref(), Some("root-disk"));
        assert_eq!(d.cache_type, CacheType::Writeback);
        let d: DriveConfig = "disk.img".parse().unwrap();
        assert!(!d.is_read_only && d.serial.is_none());
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

    #[test]
    fn api_drives_follow_firecracker_defaults_and_refuse_what_kiln_lacks() {
        let mut d = Drive {
            drive_id: "rootfs_with_a_long_name".into(),
            path_on_host: Some("/r.ext4".into()),
            is_root_device: true,
            ..Default::default()
        };
        let c = DriveConfig::try_from(&d).unwrap();
        assert_eq!(c.cache_type, CacheType::Unsafe);
        assert_eq!(c.serial.as_deref(), Some("rootfs_with_a_long_n"));
        assert!(!c.is_read_only && c.is_root_device);
        assert_eq!(DriveConfig::try_from(&c.to_api()).unwrap(), c);
        d.io_engine = Some("Async".into());
        assert!(matches!(
            DriveConfig::try_from(&d),
            Err(DriveConfigError::BadIoEngine(..))
        ));
        d.io_engine = None;
        d.rate_limiter = Some(serde_json::json!({"bandwidth": {"size": 1, "refill_time": 1}}));
        assert!(matches!(
            DriveConfig::try_from(&d),
            Err(DriveConfigError::Unsupported(..))
        ));
        d.rate_limiter = Some(serde_json::Value::Null);
        d.path_on_host = None;
        assert!(matches!(
            DriveConfig::try_from(&d),
            Err(DriveConfigError::NoPath(_))
        ));
        d.path_on_host = Some("/r".into());
        d.partuuid = Some("a b".into());
        assert!(matches!(
            DriveConfig::try_from(&d),
            Err(DriveConfigError::BadPartuuid(..))
        ));
    }
}
