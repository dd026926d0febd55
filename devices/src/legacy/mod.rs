//! Legacy PC devices on the I/O-port bus: 8250 serial, i8042 controller, debug-exit port.

mod debug_exit;
mod i8042;
mod serial;

pub use debug_exit::{DebugExit, DEBUG_EXIT_PORT};
pub use i8042::{KeyboardError, I8042, I8042_DATA_PORT, I8042_PORT_COUNT, KEYBOARD_IRQ};
pub use serial::{SerialConsole, COM1_IRQ, COM1_PORT, SERIAL_PORT_COUNT};
