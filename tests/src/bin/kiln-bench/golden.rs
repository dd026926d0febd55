//! `kiln-bench golden`: golden-image clones on the development cluster (issue 13).
//!
//! 1. Clone time of an image of random bytes (1 GiB by default) imported once into each
//!    storage class: create → Succeeded of a DataVolume cloning it, host-assisted (local-path:
//!    a clone pod copies, or a clone-source pod streams it across namespaces) against CSI
//!    clones by hostpath.csi.kiln.dev (the driver copies; across namespaces its volume is
//!    handed over), alternating per round.
//! 2. DataSource → VM Running: a VM whose dataVolumeTemplate clones a DataSource of the
//!    kiln-guest image, create → its VMI Running, in each class, alternating.

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use kiln_tests::image_server::{ImageServer, Served};
use kiln_tests::kube::Cluster;

use crate::{arg_num, stats, table_header};

const NS: &str = "bench";
const OTHER: &str = "bench-other";
const CSI: &str = "kiln-csi-hostpath";
const LOCAL: &str = "local-path";
const LIMIT: Duration = Duration::from_secs(1200);

fn data_volume(name: &str, source: &str, class: &str, size_mib: usize) -> String {
    format!(
        "apiVersion: cdi.kiln.dev/v1beta1\nkind: DataVolume\nmetadata: {{name: {name}}}\nspec:\n  \
         source: {source}\n  storage: {{storageClassName: {class}, resources: {{requests: {{storage: {size_mib}Mi}}}}}}\n"
    )
}

fn vm(name: &str, datasource: &str, class: &str) -> String {
    format!(
        r#"apiVersion: kiln.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Always
  dataVolumeTemplates:
  - metadata: {{name: {name}-root}}
    spec:
      sourceRef: {{kind: DataSource, name: {datasource}}}
      storage: {{storageClassName: {class}, resources: {{requests: {{storage: 256Mi}}}}}}
  template:
    spec:
      domain:
        memory: {{guest: 128Mi}}
        devices: {{disks: [{{name: root, disk: {{bus: virtio}}}}]}}
      terminationGracePeriodSeconds: 1
      volumes: [{{name: root, dataVolume: {{name: {name}-root}}}}]
"#
    )
}

/// Seconds from applying `yaml` in `ns` until `what`'s `path` reads `want`.
fn time_to(c: &Cluster, ns: &str, yaml: &str, what: &str, path: &str, want: &str) -> f64 {
    let t0 = Instant::now();
    c.apply(ns, yaml);
    c.wait_field(ns, what, path, want, LIMIT);
    t0.elapsed().as_secs_f64()
}

fn delete(c: &Cluster, ns: &str, what: &str) {
    c.kubectl(&["delete", "-n", ns, what, "--wait", "--timeout=300s"]);
}

fn row(label: &str, v: &[f64]) {
    let (lo, mid, hi) = stats(v);
    println!(
        "| {label:<40} | {:>4} | {lo:>7.1} | {mid:>7.1} | {hi:>7.1} |",
        v.len()
    );
}

fn header(first: &str) {
    table_header(&[
        (first, 40),
        ("runs", 4),
        ("min", 7),
        ("median", 7),
        ("max", 7),
    ]);
}

pub fn bench_golden(args: &[String]) {
    let runs: usize = arg_num(args, "--runs", 5);
    let mib: usize = arg_num(args, "--mib", 1024);
    let c = Cluster::up("bench-golden");
    c.install_kiln();
    c.namespace(NS);
    c.namespace(OTHER);
    c.apply(
        NS,
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: clone-to-other}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: os-images.kiln.dev:view}}\n\
             subjects: [{{kind: Group, apiGroup: rbac.authorization.k8s.io, name: 'system:serviceaccounts:{OTHER}'}}]\n"
        ),
    );

    let mut bytes = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("random bytes: {e}"));
    let server = ImageServer::start(HashMap::from([(
        "golden.img".to_string(),
        Served { bytes, rate: None },
    )]));
    let node_ip = c.kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].status.addresses[?(@.type=='InternalIP')].address}",
    ]);
    let http = format!(
        "{{http: {{url: 'http://{}:{}/golden.img'}}}}",
        node_ip.trim(),
        server.port
    );
    let guest = "{registry: {url: 'docker://kiln-registry.kube-system.svc:5000/containerdisks/kiln-guest:latest'}}";
    let size = mib + 64;
    for (name, class) in [("golden-lp", LOCAL), ("golden-csi", CSI)] {
        c.apply(NS, &data_volume(name, &http, class, size));
    }
    for (name, class) in [("guest-lp", LOCAL), ("guest-csi", CSI)] {
        c.apply(NS, &data_volume(name, guest, class, 256));
        c.apply(
            NS,
            &format!(
                "apiVersion: cdi.kiln.dev/v1beta1\nkind: DataSource\nmetadata: {{name: {name}}}\n\
                 spec: {{source: {{pvc: {{name: {name}, namespace: {NS}}}}}}}\n"
            ),
        );
    }
    for name in ["golden-lp", "golden-csi", "guest-lp", "guest-csi"] {
        c.wait_field(
            NS,
            &format!("dv/{name}"),
            "{.status.phase}",
            "Succeeded",
            LIMIT,
        );
    }
    drop(server);

    let kinds: [(&str, &str, &str, &str); 4] = [
        ("host-assisted (local-path)", NS, "golden-lp", LOCAL),
        ("CSI clone (kiln-csi-hostpath)", NS, "golden-csi", CSI),
        (
            "host-assisted, across namespaces",
            OTHER,
            "golden-lp",
            LOCAL,
        ),
        ("CSI clone, across namespaces", OTHER, "golden-csi", CSI),
    ];
    let mut clones: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for i in 0..runs {
        for (k, (_, ns, source, class)) in kinds.iter().enumerate() {
            let name = format!("clone-{k}-{i}");
            let src = format!("{{pvc: {{namespace: {NS}, name: {source}}}}}");
            let yaml = data_volume(&name, &src, class, size);
            let dv = format!("dv/{name}");
            clones[k].push(time_to(&c, ns, &yaml, &dv, "{.status.phase}", "Succeeded"));
            delete(&c, ns, &dv);
        }
    }
    let vm_kinds = [
        ("host-assisted (local-path)", "guest-lp", LOCAL),
        ("CSI clone (kiln-csi-hostpath)", "guest-csi", CSI),
    ];
    let mut running: Vec<Vec<f64>> = vec![Vec::new(); vm_kinds.len()];
    for i in 0..runs {
        for (k, (_, ds, class)) in vm_kinds.iter().enumerate() {
            let name = format!("vm-{k}-{i}");
            let yaml = vm(&name, ds, class);
            let vmi = format!("vmi/{name}");
            running[k].push(time_to(&c, NS, &yaml, &vmi, "{.status.phase}", "Running"));
            delete(&c, NS, &format!("vm/{name}"));
        }
    }

    println!(
        "Clone of a {mib} MiB image of random bytes: DataVolume create -> Succeeded (seconds)"
    );
    header("clone");
    for ((label, ..), v) in kinds.iter().zip(&clones) {
        row(label, v);
    }
    println!();
    println!(
        "median ratio host-assisted/CSI: {:.2} (same namespace), {:.2} (across namespaces)",
        stats(&clones[0]).1 / stats(&clones[1]).1,
        stats(&clones[2]).1 / stats(&clones[3]).1
    );
    println!();
    println!(
        "DataSource (kiln-guest, 256Mi) -> VM with its own clone: create -> VMI Running (seconds)"
    );
    header("clone kind");
    for ((label, ..), v) in vm_kinds.iter().zip(&running) {
        row(label, v);
    }
    println!();
    println!(
        "median ratio host-assisted/CSI: {:.2}",
        stats(&running[0]).1 / stats(&running[1]).1
    );
}
