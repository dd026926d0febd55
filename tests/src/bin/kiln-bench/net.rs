//! `kiln-bench net`: a guest's TCP throughput pod → VM and VM → pod through the pod network's
//! masquerade and bridge bindings, side by side in one run with the same guest on a plain TAP
//! in a network namespace (the floor: kiln-vmm alone), in alternating rounds; TCP connect
//! latency pod → VM through each VM's pod IP against pod → pod; the launchers' and kiln-vmm's
//! CPU per GB moved.
//!
//! The client runs in a client pod's network namespace (this process's thread joins it; in the
//! floor's namespace for the floor), so the pod paths are what a pod meets: its veth, the node's
//! bridge, the VM pod's veth, NAT or bridge and the TAP. The client times both directions once
//! the guest connected: into the guest until the guest, having read everything, closes; out of
//! it until EOF (the guest connects only after the client's go, so nothing waits in a socket
//! buffer beforehand).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use kiln_tests::guest_image::rootfs_with_script;
use kiln_tests::kube::{linux_vm_with_user_data, Cluster};
use kiln_tests::netns::{in_netns, NetNs};
use kiln_tests::process::VmmRun;
use kiln_tests::{guest_dir, kiln_vmm, scratch_dir};

use crate::virtio::non_vcpu_cpu_secs;
use crate::vms::{find_pid, percentile, stat_field};
use crate::{arg_num, stats};

const NS: &str = "bench-net";
const LIMIT: Duration = Duration::from_secs(1200);
/// Ports the node listens on (data into the guest, data out of it) and the guest's "go" port.
const TO_GUEST: u16 = 5001;
const FROM_GUEST: u16 = 5002;
const GO: u16 = 6000;

/// The guest's loop: wait for the node's go, take MIB in, send MIB out; `rounds` times. httpd
/// on port 80 answers the connect-latency probes.
fn guest_script(host: &str, mib: u64, rounds: usize, setup: &str) -> String {
    format!(
        "{setup}\nhttpd -p 80 -h /\necho BENCH_READY\nfor i in $(seq 1 {rounds}); do\n  nc -l -p {GO} > /dev/null\n  kiln-iobench tcprecv {host} {TO_GUEST} > /dev/null\n  kiln-iobench tcpsend {host} {FROM_GUEST} {mib} > /dev/null\n  echo ROUND_END $i\ndone\necho BENCH_DONE\n"
    )
}

/// One direction's figure from one round.
#[derive(Default, Clone, Copy)]
struct Round {
    to_guest_mbs: f64,
    from_guest_mbs: f64,
}

/// The node side of one path: its listeners and how to reach the guest.
struct Path {
    name: &'static str,
    guest: SocketAddr,
    to_guest: TcpListener,
    from_guest: TcpListener,
}

fn round(p: &Path, mib: u64, n: usize) -> Round {
    let bytes = (mib << 20) as usize;
    // Go: the guest starts its transfers now.
    let mut go = connect_retry(p.guest, Duration::from_secs(600));
    drop(go.write_all(b"go\n"));
    drop(go);
    let (mut c, _) = p.to_guest.accept().expect("the guest connects for data");
    let t = Instant::now();
    c.write_all(&vec![0x5a; bytes])
        .expect("sending to the guest");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    // The guest closes once it has read everything.
    let _ = c.read(&mut [0u8; 16]);
    let to = bytes as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop(c);
    let (mut c, _) = p.from_guest.accept().expect("the guest connects to send");
    let t = Instant::now();
    let mut sink = Vec::with_capacity(bytes);
    let _ = c.read_to_end(&mut sink);
    let from = sink.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
    assert_eq!(
        sink.len(),
        bytes,
        "{} round {n}: a short stream from the guest",
        p.name
    );
    Round {
        to_guest_mbs: to,
        from_guest_mbs: from,
    }
}

fn connect_retry(to: SocketAddr, limit: Duration) -> TcpStream {
    let deadline = Instant::now() + limit;
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("connecting to {to}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Milliseconds per TCP connect to `to`, `n` times, 2 s apart: the guest's httpd forks for
/// every connection, which takes seconds of emulated kernel here, and the next connect should
/// find the guest idle.
fn connect_ms(to: SocketAddr, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            std::thread::sleep(Duration::from_secs(2));
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(10));
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert!(s.is_ok(), "connect to {to}: {s:?}");
            ms
        })
        .collect()
}

/// The client pod: it only holds a network namespace, which the benchmark's client threads join.
const CLIENT_POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: net-client}
spec:
  containers:
  - name: client
    image: kiln.local/busybox:dev
    imagePullPolicy: IfNotPresent
    command: [\"sleep\", \"3600017\"]
";

/// The VMs under test (masquerade, the default, and bridge) and a plain pod to compare their
/// connect latency with.
fn pod_network_vms(script: &str) -> String {
    let script = format!("#!/bin/sh\n{script}");
    let masq = linux_vm_with_user_data("net-masq", "", "", &script);
    let bridge = linux_vm_with_user_data(
        "net-bridge",
        "          interfaces: [{name: default, bridge: {}}]",
        "      networks: [{name: default, pod: {}}]",
        &script,
    );
    format!(
        "{masq}---\n{bridge}---
apiVersion: v1
kind: Pod
metadata: {{name: net-pod}}
spec:
  containers:
  - name: httpd
    image: kiln.local/busybox:dev
    imagePullPolicy: IfNotPresent
    command: [\"/bin/sh\", \"-c\", \"mkdir -p /www && exec httpd -f -p 80 -h /www\"]
"
    )
}

pub fn bench_net(args: &[String]) {
    let rounds: usize = arg_num(args, "--rounds", 3);
    let mib: u64 = arg_num(args, "--mib", 2);
    let probes: usize = arg_num(args, "--connects", 20);
    let c = Cluster::up("bench-net");
    c.install_kiln();
    c.namespace(NS);
    // The client pod first: the guests send to its IP.
    c.apply(NS, CLIENT_POD);
    c.wait_field(NS, "pod/net-client", "{.status.phase}", "Running", LIMIT);
    let client: Ipv4Addr = c
        .field(NS, "pod/net-client", "{.status.podIP}")
        .parse()
        .expect("the client pod's IP");
    let client_ns = format!(
        "/proc/{}/ns/net",
        find_pid("busybox", "3600017").expect("the client pod's process")
    );

    // The floor: kiln-vmm and the same guest on a TAP in a namespace, addressed statically.
    let dir = scratch_dir("bench-net");
    let ns = NetNs::with_tap(
        &format!("kiln-bench-{}", std::process::id()),
        "kt0",
        "10.0.2.1/24",
    );
    let floor_script = guest_script(
        "10.0.2.1",
        mib,
        rounds,
        "ifconfig eth0 10.0.2.2 netmask 255.255.255.0 up",
    );
    let root = rootfs_with_script(&dir, &floor_script);
    let vmm = vec![
        kiln_vmm().display().to_string(),
        "--kernel".into(),
        guest_dir().join("vmlinux").display().to_string(),
        "--mem".into(),
        "128".into(),
        "--id".into(),
        "net-floor".into(),
        "--cmdline".into(),
        "console=ttyS0 quiet root=/dev/vda rw kiln.action=run:/kiln-test.sh".into(),
        "--disk".into(),
        format!("{},id=kiln-root", root.display()),
        "--net".into(),
        "tap=kt0,mac=06:00:0a:00:02:02".into(),
    ];
    let floor_run = std::sync::Mutex::new(VmmRun::spawn(
        std::path::Path::new("ip"),
        &ns.exec_args(&vmm),
    ));
    let listeners = |at: Ipv4Addr| {
        (
            TcpListener::bind((at, TO_GUEST)).expect("bind"),
            TcpListener::bind((at, FROM_GUEST)).expect("bind"),
        )
    };
    let (floor_to, floor_from) = in_netns(&ns.path(), || listeners([10, 0, 2, 1].into()));

    // The pod network: the same guest as two VMs, masquerade and bridge, and a plain pod. The
    // rounds take turns, so both VMs' transfers share the client pod's listeners.
    c.apply(
        NS,
        &pod_network_vms(&guest_script(&client.to_string(), mib, rounds, "")),
    );
    let (masq_to, masq_from) = in_netns(&client_ns, || listeners(Ipv4Addr::UNSPECIFIED));
    let bridge_to = masq_to.try_clone().expect("listener");
    let bridge_from = masq_from.try_clone().expect("listener");
    c.wait_console(NS, "net-masq", "BENCH_READY", LIMIT);
    c.wait_console(NS, "net-bridge", "BENCH_READY", LIMIT);
    floor_run
        .lock()
        .expect("floor")
        .wait_for_line("BENCH_READY", LIMIT)
        .expect("the floor guest is ready");
    let vm_ip = |vm: &str| -> Ipv4Addr {
        let pod = c.launcher_pod(NS, vm);
        c.field(NS, &format!("pod/{pod}"), "{.status.podIP}")
            .parse()
            .expect("the launcher pod's IP")
    };
    let (pod_ip, bridge_ip) = (vm_ip("net-masq"), vm_ip("net-bridge"));
    c.wait_field(NS, "pod/net-pod", "{.status.phase}", "Running", LIMIT);
    let plain_ip: Ipv4Addr = c
        .field(NS, "pod/net-pod", "{.status.podIP}")
        .parse()
        .expect("the plain pod's IP");
    let pids = |vm: &str| {
        let vmm = find_pid("kiln-vmm", vm).expect("the VM's kiln-vmm");
        (vmm, stat_field(vmm, 1).expect("kiln-vmm's parent") as i32)
    };
    let (vmm_pid, launcher_pid) = pids("net-masq");
    let (bridge_vmm_pid, bridge_launcher_pid) = pids("net-bridge");
    let floor_pid = floor_run.lock().expect("floor").pid();

    let floor = Path {
        name: "floor",
        guest: SocketAddr::from(([10, 0, 2, 2], GO)),
        to_guest: floor_to,
        from_guest: floor_from,
    };
    let masq = Path {
        name: "masquerade",
        guest: SocketAddr::from((pod_ip, GO)),
        to_guest: masq_to,
        from_guest: masq_from,
    };
    let bridge = Path {
        name: "bridge",
        guest: SocketAddr::from((bridge_ip, GO)),
        to_guest: bridge_to,
        from_guest: bridge_from,
    };
    println!(
        "net benchmark: {rounds} alternating rounds of {mib} MiB each way; guest 1 vCPU, 128 MiB; \
         client in pod net-client ({client}), VM pods {pod_ip} (masquerade) and \
         {bridge_ip} (bridge), plain pod {plain_ip}; the floor's client beside its TAP"
    );
    // Connect latency first (the floor guest powers off after its rounds): from the client pod
    // through the pod IP to each guest and to a plain pod; to the floor guest from its namespace.
    let floor_connects = in_netns(&ns.path(), || {
        connect_ms(SocketAddr::from(([10, 0, 2, 2], 80)), probes)
    });
    let (vm_connects, bridge_connects, pod_connects) = in_netns(&client_ns, || {
        (
            connect_ms(SocketAddr::from((pod_ip, 80)), probes),
            connect_ms(SocketAddr::from((bridge_ip, 80)), probes),
            connect_ms(SocketAddr::from((plain_ip, 80)), probes),
        )
    });

    let (mut f, mut m, mut b) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor_cpu, mut vmm_cpu, mut launcher_cpu) = (0.0, 0.0, 0.0);
    let (mut bridge_vmm_cpu, mut bridge_launcher_cpu) = (0.0, 0.0);
    for n in 0..rounds {
        let cpu0 = non_vcpu_cpu_secs(floor_pid);
        let fr = in_netns(&ns.path(), || round(&floor, mib, n));
        floor_cpu += non_vcpu_cpu_secs(floor_pid) - cpu0;
        let (v0, l0) = (non_vcpu_cpu_secs(vmm_pid), non_vcpu_cpu_secs(launcher_pid));
        let mr = in_netns(&client_ns, || round(&masq, mib, n));
        vmm_cpu += non_vcpu_cpu_secs(vmm_pid) - v0;
        launcher_cpu += non_vcpu_cpu_secs(launcher_pid) - l0;
        let (v0, l0) = (
            non_vcpu_cpu_secs(bridge_vmm_pid),
            non_vcpu_cpu_secs(bridge_launcher_pid),
        );
        let br = in_netns(&client_ns, || round(&bridge, mib, n));
        bridge_vmm_cpu += non_vcpu_cpu_secs(bridge_vmm_pid) - v0;
        bridge_launcher_cpu += non_vcpu_cpu_secs(bridge_launcher_pid) - l0;
        println!(
            "round {n}: floor {:.4} MB/s in, {:.4} out; masquerade {:.4} in, {:.4} out; bridge {:.4} in, {:.4} out",
            fr.to_guest_mbs, fr.from_guest_mbs, mr.to_guest_mbs, mr.from_guest_mbs, br.to_guest_mbs, br.from_guest_mbs
        );
        f.push(fr);
        m.push(mr);
        b.push(br);
    }
    let gb = (2 * (mib << 20) * rounds as u64) as f64 / 1e9;
    let med = |v: &[Round], get: fn(&Round) -> f64| stats(&v.iter().map(get).collect::<Vec<_>>()).1;
    println!();
    println!("| metric (median of {rounds}) | floor (TAP in a netns) | masquerade | bridge | masquerade / floor | bridge / floor |");
    println!("|---|---|---|---|---|---|");
    type Get = fn(&Round) -> f64;
    let rows: [(&str, Get); 2] = [
        ("TCP client → guest MB/s", |r| r.to_guest_mbs),
        ("TCP guest → client MB/s", |r| r.from_guest_mbs),
    ];
    for (name, get) in rows {
        let (fl, ma, br) = (med(&f, get), med(&m, get), med(&b, get));
        println!(
            "| {name} | {fl:.4} | {ma:.4} | {br:.4} | {:.3} | {:.3} |",
            ma / fl,
            br / fl
        );
    }
    println!(
        "| kiln-vmm CPU ms per GB (non-vCPU threads) | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} |",
        floor_cpu * 1e3 / gb,
        vmm_cpu * 1e3 / gb,
        bridge_vmm_cpu * 1e3 / gb,
        vmm_cpu / floor_cpu,
        bridge_vmm_cpu / floor_cpu
    );
    println!(
        "| kiln-launcher CPU ms per GB | - | {:.0} | {:.0} | - | - |",
        launcher_cpu * 1e3 / gb,
        bridge_launcher_cpu * 1e3 / gb
    );
    println!();
    println!("| TCP connect ({probes} each) | P50 ms | P99 ms |");
    println!("|---|---|---|");
    for (name, v) in [
        ("beside the TAP → the floor guest", &floor_connects),
        ("pod → VM through its pod IP (masquerade)", &vm_connects),
        ("pod → VM on its pod IP (bridge)", &bridge_connects),
        ("pod → pod", &pod_connects),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} |",
            percentile(v, 50.0),
            percentile(v, 99.0)
        );
    }
    println!(
        "VM / pod connect P50 ratio: masquerade {:.2}, bridge {:.2}",
        percentile(&vm_connects, 50.0) / percentile(&pod_connects, 50.0),
        percentile(&bridge_connects, 50.0) / percentile(&pod_connects, 50.0)
    );
    if let Ok(mut r) = floor_run.lock() {
        r.signal(libc::SIGTERM);
        let _ = r.wait_exit(Duration::from_secs(10));
    }
    drop(ns);
    let _ = std::fs::remove_dir_all(dir);
}
