//! Host standard input to the guest's serial port, with the terminal in character mode.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::SerialConsole;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, warn};
use vmm_sys_util::timerfd::TimerFd;

const STDIN: RawFd = libc::STDIN_FILENO;
/// How soon to retry when the guest's receive FIFO is full.
const RETRY: Duration = Duration::from_millis(10);

/// Puts a terminal on stdin into character mode (no line buffering, no echo; Ctrl-C still
/// signals kiln-vmm) and restores it when dropped.
pub struct TerminalMode {
    saved: Option<libc::termios>,
}

impl TerminalMode {
    pub fn enter() -> TerminalMode {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(STDIN) } != 1 {
            return TerminalMode { saved: None };
        }
        // SAFETY: termios is plain data filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and pointer.
        if unsafe { libc::tcgetattr(STDIN, &mut t) } != 0 {
            return TerminalMode { saved: None };
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: valid fd and pointer.
        unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &t) };
        TerminalMode { saved: Some(saved) }
    }
}

impl Drop for TerminalMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restoring the attributes read in `enter`.
            unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &t) };
        }
    }
}

/// Event subscriber: reads stdin and feeds the serial receive FIFO, holding back what does
/// not fit until the guest has read some.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialConsole>>,
    pending: VecDeque<u8>,
    retry: TimerFd,
    stdin_open: bool,
}

impl ConsoleInput {
    pub fn new(serial: Arc<Mutex<SerialConsole>>) -> io::Result<ConsoleInput> {
        Ok(ConsoleInput {
            serial,
            pending: VecDeque::new(),
            retry: TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?,
            stdin_open: true,
        })
    }

    fn flush_pending(&mut self) {
        let Ok(mut serial) = self.serial.lock() else {
            return;
        };
        let (a, b) = self.pending.as_slices();
        let mut taken = serial.enqueue_input(a);
        if taken == a.len() {
            taken += serial.enqueue_input(b);
        }
        self.pending.drain(..taken);
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reading into a local buffer of the given size.
        let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            let err = io::Error::last_os_error();
            if n < 0 && err.kind() == io::ErrorKind::Interrupted {
                return;
            }
            debug!("stdin closed; no more console input");
            self.stdin_open = false;
            let _ = ops.remove(Events::empty_raw(STDIN));
            return;
        }
        self.pending.extend(&buf[..n as usize]);
        self.flush_pending();
    }

    fn arm_retry(&mut self, ops: &mut EventOps) {
        if self.pending.is_empty() {
            return;
        }
        // While input is held back, stop reading stdin so the backlog stays bounded.
        if self.stdin_open {
            let _ = ops.remove(Events::empty_raw(STDIN));
        }
        if let Err(e) = self.retry.reset(RETRY, None) {
            warn!("console input retry timer: {e}");
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == STDIN {
            self.read_stdin(ops);
        } else if events.fd() == self.retry.as_raw_fd() {
            let _ = self.retry.wait();
            self.flush_pending();
            if self.pending.is_empty() && self.stdin_open {
                let _ = ops.add(Events::new_raw(STDIN, EventSet::IN));
            }
        }
        self.arm_retry(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(STDIN, EventSet::IN)) {
            // Regular files and some descriptors cannot be polled: the guest gets no input.
            debug!("console input disabled: {e:?}");
            self.stdin_open = false;
        }
        if let Err(e) = ops.add(Events::new(&self.retry, EventSet::IN)) {
            warn!("console input retry timer not registered: {e:?}");
        }
    }
}
