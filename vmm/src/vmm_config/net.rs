//! A virtio-net NIC on a TAP device (`--net tap=NAME[,mac=MAC]` or `--net fd=N[,mac=MAC]`).

use std::os::fd::RawFd;
use std::str::FromStr;

use devices::virtio::net::MacAddr;
use thiserror::Error;

/// Where the NIC's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapBackend {
    /// A TAP interface by name, created if it does not exist.
    Name(String),
    /// A TAP file descriptor kiln-vmm inherited, already attached with IFF_VNET_HDR.
    Fd(RawFd),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: TapBackend,
    /// The guest's MAC address; without one the guest picks a random address.
    pub guest_mac: Option<MacAddr>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetConfigError {
    #[error("--net needs tap=NAME or fd=N: tap=NAME[,mac=MAC]")]
    MissingTap,
    #[error("net option {0:?} is not tap=NAME, fd=N or mac=MAC")]
    UnknownOption(String),
    #[error("TAP name {0:?} must be 1 to 15 characters without '/', ',' or spaces")]
    BadName(String),
    #[error("TAP fd {0:?} is not a file descriptor number above 2")]
    BadFd(String),
    #[error("{0}")]
    BadMac(String),
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',' && b != b':')
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap = None;
        let mut guest_mac = None;
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tap", name)) => {
                    if !valid_ifname(name) {
                        return Err(NetConfigError::BadName(name.into()));
                    }
                    tap = Some(TapBackend::Name(name.into()));
                }
                Some(("fd", fd)) => {
                    let n = fd
                        .parse::<RawFd>()
                        .ok()
                        .filter(|n| *n > 2)
                        .ok_or_else(|| NetConfigError::BadFd(fd.into()))?;
                    tap = Some(TapBackend::Fd(n));
                }
                Some(("mac", mac)) => {
                    guest_mac = Some(mac.parse().map_err(NetConfigError::BadMac)?);
                }
                _ => return Err(NetConfigError::UnknownOption(opt.into())),
            }
        }
        Ok(NetConfig {
            tap: tap.ok_or(NetConfigError::MissingTap)?,
            guest_mac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tap_name_fd_and_mac() {
        let n: NetConfig = "tap=kt0,mac=06:00:ac:10:00:02".parse().unwrap();
        assert_eq!(n.tap, TapBackend::Name("kt0".into()));
        assert_eq!(n.guest_mac, Some(MacAddr([6, 0, 0xac, 0x10, 0, 2])));
        assert_eq!("fd=7".parse::<NetConfig>().unwrap().tap, TapBackend::Fd(7));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            "mac=06:00:00:00:00:01".parse::<NetConfig>(),
            Err(NetConfigError::MissingTap)
        );
        assert!(matches!(
            "tap=a/b".parse::<NetConfig>(),
            Err(NetConfigError::BadName(_))
        ));
        assert!(matches!(
            "tap=0123456789abcdef".parse::<NetConfig>(),
            Err(NetConfigError::BadName(_))
        ));
        assert!(matches!(
            "fd=1".parse::<NetConfig>(),
            Err(NetConfigError::BadFd(_))
        ));
        assert!(matches!(
            "tap=t,mac=01:00:00:00:00:01".parse::<NetConfig>(),
            Err(NetConfigError::BadMac(_))
        ));
        assert!(matches!(
            "tap=t,mac=zz".parse::<NetConfig>(),
            Err(NetConfigError::BadMac(_))
        ));
        assert!(matches!(
            "tap=t,speed=10".parse::<NetConfig>(),
            Err(NetConfigError::UnknownOption(_))
        ));
    }
}
