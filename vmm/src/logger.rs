//! The VMM's log: tracing lines on stderr by default; `--log-level`, and the API's PUT /logger,
//! which redirects them to a file or named pipe and changes level, format and module filter
//! while the VMM runs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, RwLock};

use api::models::{LogLevel, Logger};
use thiserror::Error;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Error)]
pub enum LoggerError {
    #[error("log_path {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("log_path must not be empty")]
    EmptyPath,
}

#[derive(Clone, Debug)]
struct Settings {
    /// `None`: nothing is logged (level Off).
    level: Option<Level>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

/// Changes the running VMM's log.
#[derive(Clone)]
pub struct LogControl {
    settings: Arc<RwLock<Settings>>,
    target: Arc<Mutex<Option<File>>>,
}

/// Installs the global subscriber: level `level`, stderr, level names shown.
pub fn init(level: Level) -> LogControl {
    let control = LogControl {
        settings: Arc::new(RwLock::new(Settings {
            level: Some(level),
            show_level: true,
            show_origin: false,
            module: None,
        })),
        target: Arc::new(Mutex::new(None)),
    };
    let layer = tracing_subscriber::fmt::layer()
        .event_format(LineFormat(control.settings.clone()))
        .with_writer(control.clone())
        .with_filter(DynamicFilter(control.settings.clone()));
    // A second init (tests in one process) keeps the first subscriber; nothing to do then.
    let _ = tracing_subscriber::registry().with(layer).try_init();
    control
}

fn level_of(l: LogLevel) -> Option<Level> {
    match l {
        LogLevel::Off => None,
        LogLevel::Error => Some(Level::ERROR),
        LogLevel::Warning => Some(Level::WARN),
        LogLevel::Info => Some(Level::INFO),
        LogLevel::Debug => Some(Level::DEBUG),
        LogLevel::Trace => Some(Level::TRACE),
    }
}

impl LogControl {
    /// Applies PUT /logger. The file (or FIFO) is opened first: on error nothing changes.
    pub fn apply(&self, cfg: &Logger) -> Result<(), LoggerError> {
        let file = match &cfg.log_path {
            Some(p) if p.is_empty() => return Err(LoggerError::EmptyPath),
            Some(p) => Some(
                OpenOptions::new()
                    // Read-write: a named pipe opens without waiting for a reader.
                    .read(true)
                    .create(true)
                    .append(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(p)
                    .map_err(|source| LoggerError::Open {
                        path: p.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        if let Ok(mut s) = self.settings.write() {
            if let Some(level) = cfg.level {
                s.level = level_of(level);
            }
            if let Some(show) = cfg.show_level {
                s.show_level = show;
            }
            if let Some(show) = cfg.show_log_origin {
                s.show_origin = show;
            }
            if cfg.module.is_some() {
                s.module = cfg.module.clone().filter(|m| !m.is_empty());
            }
        }
        if let Some(file) = file {
            crate::seccomp::report_log_to(&file);
            *lock(&self.target) = Some(file);
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where one log line goes: the configured file, else stderr.
pub struct LogSink(Arc<Mutex<Option<File>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match lock(&self.0).as_mut() {
            // A full pipe drops the line instead of stalling the VMM.
            Some(f) => f.write(buf).or(Ok(buf.len())),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogControl {
    type Writer = LogSink;
    fn make_writer(&'a self) -> LogSink {
        LogSink(self.target.clone())
    }
}

/// Level and module filter, read at every event so that PUT /logger takes effect at once.
struct DynamicFilter(Arc<RwLock<Settings>>);

impl<S> Filter<S> for DynamicFilter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        let Ok(s) = self.0.read() else { return true };
        let level_ok = s.level.is_some_and(|max| *meta.level() <= max);
        let module_ok = match (&s.module, meta.module_path()) {
            (None, _) => true,
            (Some(m), Some(path)) => path.starts_with(m.as_str()),
            (Some(_), None) => false,
        };
        level_ok && module_ok
    }
}

/// `TIMESTAMP [LEVEL] [file:line] message fields`.
struct LineFormat(Arc<RwLock<Settings>>);

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let (show_level, show_origin) = self
            .0
            .read()
            .map(|s| (s.show_level, s.show_origin))
            .unwrap_or((true, false));
        SystemTime.format_time(&mut w)?;
        let meta = event.metadata();
        if show_level {
            write!(w, " {:>5}", meta.level())?;
        }
        if show_origin {
            write!(
                w,
                " {}:{}",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            )?;
        }
        write!(w, " ")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_logger_redirects_filters_and_formats_at_once() {
        let control = init(Level::INFO);
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("vmm.log");
        let bad = Logger {
            log_path: Some("/nonexistent/dir/vmm.log".into()),
            level: Some(LogLevel::Error),
            ..Default::default()
        };
        assert!(matches!(control.apply(&bad), Err(LoggerError::Open { .. })));
        control
            .apply(&Logger {
                log_path: Some(path.display().to_string()),
                level: Some(LogLevel::Warning),
                show_level: Some(true),
                show_log_origin: Some(true),
                module: None,
            })
            .unwrap();
        tracing::info!("logger-test: below the level");
        tracing::warn!("logger-test: at the level");
        control
            .apply(&Logger {
                level: Some(LogLevel::Trace),
                module: Some("some::other::module".into()),
                ..Default::default()
            })
            .unwrap();
        tracing::warn!("logger-test: filtered by module");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(" WARN "), "{text}");
        assert!(text.contains("logger.rs:"), "{text}");
        assert!(text.contains("logger-test: at the level"), "{text}");
        assert!(!text.contains("below the level"), "{text}");
        assert!(!text.contains("filtered by module"), "{text}");
    }
}
