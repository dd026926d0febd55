//! `spec.volumes`: where each disk's data comes from, in KubeVirt's field names. Supported:
//! containerDisk, persistentVolumeClaim, dataVolume, emptyDisk, cloudInitNoCloud; the other KubeVirt
//! sources are refused by name.

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::PullPolicy;
use crate::rules::{any_object, refuse, refuse_true, rule, rule_expr};

/// Most bytes of user-data or network-data a NoCloud seed carries (cloud-init's own limit for
/// NoCloud user-data is larger; a Secret holds up to 1 MiB).
pub const MAX_CLOUD_INIT_BYTES: usize = 768 * 1024;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule_expr(
        "[has(self.containerDisk), has(self.persistentVolumeClaim), has(self.emptyDisk), has(self.cloudInitNoCloud), has(self.dataVolume), has(self.hostDisk), has(self.cloudInitConfigDrive), has(self.sysprep), has(self.ephemeral), has(self.configMap), has(self.secret), has(self.downwardAPI), has(self.serviceAccount), has(self.downwardMetrics), has(self.memoryDump)].filter(x, x).size() == 1",
        "'volume ' + self.name + ': give exactly one source (containerDisk, persistentVolumeClaim, dataVolume, emptyDisk or cloudInitNoCloud)'"
    ),
    validation = refuse("hostDisk", "hostDisk volumes: use a persistentVolumeClaim"),
    validation = refuse("cloudInitConfigDrive", "cloudInitConfigDrive: use cloudInitNoCloud"),
    validation = refuse("sysprep", "sysprep volumes (Kiln runs Linux guests)"),
    validation = refuse("ephemeral", "ephemeral volumes"),
    validation = refuse("configMap", "configMap volumes"),
    validation = refuse("secret", "secret volumes (a NoCloud seed can take its user-data from a Secret: cloudInitNoCloud.secretRef)"),
    validation = refuse("downwardAPI", "downwardAPI volumes"),
    validation = refuse("serviceAccount", "serviceAccount volumes"),
    validation = refuse("downwardMetrics", "downwardMetrics volumes"),
    validation = refuse("memoryDump", "memoryDump volumes"),
)]
pub struct Volume {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDiskSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDiskSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitNoCloudSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub host_disk: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub cloud_init_config_drive: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub sysprep: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub ephemeral: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub config_map: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub secret: Option<Value>,
    #[serde(
        default,
        rename = "downwardAPI",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "any_object")]
    pub downward_api: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub service_account: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub downward_metrics: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub memory_dump: Option<Value>,
}

/// A disk image in an OCI image: the one file under `/disk/` (or `path`), as KubeVirt's
/// containerDisks are laid out. Raw images; the guest writes to a private copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rule(
    "!has(self.path) || self.path.startsWith('/')",
    "containerDisk.path is an absolute path in the image"
))]
pub struct ContainerDiskSource {
    #[schemars(length(min = 1))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
}

/// A claim: in filesystem mode the disk is `disk.img` at its root (made sparse at the claim's
/// size when missing); in block mode it is the device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = refuse_true("hotpluggable", "hotplugged volumes (persistentVolumeClaim.hotpluggable)"))]
pub struct PersistentVolumeClaimSource {
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpluggable: Option<bool>,
}

/// A DataVolume's claim (the DataVolume of that name in the VMI's namespace, usually one of the
/// VM's dataVolumeTemplates): the run waits until its import or clone succeeded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = refuse_true("hotpluggable", "hotplugged volumes (dataVolume.hotpluggable)"))]
pub struct DataVolumeVolumeSource {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpluggable: Option<bool>,
}

/// A blank, sparse disk of `capacity` that lives as long as the VMI.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDiskSource {
    pub capacity: Quantity,
}

/// A cloud-init NoCloud seed disk (vfat, labelled cidata): meta-data (instance-id,
/// local-hostname), user-data, network-config.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "has(self.userData) || has(self.userDataBase64) || has(self.secretRef) || has(self.networkData) || has(self.networkDataBase64) || has(self.networkDataSecretRef)",
        "cloudInitNoCloud needs userData, userDataBase64, secretRef or network data"
    ),
    validation = rule(
        "[has(self.userData), has(self.userDataBase64), has(self.secretRef)].filter(x, x).size() <= 1",
        "cloudInitNoCloud: give only one of userData, userDataBase64 and secretRef"
    ),
    validation = rule(
        "[has(self.networkData), has(self.networkDataBase64), has(self.networkDataSecretRef)].filter(x, x).size() <= 1",
        "cloudInitNoCloud: give only one of networkData, networkDataBase64 and networkDataSecretRef"
    ),
)]
pub struct CloudInitNoCloudSource {
    /// A Secret whose `userdata` (or `userData`) key is the user-data, and whose
    /// `networkdata` (or `networkData`) key, if present, is the network-config.
    #[serde(default, rename = "secretRef", skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576))]
    pub user_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 786432))]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576))]
    pub network_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 786432))]
    pub network_data: Option<String>,
}

impl Volume {
    /// The claim this volume's disk lives on: a persistentVolumeClaim's, or a dataVolume's
    /// (the DataVolume's claim has its name).
    pub fn claim_name(&self) -> Option<&str> {
        self.persistent_volume_claim
            .as_ref()
            .map(|p| p.claim_name.as_str())
            .or_else(|| self.data_volume.as_ref().map(|d| d.name.as_str()))
    }

    /// The kind of source, for messages and status.
    pub fn kind(&self) -> &'static str {
        if self.container_disk.is_some() {
            "containerDisk"
        } else if self.persistent_volume_claim.is_some() {
            "persistentVolumeClaim"
        } else if self.data_volume.is_some() {
            "dataVolume"
        } else if self.empty_disk.is_some() {
            "emptyDisk"
        } else if self.cloud_init_no_cloud.is_some() {
            "cloudInitNoCloud"
        } else {
            "unsupported"
        }
    }
}
