//! A private network namespace for networking tests: a TAP with a host address inside it, so
//! tests never touch the host's own interfaces. Removed (with everything in it) on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

pub struct NetNs {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates namespace `name` with loopback up.
    pub fn new(name: &str) -> NetNs {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        let ns = NetNs { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    /// Creates namespace `name` with loopback up and TAP `tap` at `host_cidr`, up.
    pub fn with_tap(name: &str, tap: &str, host_cidr: &str) -> NetNs {
        let ns = NetNs::new(name);
        ns.add_tap(tap, host_cidr);
        ns
    }

    /// Adds TAP `tap` at `host_cidr`, up.
    pub fn add_tap(&self, tap: &str, host_cidr: &str) {
        ip(&["-n", &self.name, "tuntap", "add", tap, "mode", "tap"]);
        self.configure(tap, host_cidr);
    }

    /// Gives existing interface `dev` the address `host_cidr` and brings it up.
    pub fn configure(&self, dev: &str, host_cidr: &str) {
        ip(&["-n", &self.name, "addr", "add", host_cidr, "dev", dev]);
        ip(&["-n", &self.name, "link", "set", dev, "up"]);
    }

    /// Whether interface `dev` exists in the namespace.
    pub fn has_link(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", dev])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `ip netns exec <ns>` followed by `cmd`: the argument list to run a program inside.
    pub fn exec_args(&self, cmd: &[String]) -> Vec<String> {
        let mut args = vec!["netns".into(), "exec".into(), self.name.clone()];
        args.extend(cmd.iter().cloned());
        args
    }

    /// Runs `f` on a new thread that has joined the namespace (sockets it opens live there).
    pub fn spawn_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            join_netns(&path);
            f()
        })
    }

    /// The namespace's file, for [`in_netns`].
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

/// Moves the calling thread into the network namespace at `path` (a /run/netns file or a
/// process's /proc/PID/ns/net).
fn join_netns(path: &str) {
    let ns = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a namespace fd we opened; it affects only this thread.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Runs `f` to its end on a thread inside the network namespace at `path` (a /run/netns file
/// or /proc/PID/ns/net of a pod's process); `f` may borrow from the caller.
pub fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            join_netns(path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
