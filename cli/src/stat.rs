//! `weft stat deploy|svc|ns`: golden metrics per workload, service or namespace — success
//! rate, requests per second, latency percentiles, open TCP connections — read from the
//! Prometheus that scrapes the node proxies and waypoints, over its HTTP API.
//!
//! Requests are what waypoints report (`reporter="waypoint"`): a service without a waypoint
//! shows only its TCP connections. A response is a success unless its code is 5xx.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use serde_json::Value;

use crate::output::{Format, print_data, table};

/// What rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// One row per workload (the Deployment behind its pods, or the pod).
    #[value(alias = "deployment", alias = "deployments", alias = "workload")]
    Deploy,
    /// One row per service.
    #[value(alias = "service", alias = "services")]
    Svc,
    /// One row per namespace.
    #[value(alias = "namespace", alias = "namespaces")]
    Ns,
}

/// `weft stat` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct StatArgs {
    /// What to show a row for.
    #[arg(value_enum)]
    target: Target,
    /// Only this workload, service or namespace.
    name: Option<String>,
    /// Namespace of the workloads or services (ignored for `ns`).
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// The Prometheus that scrapes Weft's proxies (e.g. after `kubectl port-forward -n
    /// monitoring svc/prometheus 9090`). Plain HTTP.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    prometheus: String,
    /// The window rates and percentiles are computed over, as PromQL writes it (30s, 1m, 1h).
    #[arg(short = 't', long = "time-window", default_value = "1m")]
    window: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

/// One row of the answer.
#[derive(Debug, Default, Serialize, PartialEq)]
pub(crate) struct Row {
    namespace: String,
    name: String,
    /// Share of requests not answered 5xx, 0..1; None without requests.
    success_rate: Option<f64>,
    requests_per_second: Option<f64>,
    latency_ms_p50: Option<f64>,
    latency_ms_p95: Option<f64>,
    latency_ms_p99: Option<f64>,
    /// TCP connections open now.
    tcp_connections: Option<f64>,
}

/// Runs `weft stat`.
pub(crate) fn run(args: &StatArgs) -> Result<ExitCode> {
    ensure!(
        is_window(&args.window),
        "--time-window {:?}: expected a number and s, m or h (30s, 1m, 1h)",
        args.window
    );
    let prometheus = Prometheus::parse(&args.prometheus)?;
    let queries = Queries::new(args);
    let fetch = |query: &str| {
        prometheus.query(query).with_context(|| {
            format!(
                "Prometheus at {} (is it reachable? kubectl port-forward to it, or pass \
                 --prometheus)",
                args.prometheus
            )
        })
    };
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut fill = |query: String, set: fn(&mut Row, f64)| -> Result<()> {
        for (key, value) in queries.keyed(fetch(&query)?) {
            let row = rows.entry(key.clone()).or_insert_with(|| Row {
                namespace: key.0,
                name: key.1,
                ..Row::default()
            });
            set(row, value);
        }
        Ok(())
    };
    fill(queries.requests(false), |r, v| {
        r.requests_per_second = Some(v)
    })?;
    fill(queries.requests(true), |r, v| r.success_rate = Some(v))?;
    fill(queries.latency(0.50), |r, v| r.latency_ms_p50 = Some(v))?;
    fill(queries.latency(0.95), |r, v| r.latency_ms_p95 = Some(v))?;
    fill(queries.latency(0.99), |r, v| r.latency_ms_p99 = Some(v))?;
    fill(queries.tcp_open(), |r, v| r.tcp_connections = Some(v))?;
    let rows: Vec<Row> = rows
        .into_values()
        .map(|mut r| {
            // Successes were filled as a rate; they become a share of all requests.
            r.success_rate = match (r.success_rate, r.requests_per_second) {
                (_, None) => None,
                (_, Some(total)) if total <= 0.0 => None,
                (ok, Some(total)) => Some((ok.unwrap_or(0.0) / total).clamp(0.0, 1.0)),
            };
            r.latency_ms_p50 = r.latency_ms_p50.filter(|v| v.is_finite());
            r.latency_ms_p95 = r.latency_ms_p95.filter(|v| v.is_finite());
            r.latency_ms_p99 = r.latency_ms_p99.filter(|v| v.is_finite());
            r
        })
        .collect();
    if args.output != Format::Table {
        print_data(args.output, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!(
            "No traffic in the last {} ({}).",
            args.window,
            queries.scope()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (header, table_rows) = cells(args.target, &rows);
    table(&header, &table_rows);
    Ok(ExitCode::SUCCESS)
}

/// The table of `rows`: a header and one line of cells per row (a namespace's row is named
/// by its namespace alone).
fn cells(target: Target, rows: &[Row]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "-".into(), f);
    let named = target != Target::Ns;
    let lines = rows
        .iter()
        .map(|r| {
            let mut cells = vec![r.namespace.clone()];
            if named {
                cells.push(r.name.clone());
            }
            cells.extend([
                opt(r.success_rate, &|v| format!("{:.2}%", v * 100.0)),
                opt(r.requests_per_second, &|v| format!("{v:.1}rps")),
                opt(r.latency_ms_p50, &millis),
                opt(r.latency_ms_p95, &millis),
                opt(r.latency_ms_p99, &millis),
                opt(r.tcp_connections, &|v| format!("{v:.0}")),
            ]);
            cells
        })
        .collect();
    let mut header = vec!["NAMESPACE"];
    match target {
        Target::Deploy => header.push("WORKLOAD"),
        Target::Svc => header.push("SERVICE"),
        Target::Ns => {}
    }
    header.extend([
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ]);
    (header, lines)
}

fn millis(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}ms")
    } else {
        format!("{v:.0}ms")
    }
}

/// `30s`, `1m`, `2h`: what is put into PromQL as is, so nothing else may pass.
fn is_window(text: &str) -> bool {
    let Some(unit) = text.chars().last() else {
        return false;
    };
    let digits = &text[..text.len() - unit.len_utf8()];
    matches!(unit, 's' | 'm' | 'h')
        && !digits.is_empty()
        && digits.len() <= 6
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

/// The PromQL of one `weft stat`.
struct Queries {
    /// Labels rows are keyed by: (namespace label, name label); no name label for `ns`.
    keys: (&'static str, Option<&'static str>),
    /// Label matchers every request series must meet.
    requests: String,
    /// Label matchers for TCP series, and the reporter that knows the key.
    tcp: String,
    window: String,
    namespace: Option<String>,
}

impl Queries {
    fn new(args: &StatArgs) -> Self {
        let keys = match args.target {
            Target::Deploy => (
                "destination_workload_namespace",
                Some("destination_workload"),
            ),
            Target::Svc => (
                "destination_service_namespace",
                Some("destination_service_name"),
            ),
            Target::Ns => ("destination_workload_namespace", None),
        };
        let namespace = match args.target {
            Target::Ns => args.name.clone(),
            _ if args.all_namespaces => None,
            _ => Some(args.namespace.clone()),
        };
        let mut matchers = Vec::new();
        if let Some(ns) = &namespace {
            matchers.push(format!("{}=\"{}\"", keys.0, escape(ns)));
        }
        if let (Some(name_label), Some(name)) = (keys.1, &args.name) {
            matchers.push(format!("{name_label}=\"{}\"", escape(name)));
        }
        let with = |reporter: &str| {
            let mut all = vec![format!("reporter=\"{reporter}\"")];
            all.extend(matchers.iter().cloned());
            all.join(",")
        };
        // The destination's node proxy knows the workload it delivers to; the source's knows
        // the service the client addressed.
        let tcp_reporter = if args.target == Target::Svc {
            "source"
        } else {
            "destination"
        };
        Self {
            keys,
            requests: with("waypoint"),
            tcp: with(tcp_reporter),
            window: args.window.clone(),
            namespace,
        }
    }

    fn by(&self) -> String {
        match self.keys.1 {
            Some(name) => format!("{},{name}", self.keys.0),
            None => self.keys.0.to_owned(),
        }
    }

    /// Requests per second; with `ok`, only those not answered 5xx.
    fn requests(&self, ok: bool) -> String {
        let extra = if ok { ",response_code!~\"5..\"" } else { "" };
        format!(
            "sum by ({}) (rate(weft_requests_total{{{}{extra}}}[{}]))",
            self.by(),
            self.requests,
            self.window
        )
    }

    fn latency(&self, quantile: f64) -> String {
        format!(
            "histogram_quantile({quantile}, sum by ({},le) \
             (rate(weft_request_duration_milliseconds_bucket{{{}}}[{}])))",
            self.by(),
            self.requests,
            self.window
        )
    }

    fn tcp_open(&self) -> String {
        format!(
            "sum by ({by}) (weft_tcp_connections_opened_total{{{m}}}) - sum by ({by}) \
             (weft_tcp_connections_closed_total{{{m}}})",
            by = self.by(),
            m = self.tcp
        )
    }

    /// A query's samples by row key; `unknown` namespaces (outside the mesh) are left out.
    fn keyed(&self, samples: Vec<(BTreeMap<String, String>, f64)>) -> Vec<((String, String), f64)> {
        samples
            .into_iter()
            .filter_map(|(labels, value)| {
                let ns = labels.get(self.keys.0)?.clone();
                let name = match self.keys.1 {
                    Some(label) => labels.get(label)?.clone(),
                    None => ns.clone(),
                };
                (ns != weft_core::metrics::UNKNOWN).then_some(((ns, name), value))
            })
            .collect()
    }

    fn scope(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("namespace {ns}"),
            None => "all namespaces".into(),
        }
    }
}

/// A string inside PromQL double quotes.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Prometheus' HTTP API, over plain HTTP/1.0.
struct Prometheus {
    host: String,
    port: u16,
    base: String,
}

impl Prometheus {
    fn parse(url: &str) -> Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--prometheus {url:?}: expected http://HOST:PORT (port-forward a TLS one)");
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse()
                    .with_context(|| format!("--prometheus {url:?}: {p:?} is not a port"))?,
            ),
            None => (authority.to_owned(), 80),
        };
        ensure!(!host.is_empty(), "--prometheus {url:?}: no host");
        Ok(Self {
            host,
            port,
            base: base.to_owned(),
        })
    }

    /// Runs an instant query; returns each sample's labels and value.
    fn query(&self, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let path = format!("{}/api/v1/query?query={}", self.base, url_encode(promql));
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .context("the host has no address")?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}:{}\r\nAccept: application/json\r\n\r\n",
            self.host, self.port
        )?;
        // An answer is a few KiB per row; more than 16 MiB is not an answer to this.
        let mut response = Vec::new();
        stream.take(16 << 20).read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("not an HTTP response")?;
        let status = head.split_whitespace().nth(1).unwrap_or("?");
        let json: Value = serde_json::from_str(body)
            .with_context(|| format!("HTTP {status}, not Prometheus' JSON: {:.200}", body))?;
        if json["status"] != "success" {
            bail!(
                "query {promql:?} failed: {} {}",
                json["errorType"].as_str().unwrap_or(""),
                json["error"].as_str().unwrap_or(status)
            );
        }
        Ok(json["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|sample| {
                let labels = sample["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = sample["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((labels, value))
            })
            .collect())
    }
}

/// Percent-encodes a query parameter.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(target: Target, name: Option<&str>) -> StatArgs {
        StatArgs {
            target,
            name: name.map(str::to_owned),
            namespace: "shop".into(),
            all_namespaces: false,
            prometheus: "http://127.0.0.1:9090".into(),
            window: "30s".into(),
            output: Format::Json,
        }
    }

    #[test]
    fn queries_select_the_waypoints_requests_in_the_namespace_and_escape_names() {
        let q = Queries::new(&args(Target::Deploy, Some("we\"b")));
        assert_eq!(
            q.requests(true),
            "sum by (destination_workload_namespace,destination_workload) \
             (rate(weft_requests_total{reporter=\"waypoint\",\
             destination_workload_namespace=\"shop\",destination_workload=\"we\\\"b\",\
             response_code!~\"5..\"}[30s]))"
        );
        let svc = Queries::new(&args(Target::Svc, None));
        assert!(svc.tcp_open().contains("reporter=\"source\""));
        assert!(
            svc.tcp_open()
                .contains("destination_service_namespace=\"shop\"")
        );
        let ns = Queries::new(&args(Target::Ns, None));
        assert!(
            !ns.requests(false).contains("namespace=\""),
            "{}",
            ns.requests(false)
        );
    }

    #[test]
    fn every_table_line_has_a_cell_under_each_heading() {
        let row = Row {
            namespace: "shop".into(),
            name: "web".into(),
            success_rate: Some(0.75),
            requests_per_second: Some(20.0),
            ..Row::default()
        };
        for target in [Target::Deploy, Target::Svc, Target::Ns] {
            let (header, lines) = cells(target, std::slice::from_ref(&row));
            assert_eq!(
                header.len(),
                lines[0].len(),
                "{target:?}: {header:?} {lines:?}"
            );
            let success = header
                .iter()
                .position(|h| *h == "SUCCESS")
                .expect("SUCCESS");
            assert_eq!(lines[0][success], "75.00%");
        }
    }

    #[test]
    fn only_a_plain_duration_reaches_promql() {
        for ok in ["30s", "1m", "24h"] {
            assert!(is_window(ok), "{ok}");
        }
        for bad in ["", "m", "0s", "1d", "1m])", "-1m", "1.5m", "10000000s"] {
            assert!(!is_window(bad), "{bad}");
        }
    }

    #[test]
    fn prometheus_urls_and_encoding() {
        let p = Prometheus::parse("http://prom.monitoring:9090/prefix/").expect("url");
        assert_eq!(
            (p.host.as_str(), p.port, p.base.as_str()),
            ("prom.monitoring", 9090, "/prefix")
        );
        assert!(Prometheus::parse("https://x:1").is_err());
        assert_eq!(url_encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    }
}
