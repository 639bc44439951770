//! Node proxies' connection spans (off by default; on with `--trace-collector`): the source
//! proxy's span rides the HBONE tunnel as its `traceparent`, and the destination proxy's span
//! joins that trace as its child. Each node's proxy sends to a collector in its own node's
//! network namespace, so the two halves arrive at two collectors.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_testbed::TestBed;

/// The Zipkin spans a collector logged.
fn spans(bed: &TestBed, log: &str) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(bed.dir().join(log)).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let (path, body) = line.split_once(' ').context("a collector line")?;
        ensure!(path == "/api/v2/spans", "a POST to {path}");
        let batch: Value = serde_json::from_str(body)?;
        out.extend(batch.as_array().cloned().unwrap_or_default());
    }
    Ok(out)
}

/// Polls until `log` holds a span of `kind` whose tags satisfy `want` (within 10 s).
fn span_where(
    bed: &TestBed,
    log: &str,
    kind: &str,
    want: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = spans(bed, log)?
            .into_iter()
            .find(|s| s["kind"] == kind && want(s))
        {
            return Ok(s);
        }
        ensure!(
            Instant::now() < deadline,
            "no {kind} span in {log}: {:#?}",
            spans(bed, log)?
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_connection_is_one_trace_across_both_node_proxies() -> Result<()> {
    let mut bed = TestBed::new("ctrace", 2)?;
    bed.proxy_args(&[
        "--trace-collector",
        "zipkin:127.0.0.1:9411",
        "--trace-sampling",
        "100",
    ]);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.start()?;
    bed.serve_http(&web, 8080, &[("x", "traced")])?;
    let testsrv = weft_testbed::bin_dir()?
        .join("weft-testsrv")
        .display()
        .to_string();
    for i in 0..2 {
        let netns = bed.nodes()[i].netns.clone();
        bed.spawn_in(
            &netns,
            &[&testsrv, "collect", "--listen", "127.0.0.1:9411"],
            &format!("collector-{i}.log"),
        )?;
        weft_testbed::wait_listening(
            &Path::new("/run/netns").join(&netns),
            "127.0.0.1:9411".parse()?,
        )?;
    }
    let (ok, body, err) = bed.curl(&client, &format!("http://{}:8080/x", web.ip))?;
    ensure!(ok && body == "traced", "{err}");

    let web_addr = format!("{}:8080", web.ip);
    let source = span_where(&bed, "collector-0.log", "CLIENT", |s| {
        s["tags"]["dst_addr"] == web_addr.as_str()
    })?;
    ensure!(
        source["tags"]["src_workload"] == "client" && source["tags"]["dst_workload"] == "web",
        "{source:#}"
    );
    ensure!(
        source["parentId"].is_null() || source["parentId"] == "",
        "the source proxy's span starts the trace: {source:#}"
    );
    let destination = span_where(&bed, "collector-1.log", "SERVER", |s| {
        s["traceId"] == source["traceId"]
    })?;
    ensure!(
        destination["parentId"] == source["id"],
        "the destination's span is not the source's child: {destination:#}\nsource: {source:#}"
    );
    ensure!(
        destination["tags"]["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client",
        "{destination:#}"
    );
    // Both access lines name the trace.
    let trace = source["traceId"].as_str().unwrap_or_default().to_owned();
    for i in 0..2 {
        let log = bed.proxy_log(i);
        ensure!(
            log.lines()
                .any(|l| l.contains("connection complete") && l.contains(&trace)),
            "node {i}'s access log does not name trace {trace}:\n{log}"
        );
    }
    Ok(())
}
