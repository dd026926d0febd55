//! The common boot images (issue 13): the Kiln object's enableCommonBootImageImport keeps
//! DataImportCrons kiln-guest and debian in kiln-os-images, readable by every user; a Debian 12
//! VM made the one-click way (`kubectl kiln create vm --datasource debian`) boots with its
//! cloud-init user-data applied and takes SSH from a pod; the gate off removes the crons and
//! their DataSources while the VM keeps its own disk.

use std::process::Command;
use std::time::Duration;

use kiln_tests::kube::{ok, Cluster};

use super::BOOT;

const IMAGES: &str = "kiln-os-images";
/// The Debian image's import (1 GiB of filesystem, a gzip layer) beside the other parts.
const IMPORT: Duration = Duration::from_secs(600);

fn ssh_from_pod(c: &Cluster, ns: &str, ip: &str, command: &str) -> String {
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: ssh-client}}
spec:
  restartPolicy: Never
  containers:
  - name: ssh
    image: kiln.local/openssh-client:dev
    imagePullPolicy: IfNotPresent
    args: ["-i", "/key/id", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "ConnectTimeout=60", "-o", "ConnectionAttempts=5", "-o", "BatchMode=yes",
           "debian@{ip}", {command:?}]
    volumeMounts: [{{name: key, mountPath: /key}}]
  volumes: [{{name: key, secret: {{secretName: ssh-key, defaultMode: 0400}}}}]
"#
    );
    c.apply(ns, &pod);
    c.wait("the ssh client pod ends", BOOT, || {
        let phase = c.field(ns, "pod/ssh-client", "{.status.phase}");
        (phase == "Succeeded" || phase == "Failed").then_some(phase)
    });
    c.kubectl(&["logs", "-n", ns, "ssh-client"])
}

pub fn common_boot_images(c: &Cluster) {
    // The controller made the Kiln object with its defaults, and the crons it owns.
    c.wait_field(
        "default",
        "kiln/kiln",
        "{.status.dataImportCronTemplates[1].name}",
        "debian",
        Duration::from_secs(120),
    );
    for image in ["kiln-guest", "debian"] {
        let cron = format!("dataimportcron/{image}-image-cron");
        assert_eq!(
            c.field(IMAGES, &cron, "{.metadata.ownerReferences[0].kind}"),
            "Kiln"
        );
        assert_eq!(c.field(IMAGES, &cron, "{.spec.managedDataSource}"), image);
    }
    assert_eq!(
        c.field(
            IMAGES,
            "rolebinding/os-images.kiln.dev:view",
            "{.subjects[0].name}"
        ),
        "system:authenticated"
    );
    c.wait_field(
        IMAGES,
        "datasource/debian",
        "{.status.conditions[?(@.type=='Ready')].status}",
        "True",
        IMPORT,
    );
    c.wait_field(
        "default",
        "kiln/kiln",
        "{.status.conditions[?(@.type=='CommonBootImagesReady')].status}",
        "True",
        IMPORT,
    );

    // A user's Debian VM, the one-click way, with a key pair made here.
    let ns = c.namespace("debian");
    let key = c.dir.join("debian-ssh-key");
    let _ = std::fs::remove_file(&key);
    ok(
        &Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .unwrap(),
        "ssh-keygen",
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "-n",
        &ns,
        "ssh-key",
        &format!("--from-file=id={}", key.display()),
    ]);
    let user_data = c.dir.join("debian-user-data");
    std::fs::write(
        &user_data,
        format!(
            "#cloud-config\nhostname: deb-cloud\nssh_authorized_keys:\n  - {}\nwrite_files:\n  - path: /var/tmp/kiln-written\n    content: \"written by cloud-init\\n\"\n    permissions: '0644'\nruncmd:\n  - echo KILN_RUNCMD_RAN > /dev/console\n",
            public.trim()
        ),
    )
    .unwrap();
    // Every boot slot: Debian's user space takes minutes of emulated page faults here, and
    // stalls for many more beside other booting guests (the other parts' boots wait meanwhile).
    let slot = c.boots.take(usize::MAX);
    let created = c.kiln(
        &ns,
        &[
            "create",
            "vm",
            "deb",
            "--datasource",
            "debian",
            "--size",
            "2Gi",
            "--cloud-init-user-data",
            &user_data.display().to_string(),
            "--apply",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&created.stderr).into_owned();
    ok(&created, "kubectl kiln create vm --datasource debian");
    assert!(
        stderr.contains("kiln-os-images"),
        "the common image is named: {stderr}"
    );
    c.wait_field(&ns, "vm/deb", "{.status.printableStatus}", "Running", BOOT);
    let console = c.wait_console(&ns, "deb", "KILN_DEBIAN_READY", 2 * BOOT);
    drop(slot);
    // Where the boot's time went (guest uptime stamps of rcS and kiln-nocloud), for the log.
    for line in console.lines().filter(|l| {
        l.contains("Run /sbin/init") || l.contains("] kiln") || l.contains("KILN_DEBIAN_READY")
    }) {
        eprintln!("debian boot: {line}");
    }
    for needle in [
        "kiln-nocloud: hostname deb-cloud",
        "kiln-nocloud: wrote /var/tmp/kiln-written",
        "KILN_RUNCMD_RAN",
        "KILN_DEBIAN_READY debian-12",
    ] {
        assert!(
            console.contains(needle),
            "{needle} in the console:\n{console}"
        );
    }
    let ip = c.field(&ns, "vmi/deb", "{.status.interfaces[0].ipAddress}");
    assert!(!ip.is_empty(), "the VMI reports its address");
    let out = ssh_from_pod(
        c,
        &ns,
        &ip,
        "hostname; cat /var/tmp/kiln-written /etc/kiln-image-version; sudo -n id -u",
    );
    for needle in ["deb-cloud", "written by cloud-init", "debian-12", "\n0"] {
        assert!(out.contains(needle), "{needle:?} over SSH:\n{out}");
    }

    // The gate off (the example): the crons, their DataSources and imports go; the VM keeps
    // its disk.
    let off = kiln_tests::workspace_root().join("resources/examples/kiln/boot-images-off.yaml");
    c.kubectl(&["apply", "-f", &off.display().to_string()]);
    c.wait(
        "the boot images' crons and DataSources removed",
        Duration::from_secs(120),
        || {
            let left = c.kubectl(&[
                "get",
                "-n",
                IMAGES,
                "dataimportcrons,datasources",
                "-o",
                "name",
            ]);
            left.trim().is_empty().then_some(())
        },
    );
    assert_eq!(
        c.field(
            "default",
            "kiln/kiln",
            "{.status.conditions[?(@.type=='CommonBootImagesReady')].reason}"
        ),
        "Disabled"
    );
    assert_eq!(c.field(&ns, "dv/deb-root", "{.status.phase}"), "Succeeded");
    assert_eq!(c.field(&ns, "vmi/deb", "{.status.phase}"), "Running");
    stops_cleanly(c, &ns);
}

/// Deleting the VM shuts Debian down through its own init (the launcher's Ctrl-Alt-Del, turned
/// into init's reboot request by kiln-ctrl-alt-del) within its grace period (the default 30 s): rcK
/// runs, and the launcher never has to stop kiln-vmm itself.
fn stops_cleanly(c: &Cluster, ns: &str) {
    let pod = c.launcher_pod(ns, "deb");
    // The whole log to its end, streamed: the pod and its log are gone soon after.
    let follow = std::process::Command::new(c.kubectl_path())
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["logs", "-f", "-n", ns, &pod, "-c", "compute", "--since=1s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let started = std::time::Instant::now();
    c.kubectl(&["delete", "-n", ns, "vm/deb", "--wait=false"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(follow.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(150))
        .unwrap_or_else(|_| panic!("{ns}/deb still running 150 s after its deletion"))
        .expect("kubectl logs -f");
    let log = String::from_utf8_lossy(&out.stdout);
    eprintln!("debian: stopped in {:.0?}", started.elapsed());
    assert!(
        log.contains("KILN_DEBIAN_SHUTDOWN on deb-cloud"),
        "rcK ran:\n{log}"
    );
    assert!(
        !log.contains("did not shut down within its grace period"),
        "{log}"
    );
}
