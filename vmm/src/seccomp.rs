//! seccomp filters, one allow-list per thread kind (main/event loop, vCPU, API server), compiled
//! at start-up from seccompiler's JSON format and installed before any guest code runs.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Cursor;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use devices::host_file::read_text;
use seccompiler::{BpfProgram, TargetArch};
use thiserror::Error;

/// The allow-lists shipped with kiln-vmm (`resources/seccomp/x86_64.json`; how they are derived
/// is in `resources/seccomp/README.md`).
const DEFAULT_FILTERS: &str = include_str!("../../resources/seccomp/x86_64.json");
/// The largest filter file read by `--seccomp-filter`.
const FILTER_FILE_LIMIT: u64 = 1 << 20;
/// kiln-vmm's exit status when a thread made a forbidden system call (Firecracker's too).
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// The kinds of thread, each with its own filter (the JSON document's top-level keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: before boot it configures, then it is the event loop (devices, API
    /// requests on the running VM, signals, the watchdog).
    Main,
    Vcpu,
    /// The HTTP API server.
    Api,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Api];

    pub fn key(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error(transparent)]
    File(#[from] devices::host_file::HostFileError),
    #[error("seccomp filter {origin}: {source}")]
    Compile {
        origin: String,
        source: seccompiler::Error,
    },
    #[error("seccomp filter {origin} has no filter for the {kind} threads")]
    Missing { origin: String, kind: &'static str },
    #[error("installing the seccomp filter of the {kind} thread: {source}")]
    Install {
        kind: &'static str,
        source: seccompiler::Error,
    },
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
}

/// Which filters to use (`--no-seccomp`, `--seccomp-filter FILE`, or the built-in ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeccompChoice {
    #[default]
    Default,
    None,
    File(PathBuf),
}

/// The compiled filters; cheap to clone into the threads that install them.
#[derive(Clone, Default)]
pub struct Filters(Option<Arc<HashMap<String, BpfProgram>>>);

impl Filters {
    /// Compiles the chosen filters (every thread kind must have one) and installs the SIGSYS
    /// handler that reports a forbidden call. Call once, before any thread is spawned.
    pub fn prepare(choice: &SeccompChoice) -> Result<Filters, SeccompError> {
        let (origin, json) = match choice {
            SeccompChoice::None => return Ok(Filters(None)),
            SeccompChoice::Default => ("built-in".to_string(), DEFAULT_FILTERS.to_string()),
            SeccompChoice::File(p) => (
                p.display().to_string(),
                read_text("seccomp filter", p, FILTER_FILE_LIMIT)?,
            ),
        };
        let map = compile(&origin, &json)?;
        install_sigsys_handler()?;
        one_malloc_arena();
        Ok(Filters(Some(Arc::new(map))))
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Locks the calling thread down: drops its capabilities and sets `no_new_privs` (also
    /// with `--no-seccomp`), then installs `kind`'s filter, which stays for the thread's life.
    pub fn install(&self, kind: ThreadKind, thread_name: &str) -> Result<(), SeccompError> {
        crate::privileges::drop_privileges()?;
        let Some(map) = &self.0 else {
            return Ok(());
        };
        let program = map.get(kind.key()).ok_or(SeccompError::Missing {
            origin: "compiled".into(),
            kind: kind.key(),
        })?;
        set_thread_name(thread_name);
        // The thread's first allocation (its thread cache, and an arena where there are more
        // than one): before the filter, not under it.
        drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
            kind: kind.key(),
            source,
        })
    }
}

/// glibc gives threads arenas of their own, and the first time one of those shrinks (a freed
/// request body of 64 KiB or more on the API thread) it opens /proc/sys/vm/overcommit_memory:
/// an `openat` no filter allows. One arena for the process (the main one, trimmed with `brk`)
/// never does. kiln-vmm has a handful of threads, so they hardly contend for it; musl, which
/// Firecracker builds with, has a single heap anyway.
fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        tracing::warn!("cannot limit malloc to one arena; a thread's heap trim may trip seccomp");
    }
}

fn compile(origin: &str, json: &str) -> Result<HashMap<String, BpfProgram>, SeccompError> {
    let map = seccompiler::compile_from_json(Cursor::new(json.as_bytes()), TargetArch::x86_64)
        .map_err(|source| SeccompError::Compile {
            origin: origin.into(),
            source,
        })?;
    for kind in ThreadKind::ALL {
        if !map.contains_key(kind.key()) {
            return Err(SeccompError::Missing {
                origin: origin.into(),
                kind: kind.key(),
            });
        }
    }
    Ok(map)
}

/// Whether `path` is a readable, valid filter file (for tests and `--seccomp-filter` checks).
pub fn check_file(path: &Path) -> Result<(), SeccompError> {
    let json = read_text("seccomp filter", path, FILTER_FILE_LIMIT)?;
    compile(&path.display().to_string(), &json).map(drop)
}

thread_local! {
    /// The thread's name as the SIGSYS handler reports it (set when its filter is installed).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

fn set_thread_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|c| c.set(buf));
}

/// Where the handler also writes its line and a metrics record: the log file and the metrics
/// file once the API named them (-1: none).
static LOG_FD: AtomicI32 = AtomicI32::new(-1);
static METRICS_FD: AtomicI32 = AtomicI32::new(-1);

/// Tells the SIGSYS handler where the log goes (after `PUT /logger`).
pub fn report_log_to(file: &impl AsRawFd) {
    keep_copy(&LOG_FD, file);
}

/// Tells the SIGSYS handler where metrics go (after `PUT /metrics`).
pub fn report_metrics_to(file: &impl AsRawFd) {
    keep_copy(&METRICS_FD, file);
}

/// The handler writes to a duplicate the caller cannot close under it (a closed and reused
/// descriptor could be a disk image); the previous duplicate is closed.
fn keep_copy(slot: &AtomicI32, file: &impl AsRawFd) {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller holds open.
    let copy = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return;
    }
    let old = slot.swap(copy, Ordering::AcqRel);
    if old >= 0 {
        // SAFETY: `old` is our own duplicate, used only by the handler.
        unsafe { libc::close(old) };
    }
}

/// A fixed buffer for formatting inside the signal handler (no allocation there).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    /// `before`, the thread's name, `between`, the call's number, `after`: the one shape both
    /// reports (the log line and the metrics record) have.
    fn report(before: &[u8], thread: &[u8], between: &[u8], number: u64, after: &[u8]) -> Line {
        let mut line = Line {
            buf: [0; 256],
            len: 0,
        };
        line.push(before);
        line.push(thread);
        line.push(between);
        line.push_number(number);
        line.push(after);
        line
    }
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }
    fn push_number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
    fn write_to(&self, fd: i32) {
        if fd >= 0 {
            // SAFETY: write(2) of a buffer we own; async-signal-safe.
            unsafe { libc::write(fd, self.buf.as_ptr().cast(), self.len) };
        }
    }
}

/// `siginfo_t` for SIGSYS: the system call number follows the three header ints, padding and
/// the faulting address (`_sigsys._syscall`, offset 24 on x86_64).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler; the field read is
    // inside it (siginfo_t is 128 bytes).
    let syscall = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let name = THREAD_NAME.with(|c| c.get());
    let name_len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    let thread = if name_len == 0 {
        &b"unnamed"[..]
    } else {
        &name[..name_len]
    };

    let line = Line::report(
        b"kiln-vmm: seccomp: thread ",
        thread,
        b" made system call ",
        syscall as u64,
        b", which its filter does not allow; exiting with status 148\n",
    );
    line.write_to(2);
    line.write_to(LOG_FD.load(Ordering::Relaxed));
    Line::report(
        b"{\"seccomp\":{\"num_faults\":1,\"thread\":\"",
        thread,
        b"\",\"syscall\":",
        syscall as u64,
        b"}}\n",
    )
    .write_to(METRICS_FD.load(Ordering::Relaxed));
    // SAFETY: _exit is async-signal-safe and ends the whole process.
    unsafe { libc::_exit(EXIT_BAD_SYSCALL) };
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction with our handler and an empty mask is valid.
    let r = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_filters_compile_for_every_thread_kind() {
        let map = compile("built-in", DEFAULT_FILTERS).unwrap();
        for kind in ThreadKind::ALL {
            assert!(map.contains_key(kind.key()), "{kind:?}");
        }
    }

    #[test]
    fn the_built_in_lists_never_allow_what_a_vmm_must_not_do() {
        let doc: serde_json::Value = serde_json::from_str(DEFAULT_FILTERS).unwrap();
        let forbidden = [
            "execve",
            "execveat",
            "fork",
            "vfork",
            "ptrace",
            "process_vm_writev",
            "kexec_load",
            "init_module",
            "finit_module",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "setuid",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "socket",
            "connect",
        ];
        for kind in ThreadKind::ALL {
            let rules = doc[kind.key()]["filter"].as_array().unwrap();
            for r in rules {
                let name = r["syscall"].as_str().unwrap();
                assert!(!forbidden.contains(&name), "{}: {name}", kind.key());
                // Threads are made only before the filters are on.
                assert!(!name.starts_with("clone"), "{}: {name}", kind.key());
            }
        }
        let vcpu: Vec<&str> = doc["vcpu"]["filter"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["syscall"].as_str())
            .collect();
        for opener in ["open", "openat", "openat2", "creat"] {
            assert!(
                !vcpu.contains(&opener),
                "a vCPU thread opens no file: {opener}"
            );
        }
    }

    #[test]
    fn a_file_without_every_thread_kind_is_refused() {
        let json =
            r#"{"main": {"default_action": "trap", "filter_action": "allow", "filter": []}}"#;
        let err = compile("f.json", json).unwrap_err().to_string();
        assert!(err.contains("has no filter for the vcpu threads"), "{err}");
        let err = compile("f.json", "{").unwrap_err().to_string();
        assert!(err.starts_with("seccomp filter f.json:"), "{err}");
    }
}
