//! A DataVolume's `storage` (or CDI's older `pvc`): size, class, access and volume modes of the
//! PersistentVolumeClaim it fills.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rules::{any_object, refuse};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = refuse("dataSource", "storage.dataSource: give the DataVolume a source or sourceRef"),
    validation = refuse("dataSourceRef", "storage.dataSourceRef: give the DataVolume a source or sourceRef"),
    validation = refuse("selector", "storage.selector (Kiln's claims are provisioned dynamically)"),
)]
pub struct StorageSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_modes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<StorageResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Filesystem (the disk is `disk.img` on the volume) or Block (the device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<VolumeMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub data_source: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub data_source_ref: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub selector: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct StorageResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, Quantity>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum VolumeMode {
    Filesystem,
    Block,
}

impl VolumeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeMode::Filesystem => "Filesystem",
            VolumeMode::Block => "Block",
        }
    }
}

impl StorageSpec {
    /// `resources.requests.storage`, when given.
    pub fn size(&self) -> Option<&Quantity> {
        self.resources.as_ref()?.requests.as_ref()?.get("storage")
    }

    pub fn mode(&self) -> VolumeMode {
        self.volume_mode.unwrap_or(VolumeMode::Filesystem)
    }
}
