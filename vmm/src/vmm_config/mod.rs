//! Validated configuration types, one per resource a user configures (Firecracker's
//! `vmm_config/` shape); the CLI today and the HTTP API later both produce these.

pub mod boot_source;
pub mod drive;
pub mod machine_config;
pub mod net;
pub mod serial;

pub use boot_source::{BootSourceConfig, BootSourceError};
pub use drive::{CacheType, DriveConfig, DriveConfigError};
pub use machine_config::{MachineConfig, MachineConfigError};
pub use net::{NetConfig, NetConfigError, TapBackend};
pub use serial::SerialConfig;
