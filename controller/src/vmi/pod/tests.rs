//! The launcher pod as rendered for each kind of VMI.

use super::*;

fn images() -> Images {
    Images {
        launcher: "kiln.local/kiln-launcher:0.1.0".into(),
        launcher_pull_policy: "IfNotPresent".into(),
        importer: "kiln.local/kiln-importer:0.1.0".into(),
        importer_pull_policy: "IfNotPresent".into(),
        insecure_registries: vec![],
        image_registry: "reg.local:5000".into(),
    }
}

fn vmi(spec: serde_json::Value) -> VirtualMachineInstance {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "web", "namespace": "demo", "uid": "3f2a9c1e-0000-4000-8000-000000000001",
                     "labels": {"app": "web"}, "annotations": {"team": "a", "kiln.dev/paused": "true"}},
        "spec": spec,
    }))
    .unwrap()
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn pod_security(pod: &Pod) -> &PodSecurityContext {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .expect("the pod's security context")
}

#[test]
fn diskless_vmi_boots_kiln_kernel_and_initramfs_without_init_containers() {
    let v = vmi(serde_json::json!({"domain": {"memory": {"guest": "128Mi"},
                                      "devices": {"rng": {}, "autoattachPodInterface": false}},
                                   "terminationGracePeriodSeconds": 5}));
    let r = render(&v, &HashMap::new(), &images()).unwrap();
    assert_eq!(r.launch.kernel, DEFAULT_KERNEL);
    assert_eq!(r.launch.initrd.as_deref(), Some(DEFAULT_INITRD));
    assert!(r.launch.cmdline.contains("kiln.action=hold"));
    assert!(r.launch.entropy);
    assert_eq!(
        (
            r.launch.vcpus,
            r.launch.memory_mib,
            r.launch.grace_period_seconds
        ),
        (1, 128, 5)
    );
    let pod = &r.pod;
    assert_eq!(
        pod.metadata.name.as_deref(),
        Some("kiln-launcher-web-3f2a9")
    );
    let spec = pod.spec.as_ref().unwrap();
    assert!(spec.init_containers.is_none());
    assert_eq!(
        spec.termination_grace_period_seconds,
        Some(5 + GRACE_PADDING_SECONDS)
    );
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app"], "web");
    assert_eq!(
        labels[CREATED_BY_LABEL],
        "3f2a9c1e-0000-4000-8000-000000000001"
    );
    let ann = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["team"], "a");
    assert!(
        !ann.contains_key("kiln.dev/paused"),
        "Kiln's own annotations stay on the VMI"
    );
    let compute = container(pod, COMPUTE_CONTAINER);
    let res = compute.resources.as_ref().unwrap();
    let req = res.requests.as_ref().unwrap();
    assert_eq!(req["cpu"].0, "100m");
    assert_eq!(req[KVM_RESOURCE].0, "1");
    assert_eq!(res.limits.as_ref().unwrap()[KVM_RESOURCE].0, "1");
    assert_eq!(
        req["memory"].0,
        format!("{}Mi", 128 + machine::OVERHEAD_BASE_MIB + 2)
    );
    assert_eq!(compute.stdin, Some(true));
    let sc = compute.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let psc = pod_security(pod);
    assert_eq!(
        psc.run_as_user,
        Some(107),
        "the launcher runs as KubeVirt's qemu user"
    );
    assert_eq!(psc.sysctls, None, "no network, no DHCP port");
}

#[test]
fn container_disk_pvc_empty_disk_and_seed_become_disks_in_guest_order() {
    let v = vmi(serde_json::json!({
        "domain": {"resources": {"requests": {"memory": "256Mi"}},
                   "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}, "serial": "rootdisk"},
                                         {"name": "data"}, {"name": "blk", "disk": {"readonly": true}}]}},
        "volumes": [
            {"name": "root", "containerDisk": {"image": "kiln.local/containerdisks/kiln-guest:latest",
                                               "imagePullSecret": "regcred"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-pvc"}},
            {"name": "blk", "persistentVolumeClaim": {"claimName": "raw"}},
            {"name": "scratch", "emptyDisk": {"capacity": "2Gi"}},
            {"name": "seed", "cloudInitNoCloud": {"secretRef": {"name": "ud"}, "networkData": "version: 2"}},
        ]
    }));
    let claims = HashMap::from([
        (
            "data-pvc".to_string(),
            ClaimInfo {
                block: false,
                size_bytes: 1 << 30,
            },
        ),
        (
            "raw".to_string(),
            ClaimInfo {
                block: true,
                size_bytes: 1 << 30,
            },
        ),
    ]);
    let r = render(&v, &claims, &images()).unwrap();
    let ids: Vec<_> = r.launch.disks.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["rootdisk", "data", "blk", "scratch", "seed"]);
    assert!(r.launch.disks[0].root, "Kiln's kernel boots the first disk");
    assert_eq!(r.launch.initrd, None);
    assert!(r.launch.cmdline.contains("kiln.action=shell"));
    assert_eq!(
        r.launch.disks[1].image,
        DiskImage::Sparse {
            path: format!("{VOLUMES_DIR}/data/disk.img"),
            // 5.5% kept free, rounded down to MiB
            size_bytes: 967 << 20,
        }
    );
    assert_eq!(
        r.launch.disks[2].image,
        DiskImage::Device {
            path: format!("{DEVICES_DIR}/blk")
        }
    );
    assert!(r.launch.disks[2].read_only);
    assert_eq!(
        r.launch.disks[3].image,
        DiskImage::Sparse {
            path: format!("{DISKS_DIR}/scratch.img"),
            size_bytes: 2 << 30
        }
    );
    match &r.launch.disks[4].image {
        DiskImage::NoCloud {
            meta_data,
            user_data,
            network_config,
            ..
        } => {
            assert_eq!(
                meta_data,
                "instance-id: 3f2a9c1e-0000-4000-8000-000000000001\nlocal-hostname: web\n"
            );
            assert_eq!(
                user_data,
                &Some(CloudData::Secret {
                    dir: format!("{SECRETS_DIR}/seed-userdata"),
                    keys: vec!["userdata".into(), "userData".into()]
                })
            );
            assert_eq!(
                network_config,
                &Some(CloudData::Inline {
                    text: "version: 2".into()
                })
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(r.launch.disks[4].read_only);
    let pod = &r.pod;
    let spec = pod.spec.as_ref().unwrap();
    let inits: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, ["kiln-network", "kiln-tools", "volumeroot"]);
    let copy = container(pod, "volumeroot");
    assert_eq!(
        copy.image.as_deref(),
        Some("kiln.local/containerdisks/kiln-guest:latest")
    );
    assert_eq!(
        copy.image_pull_policy.as_deref(),
        Some("Always"),
        ":latest pulls always"
    );
    assert_eq!(
        copy.command.as_ref().unwrap(),
        &vec![
            format!("{TOOLS_DIR}/kiln-disk-copy"),
            "/disk".into(),
            format!("{DISKS_DIR}/root.img")
        ]
    );
    assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    let compute = container(pod, COMPUTE_CONTAINER);
    assert_eq!(
        compute.volume_devices.as_ref().unwrap()[0].device_path,
        format!("{DEVICES_DIR}/blk")
    );
    let mounts: Vec<_> = compute
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(
        mounts.contains(&format!("{VOLUMES_DIR}/data").as_str()),
        "{mounts:?}"
    );
    assert!(
        mounts.contains(&format!("{SECRETS_DIR}/seed-userdata").as_str()),
        "{mounts:?}"
    );
    let missing = render(&v, &HashMap::new(), &images()).err();
    assert_eq!(
        missing,
        Some(RenderError::UnknownClaim("data".into(), "data-pvc".into()))
    );
}

#[test]
fn kernel_boot_copies_kernel_and_initrd_and_keeps_the_users_command_line() {
    let v = vmi(serde_json::json!({
        "domain": {"memory": {"guest": "16Mi"}, "cpu": {"cores": 2},
                   "firmware": {"kernelBoot": {"kernelArgs": "kiln.action=hold",
                       "container": {"image": "kiln.local/kiln-guest-kernel:v1", "kernelPath": "/boot/kiln-tiny",
                                     "initrdPath": "/boot/initramfs.cpio"}}}},
        "nodeSelector": {"kubernetes.io/hostname": "n1"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "priorityClassName": "high",
    }));
    let r = render(&v, &HashMap::new(), &images()).unwrap();
    assert_eq!(r.launch.kernel, format!("{DISKS_DIR}/kernel"));
    assert_eq!(
        r.launch.initrd.as_deref(),
        Some(format!("{DISKS_DIR}/initrd").as_str())
    );
    assert_eq!(r.launch.cmdline, "console=ttyS0 kiln.action=hold");
    let kb = container(&r.pod, "kernel-boot");
    assert_eq!(kb.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(kb.command.as_ref().unwrap().len(), 5);
    let spec = r.pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_selector.as_ref().unwrap()["kubernetes.io/hostname"],
        "n1"
    );
    assert_eq!(spec.tolerations.as_ref().unwrap().len(), 1);
    assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
    let req = container(&r.pod, COMPUTE_CONTAINER)
        .resources
        .as_ref()
        .unwrap()
        .requests
        .clone()
        .unwrap();
    assert_eq!(req["cpu"].0, "200m");
}

#[test]
fn a_vmi_without_networks_gets_a_masquerade_nic_and_the_network_init_container() {
    let v = vmi(serde_json::json!({"domain": {"memory": {"guest": "128Mi"}}}));
    let r = render(&v, &HashMap::new(), &images()).unwrap();
    let net = r.launch.network.as_ref().expect("the default pod network");
    assert_eq!(net.name, "default");
    assert_eq!(net.binding, NetworkBinding::Masquerade);
    assert_eq!(net.vm_network_cidr, "10.0.2.0/24");
    assert_eq!(net.mac, "02:3f:2a:9c:1e:00");
    assert_eq!(net.hostname, "web");
    assert!(net.ports.is_empty());
    let setup = container(&r.pod, "kiln-network");
    assert_eq!(
        setup.command.as_ref().unwrap(),
        &["/usr/bin/kiln-launcher", "--setup-network"]
    );
    let caps = setup
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let compute = container(&r.pod, COMPUTE_CONTAINER);
    let caps = compute
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(caps.add, None, "the compute container holds no capability");
    assert_eq!(
        setup.security_context.as_ref().unwrap().run_as_user,
        Some(0),
        "only the network setup runs as root"
    );
    let psc = pod_security(&r.pod);
    assert_eq!(
        (
            psc.run_as_user,
            psc.run_as_group,
            psc.fs_group,
            psc.run_as_non_root
        ),
        (Some(107), Some(107), Some(107), Some(true))
    );
    let sysctls = psc.sysctls.as_ref().unwrap();
    assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
    assert_eq!(sysctls[0].value, "67", "the DHCP server's port");
    for c in [setup, compute] {
        let res = c.resources.as_ref().unwrap();
        assert_eq!(
            res.limits.as_ref().unwrap().get(TUN_RESOURCE),
            Some(&Quantity("1".into())),
            "{}",
            c.name
        );
    }
}

#[test]
fn ports_macs_cidrs_and_probes_reach_the_launch_description() {
    let v = vmi(serde_json::json!({
        "domain": {"memory": {"guest": "128Mi"}, "devices": {"interfaces": [{
            "name": "pod", "masquerade": {}, "macAddress": "02:00:00:00:00:AA",
            "ports": [{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}]}]}},
        "networks": [{"name": "pod", "pod": {"vmNetworkCIDR": "192.168.9.0/24"}}],
        "readinessProbe": {"httpGet": {"port": "http", "path": "/ready",
                           "httpHeaders": [{"name": "X-A", "value": "b"}]}, "periodSeconds": 3},
        "livenessProbe": {"tcpSocket": {"port": 22}, "failureThreshold": 5}
    }));
    let r = render(&v, &HashMap::new(), &images()).unwrap();
    let net = r.launch.network.unwrap();
    assert_eq!(net.mac, "02:00:00:00:00:aa");
    assert_eq!(net.vm_network_cidr, "192.168.9.0/24");
    assert_eq!(
        net.ports,
        vec![
            LaunchPort {
                port: 80,
                protocol: "TCP".into()
            },
            LaunchPort {
                port: 53,
                protocol: "UDP".into()
            }
        ]
    );
    let ready = r.launch.readiness_probe.unwrap();
    assert_eq!(
        ready.check,
        ProbeCheck::Http {
            port: 80,
            path: "/ready".into(),
            headers: vec![("X-A".into(), "b".into())]
        }
    );
    assert_eq!(
        (
            ready.period_seconds,
            ready.failure_threshold,
            ready.timeout_seconds
        ),
        (3, 3, 1)
    );
    let live = r.launch.liveness_probe.unwrap();
    assert_eq!(live.check, ProbeCheck::Tcp { port: 22 });
    assert_eq!((live.period_seconds, live.failure_threshold), (10, 5));
    let ports = container(&r.pod, COMPUTE_CONTAINER).ports.clone().unwrap();
    assert!(ports
        .iter()
        .any(|p| p.name.as_deref() == Some("http") && p.container_port == 80));
    assert!(ports
        .iter()
        .any(|p| p.container_port == 53 && p.protocol.as_deref() == Some("UDP")));
}

#[test]
fn a_probe_naming_an_unknown_port_is_a_render_error() {
    let v = vmi(serde_json::json!({
        "domain": {"memory": {"guest": "128Mi"}},
        "readinessProbe": {"tcpSocket": {"port": "ssh"}}
    }));
    let err = render(&v, &HashMap::new(), &images())
        .err()
        .expect("an error");
    assert!(err.to_string().contains("\"ssh\""), "{err}");
}

#[test]
fn a_bridged_nic_takes_the_pods_mac_and_hands_its_addresses_over_the_run_folder() {
    let v = vmi(serde_json::json!({
        "domain": {"memory": {"guest": "128Mi"}, "devices": {"interfaces": [{"name": "default", "bridge": {}}]}},
        "networks": [{"name": "default", "pod": {}}]
    }));
    let r = render(&v, &HashMap::new(), &images()).unwrap();
    let net = r.launch.network.unwrap();
    assert_eq!(net.binding, NetworkBinding::Bridge);
    assert_eq!(net.mac, "", "the launcher gives the guest the pod's MAC");
    let setup = container(&r.pod, "kiln-network");
    let run = setup
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "run")
        .expect("the run folder in the network init container");
    assert_eq!(run.mount_path, kiln_crd::launch::RUN_DIR);
    assert_ne!(run.read_only, Some(true));
    // A MAC the interface names is the guest's, bridge or not.
    let v = vmi(serde_json::json!({
        "domain": {"memory": {"guest": "128Mi"}, "devices": {"interfaces": [
            {"name": "default", "bridge": {}, "macAddress": "02:00:00:00:00:BB"}]}},
        "networks": [{"name": "default", "pod": {}}]
    }));
    let r = render(&v, &HashMap::new(), &images()).unwrap();
    assert_eq!(r.launch.network.unwrap().mac, "02:00:00:00:00:bb");
}
