//! 8250/16550 UART on vm-superio: guest console output to a writer, host input into its FIFO.

use std::io::Write;

use tracing::warn;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::EventFdTrigger;

/// First serial port (ttyS0).
pub const COM1_PORT: u16 = 0x3f8;
/// ISA interrupt line of ttyS0.
pub const COM1_IRQ: u32 = 4;
/// Number of I/O ports a UART decodes.
pub const SERIAL_PORT_COUNT: u16 = 8;

/// The guest's serial console.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    output_failed: bool,
}

impl SerialConsole {
    /// A UART that raises `interrupt` and writes what the guest transmits to `out`.
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Serial::new(interrupt, out),
            output_failed: false,
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        if n == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                warn!("serial: cannot queue input: {e:?}");
                0
            }
        }
    }
}

impl MutDevicePio for SerialConsole {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        if data.len() != 1 || offset >= SERIAL_PORT_COUNT {
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.read(offset as u8);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if data.len() != 1 || offset >= SERIAL_PORT_COUNT {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            // A closed or full console output must not stop the guest; say so once.
            if !self.output_failed {
                warn!("serial: console output failed, further output is dropped: {e:?}");
                self.output_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn console() -> (SerialConsole, SharedBuf, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let buf = SharedBuf::default();
        let trigger = EventFdTrigger::new(evt.try_clone().unwrap());
        (SerialConsole::new(trigger, Box::new(buf.clone())), buf, evt)
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let (mut s, buf, _) = console();
        for b in b"hi\n" {
            s.pio_write(PioAddress(COM1_PORT), 0, &[*b]);
        }
        assert_eq!(buf.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn input_is_readable_and_interrupts_when_enabled() {
        let (mut s, _, evt) = console();
        // IER: enable "received data available" interrupt.
        s.pio_write(PioAddress(COM1_PORT), 1, &[0x01]);
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert_eq!(evt.read().unwrap(), 1);
        let mut d = [0u8];
        s.pio_read(PioAddress(COM1_PORT), 0, &mut d);
        assert_eq!(d[0], b'a');
        s.pio_read(PioAddress(COM1_PORT), 0, &mut d);
        assert_eq!(d[0], b'b');
    }

    #[test]
    fn fifo_overflow_is_bounded_not_fatal() {
        let (mut s, _, _) = console();
        let cap = s.input_capacity();
        let big = vec![b'x'; cap + 10];
        assert_eq!(s.enqueue_input(&big), cap);
        assert_eq!(s.enqueue_input(b"y"), 0);
    }

    #[test]
    fn wide_or_out_of_range_accesses_are_ignored() {
        let (mut s, buf, _) = console();
        let mut d = [0u8; 2];
        s.pio_read(PioAddress(COM1_PORT), 0, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        s.pio_write(PioAddress(COM1_PORT), 0, b"ab");
        assert!(buf.0.lock().unwrap().is_empty());
    }
}
