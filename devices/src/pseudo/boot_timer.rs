//! Boot timer (Firecracker's `--boot-timer`): a guest byte write of 123 records the boot time.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info;
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::MutDeviceMmio;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The value a guest writes (one byte, offset 0) when it has booted.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// Where the measurement is published for the rest of the VMM: the value, and an eventfd that
/// becomes readable when it is recorded (the API answers waiting readers then).
pub struct BootTime {
    value: Mutex<Option<Duration>>,
    recorded: EventFd,
}

impl BootTime {
    pub fn new() -> io::Result<Arc<BootTime>> {
        Ok(Arc::new(BootTime {
            value: Mutex::new(None),
            recorded: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    pub fn get(&self) -> Option<Duration> {
        *self.value.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Readable once the guest has signalled; read it to re-arm.
    pub fn event(&self) -> &EventFd {
        &self.recorded
    }
}

/// Records the time from VMM process start to the guest's signal; the first signal counts.
pub struct BootTimer {
    start: Instant,
    boot_time: Arc<BootTime>,
}

impl BootTimer {
    pub fn new(start: Instant, boot_time: Arc<BootTime>) -> Self {
        BootTimer { start, boot_time }
    }
}

impl MutDeviceMmio for BootTimer {
    fn mmio_read(&mut self, _base: MmioAddress, _offset: MmioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if offset != 0 || data != [BOOT_TIMER_MAGIC] {
            return;
        }
        let elapsed = self.start.elapsed();
        let Ok(mut slot) = self.boot_time.value.lock() else {
            return;
        };
        if slot.is_none() {
            *slot = Some(elapsed);
            let _ = self.boot_time.recorded.write(1);
            info!(
                "guest boot time: {} ms ({} us since VMM start)",
                elapsed.as_millis(),
                elapsed.as_micros()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_magic_byte_at_offset_zero_counts_and_only_once() {
        let slot = BootTime::new().unwrap();
        let start = Instant::now();
        let mut t = BootTimer::new(start, slot.clone());
        t.mmio_write(MmioAddress(0), 0, &[BOOT_TIMER_MAGIC, 0]);
        t.mmio_write(MmioAddress(0), 1, &[BOOT_TIMER_MAGIC]);
        t.mmio_write(MmioAddress(0), 0, &[122]);
        assert!(slot.get().is_none());
        assert!(slot.event().read().is_err(), "not signalled yet");
        t.mmio_write(MmioAddress(0), 0, &[BOOT_TIMER_MAGIC]);
        let first = slot.get().unwrap();
        assert_eq!(slot.event().read().unwrap(), 1, "signalled once");
        std::thread::sleep(Duration::from_millis(2));
        t.mmio_write(MmioAddress(0), 0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(slot.get().unwrap(), first);
        assert!(slot.event().read().is_err(), "only the first signal counts");
        assert!(first <= start.elapsed());
    }
}
