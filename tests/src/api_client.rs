//! A deliberately plain HTTP/1.1 client on kiln-vmm's API socket (one connection per request),
//! and a validator that checks each response against resources/openapi/kiln-vmm.yaml.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::workspace_root;

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body))
    }

    pub fn fault_message(&self) -> String {
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Parses one response from `raw` (status line, headers, Content-Length body).
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    (rest.len() >= len).then(|| Response {
        status,
        headers,
        body: rest[..len].to_string(),
    })
}

/// One client; every request opens a new connection.
#[derive(Clone, Debug)]
pub struct ApiClient {
    pub socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: &Path) -> Self {
        ApiClient {
            socket: socket.to_owned(),
        }
    }

    pub fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        s
    }

    /// Sends `method path` with an optional JSON body; returns the response.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut s = self.connect();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("sending the request");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        parse_response(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {path}: no complete response: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn put(&self, path: &str, body: &str) -> Response {
        self.request("PUT", path, Some(body))
    }

    pub fn patch(&self, path: &str, body: &str) -> Response {
        self.request("PATCH", path, Some(body))
    }
}

/// The OpenAPI document, for checking responses.
pub struct OpenApi {
    doc: Value,
}

impl Default for OpenApi {
    fn default() -> Self {
        Self::load()
    }
}

impl OpenApi {
    pub fn load() -> OpenApi {
        let path = workspace_root().join("resources/openapi/kiln-vmm.yaml");
        let text = std::fs::read_to_string(&path).expect("reading the OpenAPI document");
        let doc: Value = serde_yaml::from_str(&text).expect("the OpenAPI document is YAML");
        OpenApi { doc }
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix("#/")
                .map(|p| p.split('/').fold(&self.doc, |node, key| &node[key]))
                .unwrap_or(&Value::Null),
            None => v,
        }
    }

    /// The document's path template matching a concrete path.
    fn template(&self, path: &str) -> Option<&str> {
        let want: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.doc["paths"].as_object()?.keys().find_map(|t| {
            let parts: Vec<&str> = t.split('/').filter(|s| !s.is_empty()).collect();
            let same = parts.len() == want.len()
                && parts
                    .iter()
                    .zip(&want)
                    .all(|(p, w)| p.starts_with('{') || p == w);
            same.then_some(t.as_str())
        })
    }

    /// Panics unless `resp` is a documented response of `method path` with a valid body.
    pub fn check(&self, method: &str, path: &str, resp: &Response) {
        let ctx = format!("{method} {path} -> {} {}", resp.status, resp.body);
        let Some(template) = self.template(path) else {
            assert_eq!(resp.status, 404, "undocumented path must be 404: {ctx}");
            self.check_error_body(resp, &ctx);
            return;
        };
        let op = &self.doc["paths"][template][method.to_ascii_lowercase()];
        if op.is_null() {
            assert_eq!(resp.status, 405, "undocumented method must be 405: {ctx}");
            assert!(resp.header("allow").is_some(), "405 needs Allow: {ctx}");
            self.check_error_body(resp, &ctx);
            return;
        }
        let documented = &op["responses"][resp.status.to_string()];
        assert!(!documented.is_null(), "status not documented: {ctx}");
        let schema = &self.resolve(documented)["content"]["application/json"]["schema"];
        if schema.is_null() {
            assert!(resp.body.is_empty(), "documented without a body: {ctx}");
            return;
        }
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{ctx}"
        );
        self.validate(schema, &resp.json(), &ctx);
    }

    fn check_error_body(&self, resp: &Response, ctx: &str) {
        let schema = serde_json::json!({"$ref": "#/components/schemas/Error"});
        self.validate(&schema, &resp.json(), ctx);
    }

    fn validate(&self, schema: &Value, body: &Value, ctx: &str) {
        let mut root = schema.clone();
        if let Some(obj) = root.as_object_mut() {
            obj.insert("components".into(), self.doc["components"].clone());
        }
        let validator = jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("schema for {ctx} does not compile: {e}"));
        let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{ctx}: does not match the OpenAPI document: {errors:?}"
        );
    }
}
