//! What admission refuses (each bad spec with its message), and who can reach a VM: another pod
//! reaches the launcher's port but not without the VMI's token, the launcher's service account
//! can do nothing, and the pod runs without privileges.

use std::time::Duration;

use kiln_tests::kube::Cluster;

use super::{busybox, tiny_vm, TINY};

const BASE: &str = r#"apiVersion: kiln.dev/v1alpha1
kind: VirtualMachine
metadata: {name: bad}
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices:
          disks:
          - {name: root, disk: {bus: virtio}}
        memory: {guest: 128Mi}
      volumes:
      - {name: root, containerDisk: {image: kiln.local/containerdisks/kiln-guest:latest}}
"#;

/// Each invalid spec is refused by `kubectl apply` with a message that says what to fix.
pub fn refused_specs(c: &Cluster) {
    let ns = c.namespace("refused");
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "bus",
            "bus: virtio",
            "bus: sata",
            "Kiln supports only bus virtio, not sata",
        ),
        (
            "no volume",
            "- {name: root, disk: {bus: virtio}}",
            "- {name: data, disk: {bus: virtio}}",
            "a disk names no volume",
        ),
        (
            "memory",
            "guest: 128Mi",
            "guest: 4Mi",
            "domain.memory.guest is at least 8Mi",
        ),
        (
            "no memory",
            "        memory: {guest: 128Mi}\n",
            "",
            "no memory for the guest: set domain.memory.guest or domain.resources.requests.memory",
        ),
        (
            "duplicate volume",
            "      - {name: root, containerDisk",
            "      - {name: root, emptyDisk: {capacity: 1Gi}}\n      - {name: root, containerDisk",
            "two volumes have the same name",
        ),
        (
            "two sources",
            "{name: root, containerDisk: {image: kiln.local/containerdisks/kiln-guest:latest}}",
            "{name: root, emptyDisk: {capacity: 1Gi}, containerDisk: {image: x}}",
            "give exactly one source",
        ),
        (
            "gpu",
            "        devices:\n",
            "        devices:\n          gpus: [{name: gpu1, deviceName: nvidia.com/GP102GL}]\n",
            "Kiln does not support GPUs (domain.devices.gpus)",
        ),
        (
            "interface without network",
            "        devices:\n",
            "        devices:\n          interfaces: [{name: default, masquerade: {}}]\n",
            "an interface names no network",
        ),
        (
            "sriov",
            "        devices:\n",
            "        devices:\n          interfaces: [{name: default, sriov: {}}]\n",
            "Kiln does not support SR-IOV interfaces",
        ),
        (
            "bridge with ports",
            "        devices:\n",
            "        devices:\n          interfaces: [{name: default, bridge: {}, ports: [{port: 80}]}]\n",
            "ports are for the masquerade binding",
        ),
        (
            "multus",
            "      volumes:\n",
            "      networks: [{name: default, multus: {networkName: net1}}]\n      volumes:\n",
            "Kiln does not support Multus secondary networks",
        ),
        (
            "vmNetworkCIDR",
            "      volumes:\n",
            "      networks: [{name: default, pod: {vmNetworkCIDR: 10.0.2.0/31}}]\n      volumes:\n",
            "pod.vmNetworkCIDR is an IPv4 network",
        ),
        (
            "port",
            "        devices:\n",
            "        devices:\n          interfaces: [{name: default, masquerade: {}, ports: [{port: 70000}]}]\n",
            "spec.template.spec.domain.devices.interfaces[0].ports[0].port",
        ),
        (
            "machine",
            "        memory: {guest: 128Mi}\n",
            "        memory: {guest: 128Mi}\n        machine: {type: q35}\n",
            "Kiln does not support machine type q35",
        ),
        (
            "bootloader",
            "        memory: {guest: 128Mi}\n",
            "        memory: {guest: 128Mi}\n        firmware: {bootloader: {efi: {}}}\n",
            "Kiln does not support domain.firmware.bootloader",
        ),
        (
            "features",
            "        memory: {guest: 128Mi}\n",
            "        memory: {guest: 128Mi}\n        features: {acpi: {}}\n",
            "Kiln does not support domain.features",
        ),
        (
            "vcpus",
            "        memory: {guest: 128Mi}\n",
            "        memory: {guest: 128Mi}\n        cpu: {cores: 8, sockets: 8}\n",
            "at most 32 vCPUs",
        ),
        (
            "dataVolume",
            "{name: root, containerDisk: {image: kiln.local/containerdisks/kiln-guest:latest}}",
            "{name: root, dataVolume: {name: dv, hotpluggable: true}}",
            "Kiln does not support hotplugged volumes (dataVolume.hotpluggable)",
        ),
        (
            "run strategy",
            "runStrategy: Halted",
            "runStrategy: WaitAsReceiver",
            "Unsupported value: \"WaitAsReceiver\"",
        ),
        (
            "running and runStrategy",
            "runStrategy: Halted",
            "runStrategy: Halted\n  running: true",
            "give runStrategy or the deprecated running, not both",
        ),
        (
            "unknown field",
            "        memory: {guest: 128Mi}\n",
            "        memory: {guest: 128Mi}\n        flavour: large\n",
            "unknown field \"spec.template.spec.domain.flavour\"",
        ),
        (
            "lun",
            "- {name: root, disk: {bus: virtio}}",
            "- {name: root, lun: {}}",
            "disk root: Kiln attaches volumes as disks only",
        ),
        (
            "exec probe",
            "      volumes:\n",
            "      readinessProbe: {exec: {command: [/bin/true]}}\n      volumes:\n",
            "Kiln does not support exec probes",
        ),
    ];
    let good = c.run(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some(BASE),
    );
    assert!(
        good.status.success(),
        "the base spec is valid: {}",
        String::from_utf8_lossy(&good.stderr)
    );
    for (what, from, to, message) in cases {
        assert!(BASE.contains(from), "{what}: the base has no {from:?}");
        let bad = BASE.replacen(from, to, 1);
        let out = c.run(
            &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
            Some(&bad),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted:\n{bad}");
        assert!(err.contains(message), "{what}: want {message:?} in:\n{err}");
    }
    // A VMI's spec cannot change once it exists (its VM's template can).
    let vmi = r#"apiVersion: kiln.dev/v1alpha1
kind: VirtualMachineInstance
metadata: {name: fixed}
spec:
  nodeSelector: {kiln.dev/no-such-node: "true"}
  domain: {memory: {guest: 16Mi}}
"#;
    c.apply(&ns, vmi);
    let out = c.run(
        &[
            "patch",
            "-n",
            &ns,
            "vmi/fixed",
            "--type=merge",
            "-p",
            r#"{"spec":{"terminationGracePeriodSeconds":1}}"#,
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a VirtualMachineInstance's spec cannot change"),
        "{err}"
    );
    // It waits to be scheduled, and says why.
    c.wait_field(&ns, "vmi/fixed", "{.status.phase}", "Scheduling", TINY);
    c.wait_field(
        &ns,
        "vmi/fixed",
        "{.status.conditions[?(@.type=='PodScheduled')].reason}",
        "Unschedulable",
        TINY,
    );
    c.kubectl(&["delete", "-n", &ns, "vmi/fixed", "--timeout=60s"]);
}

/// A pod running `script` in busybox; returns its log once it has ended.
pub fn only_the_controller_reaches_a_launcher(c: &Cluster) {
    let ns = c.namespace("security");
    c.apply(&ns, &tiny_vm("guarded", "Always", "kiln.action=hold"));
    c.wait_field(
        &ns,
        "vm/guarded",
        "{.status.printableStatus}",
        "Running",
        TINY,
    );
    let pod = c.launcher_pod(&ns, "guarded");
    let ip = c.field(&ns, &format!("pod/{pod}"), "{.status.podIP}");
    let request = |method: &str, path: &str, auth: &str| {
        format!("echo '== {method} {path}'; printf '{method} {path} HTTP/1.1\\r\\nHost: x\\r\\n{auth}Content-Length: 0\\r\\nConnection: close\\r\\n\\r\\n' | nc -w 10 {ip} 4145; echo")
    };
    let wrong = "Authorization: Bearer 0000000000000000000000000000000000000000000000000000000000000000\\r\\n";
    let script = [
        request("GET", "/v1/state", ""),
        request("PUT", "/v1/pause", ""),
        request("PUT", "/v1/pause", wrong),
        request("GET", "/readyz", ""),
    ]
    .join("; ");
    let answers = busybox(c, &ns, "intruder", &script);
    let sections: Vec<&str> = answers.split("== ").skip(1).collect();
    assert_eq!(sections.len(), 4, "{answers}");
    for s in &sections[..3] {
        assert!(s.contains("HTTP/1.1 401"), "without the VMI's token: {s}");
    }
    assert!(
        sections[3].contains("HTTP/1.1 200"),
        "the readiness probe needs no token: {answers}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.field(&ns, "vm/guarded", "{.status.printableStatus}"),
        "Running",
        "not paused"
    );

    // The launcher's service account may do nothing, and its token is not even mounted.
    for (verb, resource) in [
        ("create", "pods"),
        ("get", "secrets"),
        ("patch", "virtualmachineinstances.kiln.dev"),
        ("list", "pods"),
    ] {
        let out = c.run(
            &[
                "auth",
                "can-i",
                verb,
                resource,
                "-n",
                &ns,
                &format!("--as=system:serviceaccount:{ns}:kiln-launcher"),
            ],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "kiln-launcher may {verb} {resource}"
        );
    }
    let spec = c.get(&ns, &format!("pod/{pod}")).expect("the launcher pod");
    let s = &spec["spec"];
    assert_eq!(s["serviceAccountName"], "kiln-launcher");
    assert_eq!(s["automountServiceAccountToken"], false);
    let compute = s["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "compute")
        .unwrap();
    let mounts = compute["volumeMounts"].to_string();
    assert!(!mounts.contains("serviceaccount"), "{mounts}");
    assert_eq!(
        compute["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(compute["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(compute["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        compute["ports"].as_array().map(Vec::len),
        Some(1),
        "only the control port"
    );
    assert_eq!(compute["resources"]["limits"]["devices.kiln.dev/kvm"], "1");
    // The default pod network: the launcher holds no capability (its DHCP server's port 67 is
    // unprivileged in the pod's namespace); NET_ADMIN is the network init container's, the one
    // that runs as root, and it has ended before the guest starts.
    assert_eq!(
        compute["securityContext"]["capabilities"]["add"],
        serde_json::Value::Null
    );
    let psc = &s["securityContext"];
    assert_eq!(psc["runAsUser"], 107, "{psc}");
    assert_eq!(psc["runAsNonRoot"], true, "{psc}");
    assert_eq!(psc["fsGroup"], 107, "{psc}");
    assert_eq!(compute["resources"]["limits"]["devices.kiln.dev/tun"], "1");
    let setup = s["initContainers"]
        .as_array()
        .and_then(|i| i.iter().find(|c| c["name"] == "kiln-network"))
        .expect("the network init container");
    assert_eq!(
        setup["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN"])
    );
    assert_eq!(setup["securityContext"]["capabilities"]["drop"][0], "ALL");

    // The processes themselves run as 107: kiln-vmm under its seccomp filters with no_new_privs
    // and no capability; the launcher with no capability either, and it cannot gain any.
    let processes = c.pod_processes(&ns, &pod);
    let field = |status: &str, name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let vmm = processes
        .iter()
        .find(|(comm, _)| comm == "kiln-vmm")
        .unwrap_or_else(|| panic!("no kiln-vmm process in pod {pod}: {processes:?}"));
    assert_eq!(field(&vmm.1, "Seccomp:"), "2", "kiln-vmm:\n{}", vmm.1);
    assert_eq!(field(&vmm.1, "NoNewPrivs:"), "1", "kiln-vmm:\n{}", vmm.1);
    for set in ["CapEff:", "CapPrm:", "CapAmb:"] {
        assert_eq!(
            field(&vmm.1, set),
            "0000000000000000",
            "kiln-vmm {set}\n{}",
            vmm.1
        );
    }
    let launcher = processes
        .iter()
        .find(|(comm, _)| comm == "kiln-launcher")
        .unwrap_or_else(|| panic!("no kiln-launcher process in pod {pod}: {processes:?}"));
    assert_eq!(field(&launcher.1, "NoNewPrivs:"), "1", "{}", launcher.1);
    assert_eq!(
        field(&launcher.1, "CapEff:"),
        "0000000000000000",
        "{}",
        launcher.1
    );
    for (comm, status) in [vmm, launcher] {
        // Uid: real, effective, saved, filesystem.
        assert_eq!(
            field(status, "Uid:"),
            "107\t107\t107\t107",
            "{comm}:\n{status}"
        );
        assert_eq!(
            field(status, "Gid:"),
            "107\t107\t107\t107",
            "{comm}:\n{status}"
        );
    }

    // The controller's metrics, from the leading replica.
    let leader = c.field(
        "kiln-system",
        "lease/kiln-controller",
        "{.spec.holderIdentity}",
    );
    let leader_ip = c.field("kiln-system", &format!("pod/{leader}"), "{.status.podIP}");
    let metrics = busybox(c, &ns, "scraper", &format!("wget -q -O- http://{leader_ip}:8080/metrics; wget -q -O- http://{leader_ip}:8080/healthz"));
    for needle in [
        "kiln_controller_reconciles_total{controller=\"vmi\"}",
        "kiln_controller_reconcile_duration_seconds_bucket",
        "kiln_controller_vmis{phase=\"Running\"}",
        "kiln_controller_api_requests_total{verb=\"create\",resource=\"pods\"}",
        "kiln_controller_leader 1",
        "ok",
    ] {
        assert!(
            metrics.contains(needle),
            "no {needle} in the metrics:\n{metrics}"
        );
    }
    c.kubectl(&["delete", "-n", &ns, "vm/guarded", "--timeout=60s"]);
}
