//! Metrics: scraping a node proxy or waypoint and summing series by label.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Result, ensure};

use crate::bed::TestBed;
use crate::pod::Pod;
use crate::traffic::http_get_in;

/// Parses the Prometheus text format into `name{labels}` → value.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

impl TestBed {
    /// Connections node `i`'s proxy opened as a source over mutual TLS (HBONE) so far.
    pub fn mtls_connections_from(&self, i: usize) -> Result<f64> {
        Ok(metric_sum(
            &self.metrics(i)?,
            "weft_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("connection_security_policy", "mutual_tls"),
            ],
        ))
    }

    /// Node `i`'s metrics, parsed into (series → value).
    pub fn metrics(&self, i: usize) -> Result<BTreeMap<String, f64>> {
        let (status, body) = self.http_get_node(i, 15020, "/metrics")?;
        ensure!(status == 200, "metrics answered {status}");
        Ok(parse_metrics(&body))
    }

    /// The waypoint's metrics.
    pub fn waypoint_metrics(&self, w: &Pod) -> Result<BTreeMap<String, f64>> {
        let (_, text) = http_get_in(
            &w.netns_path(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 15020)),
            "/metrics",
        )?;
        Ok(parse_metrics(&text))
    }

    /// GET `path` from node `i`'s proxy on `port` (inside the node's namespace).
    pub fn http_get_node(&self, i: usize, port: u16, path: &str) -> Result<(u16, String)> {
        http_get_in(
            &Path::new("/run/netns").join(&self.nodes[i].netns),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            path,
        )
    }
}

/// Sums the series of `name` whose labels contain every `key="value"` in `labels`.
pub fn metric_sum(metrics: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            series.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}
