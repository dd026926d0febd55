//! The virtio-net device: features and MAC, offload negotiation with the TAP, and its event
//! handler (receive from the TAP into the rx queue, transmit the tx queue to the TAP).

use std::fmt;
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::rx::{receive, RxFrame};
use super::tap::{Tap, VNET_HDR_LEN};
use crate::virtio::chain::{iovecs, Chain};
use crate::virtio::queue_loop::{process_queue, Drained, CHAINS_PER_WAKEUP};
use crate::virtio::{
    ActivateError, Activation, VirtioDevice, VirtioInterrupt, COMMON_FEATURES, QUEUE_SIZE,
};

const RX: usize = 0;
const TX: usize = 1;
/// Largest frame either way: a 64 KiB TSO segment plus headers, with room to spare.
const MAX_FRAME_BYTES: u64 = 128 << 10;

/// A MAC address (`aa:bb:cc:dd:ee:ff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 != 0 {
            return Err(format!(
                "{s} is a multicast address; a NIC needs a unicast one"
            ));
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; 2],
    interrupt: Arc<VirtioInterrupt>,
    /// The driver takes frames spread over several receive chains (VIRTIO_NET_F_MRG_RXBUF).
    mergeable: bool,
}

pub struct Net {
    tap: Tap,
    features: u64,
    config: Vec<u8>,
    queue_events: [EventFd; 2],
    active: Option<Active>,
    rx_frame: RxFrame,
}

impl Net {
    /// A NIC on `tap`; with `mac` the guest uses that address, otherwise it picks its own.
    pub fn new(tap: Tap, mac: Option<MacAddr>) -> std::io::Result<Net> {
        let mut features = COMMON_FEATURES
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6)
            | (1 << VIRTIO_NET_F_GUEST_ECN)
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_HOST_TSO6)
            | (1 << VIRTIO_NET_F_HOST_ECN)
            | (1 << VIRTIO_NET_F_MRG_RXBUF);
        // mac[6], status (unused: no VIRTIO_NET_F_STATUS), max_virtqueue_pairs = 1.
        let mut config = vec![0u8; 10];
        if let Some(mac) = mac {
            features |= 1 << VIRTIO_NET_F_MAC;
            config[..6].copy_from_slice(&mac.0);
        }
        config[8] = 1;
        Ok(Net {
            tap,
            features,
            config,
            queue_events: [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?],
            active: None,
            rx_frame: RxFrame::default(),
        })
    }

    /// TUN_F_* offloads matching what the driver can receive.
    fn tap_offloads(acked: u64) -> libc::c_uint {
        let has = |bit: u32| acked & (1 << bit) != 0;
        let mut flags = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= libc::TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= libc::TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= libc::TUN_F_TSO6;
            }
            if has(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
                flags |= libc::TUN_F_TSO_ECN;
            }
        }
        flags
    }

    /// Moves frames from the TAP into the guest until either runs out.
    fn receive(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let result = receive(
            &self.tap,
            &mut active.queues[RX],
            &active.mem,
            &active.interrupt,
            active.mergeable,
            &mut self.rx_frame,
        );
        if let Err(e) = result {
            crate::guest_warn!("virtio-net: rx queue is broken, device stops until reset: {e}");
            self.active = None;
        }
    }

    /// Sends every frame the guest queued.
    fn transmit(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let (tap, mem) = (&self.tap, &active.mem);
        let budget = CHAINS_PER_WAKEUP;
        let result = process_queue(
            &mut active.queues[TX],
            mem,
            &active.interrupt,
            budget,
            |chain| {
                match Chain::parse(chain, mem, MAX_FRAME_BYTES) {
                    Ok(chain) => send_from(tap, &chain, mem),
                    Err(e) => crate::guest_warn!("virtio-net: bad tx descriptor chain: {e}"),
                }
                0
            },
        );
        match result {
            Ok(Drained::All) => {}
            // The rest on the event loop's next turn, after whatever else is ready.
            Ok(Drained::BudgetSpent) => {
                let _ = self.queue_events[TX].write(1);
            }
            Err(e) => {
                crate::guest_warn!("virtio-net: tx queue is broken, device stops until reset: {e}");
                self.active = None;
            }
        }
    }
}

fn send_from(tap: &Tap, chain: &Chain, mem: &GuestMemoryMmap) {
    if chain.writable().next().is_some()
        || chain.readable().map(|s| s.len as usize).sum::<usize>() < VNET_HDR_LEN
    {
        crate::guest_warn!("virtio-net: tx chain is not a readable frame with a header; dropped");
        return;
    }
    let Ok(iov) = iovecs(mem, &chain.segments) else {
        return;
    };
    if let Err(e) = tap.write_vectored(&iov) {
        // The TAP is down or its queue is full: the frame is lost, as on a real wire.
        debug!("virtio-net: writing to TAP {}: {e}", tap.name());
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let got = a.queues.len();
        let Ok(queues) = <[Queue; 2]>::try_from(a.queues) else {
            return Err(ActivateError::QueueCount { got, need: 2 });
        };
        self.tap
            .set_offload(Self::tap_offloads(a.acked_features))
            .map_err(|e| ActivateError::Backend(std::io::Error::other(e.to_string())))?;
        self.active = Some(Active {
            mem: a.mem,
            queues,
            interrupt: a.interrupt,
            mergeable: a.acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
        });
        // Frames that waited in the TAP, and frames the driver queued, before activation.
        self.receive();
        self.transmit();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_frame = RxFrame::default();
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.tap.as_raw_fd() {
            self.receive();
        } else if fd == self.queue_events[RX].as_raw_fd() {
            let _ = self.queue_events[RX].read();
            // The driver added receive buffers: frames may be waiting for them.
            self.receive();
        } else if fd == self.queue_events[TX].as_raw_fd() {
            let _ = self.queue_events[TX].read();
            self.transmit();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Edge-triggered: the TAP is read until it would block, or until the guest has no
        // buffers left (then the rx queue notification resumes reading).
        let tap = Events::new(&self.tap, EventSet::IN | EventSet::EDGE_TRIGGERED);
        for ev in [
            tap,
            Events::new(&self.queue_events[RX], EventSet::IN),
            Events::new(&self.queue_events[TX], EventSet::IN),
        ] {
            if let Err(e) = ops.add(ev) {
                warn!("virtio-net: cannot watch fd {}: {e:?}", ev.fd());
            }
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
