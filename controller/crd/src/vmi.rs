//! VirtualMachineInstance: one run of a virtual machine, in one launcher pod. Its spec is
//! KubeVirt's (`kubevirt.io/v1`) for what Kiln supports; its status adds what no peer
//! reports: the guest's measured boot time and its reboots inside the pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration, TopologySpreadConstraint};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conditions::Condition;
use crate::domain::DomainSpec;
use crate::network::{GuestProbe, Network};
use crate::rules::{any_object_list, refuse, rule};
use crate::volumes::Volume;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "VirtualMachineInstance",
    namespaced,
    shortname = "vmi",
    shortname = "vmis",
    category = "all",
    status = "VirtualMachineInstanceStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.interfaces[0].ipAddress"}"#,
    printcolumn = r#"{"name":"NodeName","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Boot","type":"string","description":"The guest's boot time, measured by kiln-vmm's boot timer","jsonPath":".status.guestBootDuration"}"#,
    printcolumn = r#"{"name":"Paused","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type=='Paused')].status"}"#,
    validation = rule(
        "self.spec == oldSelf.spec",
        "a VirtualMachineInstance's spec cannot change: change its VirtualMachine's template and restart it"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "!has(self.domain.devices) || !has(self.domain.devices.disks) || self.domain.devices.disks.all(d, has(self.volumes) && self.volumes.exists(v, v.name == d.name))",
        "a disk names no volume: every domain.devices.disks[].name needs a volume of that name in volumes"
    ),
    validation = rule(
        "!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
        "volumes: two volumes have the same name"
    ),
    validation = rule(
        "!has(self.volumes) || self.volumes.filter(v, has(v.cloudInitNoCloud)).size() <= 1",
        "volumes: at most one cloudInitNoCloud volume"
    ),
    validation = rule(
        "(has(self.domain.memory) && has(self.domain.memory.guest)) || (has(self.domain.resources) && has(self.domain.resources.requests) && 'memory' in self.domain.resources.requests)",
        "no memory for the guest: set domain.memory.guest or domain.resources.requests.memory"
    ),
    validation = rule(
        "!has(self.domain.memory) || !has(self.domain.memory.guest) || quantity(self.domain.memory.guest).compareTo(quantity('8Mi')) >= 0",
        "domain.memory.guest is at least 8Mi"
    ),
    validation = rule(
        "(has(self.domain.memory) && has(self.domain.memory.guest)) || !has(self.domain.resources) || !has(self.domain.resources.requests) || !('memory' in self.domain.resources.requests) || quantity(self.domain.resources.requests['memory']).compareTo(quantity('8Mi')) >= 0",
        "domain.resources.requests.memory (the guest's memory) is at least 8Mi"
    ),
    validation = rule(
        "!has(self.architecture) || self.architecture in ['', 'amd64']",
        "architecture: Kiln runs amd64 guests"
    ),
    validation = rule(
        "!has(self.domain.devices) || !has(self.domain.devices.interfaces) || self.domain.devices.interfaces.all(i, has(self.networks) && self.networks.exists(n, n.name == i.name))",
        "an interface names no network: every domain.devices.interfaces[].name needs a network of that name in networks (pod: {})"
    ),
    validation = rule(
        "!has(self.networks) || self.networks.all(n, has(self.domain.devices) && has(self.domain.devices.interfaces) && self.domain.devices.interfaces.exists(i, i.name == n.name))",
        "a network has no interface: every networks[].name needs an interface of that name in domain.devices.interfaces"
    ),
    validation = rule(
        "!has(self.networks) || self.networks.all(n, self.networks.exists_one(m, m.name == n.name))",
        "networks: two networks have the same name"
    ),
    validation = refuse("accessCredentials", "accessCredentials: put SSH keys in the cloud-init user-data"),
    validation = refuse("resourceClaims", "resourceClaims (dynamic resource allocation)"),
    validation = rule(
        "!has(self.evictionStrategy) || self.evictionStrategy == 'None'",
        "evictionStrategy: Kiln has no live migration; only None is supported"
    ),
    validation = refuse("startStrategy", "startStrategy (starting paused): start the VM, then pause it"),
)]
pub struct VirtualMachineInstanceSpec {
    pub domain: DomainSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 18))]
    pub volumes: Vec<Volume>,
    /// Seconds between the graceful shutdown request (Ctrl-Alt-Del) and the end of the pod
    /// (KubeVirt's default: 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// The guest's hostname (NoCloud local-hostname) and the pod's; default: the VMI's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// A failing liveness probe ends the run (the VM restarts per its runStrategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<GuestProbe>,
    /// The VMI is Ready (and its pod in its Services' endpoints) only while this passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<GuestProbe>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub networks: Vec<Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object_list")]
    pub access_credentials: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object_list")]
    pub resource_claims: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_strategy: Option<String>,
}

/// KubeVirt's VMI phases.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum VmiPhase {
    /// Accepted; no launcher pod yet.
    #[default]
    Pending,
    /// The launcher pod exists and waits for a node.
    Scheduling,
    /// The pod has a node; the launcher prepares disks and starts kiln-vmm.
    Scheduled,
    /// kiln-vmm runs the guest.
    Running,
    /// The guest powered itself off.
    Succeeded,
    /// The guest panicked, kiln-vmm failed or was killed, or the pod went away.
    Failed,
}

impl VmiPhase {
    pub fn is_final(self) -> bool {
        matches!(self, VmiPhase::Succeeded | VmiPhase::Failed)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    #[serde(default)]
    pub phase: VmiPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The launcher pod of this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_pod: Option<String>,
    /// KubeVirt's map of active pods (pod UID → node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub active_pods: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<PhaseTransition>,
    /// The guest's network interfaces: the pod IP for masquerade, the guest's for bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<NetworkInterfaceStatus>,
    /// From kiln-vmm start to the guest's boot-timer write, e.g. "1.042s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_boot_duration: Option<String>,
    /// The same in milliseconds (for tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_boot_milliseconds: Option<u64>,
    /// How often the guest rebooted inside this launcher pod.
    #[serde(default)]
    pub restart_count: u32,
    /// How the guest or kiln-vmm ended (PowerOff, Panic, VcpuFailure, Killed, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_container_image_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransition {
    pub phase: VmiPhase,
    pub phase_transition_timestamp: String,
}

/// KubeVirt's `status.interfaces[]` entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterfaceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_interface_name: Option<String>,
    /// The interface's name inside the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
}
