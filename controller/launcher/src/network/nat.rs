//! The masquerade binding's NAT rules, as an nftables ruleset fed to `nft -f -`: traffic that
//! arrives at the pod IP goes to the guest (every port, or only the interface's `ports`), except
//! the launcher's own control port; the guest's traffic leaves with the pod IP as its source.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use kiln_crd::launch::{LaunchNetwork, POD_INTERFACE};
use kiln_crd::names::CONTROL_PORT;

use super::NetworkError;

/// The nft binary in the launcher image.
const NFT: &str = "/usr/sbin/nft";
/// Kiln's table in the pod's network namespace.
const TABLE: &str = "kiln";

/// The ruleset for a guest at `guest`.
pub fn ruleset(net: &LaunchNetwork, guest: Ipv4Addr) -> String {
    let mut forward = Vec::new();
    if net.ports.is_empty() {
        forward.push(format!(
            "    iifname \"{POD_INTERFACE}\" meta l4proto {{ tcp, udp, sctp }} dnat to {guest}"
        ));
    } else {
        for proto in ["TCP", "UDP"] {
            let ports: Vec<String> = net
                .ports
                .iter()
                .filter(|p| p.protocol == proto)
                .map(|p| p.port.to_string())
                .collect();
            if !ports.is_empty() {
                forward.push(format!(
                    "    iifname \"{POD_INTERFACE}\" {} dport {{ {} }} dnat to {guest}",
                    proto.to_lowercase(),
                    ports.join(", ")
                ));
            }
        }
    }
    format!(
        "table ip {TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{POD_INTERFACE}\" tcp dport {CONTROL_PORT} return
{}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{POD_INTERFACE}\" ip saddr {guest} masquerade
  }}
}}
",
        forward.join("\n")
    )
}

/// Installs `rules` atomically (nft applies a file as one transaction).
pub fn install(rules: &str) -> Result<(), NetworkError> {
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Nft(format!("starting {NFT}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| NetworkError::Nft(format!("writing the rules: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(NetworkError::Nft(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_crd::launch::{LaunchPort, NetworkBinding};

    fn net(ports: &[(u16, &str)]) -> LaunchNetwork {
        LaunchNetwork {
            name: "default".into(),
            binding: NetworkBinding::Masquerade,
            mac: "02:00:00:00:00:01".into(),
            vm_network_cidr: "10.0.2.0/24".into(),
            ports: ports
                .iter()
                .map(|(port, protocol)| LaunchPort {
                    port: *port,
                    protocol: protocol.to_string(),
                })
                .collect(),
            hostname: "vm".into(),
        }
    }

    #[test]
    fn every_port_but_the_control_port_goes_to_the_guest() {
        let r = ruleset(&net(&[]), Ipv4Addr::new(10, 0, 2, 2));
        assert!(
            r.contains(&format!("tcp dport {CONTROL_PORT} return")),
            "{r}"
        );
        assert!(
            r.contains("meta l4proto { tcp, udp, sctp } dnat to 10.0.2.2"),
            "{r}"
        );
        assert!(r.contains("ip saddr 10.0.2.2 masquerade"), "{r}");
        // The control port's exception comes before the catch-all.
        assert!(r.find("return").unwrap() < r.find("dnat").unwrap());
    }

    #[test]
    fn only_the_listed_ports_go_to_the_guest() {
        let r = ruleset(
            &net(&[(80, "TCP"), (443, "TCP"), (53, "UDP")]),
            Ipv4Addr::new(10, 0, 2, 2),
        );
        assert!(r.contains("tcp dport { 80, 443 } dnat to 10.0.2.2"), "{r}");
        assert!(r.contains("udp dport { 53 } dnat to 10.0.2.2"), "{r}");
        assert!(!r.contains("l4proto"), "{r}");
    }
}
