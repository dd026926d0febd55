//! virtio-net on a Linux TAP device, with checksum and TSO offloads passed through the vnet header.

mod device;
mod rx;
mod tap;

pub use device::{MacAddr, Net};
pub use tap::{Tap, TapError};
