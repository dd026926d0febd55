//! `kubectl kiln create vm NAME --datasource [NS/]DS` (virtctl create vm's one-click form): a VM
//! whose root disk is its own clone of a DataSource (a dataVolumeTemplate), optionally with
//! cloud-init user-data; printed as YAML, or created with --apply.

use kiln_crd::VirtualMachine;

/// What the user asked for.
pub struct CreateVm<'a> {
    pub name: &'a str,
    /// `NAME` (this namespace) or `NAMESPACE/NAME`.
    pub datasource: &'a str,
    /// The clone's size (default: the source's).
    pub size: Option<&'a str>,
    /// The clone's StorageClass (default: the cluster's; the source's class makes a CSI clone
    /// where that class supports it).
    pub storage_class: Option<&'a str>,
    pub memory: &'a str,
    pub cpus: u32,
    pub user_data: Option<&'a str>,
}

/// The VM, or why the request is wrong.
pub fn vm(c: &CreateVm) -> Result<VirtualMachine, String> {
    let (ds_ns, ds) = match c.datasource.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => (Some(ns), name),
        Some(_) => {
            return Err(format!(
                "--datasource {}: give NAME or NAMESPACE/NAME",
                c.datasource
            ))
        }
        None => (None, c.datasource),
    };
    if c.cpus == 0 || c.cpus > 32 {
        return Err(format!("--cpus {}: Kiln runs 1 to 32 vCPUs", c.cpus));
    }
    let root = format!("{}-root", c.name);
    let mut source_ref = serde_json::json!({"kind": "DataSource", "name": ds});
    if let Some(ns) = ds_ns {
        source_ref["namespace"] = ns.into();
    }
    let mut storage = serde_json::json!({});
    if let Some(size) = c.size {
        storage["resources"] = serde_json::json!({"requests": {"storage": size}});
    }
    if let Some(class) = c.storage_class {
        storage["storageClassName"] = class.into();
    }
    let mut disks = vec![serde_json::json!({"name": "root", "disk": {"bus": "virtio"}})];
    let mut volumes = vec![serde_json::json!({"name": "root", "dataVolume": {"name": root}})];
    if let Some(user_data) = c.user_data {
        disks.push(serde_json::json!({"name": "cloudinit", "disk": {"bus": "virtio"}}));
        volumes.push(
            serde_json::json!({"name": "cloudinit", "cloudInitNoCloud": {"userData": user_data}}),
        );
    }
    let vm = serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": c.name},
        "spec": {
            "runStrategy": "Always",
            "dataVolumeTemplates": [{
                "metadata": {"name": root},
                "spec": {"sourceRef": source_ref, "storage": storage},
            }],
            "template": {"spec": {
                "domain": {
                    "cpu": {"cores": c.cpus},
                    "memory": {"guest": c.memory},
                    "devices": {"disks": disks},
                },
                "volumes": volumes,
            }},
        },
    });
    serde_json::from_value(vm).map_err(|e| format!("the VM: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_clones_its_datasource_and_carries_the_user_data() {
        let vm = vm(&CreateVm {
            name: "web",
            datasource: "kiln-os-images/debian",
            size: Some("2Gi"),
            storage_class: Some("kiln-csi-hostpath"),
            memory: "1Gi",
            cpus: 2,
            user_data: Some("#cloud-config\nhostname: web\n"),
        })
        .unwrap();
        let t = &vm.spec.data_volume_templates.as_ref().unwrap()[0];
        assert_eq!(
            t.metadata.as_ref().unwrap().name.as_deref(),
            Some("web-root")
        );
        let r = t.spec.source_ref.as_ref().unwrap();
        assert_eq!((r.kind.as_str(), r.name.as_str()), ("DataSource", "debian"));
        assert_eq!(r.namespace.as_deref(), Some("kiln-os-images"));
        assert_eq!(t.spec.storage().size().map(|q| q.0.as_str()), Some("2Gi"));
        assert_eq!(
            t.spec.storage().storage_class_name.as_deref(),
            Some("kiln-csi-hostpath")
        );
        let vols = &vm.spec.template.spec.volumes;
        assert_eq!(vols[0].data_volume.as_ref().unwrap().name, "web-root");
        let ud = vols[1]
            .cloud_init_no_cloud
            .as_ref()
            .unwrap()
            .user_data
            .as_deref();
        assert_eq!(ud, Some("#cloud-config\nhostname: web\n"));
    }

    #[test]
    fn bad_requests_are_refused() {
        let base = CreateVm {
            name: "x",
            datasource: "/debian",
            size: None,
            storage_class: None,
            memory: "512Mi",
            cpus: 1,
            user_data: None,
        };
        assert!(vm(&base).unwrap_err().contains("NAMESPACE/NAME"));
        assert!(vm(&CreateVm {
            datasource: "d",
            cpus: 0,
            ..base
        })
        .is_err());
        let plain = vm(&CreateVm {
            datasource: "debian",
            cpus: 1,
            ..base
        })
        .unwrap();
        assert_eq!(
            plain.spec.template.spec.volumes.len(),
            1,
            "no seed without user-data"
        );
    }
}
