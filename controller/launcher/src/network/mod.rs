//! The guest's place on the pod network. `setup` runs once in the pod's init container (the
//! only one holding NET_ADMIN): it creates the TAP (which the launcher opens and kiln-vmm
//! inherits), then binds it to the pod. Masquerade: the TAP gets the guest network's gateway
//! address and the pod's MTU, forwarding between eth0 and the TAP is turned on (per interface,
//! through netlink: /proc/sys is read-only in containers) and the NAT rules go in with nft.
//! Bridge: `bridge`. The launcher then serves DHCP to the guest (`dhcp`).

pub mod bridge;
pub mod dhcp;
mod nat;

use std::net::{IpAddr, Ipv4Addr};

use devices::virtio::net::Tap;
use futures_util::TryStreamExt;
use kiln_crd::launch::{LaunchNetwork, NetworkBinding, POD_INTERFACE, TAP_NAME};
use kiln_crd::network::masquerade_addresses;
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute, LinkMessage,
};
use rtnetlink::{Handle, LinkUnspec};
use thiserror::Error;
use tracing::info;

pub use nat::ruleset;

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("the guest network {0:?} is not an IPv4 network of at most /30")]
    Cidr(String),
    #[error("the bridge binding's handoff: {0}")]
    Handoff(String),
    #[error("the gateway {0} did not answer ARP within {1:?}")]
    Gateway(String, std::time::Duration),
    #[error("creating TAP {TAP_NAME}: {0}")]
    Tap(String),
    #[error("netlink: {what}: {error}")]
    Netlink { what: String, error: String },
    #[error("the pod has no interface {0}")]
    NoInterface(String),
    #[error("installing the NAT rules with nft: {0}")]
    Nft(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |e| NetworkError::Netlink {
        what,
        error: e.to_string(),
    }
}

/// The pod-side addresses of a masqueraded guest: (gateway, guest, prefix length).
pub fn addresses(net: &LaunchNetwork) -> Result<(Ipv4Addr, Ipv4Addr, u8), NetworkError> {
    masquerade_addresses(&net.vm_network_cidr)
        .ok_or_else(|| NetworkError::Cidr(net.vm_network_cidr.clone()))
}

/// Sets up the pod's network for the guest (the init container's whole job).
pub async fn setup(net: &LaunchNetwork, run_dir: &std::path::Path) -> Result<(), NetworkError> {
    let tap = Tap::open_named(TAP_NAME).map_err(|e| NetworkError::Tap(e.to_string()))?;
    tap.persist(kiln_crd::launch::LAUNCHER_UID)
        .map_err(|e| NetworkError::Tap(e.to_string()))?;
    drop(tap);

    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetworkError::Netlink {
            what: "opening a socket".into(),
            error: e.to_string(),
        })?;
    tokio::spawn(connection);
    let pod = link(&handle, POD_INTERFACE).await?;
    let tap_index = link(&handle, TAP_NAME).await?.header.index;
    if net.binding == NetworkBinding::Bridge {
        let h = bridge::setup(&handle, &pod, tap_index, run_dir).await?;
        info!(
            "pod network ready: the guest takes over {}/{} and MAC {} on bridge {} of {POD_INTERFACE} and {TAP_NAME} (MTU {}), gateway {}",
            h.address, h.prefix_len, h.mac, kiln_crd::launch::BRIDGE_NAME, h.mtu, h.gateway
        );
        return Ok(());
    }
    let (gateway, guest, prefix) = addresses(net)?;
    let mtu = bridge::mtu_of(&pod);
    handle
        .address()
        .add(tap_index, IpAddr::V4(gateway), prefix)
        .execute()
        .await
        .map_err(nl(format!("adding {gateway}/{prefix} to {TAP_NAME}")))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {TAP_NAME} up with MTU {mtu}")))?;
    for (name, index) in [(POD_INTERFACE, pod.header.index), (TAP_NAME, tap_index)] {
        let mut forwarding = InetDevConf::default();
        forwarding.forwarding = 1;
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(forwarding),
            ])]))
            .build();
        handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(nl(format!("turning on IPv4 forwarding on {name}")))?;
    }
    nat::install(&ruleset(net, guest))?;
    info!(
        "pod network ready: {TAP_NAME} {gateway}/{prefix} (MTU {mtu}), guest {guest} behind NAT to the pod IP{}",
        if net.ports.is_empty() {
            " (every port)".to_string()
        } else {
            format!(
                " (ports {})",
                net.ports
                    .iter()
                    .map(|p| format!("{}/{}", p.port, p.protocol))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    Ok(())
}

async fn link(handle: &Handle, name: &str) -> Result<LinkMessage, NetworkError> {
    handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(nl(format!("looking up {name}")))?
        .ok_or_else(|| NetworkError::NoInterface(name.into()))
}

/// The pod's MTU (eth0's), as the TAP was given it.
pub fn tap_mtu() -> u16 {
    std::fs::read_to_string(format!("/sys/class/net/{TAP_NAME}/mtu"))
        .ok()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500)
}
