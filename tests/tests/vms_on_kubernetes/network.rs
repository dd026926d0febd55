//! VMs on the pod network (issue 12), with real traffic: a client pod reaches a guest through a
//! ClusterIP Service by its DNS name (and again after the VM is stopped and started: new pod,
//! new IP); guests resolve cluster names through CoreDNS and fetch from a pod's Service and from
//! each other's Service; `ports[]` lets only those ports through; a readiness probe keeps a VM
//! out of its Service until the guest serves; a failing liveness probe restarts a VM; a guest
//! flooding its DHCP server with malformed packets crashes nothing and disturbs no other VM; a
//! bridged guest holds the pod's IP and MAC, a pod reaches it on that IP, and it reaches a
//! Service by name.

use std::time::Duration;

use kiln_tests::kube::{linux_vm_with_user_data as linux_vm, Cluster};

use super::{busybox, tiny_vm, vmi_uid, wait_new_run, BOOT, TINY};

/// A pod behind Service `web` (port 80) for the guests to reach.
const WEB: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: httpd
    image: kiln.local/busybox:dev
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "mkdir -p /www && echo KILN_POD_PAGE > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// Service `alpha`, for the other guest to reach alpha by name.
const ALPHA_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: alpha}
spec:
  selector: {app: alpha}
  ports: [{port: 80}]
"#;

/// The guest serves its hostname on ports 80 and 81 (busybox httpd), then runs `then` in the
/// background. Few commands: every exec costs seconds in these guests.
fn user_data(before: &str, then: &str) -> String {
    format!(
        r#"#!/bin/sh
{before}
mkdir -p /www
read h < /proc/sys/kernel/hostname
read mtu < /sys/class/net/eth0/mtu
echo "KILN_PAGE $h" > /www/index.html
httpd -p 80 -h /www
httpd -p 81 -h /www
echo "SERVING $h mtu $mtu"
( {then} ) &
"#
    )
}

/// Retries `wget` of `url` until it answers; prints `MARK <page>`. (busybox's `wget -T`
/// crashes here; `timeout` bounds each try instead.) One wget costs these guests about 10 s of
/// CPU in the emulated kernel (fork, exec, DNS, TCP), so that a 10 s bound, with guests busy on
/// two cores, can kill every try: 60 s.
fn fetch(mark: &str, url: &str) -> String {
    format!(
        "for i in $(seq 1 100); do p=$(timeout 60 wget -q -O - {url}) && break; sleep 3; done; echo \"{mark} $p\""
    )
}

/// What follows `mark` on the last console line that has it (the shell's prompt can precede
/// a line that a background job prints).
fn console_value(console: &str, mark: &str) -> String {
    let mark = format!("{mark} ");
    console
        .lines()
        .rev()
        .find_map(|l| {
            l.find(&mark)
                .map(|at| l[at + mark.len()..].trim().to_string())
        })
        .unwrap_or_default()
}

fn pod_ip(c: &Cluster, ns: &str, vmi: &str) -> String {
    let pod = c.launcher_pod(ns, vmi);
    c.field(ns, &format!("pod/{pod}"), "{.status.podIP}")
}

fn endpoints(c: &Cluster, ns: &str, svc: &str) -> String {
    c.field(
        ns,
        &format!("endpoints/{svc}"),
        "{.subsets[*].addresses[*].ip}",
    )
}

pub fn pod_network(c: &Cluster) {
    let ns = c.namespace("network");
    // alpha and beta reach each other: two boot slots, held to the end.
    let _slots = c.boots.take(2);
    c.apply(&ns, WEB);
    c.apply(&ns, ALPHA_SERVICE);
    // alpha: no network section at all (the default masquerade interface), every port.
    let alpha_then = [
        "out=$(nslookup kubernetes.default.svc.cluster.local); echo \"DNS_KUBERNETES ${out##*Address: }\"".to_string(),
        format!("out=$(nslookup web.{ns}.svc.cluster.local); echo \"DNS_WEB ${{out##*Address: }}\""),
        fetch("FETCHED_WEB", "http://web/"),
        fetch("FETCHED_BETA", "http://beta:8000/"),
    ]
    .join("; ");
    c.apply(&ns, &linux_vm("alpha", "", "", &user_data("", &alpha_then)));
    // beta: only port 80 forwarded, ready once /ready exists; it floods its DHCP server first.
    let beta_devices = "          interfaces:\n          - {name: default, masquerade: {}, ports: [{name: http, port: 80}]}";
    // A generous timeout: busybox httpd forks per request, and a fork in a guest whose kernel
    // runs in the emulator, beside other booting guests, can take longer than the default 1 s.
    let beta_spec = "      networks: [{name: default, pod: {}}]\n      readinessProbe: {httpGet: {port: http, path: /ready}, periodSeconds: 2, timeoutSeconds: 10, failureThreshold: 1}";
    let flood = "kiln-dhcpflood eth0 10.0.2.1 10\nudhcpc -q -n -i eth0 -t 5 -T 2 -O mtu -O search >/dev/null 2>&1 && echo DHCP_AFTER_FLOOD_OK";
    c.apply(
        &ns,
        &linux_vm(
            "beta",
            beta_devices,
            beta_spec,
            &user_data(flood, &fetch("FETCHED_ALPHA", "http://alpha/")),
        ),
    );
    let exposed = c.kiln(
        &ns,
        &[
            "expose",
            "vm",
            "beta",
            "--port",
            "8000",
            "--target-port",
            "80",
        ],
        None,
    );
    let said = String::from_utf8_lossy(&exposed.stdout);
    assert!(
        said.contains("Service beta successfully exposed for vm beta"),
        "{said}{}",
        String::from_utf8_lossy(&exposed.stderr)
    );

    // alpha: the guest's own view, then a client pod through the Service by its DNS name.
    let console = c.wait_console(&ns, "alpha", "FETCHED_WEB", BOOT);
    assert!(
        console.contains("KILN_DHCP 10.0.2.2/24 router 10.0.2.1"),
        "{console}"
    );
    let kubernetes_ip = c.field("default", "svc/kubernetes", "{.spec.clusterIP}");
    let web_ip = c.field(&ns, "svc/web", "{.spec.clusterIP}");
    assert_eq!(
        console_value(&console, "DNS_KUBERNETES"),
        kubernetes_ip,
        "{console}"
    );
    assert_eq!(console_value(&console, "DNS_WEB"), web_ip, "{console}");
    assert_eq!(
        console_value(&console, "FETCHED_WEB"),
        "KILN_POD_PAGE",
        "{console}"
    );
    let alpha_ip = pod_ip(c, &ns, "alpha");
    assert_eq!(
        c.field(&ns, "vmi/alpha", "{.status.interfaces[0].ipAddress}"),
        alpha_ip,
        "the VMI reports the pod IP (masquerade)"
    );
    let client = |name: &str, script: &str| busybox(c, &ns, name, script);
    let first = client(
        "client-1",
        &format!(
            "read mtu < /sys/class/net/eth0/mtu; echo MTU $mtu; {}; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 30 {alpha_ip} 81",
            fetch("THROUGH_SERVICE", &format!("http://alpha.{ns}.svc.cluster.local/"))
        ),
    );
    assert!(first.contains("THROUGH_SERVICE KILN_PAGE alpha"), "{first}");
    assert!(
        first.contains("KILN_PAGE alpha"),
        "alpha serves every port: {first}"
    );
    let pod_mtu = console_value(&first, "MTU");
    assert_eq!(
        console_value(&console, "SERVING alpha mtu"),
        pod_mtu,
        "the guest has the pod's MTU"
    );

    // beta: serving but not ready (no /ready yet): out of its Service; ports[] holds.
    let console = c.wait_console(&ns, "beta", "SERVING beta", BOOT);
    assert!(console.contains("KILN_DHCPFLOOD sent"), "{console}");
    assert!(
        console.contains("DHCP_AFTER_FLOOD_OK"),
        "the server still answers: {console}"
    );
    let beta_ip = pod_ip(c, &ns, "beta");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        c.field(
            &ns,
            "vmi/beta",
            "{.status.conditions[?(@.type=='Ready')].status}"
        ),
        "False"
    );
    assert_eq!(
        endpoints(c, &ns, "beta"),
        "",
        "a VM that is not ready has no endpoints"
    );
    let ports = client(
        "client-2",
        &format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 30 {beta_ip} 80; echo \"port80 $?\"; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {beta_ip} 81; echo \"port81 $?\""
        ),
    );
    assert!(
        ports.contains("KILN_PAGE beta"),
        "port 80 is forwarded: {ports}"
    );
    assert!(ports.contains("port80 0"), "{ports}");
    assert!(
        !ports.contains("port81 0"),
        "port 81 is not in ports[]: {ports}"
    );
    c.console_session(
        &ns,
        "beta",
        "echo ok > /www/ready",
        Duration::from_secs(120),
    );
    c.wait_field(
        &ns,
        "vmi/beta",
        "{.status.conditions[?(@.type=='Ready')].status}",
        "True",
        Duration::from_secs(180),
    );
    c.wait(
        &format!("{ns}: beta in its Service"),
        Duration::from_secs(30),
        || (endpoints(c, &ns, "beta") == beta_ip).then_some(()),
    );
    // The two guests reach each other through each other's Service.
    let alpha_console = c.wait_console(&ns, "alpha", "FETCHED_BETA", BOOT);
    assert_eq!(
        console_value(&alpha_console, "FETCHED_BETA"),
        "KILN_PAGE beta"
    );
    let beta_console = c.wait_console(&ns, "beta", "FETCHED_ALPHA", BOOT);
    assert_eq!(
        console_value(&beta_console, "FETCHED_ALPHA"),
        "KILN_PAGE alpha"
    );
    // The flood crashed nothing: the launcher ran on and warned a few times, rate-limited.
    let launcher = c.launcher_pod(&ns, "beta");
    assert_eq!(
        c.field(
            &ns,
            &format!("pod/{launcher}"),
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    assert_eq!(c.field(&ns, "vmi/beta", "{.status.phase}"), "Running");
    let warnings = beta_console.matches("DHCP: dropped").count();
    assert!(
        (1..=5).contains(&warnings),
        "a few rate-limited warnings, not one per packet: {warnings}"
    );

    // Stopped and started: a new pod with a new IP, and the Service finds it.
    let old_uid = vmi_uid(c, &ns, "alpha");
    for verb in ["stop", "start"] {
        let out = c.kiln(&ns, &[verb, "alpha"], None);
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if verb == "stop" {
            c.wait_field(
                &ns,
                "vm/alpha",
                "{.status.printableStatus}",
                "Stopped",
                BOOT,
            );
        }
    }
    wait_new_run(c, &ns, "alpha", &old_uid, BOOT);
    c.wait_console(&ns, "alpha", "SERVING alpha", BOOT);
    let new_ip = pod_ip(c, &ns, "alpha");
    eprintln!("alpha: pod IP {alpha_ip} before the stop, {new_ip} after the start");
    let again = client(
        "client-3",
        &fetch(
            "THROUGH_SERVICE",
            &format!("http://alpha.{ns}.svc.cluster.local/"),
        ),
    );
    assert!(again.contains("THROUGH_SERVICE KILN_PAGE alpha"), "{again}");
}

/// A liveness probe that never passes (nothing listens in kiln-tiny) ends each run as Failed;
/// runStrategy Always starts the next, then backs off as for any failing run.
pub fn failing_liveness_restarts(c: &Cluster) {
    let ns = c.namespace("liveness");
    let vm = tiny_vm("unlively", "Always", "kiln.action=hold").replace(
        "      terminationGracePeriodSeconds: 3\n",
        "      terminationGracePeriodSeconds: 3\n      livenessProbe: {tcpSocket: {port: 22}, initialDelaySeconds: 1, periodSeconds: 1, failureThreshold: 2}\n",
    );
    c.apply(&ns, &vm);
    c.wait_field(&ns, "vmi/unlively", "{.status.phase}", "Running", TINY);
    // Runs end Failed for the probe, and the VM starts them again.
    let runs = c.wait(&format!("{ns}: a second run fails too"), TINY * 2, || {
        let n: u32 = c
            .field(
                &ns,
                "vm/unlively",
                "{.status.startFailure.consecutiveFailCount}",
            )
            .parse()
            .unwrap_or(0);
        (n >= 2).then_some(n)
    });
    let events = c.kubectl(&[
        "get",
        "events",
        "-n",
        &ns,
        "-o",
        "custom-columns=R:.reason,M:.message",
    ]);
    assert!(
        events.contains("the liveness probe failed 2 times in a row"),
        "{events}"
    );
    eprintln!("unlively: {runs} runs ended by the liveness probe");
    c.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// The bridge binding: the guest takes over the pod's IP (leased by the launcher from its
/// link-local address) and MAC, the VMI says so, the controller still reaches the launcher on
/// that IP (the status comes through it), a probe passes over the bridge, and a pod reaches
/// the guest directly on the pod IP, on any port.
pub fn bridge_binding(c: &Cluster) {
    let ns = c.namespace("bridge");
    let _slot = c.boots.take(1);
    let devices = "          interfaces: [{name: default, bridge: {}}]";
    // Every probe connection forks a busybox httpd child, which costs these emulated guest
    // kernels seconds: a 2 s period starved the guest's own wget of CPU (it received the page
    // and was killed by `timeout` before it could print it), so probe every 10 s.
    let spec = "      networks: [{name: default, pod: {}}]\n      readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 10, timeoutSeconds: 10}";
    c.apply(&ns, WEB);
    // Out of the bridged guest: DNS through CoreDNS (UDP) and a Service's pod (TCP), both
    // through the node's NAT with the pod's own address as the source.
    let script = user_data(
        "",
        &format!(
            "read mac < /sys/class/net/eth0/address; echo \"GUEST_MAC $mac\"; {}",
            fetch("FETCHED_WEB", "http://web/")
        ),
    );
    c.apply(&ns, &linux_vm("gamma", devices, spec, &script));
    let console = c.wait_console(&ns, "gamma", "GUEST_MAC", BOOT);
    let ip = pod_ip(c, &ns, "gamma");
    assert!(
        console.contains(&format!("KILN_DHCP {ip}/"))
            && console.contains("obtained from 169.254.75.10"),
        "the guest leased the pod IP: {console}"
    );
    c.wait_field(
        &ns,
        "vmi/gamma",
        "{.status.interfaces[0].ipAddress}",
        &ip,
        TINY,
    );
    assert_eq!(
        c.field(&ns, "vmi/gamma", "{.status.interfaces[0].mac}"),
        console_value(&console, "GUEST_MAC"),
        "the VMI reports the guest's MAC (the pod's)"
    );
    c.wait_field(
        &ns,
        "vmi/gamma",
        "{.status.conditions[?(@.type=='Ready')].status}",
        "True",
        Duration::from_secs(180),
    );
    let got = busybox(
        c,
        &ns,
        "client",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 30 {ip} 81"),
    );
    assert!(
        got.contains("KILN_PAGE gamma"),
        "port 81 on the pod IP: {got}"
    );
    let console = c.wait_console(&ns, "gamma", "FETCHED_WEB", BOOT);
    assert_eq!(
        console_value(&console, "FETCHED_WEB"),
        "KILN_POD_PAGE",
        "the bridged guest fetched http://web/: {console}"
    );
}
