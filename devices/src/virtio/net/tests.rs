//! virtio-net against guest memory and a datagram socket standing in for the TAP: frames both
//! ways with their headers, offload negotiation, and malformed chains dropped safely.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::net::tap::socket_tap;
use crate::virtio::test_utils::*;

fn net_with_peer() -> (Net, UnixDatagram) {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let file = std::fs::File::from(OwnedFd::from(ours));
    let mac = Some("06:00:0a:00:02:02".parse().unwrap());
    (Net::new(socket_tap(file), mac).unwrap(), peer)
}

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i * 13) as u8));
    f
}

#[test]
fn transmits_guest_frames_with_their_header() {
    let (mut net, peer) = net_with_peer();
    let mem = guest_memory();
    let (rxq, txq) = (mock_queue(&mem, 0), mock_queue(&mem, 0x8000));
    let f = frame(1500);
    mem.write_slice(&f[..VNET_HDR_LEN], GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&f[VNET_HDR_LEN..], GuestAddress(BUF + 0x1000))
        .unwrap();
    add_chain(
        &txq,
        &[desc(BUF, 12, F_NEXT, 1), desc(BUF + 0x1000, 1500, 0, 0)],
        0,
    );
    net.activate(activation(&mem, &[&rxq, &txq], net.features()))
        .unwrap();
    let mut got = vec![0u8; 4096];
    let n = peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(used(&txq, 0), (1, 0, 0));
}

#[test]
fn receives_frames_into_guest_buffers_and_waits_for_buffers() {
    let (mut net, peer) = net_with_peer();
    let mem = guest_memory();
    let (rxq, txq) = (mock_queue(&mem, 0), mock_queue(&mem, 0x8000));
    let no_mrg = net.features() & !(1 << VIRTIO_NET_F_MRG_RXBUF);
    net.activate(activation(&mem, &[&rxq, &txq], no_mrg))
        .unwrap();
    // A frame arrives while the guest has no receive buffers: it waits.
    let f = frame(600);
    peer.send(&f).unwrap();
    net.receive();
    assert_eq!(rxq.used().idx().load(), 0);
    // The guest adds a buffer; the frame lands in it, num_buffers = 1.
    add_chain(&rxq, &[desc(BUF, 2048, F_WRITE, 0)], 0);
    net.receive();
    assert_eq!(used(&rxq, 0), (1, 0, f.len() as u32));
    let mut back = vec![0u8; f.len()];
    mem.read_slice(&mut back, GuestAddress(BUF)).unwrap();
    assert_eq!(&back[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert_eq!(mem.read_obj::<u16>(GuestAddress(BUF + 10)).unwrap(), 1);
}

#[test]
fn mergeable_buffers_spread_a_large_frame_over_several_chains() {
    let (mut net, peer) = net_with_peer();
    let mem = guest_memory();
    let (rxq, txq) = (mock_queue(&mem, 0), mock_queue(&mem, 0x8000));
    net.activate(activation(&mem, &[&rxq, &txq], net.features()))
        .unwrap();
    let f = frame(4000);
    peer.send(&f).unwrap();
    // Two 1500-byte buffers are not enough: the frame waits for a third.
    add_chain(&rxq, &[desc(BUF, 1500, F_WRITE, 0)], 0);
    add_chain(&rxq, &[desc(BUF + 0x1000, 1500, F_WRITE, 0)], 1);
    net.receive();
    assert_eq!(rxq.used().idx().load(), 0);
    // With event-index suppression the driver must notify on its very next buffer:
    // avail_event (after the 16 used elements) is its current index, 2.
    let avail_event = rxq.used_addr().0 + 4 + 8 * 16;
    assert_eq!(mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 2);
    add_chain(&rxq, &[desc(BUF + 0x2000, 1500, F_WRITE, 0)], 2);
    net.receive();
    assert_eq!(used(&rxq, 0), (3, 0, 1500));
    assert_eq!(used(&rxq, 1), (3, 1, 1500));
    assert_eq!(used(&rxq, 2), (3, 2, f.len() as u32 - 3000));
    assert_eq!(mem.read_obj::<u16>(GuestAddress(BUF + 10)).unwrap(), 3);
    let mut back = vec![0u8; f.len()];
    for (i, part) in back.chunks_mut(1500).enumerate() {
        mem.read_slice(part, GuestAddress(BUF + 0x1000 * i as u64))
            .unwrap();
    }
    assert_eq!(&back[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
}

#[test]
fn offloads_follow_what_the_driver_accepted() {
    assert_eq!(Net::tap_offloads(0), 0);
    let csum = 1 << VIRTIO_NET_F_GUEST_CSUM;
    assert_eq!(Net::tap_offloads(csum), libc::TUN_F_CSUM);
    // TSO without checksum offload is not possible.
    assert_eq!(Net::tap_offloads(1 << VIRTIO_NET_F_GUEST_TSO4), 0);
    let all = csum
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_TSO6)
        | (1 << VIRTIO_NET_F_GUEST_ECN);
    assert_eq!(
        Net::tap_offloads(all),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
    );
}

#[test]
fn mac_addresses_parse_and_print() {
    let mac: MacAddr = "06:00:AC:10:00:02".parse().unwrap();
    assert_eq!(mac.to_string(), "06:00:ac:10:00:02");
    for bad in [
        "06:00:ac:10:00",
        "06:00:ac:10:00:02:03",
        "0600ac100002",
        "01:00:5e:00:00:01",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
    }
    let (net, _peer) = net_with_peer();
    assert_eq!(&net.config_space()[..6], &mac_bytes());
    assert_ne!(net.features() & (1 << VIRTIO_NET_F_MAC), 0);
}

fn mac_bytes() -> [u8; 6] {
    [6, 0, 10, 0, 2, 2]
}
