//! A VM's dataVolumeTemplates, as KubeVirt's: each becomes a DataVolume owned by the VM
//! (created with it, deleted with it), and a run starts only once they all succeeded.

use kiln_crd::cdi::{DataVolume, DataVolumePhase};
use kiln_crd::VirtualMachine;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Resource, ResourceExt};

use crate::context::{Context, Result};

/// Where the VM's DataVolumes are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provisioning {
    /// Not all succeeded yet: KubeVirt's printable status (Provisioning,
    /// WaitingForVolumeBinding or DataVolumeError) and why.
    pub waiting: Option<(&'static str, String)>,
}

/// Creates the VM's missing DataVolumes and says whether they are all ready.
pub async fn ensure(vm: &VirtualMachine, ctx: &Context) -> Result<Provisioning> {
    let Some(templates) = vm.spec.data_volume_templates.as_ref() else {
        return Ok(Provisioning::default());
    };
    let ns = vm.namespace().unwrap_or_default();
    let api: Api<DataVolume> = Api::namespaced(ctx.client.clone(), &ns);
    let mut waiting = None;
    for t in templates {
        let meta = t.metadata.clone().unwrap_or_default();
        let Some(name) = meta.name.clone() else {
            continue; // refused at admission
        };
        let dv = match api.get_opt(&name).await? {
            Some(dv) => dv,
            None => {
                let dv = DataVolume {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        labels: meta.labels.clone(),
                        annotations: meta.annotations.clone(),
                        owner_references: vm.controller_owner_ref(&()).map(|r| vec![r]),
                        ..Default::default()
                    },
                    spec: t.spec.clone(),
                    status: None,
                };
                match api.create(&PostParams::default(), &dv).await {
                    Ok(created) => {
                        ctx.event(
                            vm,
                            false,
                            "SuccessfulDataVolumeCreate",
                            format!("Created DataVolume {name}"),
                        )
                        .await;
                        created
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let phase = dv.status.as_ref().and_then(|s| s.phase);
        let state = match phase {
            Some(DataVolumePhase::Succeeded) => None,
            Some(DataVolumePhase::Failed) => {
                Some(("DataVolumeError", format!("DataVolume {name} failed")))
            }
            Some(DataVolumePhase::Pending) | None => Some((
                "WaitingForVolumeBinding",
                format!("DataVolume {name} is Pending"),
            )),
            Some(p) => Some((
                "Provisioning",
                format!("DataVolume {name} is {}", p.as_str()),
            )),
        };
        // The worst state wins: an error, then a wait for binding, then provisioning.
        let rank = |s: &str| match s {
            "DataVolumeError" => 3,
            "WaitingForVolumeBinding" => 2,
            _ => 1,
        };
        if let Some(s) = state {
            if waiting
                .as_ref()
                .is_none_or(|w: &(&str, String)| rank(s.0) > rank(w.0))
            {
                waiting = Some(s);
            }
        }
    }
    Ok(Provisioning { waiting })
}
