//! Kiln VMM's HTTP API, Firecracker-compatible: JSON models, routing and validation, the HTTP
//! server on a unix socket, and the OpenAPI document that describes exactly what is served.
//! No KVM here: the VMM receives `ApiRequest`s through a `RequestSink` and answers each.

pub mod models;
pub mod request;
pub mod response;
pub mod server;

pub use request::{route, ApiRequest};
pub use response::ApiResponse;
pub use server::{bind, spawn, ApiCounters, RequestSink, ServerConfig, ServerError};
/// The channel a `RequestSink` answers on.
pub use tokio::sync::oneshot;

/// The OpenAPI document (resources/openapi/kiln-vmm.yaml).
pub const OPENAPI_YAML: &str = include_str!("../../resources/openapi/kiln-vmm.yaml");

/// Kiln's version, reported by `GET /` and `GET /version`.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
