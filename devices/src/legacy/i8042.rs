//! i8042 keyboard controller: enough of it for Linux to probe it, to reset the machine, and to
//! type Ctrl-Alt-Del (the API's SendCtrlAltDel) on its keyboard port.

use std::collections::VecDeque;
use std::sync::Arc;

use thiserror::Error;
use tracing::warn;
use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vm_superio::Trigger;

use crate::{EventFdTrigger, ExitSink, GuestExitRequest};

/// Data port; the controller decodes 0x60..=0x64 (status/command at 0x64).
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_PORT_COUNT: u16 = 5;
/// The keyboard's interrupt line.
pub const KEYBOARD_IRQ: u32 = 1;

/// Ctrl, Alt and Delete pressed, then released, in scan code set 2 (the controller does not
/// translate): the guest's keyboard driver sees the three-finger salute.
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, // press Ctrl, Alt, Delete
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // release them
];
const OUTPUT_CAPACITY: usize = 16;
const CONFIG_KBD_INT: u8 = 0x01;
const CONFIG_KBD_DISABLED: u8 = 0x10;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyboardError {
    #[error("the guest has not read earlier keystrokes yet (keyboard buffer full)")]
    BufferFull,
    #[error("the guest disabled its keyboard (no keyboard driver, or it is not listening)")]
    Disabled,
}
const COMMAND_OFFSET: u16 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;

const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
const KBD_ACK: u8 = 0xfa;
const KBD_RESET_OK: u8 = 0xaa;
const KBD_CMD_RESET: u8 = 0xff;
const KBD_CMD_IDENTIFY: u8 = 0xf2;

/// What the next write to the data port means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    ConfigByte,
    OutputPort,
}

/// The controller. Replies to commands are polled by the guest; keystrokes raise IRQ 1, one
/// byte per interrupt, as on a PC.
pub struct I8042 {
    config: u8,
    status: u8,
    output: VecDeque<u8>,
    /// Of the bytes in `output`, how many at the end are keystrokes (they raise interrupts).
    keystrokes: usize,
    data_target: DataTarget,
    exit: Arc<dyn ExitSink>,
    irq: EventFdTrigger,
}

impl I8042 {
    pub fn new(exit: Arc<dyn ExitSink>, irq: EventFdTrigger) -> Self {
        I8042 {
            config: 0x05, // system flag, keyboard interrupt enabled, no translation
            status: STATUS_SYSTEM_FLAG,
            output: VecDeque::new(),
            keystrokes: 0,
            data_target: DataTarget::Keyboard,
            exit,
            irq,
        }
    }

    fn push_output(&mut self, bytes: &[u8]) {
        // A bounded queue: a guest hammering the controller cannot grow it.
        if self.output.len() + bytes.len() <= OUTPUT_CAPACITY {
            self.output.extend(bytes);
        }
    }

    /// Types Ctrl-Alt-Del on the keyboard.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), KeyboardError> {
        if self.config & CONFIG_KBD_DISABLED != 0 || self.config & CONFIG_KBD_INT == 0 {
            return Err(KeyboardError::Disabled);
        }
        if self.output.len() + CTRL_ALT_DEL.len() > OUTPUT_CAPACITY {
            return Err(KeyboardError::BufferFull);
        }
        let was_empty = self.output.is_empty();
        self.output.extend(CTRL_ALT_DEL);
        self.keystrokes += CTRL_ALT_DEL.len();
        if was_empty {
            self.interrupt();
        }
        Ok(())
    }

    fn interrupt(&self) {
        if self.config & CONFIG_KBD_INT != 0 {
            if let Err(e) = self.irq.trigger() {
                warn!("i8042: cannot raise the keyboard interrupt: {e}");
            }
        }
    }

    fn read_data(&mut self) -> u8 {
        let Some(byte) = self.output.pop_front() else {
            return 0;
        };
        self.keystrokes = self.keystrokes.min(self.output.len());
        if self.keystrokes > 0 {
            self.interrupt();
        }
        byte
    }

    fn status(&self) -> u8 {
        let full = if self.output.is_empty() {
            0
        } else {
            STATUS_OUTPUT_FULL
        };
        self.status | full
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CONFIG => self.push_output(&[self.config]),
            CMD_WRITE_CONFIG => self.data_target = DataTarget::ConfigByte,
            CMD_SELF_TEST => self.push_output(&[SELF_TEST_PASSED]),
            CMD_TEST_KBD | CMD_TEST_AUX => self.push_output(&[0x00]),
            CMD_DISABLE_KBD => self.config |= 0x10,
            CMD_ENABLE_KBD => self.config &= !0x10,
            CMD_DISABLE_AUX => self.config |= 0x20,
            CMD_ENABLE_AUX => self.config &= !0x20,
            CMD_READ_OUTPUT_PORT => self.push_output(&[0x01]),
            CMD_WRITE_OUTPUT_PORT => self.data_target = DataTarget::OutputPort,
            CMD_PULSE_RESET => self.exit.request_exit(GuestExitRequest::Reset),
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !STATUS_LAST_WAS_COMMAND;
        match std::mem::replace(&mut self.data_target, DataTarget::Keyboard) {
            DataTarget::ConfigByte => self.config = value,
            // Bit 0 of the output port is the CPU reset line (active low).
            DataTarget::OutputPort if value & 0x01 == 0 => {
                self.exit.request_exit(GuestExitRequest::Reset)
            }
            DataTarget::OutputPort => {}
            DataTarget::Keyboard => match value {
                KBD_CMD_RESET => self.push_output(&[KBD_ACK, KBD_RESET_OK]),
                KBD_CMD_IDENTIFY => self.push_output(&[KBD_ACK, 0xab, 0x83]),
                _ => self.push_output(&[KBD_ACK]),
            },
        }
    }
}

impl MutDevicePio for I8042 {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            0 => self.read_data(),
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            0 => self.data(data[0]),
            COMMAND_OFFSET => self.command(data[0]),
            _ => {}
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

    fn dev() -> (I8042, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        (I8042::new(rec.clone(), irq()), rec)
    }

    fn irq() -> EventFdTrigger {
        EventFdTrigger::new(
            vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
        )
    }

    /// Interrupts raised since the last call.
    fn interrupts(d: &I8042) -> u64 {
        d.irq.event_fd().read().unwrap_or(0)
    }

    #[test]
    fn ctrl_alt_del_is_typed_one_interrupt_per_byte() {
        let (mut d, _) = dev();
        d.trigger_ctrl_alt_del().unwrap();
        assert_eq!(interrupts(&d), 1);
        let mut typed = Vec::new();
        while read(&mut d, 4) & STATUS_OUTPUT_FULL != 0 {
            typed.push(read(&mut d, 0));
        }
        assert_eq!(typed, CTRL_ALT_DEL);
        // Each byte read with more behind it raises the next interrupt.
        assert_eq!(interrupts(&d), CTRL_ALT_DEL.len() as u64 - 1);
        d.trigger_ctrl_alt_del().unwrap();
        assert_eq!(d.trigger_ctrl_alt_del(), Err(KeyboardError::BufferFull));
    }

    #[test]
    fn no_keystrokes_while_the_guest_has_the_keyboard_disabled() {
        let (mut d, _) = dev();
        d.pio_write(PioAddress(I8042_DATA_PORT), 4, &[0x60]);
        d.pio_write(PioAddress(I8042_DATA_PORT), 0, &[0x04]);
        assert_eq!(d.trigger_ctrl_alt_del(), Err(KeyboardError::Disabled));
        assert_eq!(interrupts(&d), 0);
        // Command replies are polled: no interrupt.
        d.pio_write(PioAddress(I8042_DATA_PORT), 4, &[0xaa]);
        assert_eq!(read(&mut d, 0), 0x55);
        assert_eq!(interrupts(&d), 0);
    }

    fn read(d: &mut I8042, off: u16) -> u8 {
        let mut b = [0u8];
        d.pio_read(PioAddress(I8042_DATA_PORT), off, &mut b);
        b[0]
    }

    #[test]
    fn pulse_reset_requests_a_reset() {
        let (mut d, rec) = dev();
        // Linux waits for the input buffer to drain, then writes 0xfe to the command port.
        assert_eq!(read(&mut d, 4) & 0x02, 0);
        d.pio_write(PioAddress(I8042_DATA_PORT), 4, &[0xfe]);
        assert_eq!(*rec.0.lock().unwrap(), vec![GuestExitRequest::Reset]);
    }

    #[test]
    fn output_port_reset_line() {
        let (mut d, rec) = dev();
        d.pio_write(PioAddress(I8042_DATA_PORT), 4, &[0xd1]);
        d.pio_write(PioAddress(I8042_DATA_PORT), 0, &[0x03]);
        assert!(rec.0.lock().unwrap().is_empty());
        d.pio_write(PioAddress(I8042_DATA_PORT), 4, &[0xd1]);
        d.pio_write(PioAddress(I8042_DATA_PORT), 0, &[0x02]);
        assert_eq!(*rec.0.lock().unwrap(), vec![GuestExitRequest::Reset]);
    }

    #[test]
    fn self_test_and_config_byte_round_trip() {
        let (mut d, _) = dev();
        d.pio_write(PioAddress(I8042_DATA_PORT), 4, &[0xaa]);
        assert_eq!(read(&mut d, 4) & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        assert_eq!(read(&mut d, 0), 0x55);
        assert_eq!(read(&mut d, 4) & STATUS_OUTPUT_FULL, 0);
        d.pio_write(PioAddress(I8042_DATA_PORT), 4, &[0x60]);
        d.pio_write(PioAddress(I8042_DATA_PORT), 0, &[0x47]);
        d.pio_write(PioAddress(I8042_DATA_PORT), 4, &[0x20]);
        assert_eq!(read(&mut d, 0), 0x47);
    }

    #[test]
    fn keyboard_commands_are_acknowledged_and_queue_is_bounded() {
        let (mut d, _) = dev();
        d.pio_write(PioAddress(I8042_DATA_PORT), 0, &[0xff]);
        assert_eq!(read(&mut d, 0), KBD_ACK);
        assert_eq!(read(&mut d, 0), KBD_RESET_OK);
        for _ in 0..100 {
            d.pio_write(PioAddress(I8042_DATA_PORT), 0, &[0xf4]);
        }
        assert!(d.output.len() <= 16);
    }
}
