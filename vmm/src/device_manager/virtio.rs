//! Creates the VM's virtio devices from their configs and puts each on the MMIO bus: register
//! window, one ioeventfd per queue on QueueNotify, one irqfd for its interrupt line.

use std::sync::{Arc, Mutex};

use devices::virtio::block::{Block, DiskError, DiskImage};
use devices::virtio::net::{Net, Tap, TapError};
use devices::virtio::rng::Rng;
use devices::virtio::{
    MmioTransport, VirtioDevice, VirtioInterrupt, MMIO_SIZE, QUEUE_NOTIFY_OFFSET,
};
use devices::EventFdTrigger;
use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use thiserror::Error;
use tracing::info;
use vm_device::bus::{MmioAddress, MmioRange};
use vm_device::device_manager::{IoManager, MmioManager};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::blocks::BlockDevices;
use crate::arch::x86_64::layout::virtio_slot;
use crate::resources::{VirtioDeviceConfig, VmResources};
use crate::vmm_config::{CacheType, NetConfig, TapBackend};
use crate::vstate::vm::{Vm, VmError};

/// A device's event handler, for the VMM's event loop.
pub type DeviceSubscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, Error)]
pub enum VirtioSetupError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("virtio device at {base:#x}: KVM_IOEVENTFD: {source}")]
    IoEvent {
        base: u64,
        source: kvm_ioctls::Error,
    },
    #[error("virtio device at {base:#x}: bus: {source:?}")]
    Bus {
        base: u64,
        source: vm_device::bus::Error,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// Every virtio device `res` describes, attached to `io`; returns their event handlers and
/// handles on the block devices.
pub fn attach_virtio_devices(
    vm: &Vm,
    io: &mut IoManager,
    mem: &GuestMemoryMmap,
    res: &VmResources,
) -> Result<(Vec<DeviceSubscriber>, BlockDevices), VirtioSetupError> {
    let mut subscribers = Vec::new();
    let mut blocks = BlockDevices::default();
    for (index, cfg) in res.virtio_devices().enumerate() {
        let slot = virtio_slot(index);
        let sub = match cfg {
            VirtioDeviceConfig::Drive(d) => {
                let disk = DiskImage::open(&d.path_on_host, d.is_read_only, d.serial.as_deref())?;
                info!(
                    "virtio-blk at {:#x}: {} ({} MiB{})",
                    slot.0,
                    d.path_on_host.display(),
                    disk.sectors() >> 11,
                    if d.is_read_only { ", read-only" } else { "" }
                );
                let flush = d.cache_type == CacheType::Writeback;
                let dev = Block::with_flush(disk, flush).map_err(VirtioSetupError::EventFd)?;
                let dev = attach(vm, io, mem, slot, dev)?;
                blocks.0.push((d.drive_id.clone(), dev.clone()));
                dev as DeviceSubscriber
            }
            VirtioDeviceConfig::Net(n) => {
                let tap = open_tap(n)?;
                info!("virtio-net at {:#x}: TAP {}", slot.0, tap.name());
                let dev = Net::new(tap, n.guest_mac).map_err(VirtioSetupError::EventFd)?;
                attach(vm, io, mem, slot, dev)? as DeviceSubscriber
            }
            VirtioDeviceConfig::Entropy => {
                let dev = Rng::new().map_err(VirtioSetupError::EventFd)?;
                attach(vm, io, mem, slot, dev)? as DeviceSubscriber
            }
        };
        subscribers.push(sub);
    }
    Ok((subscribers, blocks))
}

fn open_tap(cfg: &NetConfig) -> Result<Tap, TapError> {
    match &cfg.tap {
        TapBackend::Name(name) => Tap::open_named(name),
        TapBackend::Fd(fd) => Tap::from_fd(*fd),
    }
}

fn attach<D>(
    vm: &Vm,
    io: &mut IoManager,
    mem: &GuestMemoryMmap,
    (base, irq): (u64, u32),
    device: D,
) -> Result<Arc<Mutex<D>>, VirtioSetupError>
where
    D: VirtioDevice + MutEventSubscriber + 'static,
{
    let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(VirtioSetupError::EventFd)?;
    vm.register_irqfd(&irq_evt, irq)?;
    let interrupt = Arc::new(VirtioInterrupt::new(EventFdTrigger::new(irq_evt)));
    let notify = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
    for (queue, evt) in device.queue_events().iter().enumerate() {
        vm.fd()
            .register_ioevent(evt, &notify, queue as u32)
            .map_err(|source| VirtioSetupError::IoEvent { base, source })?;
    }
    let device = Arc::new(Mutex::new(device));
    let transport = MmioTransport::new(device.clone(), mem.clone(), interrupt);
    let bus = |source| VirtioSetupError::Bus { base, source };
    let range = MmioRange::new(MmioAddress(base), MMIO_SIZE).map_err(bus)?;
    io.register_mmio(range, Arc::new(Mutex::new(transport)))
        .map_err(bus)?;
    Ok(device)
}
