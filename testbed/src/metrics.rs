//! Metrics: scraping a node proxy or waypoint and summing series by label.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Result, ensure};

use crate::bed::TestBed;
use crate::pod::Pod;
use crate::traffic::http_get_in;

/// The bed's controller's metrics (its `--metrics-addr`, in node 0's namespace).
const CONTROLLER_JOB: &str = "  - job_name: weft-controller\n    static_configs:\n      \
                              - targets: ['127.0.0.1:15019']\n";

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

    /// Starts Prometheus (Debian's `prometheus`) in node `i`'s namespace, scraping every node
    /// proxy and waypoint each second, and waits until it is ready. Returns its address, which
    /// answers inside that namespace (`ip netns exec <node> ...`). It stops with the bed.
    pub fn prometheus(&mut self, i: usize) -> Result<SocketAddr> {
        let dir = self.dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let global = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n";
        let config = match self.control_plane() {
            // On an API server, the targets are found as deploy/observability's pod discovery
            // finds them: pods annotated prometheus.io/scrape, at their IP and annotated port
            // and path. (Debian's Prometheus is built without Kubernetes discovery, so the bed
            // does the discovery and hands Prometheus a file.)
            Some(plane) => {
                let pods: serde_json::Value =
                    serde_json::from_str(&plane.run(&["get", "pods", "-A", "-o", "json"])?)?;
                let mut groups = Vec::new();
                for pod in pods["items"].as_array().into_iter().flatten() {
                    let notes = &pod["metadata"]["annotations"];
                    // The bed runs the controller as its own process (scraped below), not
                    // as the pod the API server shows for it.
                    if pod["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("weft-controller-"))
                    {
                        continue;
                    }
                    let (Some("true"), Some(port), Some(ip)) = (
                        notes["prometheus.io/scrape"].as_str(),
                        notes["prometheus.io/port"].as_str(),
                        pod["status"]["podIP"].as_str(),
                    ) else {
                        continue;
                    };
                    groups.push(serde_json::json!({
                        "targets": [format!("{ip}:{port}")],
                        "labels": {
                            "__metrics_path__": notes["prometheus.io/path"].as_str().unwrap_or("/metrics"),
                            "namespace": pod["metadata"]["namespace"],
                            "pod": pod["metadata"]["name"],
                        },
                    }));
                }
                ensure!(
                    groups.len() > self.nodes.len(),
                    "the API server has {} pods annotated for Prometheus: expected every node \
                     proxy and a waypoint",
                    groups.len()
                );
                let targets = dir.join("targets.json");
                std::fs::write(&targets, serde_json::to_string(&groups)?)?;
                format!(
                    "{global}scrape_configs:\n  - job_name: weft-proxies\n    file_sd_configs:\n      \
                     - files: ['{}']\n{CONTROLLER_JOB}",
                    targets.display()
                )
            }
            None => {
                let mut targets: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("'{}:15020'", n.ip))
                    .collect();
                targets.extend(self.waypoints.iter().map(|w| format!("'{}:15020'", w.ip)));
                format!(
                    "{global}scrape_configs:\n  - job_name: weft\n    static_configs:\n      \
                     - targets: [{}]\n{CONTROLLER_JOB}",
                    targets.join(", ")
                )
            }
        };
        // Weft's alert rules, as shipped.
        let config = format!(
            "{config}rule_files:\n  - '{}'\n",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/observability/alerts.yaml")
                .display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9090));
        let netns = self.nodes[i].netns.clone();
        self.spawn_in(
            &netns,
            &[
                "prometheus",
                &format!("--config.file={}", config_path.display()),
                &format!("--storage.tsdb.path={}", dir.join("data").display()),
                &format!("--web.listen-address={addr}"),
                "--log.level=warn",
            ],
            "prometheus.log",
        )?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let netns_path = Path::new("/run/netns").join(&netns);
        loop {
            if let Ok((200, _)) = http_get_in(&netns_path, addr, "/-/ready") {
                return Ok(addr);
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "Prometheus was not ready in 30 s: {}",
                std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Runs a PromQL instant query on the Prometheus [`TestBed::prometheus`] started in node
    /// `i`; returns the first sample's value (None: no sample).
    pub fn promql(&self, i: usize, query: &str) -> Result<Option<f64>> {
        Ok(self.promql_vector(i, query)?.first().map(|(_, v)| *v))
    }

    /// Runs a PromQL instant query; returns every sample's labels and value (NaN included).
    pub fn promql_vector(
        &self,
        i: usize,
        query: &str,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let encoded: String = query
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let json = self.prometheus_api(i, &format!("/api/v1/query?query={encoded}"))?;
        ensure!(
            json["status"] == "success",
            "{query}: {}",
            json["error"].as_str().unwrap_or("failed")
        );
        Ok(json["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|sample| {
                let labels = sample["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// GET `path` (`/api/v1/...`) from the Prometheus started in node `i`, as JSON.
    pub fn prometheus_api(&self, i: usize, path: &str) -> Result<serde_json::Value> {
        let (status, body) = http_get_in(
            &Path::new("/run/netns").join(&self.nodes[i].netns),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            path,
        )?;
        ensure!(
            status == 200 || status == 400 || status == 422,
            "Prometheus answered {status}: {body}"
        );
        Ok(serde_json::from_str(&body)?)
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
            (series.as_str() == name || series.starts_with(&format!("{name}{{")))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}
