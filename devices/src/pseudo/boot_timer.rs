//! Boot timer (Firecracker's `--boot-timer`): a guest byte write of 123 records the boot time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::info;
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::MutDeviceMmio;

/// The value a guest writes (one byte, offset 0) when it has booted.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// Records the time from VMM process start to the guest's signal; the first signal counts.
pub struct BootTimer {
    start: Instant,
    boot_time: Arc<Mutex<Option<Duration>>>,
}

impl BootTimer {
    /// `boot_time` is where the measurement is published for the rest of the VMM.
    pub fn new(start: Instant, boot_time: Arc<Mutex<Option<Duration>>>) -> Self {
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
        let Ok(mut slot) = self.boot_time.lock() else {
            return;
        };
        if slot.is_none() {
            *slot = Some(elapsed);
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
        let slot = Arc::new(Mutex::new(None));
        let start = Instant::now();
        let mut t = BootTimer::new(start, slot.clone());
        t.mmio_write(MmioAddress(0), 0, &[BOOT_TIMER_MAGIC, 0]);
        t.mmio_write(MmioAddress(0), 1, &[BOOT_TIMER_MAGIC]);
        t.mmio_write(MmioAddress(0), 0, &[122]);
        assert!(slot.lock().unwrap().is_none());
        t.mmio_write(MmioAddress(0), 0, &[BOOT_TIMER_MAGIC]);
        let first = slot.lock().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        t.mmio_write(MmioAddress(0), 0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(slot.lock().unwrap().unwrap(), first);
        assert!(first <= start.elapsed());
    }
}
