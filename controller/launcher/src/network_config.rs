//! cloud-init network-config (versions 1 and 2) read for Kiln's own guest, which has no
//! cloud-init: the first NIC's static address, gateway, MTU and DNS become `kiln-network`, a
//! `key: value` file beside `network-config` in the NoCloud seed that the guest's init applies.
//! Stock guests ignore that file and apply `network-config` themselves.

use std::net::Ipv4Addr;

use serde_yaml::Value;
use thiserror::Error;

/// The seed file Kiln's guest init reads.
pub const KILN_NETWORK_FILE: &str = "kiln-network";

#[derive(Debug, Error, PartialEq)]
pub enum NetworkConfigError {
    #[error("network-config is not YAML: {0}")]
    Yaml(String),
    #[error("network-config: version {0:?}; cloud-init knows 1 and 2")]
    Version(String),
    #[error("network-config: no NIC (version 1 `config` of type physical, version 2 `ethernets`)")]
    NoNic,
    #[error("network-config: {field}: {value:?} is not an IPv4 {what}")]
    Address {
        field: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("network-config: the NIC has neither DHCP nor a static IPv4 address")]
    NoAddress,
}

/// The guest NIC's configuration, as Kiln's guest applies it.
#[derive(Debug, Default, PartialEq)]
pub struct GuestNetwork {
    /// None: DHCP.
    pub address: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub dns: Vec<Ipv4Addr>,
    pub search: Vec<String>,
}

impl GuestNetwork {
    /// The `kiln-network` file: `mode: static|dhcp`, then address, netmask, gateway, mtu, dns
    /// and search when set (lists space-separated).
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self.address {
            None => out.push_str("mode: dhcp\n"),
            Some((ip, prefix)) => {
                let mask =
                    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
                out.push_str(&format!("mode: static\naddress: {ip}\nnetmask: {mask}\n"));
            }
        }
        if let Some(g) = self.gateway {
            out.push_str(&format!("gateway: {g}\n"));
        }
        if let Some(m) = self.mtu {
            out.push_str(&format!("mtu: {m}\n"));
        }
        let join = |v: Vec<String>| v.join(" ");
        if !self.dns.is_empty() {
            let dns = join(self.dns.iter().map(Ipv4Addr::to_string).collect());
            out.push_str(&format!("dns: {dns}\n"));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search: {}\n", join(self.search.clone())));
        }
        out
    }
}

/// Reads `text` (a whole network-config, with or without the top-level `network:` key).
pub fn parse(text: &[u8]) -> Result<GuestNetwork, NetworkConfigError> {
    let doc: Value =
        serde_yaml::from_slice(text).map_err(|e| NetworkConfigError::Yaml(e.to_string()))?;
    let doc = doc.get("network").unwrap_or(&doc);
    match doc.get("version").map(scalar).as_deref() {
        Some("1") => version1(doc),
        Some("2") => version2(doc),
        Some(v) => Err(NetworkConfigError::Version(v.to_string())),
        None => Err(NetworkConfigError::Version(String::new())),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(items)) => items.iter().map(scalar).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn ipv4(field: &'static str, value: &str) -> Result<Ipv4Addr, NetworkConfigError> {
    value.parse().map_err(|_| NetworkConfigError::Address {
        field,
        value: value.to_string(),
        what: "address",
    })
}

fn ipv4_list(field: &'static str, v: Option<&Value>) -> Result<Vec<Ipv4Addr>, NetworkConfigError> {
    strings(v).iter().map(|s| ipv4(field, s)).collect()
}

/// "10.0.2.2/24" (or a bare address with `netmask`, defaulting to /24 as udhcpc does).
fn cidr(
    field: &'static str,
    value: &str,
    netmask: Option<&str>,
) -> Result<(Ipv4Addr, u8), NetworkConfigError> {
    let bad = |what| NetworkConfigError::Address {
        field,
        value: value.to_string(),
        what,
    };
    let (ip, prefix) = match value.split_once('/') {
        Some((ip, p)) => (ip, p.parse::<u8>().map_err(|_| bad("prefix"))?),
        None => match netmask {
            Some(m) => {
                let m = u32::from(ipv4("netmask", m)?);
                if m.leading_ones() + m.trailing_zeros() != 32 {
                    return Err(bad("netmask"));
                }
                (value, m.leading_ones() as u8)
            }
            None => (value, 24),
        },
    };
    if prefix > 32 {
        return Err(bad("prefix"));
    }
    Ok((ip.parse().map_err(|_| bad("address"))?, prefix))
}

fn mtu(v: Option<&Value>) -> Option<u32> {
    v.and_then(|m| scalar(m).parse().ok())
}

/// Version 2 (netplan): the ethernet `eth0`, else the first one.
fn version2(doc: &Value) -> Result<GuestNetwork, NetworkConfigError> {
    let Some(Value::Mapping(eths)) = doc.get("ethernets") else {
        return Err(NetworkConfigError::NoNic);
    };
    let nic = eths
        .get("eth0")
        .or_else(|| eths.values().next())
        .ok_or(NetworkConfigError::NoNic)?;
    let dhcp = nic
        .get("dhcp4")
        .map(scalar)
        .is_some_and(|d| d == "true" || d == "yes");
    let address = strings(nic.get("addresses"))
        .iter()
        .find(|a| !a.contains(':'))
        .map(|a| cidr("addresses", a, None))
        .transpose()?;
    if address.is_none() && !dhcp {
        return Err(NetworkConfigError::NoAddress);
    }
    let default_route = match nic.get("routes") {
        Some(Value::Sequence(routes)) => routes
            .iter()
            .find(|r| {
                matches!(
                    r.get("to").map(scalar).as_deref(),
                    Some("default" | "0.0.0.0/0")
                )
            })
            .and_then(|r| r.get("via").map(scalar)),
        _ => None,
    };
    let gateway = nic.get("gateway4").map(scalar).or(default_route);
    let ns = nic.get("nameservers");
    Ok(GuestNetwork {
        address: if dhcp { None } else { address },
        gateway: if dhcp {
            None
        } else {
            gateway.map(|g| ipv4("gateway4", &g)).transpose()?
        },
        mtu: mtu(nic.get("mtu")),
        dns: ipv4_list("nameservers.addresses", ns.and_then(|n| n.get("addresses")))?,
        search: strings(ns.and_then(|n| n.get("search"))),
    })
}

/// Version 1: the first `physical` entry's first IPv4 subnet; `nameserver` entries add DNS.
fn version1(doc: &Value) -> Result<GuestNetwork, NetworkConfigError> {
    let Some(Value::Sequence(entries)) = doc.get("config") else {
        return Err(NetworkConfigError::NoNic);
    };
    let kind = |e: &Value| e.get("type").map(scalar).unwrap_or_default();
    let nic = entries
        .iter()
        .find(|e| kind(e) == "physical")
        .ok_or(NetworkConfigError::NoNic)?;
    let mut net = GuestNetwork {
        mtu: mtu(nic.get("mtu")),
        ..GuestNetwork::default()
    };
    let subnets = match nic.get("subnets") {
        Some(Value::Sequence(s)) => s.as_slice(),
        _ => &[],
    };
    let subnet = subnets
        .iter()
        .find(|s| matches!(kind(s).as_str(), "static" | "dhcp" | "dhcp4"))
        .ok_or(NetworkConfigError::NoAddress)?;
    if kind(subnet) == "static" {
        let address = subnet.get("address").map(scalar).unwrap_or_default();
        let netmask = subnet.get("netmask").map(scalar);
        net.address = Some(cidr("address", &address, netmask.as_deref())?);
        net.gateway = subnet
            .get("gateway")
            .map(|g| ipv4("gateway", &scalar(g)))
            .transpose()?;
    }
    net.dns = ipv4_list("dns_nameservers", subnet.get("dns_nameservers"))?;
    net.search = strings(subnet.get("dns_search"));
    for e in entries.iter().filter(|e| kind(e) == "nameserver") {
        net.dns.extend(ipv4_list("address", e.get("address"))?);
        net.search.extend(strings(e.get("search")));
    }
    Ok(net)
}

#[cfg(test)]
mod tests;
