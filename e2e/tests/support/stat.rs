//! `weft stat` against a real Prometheus (Debian's) scraping the bed's node proxies and
//! waypoint each second: its numbers agree with the traffic the test drove. Shared by the
//! manifest-directory run (`stat.rs`) and the API-server run (`cluster_stat.rs`).

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_testbed::fixtures::{Bookinfo, reviews_url};

/// Requests per second the load sends.
const RATE: u64 = 20;
/// The node whose namespace runs Prometheus (and `weft stat`, which reads it there).
const PROM_NODE: usize = 0;

/// `weft stat <args> -o json` run where Prometheus answers, parsed.
fn stat(b: &Bookinfo, args: &[&str]) -> Result<Vec<Value>> {
    let weft = weft_testbed::bin_dir()?.join("weft").display().to_string();
    let mut argv = vec![weft.as_str(), "stat"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-o", "json"]);
    let out = b.bed.exec_in(&b.bed.nodes()[PROM_NODE].netns, &argv)?;
    ensure!(
        out.status.success(),
        "weft stat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table, as a user sees it, in the test's output.
    let mut table = argv.clone();
    table.truncate(table.len() - 2);
    if let Ok(t) = b.bed.exec_in(&b.bed.nodes()[PROM_NODE].netns, &table) {
        eprintln!(
            "$ weft stat {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&t.stdout)
        );
    }
    let rows: Value = serde_json::from_slice(&out.stdout).context("weft stat -o json")?;
    Ok(rows.as_array().cloned().unwrap_or_default())
}

fn row<'a>(rows: &'a [Value], name: &str) -> Result<&'a Value> {
    rows.iter()
        .find(|r| r["name"] == name)
        .with_context(|| format!("no row for {name}: {rows:?}"))
}

fn number(row: &Value, field: &str) -> Result<f64> {
    row[field]
        .as_f64()
        .with_context(|| format!("{field} missing in {row}"))
}

fn wait_until(what: &str, within: Duration, mut probe: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if probe()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Drives known traffic through `b` (its Prometheus not started) and checks what `weft stat`
/// says of it.
pub(crate) fn stat_agrees_with_the_traffic(mut b: Bookinfo) -> Result<()> {
    // reviews-v2 answers after 30 ms and fails exactly every 4th request with a 503.
    b.bed.testsrv_set(&b.v2, "fail=25&status=503&delay_ms=30")?;
    b.bed.prometheus(PROM_NODE)?;
    // The controller is scraped too: both node proxies and the waypoint stream from it.
    let connected = |role: &str| {
        b.bed.promql(
            PROM_NODE,
            &format!("sum(weft_controller_proxies_connected{{role=\"{role}\"}})"),
        )
    };
    wait_until(
        "the controller's metrics scraped",
        Duration::from_secs(30),
        || Ok(connected("node-proxy")? == Some(2.0) && connected("waypoint")? == Some(1.0)),
    )?;
    ensure!(
        b.bed
            .promql(PROM_NODE, "sum(weft_controller_config_pushes_total)")?
            .is_some_and(|n| n >= 3.0),
        "config pushes not counted"
    );
    let url = reviews_url("/");
    let served = |b: &Bookinfo| -> Result<(u64, u64)> {
        Ok((b.bed.testsrv_count(&b.v1)?, b.bed.testsrv_count(&b.v2)?))
    };

    // A warm-up, so that every series exists before the window judged below begins.
    let warm = b
        .bed
        .load(&b.client, &["--url", &url, "--requests", "40"])?;
    ensure!(warm["status"]["503"].as_u64() >= Some(1), "warm-up: {warm}");
    let total =
        "sum(weft_requests_total{reporter=\"waypoint\",destination_service_name=\"reviews\"})";
    wait_until(
        "Prometheus has the warm-up",
        Duration::from_secs(30),
        || Ok(b.bed.promql(PROM_NODE, total)? == Some(40.0)),
    )?;
    let judged_from = Instant::now();
    let judged_from_unix = unix_now();
    // Two scrapes after that instant hold only the warm-up, so the window's first sample does.
    wait_until(
        "two scrapes after the warm-up",
        Duration::from_secs(30),
        || {
            Ok(b.bed.promql(
                PROM_NODE,
                "max(timestamp(weft_requests_total{reporter=\"waypoint\"}))",
            )? > Some(judged_from_unix + 1.5))
        },
    )?;

    let sent = 40 * RATE;
    let (tally, during) = std::thread::scope(|s| -> Result<_> {
        let load = s.spawn(|| {
            b.bed.load(
                &b.client,
                &[
                    "--url",
                    &url,
                    "--requests",
                    &sent.to_string(),
                    "--rate",
                    &RATE.to_string(),
                    "--timeout-ms",
                    "5000",
                ],
            )
        });
        // The rate: what the two pods served over 25 s of steady load, against what `weft stat`
        // says for the same 25 s.
        let (v1, v2) = served(&b)?;
        wait_until("the load under way", Duration::from_secs(10), || {
            let (a, c) = served(&b)?;
            Ok(a + c >= v1 + v2 + 3 * RATE)
        })?;
        let (start, t0) = (served(&b)?, Instant::now());
        std::thread::sleep(Duration::from_secs(25));
        let (end, secs) = (served(&b)?, t0.elapsed().as_secs_f64());
        let during = stat(&b, &["deploy", "-n", "default", "-t", "25s"])?;
        let rates = (
            (end.0 - start.0) as f64 / secs,
            (end.1 - start.1) as f64 / secs,
        );
        let tally = load.join().expect("load thread")?;
        Ok((tally, (during, rates)))
    })?;
    let (rows, (v1_rate, v2_rate)) = during;
    for (name, served_rate) in [("reviews-v1", v1_rate), ("reviews-v2", v2_rate)] {
        let rps = number(row(&rows, name)?, "requests_per_second")?;
        ensure!(
            (rps - served_rate).abs() <= 0.10 * served_rate,
            "{name}: weft stat says {rps:.2} rps, the pod served {served_rate:.2}/s"
        );
    }
    // Latency belongs to the workload that had it.
    let (p50_v1, p50_v2) = (
        number(row(&rows, "reviews-v1")?, "latency_ms_p50")?,
        number(row(&rows, "reviews-v2")?, "latency_ms_p50")?,
    );
    ensure!(
        p50_v2 >= 25.0 && p50_v1 < 25.0,
        "p50: reviews-v1 {p50_v1} ms, reviews-v2 {p50_v2} ms (v2 waits 30 ms)"
    );
    let v2 = row(&rows, "reviews-v2")?;
    ensure!(
        number(v2, "latency_ms_p99")? >= number(v2, "latency_ms_p95")?
            && number(v2, "latency_ms_p95")? >= p50_v2,
        "percentiles out of order: {v2}"
    );
    // The waypoint keeps a connection to each pod it sends to.
    ensure!(
        number(row(&rows, "reviews-v1")?, "tcp_connections")? >= 1.0,
        "{rows:?}"
    );

    // The success rate: every request of the load, and none of the warm-up, in one window.
    ensure!(
        tally["status"]["200"].as_u64().unwrap_or(0) + tally["status"]["503"].as_u64().unwrap_or(0)
            == sent,
        "the load: {tally}"
    );
    let expected = 40.0 + sent as f64;
    wait_until(
        "Prometheus has the whole load",
        Duration::from_secs(30),
        || Ok(b.bed.promql(PROM_NODE, total)? == Some(expected)),
    )?;
    let settled = unix_now();
    wait_until("a scrape after the load", Duration::from_secs(30), || {
        Ok(b.bed.promql(
            PROM_NODE,
            "max(timestamp(weft_requests_total{reporter=\"waypoint\"}))",
        )? > Some(settled))
    })?;
    let window = format!("{}s", judged_from.elapsed().as_secs());
    let svc = stat(&b, &["svc", "reviews", "-n", "default", "-t", &window])?;
    let ok = tally["status"]["200"].as_u64().unwrap_or(0) as f64 / sent as f64;
    let said = number(row(&svc, "reviews")?, "success_rate")?;
    ensure!(
        (said - ok).abs() < 1e-9,
        "weft stat svc says success {said}, the client saw {ok} ({tally})"
    );
    let deploy = stat(&b, &["deploy", "-n", "default", "-t", &window])?;
    ensure!(
        number(row(&deploy, "reviews-v1")?, "success_rate")? == 1.0,
        "{deploy:?}"
    );
    let ns = stat(&b, &["ns", "default", "-t", &window])?;
    ensure!(
        (number(row(&ns, "default")?, "success_rate")? - ok).abs() < 1e-9,
        "{ns:?}"
    );
    Ok(())
}
