//! x86_64 platform: guest physical layout, boot protocols, MP table, vCPU register state.

pub mod boot;
pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
