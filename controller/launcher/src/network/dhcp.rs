//! The DHCP server the launcher runs on the TAP: it leases the guest its one address (the
//! masqueraded guest's), with the router, the pod's DNS servers and search domains (so cluster
//! names resolve in the guest), the hostname and the pod's MTU. Messages are parsed and built
//! with `dhcproto`; anything else a guest sends (malformed packets, floods, other clients) is
//! counted and dropped, with warnings rate-limited.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder, Name};
use thiserror::Error;
use tokio::net::UdpSocket;
use tracing::{info, warn};

/// How long a lease lasts (the guest renews at half of it).
pub const LEASE_SECONDS: u32 = 86_400;
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

#[derive(Debug, Error, PartialEq)]
pub enum DhcpError {
    #[error("not a DHCP message: {0}")]
    Malformed(String),
    #[error("a BOOTREPLY: only clients' requests are answered")]
    NotARequest,
    #[error("no DHCP message type")]
    NoMessageType,
}

/// The one lease this server gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub server: Ipv4Addr,
    pub client_mac: [u8; 6],
    pub client: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub hostname: String,
    pub mtu: u16,
}

/// What to send back: the reply and whether it grants the address (an ACK).
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub message: Vec<u8>,
    pub to: SocketAddrV4,
    pub granted: bool,
}

/// The pod's DNS servers and search domains from its resolv.conf.
pub fn resolv_conf(text: &str) -> (Vec<Ipv4Addr>, Vec<String>) {
    let mut dns = Vec::new();
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.extend(words.next().and_then(|a| a.parse::<Ipv4Addr>().ok())),
            Some("search") => search = words.map(str::to_string).collect(),
            _ => {}
        }
    }
    (dns, search)
}

fn mask(prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    })
}

/// BOOTP's fixed header, then the options' magic cookie.
const HEADER_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// The options the server reads, with the length each must have (0: any).
const READ_OPTIONS: [(u8, usize); 5] = [(53, 1), (50, 4), (54, 4), (61, 0), (55, 0)];

/// The datagram with only the options the server reads, each of the right length: dhcproto's
/// decoders of some other options panic on hostile values (a classless route's prefix over 32),
/// and a guest must not reach them.
fn only_read_options(datagram: &[u8]) -> Result<Vec<u8>, DhcpError> {
    let malformed = |what: &str| DhcpError::Malformed(what.to_string());
    if datagram.len() < HEADER_LEN + MAGIC.len() {
        return Err(malformed("shorter than a BOOTP header"));
    }
    if datagram[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
        return Err(malformed("no DHCP magic cookie"));
    }
    // dhcproto's chaddr() slices its 16-byte field by the packet's hlen.
    if datagram[2] > 16 {
        return Err(malformed("hardware address longer than 16 bytes"));
    }
    let mut out = datagram[..HEADER_LEN + 4].to_vec();
    let mut rest = &datagram[HEADER_LEN + 4..];
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => rest = tail,
            255 => break,
            _ => {
                let (&len, tail) = tail
                    .split_first()
                    .ok_or_else(|| malformed("an option without a length"))?;
                let len = usize::from(len);
                let value = tail
                    .get(..len)
                    .ok_or_else(|| malformed("an option past the end"))?;
                if READ_OPTIONS
                    .iter()
                    .any(|&(c, want)| c == code && (want == 0 || want == len))
                {
                    out.extend_from_slice(&[code, len as u8]);
                    out.extend_from_slice(value);
                }
                rest = &tail[len..];
            }
        }
    }
    out.push(255);
    Ok(out)
}

/// Answers one datagram from a client; Ok(None) when it needs no answer.
pub fn answer(lease: &Lease, datagram: &[u8]) -> Result<Option<Reply>, DhcpError> {
    let datagram = only_read_options(datagram)?;
    let request = Message::decode(&mut Decoder::new(&datagram))
        .map_err(|e| DhcpError::Malformed(e.to_string()))?;
    if request.opcode() != Opcode::BootRequest {
        return Err(DhcpError::NotARequest);
    }
    if request.chaddr().get(..6) != Some(&lease.client_mac[..]) {
        return Ok(None); // not our guest: another server's business
    }
    let kind = request.opts().msg_type().ok_or(DhcpError::NoMessageType)?;
    let requested = match request.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
        _ => None,
    };
    let reply_kind = match kind {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            let asked = requested.unwrap_or(request.ciaddr());
            if asked == lease.client {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        MessageType::Inform => MessageType::Ack,
        _ => return Ok(None), // Release, Decline: the one address stays the guest's
    };
    let mut reply = Message::default();
    reply
        .set_opcode(Opcode::BootReply)
        .set_xid(request.xid())
        .set_flags(request.flags())
        .set_chaddr(&lease.client_mac)
        .set_giaddr(request.giaddr())
        .set_siaddr(lease.server);
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(reply_kind));
    opts.insert(DhcpOption::ServerIdentifier(lease.server));
    if reply_kind != MessageType::Nak {
        if kind != MessageType::Inform {
            reply.set_yiaddr(lease.client);
        }
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::SubnetMask(mask(lease.prefix_len)));
        opts.insert(DhcpOption::Router(vec![lease.router]));
        if !lease.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
        }
        let search: Vec<Name> = lease
            .search
            .iter()
            .filter_map(|d| Name::from_ascii(d).ok())
            .collect();
        if let Some(first) = lease.search.first() {
            opts.insert(DhcpOption::DomainName(first.clone()));
        }
        if !search.is_empty() {
            opts.insert(DhcpOption::DomainSearch(search));
        }
        if !lease.hostname.is_empty() {
            opts.insert(DhcpOption::Hostname(lease.hostname.clone()));
        }
        opts.insert(DhcpOption::InterfaceMtu(lease.mtu));
        if kind != MessageType::Inform {
            opts.insert(DhcpOption::AddressLeaseTime(LEASE_SECONDS));
            opts.insert(DhcpOption::Renewal(LEASE_SECONDS / 2));
            opts.insert(DhcpOption::Rebinding(LEASE_SECONDS / 8 * 7));
        }
    }
    let mut message = Vec::new();
    reply
        .encode(&mut Encoder::new(&mut message))
        .map_err(|e| DhcpError::Malformed(e.to_string()))?;
    // A client with an address (renewing, INFORM) gets a unicast; one without, a broadcast.
    let to = if !request.ciaddr().is_unspecified() && !request.flags().broadcast() {
        SocketAddrV4::new(request.ciaddr(), CLIENT_PORT)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    };
    Ok(Some(Reply {
        message,
        to,
        granted: reply_kind == MessageType::Ack && kind != MessageType::Inform,
    }))
}

/// A UDP socket on port 67 of `device` only, allowed to broadcast.
pub fn bind(device: &str) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, SERVER_PORT))?;
    let fd = socket.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `len` bytes from the pointers we pass, which outlive the calls.
    unsafe {
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            device.as_ptr().cast(),
            device.len() as libc::socklen_t,
        ) < 0
            || libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BROADCAST,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Warns at most once per interval, counting what it held back.
struct RateLimitedWarning {
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimitedWarning {
    fn warn(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            self.held_back += 1;
            return;
        }
        warn!(
            "DHCP: dropped {what}{}",
            if self.held_back > 0 {
                format!(" ({} more dropped since the last warning)", self.held_back)
            } else {
                String::new()
            }
        );
        self.last = Some(now);
        self.held_back = 0;
    }
}

/// Serves the lease until the socket fails; `granted` runs on every ACK.
pub async fn serve(lease: Lease, socket: UdpSocket, granted: impl Fn(Ipv4Addr)) {
    let mut buf = vec![0u8; 1500];
    let mut warning = RateLimitedWarning {
        last: None,
        held_back: 0,
    };
    loop {
        let n = match socket.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            Err(e) => {
                warn!("DHCP: receiving: {e}; the server stops");
                return;
            }
        };
        match answer(&lease, &buf[..n]) {
            Ok(Some(reply)) => {
                if let Err(e) = socket.send_to(&reply.message, reply.to).await {
                    warning.warn(&format!("a reply to {}: {e}", reply.to));
                    continue;
                }
                if reply.granted {
                    info!("DHCP: leased {} to the guest", lease.client);
                    granted(lease.client);
                }
            }
            Ok(None) => {}
            Err(e) => warning.warn(&format!("a {n}-byte datagram: {e}")),
        }
    }
}

#[cfg(test)]
mod tests;
