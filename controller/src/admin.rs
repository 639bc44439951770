//! The controller's admin endpoint: what each proxy acknowledged, each policy's verdict, the
//! sources' errors, the published config, and readiness.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::grpc::{Proxies, Published};
use crate::model::status::Verdict;

/// Serves `/debug/proxies`, `/debug/policies`, `/debug/objects`, `/config_dump`, `/metrics`
/// and `/healthz/ready`.
pub fn handler(
    proxies: Proxies,
    published: watch::Receiver<Arc<Published>>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    ready: Arc<AtomicBool>,
    verdicts: watch::Receiver<Vec<Verdict>>,
) -> weft_core::admin::Handler {
    use weft_core::admin::Reply;
    Arc::new(move |path| match path {
        "/debug/proxies" => {
            Reply::json(serde_json::to_string_pretty(&proxies.snapshot()).unwrap_or_default())
        }
        "/debug/policies" => {
            Reply::json(serde_json::to_string_pretty(&*verdicts.borrow()).unwrap_or_default())
        }
        "/debug/manifests" | "/debug/objects" => {
            let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
            Reply::json(serde_json::json!({ "errors": errors }).to_string())
        }
        "/config_dump" => {
            let published = published.borrow();
            let versions: BTreeMap<&str, &str> = published
                .resources
                .values()
                .map(|r| (r.name.as_str(), r.version.as_str()))
                .collect();
            Reply::json(
                serde_json::to_string_pretty(&serde_json::json!({
                    "mesh": published.mesh,
                    "versions": versions,
                }))
                .unwrap_or_default(),
            )
        }
        "/healthz/ready" => ready_reply(&ready),
        "/metrics" => metrics_reply(&proxies, &verdicts.borrow()),
        _ => Reply::status(
            http::StatusCode::NOT_FOUND,
            "try /debug/proxies, /debug/objects, /debug/policies, /config_dump, /metrics, \
             /healthz/ready\n",
        ),
    })
}

/// Serves `/metrics` only: the port Prometheus scrapes, open to the pod network.
pub fn metrics(
    proxies: Proxies,
    verdicts: watch::Receiver<Vec<Verdict>>,
) -> weft_core::admin::Handler {
    Arc::new(move |path| match path {
        "/metrics" | "/stats/prometheus" => metrics_reply(&proxies, &verdicts.borrow()),
        _ => weft_core::admin::Reply::status(http::StatusCode::NOT_FOUND, "try /metrics\n"),
    })
}

fn metrics_reply(proxies: &Proxies, verdicts: &[Verdict]) -> weft_core::admin::Reply {
    weft_core::admin::Reply {
        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ..weft_core::admin::Reply::text(crate::metrics::render(proxies, verdicts))
    }
}

/// Serves `/healthz/ready` only: the port the kubelet probes, open to the pod network.
pub fn readiness(ready: Arc<AtomicBool>) -> weft_core::admin::Handler {
    Arc::new(move |path| match path {
        "/healthz/ready" => ready_reply(&ready),
        _ => weft_core::admin::Reply::status(http::StatusCode::NOT_FOUND, "try /healthz/ready\n"),
    })
}

fn ready_reply(ready: &AtomicBool) -> weft_core::admin::Reply {
    if ready.load(Ordering::Relaxed) {
        weft_core::admin::Reply::text("ready\n")
    } else {
        weft_core::admin::Reply::status(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config published yet\n",
        )
    }
}
