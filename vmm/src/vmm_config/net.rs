//! A virtio-net NIC on a TAP device (`--net tap=NAME[,mac=MAC]`, `--net fd=N[,mac=MAC]`, or the
//! API's NetworkInterface resource).

use std::os::fd::RawFd;
use std::str::FromStr;

use api::models::{no_rate_limiter, NetworkInterface};
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
    /// The API's id (`--net` NICs are named net0, net1, ...).
    pub iface_id: String,
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
    #[error("network interface {0}: rate limiters are not supported by kiln-vmm")]
    RateLimiter(String),
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
            iface_id: String::new(),
            tap: tap.ok_or(NetConfigError::MissingTap)?,
            guest_mac,
        })
    }
}

impl TryFrom<&NetworkInterface> for NetConfig {
    type Error = NetConfigError;

    fn try_from(n: &NetworkInterface) -> Result<Self, Self::Error> {
        if !no_rate_limiter(&n.rx_rate_limiter) || !no_rate_limiter(&n.tx_rate_limiter) {
            return Err(NetConfigError::RateLimiter(n.iface_id.clone()));
        }
        if !valid_ifname(&n.host_dev_name) {
            return Err(NetConfigError::BadName(n.host_dev_name.clone()));
        }
        let guest_mac = match &n.guest_mac {
            Some(mac) => Some(mac.parse().map_err(NetConfigError::BadMac)?),
            None => None,
        };
        Ok(NetConfig {
            iface_id: n.iface_id.clone(),
            tap: TapBackend::Name(n.host_dev_name.clone()),
            guest_mac,
        })
    }
}

impl NetConfig {
    /// The API's view of this NIC (an inherited descriptor shows as `fd:N`).
    pub fn to_api(&self) -> NetworkInterface {
        NetworkInterface {
            iface_id: self.iface_id.clone(),
            host_dev_name: match &self.tap {
                TapBackend::Name(n) => n.clone(),
                TapBackend::Fd(fd) => format!("fd:{fd}"),
            },
            guest_mac: self.guest_mac.map(|m| m.to_string()),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
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
