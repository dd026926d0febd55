//! What the API answers: a status, an optional JSON body, and for 405 the allowed methods.

use serde::Serialize;

use crate::models::ApiErrorBody;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    /// JSON text, if the response has a body.
    pub body: Option<String>,
    /// The `Allow` header of a 405 response.
    pub allow: Option<String>,
}

impl ApiResponse {
    /// 204: the request was carried out and there is nothing to say.
    pub fn no_content() -> Self {
        ApiResponse {
            status: 204,
            body: None,
            allow: None,
        }
    }

    /// 200 with `value` as JSON.
    pub fn ok<T: Serialize>(value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(json) => ApiResponse {
                status: 200,
                body: Some(json),
                allow: None,
            },
            Err(e) => Self::error(500, format!("cannot encode the response: {e}")),
        }
    }

    pub fn error(status: u16, fault_message: impl Into<String>) -> Self {
        let body = ApiErrorBody {
            fault_message: fault_message.into(),
        };
        ApiResponse {
            status,
            body: serde_json::to_string(&body).ok(),
            allow: None,
        }
    }

    /// 400 with the reason.
    pub fn bad_request(fault_message: impl Into<String>) -> Self {
        Self::error(400, fault_message)
    }

    pub fn not_found(path: &str) -> Self {
        Self::error(
            404,
            format!("Invalid request path {path:?}: kiln-vmm does not serve this resource."),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str, allowed: &[&str]) -> Self {
        let allow = allowed.join(", ");
        let mut r = Self::error(
            405,
            format!("Invalid request method {method} for {path:?}: use {allow}."),
        );
        r.allow = Some(allow);
        r
    }

    /// The `fault_message` of an error response.
    pub fn fault_message(&self) -> Option<String> {
        let body: ApiErrorBody = serde_json::from_str(self.body.as_deref()?).ok()?;
        Some(body.fault_message)
    }
}
