//! `weft stat` against a real Prometheus (Debian's) scraping the bed's node proxies and
//! waypoint each second: its numbers agree with the traffic the test drove. Shared by the
//! manifest-directory run (`stat.rs`) and the API-server run (`cluster_stat.rs`).

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_testbed::fixtures::{Bookinfo, reviews_url};
use weft_testbed::wait_until;

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
    dashboards_agree(&b, &window, ok, sent)?;
    // A client outside the mesh (node 1's own namespace) tries reviews-v1 in plaintext: refused
    // (STRICT), and counted so.
    let out = b.bed.exec_in(
        &b.bed.nodes()[0].netns,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{}:8080/", b.v1.ip),
        ],
    )?;
    ensure!(
        !out.status.success(),
        "plaintext from outside the mesh got an answer"
    );
    // Scraped twice, so that a rate over it exists.
    wait_until("the refusal scraped twice", Duration::from_secs(30), || {
        Ok(b.bed.promql(
            PROM_NODE,
            "sum(count_over_time(weft_tcp_connections_refused_total{reason=\"mtls_required\"}[5m]))",
        )? >= Some(2.0))
    })?;
    alerts_agree(&b, ok)
}

/// deploy/observability's file `name`.
fn observability(name: &str) -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/observability")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))
}

/// Every panel query of every shipped dashboard, its variables set to the test's service
/// (`$__rate_interval` to `window`, the span of the judged load), returns series; the panels
/// whose value the test knows show it.
fn dashboards_agree(b: &Bookinfo, window: &str, ok: f64, sent: u64) -> Result<()> {
    let mut queries = 0;
    let mut values: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for name in [
        "mesh-overview",
        "service",
        "workload",
        "node-proxy",
        "waypoint",
        "controller",
    ] {
        let dashboard: Value =
            serde_json::from_str(&observability(&format!("dashboards/{name}.json"))?)?;
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().context("a target without expr")?;
                let query = expr
                    .replace("$__rate_interval", window)
                    .replace("$namespace", "default")
                    .replace("$service", "reviews")
                    .replace("$workload", "reviews-v2")
                    .replace("$instance", ".*");
                ensure!(
                    !query.contains('$'),
                    "{name} / {title}: a variable left: {query}"
                );
                let samples = b.bed.promql_vector(PROM_NODE, &query)?;
                ensure!(
                    !samples.is_empty(),
                    "{name} / {title}: no series for {query}"
                );
                queries += 1;
                if samples.len() == 1 {
                    values.insert((name.to_owned(), title.to_owned()), samples[0].1);
                }
            }
        }
    }
    eprintln!("{queries} dashboard queries returned series");
    let value = |dashboard: &str, title: &str| {
        values
            .get(&(dashboard.to_owned(), title.to_owned()))
            .copied()
            .with_context(|| format!("{dashboard} / {title}: not one series"))
    };
    let success = value("service", "Success rate (not 5xx)")?;
    ensure!(
        (success - ok).abs() < 1e-9,
        "service dashboard: success {success}, the client saw {ok}"
    );
    let overview = value("mesh-overview", "Success rate (not 5xx)")?;
    ensure!(
        (overview - ok).abs() < 1e-9,
        "overview: success {overview}, the client saw {ok}"
    );
    // The window spans the load (its first and last seconds are quiet), so its rate times
    // the window is the load, within the 10% the quiet edges and extrapolation allow.
    let secs: f64 = window.trim_end_matches('s').parse()?;
    let rate = value("mesh-overview", "Requests per second (waypoints)")?;
    ensure!(
        (rate * secs - sent as f64).abs() <= 0.10 * sent as f64,
        "overview: {rate:.2} requests/s over {secs} s against {sent} sent"
    );
    let v2 = value("workload", "Inbound success rate (not 5xx)")?;
    ensure!(
        (v2 - 0.75).abs() < 0.02,
        "reviews-v2 fails every 4th request; its dashboard says success {v2}"
    );
    // The delay injected on v2 (30 ms) is the service's tail.
    let p99 = values
        .iter()
        .find(|((d, t), _)| d == "workload" && t.starts_with("Inbound latency"))
        .map(|(_, v)| *v);
    if let Some(p99) = p99 {
        ensure!((25.0..=60.0).contains(&p99), "reviews-v2 latency {p99} ms");
    }
    let per_connection = value(
        "service",
        "Requests per TCP connection (L7 joined with L4 on destination_service)",
    )?;
    // The join returned a series (an empty one fails above). Its value is +Inf when every
    // connection of the load was opened before the window (pooled, then reused throughout),
    // which a busy machine makes likely; NaN (0/0) would mean no requests either.
    ensure!(
        per_connection > 0.0,
        "L7 and L4 series of reviews do not join: {per_connection}"
    );
    Ok(())
}

/// The shipped alert rules load into Prometheus and evaluate without error; each one's value
/// (its expression less the comparison) returns series; the success-rate alert is pending for
/// reviews, at the success rate the client saw.
fn alerts_agree(b: &Bookinfo, ok: f64) -> Result<()> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&observability("alerts.yaml")?)?;
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"].as_str().context("alert name")?;
            let expr = rule["expr"].as_str().context("expr")?.trim();
            let (value, comparison) = expr
                .rsplit_once('\n')
                .with_context(|| format!("{name}: expected `<value>\\n<comparison>`"))?;
            ensure!(
                ["<", ">", "=="]
                    .iter()
                    .any(|op| comparison.trim().starts_with(op)),
                "{name}: the last line is not a comparison: {comparison}"
            );
            let samples = b.bed.promql_vector(PROM_NODE, value)?;
            ensure!(!samples.is_empty(), "{name}: no series for {value}");
            alerts += 1;
        }
    }
    eprintln!("{alerts} alert values returned series");
    let success = b.bed.promql_vector(
        PROM_NODE,
        "sum by (destination_service_name) (rate(weft_requests_total{reporter=\"waypoint\",response_code!~\"5..\"}[5m])) / sum by (destination_service_name) (rate(weft_requests_total{reporter=\"waypoint\"}[5m]))",
    )?;
    ensure!(
        success.len() == 1 && (success[0].1 - ok).abs() < 0.02,
        "the success-rate alert's value: {success:?}, the client saw {ok}"
    );
    // Prometheus loaded the rules and evaluates them: each is healthy, the success-rate one is
    // pending (87.5% < 95%, waiting out its `for: 5m`) and nothing else is.
    wait_until("the rules evaluated", Duration::from_secs(30), || {
        let api = b.bed.prometheus_api(PROM_NODE, "/api/v1/rules")?;
        let rules: Vec<&Value> = api["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        ensure!(
            rules.len() == alerts,
            "Prometheus loaded {} rules",
            rules.len()
        );
        for r in &rules {
            ensure!(r["health"] != "err", "{}: {}", r["name"], r["lastError"]);
        }
        let active: Vec<&str> = rules
            .iter()
            .filter(|r| r["state"] != "inactive")
            .filter_map(|r| r["name"].as_str())
            .collect();
        Ok(active == ["WeftServiceSuccessRateLow"])
    })
}
