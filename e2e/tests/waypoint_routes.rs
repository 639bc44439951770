//! Waypoint routing end to end: the guide's header route, canary split and SMI TrafficSplit
//! applied unchanged to a mesh of network namespaces with real node proxies, a real controller
//! and a real `weft-waypoint`; the `weft-testsrv` load client in the client pod, captured like
//! any app. Needs root.

use anyhow::{Result, ensure};
use weft_testbed::fixtures::{
    Bookinfo, REVIEWS_VIP, bookinfo, guide, reviews_url as url, tally_count as count,
};
use weft_testbed::{TestBed, metric_sum};

#[test]
fn header_route_sends_jason_to_v2_and_everyone_else_to_v1() -> Result<()> {
    let b = bookinfo("wphdr")?;
    b.apply("traffic.yaml", &guide("istio-traffic-management.yaml")?)?;

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
    b.apply("canary.yaml", &guide("istio-canary.yaml")?)?;
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

#[test]
fn smi_traffic_split_from_the_guide_sends_90_10() -> Result<()> {
    let mut bed = TestBed::new("wpsplit", 2)?;
    bed.with_controller();
    let client = bed.pod("client").namespace("default").on_node(0).add()?;
    let v1 = bed
        .pod("reviews-v1")
        .namespace("default")
        .label("app", "reviews")
        .on_node(1)
        .add()?;
    let v2 = bed
        .pod("reviews-v2")
        .namespace("default")
        .label("app", "reviews")
        .on_node(0)
        .add()?;
    let waypoint = bed.waypoint("waypoint", "default", 1)?;
    bed.service("reviews", "default", REVIEWS_VIP, 9080, 8080, &[&v1, &v2]);
    bed.service(
        "reviews-v1",
        "default",
        "10.96.0.31".parse()?,
        9080,
        8080,
        &[&v1],
    );
    bed.service(
        "reviews-v2",
        "default",
        "10.96.0.32".parse()?,
        9080,
        8080,
        &[&v2],
    );
    bed.use_waypoint("default", "reviews", Some("waypoint"))?;
    bed.start()?;
    bed.serve_testsrv(&v1, "v1")?;
    bed.serve_testsrv(&v2, "v2")?;
    let b = Bookinfo {
        bed,
        client: client.clone(),
        v1,
        v2,
        waypoint,
    };
    b.apply("split.yaml", &guide("linkerd-canary.yaml")?)?;
    let tally = b.bed.load(
        &client,
        &[
            "--url",
            &url("/"),
            "--requests",
            "2000",
            "--concurrency",
            "4",
        ],
    )?;
    let v2_share = count(&tally, "body", "v2") as f64 / 20.0;
    eprintln!("TrafficSplit 90/10: {tally} ({v2_share:.1}% to v2)");
    ensure!(count(&tally, "status", "200") == 2000, "{tally}");
    ensure!((7.0..=13.0).contains(&v2_share), "v2 got {v2_share:.1}%");
    Ok(())
}

#[test]
fn upgrades_pass_the_waypoint_end_to_end_and_connect_is_answered() -> Result<()> {
    let b = bookinfo("wpupgrade")?;
    // An Upgrade request (as WebSocket makes) is routed, switched, and echoes through.
    let upgraded = b
        .bed
        .testsrv(&b.client, "upgrade", &["--url", &url("/ws")])?;
    ensure!(upgraded["status"] == 101, "{upgraded}");
    ensure!(
        upgraded["echo"] == "ping through the waypoint",
        "{upgraded}"
    );
    // An HTTP CONNECT gets an answer at once instead of hanging.
    let started = std::time::Instant::now();
    let code = b.bed.http_status(
        &b.client,
        &url(""),
        &["-X", "CONNECT", "--request-target", "example.com:443"],
    )?;
    ensure!(code == "405", "CONNECT answered {code}");
    ensure!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "CONNECT took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_traffic_split_to_leaf_services_outside_the_waypoint_serves_every_request() -> Result<()> {
    // The apex `reviews` (bound to the waypoint) has no pods of its own: the TrafficSplit sends
    // to leaf services whose pods are not behind the waypoint, so their node proxies see the
    // waypoint forwarding for the client.
    let mut bed = TestBed::new("wpleaf", 2)?;
    bed.with_controller();
    let client = bed.pod("client").namespace("default").on_node(0).add()?;
    let v1 = bed
        .pod("reviews-v1")
        .namespace("default")
        .on_node(1)
        .add()?;
    let v2 = bed
        .pod("reviews-v2")
        .namespace("default")
        .on_node(0)
        .add()?;
    let waypoint = bed.waypoint("waypoint", "default", 1)?;
    bed.service("reviews", "default", REVIEWS_VIP, 9080, 8080, &[]);
    bed.service(
        "reviews-v1",
        "default",
        "10.96.0.31".parse()?,
        9080,
        8080,
        &[&v1],
    );
    bed.service(
        "reviews-v2",
        "default",
        "10.96.0.32".parse()?,
        9080,
        8080,
        &[&v2],
    );
    bed.use_waypoint("default", "reviews", Some("waypoint"))?;
    bed.start()?;
    bed.serve_testsrv(&v1, "v1")?;
    bed.serve_testsrv(&v2, "v2")?;
    let b = Bookinfo {
        bed,
        client: client.clone(),
        v1,
        v2,
        waypoint,
    };
    b.apply(
        "split.yaml",
        &guide("linkerd-canary.yaml")?
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50"),
    )?;
    let tally = b.bed.load(
        &client,
        &[
            "--url",
            &url("/"),
            "--requests",
            "400",
            "--concurrency",
            "4",
        ],
    )?;
    eprintln!("TrafficSplit 50/50 to leaf services: {tally}");
    ensure!(count(&tally, "status", "200") == 400, "{tally}");
    // Binomial(400, 1/2): mean 200, sd 10; 140..=260 is 6 sd either side.
    let v2 = count(&tally, "body", "v2");
    ensure!((140..=260).contains(&v2), "v2 got {v2} of 400");
    Ok(())
}

#[test]
fn a_virtual_service_edits_headers_and_answers_directly() -> Result<()> {
    let b = bookinfo("wpheaders")?;
    b.apply(
        "headers.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: short and stout}}
  - headers:
      request: {set: {x-weft-route: canary}, remove: [x-drop-me]}
      response: {set: {x-answered-by: waypoint}, remove: [x-served-by]}
    route: [{destination: {host: reviews}}]
",
    )?;
    let head = |path: &str, extra: &[&str]| b.bed.http_head(&b.client, &url(path), extra);
    let routed = head("/reviews/1", &["-H", "x-echo-header: x-weft-route"])?;
    ensure!(routed.starts_with("http/1.1 200"), "{routed}");
    ensure!(
        routed.contains("x-echo: canary"),
        "the request header was not set: {routed}"
    );
    ensure!(routed.contains("x-answered-by: waypoint"), "{routed}");
    ensure!(
        !routed.contains("x-served-by"),
        "the response header was not removed: {routed}"
    );
    let removed = head(
        "/reviews/1",
        &["-H", "x-echo-header: x-drop-me", "-H", "x-drop-me: yes"],
    )?;
    ensure!(
        !removed.contains("x-echo:"),
        "the request header was not removed: {removed}"
    );
    let teapot = b.bed.exec(
        &b.client,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-w",
            " %{http_code}",
            &url("/teapot"),
        ],
    )?;
    let teapot = String::from_utf8_lossy(&teapot.stdout).trim().to_owned();
    ensure!(teapot == "short and stout 418", "{teapot}");
    Ok(())
}

#[test]
fn a_virtual_service_redirects_and_rewrites() -> Result<()> {
    let b = bookinfo("wprewrite")?;
    b.apply(
        "rewrite.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - match: [{uri: {prefix: /api}}]
    rewrite: {uri: /reviews}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
",
    )?;
    let head = |path: &str| b.bed.http_head(&b.client, &url(path), &[]);
    let moved = head("/old/page")?;
    ensure!(moved.starts_with("http/1.1 302"), "{moved}");
    ensure!(
        moved.contains(&format!("location: http://{REVIEWS_VIP}:9080/new")),
        "{moved}"
    );
    let rewritten = head("/api/7?x=1")?;
    ensure!(rewritten.starts_with("http/1.1 200"), "{rewritten}");
    ensure!(rewritten.contains("x-path: /reviews/7"), "{rewritten}");
    let plain = head("/other")?;
    ensure!(plain.contains("x-path: /other"), "{plain}");
    Ok(())
}
