//! Kiln device models: legacy platform devices and pseudo devices, testable without KVM.

pub mod legacy;
pub mod pseudo;

mod exit_sink;
mod irq;

pub use exit_sink::{ExitSink, GuestExitRequest};
pub use irq::EventFdTrigger;
