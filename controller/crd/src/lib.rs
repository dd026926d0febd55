//! Kiln's Kubernetes API, group `kiln.dev`, version `v1alpha1`: VirtualMachine and
//! VirtualMachineInstance with KubeVirt's `kubevirt.io/v1` field names, the admission rules
//! (schema and CEL) that refuse what Kiln does not support, what a spec means for the machine
//! and its pod, and the launch description the controller hands each launcher.

pub mod cdi;
pub mod conditions;
pub mod domain;
pub mod kiln;
pub mod launch;
pub mod machine;
pub mod names;
pub mod network;
pub mod quantity;
pub mod rules;
pub mod vm;
pub mod vmi;
pub mod volumes;

pub use vm::{RunStrategy, VirtualMachine, VirtualMachineSpec, VirtualMachineStatus};
pub use vmi::{
    VirtualMachineInstance, VirtualMachineInstanceSpec, VirtualMachineInstanceStatus, VmiPhase,
};

use kube::CustomResourceExt;

pub const GROUP: &str = "kiln.dev";
pub const VERSION: &str = "v1alpha1";

/// Every CustomResourceDefinition Kiln serves.
pub fn all_crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        VirtualMachine::crd(),
        VirtualMachineInstance::crd(),
        cdi::DataVolume::crd(),
        cdi::DataSource::crd(),
        cdi::DataImportCron::crd(),
        kiln::Kiln::crd(),
    ]
}

/// The CustomResourceDefinitions as YAML documents, in the order `kubectl apply` wants them:
/// what `resources/deploy/crds.yaml` holds (a test keeps the two the same).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated from controller/crd (kiln-controller crds); do not edit by hand.\n",
    );
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in CRDs are exactly what the types generate: run
    /// `cargo run -p kiln-controller --bin kiln-controller -- crds > resources/deploy/crds.yaml`
    /// after changing a type or a rule.
    #[test]
    fn checked_in_crds_match_the_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../resources/deploy/crds.yaml"
        );
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        let generated = crds_yaml().unwrap();
        assert!(
            checked_in == generated,
            "resources/deploy/crds.yaml is stale: regenerate it with \
             `cargo run -p kiln-controller --bin kiln-controller -- crds > resources/deploy/crds.yaml`"
        );
    }

    #[test]
    fn yaml_reads_back_as_the_crd() {
        let yaml = crds_yaml().unwrap();
        let docs: Vec<serde_json::Value> = yaml
            .split("---\n")
            .skip(1)
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        let crds = all_crds();
        assert_eq!(docs.len(), crds.len());
        for (doc, crd) in docs.iter().zip(crds) {
            assert_eq!(*doc, serde_json::to_value(crd).unwrap());
        }
    }

    #[test]
    fn crds_carry_kubevirt_names_columns_and_rules() {
        let vm = serde_json::to_string(&VirtualMachine::crd()).unwrap();
        for needle in [
            r#""shortNames":["vm","vms"]"#,
            r#""categories":["all"]"#,
            r#""jsonPath":".status.printableStatus""#,
            "Kiln supports only bus virtio, not ",
            "names no volume",
            r#""x-kubernetes-validations""#,
        ] {
            assert!(vm.contains(needle), "VirtualMachine CRD lacks {needle}");
        }
        let vmi = serde_json::to_string(&VirtualMachineInstance::crd()).unwrap();
        for needle in [
            r#""shortNames":["vmi","vmis"]"#,
            r#""jsonPath":".status.interfaces[0].ipAddress""#,
            r#""jsonPath":".status.guestBootDuration""#,
            "self.spec == oldSelf.spec",
        ] {
            assert!(
                vmi.contains(needle),
                "VirtualMachineInstance CRD lacks {needle}"
            );
        }
    }
}
