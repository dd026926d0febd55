//! Instance-level models: actions, VM state, instance information, the full configuration,
//! errors, and Kiln's own run state.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    BootSource, Drive, EntropyDevice, Logger, MachineConfiguration, Metrics, NetworkInterface,
};

/// `PUT /actions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

/// `PATCH /vm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub state: VmStateRequest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStateRequest {
    Paused,
    Resumed,
}

/// `GET /`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `GET /version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub firecracker_version: String,
}

/// `GET /vm/config`, and the `--config-file` format. Resources Kiln does not have (balloon,
/// vsock, MMDS, custom CPU configuration) are accepted in a configuration file only as null.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfiguration {
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfiguration>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    #[serde(default, skip_serializing)]
    pub balloon: Option<Value>,
    #[serde(default, skip_serializing)]
    pub vsock: Option<Value>,
    #[serde(rename = "mmds-config", default, skip_serializing)]
    pub mmds_config: Option<Value>,
    #[serde(rename = "cpu-config", default, skip_serializing)]
    pub cpu_config: Option<Value>,
}

impl FullVmConfiguration {
    /// The names of resources present (non-null) that Kiln does not support.
    pub fn unsupported_sections(&self) -> Vec<&'static str> {
        [
            ("balloon", &self.balloon),
            ("vsock", &self.vsock),
            ("mmds-config", &self.mmds_config),
            ("cpu-config", &self.cpu_config),
        ]
        .into_iter()
        .filter(|(_, v)| !matches!(v, None | Some(Value::Null)))
        .map(|(name, _)| name)
        .collect()
    }
}

/// Every error body: `{"fault_message": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub fault_message: String,
}

/// `GET /kiln/v1/state`: what the launcher and the controller watch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KilnVmState {
    pub state: KilnRunState,
    /// Grows with every change a reader can see (started, booted, paused, resumed, ended):
    /// `?after_revision=` waits for the next one.
    #[serde(default)]
    pub revision: u64,
    /// Set once the VM has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<KilnExit>,
    /// Microseconds from VMM start to the guest's boot-timer write (needs the boot timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_time_us: Option<u64>,
    /// Microseconds from VMM start to the VM's vCPUs starting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_started_us: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KilnRunState {
    NotStarted,
    Running,
    Paused,
    Exited,
}

/// Why the VM ended and the status kiln-vmm exits with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KilnExit {
    /// PowerOff, Reboot, Panic, VcpuFailure, VcpuStuck or Signal.
    pub reason: String,
    pub message: String,
    pub exit_code: i32,
}

/// The query of `GET /kiln/v1/state`: with `after_revision=R`, the answer waits (at most
/// `wait_ms`, default and limit 60000) until the state's revision is past R.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateQuery {
    pub after_revision: Option<u64>,
    pub wait_ms: u64,
}

/// Longest wait `GET /kiln/v1/state?after_revision=` accepts.
pub const MAX_STATE_WAIT_MS: u64 = 60_000;

impl StateQuery {
    /// Parses `after_revision=N&wait_ms=M`; unknown or malformed parameters are errors.
    pub fn parse(query: Option<&str>) -> Result<StateQuery, String> {
        let mut q = StateQuery {
            after_revision: None,
            wait_ms: MAX_STATE_WAIT_MS,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{key} must be a whole number, not {value:?}"))
            };
            match key {
                "after_revision" => q.after_revision = Some(number()?),
                "wait_ms" => {
                    q.wait_ms = number()?;
                    if q.wait_ms > MAX_STATE_WAIT_MS {
                        return Err(format!("wait_ms is at most {MAX_STATE_WAIT_MS}"));
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown query parameter {key:?} (after_revision and wait_ms are known)"
                    ))
                }
            }
        }
        Ok(q)
    }
}
