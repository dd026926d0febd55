//! How a device asks the VMM to end the VM (power-off port, keyboard-controller reset).

/// What the guest asked for through a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExitRequest {
    /// The guest wrote `code` to the debug-exit port: power off, VMM exit status `code`.
    PowerOff(u8),
    /// The guest reset the machine (i8042 pulse-reset command).
    Reset,
}

/// Receives exit requests from devices; implemented by the VMM.
pub trait ExitSink: Send + Sync {
    fn request_exit(&self, request: GuestExitRequest);
}
