//! Pseudo devices that exist only for the VMM's benefit (boot timing).

mod boot_timer;

pub use boot_timer::{BootTime, BootTimer, BOOT_TIMER_MAGIC};
