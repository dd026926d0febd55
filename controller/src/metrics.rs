//! The controller's Prometheus metrics (reconciles, their durations and errors, VMIs by phase,
//! Kubernetes API requests by verb and resource, leadership) and its HTTP endpoint:
//! `/metrics`, `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kiln_crd::VirtualMachineInstance;
use kube::runtime::reflector::Store;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::warn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub verb: String,
    pub resource: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub errors: Family<ControllerLabel, Counter>,
    pub duration: Family<ControllerLabel, Histogram>,
    pub vmis: Family<PhaseLabel, Gauge>,
    pub api_requests: Family<RequestLabel, Counter>,
    pub leader: Gauge,
    /// VMIs as the controller's cache holds them (for VMIs by phase at scrape time).
    pub vmi_store: Mutex<Option<Store<VirtualMachineInstance>>>,
    /// Standing by, or leading with its caches filled.
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kiln_controller");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let errors = Family::<ControllerLabel, Counter>::default();
        let duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        });
        let vmis = Family::<PhaseLabel, Gauge>::default();
        let api_requests = Family::<RequestLabel, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed", errors.clone());
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took",
            duration.clone(),
        );
        registry.register("vmis", "VirtualMachineInstances by phase", vmis.clone());
        registry.register(
            "api_requests",
            "Kubernetes API requests the controller made, by verb and resource",
            api_requests.clone(),
        );
        registry.register("leader", "1 while this replica leads", leader.clone());
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            vmis,
            api_requests,
            leader,
            vmi_store: Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Times one reconcile of `controller`.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabel { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: std::time::Instant::now(),
        }
    }

    /// Counts an API request the client is about to send.
    pub fn count_request(&self, method: &str, path: &str, query: Option<&str>) {
        let watch =
            query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let (resource, named) = resource_of(path);
        let verb = match (method, named, watch) {
            (_, _, true) => "watch",
            ("GET", true, _) => "get",
            ("GET", false, _) => "list",
            ("POST", _, _) => "create",
            ("PUT", _, _) => "update",
            ("PATCH", _, _) => "patch",
            ("DELETE", _, _) => "delete",
            _ => "other",
        };
        self.api_requests
            .get_or_create(&RequestLabel {
                verb: verb.into(),
                resource,
            })
            .inc();
    }

    fn render(&self) -> String {
        if let Some(store) = self.vmi_store.lock().ok().and_then(|s| s.clone()) {
            let mut counts = std::collections::BTreeMap::<String, i64>::new();
            for phase in [
                "Pending",
                "Scheduling",
                "Scheduled",
                "Running",
                "Succeeded",
                "Failed",
            ] {
                counts.insert(phase.into(), 0);
            }
            for vmi in store.state() {
                let phase = vmi.status.as_ref().map(|s| s.phase).unwrap_or_default();
                *counts.entry(format!("{phase:?}")).or_default() += 1;
            }
            for (phase, n) in counts {
                self.vmis.get_or_create(&PhaseLabel { phase }).set(n);
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            warn!("encoding metrics failed");
        }
        out
    }
}

/// `/api/v1/namespaces/ns/pods/name` → ("pods", true); with a subresource, "pods/status".
fn resource_of(path: &str) -> (String, bool) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segs.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return ("other".into(), false),
    };
    let rest = match rest {
        ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
        other => other,
    };
    match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
        _ => ("other".into(), false),
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: std::time::Instant,
}

impl ReconcileTimer<'_> {
    pub fn failed(&self) {
        self.metrics
            .errors
            .get_or_create(&ControllerLabel {
                controller: self.controller,
            })
            .inc();
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&ControllerLabel {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("metrics endpoint: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics.render()),
                        "/healthz" => (StatusCode::OK, "ok".to_string()),
                        "/readyz" if metrics.ready.load(Ordering::Acquire) => {
                            (StatusCode::OK, "ready".into())
                        }
                        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "filling caches".into()),
                        _ => (StatusCode::NOT_FOUND, "not found".into()),
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_verb_and_resource() {
        let m = Metrics::default();
        m.count_request("GET", "/api/v1/namespaces/d/pods/p", None);
        m.count_request("GET", "/api/v1/pods", Some("watch=true&labelSelector=x"));
        m.count_request(
            "PATCH",
            "/apis/kiln.dev/v1alpha1/namespaces/d/virtualmachineinstances/v/status",
            None,
        );
        m.count_request("POST", "/api/v1/namespaces/d/pods", None);
        let text = m.render();
        for line in [
            r#"kiln_controller_api_requests_total{verb="get",resource="pods"} 1"#,
            r#"kiln_controller_api_requests_total{verb="watch",resource="pods"} 1"#,
            r#"kiln_controller_api_requests_total{verb="patch",resource="virtualmachineinstances/status"} 1"#,
            r#"kiln_controller_api_requests_total{verb="create",resource="pods"} 1"#,
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }
}
