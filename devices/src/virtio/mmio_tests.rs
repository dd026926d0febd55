//! The virtio-mmio transport driven the way Linux's virtio_mmio driver does it, plus the ways a
//! driver can get it wrong; the device behind it is virtio-rng.

use std::sync::{Arc, Mutex};

use vm_device::bus::MmioAddress;
use vm_device::MutDeviceMmio;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::rng::Rng;
use crate::virtio::test_utils::*;
use crate::virtio::{VirtioDevice, COMMON_FEATURES};

fn transport() -> (MmioTransport<Rng>, Arc<Mutex<Rng>>) {
    let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
    (
        MmioTransport::new(rng.clone(), guest_memory(), interrupt()),
        rng,
    )
}

fn rd(t: &mut MmioTransport<Rng>, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.mmio_read(MmioAddress(0), off.into(), &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport<Rng>, off: u32, v: u32) {
    t.mmio_write(MmioAddress(0), off.into(), &v.to_le_bytes());
}

/// ACKNOWLEDGE, DRIVER, features, FEATURES_OK, and queue 0 at the given rings.
fn negotiate(t: &mut MmioTransport<Rng>, features: u64, rings: (u64, u64, u64)) {
    wr(t, VIRTIO_MMIO_STATUS, 1);
    wr(t, VIRTIO_MMIO_STATUS, 3);
    for sel in 0..2 {
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        wr(
            t,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (features >> (32 * sel)) as u32,
        );
    }
    wr(t, VIRTIO_MMIO_STATUS, 11);
    wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    wr(t, VIRTIO_MMIO_QUEUE_NUM, 16);
    wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, rings.0 as u32);
    wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (rings.0 >> 32) as u32);
    wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, rings.1 as u32);
    wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, rings.2 as u32);
    wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

#[test]
fn identifies_as_a_version_2_device() {
    let (mut t, _) = transport();
    assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 4);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
        (COMMON_FEATURES >> 32) as u32
    );
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 5);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "no such queue");
}

#[test]
fn a_full_driver_handshake_activates_the_device_and_it_serves_the_queue() {
    let (mut t, rng) = transport();
    let mem = t.mem.clone();
    let q = mock_queue(&mem, 0);
    add_chain(&q, &[desc(BUF, 64, F_WRITE, 0)], 0);
    negotiate(
        &mut t,
        COMMON_FEATURES,
        (q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0),
    );
    wr(&mut t, VIRTIO_MMIO_STATUS, 15);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 15);
    // Activation served the waiting request and raised the used-buffer interrupt.
    assert_eq!(used(&q, 0), (1, 0, 64));
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // A notification written to the register reaches the queue's eventfd.
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(rng.lock().unwrap().queue_events()[0].read().unwrap(), 1);
    // Queue registers are frozen after DRIVER_OK.
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 2);
    assert_eq!(t.queues[0].size(), 16);
    // Reset returns everything to the start.
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn a_driver_without_virtio_1_cannot_set_features_ok() {
    let (mut t, _) = transport();
    negotiate(&mut t, 0, (0, 0x1000, 0x2000));
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 3);
}

#[test]
fn status_bits_out_of_order_are_refused() {
    let (mut t, _) = transport();
    wr(&mut t, VIRTIO_MMIO_STATUS, 4); // DRIVER_OK first
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    wr(&mut t, VIRTIO_MMIO_STATUS, 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, 1 | 8); // FEATURES_OK before DRIVER
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 1);
}

#[test]
fn rings_outside_guest_memory_make_the_device_need_a_reset() {
    let (mut t, _) = transport();
    negotiate(&mut t, COMMON_FEATURES, (1 << 40, 0x1000, 0x2000));
    wr(&mut t, VIRTIO_MMIO_STATUS, 15);
    let status = rd(&mut t, VIRTIO_MMIO_STATUS);
    assert_eq!(status & 4, 0, "not running");
    assert_ne!(status & 64, 0, "DEVICE_NEEDS_RESET");
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        2,
        "configuration interrupt"
    );
}

#[test]
fn odd_accesses_are_harmless() {
    let (mut t, _) = transport();
    let mut b = [0xffu8; 2];
    t.mmio_read(MmioAddress(0), 0, &mut b);
    assert_eq!(b, [0, 0], "2-byte register reads read zero");
    t.mmio_write(MmioAddress(0), 0x70, &[1]);
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_STATUS),
        0,
        "1-byte register writes are ignored"
    );
    t.mmio_write(MmioAddress(0), 0x102, &[1, 2, 3, 4]);
    let mut cfg = [0xffu8; 8];
    t.mmio_read(MmioAddress(0), 0x100, &mut cfg);
    assert_eq!(cfg, [0; 8], "rng has no configuration space");
    assert_eq!(rd(&mut t, 0x0ffc), 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 99);
}

#[test]
fn rng_fills_writable_buffers_and_refuses_readable_ones() {
    let (mut t, _) = transport();
    let mem = t.mem.clone();
    mem.write_slice(&[0u8; 256], GuestAddress(BUF)).unwrap();
    let q = mock_queue(&mem, 0);
    add_chain(
        &q,
        &[
            desc(BUF, 128, F_NEXT | F_WRITE, 1),
            desc(BUF + 128, 128, F_WRITE, 0),
        ],
        0,
    );
    add_chain(&q, &[desc(BUF + 0x1000, 64, 0, 0)], 2);
    negotiate(
        &mut t,
        COMMON_FEATURES,
        (q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0),
    );
    wr(&mut t, VIRTIO_MMIO_STATUS, 15);
    assert_eq!(used(&q, 0), (2, 0, 256));
    assert_eq!(used(&q, 1), (2, 2, 0));
    let mut got = [0u8; 256];
    mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert!(
        got.iter().filter(|b| **b == 0).count() < 32,
        "random bytes, not zeros"
    );
}
