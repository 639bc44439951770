//! Access logs: one request through the client's node proxy and the waypoint, and what each
//! proxy's line says about it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weft_testbed::fixtures::{bookinfo, reviews_url};

/// The waypoint's log line that mentions `needle` (its access line is written when the
/// response body is done: polled for, 5 s at most).
fn waypoint_line(b: &weft_testbed::fixtures::Bookinfo, needle: &str) -> Result<String> {
    let path = b.bed.waypoint_log_path(&b.waypoint);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_owned());
        }
        ensure!(
            Instant::now() < deadline,
            "no access line for {needle}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `key=` in a log line (up to the next space).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
}

#[test]
fn one_request_is_one_line_at_the_waypoint_with_envoys_fields_and_the_source_names_the_waypoint()
-> Result<()> {
    let b = bookinfo("access")?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    // The backend echoes the x-request-id it received: the waypoint made one up.
    let out = b.bed.exec(
        &b.client,
        &[
            "curl",
            "-sS",
            "-D",
            "-",
            "--max-time",
            "5",
            "-H",
            &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"),
            "-H",
            "x-echo-header: x-request-id",
            &reviews_url("/reviews/1?x=1"),
        ],
    )?;
    let response = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(response.starts_with("HTTP/1.1 200"), "{response}");
    let request_id = response
        .lines()
        .find_map(|l| l.strip_prefix("x-echo: "))
        .map(str::trim)
        .with_context(|| format!("the backend saw no x-request-id: {response}"))?
        .to_owned();
    ensure!(
        request_id.len() == 36 && request_id.as_bytes()[14] == b'4',
        "not a v4 UUID: {request_id}"
    );
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();

    // The waypoint's line, written when the response body is done.
    let line = waypoint_line(&b, &request_id)?;
    eprintln!("waypoint: {line}");
    let answered = body.trim();
    let upstream = if answered == "v1" { b.v1.ip } else { b.v2.ip };
    for (key, want) in [
        ("method", "GET".to_owned()),
        ("path", "/reviews/1?x=1".to_owned()),
        ("protocol", "HTTP/1.1".to_owned()),
        ("code", "200".to_owned()),
        ("flags", "-".to_owned()),
        ("upstream_host", upstream.to_string()),
        ("tries", "1".to_owned()),
        ("bytes_sent", body.len().to_string()),
        ("bytes_received", "0".to_owned()),
        ("trace_id", trace.to_owned()),
        (
            "src_identity",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage".to_owned(),
        ),
        (
            "dst_service",
            "reviews.default.svc.cluster.local".to_owned(),
        ),
        ("dst_workload", format!("reviews-{answered}")),
        (
            "dst_identity",
            "spiffe://cluster.local/ns/default/sa/reviews".to_owned(),
        ),
    ] {
        ensure!(
            field(&line, key) == Some(want.as_str()),
            "{key}: want {want}, the line says {:?}: {line}",
            field(&line, key)
        );
    }
    ensure!(
        field(&line, "start_time").is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "start_time: {line}"
    );

    // The waypoint counts the tunnel as a TCP connection too, labelled as node proxies do.
    let metrics = b.bed.waypoint_metrics(&b.waypoint)?;
    let tcp = |name: &str| {
        weft_testbed::metric_sum(
            &metrics,
            name,
            &[
                ("reporter", "waypoint"),
                ("source_workload", "productpage"),
                ("destination_service", "reviews.default.svc.cluster.local"),
            ],
        )
    };
    ensure!(
        tcp("weft_tcp_connections_opened_total") >= 1.0
            && tcp("weft_tcp_received_bytes_total") >= body.len() as f64
            && tcp("weft_tcp_sent_bytes_total") > 0.0,
        "the waypoint's TCP metrics: {:?}",
        metrics
            .iter()
            .filter(|(k, _)| k.starts_with("weft_tcp"))
            .collect::<Vec<_>>()
    );

    // The client's node proxy names the waypoint it tunnelled to, not an endpoint.
    let node = b.bed.wait_log(
        b.client.node,
        0,
        "dst_workload=reviews-waypoint",
        Duration::from_secs(5),
    )?;
    eprintln!("node proxy: {node}");
    ensure!(
        field(&node, "dst_identity")
            == Some("spiffe://cluster.local/ns/default/sa/reviews-waypoint"),
        "{node}"
    );
    // Connection spans are off by default: no trace on the tunnel.
    ensure!(field(&node, "trace_id") == Some("-"), "{node}");
    Ok(())
}

/// `--log-format json`: the same line as one JSON object, numbers as numbers.
#[test]
fn with_json_logs_the_waypoints_line_is_one_json_object_with_the_same_fields() -> Result<()> {
    let b = weft_testbed::fixtures::bookinfo_with("accessjs", None, &["--log-format", "json"])?;
    let out = b.bed.exec(
        &b.client,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-H",
            "x-request-id: json-log-check",
            &reviews_url("/reviews/2"),
        ],
    )?;
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = waypoint_line(&b, "json-log-check")?;
    let json: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
    ensure!(json["target"] == "access", "{json}");
    ensure!(json["request_id"] == "json-log-check", "{json}");
    ensure!(
        json["method"] == "GET" && json["path"] == "/reviews/2",
        "{json}"
    );
    ensure!(json["code"] == 200, "{json}");
    ensure!(json["bytes_sent"] == body.len() as u64, "{json} ({body:?})");
    ensure!(
        json["src_identity"] == "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        "{json}"
    );
    Ok(())
}

/// A waypoint that does not trace passes the caller's trace context on exactly as it came (its
/// sampled flag too), so an application's own tracing is not cut at the waypoint.
#[test]
fn without_tracing_the_waypoint_passes_the_callers_trace_context_on_untouched() -> Result<()> {
    let b = bookinfo("notrace")?;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let out = b.bed.exec(
        &b.client,
        &[
            "curl",
            "-sS",
            "-D",
            "-",
            "--max-time",
            "5",
            "-H",
            &format!("traceparent: {traceparent}"),
            "-H",
            "x-echo-header: traceparent",
            &reviews_url("/reviews/1"),
        ],
    )?;
    let response = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        response
            .lines()
            .any(|l| l.trim() == format!("x-echo: {traceparent}")),
        "the backend did not get the caller's traceparent unchanged: {response}"
    );
    Ok(())
}
