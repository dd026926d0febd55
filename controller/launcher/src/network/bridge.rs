//! The bridge binding: the guest takes over the pod's IP and MAC on a bridge of eth0 and the
//! TAP. The pod's own stack keeps only a link-local address on the bridge; an nft steer hands it
//! the launcher's control port on the pod IP, and the guest's answers to the launcher.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use devices::virtio::net::MacAddr;
use futures_util::TryStreamExt;
use kiln_crd::launch::{BRIDGE_NAME, POD_INTERFACE, TAP_NAME};
use kiln_crd::names::CONTROL_PORT;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use super::{link, nat, nl, NetworkError};

/// The launcher's own address on the bridge (KubeVirt's): the DHCP server's identity, the
/// source of the launcher's probes, the target the control port is DNATed to.
pub const LAUNCHER_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);
/// Where the init container leaves the pod's original addresses for the launcher.
pub const HANDOFF_FILE: &str = "bridge.json";
/// How long the init container waits to learn the gateway's MAC.
const GATEWAY_WAIT: Duration = Duration::from_secs(5);

/// What eth0 held before the guest took it over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub gateway_mac: String,
    /// eth0's original MAC, now the guest's.
    pub mac: String,
    pub mtu: u32,
}

impl Handoff {
    /// What the init container left in `run_dir` (the launcher's start).
    pub fn load(run_dir: &Path) -> Result<Handoff, NetworkError> {
        let path = run_dir.join(HANDOFF_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| NetworkError::Handoff(format!("reading {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| NetworkError::Handoff(format!("{}: {e}", path.display())))
    }

    fn save(&self, run_dir: &Path) -> Result<(), NetworkError> {
        let path = run_dir.join(HANDOFF_FILE);
        let text = serde_json::to_string(self).map_err(|e| NetworkError::Handoff(e.to_string()))?;
        std::fs::write(&path, text)
            .map_err(|e| NetworkError::Handoff(format!("writing {}: {e}", path.display())))
    }
}

/// Moves eth0's address to the guest: records it, bridges eth0 with the TAP, and leaves the
/// pod's stack only the link-local address, routes and neighbours it needs to reach the guest
/// and the gateway (the init container's job under `bridge: {}`).
pub async fn setup(
    handle: &Handle,
    pod: &LinkMessage,
    tap_index: u32,
    run_dir: &Path,
) -> Result<Handoff, NetworkError> {
    let pod_index = pod.header.index;
    let mtu = mtu_of(pod);
    let mac = pod
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => Some(format_mac(m)),
            _ => None,
        })
        .ok_or_else(|| NetworkError::NoInterface(format!("{POD_INTERFACE} (it has no MAC)")))?;
    let addresses: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(pod_index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("reading {POD_INTERFACE}'s addresses")))?;
    let (address, prefix_len, message) = addresses
        .into_iter()
        .find_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })?;
            Some((ip, m.header.prefix_len, m))
        })
        .ok_or_else(|| {
            NetworkError::NoInterface(format!("{POD_INTERFACE} (it has no IPv4 address)"))
        })?;
    let gateway = default_gateway(handle).await?;
    let gateway_mac = gateway_mac(handle, gateway).await?;
    let handoff = Handoff {
        address,
        prefix_len,
        gateway,
        gateway_mac,
        mac,
        mtu,
    };

    // eth0 gives up its address (and with it its routes) and its MAC, which the guest takes.
    handle
        .address()
        .del(message)
        .execute()
        .await
        .map_err(nl(format!(
            "removing {address}/{prefix_len} from {POD_INTERFACE}"
        )))?;
    let set = |message: LinkMessage, what: String| async move {
        handle.link().set(message).execute().await.map_err(nl(what))
    };
    set(
        LinkUnspec::new_with_index(pod_index).down().build(),
        format!("setting {POD_INTERFACE} down"),
    )
    .await?;
    set(
        LinkUnspec::new_with_index(pod_index)
            .address(random_mac()?.to_vec())
            .build(),
        format!("giving {POD_INTERFACE} a new MAC"),
    )
    .await?;
    let bridge_mac = random_mac()?;
    handle
        .link()
        .add(
            LinkBridge::new(BRIDGE_NAME)
                .mtu(mtu)
                .address(bridge_mac.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("creating bridge {BRIDGE_NAME}")))?;
    let bridge = link(handle, BRIDGE_NAME).await?.header.index;
    for (name, index) in [(POD_INTERFACE, pod_index), (TAP_NAME, tap_index)] {
        set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .mtu(mtu)
                .up()
                .build(),
            format!("adding {name} to {BRIDGE_NAME}"),
        )
        .await?;
    }
    handle
        .address()
        .add(bridge, IpAddr::V4(LAUNCHER_ADDRESS), 32)
        .execute()
        .await
        .map_err(nl(format!("adding {LAUNCHER_ADDRESS}/32 to {BRIDGE_NAME}")))?;
    // The guest and the gateway, on the bridge, at MACs the pod's stack need not ask for (an
    // ARP from a link-local source is not answered everywhere).
    handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(address, 32)
                .output_interface(bridge)
                .scope(RouteScope::Link)
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("routing {address} to {BRIDGE_NAME}")))?;
    handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(bridge)
                .onlink()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!(
            "routing the default route via {gateway} on {BRIDGE_NAME}"
        )))?;
    for (ip, mac) in [(gateway, &handoff.gateway_mac), (address, &handoff.mac)] {
        let lla = parse_mac(mac)?;
        handle
            .neighbours()
            .add(bridge, IpAddr::V4(ip))
            .link_layer_address(&lla)
            .execute()
            .await
            .map_err(nl(format!("adding neighbour {ip} at {mac}")))?;
    }
    nat::install(&ruleset(&handoff, &format_mac(&bridge_mac)))?;
    handoff.save(run_dir)?;
    Ok(handoff)
}

/// The interface's MTU (1500 when it does not say).
pub fn mtu_of(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500)
}

/// The gateway of the pod's IPv4 default route.
async fn default_gateway(handle: &Handle) -> Result<Ipv4Addr, NetworkError> {
    let routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("reading the routes"))?;
    routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .find_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                _ => None,
            })
        })
        .ok_or_else(|| NetworkError::NoInterface("a default route through a gateway".into()))
}

/// The gateway's MAC: one datagram to it makes the kernel resolve it, then the neighbour table
/// has it.
async fn gateway_mac(handle: &Handle, gateway: Ipv4Addr) -> Result<String, NetworkError> {
    let deadline = Instant::now() + GATEWAY_WAIT;
    let mut poke = Instant::now();
    loop {
        if Instant::now() >= poke {
            // The discard port: nothing answers, the ARP that precedes it is what counts.
            if let Ok(socket) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
                let _ = socket.send_to(b"kiln", (gateway, 9));
            }
            poke = Instant::now() + Duration::from_millis(500);
        }
        let neighbours: Vec<_> = handle
            .neighbours()
            .get()
            .set_address_family(rtnetlink::packet_route::AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(nl("reading the neighbour table"))?;
        let found = neighbours.iter().find_map(|n| {
            let resolved = !matches!(
                n.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            );
            let is_gateway = n.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) if *ip == gateway)
            });
            if !(resolved && is_gateway) {
                return None;
            }
            n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => Some(format_mac(m)),
                _ => None,
            })
        });
        if let Some(mac) = found {
            return Ok(mac);
        }
        if Instant::now() >= deadline {
            return Err(NetworkError::Gateway(gateway.to_string(), GATEWAY_WAIT));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn format_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(m: &str) -> Result<[u8; 6], NetworkError> {
    m.parse::<MacAddr>()
        .map(|m| m.0)
        .map_err(|e| NetworkError::Handoff(format!("MAC {m:?}: {e}")))
}

/// The bridge binding's ruleset: frames for the control port on the pod IP, and the guest's
/// answers to the launcher, go up to the host stack; the launcher's DHCP stays inside the pod.
pub fn ruleset(h: &Handoff, bridge_mac: &str) -> String {
    let pod = h.address;
    format!(
        "table bridge kiln {{
  chain prerouting {{
    type filter hook prerouting priority dstnat; policy accept;
    iifname \"{POD_INTERFACE}\" ip daddr {pod} tcp dport {CONTROL_PORT} meta pkttype set host ether daddr set {bridge_mac}
    iifname \"{TAP_NAME}\" ip daddr {LAUNCHER_ADDRESS} meta pkttype set host ether daddr set {bridge_mac}
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"{TAP_NAME}\" oifname \"{POD_INTERFACE}\" udp dport 67 drop
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname \"{POD_INTERFACE}\" udp sport 67 drop
  }}
}}
table ip kiln {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{BRIDGE_NAME}\" ip daddr {pod} tcp dport {CONTROL_PORT} dnat to {LAUNCHER_ADDRESS}
  }}
}}
"
    )
}

/// A random locally administered unicast MAC (eth0's and the bridge's new ones).
pub fn random_mac() -> Result<[u8; 6], NetworkError> {
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut mac))
        .map_err(|e| NetworkError::Handoff(format!("reading /dev/urandom: {e}")))?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff() -> Handoff {
        Handoff {
            address: Ipv4Addr::new(10, 244, 0, 7),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 244, 0, 1),
            gateway_mac: "0a:58:0a:f4:00:01".into(),
            mac: "0a:58:0a:f4:00:07".into(),
            mtu: 1500,
        }
    }

    #[test]
    fn the_control_port_and_the_guests_answers_reach_the_launcher() {
        let r = ruleset(&handoff(), "02:11:22:33:44:55");
        assert!(r.contains(&format!("iifname \"eth0\" ip daddr 10.244.0.7 tcp dport {CONTROL_PORT} meta pkttype set host ether daddr set 02:11:22:33:44:55")), "{r}");
        assert!(
            r.contains("iifname \"tap0\" ip daddr 169.254.75.10 meta pkttype set host"),
            "{r}"
        );
        assert!(
            r.contains(&format!(
                "ip daddr 10.244.0.7 tcp dport {CONTROL_PORT} dnat to 169.254.75.10"
            )),
            "{r}"
        );
        assert!(r.contains("oifname \"eth0\" udp sport 67 drop"), "{r}");
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..32 {
            let m = random_mac().unwrap();
            assert_eq!(m[0] & 0x03, 0x02, "{m:?}");
        }
    }

    #[test]
    fn macs_print_and_parse_back() {
        let m = [0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x07];
        assert_eq!(format_mac(&m), "0a:58:0a:f4:00:07");
        assert_eq!(parse_mac("0a:58:0a:f4:00:07").unwrap(), m);
        assert!(parse_mac("0a:58").is_err());
    }

    #[test]
    fn the_handoff_round_trips() {
        let h = handoff();
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Handoff>(&text).unwrap(), h);
    }
}
