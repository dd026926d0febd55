//! virtio-net receive path: frames read from the TAP into a host buffer, then copied into the
//! guest's receive chains, across several chains when mergeable receive buffers were negotiated.

use std::sync::atomic::Ordering;

use tracing::warn;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::tap::{Tap, VNET_HDR_LEN};
use crate::virtio::chain::Chain;
use crate::virtio::VirtioInterrupt;

/// Largest frame the TAP hands over: a 64 KiB GSO frame, its Ethernet header and vnet header.
pub const MAX_RX_FRAME: usize = 65_562;
/// Largest receive chain accepted (the driver's big-packet chains are 17 pages).
const MAX_RX_CHAIN: u64 = 128 << 10;
/// Offset of num_buffers in struct virtio_net_hdr_v1.
const NUM_BUFFERS_OFFSET: u64 = 10;

/// A frame read from the TAP that is waiting for guest buffers.
pub struct RxFrame {
    buf: Vec<u8>,
    len: usize,
}

impl Default for RxFrame {
    fn default() -> Self {
        RxFrame {
            buf: vec![0; MAX_RX_FRAME],
            len: 0,
        }
    }
}

enum Delivery {
    Done,
    /// The driver has not given enough buffers yet; the frame waits.
    NoBuffers,
}

/// Moves frames from the TAP into the rx queue until the TAP is empty or the guest has no
/// buffers left (then the rx queue notification resumes it).
pub fn receive(
    tap: &Tap,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    mergeable: bool,
    pending: &mut RxFrame,
) -> Result<(), virtio_queue::Error> {
    let mut delivered = false;
    loop {
        if pending.len == 0 {
            match tap.read(&mut pending.buf) {
                Ok(n) if n >= VNET_HDR_LEN => pending.len = n,
                // Shorter than its header: not a frame; skip it.
                Ok(n) if n > 0 => continue,
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!("virtio-net: reading from TAP {}: {e}", tap.name());
                    break;
                }
            }
        }
        match deliver(queue, mem, &pending.buf[..pending.len], mergeable)? {
            Delivery::Done => {
                pending.len = 0;
                delivered = true;
            }
            Delivery::NoBuffers => {
                // Ask for a notification when buffers come; go on if some came meanwhile.
                let seen = queue.avail_idx(mem, Ordering::Acquire)?;
                queue.enable_notification(mem)?;
                kick_on_next_buffer(queue, mem, seen.0);
                if queue.avail_idx(mem, Ordering::Acquire)? == seen {
                    break;
                }
            }
        }
    }
    if delivered && queue.needs_notification(mem)? {
        interrupt.signal_used_queue();
    }
    Ok(())
}

/// With event-index suppression the driver notifies only when its available index passes the
/// device's avail_event; the queue sets that to the next chain the device will take, which the
/// driver has already passed when there are some buffers, just not enough. Point it at the
/// driver's current index instead, so that its next buffer brings a notification.
fn kick_on_next_buffer(queue: &Queue, mem: &GuestMemoryMmap, avail_idx: u16) {
    if queue.event_idx_enabled() {
        // struct vring_used: flags, idx, ring[size] of 8-byte elements, then avail_event.
        let at = queue.used_ring() + 4 + 8 * u64::from(queue.size());
        if mem.write_obj(avail_idx, GuestAddress(at)).is_err() {
            crate::guest_warn!("virtio-net: cannot write avail_event");
        }
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// Copies one frame into as many chains as it needs (one unless `mergeable`).
fn deliver(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    mergeable: bool,
) -> Result<Delivery, virtio_queue::Error> {
    let mut used: Vec<(u16, u32)> = Vec::new();
    let mut header_at = None;
    let mut rest = frame;
    while !rest.is_empty() {
        let Some(chain) = queue.iter(mem)?.next() else {
            for _ in 0..used.len() {
                queue.go_to_previous_position();
            }
            return Ok(Delivery::NoBuffers);
        };
        let head = chain.head_index();
        let chain = Chain::parse(chain, mem, MAX_RX_CHAIN).and_then(|c| {
            let first = c.segments[0];
            if c.readable().next().is_some() || (first.len as usize) < VNET_HDR_LEN {
                return Err(crate::virtio::ChainError::Layout(
                    "rx chain needs writable buffers",
                ));
            }
            Ok(c)
        });
        let chain = match chain {
            Ok(c) => c,
            Err(e) => {
                crate::guest_warn!("virtio-net: bad rx descriptor chain: {e}");
                if used.is_empty() {
                    // Return it empty and try the frame in the next chain.
                    queue.add_used(mem, head, 0)?;
                    continue;
                }
                // Mid-frame: return what was filled (the driver drops a short frame), then the
                // bad chain, empty; the rest of the frame is lost.
                used.push((head, 0));
                break;
            }
        };
        if header_at.is_none() {
            header_at = Some(chain.segments[0].addr);
        }
        let mut written = 0usize;
        for seg in &chain.segments {
            let n = rest.len().min(seg.len as usize);
            if mem.write_slice(&rest[..n], seg.addr).is_err() {
                break;
            }
            rest = &rest[n..];
            written += n;
            if rest.is_empty() {
                break;
            }
        }
        used.push((head, written as u32));
        if !mergeable {
            // A frame longer than the one chain is cut off, as a too-small buffer would.
            break;
        }
    }
    if let Some(at) = header_at {
        let count = used.iter().filter(|(_, len)| *len > 0).count() as u16;
        let _ = mem.write_obj(count, GuestAddress(at.0 + NUM_BUFFERS_OFFSET));
    }
    for (head, len) in used {
        queue.add_used(mem, head, len)?;
    }
    Ok(Delivery::Done)
}
