//! VM lifecycles with kiln-tiny guests: each run strategy when the guest powers off, a guest
//! reboot inside its pod, kiln-vmm killed with SIGKILL, the launcher pod deleted by hand, and
//! the kubectl kiln verbs for each strategy.

use std::time::Duration;

use kiln_tests::kube::Cluster;

use super::{launcher_pods, tiny_vm, vmi_uid, wait_new_run, TINY};

fn kiln_ok(c: &Cluster, ns: &str, args: &[&str]) -> String {
    let out = c.kiln(ns, args, None);
    kiln_tests::kube::ok(&out, &format!("kubectl kiln {}", args.join(" ")))
}

fn kiln_err(c: &Cluster, ns: &str, args: &[&str], message: &str) {
    let out = c.kiln(ns, args, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kubectl kiln {} succeeded",
        args.join(" ")
    );
    assert!(
        err.contains(message),
        "kubectl kiln {}: want {message:?} in {err}",
        args.join(" ")
    );
}

fn status(c: &Cluster, ns: &str, vm: &str) -> String {
    c.field(ns, &format!("vm/{vm}"), "{.status.printableStatus}")
}

/// Guest power-off under Always (a new run), RerunOnFailure (stays stopped) and Once (the
/// finished run stays, nothing starts).
pub fn run_strategies(c: &Cluster) {
    let ns = c.namespace("strategies");
    let off = "kiln.delay=1500 kiln.action=poweroff";
    for (name, strategy) in [
        ("always-off", "Always"),
        ("rerun-off", "RerunOnFailure"),
        ("once-off", "Once"),
    ] {
        c.apply(&ns, &tiny_vm(name, strategy, off));
    }
    let first = c.wait("always-off runs", TINY, || {
        let uid = vmi_uid(c, &ns, "always-off");
        (!uid.is_empty()).then_some(uid)
    });
    wait_new_run(c, &ns, "always-off", &first, TINY);
    assert!(
        c.field(&ns, "vm/always-off", "{.status.startFailure}")
            .is_empty(),
        "a guest that powers off is no failure: no back-off"
    );
    c.wait("always-off counts its restarts", TINY, || {
        (c.field(&ns, "vm/always-off", "{.status.restartCount}")
            .parse::<u32>()
            .unwrap_or(0)
            >= 1)
            .then_some(())
    });

    c.wait("rerun-off ran and stopped", TINY, || {
        (status(c, &ns, "rerun-off") == "Stopped"
            && c.get(&ns, "vmi/rerun-off").is_none()
            && c.field(&ns, "vm/rerun-off", "{.status.runStrategy}") == "RerunOnFailure")
            .then_some(())
    });
    c.wait_field(&ns, "vmi/once-off", "{.status.phase}", "Succeeded", TINY);
    c.wait_field(
        &ns,
        "vm/once-off",
        "{.status.printableStatus}",
        "Stopped",
        TINY,
    );
    assert_eq!(
        c.field(&ns, "vmi/once-off", "{.status.exitReason}"),
        "PowerOff"
    );
    let once_uid = vmi_uid(c, &ns, "once-off");
    kiln_err(
        c,
        &ns,
        &["start", "once-off"],
        "Once does not support manual start requests",
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        status(c, &ns, "rerun-off"),
        "Stopped",
        "RerunOnFailure does not rerun a success"
    );
    assert!(c.get(&ns, "vmi/rerun-off").is_none());
    assert_eq!(vmi_uid(c, &ns, "once-off"), once_uid, "Once runs once");
    kiln_ok(c, &ns, &["stop", "always-off"]);
    c.wait_field(
        &ns,
        "vm/always-off",
        "{.status.printableStatus}",
        "Stopped",
        TINY,
    );
    c.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// The pid of the kiln-vmm running the VMI `name` (its `--id`), from the host.
fn kiln_vmm_pid(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_vmm = args.first().is_some_and(|a| a.ends_with(b"kiln-vmm"));
        let id = args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == name.as_bytes());
        (is_vmm && id).then_some(pid)
    })
}

/// A reboot restarts the guest in its pod; SIGKILL of kiln-vmm fails the run, which
/// RerunOnFailure replaces after the back-off; a deleted launcher pod fails the run, which
/// Always replaces and Manual does not.
pub fn reboots_kills_and_deleted_pods(c: &Cluster) {
    let ns = c.namespace("lifecycle");
    c.apply(
        &ns,
        &tiny_vm(
            "rebooter",
            "RerunOnFailure",
            "kiln.delay=700 kiln.action=reboot",
        ),
    );
    c.apply(&ns, &tiny_vm("pod-deleted", "Always", "kiln.action=hold"));
    c.apply(
        &ns,
        &tiny_vm("pod-deleted-manual", "Manual", "kiln.action=hold"),
    );

    // Reboots: the same VMI and pod, its restart count growing.
    c.wait_field(&ns, "vmi/rebooter", "{.status.phase}", "Running", TINY);
    let pod = c.launcher_pod(&ns, "rebooter");
    let uid = vmi_uid(c, &ns, "rebooter");
    c.wait("rebooter reboots twice in its pod", TINY, || {
        (c.field(&ns, "vmi/rebooter", "{.status.restartCount}")
            .parse::<u32>()
            .unwrap_or(0)
            >= 2)
            .then_some(())
    });
    assert_eq!(c.launcher_pod(&ns, "rebooter"), pod);
    assert_eq!(vmi_uid(c, &ns, "rebooter"), uid);
    assert_eq!(c.field(&ns, "vmi/rebooter", "{.status.phase}"), "Running");

    // SIGKILL soon after it started (a run that fails within a minute counts towards the
    // back-off): Failed, CrashLoopBackOff during the back-off, then a new run.
    c.apply(
        &ns,
        &tiny_vm("killed-by-test", "RerunOnFailure", "kiln.action=hold"),
    );
    c.wait_field(
        &ns,
        "vm/killed-by-test",
        "{.status.printableStatus}",
        "Running",
        TINY,
    );
    let killed = vmi_uid(c, &ns, "killed-by-test");
    let pid = c.wait("kiln-vmm of killed-by-test", TINY, || {
        kiln_vmm_pid("killed-by-test")
    });
    // SAFETY: kill(2) of the kiln-vmm process this test's VM runs, found by its own --id.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    c.wait_field(
        &ns,
        "vm/killed-by-test",
        "{.status.printableStatus}",
        "CrashLoopBackOff",
        TINY,
    );
    let failure = c.field(&ns, "vm/killed-by-test", "{.status.startFailure}");
    assert!(failure.contains(r#""consecutiveFailCount":1"#), "{failure}");
    let events = c.kubectl(&[
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        "involvedObject.name=killed-by-test",
    ]);
    assert!(events.contains("killed by signal 9"), "{events}");
    wait_new_run(c, &ns, "killed-by-test", &killed, Duration::from_secs(120));
    assert_eq!(
        c.field(&ns, "vm/killed-by-test", "{.status.restartCount}"),
        "1"
    );

    // The launcher pod deleted by hand: Always starts a new run.
    c.wait_field(
        &ns,
        "vm/pod-deleted",
        "{.status.printableStatus}",
        "Running",
        TINY,
    );
    let before = vmi_uid(c, &ns, "pod-deleted");
    let pod = c.launcher_pod(&ns, "pod-deleted");
    c.kubectl(&["delete", "-n", &ns, "pod", &pod, "--wait=false"]);
    wait_new_run(c, &ns, "pod-deleted", &before, Duration::from_secs(120));
    assert_eq!(
        launcher_pods(c, &ns, &before).len(),
        0,
        "the old run's pod is gone"
    );

    // ... and Manual keeps the failed run, starting nothing.
    kiln_ok(c, &ns, &["start", "pod-deleted-manual"]);
    c.wait_field(
        &ns,
        "vmi/pod-deleted-manual",
        "{.status.phase}",
        "Running",
        TINY,
    );
    let manual = vmi_uid(c, &ns, "pod-deleted-manual");
    let pod = c.launcher_pod(&ns, "pod-deleted-manual");
    c.kubectl(&["delete", "-n", &ns, "pod", &pod, "--wait=false"]);
    c.wait_field(
        &ns,
        "vmi/pod-deleted-manual",
        "{.status.phase}",
        "Failed",
        TINY,
    );
    assert_eq!(
        c.field(&ns, "vmi/pod-deleted-manual", "{.status.exitReason}"),
        "PodDeleted"
    );
    c.wait_field(
        &ns,
        "vm/pod-deleted-manual",
        "{.status.printableStatus}",
        "Stopped",
        TINY,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        vmi_uid(c, &ns, "pod-deleted-manual"),
        manual,
        "Manual starts nothing by itself"
    );
    c.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

/// start, stop, restart, pause, unpause as virtctl's, for Manual and Always VMs; a deleted
/// VM takes its VMI, pod and launch Secret with it.
pub fn kubectl_kiln_verbs(c: &Cluster) {
    let ns = c.namespace("verbs");
    c.apply(&ns, &tiny_vm("manual", "Manual", "kiln.action=hold"));
    c.apply(&ns, &tiny_vm("always", "Always", "kiln.action=hold"));
    c.wait_field(
        &ns,
        "vm/manual",
        "{.status.printableStatus}",
        "Stopped",
        TINY,
    );
    assert!(kiln_ok(c, &ns, &["start", "manual"]).contains("VM manual was scheduled to start"));
    c.wait_field(
        &ns,
        "vm/manual",
        "{.status.printableStatus}",
        "Running",
        TINY,
    );
    kiln_err(c, &ns, &["start", "manual"], "VM is already running");
    let first = vmi_uid(c, &ns, "manual");
    assert!(kiln_ok(c, &ns, &["restart", "manual"]).contains("scheduled to restart"));
    wait_new_run(c, &ns, "manual", &first, TINY);
    c.wait_field(
        &ns,
        "vm/manual",
        "{.status.printableStatus}",
        "Running",
        TINY,
    );

    assert!(
        kiln_ok(c, &ns, &["pause", "vm", "manual"]).contains("VMI manual was scheduled to pause")
    );
    c.wait_field(
        &ns,
        "vm/manual",
        "{.status.printableStatus}",
        "Paused",
        TINY,
    );
    assert_eq!(
        c.field(
            &ns,
            "vmi/manual",
            "{.status.conditions[?(@.type=='Paused')].status}"
        ),
        "True"
    );
    assert_eq!(
        c.field(
            &ns,
            "vmi/manual",
            "{.status.conditions[?(@.type=='Ready')].status}"
        ),
        "False"
    );
    kiln_err(c, &ns, &["pause", "vmi", "manual"], "is already paused");
    assert!(kiln_ok(c, &ns, &["status", "manual"]).contains("VM manual: Paused"));
    kiln_ok(c, &ns, &["unpause", "vmi", "manual"]);
    c.wait_field(
        &ns,
        "vm/manual",
        "{.status.printableStatus}",
        "Running",
        TINY,
    );
    kiln_err(c, &ns, &["unpause", "vm", "manual"], "is not paused");

    kiln_ok(c, &ns, &["stop", "manual"]);
    c.wait_field(
        &ns,
        "vm/manual",
        "{.status.printableStatus}",
        "Stopped",
        TINY,
    );
    c.wait("manual's run is gone", TINY, || {
        c.get(&ns, "vmi/manual").is_none().then_some(())
    });
    kiln_err(c, &ns, &["stop", "manual"], "VM is not running");
    assert_eq!(
        c.field(&ns, "vm/manual", "{.spec.runStrategy}"),
        "Manual",
        "Manual stays Manual"
    );

    c.wait_field(
        &ns,
        "vm/always",
        "{.status.printableStatus}",
        "Running",
        TINY,
    );
    kiln_err(c, &ns, &["start", "always"], "VM is already running");
    kiln_ok(c, &ns, &["stop", "always"]);
    c.wait_field(
        &ns,
        "vm/always",
        "{.status.printableStatus}",
        "Stopped",
        TINY,
    );
    assert_eq!(c.field(&ns, "vm/always", "{.spec.runStrategy}"), "Halted");
    kiln_ok(c, &ns, &["start", "always"]);
    c.wait_field(
        &ns,
        "vm/always",
        "{.status.printableStatus}",
        "Running",
        TINY,
    );
    assert_eq!(c.field(&ns, "vm/always", "{.spec.runStrategy}"), "Always");
    let run = vmi_uid(c, &ns, "always");
    kiln_ok(c, &ns, &["restart", "always"]);
    let next = wait_new_run(c, &ns, "always", &run, TINY);

    // Deleting the VM stops its run and leaves nothing behind.
    assert_eq!(launcher_pods(c, &ns, &next).len(), 1);
    c.kubectl(&["delete", "-n", &ns, "vm/always", "--timeout=120s"]);
    assert!(c.get(&ns, "vmi/always").is_none());
    c.wait("always's pod and Secret are collected", TINY, || {
        let pods = launcher_pods(c, &ns, &next);
        let secrets = c.kubectl(&[
            "get",
            "secrets",
            "-n",
            &ns,
            "-l",
            &format!("kiln.dev/created-by={next}"),
            "-o",
            "name",
        ]);
        (pods.is_empty() && secrets.trim().is_empty()).then_some(())
    });
    c.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
