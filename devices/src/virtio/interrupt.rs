//! A virtio device's interrupt: the virtio-mmio status bits plus the irqfd that raises the line.

use std::sync::atomic::{AtomicU32, Ordering};

use tracing::warn;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vm_superio::Trigger;

use crate::EventFdTrigger;

#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    trigger: EventFdTrigger,
}

impl VirtioInterrupt {
    pub fn new(trigger: EventFdTrigger) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            trigger,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.trigger.trigger() {
            warn!("virtio: cannot raise the interrupt: {e}");
        }
    }

    /// The device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The device's configuration (or status) changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver's write to InterruptACK.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}
