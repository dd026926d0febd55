//! KVM state: guest memory, the VM with its in-kernel irqchip, and the vCPUs.

pub mod memory;
pub mod pause;
pub mod vcpu;
pub mod vcpu_loop;
pub mod vm;
