//! virtio-rng (entropy device): fills the guest's buffers from the host's getrandom(2).

use tracing::warn;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use vm_memory::GuestMemoryMmap;

use super::chain::{iovecs, Chain};
use super::{RequestHandler, SingleQueueDevice, COMMON_FEATURES};

/// A virtio-rng device.
pub type Rng = SingleQueueDevice<RandomRequests>;

pub struct RandomRequests;

impl Rng {
    pub fn new() -> std::io::Result<Rng> {
        SingleQueueDevice::with_handler(RandomRequests)
    }
}

impl RequestHandler for RandomRequests {
    const DEVICE_TYPE: u32 = VIRTIO_ID_RNG;
    const NAME: &'static str = "virtio-rng";
    /// The guest asks for far less (a page at most).
    const MAX_REQUEST_BYTES: u64 = 1 << 20;

    fn features(&self) -> u64 {
        COMMON_FEATURES
    }

    fn config_space(&self) -> &[u8] {
        &[]
    }

    fn handle(&mut self, chain: &Chain, mem: &GuestMemoryMmap) -> u32 {
        fill_random(chain, mem)
    }
}

/// Fills every buffer of the chain; a chain with a device-readable buffer gets nothing.
fn fill_random(chain: &Chain, mem: &GuestMemoryMmap) -> u32 {
    if chain.readable().next().is_some() {
        crate::guest_warn!("virtio-rng: request has device-readable buffers");
        return 0;
    }
    let Ok(iov) = iovecs(mem, &chain.segments) else {
        return 0;
    };
    let mut written = 0u32;
    for v in iov {
        let mut done = 0;
        while done < v.iov_len {
            // SAFETY: the iovec points at guest memory that stays mapped for the call.
            let n = unsafe {
                libc::getrandom(
                    v.iov_base.cast::<u8>().add(done).cast(),
                    v.iov_len - done,
                    0,
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                warn!("virtio-rng: getrandom: {}", std::io::Error::last_os_error());
                return written;
            }
            done += n as usize;
            written += n as u32;
        }
    }
    written
}
