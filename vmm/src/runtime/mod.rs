//! Running a built VM: vCPU threads, the event loop (exit requests, stop signals, console input,
//! watchdog), and an orderly stop.

mod console_input;
mod signals;
mod watchdog;

use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use thiserror::Error;
use tracing::{info, warn};
use vmm_sys_util::timerfd::TimerFd;

use console_input::ConsoleInput;
pub use console_input::TerminalMode;
pub use signals::StopSignals;
use watchdog::{kick, Watchdog, TICK};

use crate::builder::BuiltVm;
use crate::rpc_interface::runtime::{RuntimeApi, RuntimeController, VmHandles};
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::vm_exit::{ExitCoordinator, VmExit};
use crate::vstate::pause::PauseControl;
use crate::vstate::vcpu_loop::{register_kick_handler, run_vcpu, VcpuContext, VcpuHealth};

/// How long a stop waits for vCPU threads before giving up on them.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("setting up the event loop: {0}")]
    EventLoop(String),
    #[error("spawning vCPU thread: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Exit requests, stop signals and watchdog ticks.
struct Control {
    exits: Arc<ExitCoordinator>,
    signals: StopSignals,
    watchdog: Option<(Watchdog, TimerFd)>,
}

impl MutEventSubscriber for Control {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exits.event().as_raw_fd() {
            let _ = self.exits.event().read();
        } else if fd == self.signals.as_raw_fd() {
            while let Some(sig) = self.signals.read() {
                info!("received signal {sig}; stopping the VM");
                self.exits.request(VmExit::Signal(sig));
            }
        } else if let Some((dog, timer)) = &mut self.watchdog {
            if fd == timer.as_raw_fd() {
                let _ = timer.wait();
                if let Some(stuck) = dog.tick() {
                    self.exits.request(stuck);
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd: i32| {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                warn!("event loop: cannot watch fd {fd}: {e:?}");
            }
        };
        add(self.exits.event().as_raw_fd());
        add(self.signals.as_raw_fd());
        if let Some((_, timer)) = &self.watchdog {
            add(timer.as_raw_fd());
        }
    }
}

/// Runs `built` until it ends; returns why, and the API state if the API was on. `signals`
/// must have been installed before any thread was started (threads inherit the mask). A
/// `stuck_timeout` of `None` disables the watchdog. With `api`, requests are served on the
/// event loop while the VM runs (and the pending InstanceStart is answered once it does).
/// Every vCPU thread and then the main thread install their seccomp filter from `filters`
/// before the first guest instruction runs.
pub fn run_vm(
    built: BuiltVm,
    stuck_timeout: Option<Duration>,
    start: Instant,
    signals: StopSignals,
    api: Option<RuntimeApi>,
    filters: &Filters,
) -> Result<(VmExit, Option<RuntimeApi>), RunError> {
    let ev_err = |e: &dyn std::fmt::Debug| RunError::EventLoop(format!("{e:?}"));
    register_kick_handler().map_err(|e| ev_err(&e))?;

    let BuiltVm {
        vm,
        mem,
        vcpus,
        devices,
        exits,
        cmdline: _,
    } = built;
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(PauseControl::default());
    let mut threads: Vec<(JoinHandle<()>, Arc<VcpuHealth>)> = Vec::new();
    // The vCPUs wait here, filtered, until the main thread has installed its own filter.
    let gate = Arc::new(Barrier::new(vcpus.len() + 1));
    for vcpu in vcpus {
        let health = Arc::new(VcpuHealth::default());
        let ctx = VcpuContext {
            io: devices.io.clone(),
            exits: exits.clone(),
            stop: stop.clone(),
            health: health.clone(),
            pause: pause.clone(),
            mem: mem.clone(),
            start,
            filters: filters.clone(),
            gate: gate.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.index))
            .spawn(move || run_vcpu(vcpu, ctx))
            .map_err(RunError::Spawn)?;
        threads.push((handle, health));
    }

    let watchdog = match stuck_timeout {
        Some(timeout) => {
            let mut timer = TimerFd::new().map_err(|e| ev_err(&e))?;
            timer.reset(TICK, Some(TICK)).map_err(|e| ev_err(&e))?;
            let vcpus = threads
                .iter()
                .map(|(h, health)| (health.clone(), h.as_pthread_t()))
                .collect();
            Some((Watchdog::new(timeout, start, vcpus), timer))
        }
        None => None,
    };
    let control: Subscriber = Arc::new(Mutex::new(Control {
        exits: exits.clone(),
        signals,
        watchdog,
    }));
    let mut em = EventManager::<Subscriber>::new().map_err(|e| ev_err(&e))?;
    em.add_subscriber(control);
    if let Ok(console) = ConsoleInput::new(devices.serial.clone()) {
        em.add_subscriber(Arc::new(Mutex::new(console)));
    }
    for device in &devices.virtio {
        em.add_subscriber(device.clone());
    }
    let controller = api.map(|api| {
        let pthreads: Vec<libc::pthread_t> =
            threads.iter().map(|(h, _)| h.as_pthread_t()).collect();
        let handles = VmHandles {
            pause: pause.clone(),
            vcpu_count: pthreads.len(),
            kick_vcpus: Box::new(move || pthreads.iter().for_each(|t| kick(*t))),
            i8042: devices.i8042.clone(),
            blocks: devices.blocks.clone(),
            boot_time: devices.boot_time.clone(),
        };
        let c = Arc::new(Mutex::new(RuntimeController::new(api, handles)));
        em.add_subscriber(c.clone());
        c
    });

    let installed = filters.install(ThreadKind::Main, "main");
    if installed.is_err() {
        stop.store(true, Ordering::Release);
    }
    gate.wait();
    if let Err(e) = installed {
        stop_vcpus(&stop, threads);
        return Err(e.into());
    }
    if let Some(Ok(mut c)) = controller.as_ref().map(|c| c.lock()) {
        c.answer_start();
    }
    let outcome = loop {
        if let Some(outcome) = exits.outcome() {
            break outcome;
        }
        if let Err(e) = em.run() {
            warn!("event loop: {e:?}");
            break VmExit::VcpuFailure(format!("event loop failed: {e:?}"));
        }
    };

    stop_vcpus(&stop, threads);
    drop(vm);
    drop(em);
    let api = controller.and_then(|c| {
        let c = Arc::try_unwrap(c).ok()?;
        Some(c.into_inner().unwrap_or_else(|p| p.into_inner()).into_api())
    });
    Ok((outcome.classify(&mem), api))
}

/// Asks every vCPU thread to stop, kicking until it leaves KVM_RUN, and joins those that do.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<(JoinHandle<()>, Arc<VcpuHealth>)>) {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + STOP_GRACE;
    let mut remaining = threads;
    loop {
        let (done, running): (Vec<_>, Vec<_>) =
            remaining.into_iter().partition(|(h, _)| h.is_finished());
        for (h, _) in done {
            let _ = h.join();
        }
        remaining = running;
        if remaining.is_empty() || Instant::now() >= deadline {
            break;
        }
        for (h, _) in &remaining {
            kick(h.as_pthread_t());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if !remaining.is_empty() {
        warn!(
            "{} vCPU thread(s) did not leave KVM_RUN within {:?}; exiting without them",
            remaining.len(),
            STOP_GRACE
        );
    }
}
