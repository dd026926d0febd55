//! The shell of a device with one queue of independent requests (virtio-blk, virtio-rng): queue
//! notification, activation and reset, checked chains handed to the device's request handler.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::warn;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::chain::Chain;
use super::queue_loop::{process_queue, Drained, CHAINS_PER_WAKEUP};
use super::{ActivateError, Activation, VirtioDevice, VirtioInterrupt, QUEUE_SIZE};

/// What makes a single-queue device what it is.
pub trait RequestHandler: Send {
    /// Virtio device ID.
    const DEVICE_TYPE: u32;
    /// For log messages ("virtio-blk").
    const NAME: &'static str;
    /// Longest chain accepted; longer ones are refused as malformed.
    const MAX_REQUEST_BYTES: u64;
    fn features(&self) -> u64;
    fn config_space(&self) -> &[u8];
    /// Serves one checked request; returns the bytes written into the chain.
    fn handle(&mut self, chain: &Chain, mem: &GuestMemoryMmap) -> u32;
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

pub struct SingleQueueDevice<H> {
    handler: H,
    queue_events: [EventFd; 1],
    active: Option<Active>,
    /// Bumped on every change of the configuration space (the transport's ConfigGeneration).
    config_generation: u32,
}

impl<H: RequestHandler> SingleQueueDevice<H> {
    pub fn with_handler(handler: H) -> std::io::Result<Self> {
        Ok(SingleQueueDevice {
            handler,
            queue_events: [EventFd::new(EFD_NONBLOCK)?],
            active: None,
            config_generation: 0,
        })
    }

    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The configuration space changed: a new generation (so a driver reading it across the
    /// change retries), and the configuration-change interrupt if the driver is active.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change();
        }
    }

    fn process(&mut self) {
        let Some(Active {
            mem,
            queue,
            interrupt,
        }) = &mut self.active
        else {
            return;
        };
        let handler = &mut self.handler;
        let result =
            process_queue(
                queue,
                mem,
                interrupt,
                CHAINS_PER_WAKEUP,
                |chain| match Chain::parse(chain, mem, H::MAX_REQUEST_BYTES) {
                    Ok(chain) => handler.handle(&chain, mem),
                    Err(e) => {
                        crate::guest_warn!("{}: bad descriptor chain: {e}", H::NAME);
                        0
                    }
                },
            );
        match result {
            Ok(Drained::All) => {}
            // The rest on the event loop's next turn, after whatever else is ready.
            Ok(Drained::BudgetSpent) => {
                let _ = self.queue_events[0].write(1);
            }
            Err(e) => {
                crate::guest_warn!(
                    "{}: queue is broken, device stops until reset: {e}",
                    H::NAME
                );
                self.active = None;
            }
        }
    }
}

impl<H: RequestHandler> VirtioDevice for SingleQueueDevice<H> {
    fn device_type(&self) -> u32 {
        H::DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.handler.features()
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn config_space(&self) -> &[u8] {
        self.handler.config_space()
    }

    fn config_generation(&self) -> u32 {
        self.config_generation
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let got = a.queues.len();
        let Ok([queue]) = <[Queue; 1]>::try_from(a.queues) else {
            return Err(ActivateError::QueueCount { got, need: 1 });
        };
        self.active = Some(Active {
            mem: a.mem,
            queue,
            interrupt: a.interrupt,
        });
        // Requests the driver queued before its notifications were wired up.
        self.process();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl<H: RequestHandler> MutEventSubscriber for SingleQueueDevice<H> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.queue_events[0].as_raw_fd() {
            let _ = self.queue_events[0].read();
            self.process();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_events[0], EventSet::IN)) {
            warn!("{}: cannot watch the queue event: {e:?}", H::NAME);
        }
    }
}
