//! Running kiln-vmm as a child process: output lines with arrival times, waiting for a line,
//! signals and timeouts. A run that is dropped kills its own child (by pid) and reaps it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug)]
pub struct Line {
    pub stream: Stream,
    /// Time since the process was spawned.
    pub at: Duration,
    pub text: String,
}

pub struct VmmRun {
    child: Child,
    pub spawned: Instant,
    lines: Receiver<Line>,
    /// Every line received so far.
    pub seen: Vec<Line>,
    status: Option<ExitStatus>,
}

fn pump(
    stream: impl Read + Send + 'static,
    kind: Stream,
    start: Instant,
    tx: std::sync::mpsc::Sender<Line>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if tx
                        .send(Line {
                            stream: kind,
                            at: start.elapsed(),
                            text,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}

impl VmmRun {
    /// Spawns `program` with `args`, stdin from /dev/null, stdout and stderr captured.
    pub fn spawn(program: &Path, args: &[String]) -> VmmRun {
        Self::spawn_with_input(program, args, None)
    }

    /// Like [`VmmRun::spawn`], with `input` written to the child's stdin (then kept open).
    pub fn spawn_with_input(program: &Path, args: &[String], input: Option<&[u8]>) -> VmmRun {
        Self::spawn_full(Command::new(program), args, input)
    }

    /// Like [`VmmRun::spawn`], and the child (only) inherits descriptor `fd` of this process
    /// under the same number, as a launcher hands a TAP to kiln-vmm.
    pub fn spawn_inheriting(program: &Path, args: &[String], fd: RawFd) -> VmmRun {
        let mut cmd = Command::new(program);
        // SAFETY: runs in the child between fork and exec; fcntl is async-signal-safe and only
        // clears close-on-exec on the descriptor the child is meant to inherit.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn_full(cmd, args, None)
    }

    fn spawn_full(mut cmd: Command, args: &[String], input: Option<&[u8]>) -> VmmRun {
        let spawned = Instant::now();
        let program = PathBuf::from(cmd.get_program());
        let mut child = cmd
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            let bytes = bytes.to_vec();
            // Written from a thread and held open, so the child never sees EOF first.
            thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
                thread::sleep(Duration::from_secs(600));
            });
        }
        let (tx, rx) = channel();
        if let Some(out) = child.stdout.take() {
            pump(out, Stream::Stdout, spawned, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump(err, Stream::Stderr, spawned, tx);
        }
        VmmRun {
            child,
            spawned,
            lines: rx,
            seen: Vec::new(),
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until a line containing `needle` arrives; `None` on timeout or end of output.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Option<Line> {
        if let Some(l) = self.seen.iter().find(|l| l.text.contains(needle)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.text.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return self.seen.last().cloned();
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None
                }
            }
        }
    }

    /// Collects output for `duration`.
    pub fn collect(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
    }

    /// How many lines seen so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.seen.iter().filter(|l| l.text.contains(needle)).count()
    }

    /// CPU time (user + system) of the child's thread named `name`, in clock ticks.
    pub fn thread_cpu_ticks(&self, name: &str) -> Option<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).ok()?;
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            return Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?);
        }
        None
    }

    /// Waits for the process to exit (collecting its remaining output); `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                // The pumps end at EOF; collect what is left.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return Some(status);
            }
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `socket` accepts connections; panics with the run's transcript if the child
    /// exits first (a seccomp kill, a bad flag) or `timeout` passes.
    pub fn wait_for_socket(&mut self, socket: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(status) = self.wait_exit(Duration::from_millis(5)) {
                panic!(
                    "kiln-vmm ended ({status}) before {} accepted connections:\n{}",
                    socket.display(),
                    self.transcript()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not accepting connections within {timeout:?}:\n{}",
                socket.display(),
                self.transcript()
            );
        }
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// All output so far, for assertion messages.
    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|l| format!("{:8.3} {:?} {}", l.at.as_secs_f64(), l.stream, l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The stderr lines so far, joined.
    pub fn stderr(&self) -> String {
        self.seen
            .iter()
            .filter(|l| l.stream == Stream::Stderr)
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for VmmRun {
    fn drop(&mut self) {
        let ended = self.status.is_some() || !matches!(self.child.try_wait(), Ok(None));
        if !ended {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test shows what its kiln-vmm said (a seccomp kill, a refused flag), even
        // when the assertion that failed was about something else.
        if thread::panicking() {
            while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line);
            }
            eprintln!(
                "--- kiln-vmm (pid {}) output:\n{}",
                self.child.id(),
                self.transcript()
            );
        }
    }
}
