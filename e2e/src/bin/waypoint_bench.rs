//! `weft-waypoint-bench`: HTTP at a fixed request rate with no mesh, through the node proxies
//! (L4), and through the node proxies and a waypoint (L4 + L7), in one run; latency
//! percentiles as ratios to no mesh, and the waypoint's CPU and RSS.
//!
//! Run as root, with release binaries: `cargo build --release --workspace --bins &&
//! ./target/release/weft-waypoint-bench [--rate 1000 --secs 10 --body-bytes 1024]`.
//! The load client is `weft-testsrv load` in a pod (captured like any app), the server
//! `weft-testsrv serve`; requests are POSTs of `--body-bytes` answered with a short body. The
//! latency is measured per request from send to the end of the response (no correction for
//! coordinated omission: the client keeps `--concurrency` requests in flight at most).

use anyhow::{Context, Result};
use clap::Parser;
use weft_testbed::TestBed;

#[derive(Parser)]
struct Args {
    /// Requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Request body size.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// The waypoints' `--worker-threads` (default: theirs, one per CPU).
    #[arg(long)]
    waypoint_workers: Option<usize>,
}

/// CPU seconds (user + system) and RSS (KiB) of a process, if it runs.
fn proc_stat(pid: u32) -> Option<(f64, u64)> {
    let rss = weft_testbed::process::rss_kib(pid);
    (rss > 0).then(|| (weft_testbed::process::cpu_secs(pid), rss))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut bed = TestBed::new("wpbench", 2)?;
    bed.with_controller();
    let plain_client = bed
        .pod("plain-client")
        .namespace("plain")
        .not_enrolled()
        .on_node(0)
        .add()?;
    let plain_server = bed
        .pod("plain-server")
        .namespace("plain")
        .not_enrolled()
        .on_node(1)
        .add()?;
    let client = bed.pod("client").namespace("bench").on_node(0).add()?;
    let l4 = bed.pod("server-l4").namespace("bench").on_node(1).add()?;
    let l7 = bed.pod("server-l7").namespace("bench").on_node(1).add()?;
    let l7t = bed.pod("server-l7t").namespace("bench").on_node(1).add()?;
    let waypoint = bed.waypoint("waypoint", "bench", 1)?;
    // The same waypoint tracing every request to a collector that is down (nothing listens on
    // port 9 in its pod): what tracing costs the request path when export fails.
    let traced = bed.waypoint("waypoint-traced", "bench", 1)?;
    let workers = args
        .waypoint_workers
        .map(|n| vec!["--worker-threads".to_owned(), n.to_string()])
        .unwrap_or_default();
    let workers: Vec<&str> = workers.iter().map(String::as_str).collect();
    bed.waypoint_args_for("waypoint", &workers);
    let mut traced_args = vec![
        "--trace-collector",
        "zipkin:127.0.0.1:9",
        "--trace-sampling",
        "100",
    ];
    traced_args.extend_from_slice(&workers);
    bed.waypoint_args_for("waypoint-traced", &traced_args);
    bed.service("l4", "bench", "10.96.1.4".parse()?, 80, 8080, &[&l4]);
    bed.service("l7", "bench", "10.96.1.7".parse()?, 80, 8080, &[&l7]);
    bed.service("l7t", "bench", "10.96.1.8".parse()?, 80, 8080, &[&l7t]);
    bed.use_waypoint("bench", "l7", Some("waypoint"))?;
    bed.use_waypoint("bench", "l7t", Some("waypoint-traced"))?;
    bed.start()?;
    for (pod, name) in [
        (&plain_server, "plain"),
        (&l4, "l4"),
        (&l7, "l7"),
        (&l7t, "l7t"),
    ] {
        bed.serve_testsrv(pod, name)?;
    }
    let requests = (args.rate * args.secs).to_string();
    // Twice the run's length and half a minute: only a broken path is cut short.
    let deadline = (args.secs * 2000 + 30_000).to_string();
    let (rate, conc, body) = (
        args.rate.to_string(),
        args.concurrency.to_string(),
        args.body_bytes.to_string(),
    );
    let run = |from, url: &str| {
        bed.load(
            from,
            &[
                "--url",
                url,
                "--method",
                "POST",
                "--requests",
                &requests,
                "--rate",
                &rate,
                "--concurrency",
                &conc,
                "--body-bytes",
                &body,
                "--deadline-ms",
                &deadline,
            ],
        )
    };
    // Warm up connections and the waypoint's pools.
    for url in ["http://10.96.1.7:80/", "http://10.96.1.8:80/"] {
        let _ = bed.load(&client, &["--url", url, "--requests", "200"])?;
    }
    let waypoint_pid = bed.waypoint_pid(&waypoint).context("waypoint pid")?;
    let rss_idle = proc_stat(waypoint_pid).map_or(0, |s| s.1);

    let plain = run(&plain_client, &format!("http://{}:8080/", plain_server.ip))?;
    let mesh_l4 = run(&client, "http://10.96.1.4:80/")?;
    let before = proc_stat(waypoint_pid).context("waypoint stat")?;
    let mesh_l7 = run(&client, "http://10.96.1.7:80/")?;
    let after = proc_stat(waypoint_pid).context("waypoint stat")?;
    let cpu = after.0 - before.0;
    let traced_pid = bed.waypoint_pid(&traced).context("traced waypoint pid")?;
    let traced_before = proc_stat(traced_pid).context("waypoint stat")?;
    let mesh_l7t = run(&client, "http://10.96.1.8:80/")?;
    let traced_after = proc_stat(traced_pid).context("waypoint stat")?;
    let traced_cpu = traced_after.0 - traced_before.0;
    let secs = mesh_l7["secs"].as_f64().unwrap_or(1.0);

    let ok = |v: &serde_json::Value| v["status"]["200"].as_u64().unwrap_or(0);
    let us = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    println!(
        "{} requests/s of {} B for {} s each (concurrency {}), 2 vCPUs shared by everything",
        args.rate, args.body_bytes, args.secs, args.concurrency
    );
    println!("| path | ok | p50 (µs) | p99 (µs) | p50 added | p99 added |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, v) in [
        ("no mesh", &plain),
        ("L4 (node proxies)", &mesh_l4),
        ("L4 + waypoint", &mesh_l7),
        ("L4 + waypoint, tracing 100%, collector down", &mesh_l7t),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:+.0} µs ({:.2}x) | {:+.0} µs ({:.2}x) |",
            ok(v),
            us(v, "p50_us"),
            us(v, "p99_us"),
            us(v, "p50_us") - us(&plain, "p50_us"),
            us(v, "p50_us") / us(&plain, "p50_us").max(1.0),
            us(v, "p99_us") - us(&plain, "p99_us"),
            us(v, "p99_us") / us(&plain, "p99_us").max(1.0),
        );
    }
    println!(
        "waypoint: {:.3} CPU-seconds per second at {} req/s ({:.1} µs CPU per request); RSS {:.1} MiB idle, {:.1} MiB after the run",
        cpu / secs,
        args.rate,
        cpu / (ok(&mesh_l7).max(1) as f64) * 1e6,
        rss_idle as f64 / 1024.0,
        after.1 as f64 / 1024.0
    );
    println!(
        "traced waypoint: {:.3} CPU-seconds per second; RSS {:.1} MiB after the run",
        traced_cpu / mesh_l7t["secs"].as_f64().unwrap_or(1.0),
        traced_after.1 as f64 / 1024.0
    );
    println!(
        "{}",
        serde_json::json!({
            "rate": args.rate, "body_bytes": args.body_bytes, "secs": args.secs,
            "no_mesh": plain, "l4": mesh_l4, "l4_waypoint": mesh_l7,
            "l4_waypoint_traced_collector_down": mesh_l7t,
            "waypoint_cpu_s_per_s": cpu / secs, "waypoint_rss_kib": after.1,
        })
    );
    // A path that did not answer every request is a broken run, not a slow one: say why while
    // the bed's logs still exist.
    let expected = args.rate * args.secs;
    let short: Vec<&str> = [
        ("no mesh", &plain),
        ("L4", &mesh_l4),
        ("L4 + waypoint", &mesh_l7),
        ("traced", &mesh_l7t),
    ]
    .into_iter()
    .filter(|(_, v)| ok(v) < expected)
    .map(|(name, _)| name)
    .collect();
    if !short.is_empty() {
        for i in 0..bed.nodes().len() {
            eprintln!("--- node proxy {i}\n{}", tail(&bed.proxy_log(i)));
        }
        for w in [&waypoint, &traced] {
            let log = std::fs::read_to_string(bed.waypoint_log_path(w)).unwrap_or_default();
            eprintln!("--- {}\n{}", w.name, tail(&log));
        }
        anyhow::bail!("not every request was answered on: {short:?} (logs above)");
    }
    Ok(())
}

/// The last 40 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
