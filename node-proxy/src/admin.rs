//! The node proxy's admin surfaces: `/metrics` (15020), `/healthz/ready` (15021) and the config
//! dump (15000, localhost).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::StatusCode;
use weft_core::admin::{Handler, Reply};

use crate::proxy::Proxy;

pub(crate) fn metrics(proxy: Arc<Proxy>) -> Handler {
    Arc::new(move |path| match path {
        "/metrics" | "/stats/prometheus" => {
            proxy.refresh_gauges();
            Reply {
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ..Reply::text(weft_core::metrics::encode(&proxy.registry))
            }
        }
        _ => Reply::status(StatusCode::NOT_FOUND, "try /metrics\n"),
    })
}

pub(crate) fn readiness(proxy: Arc<Proxy>) -> Handler {
    Arc::new(move |path| match path {
        "/healthz/ready" if proxy.ready.load(Ordering::Relaxed) => Reply::text("ready\n"),
        "/healthz/ready" => Reply::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first config\n",
        ),
        _ => Reply::status(StatusCode::NOT_FOUND, "try /healthz/ready\n"),
    })
}

pub(crate) fn config_dump(
    proxy: Arc<Proxy>,
    enrolled: Arc<std::sync::Mutex<Vec<String>>>,
) -> Handler {
    Arc::new(move |path| match path {
        "/config_dump" => {
            let index = proxy.index.load();
            let certs = proxy.certs.load();
            let mut identities: Vec<_> = certs
                .identities
                .values()
                .map(|id| {
                    serde_json::json!({
                        "identity": id.cert.identity().to_string(),
                        "expires_in_secs": id.cert.remaining().as_secs(),
                    })
                })
                .collect();
            identities.sort_by_key(|v| v["identity"].as_str().unwrap_or_default().to_owned());
            let enrolled = enrolled.lock().map(|e| e.clone()).unwrap_or_default();
            let dump = serde_json::json!({
                "node": proxy.config.node,
                "capture_mode": proxy.capture.mode(),
                "config_source": proxy.config.source.to_string(),
                "enrolled_pods": enrolled,
                "certificates": identities,
                "mesh": index.config(),
            });
            Reply::json(serde_json::to_string_pretty(&dump).unwrap_or_default())
        }
        _ => Reply::status(StatusCode::NOT_FOUND, "try /config_dump\n"),
    })
}
