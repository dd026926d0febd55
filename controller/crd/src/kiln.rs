//! Kiln: the cluster-wide configuration (`kiln.dev/v1alpha1`, one object named `kiln`, like
//! HCO's HyperConverged): its feature gates, and the common boot images it keeps imported.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;
use crate::rules::rule;

/// The one Kiln object's name (HCO's is `kubevirt-hyperconverged`).
pub const KILN_NAME: &str = "kiln";
/// Where the common boot images live unless `spec.commonBootImageNamespace` says otherwise.
pub const DEFAULT_BOOT_IMAGE_NAMESPACE: &str = "kiln-os-images";

#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema,
)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "Kiln",
    status = "KilnStatus",
    printcolumn = r#"{"name":"BootImages","type":"string","description":"Whether the common boot images are imported","jsonPath":".status.conditions[?(@.type=='CommonBootImagesReady')].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = rule(
        "self.metadata.name == 'kiln'",
        "there is one Kiln object per cluster and it is named kiln"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KilnSpec {
    #[serde(default)]
    pub feature_gates: FeatureGates,
    /// The namespace of the common boot images' DataImportCrons and DataSources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub common_boot_image_namespace: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureGates {
    /// Import the common boot images (kiln-guest, debian) and keep them fresh: one
    /// DataImportCron and DataSource each in the boot-image namespace. Off removes them (VMs
    /// already cloned from them keep their disks).
    #[serde(default = "default_true")]
    pub enable_common_boot_image_import: bool,
}

impl Default for FeatureGates {
    fn default() -> FeatureGates {
        FeatureGates {
            enable_common_boot_image_import: true,
        }
    }
}

fn default_true() -> bool {
    true
}

impl KilnSpec {
    pub fn boot_image_namespace(&self) -> &str {
        self.common_boot_image_namespace
            .as_deref()
            .unwrap_or(DEFAULT_BOOT_IMAGE_NAMESPACE)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KilnStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The DataImportCrons Kiln manages now (HCO's status.dataImportCronTemplates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_import_cron_templates: Vec<BootImageStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootImageStatus {
    /// The DataSource VMs clone (`kubectl kiln create vm --datasource NAME`).
    pub name: String,
    pub namespace: String,
    /// The registry image it follows.
    pub url: String,
}

/// One common boot image: the DataSource name, the image (in Kiln's registry) and the size of
/// each import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonBootImage {
    pub name: &'static str,
    pub repository: &'static str,
    pub size: &'static str,
}

/// The images `enableCommonBootImageImport` imports, published by `resources/cluster/cluster
/// load-images` (resources/cluster/images.sh and resources/guest/debian).
pub const COMMON_BOOT_IMAGES: &[CommonBootImage] = &[
    CommonBootImage {
        name: "kiln-guest",
        repository: "containerdisks/kiln-guest:latest",
        size: "128Mi",
    },
    CommonBootImage {
        name: "debian",
        repository: "containerdisks/debian:12",
        size: "2Gi",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_defaults_on_and_the_namespace_to_kiln_os_images() {
        let spec: KilnSpec = serde_json::from_str("{}").unwrap();
        assert!(spec.feature_gates.enable_common_boot_image_import);
        assert_eq!(spec.boot_image_namespace(), "kiln-os-images");
        let spec: KilnSpec = serde_json::from_str(
            r#"{"featureGates":{"enableCommonBootImageImport":false},"commonBootImageNamespace":"imgs"}"#,
        )
        .unwrap();
        assert!(!spec.feature_gates.enable_common_boot_image_import);
        assert_eq!(spec.boot_image_namespace(), "imgs");
        let gates: FeatureGates = serde_json::from_str("{}").unwrap();
        assert!(gates.enable_common_boot_image_import);
    }

    #[test]
    fn the_crd_is_cluster_scoped_and_named_kiln() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_string(&Kiln::crd()).unwrap();
        assert!(crd.contains(r#""scope":"Cluster""#), "{crd}");
        assert!(crd.contains("self.metadata.name == 'kiln'"), "{crd}");
    }
}
