//! The virtio-mmio transport (version 2 register layout): feature negotiation, the device status
//! state machine, queue setup, interrupt status and configuration space, for one device.

use std::sync::{Arc, Mutex, MutexGuard};

use tracing::debug;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::MutDeviceMmio;
use vm_memory::GuestMemoryMmap;

use super::{Activation, VirtioDevice, VirtioInterrupt};

/// Size of one device's register window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of QueueNotify, where the VMM puts each queue's ioeventfd.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4e4c_494b; // "KILN"

pub struct MmioTransport<D: VirtioDevice> {
    device: Arc<Mutex<D>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(
        device: Arc<Mutex<D>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues = Self::fresh_queues(&lock(&device));
        MmioTransport {
            device,
            mem,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            queues,
        }
    }

    fn fresh_queues(device: &D) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue setup is only allowed between FEATURES_OK and DRIVER_OK.
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u32) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => lock(&self.device).device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = lock(&self.device).features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => q.map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => q.map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => lock(&self.device).config_generation(),
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.map_or(0, |q| q.desc_table() as u32),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.map_or(0, |q| (q.desc_table() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.map_or(0, |q| q.avail_ring() as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.map_or(0, |q| (q.avail_ring() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.map_or(0, |q| q.used_ring() as u32),
            VIRTIO_MMIO_QUEUE_USED_HIGH => q.map_or(0, |q| (q.used_ring() >> 32) as u32),
            _ => {
                debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.ack_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    if let Ok(size) = u16::try_from(value) {
                        q.set_size(size);
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                self.set_address(|q, v| q.set_desc_table_address(Some(v), None), value)
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                self.set_address(|q, v| q.set_desc_table_address(None, Some(v)), value)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                self.set_address(|q, v| q.set_avail_ring_address(Some(v), None), value)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                self.set_address(|q, v| q.set_avail_ring_address(None, Some(v)), value)
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                self.set_address(|q, v| q.set_used_ring_address(Some(v), None), value)
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.set_address(|q, v| q.set_used_ring_address(None, Some(v)), value)
            }
            _ => debug!("virtio-mmio: write of {value:#x} to unknown register {offset:#x}"),
        }
    }

    fn set_address(&mut self, set: impl FnOnce(&mut Queue, u32), value: u32) {
        if let Some(q) = self.selected_queue() {
            set(q, value);
        }
    }

    fn ack_features(&mut self, value: u32) {
        let negotiating = self.status & VIRTIO_CONFIG_S_DRIVER != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
        if !negotiating {
            crate::guest_warn!("virtio-mmio: driver features written outside negotiation; ignored");
            return;
        }
        let offered = lock(&self.device).features();
        let (shift, mask) = match self.driver_features_sel {
            0 => (0, 0xffff_ffffu64),
            1 => (32, 0xffff_ffff_0000_0000u64),
            _ => return,
        };
        let requested = u64::from(value) << shift;
        if requested & !offered != 0 {
            crate::guest_warn!(
                "virtio-mmio: driver acked features {:#x} the device did not offer; ignored",
                requested & !offered
            );
        }
        self.acked_features = (self.acked_features & !mask) | (requested & offered);
    }

    fn notify(&self, queue: u32) {
        // Normally KVM's ioeventfd takes these writes; this path serves a VMM without one.
        let device = lock(&self.device);
        if let Some(evt) = device.queue_events().get(queue as usize) {
            if let Err(e) = evt.write(1) {
                crate::guest_warn!("virtio-mmio: queue notification: {e}");
            }
        }
    }

    /// The device status state machine (virtio 1.2 §3.1.1): bits are only added, in order;
    /// writing 0 resets the device.
    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if value & self.status != self.status {
            crate::guest_warn!(
                "virtio-mmio: status {:#x} -> {value:#x} clears bits; ignored",
                self.status
            );
            return;
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            crate::guest_warn!("virtio-mmio: the driver gave up on the device");
            self.status = value;
            return;
        }
        let ok = match added {
            0 => true,
            VIRTIO_CONFIG_S_ACKNOWLEDGE => self.status == 0,
            VIRTIO_CONFIG_S_DRIVER => self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_FEATURES_OK => {
                self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
                    && self.features_acceptable()
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.activate()
            }
            _ => false,
        };
        if ok {
            self.status = value;
        } else {
            crate::guest_warn!(
                "virtio-mmio: status {:#x} -> {value:#x} refused",
                self.status
            );
        }
    }

    /// A version-2 transport serves only drivers that speak virtio 1.x.
    fn features_acceptable(&self) -> bool {
        let v1 = self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0;
        if !v1 {
            crate::guest_warn!("virtio-mmio: the driver did not accept VIRTIO_F_VERSION_1");
        }
        v1
    }

    fn activate(&mut self) -> bool {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if !q.is_valid(&self.mem) {
                crate::guest_warn!("virtio-mmio: queue {i} is not ready or not in guest memory");
                return self.needs_reset();
            }
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(e) => {
                    crate::guest_warn!("virtio-mmio: queue {i}: {e}");
                    return self.needs_reset();
                }
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            acked_features: self.acked_features,
            interrupt: self.interrupt.clone(),
        };
        let activated = lock(&self.device).activate(activation);
        match activated {
            Ok(()) => true,
            Err(e) => {
                crate::guest_warn!("virtio-mmio: activating the device failed: {e}");
                self.needs_reset()
            }
        }
    }

    /// Tells the driver the device cannot go on; the DRIVER_OK write is refused.
    fn needs_reset(&mut self) -> bool {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config_change();
        false
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.queues = Self::fresh_queues(&lock(&self.device));
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.clear();
    }
}

/// A poisoned lock means a device thread panicked; its state is still the best there is.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<D: VirtioDevice> MutDeviceMmio for MmioTransport<D> {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let config_start = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config_start {
            let device = lock(&self.device);
            let config = device.config_space();
            let start = offset - config_start;
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = usize::try_from(start + i as u64)
                    .ok()
                    .and_then(|at| config.get(at))
                    .copied()
                    .unwrap_or(0);
            }
            return;
        }
        // Registers are 32 bits wide and read whole.
        data.fill(0);
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset as u32).to_le_bytes());
        } else {
            crate::guest_warn!(
                "virtio-mmio: {}-byte read at {offset:#x} is not a register access",
                data.len()
            );
        }
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // Kiln's devices have no writable configuration fields.
            debug!("virtio-mmio: configuration write at {offset:#x} ignored");
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset.is_multiple_of(4) => {
                self.write_register(offset as u32, u32::from_le_bytes(bytes))
            }
            _ => crate::guest_warn!(
                "virtio-mmio: {}-byte write at {offset:#x} is not a register access",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
