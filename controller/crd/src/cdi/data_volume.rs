//! DataVolume: a PersistentVolumeClaim and where its data comes from (a registry, http, another
//! claim, a DataSource or nothing), imported or cloned by a pod; CDI's fields and phases.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::storage::StorageSpec;
use crate::conditions::Condition;
use crate::rules::{any_object, refuse, refuse_true, rule};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "cdi.kiln.dev",
    version = "v1beta1",
    kind = "DataVolume",
    namespaced,
    shortname = "dv",
    shortname = "dvs",
    category = "all",
    status = "DataVolumeStatus",
    printcolumn = r#"{"name":"Phase","type":"string","description":"The phase the data volume is in","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","description":"Transfer progress in percentage if known, N/A otherwise","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","description":"The number of times the transfer has been restarted.","jsonPath":".status.restartCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "has(self.source) != has(self.sourceRef)",
        "give the DataVolume exactly one of source and sourceRef"
    ),
    validation = rule(
        "has(self.storage) != has(self.pvc)",
        "give the DataVolume exactly one of storage and pvc"
    ),
    validation = rule(
        "!has(self.contentType) || self.contentType == 'kubevirt'",
        "Kiln supports only contentType kubevirt (a disk image), not archive"
    ),
    validation = refuse_true("preallocation", "preallocation (Kiln writes disks sparse)"),
    validation = refuse("checkpoints", "multi-stage (warm) imports (checkpoints)"),
    validation = refuse("finalCheckpoint", "multi-stage (warm) imports (finalCheckpoint)"),
    validation = refuse("priorityClassName", "priorityClassName on DataVolumes"),
)]
pub struct DataVolumeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<DataVolumeSourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// CDI's older form of `storage`, with the same fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<StorageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::rules::any_object_list")]
    pub checkpoints: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_checkpoint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Where the data comes from: exactly one of registry, http, pvc and blank.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "[has(self.registry), has(self.http), has(self.pvc), has(self.blank), has(self.s3), has(self.gcs), has(self.upload), has(self.imageio), has(self.vddk), has(self.snapshot)].filter(x, x).size() == 1",
        "give the DataVolume's source exactly one of registry, http, pvc and blank"
    ),
    validation = refuse("s3", "s3 sources: publish the image to a registry or an http server"),
    validation = refuse("gcs", "gcs sources: publish the image to a registry or an http server"),
    validation = refuse("upload", "upload sources yet: publish the image to a registry or an http server"),
    validation = refuse("imageio", "imageio (oVirt) sources"),
    validation = refuse("vddk", "vddk (VMware) sources"),
    validation = refuse("snapshot", "snapshot sources yet: clone a pvc"),
)]
pub struct DataVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<BlankSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub s3: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub gcs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub upload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub imageio: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub vddk: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub snapshot: Option<Value>,
}

/// A containerDisk in an OCI registry: `docker://host[:port]/repo[:tag|@sha256:...]`, pulled
/// by the importer pod through the distribution API (the disk is the file under `/disk/`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule("has(self.url)", "registry: give url (docker://host/repository:tag); Kiln does not support imageStream"),
    validation = rule("!has(self.url) || self.url.startsWith('docker://')", "registry.url starts with docker://"),
    validation = refuse("imageStream", "registry.imageStream (OpenShift image streams): give url"),
    validation = rule("!has(self.pullMethod) || self.pullMethod == 'pod'", "Kiln supports only registry.pullMethod pod (the importer pulls), not node"),
    validation = refuse("secretRef", "registry.secretRef yet (anonymous pulls only)"),
    validation = refuse("certConfigMap", "registry.certConfigMap yet (public CAs or plain http)"),
    validation = refuse("platform", "registry.platform (Kiln pulls linux/amd64)"),
)]
pub struct RegistrySource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub image_stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub pull_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub platform: Option<Value>,
}

/// A disk image over http(s): raw or qcow2, plain or `.gz`/`.xz`; `checksum` (`sha256:HEX` or
/// `sha512:HEX`, of the bytes served) is verified before the import counts as complete.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule("self.url.startsWith('http://') || self.url.startsWith('https://')", "http.url starts with http:// or https://"),
    validation = rule(
        "!has(self.checksum) || self.checksum.matches('^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$')",
        "http.checksum is sha256:<64 hex digits> or sha512:<128 hex digits>"
    ),
    validation = refuse("secretRef", "http.secretRef yet (no authentication)"),
    validation = refuse("certConfigMap", "http.certConfigMap yet (public CAs or plain http)"),
    validation = refuse("extraHeaders", "http.extraHeaders yet"),
    validation = refuse("secretExtraHeaders", "http.secretExtraHeaders yet"),
)]
pub struct HttpSource {
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 136))]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_extra_headers: Option<Vec<String>>,
}

/// Another claim to copy; from another namespace when its RBAC grants this namespace's default
/// service account create on datavolumes/source there.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An empty disk of the claim's size.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct BlankSource {}

/// A DataSource to clone (its current claim).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rule("self.kind == 'DataSource'", "sourceRef.kind is DataSource"))]
pub struct DataVolumeSourceRef {
    #[schemars(length(max = 32))]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DataVolumePhase>,
    /// "45.20%" while a transfer runs, "100.0%" when done, "N/A" when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// How many times the importer or clone pod was restarted after a failure.
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The claim the DataVolume fills (its own name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// What was imported: the image's manifest digest (registry) or the checksum verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum DataVolumePhase {
    Pending,
    PVCBound,
    ImportScheduled,
    ImportInProgress,
    CloneScheduled,
    CloneInProgress,
    CSICloneInProgress,
    Succeeded,
    Failed,
    Unknown,
}

impl DataVolumePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            DataVolumePhase::Pending => "Pending",
            DataVolumePhase::PVCBound => "PVCBound",
            DataVolumePhase::ImportScheduled => "ImportScheduled",
            DataVolumePhase::ImportInProgress => "ImportInProgress",
            DataVolumePhase::CloneScheduled => "CloneScheduled",
            DataVolumePhase::CloneInProgress => "CloneInProgress",
            DataVolumePhase::CSICloneInProgress => "CSICloneInProgress",
            DataVolumePhase::Succeeded => "Succeeded",
            DataVolumePhase::Failed => "Failed",
            DataVolumePhase::Unknown => "Unknown",
        }
    }
}

impl DataVolumeSpec {
    /// `storage`, else CDI's older `pvc`.
    pub fn storage(&self) -> StorageSpec {
        self.storage
            .clone()
            .or_else(|| self.pvc.clone())
            .unwrap_or_default()
    }
}

impl DataVolume {
    pub fn succeeded(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p == DataVolumePhase::Succeeded)
    }
}

/// A DataVolume as a VM's `dataVolumeTemplates[]` or a DataImportCron's `template` carry it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeTemplateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<DataVolumeTemplateMeta>,
    pub spec: DataVolumeSpec,
}

/// Template metadata: name, labels and annotations (other fields are kept and ignored).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct DataVolumeTemplateMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}
