//! Debug-exit I/O port: a guest without ACPI powers off by writing its exit status here.

use std::sync::Arc;

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use crate::{ExitSink, GuestExitRequest};

/// The port QEMU's isa-debug-exit conventionally uses. A byte write of `N` powers the VM off and
/// kiln-vmm exits with status `N`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

pub struct DebugExit {
    exit: Arc<dyn ExitSink>,
}

impl DebugExit {
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        DebugExit { exit }
    }
}

impl MutDevicePio for DebugExit {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        // Only the first byte of a write at the port itself counts (outb/outw/outl alike).
        if offset == 0 {
            if let Some(code) = data.first() {
                self.exit.request_exit(GuestExitRequest::PowerOff(*code));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<GuestExitRequest>>);
    impl ExitSink for Recorder {
        fn request_exit(&self, r: GuestExitRequest) {
            self.0.lock().unwrap().push(r);
        }
    }

    #[test]
    fn write_powers_off_with_the_written_code() {
        let rec = Arc::new(Recorder::default());
        let mut d = DebugExit::new(rec.clone());
        d.pio_write(PioAddress(DEBUG_EXIT_PORT), 0, &[7, 1, 2, 3]);
        d.pio_write(PioAddress(DEBUG_EXIT_PORT), 1, &[9]);
        assert_eq!(*rec.0.lock().unwrap(), vec![GuestExitRequest::PowerOff(7)]);
    }
}
