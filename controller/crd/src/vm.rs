//! VirtualMachine: the desired state of a virtual machine (its run strategy and a template);
//! each run is a VirtualMachineInstance. KubeVirt's `kubevirt.io/v1` fields and statuses.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cdi::data_volume::DataVolumeTemplateSpec;
use crate::conditions::Condition;
use crate::rules::{any_object, refuse, rule};
use crate::vmi::VirtualMachineInstanceSpec;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "VirtualMachine",
    namespaced,
    shortname = "vm",
    shortname = "vms",
    category = "all",
    status = "VirtualMachineStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Status","type":"string","description":"Human Readable Status","jsonPath":".status.printableStatus"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Boot","type":"string","description":"The current run's guest boot time (kiln-vmm's boot timer)","jsonPath":".status.guestBootDuration"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "!(has(self.running) && has(self.runStrategy))",
        "give runStrategy or the deprecated running, not both"
    ),
    validation = refuse("instancetype", "instance types yet (spec.instancetype): set the template's domain.cpu and domain.memory"),
    validation = refuse("preference", "preferences yet (spec.preference)"),
    validation = rule(
        "!has(self.dataVolumeTemplates) || self.dataVolumeTemplates.all(t, has(t.metadata) && has(t.metadata.name))",
        "every dataVolumeTemplates[] entry needs metadata.name (the DataVolume and its claim)"
    ),
    validation = refuse("updateVolumesStrategy", "updateVolumesStrategy (volume migration)"),
)]
pub struct VirtualMachineSpec {
    /// When runs happen: Always, Halted, Manual, RerunOnFailure or Once (KubeVirt's meanings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// Deprecated (as in KubeVirt): true is Always, false is Halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    pub template: VirtualMachineInstanceTemplateSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub instancetype: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub preference: Option<Value>,
    /// DataVolumes the VM owns (created with it, deleted with it); its volumes use them by
    /// name (`dataVolume.name`). A run starts once they all succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub data_volume_templates: Option<Vec<DataVolumeTemplateSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_volumes_strategy: Option<String>,
}

impl VirtualMachineSpec {
    /// The run strategy in force: `runStrategy`, else `running` (true: Always), else Halted
    /// (KubeVirt's default without either).
    pub fn strategy(&self) -> RunStrategy {
        match (self.run_strategy, self.running) {
            (Some(s), _) => s,
            (None, Some(true)) => RunStrategy::Always,
            _ => RunStrategy::Halted,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum RunStrategy {
    /// A VMI always runs: one that ends is replaced.
    Always,
    /// No VMI runs.
    Halted,
    /// Runs start and stop only on request (kubectl kiln start/stop/restart).
    Manual,
    /// A VMI that fails is replaced; one that succeeds (guest power-off) is not.
    RerunOnFailure,
    /// One VMI runs once; however it ends, it is not replaced.
    Once,
}

impl RunStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStrategy::Always => "Always",
            RunStrategy::Halted => "Halted",
            RunStrategy::Manual => "Manual",
            RunStrategy::RerunOnFailure => "RerunOnFailure",
            RunStrategy::Once => "Once",
        }
    }
}

/// The template of each run: labels and annotations for the VMI (and its pod), and its spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct VirtualMachineInstanceTemplateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    pub spec: VirtualMachineInstanceSpec,
}

/// Template metadata: Kiln uses labels and annotations; other fields manifests carry
/// (`creationTimestamp: null`, `name`) are kept and ignored, as Kubernetes does for pod templates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// KubeVirt's printable status (Stopped, Starting, Running, Paused, Stopping, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    /// A VMI of this VM exists.
    #[serde(default)]
    pub created: bool,
    /// That VMI is Ready.
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Start and stop requests (kubectl kiln start/stop/restart), acted on in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_change_requests: Vec<StateChangeRequest>,
    /// Consecutive failed runs and when the next may start (the CrashLoopBackOff back-off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<StartFailure>,
    /// The run strategy the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_generation: Option<i64>,
    /// How many runs the controller started after the first (for any reason).
    #[serde(default)]
    pub restart_count: u32,
    /// The current run's guest boot time (copied from its VMI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_boot_duration: Option<String>,
    /// The UID of the VMI the controller last created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_vmi_uid: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateChangeRequest {
    pub action: StateChangeAction,
    /// Stop: only the VMI with this UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum StateChangeAction {
    Start,
    Stop,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartFailure {
    #[serde(default)]
    pub consecutive_fail_count: u32,
    #[serde(
        default,
        rename = "lastFailedVMIUID",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_failed_vmi_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_strategy_follows_kubevirt_defaults() {
        let spec = |rs: Option<RunStrategy>, running: Option<bool>| VirtualMachineSpec {
            run_strategy: rs,
            running,
            template: Default::default(),
            instancetype: None,
            preference: None,
            data_volume_templates: None,
            update_volumes_strategy: None,
        };
        assert_eq!(spec(None, None).strategy(), RunStrategy::Halted);
        assert_eq!(spec(None, Some(true)).strategy(), RunStrategy::Always);
        assert_eq!(spec(None, Some(false)).strategy(), RunStrategy::Halted);
        assert_eq!(
            spec(Some(RunStrategy::Manual), None).strategy(),
            RunStrategy::Manual
        );
    }
}
