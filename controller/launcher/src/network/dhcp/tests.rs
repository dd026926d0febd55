//! The DHCP server's answers, message by message, and its refusal of what is not a request.

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::*;
use devices::virtio::net::MacAddr;

const MAC: [u8; 6] = [0x02, 0x3f, 0x2a, 0x9c, 0x1e, 0x0b];

fn lease() -> Lease {
    Lease {
        server: Ipv4Addr::new(10, 0, 2, 1),
        client_mac: MAC,
        client: Ipv4Addr::new(10, 0, 2, 2),
        prefix_len: 24,
        router: Ipv4Addr::new(10, 0, 2, 1),
        dns: vec![Ipv4Addr::new(10, 96, 0, 10)],
        search: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        hostname: "web".into(),
        mtu: 1450,
    }
}

fn request(kind: MessageType, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Vec<u8> {
    let mut m = Message::default();
    m.set_xid(0x1234_5678).set_chaddr(&mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(a) = requested {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

fn decoded(reply: &Reply) -> Message {
    Message::decode(&mut Decoder::new(&reply.message)).unwrap()
}

#[test]
fn a_discover_gets_an_offer_with_the_pods_settings() {
    let reply = answer(&lease(), &request(MessageType::Discover, MAC, None))
        .unwrap()
        .unwrap();
    assert!(!reply.granted);
    assert_eq!(reply.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    let m = decoded(&reply);
    assert_eq!(m.xid(), 0x1234_5678);
    assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 2, 2));
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    let o = m.opts();
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 1)]))
    );
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 96, 0, 10
        )]))
    );
    assert_eq!(
        o.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("web".into()))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1450))
    );
    match o.get(OptionCode::DomainSearch) {
        Some(DhcpOption::DomainSearch(names)) => assert_eq!(names.len(), 3),
        other => panic!("no search list: {other:?}"),
    }
}

#[test]
fn a_request_for_the_guests_address_is_acked_any_other_nakked() {
    let l = lease();
    let ack = answer(&l, &request(MessageType::Request, MAC, Some(l.client)))
        .unwrap()
        .unwrap();
    assert!(ack.granted);
    assert_eq!(decoded(&ack).opts().msg_type(), Some(MessageType::Ack));
    let nak = answer(
        &l,
        &request(MessageType::Request, MAC, Some(Ipv4Addr::new(10, 0, 2, 99))),
    )
    .unwrap()
    .unwrap();
    assert!(!nak.granted);
    let m = decoded(&nak);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
}

#[test]
fn a_renewal_is_answered_by_unicast() {
    let l = lease();
    let mut m = Message::default();
    m.set_chaddr(&MAC)
        .set_ciaddr(l.client)
        .set_flags(Flags::default());
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    let reply = answer(&l, &buf).unwrap().unwrap();
    assert!(reply.granted);
    assert_eq!(reply.to, SocketAddrV4::new(l.client, 68));
}

#[test]
fn other_clients_and_releases_get_nothing() {
    let other = [0x02, 0, 0, 0, 0, 0x99];
    assert_eq!(
        answer(&lease(), &request(MessageType::Discover, other, None)),
        Ok(None)
    );
    assert_eq!(
        answer(&lease(), &request(MessageType::Release, MAC, None)),
        Ok(None)
    );
}

#[test]
fn malformed_datagrams_are_errors_not_panics() {
    assert!(matches!(
        answer(&lease(), b""),
        Err(DhcpError::Malformed(_))
    ));
    assert!(matches!(
        answer(&lease(), &[0xff; 100]),
        Err(DhcpError::Malformed(_)) | Err(DhcpError::NotARequest)
    ));
    // A valid header whose options run past the end, and every truncation of a real DISCOVER.
    let discover = request(MessageType::Discover, MAC, None);
    for len in 0..discover.len() {
        let _ = answer(&lease(), &discover[..len]);
    }
    // A hardware address length past chaddr's 16 bytes (dhcproto would slice out of bounds).
    let mut long_hlen = discover.clone();
    long_hlen[2] = 180;
    assert!(matches!(
        answer(&lease(), &long_hlen),
        Err(DhcpError::Malformed(_))
    ));
    // A classless static route with a prefix of 200 (dhcproto's decoder would panic on it).
    let end = 240 + discover[240..].iter().position(|b| *b == 255).unwrap();
    let mut route = discover[..end].to_vec();
    route.extend_from_slice(&[121, 5, 200, 10, 0, 0, 1, 255]);
    assert!(answer(&lease(), &route).unwrap().is_some());
    let mut state = 0x9e37_79b9_u32;
    for _ in 0..200_000 {
        let mut d = discover.clone();
        for _ in 0..8 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let at = state as usize % d.len();
            d[at] = (state >> 24) as u8;
        }
        let _ = answer(&lease(), &d);
    }
}

#[test]
fn resolv_conf_gives_servers_and_search_domains() {
    let (dns, search) = resolv_conf(
        "search ns1.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
    );
    assert_eq!(dns, vec![Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(search.len(), 3);
    let mac = |s: &str| s.parse::<MacAddr>().ok().map(|m| m.0);
    assert_eq!(mac("02:3F:2a:9c:1e:0b"), Some(MAC));
    assert_eq!(mac("02:3f:2a:9c:1e"), None);
    assert_eq!(mac("02:3f:2a:9c:1e:0b:00"), None);
}
