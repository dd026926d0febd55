//! Kiln device models: legacy platform devices, pseudo devices and virtio-mmio devices, testable
//! without KVM.

pub mod guest_log;
pub mod host_file;
pub mod legacy;
pub mod pseudo;
pub mod virtio;

mod exit_sink;
mod irq;

pub use exit_sink::{ExitSink, GuestExitRequest};
pub use irq::EventFdTrigger;
