//! Tracing at the waypoint, with a collector listening where the waypoint sends spans (in its
//! pod, so the bed needs no route to it): a request that is retried once is one trace of a
//! server span and two sibling tries; B3 and W3C callers' traces are continued, in the form
//! they came in; a 10% sampling rate samples 10 ± 3% of 2,000 new traces; without flags, the
//! users' YAML (linkerd-config, Telemetry) turns tracing on, sets its rate and turns it off.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_testbed::fixtures::{Bookinfo, REVIEWS_SUBSETS, bookinfo_with, reviews_url};

/// Every request to reviews goes to v1 (a subset of `REVIEWS_SUBSETS`), retried once on a
/// 5xx.
const RETRY_ONCE_TO_V1: &str = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
    retries:
      attempts: 1
      retryOn: 5xx
";

/// A traced bookinfo whose waypoint sends spans to a collector at `port` in its own pod.
fn traced(label: &str, collector: &str, port: u16, sampling: &str) -> Result<Bookinfo> {
    let target = format!("{collector}:127.0.0.1:{port}");
    let mut b = bookinfo_with(
        label,
        None,
        &["--trace-collector", &target, "--trace-sampling", sampling],
    )?;
    let testsrv = weft_testbed::bin_dir()?
        .join("weft-testsrv")
        .display()
        .to_string();
    let listen = format!("127.0.0.1:{port}");
    let netns = b.waypoint.netns.clone();
    let mut argv = vec![testsrv.as_str(), "collect", "--listen", &listen];
    if collector == "otlp-grpc" {
        argv.push("--otlp-grpc");
    }
    b.bed.spawn_in(&netns, &argv, "collector.log")?;
    weft_testbed::wait_listening(&b.waypoint.netns_path(), listen.parse()?)?;
    Ok(b)
}

/// The spans the collector got so far, as Zipkin-shaped JSON (OTLP spans are mapped onto
/// `traceId`, `id`, `parentId`, `kind`, `tags`).
fn spans(b: &Bookinfo) -> Result<Vec<Value>> {
    let log = std::fs::read_to_string(b.bed.dir().join("collector.log")).unwrap_or_default();
    let mut out = Vec::new();
    for line in log.lines() {
        let Some((path, body)) = line.split_once(' ') else {
            continue;
        };
        let json: Value = serde_json::from_str(body).with_context(|| line.to_owned())?;
        match path {
            "/api/v2/spans" => out.extend(json.as_array().cloned().unwrap_or_default()),
            "/v1/traces" => {
                for s in json["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let tags: serde_json::Map<String, Value> = s["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            (
                                a["key"].as_str().unwrap_or("").to_owned(),
                                a["value"]["stringValue"].clone(),
                            )
                        })
                        .collect();
                    out.push(serde_json::json!({
                        "traceId": s["traceId"],
                        "id": s["spanId"],
                        "parentId": s["parentSpanId"],
                        "kind": if s["kind"] == 2 { "SERVER" } else { "CLIENT" },
                        "tags": tags,
                    }));
                }
            }
            other => anyhow::bail!("the collector got a POST to {other}"),
        }
    }
    Ok(out)
}

/// Polls until the collector holds `n` spans of `trace` (within 10 s).
fn trace_spans(b: &Bookinfo, trace: &str, n: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = spans(b)?
            .into_iter()
            .filter(|s| s["traceId"] == trace)
            .collect();
        if found.len() >= n || Instant::now() > deadline {
            return Ok(found);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn curl(b: &Bookinfo, headers: &[&str]) -> Result<String> {
    let mut argv = vec!["curl", "-sS", "-D", "-", "--max-time", "5"];
    for h in headers {
        argv.extend(["-H", h]);
    }
    let url = reviews_url("/reviews/1");
    argv.push(&url);
    let out = b.bed.exec(&b.client, &argv)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_retried_request_is_one_trace_of_a_server_span_and_two_sibling_tries_continuing_b3()
-> Result<()> {
    let b = traced("tracez", "zipkin", 9411, "100")?;
    b.apply(
        "retry.yaml",
        &format!("{REVIEWS_SUBSETS}---\n{RETRY_ONCE_TO_V1}"),
    )?;
    // v1 fails every other request, starting with the next: the first try fails, the retry
    // succeeds.
    b.bed.testsrv_set(&b.v1, "fail=50&status=503")?;
    let trace = "463ac35c9f6413ad48485a3953bb6124";
    let caller_span = "a2fb4a1d1a96d312";
    let response = curl(
        &b,
        &[
            &format!("x-b3-traceid: {trace}"),
            &format!("x-b3-spanid: {caller_span}"),
            "x-b3-sampled: 1",
            "x-echo-header: x-b3-traceid",
        ],
    )?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    // The backend got the caller's trace, in B3 as it came.
    ensure!(
        response
            .lines()
            .any(|l| l.trim() == format!("x-echo: {trace}")),
        "the backend did not get the B3 trace id: {response}"
    );
    let spans = trace_spans(&b, trace, 3)?;
    ensure!(spans.len() == 3, "spans of the trace: {spans:#?}");
    let server: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "SERVER").collect();
    ensure!(server.len() == 1, "{spans:#?}");
    let server = server[0];
    ensure!(
        server["parentId"] == caller_span,
        "the server span's parent is not the caller's span: {server}"
    );
    ensure!(server["tags"]["http.status_code"] == "200", "{server}");
    let mut tries: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "CLIENT").collect();
    tries.sort_by_key(|s| s["tags"]["attempt"].as_str().unwrap_or("").to_owned());
    ensure!(tries.len() == 2, "{spans:#?}");
    for (t, (attempt, status)) in tries.iter().zip([("1", "503"), ("2", "200")]) {
        ensure!(
            t["parentId"] == server["id"],
            "a try is not the server span's child: {t}"
        );
        ensure!(
            t["tags"]["attempt"] == attempt && t["tags"]["http.status_code"] == status,
            "try {attempt}: {t}"
        );
        ensure!(
            t["tags"]["upstream_workload"] == "reviews-v1",
            "try {attempt} went elsewhere: {t}"
        );
    }
    Ok(())
}

#[test]
fn w3c_is_continued_over_otlp_and_ten_percent_sampling_samples_ten_percent() -> Result<()> {
    let b = traced("traceo", "otlp-http", 4318, "10")?;
    // A sampled W3C caller is traced whatever the rate, its tracestate passed on.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = curl(
        &b,
        &[
            &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"),
            "tracestate: vendor=opaque",
            "x-echo-header: tracestate",
        ],
    )?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    ensure!(
        response
            .lines()
            .any(|l| l.trim() == "x-echo: vendor=opaque"),
        "tracestate not passed on: {response}"
    );
    let continued = trace_spans(&b, trace, 2)?;
    ensure!(
        continued
            .iter()
            .any(|s| s["kind"] == "SERVER" && s["parentId"] == "00f067aa0ba902b7"),
        "{continued:#?}"
    );

    // 2,000 requests that start their own traces. Model: each is sampled independently with
    // p = 0.1: binomial, mean 200, sd 13.4; the bar, 10 ± 3% (140..=260), is 4.5 sd wide.
    let tally = b.bed.load(
        &b.client,
        &[
            "--url",
            &reviews_url("/"),
            "--requests",
            "2000",
            "--concurrency",
            "8",
        ],
    )?;
    ensure!(tally["status"]["200"] == 2000, "{tally}");
    // Wait for the exporter: every span it was handed is at the collector, and no more come.
    let exported = |b: &Bookinfo| -> Result<f64> {
        let m = b.bed.waypoint_metrics(&b.waypoint)?;
        Ok(weft_testbed::metric_sum(
            &m,
            "weft_trace_spans_exported_total",
            &[],
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = -1.0;
    let count = loop {
        // Nothing can be polled for here: wait out one export period (1 s) and a half.
        std::thread::sleep(Duration::from_millis(1500));
        let now = exported(&b)?;
        let roots = spans(&b)?
            .iter()
            .filter(|s| s["kind"] == "SERVER" && s["parentId"] == "")
            .count();
        if now == last || Instant::now() > deadline {
            break roots;
        }
        last = now;
    };
    let m = b.bed.waypoint_metrics(&b.waypoint)?;
    for name in [
        "weft_trace_spans_dropped_total",
        "weft_trace_spans_failed_total",
    ] {
        ensure!(
            weft_testbed::metric_sum(&m, name, &[]) == 0.0,
            "{name}: {}",
            weft_testbed::metric_sum(&m, name, &[])
        );
    }
    ensure!(
        (140..=260).contains(&count),
        "{count} of 2000 new traces sampled at 10%"
    );
    eprintln!("{count} of 2000 new traces sampled at 10%");
    Ok(())
}

#[test]
fn otlp_over_grpc_reaches_a_grpc_collector_with_the_parent_links() -> Result<()> {
    let b = traced("traceg", "otlp-grpc", 4317, "0")?;
    // Sampling 0% for new traces; the caller's sampled flag still decides for its trace.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let response = curl(
        &b,
        &[&format!("traceparent: 00-{trace}-b7ad6b7169203331-01")],
    )?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    let spans = trace_spans(&b, trace, 2)?;
    let server = spans
        .iter()
        .find(|s| s["kind"] == "SERVER")
        .with_context(|| format!("no server span: {spans:#?}"))?;
    ensure!(server["parentId"] == "b7ad6b7169203331", "{server}");
    ensure!(
        spans
            .iter()
            .any(|s| s["kind"] == "CLIENT" && s["parentId"] == server["id"]),
        "{spans:#?}"
    );
    // And an unsampled new trace is not exported.
    let before = spans_of_all(&b)?;
    let response = curl(&b, &[])?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(
        spans_of_all(&b)? == before,
        "a 0% rate exported a new trace"
    );
    Ok(())
}

fn spans_of_all(b: &Bookinfo) -> Result<usize> {
    Ok(spans(b)?.len())
}

/// The `traceparent` the backend got for a new request (none: the waypoint does not trace).
fn traceparent_at_backend(b: &Bookinfo) -> Result<Option<String>> {
    let response = curl(b, &["x-echo-header: traceparent"])?;
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    Ok(response
        .lines()
        .find_map(|l| l.trim().strip_prefix("x-echo: "))
        .map(str::to_owned))
}

/// Polls new requests until the backend's `traceparent` satisfies `want` (within 10 s).
fn until_traceparent(
    b: &Bookinfo,
    what: &str,
    want: impl Fn(Option<&str>) -> bool,
) -> Result<Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = traceparent_at_backend(b)?;
        if want(seen.as_deref()) {
            return Ok(seen);
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: the backend still gets {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The guide's Linkerd form, its collector in the waypoint's pod.
const LINKERD_TRACING: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: linkerd-config
  namespace: linkerd
data:
  config.yaml: |-
    profiler:
      enabled: true
    traceCollector:
      host: 127.0.0.1
      port: 9411
    sampling: 1.0
";

#[test]
fn tracing_follows_the_users_yaml_linkerd_config_then_telemetry_per_namespace() -> Result<()> {
    // No tracing flags: the waypoint traces only where the YAML says.
    let mut b = bookinfo_with("tracey", None, &[])?;
    let testsrv = weft_testbed::bin_dir()?
        .join("weft-testsrv")
        .display()
        .to_string();
    let netns = b.waypoint.netns.clone();
    b.bed.spawn_in(
        &netns,
        &[&testsrv, "collect", "--listen", "127.0.0.1:9411"],
        "collector.log",
    )?;
    weft_testbed::wait_listening(&b.waypoint.netns_path(), "127.0.0.1:9411".parse()?)?;
    ensure!(
        traceparent_at_backend(&b)?.is_none(),
        "traced with no tracing configured"
    );

    // linkerd-config: every new trace (sampling 1.0) to the Zipkin collector.
    b.apply("linkerd-tracing.yaml", LINKERD_TRACING)?;
    let seen = until_traceparent(&b, "linkerd-config applied", |t| {
        t.is_some_and(|t| t.ends_with("-01"))
    })?
    .unwrap_or_default();
    let trace = seen.split('-').nth(1).unwrap_or_default().to_owned();
    let spans = trace_spans(&b, &trace, 2)?;
    ensure!(
        spans.iter().any(|s| s["kind"] == "SERVER") && spans.iter().any(|s| s["kind"] == "CLIENT"),
        "trace {trace} at the collector: {spans:#?}"
    );

    // A Telemetry in the waypoint's namespace sets the rate to 0: new traces are unsampled.
    b.apply(
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: quiet
  namespace: default
spec:
  tracing:
  - randomSamplingPercentage: 0
",
    )?;
    until_traceparent(&b, "Telemetry rate 0", |t| {
        t.is_some_and(|t| t.ends_with("-00"))
    })?;

    // disableSpanReporting: the waypoint stops tracing; the caller's context passes untouched.
    b.apply(
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: quiet
  namespace: default
spec:
  tracing:
  - disableSpanReporting: true
",
    )?;
    until_traceparent(&b, "Telemetry disableSpanReporting", |t| t.is_none())?;
    let config = b.bed.controller_log();
    ensure!(
        config.contains("linkerd-config"),
        "the controller says nothing of linkerd-config:\n{config}"
    );
    Ok(())
}
