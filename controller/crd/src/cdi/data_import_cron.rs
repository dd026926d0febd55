//! DataImportCron: keeps a golden image fresh. On its cron schedule it resolves the template's
//! registry tag to a digest; a new digest is imported into a new claim, the managed DataSource
//! moves once that import succeeded, and the oldest imports beyond `importsToKeep` go.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::data_volume::DataVolumeTemplateSpec;
use crate::conditions::Condition;
use crate::rules::{refuse, rule};

/// DataImportCron's default `importsToKeep` (CDI's).
pub const DEFAULT_IMPORTS_TO_KEEP: i32 = 3;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "cdi.kiln.dev",
    version = "v1beta1",
    kind = "DataImportCron",
    namespaced,
    shortname = "dic",
    shortname = "dics",
    category = "all",
    status = "DataImportCronStatus",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"UpToDate","type":"string","jsonPath":".status.conditions[?(@.type=='UpToDate')].status"}"#,
    printcolumn = r#"{"name":"Last Import","type":"date","jsonPath":".status.lastImportTimestamp"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule(
        "has(self.template.spec.source) && has(self.template.spec.source.registry)",
        "Kiln's DataImportCrons import from a registry: give template.spec.source.registry.url"
    ),
    validation = refuse("serviceAccountName", "serviceAccountName on DataImportCrons (the controller resolves digests itself)"),
)]
pub struct DataImportCronSpec {
    /// The DataVolume each import makes (its name is derived from the digest).
    pub template: DataVolumeTemplateSpec,
    /// Standard five-field cron (minute hour day-of-month month day-of-week), in UTC.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// Outdated (default): imports beyond importsToKeep are deleted; Never: all are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garbage_collect: Option<GarbageCollect>,
    #[serde(default = "default_imports_to_keep")]
    #[schemars(range(min = 0, max = 100))]
    pub imports_to_keep: i32,
    /// The DataSource (in this namespace) pointed at the newest complete import.
    #[schemars(length(min = 1, max = 253))]
    pub managed_data_source: String,
    /// RetainAll (default): the DataSource and imports stay when the cron is deleted; None:
    /// they go with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<RetentionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

fn default_imports_to_keep() -> i32 {
    DEFAULT_IMPORTS_TO_KEEP
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum GarbageCollect {
    Outdated,
    Never,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum RetentionPolicy {
    RetainAll,
    None,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataImportCronStatus {
    /// Imports running now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_imports: Vec<ImportStatus>,
    /// The claim of the newest complete import (what the DataSource points at).
    #[serde(
        default,
        rename = "lastImportedPVC",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_imported_pvc: Option<super::data_volume::PvcSource>,
    /// When the schedule last ran (resolved the tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution_timestamp: Option<Time>,
    /// When the newest import completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_import_timestamp: Option<Time>,
    /// "pvc": imports are claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ImportStatus {
    pub data_volume_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl DataImportCronSpec {
    pub fn collects_outdated(&self) -> bool {
        self.garbage_collect.unwrap_or(GarbageCollect::Outdated) == GarbageCollect::Outdated
    }
}
