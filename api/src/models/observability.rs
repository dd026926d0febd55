//! Logger and metrics configuration (`/logger`, `/metrics`).

use serde::{Deserialize, Serialize};

/// `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// A file or named pipe the log is appended to; without one the log stays on stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log lines from this module path prefix (for example `vmm::builder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Log levels; Firecracker's clients send them capitalised, lower case is accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    #[serde(alias = "off", alias = "OFF")]
    Off,
    #[serde(alias = "error", alias = "ERROR")]
    Error,
    #[serde(alias = "warning", alias = "WARNING", alias = "Warn", alias = "warn")]
    Warning,
    #[serde(alias = "info", alias = "INFO")]
    Info,
    #[serde(alias = "debug", alias = "DEBUG")]
    Debug,
    #[serde(alias = "trace", alias = "TRACE")]
    Trace,
}

/// `PUT /metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// A file or named pipe metrics are appended to, one JSON object per line.
    pub metrics_path: String,
}
