//! A TAP device for virtio-net: opened by name (created if missing) or adopted from an open fd,
//! always non-blocking with a 12-byte virtio-net header on every frame.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

/// struct virtio_net_hdr_v1: what virtio 1.x drivers put before every frame.
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, Error)]
pub enum TapError {
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error("TAP interface name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("attaching TAP {name}: {source} (creating one needs CAP_NET_ADMIN)")]
    Attach { name: String, source: io::Error },
    #[error("fd {fd} is not a TAP device: {source}")]
    NotTap { fd: RawFd, source: io::Error },
    #[error(
        "fd {fd} is a TUN/TAP device without IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (flags {flags:#x})"
    )]
    WrongFlags { fd: RawFd, flags: i32 },
    #[error("TAP {name}: {what}: {source}")]
    Setup {
        name: String,
        what: &'static str,
        source: io::Error,
    },
}

#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// False only for the socket stand-in unit tests use (no TAP ioctls).
    is_tap: bool,
}

const TAP_FLAGS: i32 = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

fn ifreq_with_name(name: &str) -> Option<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains('\0') {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Some(req)
}

impl Tap {
    /// Attaches to TAP interface `name`, creating it when it does not exist (it then lives
    /// until kiln-vmm exits).
    pub fn open_named(name: &str) -> Result<Tap, TapError> {
        let mut req = ifreq_with_name(name).ok_or_else(|| TapError::BadName(name.into()))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        req.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq we pass, which lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name: name.into(),
            is_tap: true,
        };
        tap.setup()?;
        Ok(tap)
    }

    /// Uses an already-open TAP file descriptor (for example one a launcher opened and passed
    /// down), through a duplicate. It must have been attached with IFF_TAP, IFF_NO_PI and
    /// IFF_VNET_HDR.
    pub fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        // SAFETY: fcntl(F_GETFD) only checks that the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::NotTap {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: the descriptor is open (checked above) for the duration of this borrow; kiln-vmm
        // works on its own duplicate and never closes the original, which may not be a TAP.
        let owned = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|source| TapError::NotTap { fd, source })?;
        let file = File::from(owned);
        let dup = file.as_raw_fd();
        // SAFETY: ifreq is plain data; all zeros is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes the name and flags into the ifreq we pass.
        if unsafe { libc::ioctl(dup, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(TapError::NotTap {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNGETIFF set the flags member of the union.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
        if flags & TAP_FLAGS != TAP_FLAGS {
            return Err(TapError::WrongFlags { fd, flags });
        }
        // SAFETY: the kernel NUL-terminates ifr_name (IFNAMSIZ includes the terminator).
        let name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: fcntl on a descriptor we own. (The flag is shared with the original.)
        let fl = unsafe { libc::fcntl(dup, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(dup, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(TapError::Setup {
                name,
                what: "making the fd non-blocking",
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name,
            is_tap: true,
        };
        tap.setup()?;
        Ok(tap)
    }

    fn setup(&self) -> Result<(), TapError> {
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer we pass.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(self.setup_error("setting the vnet header size"));
        }
        // No offloads until the driver accepts some.
        self.set_offload(0)
    }

    fn setup_error(&self, what: &'static str) -> TapError {
        TapError::Setup {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// Which offloads (TUN_F_*) the kernel may use on frames it hands us.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(self.setup_error("setting offloads"));
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps the interface after this descriptor closes, attachable without CAP_NET_ADMIN by
    /// processes running as `owner` (a network setup step hands the TAP to an unprivileged VMM).
    pub fn persist(&self, owner: libc::uid_t) -> Result<(), TapError> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOWNER and TUNSETPERSIST take their argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOWNER,
                owner as libc::c_ulong,
            )
        } < 0
        {
            return Err(self.setup_error("setting the owner"));
        }
        // SAFETY: as above.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                1 as libc::c_ulong,
            )
        } < 0
        {
            return Err(self.setup_error("making it persistent"));
        }
        Ok(())
    }

    /// Reads one frame (vnet header first) into `buf`.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.file, buf)
    }

    /// Writes one frame (vnet header first) from the buffers.
    pub fn write_vectored(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let n = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: each iovec points at memory (guest buffers) that stays mapped for the call.
        let r = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), n) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// A datagram socket standing in for a TAP in unit tests: one datagram per frame.
#[cfg(test)]
pub(crate) fn socket_tap(file: File) -> Tap {
    Tap {
        file,
        name: "test".into(),
        is_tap: false,
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
