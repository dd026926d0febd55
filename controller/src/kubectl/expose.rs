//! `kubectl kiln expose` (virtctl's): a Service selecting a VM's launcher pods (every run's, by
//! the `vm.kiln.dev/name` label the controller puts on them) or one VMI's pod.

use std::collections::BTreeMap;

use clap::ValueEnum;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kiln_crd::names::{VMI_NAME_LABEL, VM_NAME_LABEL};

use super::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServiceType {
    #[value(name = "ClusterIP")]
    ClusterIp,
    #[value(name = "NodePort")]
    NodePort,
    #[value(name = "LoadBalancer")]
    LoadBalancer,
}

impl ServiceType {
    fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    #[value(name = "TCP")]
    Tcp,
    #[value(name = "UDP")]
    Udp,
}

/// What the user asked to expose.
pub struct Expose<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub service: Option<&'a str>,
    pub port: u16,
    pub target_port: Option<u16>,
    pub service_type: ServiceType,
    pub protocol: Protocol,
}

/// The Service `expose` creates.
pub fn service(e: &Expose, namespace: &str) -> Service {
    let selector = match e.kind {
        Kind::Vm => (VM_NAME_LABEL, e.name),
        Kind::Vmi => (VMI_NAME_LABEL, e.name),
    };
    Service {
        metadata: ObjectMeta {
            name: Some(e.service.unwrap_or(e.name).to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(e.service_type.as_str().into()),
            selector: Some(BTreeMap::from([(
                selector.0.to_string(),
                selector.1.to_string(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some(format!("port-{}", e.port)),
                port: i32::from(e.port),
                target_port: Some(IntOrString::Int(i32::from(e.target_port.unwrap_or(e.port)))),
                protocol: Some(
                    match e.protocol {
                        Protocol::Tcp => "TCP",
                        Protocol::Udp => "UDP",
                    }
                    .into(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_exposed_by_its_name_label_on_every_run() {
        let s = service(
            &Expose {
                kind: Kind::Vm,
                name: "web",
                service: None,
                port: 80,
                target_port: Some(8080),
                service_type: ServiceType::NodePort,
                protocol: Protocol::Tcp,
            },
            "apps",
        );
        assert_eq!(s.metadata.name.as_deref(), Some("web"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(
            spec.selector
                .unwrap()
                .get(VM_NAME_LABEL)
                .map(String::as_str),
            Some("web")
        );
        let p = &spec.ports.unwrap()[0];
        assert_eq!(
            (p.port, p.target_port.clone()),
            (80, Some(IntOrString::Int(8080)))
        );
    }

    #[test]
    fn a_vmi_is_exposed_by_its_own_label_under_the_given_name() {
        let s = service(
            &Expose {
                kind: Kind::Vmi,
                name: "web",
                service: Some("web-ssh"),
                port: 22,
                target_port: None,
                service_type: ServiceType::ClusterIp,
                protocol: Protocol::Tcp,
            },
            "apps",
        );
        assert_eq!(s.metadata.name.as_deref(), Some("web-ssh"));
        let spec = s.spec.unwrap();
        assert!(spec.selector.unwrap().contains_key(VMI_NAME_LABEL));
        assert_eq!(
            spec.ports.unwrap()[0].target_port,
            Some(IntOrString::Int(22))
        );
    }
}
