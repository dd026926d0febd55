//! Attaches Kiln's platform and virtio devices to the I/O buses and wires their interrupts to KVM.

mod blocks;
mod virtio;

pub use blocks::{BlockDevices, DriveUpdateError};
pub use virtio::{DeviceSubscriber, VirtioSetupError};

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::legacy::{
    DebugExit, SerialConsole, COM1_IRQ, COM1_PORT, DEBUG_EXIT_PORT, I8042, I8042_DATA_PORT,
    I8042_PORT_COUNT, KEYBOARD_IRQ, SERIAL_PORT_COUNT,
};
use devices::pseudo::{BootTime, BootTimer};
use devices::EventFdTrigger;
use thiserror::Error;
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::layout::{BOOT_TIMER_SIZE, BOOT_TIMER_START};
use crate::resources::VmResources;
use crate::vm_exit::ExitCoordinator;
use crate::vmm_config::SerialConfig;
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("cannot open serial output {path}: {source}")]
    SerialOutput {
        path: String,
        source: std::io::Error,
    },
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("bus range for {0}: {1:?}")]
    Bus(&'static str, vm_device::bus::Error),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Virtio(#[from] VirtioSetupError),
}

/// The devices the VMM talks to after boot.
pub struct PlatformDevices {
    pub io: Arc<IoManager>,
    pub serial: Arc<Mutex<SerialConsole>>,
    /// Filled by the boot timer when the guest signals it (if the device is enabled).
    pub boot_time: Arc<BootTime>,
    /// Event handlers of the virtio devices (queues and backends).
    pub virtio: Vec<DeviceSubscriber>,
    /// The block devices by drive id (post-boot drive updates).
    pub blocks: BlockDevices,
    /// The keyboard controller (Ctrl-Alt-Del).
    pub i8042: Arc<Mutex<I8042>>,
}

fn serial_sink(cfg: &SerialConfig) -> Result<Box<dyn Write + Send>, DeviceError> {
    Ok(match cfg {
        // Unbuffered: a prompt without a newline must show at once.
        SerialConfig::Stdout => Box::new(std::fs::File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DeviceError::SerialOutput {
                    path: "stdout".into(),
                    source,
                })?,
        )),
        SerialConfig::Null => Box::new(std::io::sink()),
        SerialConfig::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| DeviceError::SerialOutput {
                    path: path.display().to_string(),
                    source,
                })?,
        ),
    })
}

/// Creates ttyS0, the i8042, the debug-exit port, (optionally) the boot timer, and the virtio
/// devices `res` describes.
pub fn attach_devices(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    res: &VmResources,
    exits: Arc<ExitCoordinator>,
    start: Instant,
) -> Result<PlatformDevices, DeviceError> {
    let mut io = IoManager::new();
    let serial_cfg = &res.serial;

    let serial_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&serial_evt, COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        EventFdTrigger::new(serial_evt),
        serial_sink(serial_cfg)?,
    )));
    let range = |base: u16, len: u16, what| {
        PioRange::new(PioAddress(base), len).map_err(|e| DeviceError::Bus(what, e))
    };
    io.register_pio(
        range(COM1_PORT, SERIAL_PORT_COUNT, "serial")?,
        serial.clone(),
    )
    .map_err(|e| DeviceError::Bus("serial", e))?;

    let kbd_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&kbd_evt, KEYBOARD_IRQ)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        exits.clone(),
        EventFdTrigger::new(kbd_evt),
    )));
    io.register_pio(
        range(I8042_DATA_PORT, I8042_PORT_COUNT, "i8042")?,
        i8042.clone(),
    )
    .map_err(|e| DeviceError::Bus("i8042", e))?;

    let debug_exit = Arc::new(Mutex::new(DebugExit::new(exits)));
    io.register_pio(range(DEBUG_EXIT_PORT, 4, "debug-exit")?, debug_exit)
        .map_err(|e| DeviceError::Bus("debug-exit", e))?;

    let boot_time = BootTime::new().map_err(DeviceError::EventFd)?;
    if res.boot_timer {
        let timer = Arc::new(Mutex::new(BootTimer::new(start, boot_time.clone())));
        let r = MmioRange::new(MmioAddress(BOOT_TIMER_START), BOOT_TIMER_SIZE)
            .map_err(|e| DeviceError::Bus("boot timer", e))?;
        io.register_mmio(r, timer)
            .map_err(|e| DeviceError::Bus("boot timer", e))?;
    }

    let (virtio, blocks) = virtio::attach_virtio_devices(vm, &mut io, mem, res)?;
    Ok(PlatformDevices {
        io: Arc::new(io),
        serial,
        boot_time,
        virtio,
        blocks,
        i8042,
    })
}
