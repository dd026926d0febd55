//! The development cluster as the end-to-end tests drive it: `cluster up` in a folder of the
//! test's own, `kubectl` (and the `kubectl kiln` plugin) as a user runs them, JSON reads, and
//! waiting for a condition with a message that says what was awaited and what was seen last.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::boot_slots::BootSlots;
use crate::{guest_dir, kiln_vmm, scratch_dir, workspace_root};

pub struct Cluster {
    pub dir: PathBuf,
    /// Where `up` found Kubernetes' binaries (kubectl among them).
    bins: PathBuf,
    /// Linux guests booting at once in this cluster's tests.
    pub boots: BootSlots,
}

/// Stdout of a finished command, which must have succeeded.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A VirtualMachine (runStrategy Always, label `app: NAME`) of Kiln's guest from its
/// containerDisk with `user_data` as its NoCloud user-data; `devices` and `spec` are YAML lines
/// added under `domain.devices` (indented 10) and the template's spec (indented 6).
pub fn linux_vm_with_user_data(name: &str, devices: &str, spec: &str, user_data: &str) -> String {
    let user_data: String = user_data
        .lines()
        .map(|l| format!("            {l}\n"))
        .collect();
    format!(
        r#"apiVersion: kiln.dev/v1alpha1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Always
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      domain:
        memory: {{guest: 128Mi}}
        resources: {{requests: {{cpu: 100m}}}}
        devices:
          disks:
          - {{name: root, disk: {{bus: virtio}}}}
          - {{name: cloudinit, disk: {{bus: virtio}}}}
{devices}
      terminationGracePeriodSeconds: 5
{spec}
      volumes:
      - {{name: root, containerDisk: {{image: kiln.local/containerdisks/kiln-guest:latest}}}}
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
{user_data}"#
    )
}

impl Cluster {
    /// `cluster up` in a fresh folder named after `name`; `down` when dropped.
    pub fn up(name: &str) -> Cluster {
        let mut c = Cluster {
            dir: scratch_dir(name),
            bins: PathBuf::new(),
            boots: BootSlots::from_env(),
        };
        ok(&c.script(&["up"]), "cluster up");
        let folder = std::fs::read_to_string(c.dir.join("bin-folder")).unwrap_or_default();
        c.bins = PathBuf::from(folder.trim());
        c
    }

    /// `load-images`, then Kiln installed as its README says (`kubectl apply -k
    /// resources/deploy`), until both controller replicas are ready and one holds the lease.
    /// Returns the leading pod's name.
    pub fn install_kiln(&self) -> String {
        ok(&self.script(&["load-images"]), "cluster load-images");
        let deploy = workspace_root().join("resources/deploy");
        self.kubectl(&[
            "apply",
            "--server-side",
            "-k",
            &deploy.display().to_string(),
        ]);
        self.wait_field(
            "kiln-system",
            "deploy/kiln-controller",
            "{.status.readyReplicas}",
            "2",
            Duration::from_secs(180),
        );
        self.leader()
    }

    /// The pod of the controller replica that leads (the lease names it).
    pub fn leader(&self) -> String {
        self.wait(
            "a controller holds the lease",
            Duration::from_secs(60),
            || {
                let h = self.field(
                    "kiln-system",
                    "lease/kiln-controller",
                    "{.spec.holderIdentity}",
                );
                (!h.is_empty()).then_some(h)
            },
        )
    }

    /// The cluster script with this cluster's folder and the binaries under test (so that
    /// `load-images` packs them instead of building).
    pub fn script(&self, args: &[&str]) -> Output {
        let bin = kiln_vmm();
        Command::new(workspace_root().join("resources/cluster/cluster"))
            .args(args)
            .env("KILN_CLUSTER_DIR", &self.dir)
            .env("KILN_VMM", &bin)
            .env("KILN_BIN", bin.parent().unwrap_or(Path::new(".")))
            .env("KILN_GUEST_DIR", guest_dir())
            .output()
            .expect("running resources/cluster/cluster")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The kubectl `up` built (Kubernetes' own, of the cluster's version).
    pub fn kubectl_path(&self) -> PathBuf {
        self.bins.join("kubectl")
    }

    /// kubectl with this cluster's admin kubeconfig; the raw result.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.kubectl_path());
        cmd.arg("--kubeconfig").arg(self.kubeconfig()).args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running kubectl");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(text.as_bytes());
        }
        child.wait_with_output().expect("waiting for kubectl")
    }

    /// kubectl, which must succeed; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        ok(
            &self.run(args, None),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// `kubectl apply -n NS -f -` of `yaml`.
    pub fn apply(&self, ns: &str, yaml: &str) -> String {
        ok(
            &self.run(&["apply", "-n", ns, "-f", "-"], Some(yaml)),
            &format!("kubectl apply -n {ns}:\n{yaml}"),
        )
    }

    /// An object as JSON, or None if it does not exist.
    pub fn get(&self, ns: &str, what: &str) -> Option<Value> {
        let out = self.run(&["get", "-n", ns, what, "-o", "json"], None);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A JSONPath of an object ("" if it or the field is missing).
    pub fn field(&self, ns: &str, what: &str, path: &str) -> String {
        let out = self.run(
            &["get", "-n", ns, what, "-o", &format!("jsonpath={path}")],
            None,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `kubectl kiln` plugin, with this cluster's kubeconfig.
    pub fn kiln(&self, ns: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = self
            .kiln_command(ns, args)
            .spawn()
            .expect("running kubectl-kiln");
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(bytes);
        }
        child.wait_with_output().expect("waiting for kubectl-kiln")
    }

    fn kiln_command(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(kiln_vmm().with_file_name("kubectl-kiln"));
        cmd.env("KUBECONFIG", self.kubeconfig())
            .arg("-n")
            .arg(ns)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// `kubectl kiln console VMI`: types `command` (and then an `echo` of an end mark) on the
    /// guest's serial console, reads until the guest has printed the mark, then detaches.
    /// Returns what the guest printed.
    pub fn console_session(&self, ns: &str, vmi: &str, command: &str, limit: Duration) -> String {
        use std::io::Read;
        let mut child = self
            .kiln_command(ns, &["console", vmi])
            .spawn()
            .expect("running kubectl-kiln");
        let mut stdin = child.stdin.take().expect("console stdin");
        let mut stdout = child.stdout.take().expect("console stdout");
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        // The shell echoes each character through an emulated kernel: give it the line and
        // let it catch up.
        // The shell prints the mark evaluated, which the echo of what was typed is not.
        let line = format!("{command}; echo KILN-TEST-$((40+2))\n");
        let _ = stdin.write_all(line.as_bytes());
        let _ = stdin.flush();
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        let want = "KILN-TEST-42";
        while Instant::now() < deadline {
            if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.extend(chunk);
            }
            let text = String::from_utf8_lossy(&seen);
            if text.contains(want) {
                break;
            }
        }
        drop(stdin);
        let out = child.wait_with_output().expect("waiting for kubectl-kiln");
        let text = String::from_utf8_lossy(&seen).into_owned();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains(want),
            "{ns}/{vmi}: the console did not answer {command:?} within {limit:?}:\n{text}\n{err}"
        );
        assert!(
            err.contains(&format!("Successfully connected to {vmi} console")),
            "{err}"
        );
        text
    }

    /// A namespace for one part of a test (created if missing).
    pub fn namespace(&self, ns: &str) -> String {
        self.apply(
            "default",
            &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"),
        );
        ns.to_string()
    }

    /// Waits up to `limit` for `check` to give a value; panics with `what` and the last
    /// `describe` otherwise.
    pub fn wait<T>(&self, what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("{what}: not within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for a JSONPath of an object to read `want`; the time it took.
    pub fn wait_field(
        &self,
        ns: &str,
        what: &str,
        path: &str,
        want: &str,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        let deadline = start + limit;
        loop {
            let got = self.field(ns, what, path);
            if got == want {
                return start.elapsed();
            }
            if Instant::now() > deadline {
                let describe = self.run(&["describe", "-n", ns, what], None);
                let all = self.run(&["get", "-n", ns, "vm,vmi,pods", "-o", "wide"], None);
                let events = self.run(
                    &["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
                    None,
                );
                // A VMI's launcher log (its probes, DHCP, the guest's console) says why.
                let launcher = what
                    .strip_prefix("vmi/")
                    .map(|vmi| self.console(ns, vmi))
                    .unwrap_or_default();
                let tail: Vec<&str> = launcher.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{ns}/{what} {path}: want {want:?}, still {got:?} after {limit:?}\n{}\n{}\n{}\n{}",
                    tail.join("\n"),
                    String::from_utf8_lossy(&describe.stdout),
                    String::from_utf8_lossy(&all.stdout),
                    String::from_utf8_lossy(&events.stdout),
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The name of the VMI's launcher pod, as its status gives it ("" when there is none).
    pub fn launcher_pod(&self, ns: &str, vmi: &str) -> String {
        self.field(ns, &format!("vmi/{vmi}"), "{.status.launcherPod}")
    }

    /// The host processes of pod `pod` (this cluster is one node: its containers' processes
    /// are this machine's), found by the pod's UID in their cgroup: (command name,
    /// `/proc/PID/status`).
    pub fn pod_processes(&self, ns: &str, pod: &str) -> Vec<(String, String)> {
        let uid = self.field(ns, &format!("pod/{pod}"), "{.metadata.uid}");
        assert!(!uid.is_empty(), "pod {ns}/{pod} has no UID");
        let systemd_style = uid.replace('-', "_");
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
            let dir = entry.path();
            let Ok(cgroup) = std::fs::read_to_string(dir.join("cgroup")) else {
                continue; // not a process, or it ended
            };
            if !cgroup.contains(&uid) && !cgroup.contains(&systemd_style) {
                continue;
            }
            let (Ok(comm), Ok(status)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("status")),
            ) else {
                continue;
            };
            found.push((comm.trim().to_string(), status));
        }
        found
    }

    /// The console log (`kubectl logs`) of a VMI's launcher pod.
    pub fn console(&self, ns: &str, vmi: &str) -> String {
        let pod = self.launcher_pod(ns, vmi);
        let out = self.run(&["logs", "-n", ns, &pod, "-c", "compute"], None);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the VMI's console shows `needle`.
    pub fn wait_console(&self, ns: &str, vmi: &str, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let last = self.console(ns, vmi);
            if last.contains(needle) {
                return last;
            }
            if Instant::now() > deadline {
                panic!("{ns}/{vmi}: no {needle:?} on the console within {limit:?}:\n{last}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}
