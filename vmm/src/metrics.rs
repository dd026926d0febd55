//! Metrics for PUT /metrics: one JSON object per line, appended to a file or named pipe on
//! FlushMetrics and once a minute.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::ApiCounters;
use serde::Serialize;
use thiserror::Error;

/// How often metrics are written without being asked.
pub const METRICS_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("metrics_path {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("metrics are not configured: PUT /metrics first")]
    NotConfigured,
    #[error("writing metrics: {0}")]
    Write(io::Error),
}

/// The open metrics destination.
pub struct MetricsSink {
    file: File,
}

impl MetricsSink {
    pub fn open(path: &str) -> Result<MetricsSink, MetricsError> {
        let file = OpenOptions::new()
            // Read-write: a named pipe then opens without waiting for (or needing) a reader.
            .read(true)
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| MetricsError::Open {
                path: path.into(),
                source,
            })?;
        crate::seccomp::report_metrics_to(&file);
        Ok(MetricsSink { file })
    }

    pub fn write(&mut self, line: &MetricsLine) -> Result<(), MetricsError> {
        let mut json = serde_json::to_vec(line)
            .map_err(|e| MetricsError::Write(io::Error::other(e.to_string())))?;
        json.push(b'\n');
        self.file.write_all(&json).map_err(MetricsError::Write)
    }
}

#[derive(Debug, Serialize)]
pub struct ApiMetrics {
    pub requests: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize)]
pub struct VmmMetrics {
    /// NotStarted, Running, Paused or Exited.
    pub state: &'static str,
    pub uptime_ms: u64,
    pub vcpus: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_time_us: Option<u64>,
    /// Log lines the guest caused that were held back by the rate limit (`devices::guest_log`).
    pub guest_log_lines_suppressed: u64,
}

/// One metrics record.
#[derive(Debug, Serialize)]
pub struct MetricsLine {
    pub utc_timestamp_ms: u64,
    pub api_server: ApiMetrics,
    pub vmm: VmmMetrics,
}

impl MetricsLine {
    pub fn new(counters: &ApiCounters, vmm: VmmMetrics) -> MetricsLine {
        MetricsLine {
            utc_timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            api_server: ApiMetrics {
                requests: counters.requests.load(Ordering::Relaxed),
                failed: counters.failed.load(Ordering::Relaxed),
            },
            vmm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;

    fn line() -> MetricsLine {
        let counters = ApiCounters::default();
        counters.requests.store(3, Ordering::Relaxed);
        MetricsLine::new(
            &counters,
            VmmMetrics {
                state: "Running",
                uptime_ms: 5,
                vcpus: 1,
                boot_time_us: None,
                guest_log_lines_suppressed: 0,
            },
        )
    }

    #[test]
    fn lines_append_to_a_file_and_a_pipe_opens_without_a_reader() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let file = dir.as_path().join("m.json");
        let mut sink = MetricsSink::open(file.to_str().unwrap()).unwrap();
        sink.write(&line()).unwrap();
        sink.write(&line()).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["api_server"]["requests"], 3);
        assert_eq!(v["vmm"]["state"], "Running");

        let fifo = dir.as_path().join("m.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut sink = MetricsSink::open(fifo.to_str().unwrap()).unwrap();
        let mut reader = File::open(&fifo).unwrap();
        sink.write(&line()).unwrap();
        let mut buf = [0u8; 64];
        assert!(reader.read(&mut buf).unwrap() > 0);
    }

    #[test]
    fn unopenable_paths_are_reported() {
        assert!(matches!(
            MetricsSink::open("/nonexistent/dir/m.json"),
            Err(MetricsError::Open { .. })
        ));
    }
}
