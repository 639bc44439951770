//! Waypoints end to end: the guide's YAML applied unchanged to a mesh of network namespaces,
//! real node proxies, a real controller and a real `weft-waypoint`; unmodified curl and the
//! `weft-testsrv` load client in the client pod, captured like any app. Needs root.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use weft_e2e::{Pod, TestBed, metric_sum};

const REVIEWS_VIP: &str = "10.96.0.30";

fn guide(file: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/guide")
        .join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A mesh with `reviews` (v1 on node 2, v2 on node 1) behind the `reviews-waypoint`, and a
/// client pod `productpage` (service account `bookinfo-productpage`) on node 1.
struct Bookinfo {
    bed: TestBed,
    client: Pod,
    v1: Pod,
    v2: Pod,
    waypoint: Pod,
}

fn bookinfo(label: &str) -> Result<Bookinfo> {
    let mut bed = TestBed::new(label, 2)?;
    bed.with_controller();
    let client = bed
        .pod("productpage")
        .namespace("default")
        .service_account("bookinfo-productpage")
        .on_node(0)
        .add()?;
    let v1 = bed
        .pod("reviews-v1")
        .namespace("default")
        .service_account("reviews")
        .label("app", "reviews")
        .label("version", "v1")
        .on_node(1)
        .add()?;
    let v2 = bed
        .pod("reviews-v2")
        .namespace("default")
        .service_account("reviews")
        .label("app", "reviews")
        .label("version", "v2")
        .on_node(0)
        .add()?;
    let waypoint = bed.waypoint("reviews-waypoint", "default", 1)?;
    bed.service(
        "reviews",
        "default",
        REVIEWS_VIP.parse()?,
        9080,
        8080,
        &[&v1, &v2],
    );
    bed.use_waypoint("default", "reviews", Some("reviews-waypoint"))?;
    bed.start()?;
    bed.serve_testsrv(&v1, "v1")?;
    bed.serve_testsrv(&v2, "v2")?;
    Ok(Bookinfo {
        bed,
        client,
        v1,
        v2,
        waypoint,
    })
}

fn url(path: &str) -> String {
    format!("http://{REVIEWS_VIP}:9080{path}")
}

fn count(tally: &serde_json::Value, field: &str, key: &str) -> u64 {
    tally[field][key].as_u64().unwrap_or(0)
}

/// Applies a manifest and waits until the waypoint has the resulting config.
fn apply(b: &Bookinfo, file: &str, text: &str) -> Result<()> {
    let log = std::fs::read_to_string(b.bed.waypoint_log_path(&b.waypoint)).unwrap_or_default();
    let before = log.matches("config update applied").count();
    b.bed.write_manifest(file, text)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(b.bed.waypoint_log_path(&b.waypoint)).unwrap_or_default();
        if log.matches("config update applied").count() > before {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the waypoint did not get {file}; its log:\n{log}\ncontroller log:\n{}",
            b.bed.controller_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn header_route_sends_jason_to_v2_and_everyone_else_to_v1() -> Result<()> {
    let b = bookinfo("wphdr")?;
    apply(&b, "traffic.yaml", &guide("istio-traffic-management.yaml")?)?;

    // An unmodified client first: curl through the mesh, end-user: jason.
    let out = b.bed.exec(
        &b.client,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-H",
            "end-user: jason",
            &url("/reviews/1"),
        ],
    )?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "v2",
        "curl as jason: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let jason = b.bed.load(
        &b.client,
        &[
            "--url",
            &url("/reviews/1"),
            "--requests",
            "100",
            "--header",
            "end-user:jason",
        ],
    )?;
    let others = b.bed.load(
        &b.client,
        &["--url", &url("/reviews/1"), "--requests", "100"],
    )?;
    ensure!(count(&jason, "body", "v2") == 100, "jason: {jason}");
    ensure!(count(&others, "body", "v1") == 100, "others: {others}");

    // The waypoint counted them, with the route and the source identity.
    let metrics = b.bed.waypoint_metrics(&b.waypoint)?;
    let by_route = |route: &str| {
        metric_sum(
            &metrics,
            "weft_requests_total",
            &[
                ("reporter", "waypoint"),
                ("route", route),
                ("response_code", "200"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
                ),
            ],
        )
    };
    ensure!(
        by_route("reviews.default.0") >= 101.0 && by_route("reviews.default.1") >= 100.0,
        "waypoint metrics by route: {:?}",
        metrics
            .iter()
            .filter(|(k, _)| k.starts_with("weft_requests_total"))
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn canary_90_10_split_within_3_points_over_2000_requests() -> Result<()> {
    let b = bookinfo("wpcanary")?;
    apply(&b, "canary.yaml", &guide("istio-canary.yaml")?)?;
    let tally = b.bed.load(
        &b.client,
        &[
            "--url",
            &url("/reviews/1"),
            "--requests",
            "2000",
            "--concurrency",
            "4",
        ],
    )?;
    let (v1, v2) = (count(&tally, "body", "v1"), count(&tally, "body", "v2"));
    ensure!(v1 + v2 == 2000, "not all answered: {tally}");
    let share = v2 as f64 / 2000.0 * 100.0;
    eprintln!("canary: v1 {v1}, v2 {v2} ({share:.1}% to v2)");
    ensure!((7.0..=13.0).contains(&share), "v2 got {share:.1}%: {tally}");
    // The header overrides the split.
    let canary = b.bed.load(
        &b.client,
        &[
            "--url",
            &url("/"),
            "--requests",
            "50",
            "--header",
            "x-canary:true",
        ],
    )?;
    ensure!(count(&canary, "body", "v2") == 50, "x-canary: {canary}");
    let _ = (&b.v1, &b.v2);
    Ok(())
}
