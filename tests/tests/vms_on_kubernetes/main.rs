//! Kiln on the real development cluster (issue 11): Kiln's images in the cluster's registry,
//! Kiln installed with `kubectl apply -k resources/deploy`, then VMs as a user makes them.
//! Linux guests where the guest matters (consoles, cloud-init, disks that persist, KubeVirt's
//! own examples); kiln-tiny, which boots in milliseconds, for the control plane's paths
//! (run strategies, reboots, kills, deleted pods, pause, start/stop/restart, the controller
//! killed mid-reconcile) and the pod network's probes. Networking (issue 12) with real traffic
//! between guests, pods and Services. Golden images (issue 13): DataImportCrons, DataSources and
//! DataVolumes against the cluster's registry and an http server; the common boot images (the
//! Kiln object's gate) and a Debian VM reached by SSH. The parts run side by side in
//! their own namespaces, at most a few Linux guests booting at once.

mod boot_images;
mod chaos;
mod examples;
mod golden_images;
mod golden_transfers;
mod lifecycle;
mod network;
mod security;

use std::time::Duration;

use kiln_tests::kube::Cluster;

/// A Linux boot to its marker, once it has its boot slot: 10-30 s of emulated kernel here,
/// longer beside the other parts' boots and pods.
pub const BOOT: Duration = Duration::from_secs(600);
/// A kiln-tiny VM to Running (pod start, init containers, boot in milliseconds).
pub const TINY: Duration = Duration::from_secs(90);

/// A kiln-tiny VM: `strategy`, then `args` on kiln-tiny's command line.
pub fn tiny_vm(name: &str, strategy: &str, args: &str) -> String {
    format!(
        r#"apiVersion: kiln.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: {strategy}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      domain:
        memory: {{guest: 16Mi}}
        resources: {{requests: {{cpu: 10m}}}}
        firmware:
          kernelBoot:
            kernelArgs: "{args}"
            container: {{image: "kiln.local/kiln-guest-kernel:latest", kernelPath: /boot/kiln-tiny}}
      terminationGracePeriodSeconds: 3
"#
    )
}

/// The UID of the VMI of `vm` ("" when there is none).
pub fn vmi_uid(c: &Cluster, ns: &str, vm: &str) -> String {
    c.field(ns, &format!("vmi/{vm}"), "{.metadata.uid}")
}

/// Waits for the VM's VMI to be a new run (another UID than `old`) that is Running.
pub fn wait_new_run(c: &Cluster, ns: &str, vm: &str, old: &str, limit: Duration) -> String {
    c.wait(
        &format!("{ns}/{vm}: a new run (not {old}) Running"),
        limit,
        || {
            let uid = vmi_uid(c, ns, vm);
            let phase = c.field(ns, &format!("vmi/{vm}"), "{.status.phase}");
            (!uid.is_empty() && uid != old && phase == "Running").then_some(uid)
        },
    )
}

/// Launcher pods of the VMI with `uid`.
pub fn launcher_pods(c: &Cluster, ns: &str, uid: &str) -> Vec<String> {
    c.kubectl(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("kiln.dev/created-by={uid}"),
        "-o",
        "name",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

/// Runs `script` in a busybox pod `name` to its end; its log (stdout and stderr).
pub fn busybox(c: &Cluster, ns: &str, name: &str, script: &str) -> String {
    busybox_with_claim(c, ns, name, script, None)
}

/// [`busybox`] with claim `claim` mounted at /data, if given.
pub fn busybox_with_claim(
    c: &Cluster,
    ns: &str,
    name: &str,
    script: &str,
    claim: Option<&str>,
) -> String {
    let data = claim.map_or_else(String::new, |claim| {
        format!(
            "    volumeMounts: [{{name: data, mountPath: /data}}]\n  volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]\n"
        )
    });
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: kiln.local/busybox:dev
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", {script:?}]
{data}"#
    );
    c.apply(ns, &pod);
    // Scripts bound their own waits (wget and nc timeouts, retries); this only catches a hang.
    c.wait(&format!("pod {name} ends"), BOOT, || {
        let phase = c.field(ns, &format!("pod/{name}"), "{.status.phase}");
        (phase == "Succeeded" || phase == "Failed").then_some(())
    });
    c.kubectl(&["logs", "-n", ns, name])
}

fn install(c: &Cluster) {
    let started = std::time::Instant::now();
    let leader = c.install_kiln();
    assert!(
        leader.starts_with("kiln-controller-"),
        "the lease names the leading pod: {leader}"
    );
    eprintln!(
        "Kiln installed in {:?} (leader {leader})",
        started.elapsed()
    );
}

/// Whether part `name` runs: all do, unless KILN_VM_TEST_PARTS lists some (comma-separated),
/// for working on one part.
fn part(name: &str) -> bool {
    std::env::var("KILN_VM_TEST_PARTS")
        .map(|parts| parts.split(',').any(|p| p.trim() == name))
        .unwrap_or(true)
}

#[test]
fn virtual_machines_on_kubernetes() {
    let c = Cluster::up("kiln-vms");
    install(&c);
    type Part = fn(&Cluster);
    let parts: [(&str, Part); 11] = [
        ("refused", security::refused_specs),
        ("security", security::only_the_controller_reaches_a_launcher),
        ("run-strategies", lifecycle::run_strategies),
        ("reboots", lifecycle::reboots_kills_and_deleted_pods),
        ("verbs", lifecycle::kubectl_kiln_verbs),
        ("kiln-examples", examples::kiln_examples),
        ("kubevirt-examples", examples::kubevirt_examples),
        ("network", network::pod_network),
        ("liveness", network::failing_liveness_restarts),
        ("bridge", network::bridge_binding),
        ("golden-images", golden_images::golden_images),
    ];
    // All parts at once; their Linux guests take boot slots (Cluster::boots), so that a
    // few boot at a time instead of fifteen on two emulating cores.
    std::thread::scope(|s| {
        for &(name, run) in &parts {
            if part(name) {
                let c = &c;
                s.spawn(move || {
                    let started = std::time::Instant::now();
                    run(c);
                    eprintln!("part {name} passed in {:.0?}", started.elapsed());
                });
            }
        }
    });
    // After the others: Debian's user space takes minutes of emulated page faults, and stalled
    // for twenty beside the other parts' guests in a CI rehearsal.
    if part("boot-images") {
        let started = std::time::Instant::now();
        boot_images::common_boot_images(&c);
        eprintln!("part boot-images passed in {:.0?}", started.elapsed());
    }
    if part("chaos") {
        let started = std::time::Instant::now();
        chaos::controller_killed_mid_reconcile_converges(&c);
        eprintln!("part chaos passed in {:.0?}", started.elapsed());
    }
}
