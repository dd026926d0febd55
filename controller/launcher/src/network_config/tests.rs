//! network-config documents as KubeVirt's and cloud-init's examples write them.

use super::*;

#[test]
fn version2_static_as_in_kilns_example() {
    let net = parse(
        b"version: 2\nethernets:\n  eth0:\n    addresses: [10.0.2.2/24]\n    gateway4: 10.0.2.1\n    mtu: 1450\n    nameservers:\n      addresses: [10.96.0.10]\n      search: [default.svc.cluster.local, svc.cluster.local]\n",
    )
    .unwrap();
    assert_eq!(
        net.render(),
        "mode: static\naddress: 10.0.2.2\nnetmask: 255.255.255.0\ngateway: 10.0.2.1\nmtu: 1450\n\
         dns: 10.96.0.10\nsearch: default.svc.cluster.local svc.cluster.local\n"
    );
}

#[test]
fn version2_under_network_key_with_routes_and_another_nic_name() {
    let net = parse(
        b"network:\n  version: 2\n  ethernets:\n    id0:\n      match: {macaddress: '02:00:00:00:00:01'}\n      addresses: ['fd00::2/64', 192.168.7.9/16]\n      routes:\n        - {to: 10.1.0.0/16, via: 192.168.0.9}\n        - {to: default, via: 192.168.0.1}\n",
    )
    .unwrap();
    assert_eq!(net.address, Some(("192.168.7.9".parse().unwrap(), 16)));
    assert_eq!(net.gateway, Some("192.168.0.1".parse().unwrap()));
    assert_eq!(net.mtu, None);
}

#[test]
fn version2_dhcp_keeps_dhcp() {
    let net = parse(
        b"version: 2\nethernets: {eth0: {dhcp4: true, nameservers: {addresses: [1.1.1.1]}}}\n",
    )
    .unwrap();
    assert_eq!(net.render(), "mode: dhcp\ndns: 1.1.1.1\n");
}

#[test]
fn version1_static_with_netmask_and_nameserver_entries() {
    let net = parse(
        b"version: 1\nconfig:\n  - type: physical\n    name: eth0\n    mac_address: '02:00:00:00:00:01'\n    mtu: 1400\n    subnets:\n      - type: static\n        address: 10.0.2.5\n        netmask: 255.255.255.240\n        gateway: 10.0.2.1\n        dns_nameservers: [10.96.0.10]\n  - type: nameserver\n    address: [8.8.8.8]\n    search: [example.org]\n",
    )
    .unwrap();
    assert_eq!(
        net.render(),
        "mode: static\naddress: 10.0.2.5\nnetmask: 255.255.255.240\ngateway: 10.0.2.1\nmtu: 1400\n\
         dns: 10.96.0.10 8.8.8.8\nsearch: example.org\n"
    );
    let dhcp =
        parse(b"version: 1\nconfig: [{type: physical, name: eth0, subnets: [{type: dhcp}]}]\n")
            .unwrap();
    assert_eq!(dhcp.address, None);
}

#[test]
fn prefixes_render_as_masks() {
    for (prefix, mask) in [
        (0, "0.0.0.0"),
        (8, "255.0.0.0"),
        (30, "255.255.255.252"),
        (32, "255.255.255.255"),
    ] {
        let net = GuestNetwork {
            address: Some((Ipv4Addr::new(10, 0, 0, 1), prefix)),
            ..GuestNetwork::default()
        };
        assert!(
            net.render().contains(&format!("netmask: {mask}\n")),
            "/{prefix}"
        );
    }
}

#[test]
fn bad_documents_are_errors_that_name_the_field() {
    let err = |t: &str| parse(t.as_bytes()).unwrap_err().to_string();
    assert!(err("version: 2\nethernets: [").contains("not YAML"));
    assert!(err("version: 3\n").contains("version \"3\""));
    assert!(err("ethernets: {}\n").contains("version"));
    assert!(err("version: 2\n").contains("no NIC"));
    assert!(err("version: 2\nethernets: {eth0: {}}\n").contains("neither DHCP nor"));
    assert!(
        err("version: 2\nethernets: {eth0: {addresses: [10.0.2.300/24]}}\n")
            .contains("addresses: \"10.0.2.300/24\"")
    );
    assert!(err("version: 2\nethernets: {eth0: {addresses: [10.0.2.3/33]}}\n").contains("prefix"));
    assert!(
        err("version: 2\nethernets: {eth0: {addresses: [10.0.2.3/24], gateway4: x}}\n")
            .contains("gateway4")
    );
    assert!(err("version: 1\nconfig: [{type: physical, subnets: [{type: static, address: 10.0.0.2, netmask: 255.0.255.0}]}]\n").contains("netmask"));
    assert!(err("version: 1\nconfig: [{type: bond}]\n").contains("no NIC"));
    // Garbage of every kind is an error, never a panic.
    for junk in [
        "",
        "~",
        "[]",
        "42",
        "version: [1]",
        "network: 7",
        "\u{0}\u{1}",
    ] {
        let _ = parse(junk.as_bytes());
    }
}
