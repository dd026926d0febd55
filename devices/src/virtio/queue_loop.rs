//! The loop every device runs over a queue: pop chains, handle each, fill the used ring, and
//! interrupt the driver only when it asked to be (event-index suppression).

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::VirtioInterrupt;

/// Processes every available chain of `queue`: `handle` returns how many bytes it wrote into the
/// chain. Fails when the rings themselves went bad (the driver moved them outside memory).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<(), virtio_queue::Error> {
    let mut used_any = false;
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let len = handle(chain);
            queue.add_used(mem, head, len)?;
            used_any = true;
        }
        // Re-enabling reports buffers the driver added meanwhile: go round again for those.
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    if used_any && queue.needs_notification(mem)? {
        interrupt.signal_used_queue();
    }
    Ok(())
}
