//! The controller's metrics: proxies connected, config pushes and how long a proxy took to
//! acknowledge one, refusals (NACKs) by reason, certificates signed and refused, policy
//! verdicts by state, and watch restarts. Counters are process-wide; gauges are read from the
//! controller's state when scraped.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::grpc::Proxies;
use crate::model::status::{Reason, Verdict};

type Labels = Vec<(String, String)>;

/// Most characters of a NACK's reason kept as a label (the rest would make each refusal a
/// series of its own).
const REASON_CHARS: usize = 80;

/// The controller's metric families.
pub struct ControllerMetrics {
    /// Config updates sent, by the receiving proxy's role.
    pub pushes: Family<Labels, Counter>,
    /// Seconds from sending an update to its acknowledgement.
    pub push_ack_seconds: Histogram,
    /// Updates refused, by role and reason.
    pub nacks: Family<Labels, Counter>,
    /// Certificate requests, by role and result (`issued`, or why refused).
    pub signings: Family<Labels, Counter>,
    /// Kubernetes watches interrupted and resumed, by kind.
    pub watch_restarts: Family<Labels, Counter>,
    connected: Family<Labels, Gauge>,
    nacked: Family<Labels, Gauge>,
    verdicts: Family<Labels, Gauge>,
}

/// Every result a certificate request can have (each has a series from the start).
pub const SIGNING_RESULTS: [&str; 6] = [
    "issued",
    "refused_not_entitled",
    "refused_unauthenticated",
    "refused_bad_request",
    "refused_not_ready",
    "refused_other",
];

/// The process's metrics.
pub static METRICS: LazyLock<ControllerMetrics> = LazyLock::new(|| ControllerMetrics {
    pushes: Family::default(),
    push_ack_seconds: Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]),
    nacks: Family::default(),
    signings: Family::default(),
    watch_restarts: Family::default(),
    connected: Family::default(),
    nacked: Family::default(),
    verdicts: Family::default(),
});

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let m = &*METRICS;
    let mut registry = Registry::with_prefix("weft_controller");
    registry.register(
        "config_pushes",
        "Config updates sent to proxies",
        m.pushes.clone(),
    );
    registry.register(
        "config_push_ack_seconds",
        "Time from sending a config update to its acknowledgement",
        m.push_ack_seconds.clone(),
    );
    registry.register(
        "config_nacks",
        "Config updates proxies refused, by reason",
        m.nacks.clone(),
    );
    registry.register(
        "certificate_signings",
        "Certificate requests, by result",
        m.signings.clone(),
    );
    registry.register(
        "watch_restarts",
        "Kubernetes watches interrupted and resumed",
        m.watch_restarts.clone(),
    );
    registry.register(
        "proxies_connected",
        "Proxies with an open config stream",
        m.connected.clone(),
    );
    registry.register(
        "proxies_nacked",
        "Connected proxies whose last answer refused the config (they keep their last good one)",
        m.nacked.clone(),
    );
    registry.register(
        "policy_verdicts",
        "Policies by kind and verdict",
        m.verdicts.clone(),
    );
    registry
});

/// A proxy's role, from the name it streams as.
pub fn role(name: &str) -> &'static str {
    if name.starts_with(crate::grpc::WAYPOINT_PREFIX) || name.starts_with("sa:") {
        "waypoint"
    } else {
        "node-proxy"
    }
}

/// Labels of one family member.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Most distinct NACK reasons given a series of their own; later ones are counted as `other`
/// (reasons name objects and addresses: each would otherwise be a series kept forever).
const MAX_REASONS: usize = 64;

static REASONS: LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
    LazyLock::new(Default::default);

/// A NACK's reason as a label: its first line, cut; `other` once [`MAX_REASONS`] are in use.
pub fn reason_label(reason: &str) -> String {
    let label: String = reason
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(REASON_CHARS)
        .collect();
    let mut seen = REASONS.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(&label) || seen.len() < MAX_REASONS {
        seen.insert(label.clone());
        label
    } else {
        "other".to_owned()
    }
}

/// The metrics in the Prometheus text format, gauges read from `proxies` and `verdicts` now.
pub fn render(proxies: &Proxies, verdicts: &[Verdict]) -> String {
    let m = &*METRICS;
    for result in SIGNING_RESULTS {
        let _ = m.signings.get_or_create(&labels(&[("result", result)]));
    }
    m.connected.clear();
    m.nacked.clear();
    for role in ["node-proxy", "waypoint"] {
        m.connected.get_or_create(&labels(&[("role", role)])).set(0);
        m.nacked.get_or_create(&labels(&[("role", role)])).set(0);
    }
    for (name, status) in proxies.snapshot() {
        let role = labels(&[("role", role(&name))]);
        if status.connected {
            m.connected.get_or_create(&role).inc();
            if status.last_nack.is_some() && !status.in_sync {
                m.nacked.get_or_create(&role).inc();
            }
        }
    }
    // Every state of every kind present, so that "none refused" is a 0, not a missing series.
    m.verdicts.clear();
    for v in verdicts {
        for state in [Reason::Accepted, Reason::PartiallyHonoured, Reason::Invalid] {
            let _ = m.verdicts.get_or_create(&labels(&[
                ("kind", v.kind.kind()),
                ("state", state.as_str()),
            ]));
        }
    }
    for v in verdicts {
        m.verdicts
            .get_or_create(&labels(&[
                ("kind", v.kind.kind()),
                ("state", v.reason.as_str()),
            ]))
            .inc();
    }
    weft_core::metrics::encode(&REGISTRY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::WAYPOINT_PREFIX;

    #[test]
    fn roles_and_reasons_make_bounded_labels() {
        assert_eq!(role("node1"), "node-proxy");
        assert_eq!(role(&format!("{WAYPOINT_PREFIX}shop.wp")), "waypoint");
        assert_eq!(reason_label(&"x".repeat(500)).len(), REASON_CHARS);
        assert_eq!(reason_label("first line\nsecond"), "first line");
        for i in 0..2 * MAX_REASONS {
            let _ = reason_label(&format!("reason {i}"));
        }
        assert_eq!(reason_label("yet another reason"), "other");
        assert_eq!(
            reason_label("first line"),
            "first line",
            "a known reason keeps its series"
        );
    }

    #[test]
    fn the_text_has_every_family() {
        let text = render(&Proxies::default(), &[]);
        for name in [
            "weft_controller_proxies_connected",
            "weft_controller_config_push_ack_seconds",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
