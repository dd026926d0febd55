//! DataSource: the stable name VMs clone from (`source.pvc`); a DataImportCron moves it to each
//! new import once that import is complete. CDI's fields; Ready says whether it can be cloned.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::data_volume::PvcSource;
use crate::conditions::Condition;
use crate::rules::{any_object, refuse, rule};

#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema,
)]
#[kube(
    group = "cdi.kiln.dev",
    version = "v1beta1",
    kind = "DataSource",
    namespaced,
    shortname = "das",
    category = "all",
    status = "DataSourceStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Source","type":"string","description":"The claim VMs clone","jsonPath":".spec.source.pvc.name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceSpec {
    pub source: DataSourceSource,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rule("has(self.pvc) || has(self.snapshot) || has(self.dataSource)", "give the DataSource's source a pvc"),
    validation = refuse("snapshot", "snapshot DataSources yet: point source.pvc at a claim"),
    validation = refuse("dataSource", "DataSources of DataSources: point source.pvc at a claim"),
)]
pub struct DataSourceSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub snapshot: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub data_source: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The source in force (what Ready speaks of).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataSourceSource>,
}

impl DataSource {
    /// The claim it points at: (namespace, name), the namespace defaulting to its own.
    pub fn claim(&self) -> Option<(String, String)> {
        let pvc = self.spec.source.pvc.as_ref()?;
        let ns = pvc
            .namespace
            .clone()
            .or_else(|| self.metadata.namespace.clone())?;
        Some((ns, pvc.name.clone()))
    }
}
