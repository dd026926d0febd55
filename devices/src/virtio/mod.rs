//! Virtio devices on the virtio-mmio transport: the device trait, interrupts, descriptor checks.

pub mod block;
mod chain;
mod interrupt;
mod mmio;
pub mod net;
mod queue_loop;
pub mod rng;
mod single_queue;
#[cfg(test)]
mod test_utils;

use std::sync::Arc;

use thiserror::Error;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use chain::{Chain, ChainError, Segment};
pub use interrupt::VirtioInterrupt;
pub use mmio::{MmioTransport, MMIO_SIZE, QUEUE_NOTIFY_OFFSET};
pub use single_queue::{RequestHandler, SingleQueueDevice};

/// Feature bits every Kiln virtio device offers (virtio 1.x, event-index suppression,
/// indirect descriptors).
pub const COMMON_FEATURES: u64 = (1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC);

/// Queue size every Kiln virtio queue offers (the driver may choose a smaller power of two).
pub const QUEUE_SIZE: u16 = 256;

#[derive(Debug, Error)]
pub enum ActivateError {
    #[error("queue {0} is not ready or its rings are not in guest memory")]
    BadQueue(usize),
    #[error("the driver enabled {got} queues, the device needs {need}")]
    QueueCount { got: usize, need: usize },
    #[error("backend: {0}")]
    Backend(std::io::Error),
}

/// What a device gets when the driver sets DRIVER_OK: memory, configured queues, the features
/// both sides agreed on, and its interrupt.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub acked_features: u64,
    pub interrupt: Arc<VirtioInterrupt>,
}

/// A virtio device model behind a transport. The device owns one eventfd per queue: the VMM
/// registers them with KVM as ioeventfds on the queue-notify register and the device's event
/// handler waits on them.
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 net, 2 block, 4 entropy).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// One notification eventfd per queue.
    fn queue_events(&self) -> &[EventFd];
    /// Device configuration space (little-endian, as the driver reads it).
    fn config_space(&self) -> &[u8];
    /// Changes whenever the configuration space does (virtio 1.x ConfigGeneration).
    fn config_generation(&self) -> u32 {
        0
    }
    /// Starts the device with the driver's queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Drops the queues and returns to the state before activation.
    fn reset(&mut self);
}
