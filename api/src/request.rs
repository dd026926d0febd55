//! Routing: an HTTP method, path and body become one validated `ApiRequest`, or an error that
//! says exactly what was wrong (unknown path, wrong method, bad JSON, mismatched ids).

use serde::de::DeserializeOwned;

use crate::models::*;
use crate::response::ApiResponse;

/// Longest resource id (drive_id, iface_id) accepted.
pub const MAX_ID_LEN: usize = 64;

/// One validated API request, ready for the VMM.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiRequest {
    GetInstanceInfo,
    GetVersion,
    GetMachineConfig,
    PutMachineConfig(MachineConfiguration),
    PatchMachineConfig(MachineConfigurationUpdate),
    PutBootSource(BootSource),
    PutDrive(Drive),
    PatchDrive(PartialDrive),
    PutNetworkInterface(NetworkInterface),
    PatchNetworkInterface(PartialNetworkInterface),
    PutEntropy(EntropyDevice),
    PutLogger(Logger),
    PutMetrics(Metrics),
    Action(ActionType),
    PatchVm(VmStateRequest),
    GetVmConfig,
    GetKilnState(StateQuery),
}

/// The resources served, and the methods each accepts.
enum Route<'a> {
    Root,
    Version,
    MachineConfig,
    BootSource,
    Drive(&'a str),
    NetworkInterface(&'a str),
    Entropy,
    Logger,
    Metrics,
    Actions,
    Vm,
    VmConfig,
    KilnState,
}

impl<'a> Route<'a> {
    fn find(path: &'a str) -> Option<Route<'a>> {
        let path = path.split('?').next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        Some(match segments.as_slice() {
            [] => Route::Root,
            ["version"] => Route::Version,
            ["machine-config"] => Route::MachineConfig,
            ["boot-source"] => Route::BootSource,
            ["drives", id] => Route::Drive(id),
            ["network-interfaces", id] => Route::NetworkInterface(id),
            ["entropy"] => Route::Entropy,
            ["logger"] => Route::Logger,
            ["metrics"] => Route::Metrics,
            ["actions"] => Route::Actions,
            ["vm"] => Route::Vm,
            ["vm", "config"] => Route::VmConfig,
            ["kiln", "v1", "state"] => Route::KilnState,
            _ => return None,
        })
    }

    fn methods(&self) -> &'static [&'static str] {
        match self {
            Route::Root | Route::Version | Route::VmConfig | Route::KilnState => &["GET"],
            Route::MachineConfig => &["GET", "PUT", "PATCH"],
            Route::Drive(_) | Route::NetworkInterface(_) => &["PUT", "PATCH"],
            Route::Vm => &["PATCH"],
            Route::BootSource
            | Route::Entropy
            | Route::Logger
            | Route::Metrics
            | Route::Actions => &["PUT"],
        }
    }
}

fn body<T: DeserializeOwned>(method: &str, body: &[u8]) -> Result<T, ApiResponse> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiResponse::bad_request(format!(
            "Empty {method} request: this resource needs a JSON body."
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiResponse::bad_request(format!("Invalid JSON body: {e}")))?;
    // serde would also read a struct from an array of its fields: only objects are bodies.
    if !value.is_object() {
        return Err(ApiResponse::bad_request(
            "Invalid JSON body: expected a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiResponse::bad_request(format!("Invalid JSON body: {e}")))
}

/// Checks a resource id from the path and that the body names the same one.
fn check_id(kind: &str, path_id: &str, body_id: &str) -> Result<(), ApiResponse> {
    let valid = !path_id.is_empty()
        && path_id.len() <= MAX_ID_LEN
        && path_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(ApiResponse::bad_request(format!(
            "Invalid {kind} {path_id:?}: use 1 to {MAX_ID_LEN} letters, digits, '_' or '-'."
        )));
    }
    if path_id != body_id {
        return Err(ApiResponse::bad_request(format!(
            "The id from the path [{path_id}] does not match the id from the body [{body_id}]!"
        )));
    }
    Ok(())
}

/// Turns a request (path with its query, if any) into an `ApiRequest`, or the error response
/// to send.
pub fn route(method: &str, path: &str, raw: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let Some(route) = Route::find(path) else {
        return Err(ApiResponse::not_found(path));
    };
    if !route.methods().contains(&method) {
        return Err(ApiResponse::method_not_allowed(
            method,
            path,
            route.methods(),
        ));
    }
    use ApiRequest as R;
    Ok(match (route, method) {
        (Route::Root, _) => R::GetInstanceInfo,
        (Route::Version, _) => R::GetVersion,
        (Route::VmConfig, _) => R::GetVmConfig,
        (Route::KilnState, _) => R::GetKilnState(
            StateQuery::parse(path.split_once('?').map(|(_, q)| q))
                .map_err(|e| ApiResponse::bad_request(format!("GET /kiln/v1/state: {e}")))?,
        ),
        (Route::MachineConfig, "GET") => R::GetMachineConfig,
        (Route::MachineConfig, "PUT") => R::PutMachineConfig(body(method, raw)?),
        (Route::MachineConfig, _) => R::PatchMachineConfig(body(method, raw)?),
        (Route::BootSource, _) => R::PutBootSource(body(method, raw)?),
        (Route::Drive(id), "PUT") => {
            let d: Drive = body(method, raw)?;
            check_id("drive_id", id, &d.drive_id)?;
            R::PutDrive(d)
        }
        (Route::Drive(id), _) => {
            let d: PartialDrive = body(method, raw)?;
            check_id("drive_id", id, &d.drive_id)?;
            R::PatchDrive(d)
        }
        (Route::NetworkInterface(id), "PUT") => {
            let n: NetworkInterface = body(method, raw)?;
            check_id("iface_id", id, &n.iface_id)?;
            R::PutNetworkInterface(n)
        }
        (Route::NetworkInterface(id), _) => {
            let n: PartialNetworkInterface = body(method, raw)?;
            check_id("iface_id", id, &n.iface_id)?;
            R::PatchNetworkInterface(n)
        }
        (Route::Entropy, _) => R::PutEntropy(body(method, raw)?),
        (Route::Logger, _) => R::PutLogger(body(method, raw)?),
        (Route::Metrics, _) => R::PutMetrics(body(method, raw)?),
        (Route::Actions, _) => R::Action(body::<InstanceActionInfo>(method, raw)?.action_type),
        (Route::Vm, _) => R::PatchVm(body::<Vm>(method, raw)?.state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(method: &str, path: &str, b: &str) -> ApiResponse {
        route(method, path, b.as_bytes()).unwrap_err()
    }

    #[test]
    fn routes_every_resource() {
        assert_eq!(route("GET", "/", b""), Ok(ApiRequest::GetInstanceInfo));
        assert_eq!(route("GET", "/vm/config", b""), Ok(ApiRequest::GetVmConfig));
        assert_eq!(
            route("GET", "/kiln/v1/state", b""),
            Ok(ApiRequest::GetKilnState(StateQuery {
                after_revision: None,
                wait_ms: MAX_STATE_WAIT_MS
            }))
        );
        assert_eq!(
            route("GET", "/kiln/v1/state?after_revision=3&wait_ms=250", b""),
            Ok(ApiRequest::GetKilnState(StateQuery {
                after_revision: Some(3),
                wait_ms: 250
            }))
        );
        assert_eq!(
            route(
                "PUT",
                "/machine-config",
                br#"{"vcpu_count": 2, "mem_size_mib": 256}"#
            ),
            Ok(ApiRequest::PutMachineConfig(MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 256,
                ..Default::default()
            }))
        );
        assert_eq!(
            route("PUT", "/actions", br#"{"action_type": "InstanceStart"}"#),
            Ok(ApiRequest::Action(ActionType::InstanceStart))
        );
        assert_eq!(
            route("PATCH", "/vm", br#"{"state": "Paused"}"#),
            Ok(ApiRequest::PatchVm(VmStateRequest::Paused))
        );
        let drive = br#"{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false}"#;
        assert!(matches!(
            route("PUT", "/drives/rootfs", drive),
            Ok(ApiRequest::PutDrive(d)) if d.is_root_device && d.path_on_host.as_deref() == Some("/r.ext4")
        ));
        let net =
            br#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}"#;
        assert!(matches!(
            route("PUT", "/network-interfaces/eth0", net),
            Ok(ApiRequest::PutNetworkInterface(n)) if n.host_dev_name == "tap0"
        ));
        assert!(matches!(
            route(
                "PUT",
                "/logger",
                br#"{"level": "warning", "show_level": true}"#
            ),
            Ok(ApiRequest::PutLogger(Logger {
                level: Some(LogLevel::Warning),
                ..
            }))
        ));
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        let r = err("GET", "/balloon", "");
        assert_eq!(r.status, 404);
        assert!(r.fault_message().unwrap().contains("/balloon"));
        let r = err("DELETE", "/machine-config", "");
        assert_eq!(r.status, 405);
        assert_eq!(r.allow.as_deref(), Some("GET, PUT, PATCH"));
        assert_eq!(err("GET", "/drives/x", "").status, 405);
        assert_eq!(err("GET", "/drives", "").status, 404);
    }

    #[test]
    fn malformed_bodies_are_400_with_the_reason() {
        let r = err("PUT", "/machine-config", "{\"vcpu_count\": 2,");
        assert_eq!(r.status, 400);
        assert!(r.fault_message().unwrap().starts_with("Invalid JSON body"));
        let r = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 1, "bogus": 1}"#,
        );
        assert!(r.fault_message().unwrap().contains("unknown field `bogus`"));
        let r = err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 300, "mem_size_mib": 1}"#,
        );
        assert_eq!(r.status, 400);
        let r = err("PUT", "/boot-source", "  ");
        assert!(r.fault_message().unwrap().contains("Empty PUT"));
        let r = err("PUT", "/actions", r#"{"action_type": "Reboot"}"#);
        assert!(r.fault_message().unwrap().contains("unknown variant"));
        let r = err("PUT", "/logger", "[null, null]");
        assert!(r
            .fault_message()
            .unwrap()
            .contains("expected a JSON object"));
    }

    #[test]
    fn ids_must_match_and_be_plain() {
        let r = err(
            "PUT",
            "/drives/a",
            r#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}"#,
        );
        assert!(r.fault_message().unwrap().contains("does not match"));
        let r = err("PATCH", "/network-interfaces/a.b", r#"{"iface_id": "a.b"}"#);
        assert!(r.fault_message().unwrap().contains("Invalid iface_id"));
        let long = "x".repeat(MAX_ID_LEN + 1);
        let body =
            format!(r#"{{"drive_id": "{long}", "path_on_host": "/x", "is_root_device": false}}"#);
        assert_eq!(
            route("PUT", &format!("/drives/{long}"), body.as_bytes())
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn state_queries_are_checked() {
        for (query, needle) in [
            ("?wait_ms=60001", "at most 60000"),
            ("?after_revision=x", "whole number"),
            ("?after_revision=-1", "whole number"),
            ("?revision=2", "unknown query parameter \"revision\""),
        ] {
            let e = err("GET", &format!("/kiln/v1/state{query}"), "");
            assert_eq!(e.status, 400, "{query}");
            let body: serde_json::Value =
                serde_json::from_str(e.body.as_deref().unwrap_or_default()).unwrap();
            let message = body["fault_message"].as_str().unwrap_or_default();
            assert!(message.contains(needle), "{query}: {message}");
        }
        // Other resources ignore a query, as before.
        assert_eq!(route("GET", "/?x=1", b""), Ok(ApiRequest::GetInstanceInfo));
    }
}
