//! The loop every device runs over a queue: pop chains, handle each, fill the used ring, and
//! interrupt the driver only when it asked to be (event-index suppression). One call does a
//! bounded amount of work, so the event loop it runs on (which also serves the API, signals and
//! the watchdog) gets back to its other events however fast a guest queues requests.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::VirtioInterrupt;

/// Chains a device handles per wakeup of the event loop before it yields.
pub const CHAINS_PER_WAKEUP: usize = 64;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// No chain is left; the driver's next notification brings more.
    All,
    /// `budget` chains were handled and more may wait: the caller must come back (it kicks its
    /// own queue event, so the event loop serves what else is ready first). Notifications stay
    /// off meanwhile.
    BudgetSpent,
}

/// Processes up to `budget` available chains of `queue`: `handle` returns how many bytes it
/// wrote into the chain. Fails when the rings themselves went bad (the driver moved them
/// outside memory).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    budget: usize,
    mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<Drained, virtio_queue::Error> {
    let mut used = 0usize;
    let drained = loop {
        queue.disable_notification(mem)?;
        while used < budget {
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            let len = handle(chain);
            queue.add_used(mem, head, len)?;
            used += 1;
        }
        if used == budget {
            // Perhaps none is left; the caller's extra round then finds that out cheaply.
            break Drained::BudgetSpent;
        }
        // Re-enabling reports buffers the driver added meanwhile: go round again for those.
        if !queue.enable_notification(mem)? {
            break Drained::All;
        }
    };
    if used > 0 && queue.needs_notification(mem)? {
        interrupt.signal_used_queue();
    }
    Ok(drained)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_utils::{desc, guest_memory, interrupt, mock_queue, BUF, F_WRITE};

    #[test]
    fn a_call_handles_at_most_its_budget_and_the_rest_waits_for_the_next() {
        let mem = guest_memory();
        let mq = mock_queue(&mem, 0);
        let chains: Vec<_> = (0..10u16)
            .map(|i| desc(BUF + u64::from(i) * 0x100, 0x100, F_WRITE, 0))
            .collect();
        mq.add_desc_chains(&chains, 0).unwrap();
        let mut queue: Queue = mq.create_queue().unwrap();
        let irq = interrupt();
        let mut handled = 0;
        let mut count = |_chain: DescriptorChain<&GuestMemoryMmap>| {
            handled += 1;
            0
        };
        let rounds: Vec<Drained> = (0..3)
            .map(|_| process_queue(&mut queue, &mem, &irq, 4, &mut count).unwrap())
            .collect();
        assert_eq!(
            rounds,
            [Drained::BudgetSpent, Drained::BudgetSpent, Drained::All]
        );
        assert_eq!(handled, 10);
        let used_idx: u16 = mem.read_obj(GuestAddress(mq.used_addr().0 + 2)).unwrap();
        assert_eq!(used_idx, 10, "every chain reached the used ring");
    }
}
