//! Helpers for device unit tests: guest memory, mock driver queues, activations.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Activation, VirtioInterrupt};
use crate::EventFdTrigger;

pub const MEM_SIZE: usize = 4 << 20;
/// Where test buffers live (queues sit below).
pub const BUF: u64 = 0x10_0000;
pub const F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
pub const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// A mock driver queue of 16 entries at `base`.
pub fn mock_queue(mem: &GuestMemoryMmap, base: u64) -> MockSplitQueue<'_, GuestMemoryMmap> {
    MockSplitQueue::create(mem, GuestAddress(base), 16)
}

pub fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(EventFdTrigger::new(
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )))
}

pub fn activation(
    mem: &GuestMemoryMmap,
    queues: &[&MockSplitQueue<'_, GuestMemoryMmap>],
    features: u64,
) -> Activation {
    Activation {
        mem: mem.clone(),
        queues: queues
            .iter()
            .map(|q| {
                let mut queue = q.create_queue::<Queue>().unwrap();
                queue.set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
                queue
            })
            .collect(),
        acked_features: features,
        interrupt: interrupt(),
    }
}

/// The used ring's index and its `i`th element (descriptor id, length).
pub fn used(q: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16) -> (u16, u32, u32) {
    let idx = q.used().idx().load();
    let elem = q.used().ring().ref_at(i.into()).unwrap().load();
    (idx, elem.id(), elem.len())
}

pub fn read_u8(mem: &GuestMemoryMmap, at: u64) -> u8 {
    mem.read_obj(GuestAddress(at)).unwrap()
}

/// Adds one chain at descriptor-table offset `offset`.
pub fn add_chain(q: &MockSplitQueue<'_, GuestMemoryMmap>, descs: &[RawDescriptor], offset: u16) {
    q.add_desc_chains(descs, offset).unwrap();
}
