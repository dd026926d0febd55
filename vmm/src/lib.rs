//! Kiln's virtual machine monitor. Data flows one way: configuration types (`vmm_config`) →
//! the whole VM description (`resources`) → `builder` → KVM state (`vstate`) and devices →
//! `runtime`, which runs the vCPUs until the VM ends with a `vm_exit::VmExit`. The HTTP API
//! (`rpc_interface`) feeds the same configuration types before boot and acts on the running VM
//! from the event loop.

pub mod arch;
pub mod boot_loader;
pub mod builder;
pub mod cpu_template;
pub mod device_manager;
pub mod logger;
pub mod metrics;
pub mod privileges;
pub mod resources;
pub mod rpc_interface;
pub mod runtime;
pub mod seccomp;
pub mod vm_exit;
pub mod vmm_config;
pub mod vstate;
