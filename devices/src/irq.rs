//! Interrupt trigger for device models: an eventfd that KVM turns into a guest interrupt (irqfd).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::EventFd;

/// Raises an interrupt by writing to an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    /// A second handle to the same eventfd (for registering it with KVM).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(EventFdTrigger(self.0.try_clone()?))
    }

    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl AsRawFd for EventFdTrigger {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
