//! The JSON bodies of the API, in Firecracker v1's shapes (plus Kiln's own under /kiln/v1).
//! Request bodies reject unknown fields.

mod devices;
mod machine;
mod observability;
mod vm;

pub use devices::{
    no_rate_limiter, Drive, EntropyDevice, NetworkInterface, PartialDrive, PartialNetworkInterface,
};
pub use machine::{BootSource, MachineConfiguration, MachineConfigurationUpdate};
pub use observability::{LogLevel, Logger, Metrics};
pub use vm::{
    ActionType, ApiErrorBody, FullVmConfiguration, InstanceActionInfo, InstanceInfo, InstanceState,
    KilnExit, KilnRunState, KilnVmState, StateQuery, VersionInfo, Vm, VmStateRequest,
    MAX_STATE_WAIT_MS,
};
