//! The controller killed mid-reconcile, again and again and at different moments (SIGKILL of
//! the leading replica's process, and its pod deleted without grace), while VMs are created,
//! stopped and started: it converges to exactly one launcher pod per running VMI, nothing
//! orphaned, no VM lost.

use std::time::{Duration, Instant};

use kiln_tests::kube::Cluster;

use super::{launcher_pods, tiny_vm, vmi_uid};

const VMS: usize = 6;

/// SIGKILL of the leading controller's process (found by its pod's container id), or a
/// deletion of its pod without grace.
fn kill_leader(c: &Cluster, round: usize) {
    let leader = c.field(
        "kiln-system",
        "lease/kiln-controller",
        "{.spec.holderIdentity}",
    );
    if round.is_multiple_of(2) {
        // The lease may still name a replica killed in an earlier round: then nothing to do.
        c.run(
            &[
                "delete",
                "pod",
                "-n",
                "kiln-system",
                &leader,
                "--grace-period=0",
                "--force",
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
        return;
    }
    let pid = std::fs::read_dir("/proc").ok().and_then(|d| {
        d.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            let mine = env
                .split(|&b| b == 0)
                .any(|v| v == format!("POD_NAME={leader}").as_bytes());
            (exe.ends_with("kiln-controller") && mine).then_some(pid)
        })
    });
    if let Some(pid) = pid {
        // SAFETY: kill(2) of the leading kiln-controller process, found by its pod's name.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

pub fn controller_killed_mid_reconcile_converges(c: &Cluster) {
    let ns = c.namespace("chaos");
    let names: Vec<String> = (0..VMS).map(|i| format!("chaos-{i}")).collect();
    let start = Instant::now();
    for (round, name) in names.iter().enumerate() {
        c.apply(&ns, &tiny_vm(name, "Always", "kiln.action=hold"));
        // Kill at a different point of each VM's creation: at once, or a little later.
        std::thread::sleep(Duration::from_millis(150 * round as u64));
        kill_leader(c, round);
        if round == 2 {
            // A stop while the controller is down or new ...
            kiln_tests::kube::ok(
                &c.kiln(&ns, &["stop", "chaos-0"], None),
                "kubectl kiln stop chaos-0",
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // ... and a start once that stop has been carried out.
    c.wait_field(
        &ns,
        "vm/chaos-0",
        "{.status.printableStatus}",
        "Stopped",
        Duration::from_secs(120),
    );
    kiln_tests::kube::ok(
        &c.kiln(&ns, &["start", "chaos-0"], None),
        "kubectl kiln start chaos-0",
    );
    kill_leader(c, 1);
    let converged = c.wait(
        "every chaos VM Running with exactly one launcher pod",
        Duration::from_secs(240),
        || {
            names
                .iter()
                .all(|n| {
                    let uid = vmi_uid(c, &ns, n);
                    c.field(&ns, &format!("vm/{n}"), "{.status.printableStatus}") == "Running"
                        && !uid.is_empty()
                        && launcher_pods(c, &ns, &uid).len() == 1
                })
                .then_some(start.elapsed())
        },
    );
    eprintln!(
        "chaos: converged {converged:?} after the first VM, with the leader killed {VMS} times"
    );
    // Exactly one pod per VMI and nothing else: no duplicate, no orphan, no lost VM.
    let pods = c.kubectl(&[
        "get",
        "pods",
        "-n",
        &ns,
        "-l",
        "kiln.dev=kiln-launcher",
        "-o",
        "jsonpath={range .items[*]}{.metadata.labels.kiln\\.dev/created-by}{\"\\n\"}{end}",
    ]);
    let mut owners: Vec<&str> = pods.lines().collect();
    owners.sort();
    let mut uids: Vec<String> = names.iter().map(|n| vmi_uid(c, &ns, n)).collect();
    uids.sort();
    assert_eq!(
        owners, uids,
        "launcher pods, by the VMI they belong to, and the VMIs"
    );
    let vmis = c.kubectl(&["get", "vmi", "-n", &ns, "-o", "name"]);
    assert_eq!(vmis.lines().count(), VMS, "{vmis}");
    c.wait_field(
        "kiln-system",
        "deploy/kiln-controller",
        "{.status.readyReplicas}",
        "2",
        Duration::from_secs(120),
    );
    c.kubectl(&["delete", "namespace", &ns, "--timeout=180s"]);
}
