//! Guest networking in KubeVirt's `kubevirt.io/v1` names: `domain.devices.interfaces[]` (how
//! the guest's NIC is bound to the pod network), `networks[]` (the pod network) and the guest
//! probes `readinessProbe` / `livenessProbe`. What Kiln does not support is refused by name.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{HTTPGetAction, TCPSocketAction};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rules::{any_object, refuse, rule, rule_expr};
use crate::vmi::VirtualMachineInstanceSpec;

/// KubeVirt's default masquerade network: the guest is .2, its gateway .1.
pub const DEFAULT_VM_NETWORK_CIDR: &str = "10.0.2.0/24";
/// The interface and network a VMI gets when it names none (`autoattachPodInterface`).
pub const DEFAULT_NETWORK_NAME: &str = "default";

/// An empty binding object (`masquerade: {}`, `bridge: {}`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct Binding {}

/// One guest NIC (`domain.devices.interfaces[]`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule_expr(
        "!(has(self.masquerade) && has(self.bridge))",
        "'interface ' + self.name + ': give one binding, masquerade or bridge'"
    ),
    validation = rule_expr(
        "!has(self.ports) || !has(self.bridge)",
        "'interface ' + self.name + ': ports are for the masquerade binding (a bridged guest holds the pod IP and gets every port)'"
    ),
    validation = rule_expr(
        "!has(self.model) || self.model == 'virtio'",
        "'interface ' + self.name + ': Kiln NICs are virtio, not ' + self.model"
    ),
    validation = refuse("sriov", "SR-IOV interfaces (interfaces[].sriov): use masquerade or bridge on the pod network"),
    validation = refuse("slirp", "slirp interfaces (interfaces[].slirp): use masquerade"),
    validation = refuse("macvtap", "macvtap interfaces (interfaces[].macvtap): use masquerade or bridge"),
    validation = refuse("passt", "passt interfaces (interfaces[].passt): use masquerade"),
    validation = refuse("binding", "network binding plugins (interfaces[].binding): use masquerade or bridge"),
    validation = refuse("vhostuser", "vhost-user interfaces (interfaces[].vhostuser)"),
    validation = refuse("pciAddress", "interfaces[].pciAddress: Kiln's machine has no PCI (its NICs are virtio-mmio)"),
    validation = refuse("dhcpOptions", "interfaces[].dhcpOptions: Kiln's DHCP server sends the pod's own settings"),
    validation = refuse("bootOrder", "interfaces[].bootOrder: Kiln does not boot from the network"),
    validation = refuse("acpiIndex", "interfaces[].acpiIndex: Kiln's machine has no ACPI"),
    validation = refuse("tag", "interfaces[].tag (device role tagging)"),
    validation = rule(
        "!has(self.state) || self.state == 'up'",
        "interfaces[].state: Kiln's interfaces are always up"
    ),
)]
pub struct Interface {
    /// The network (in `networks[]`) this NIC is on.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The guest gets a private address (`vmNetworkCIDR`) behind NAT to the pod IP (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<Binding>,
    /// The guest takes over the pod's IP and MAC through DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Binding>,
    /// With masquerade: only these ports reach the guest (all when not given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$"))]
    pub mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub sriov: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub slirp: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub macvtap: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub passt: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub binding: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub vhostuser: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub dhcp_options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub tag: Option<Value>,
}

impl Interface {
    pub fn is_bridge(&self) -> bool {
        self.bridge.is_some()
    }
}

/// A port's protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

/// A port forwarded to a masqueraded guest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub name: Option<String>,
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// TCP (default) or UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

impl Port {
    pub fn protocol(&self) -> &str {
        match self.protocol {
            Some(Protocol::Udp) => "UDP",
            _ => "TCP",
        }
    }
}

/// One network a VMI's interfaces attach to (`networks[]`): only the pod network.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule_expr(
        "has(self.pod)",
        "'network ' + self.name + ': Kiln VMs attach to the pod network only (pod: {})'"
    ),
    validation = refuse("multus", "Multus secondary networks (networks[].multus): Kiln VMs have the pod network"),
)]
pub struct Network {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub multus: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "!has(self.vmNetworkCIDR) || (self.vmNetworkCIDR.matches('^([0-9]{1,3}[.]){3}[0-9]{1,3}/([0-9]|[12][0-9]|30)$') && isCIDR(self.vmNetworkCIDR))",
        "pod.vmNetworkCIDR is an IPv4 network a.b.c.d/n with n at most 30 (the guest takes its second address, the gateway its first)"
    ),
    validation = refuse("vmIPv6NetworkCIDR", "pod.vmIPv6NetworkCIDR: Kiln's pod network is IPv4"),
)]
pub struct PodNetwork {
    /// The masqueraded guest's network (default 10.0.2.0/24).
    #[serde(
        default,
        rename = "vmNetworkCIDR",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 18))]
    pub vm_network_cidr: Option<String>,
    #[serde(
        default,
        rename = "vmIPv6NetworkCIDR",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_ipv6_network_cidr: Option<String>,
}

/// The masqueraded guest's addresses in `cidr` ("a.b.c.d/n"): (gateway, guest, prefix length).
pub fn masquerade_addresses(cidr: &str) -> Option<(Ipv4Addr, Ipv4Addr, u8)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 30)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let net = u32::from(addr) & mask;
    Some((Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2), len))
}

/// KubeVirt's VMI probe: kubelet-style checks of the guest itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "[has(self.tcpSocket), has(self.httpGet), has(self.exec), has(self.guestAgentPing)].filter(x, x).size() == 1",
        "a probe checks one thing: give tcpSocket or httpGet"
    ),
    validation = refuse("exec", "exec probes (they need a guest agent): use tcpSocket or httpGet"),
    validation = refuse("guestAgentPing", "guestAgentPing probes (Kiln has no guest agent): use tcpSocket or httpGet"),
    validation = rule(
        "!has(self.tcpSocket) || !has(self.tcpSocket.host)",
        "tcpSocket.host: a probe checks the VM itself; remove host"
    ),
    validation = rule(
        "!has(self.httpGet) || !has(self.httpGet.host)",
        "httpGet.host: a probe checks the VM itself; remove host"
    ),
    validation = rule(
        "!has(self.httpGet) || !has(self.httpGet.scheme) || self.httpGet.scheme == 'HTTP'",
        "httpGet.scheme: Kiln's probes speak HTTP; use HTTP or a tcpSocket probe"
    ),
)]
pub struct GuestProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TCPSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HTTPGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub exec: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub guest_agent_ping: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub initial_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub period_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub success_threshold: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failure_threshold: Option<i32>,
}

/// The guest's NIC on the pod network, as a VMI spec asks for it (with defaults applied).
#[derive(Clone, Debug, PartialEq)]
pub struct PodInterface {
    pub name: String,
    pub bridge: bool,
    pub mac_address: Option<String>,
    pub vm_network_cidr: String,
    pub ports: Vec<Port>,
}

/// The VMI's pod-network interface: the one it names, else KubeVirt's default (one masquerade
/// interface "default") unless `autoattachPodInterface` is false.
pub fn pod_interface(spec: &VirtualMachineInstanceSpec) -> Option<PodInterface> {
    let devices = &spec.domain.devices;
    let Some(iface) = devices.interfaces.first() else {
        if devices.autoattach_pod_interface == Some(false) {
            return None;
        }
        return Some(PodInterface {
            name: DEFAULT_NETWORK_NAME.into(),
            bridge: false,
            mac_address: None,
            vm_network_cidr: DEFAULT_VM_NETWORK_CIDR.into(),
            ports: Vec::new(),
        });
    };
    let cidr = spec
        .networks
        .iter()
        .find(|n| n.name == iface.name)
        .and_then(|n| n.pod.as_ref())
        .and_then(|p| p.vm_network_cidr.clone())
        .unwrap_or_else(|| DEFAULT_VM_NETWORK_CIDR.into());
    Some(PodInterface {
        name: iface.name.clone(),
        bridge: iface.is_bridge(),
        mac_address: iface
            .mac_address
            .as_ref()
            .map(|m| m.replace('-', ":").to_lowercase()),
        vm_network_cidr: cidr,
        ports: iface.ports.clone(),
    })
}

/// A locally administered unicast MAC derived from the VMI's UID (stable for the VMI).
pub fn mac_for(uid: &str) -> String {
    let hex: Vec<u8> = uid.bytes().filter(u8::is_ascii_hexdigit).take(10).collect();
    let mut mac = String::from("02");
    for pair in hex.chunks(2) {
        mac.push(':');
        mac.push_str(&String::from_utf8_lossy(pair).to_lowercase());
    }
    while mac.len() < 17 {
        mac.push_str(":00");
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_addresses_are_the_first_two_of_the_network() {
        assert_eq!(
            masquerade_addresses("10.0.2.0/24"),
            Some((Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 2), 24))
        );
        assert_eq!(
            masquerade_addresses("192.168.7.77/28"),
            Some((
                Ipv4Addr::new(192, 168, 7, 65),
                Ipv4Addr::new(192, 168, 7, 66),
                28
            ))
        );
        assert_eq!(masquerade_addresses("10.0.2.0/31"), None);
        assert_eq!(masquerade_addresses("10.0.2/24"), None);
        assert_eq!(masquerade_addresses("10.0.2.0"), None);
    }

    #[test]
    fn macs_are_local_unicast_and_stable() {
        let uid = "3f2a9c1e-0b7d-4c55-9e0a-1234567890ab";
        assert_eq!(mac_for(uid), "02:3f:2a:9c:1e:0b");
        assert_eq!(mac_for(""), "02:00:00:00:00:00");
    }

    #[test]
    fn a_vmi_without_networks_gets_one_masquerade_interface() {
        let mut spec = VirtualMachineInstanceSpec::default();
        let got = pod_interface(&spec).unwrap();
        assert_eq!(got.name, "default");
        assert!(!got.bridge);
        assert_eq!(got.vm_network_cidr, DEFAULT_VM_NETWORK_CIDR);
        spec.domain.devices.autoattach_pod_interface = Some(false);
        assert_eq!(pod_interface(&spec), None);
    }

    #[test]
    fn the_named_interface_and_its_network_are_used() {
        let spec: VirtualMachineInstanceSpec = serde_json::from_value(serde_json::json!({
            "domain": {"devices": {"interfaces": [{
                "name": "pod", "masquerade": {}, "macAddress": "DE-AD-00-00-BE-EF",
                "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}]}},
            "networks": [{"name": "pod", "pod": {"vmNetworkCIDR": "10.9.0.0/16"}}]
        }))
        .unwrap();
        let got = pod_interface(&spec).unwrap();
        assert_eq!(got.name, "pod");
        assert_eq!(got.mac_address.as_deref(), Some("de:ad:00:00:be:ef"));
        assert_eq!(got.vm_network_cidr, "10.9.0.0/16");
        assert_eq!(got.ports.len(), 2);
        assert_eq!(got.ports[1].protocol(), "UDP");
    }
}
