//! Names Kiln gives things in the cluster: labels, finalizers, and the launcher pod and
//! Secret of each VMI (derived from its name and UID, so a reconcile always finds its own).

/// Label on every launcher pod (as KubeVirt's `kubevirt.io: virt-launcher`).
pub const LAUNCHER_LABEL: &str = "kiln.dev";
pub const LAUNCHER_LABEL_VALUE: &str = "kiln-launcher";
/// The UID of the VMI a pod or Secret belongs to (as `kubevirt.io/created-by`).
pub const CREATED_BY_LABEL: &str = "kiln.dev/created-by";
/// The VMI's name, on its pod.
pub const VMI_NAME_LABEL: &str = "kiln.dev/vmi";
/// The VM's name, on its VMIs and their pods (as `vm.kubevirt.io/name`).
pub const VM_NAME_LABEL: &str = "vm.kiln.dev/name";

/// On a VMI: the controller shuts the guest down and waits for the pod to go before the VMI
/// is deleted.
pub const VMI_FINALIZER: &str = "kiln.dev/graceful-shutdown";
/// On a VM: its VMI is stopped before the VM goes.
pub const VM_FINALIZER: &str = "kiln.dev/vm-controller";

/// The launcher pod's main container (KubeVirt's name).
pub const COMPUTE_CONTAINER: &str = "compute";
/// Field manager of everything the controller applies.
pub const FIELD_MANAGER: &str = "kiln-controller";

/// The controller ↔ launcher endpoint's port on the pod IP.
pub const CONTROL_PORT: u16 = 4145;

/// Five characters of a UID, to tell runs of one VMI name apart.
fn short_uid(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(5)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// `<prefix><name>-<uid5>`, with the name cut so that the whole stays a valid DNS label.
fn derived(prefix: &str, name: &str, uid: &str) -> String {
    let tail = format!("-{}", short_uid(uid));
    let room = 63 - prefix.len() - tail.len();
    let cut: String = name.chars().take(room).collect();
    format!("{prefix}{}{tail}", cut.trim_end_matches(['-', '.']))
}

/// The launcher pod of the VMI `name` with `uid`.
pub fn launcher_pod_name(name: &str, uid: &str) -> String {
    derived("kiln-launcher-", name, uid)
}

/// The Secret holding the VMI's launch description and its controller token.
pub fn launch_secret_name(name: &str, uid: &str) -> String {
    derived("kiln-launch-", name, uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_valid_labels() {
        let uid = "3f2a9c1e-0b7d-4c55-9e0a-1234567890ab";
        assert_eq!(launcher_pod_name("web", uid), "kiln-launcher-web-3f2a9");
        assert_eq!(launch_secret_name("web", uid), "kiln-launch-web-3f2a9");
        let long = "a".repeat(80);
        let n = launcher_pod_name(&long, uid);
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("-3f2a9"));
        assert_eq!(launcher_pod_name("x-", uid), "kiln-launcher-x-3f2a9");
    }
}
