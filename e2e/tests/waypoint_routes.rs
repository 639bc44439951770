//! Waypoint routing end to end: the guide's header route, canary split and SMI TrafficSplit
//! applied unchanged to a mesh of network namespaces with real node proxies, a real controller
//! and a real `weft-waypoint`; the `weft-testsrv` load client in the client pod, captured like
//! any app. Needs root.

use anyhow::{Result, ensure};
use std::time::{Duration, Instant};

use weft_testbed::fixtures::{
    Bookinfo, REVIEWS_SUBSETS, REVIEWS_VIP, bookinfo, guide, leaf_services, reviews_url as url,
    smi_reviews, tally_count as count,
};
use weft_testbed::{TestBed, metric_sum};

#[test]
fn header_route_sends_jason_to_v2_and_everyone_else_to_v1() -> Result<()> {
    let b = bookinfo("wphdr")?;
    b.apply("traffic.yaml", &guide("istio-traffic-management.yaml")?)?;

    // An unmodified client first: curl through the mesh, end-user: jason. The first request
    // opens every HBONE connection on its way (client → waypoint → v2), so on a loaded machine
    // it gets more time than the ones after it.
    let out = b.bed.exec(
        &b.client,
        &[
            "curl",
            "-sS",
            "--max-time",
            "15",
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
    let (client, v1, v2, waypoint) = smi_reviews(&mut bed)?;
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
    let b = leaf_services("wpleaf")?;
    let client = b.client.clone();
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

/// Polls `probe` until it returns `want` (10 s at most).
fn wait_for(what: &str, want: u64, mut probe: impl FnMut() -> Result<u64>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = probe()?;
        if got == want {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: {got}, expected {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_virtual_service_mirrors_a_share_of_requests_without_the_client_noticing() -> Result<()> {
    let b = bookinfo("wpmirror")?;
    let mirror = |percent: f64| {
        format!(
            "{REVIEWS_SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
    mirror: {{host: reviews, subset: v2}}
    mirrorPercentage: {{value: {percent:.1}}}
"
        )
    };
    let load = |n: &str| {
        b.bed.load(
            &b.client,
            &["--url", &url("/"), "--requests", n, "--concurrency", "4"],
        )
    };

    // Every request copied: the client hears v1 only; v2 gets each copy, as `<host>-shadow`.
    b.apply("mirror.yaml", &mirror(100.0))?;
    let tally = load("200")?;
    ensure!(count(&tally, "body", "v1") == 200, "{tally}");
    wait_for("copies v2 served", 200, || b.bed.testsrv_shadowed(&b.v2))?;
    ensure!(b.bed.testsrv_count(&b.v2)? == 200, "v2 served only copies");

    // Half of them: once no copy is in flight, v2 has served its share.
    b.apply("mirror.yaml", &mirror(50.0))?;
    b.bed.testsrv_set(&b.v2, "reset=1")?;
    let tally = load("400")?;
    ensure!(count(&tally, "body", "v1") == 400, "{tally}");
    let in_flight = || -> Result<u64> {
        let metrics = b.bed.waypoint_metrics(&b.waypoint)?;
        Ok(metrics
            .get("weft_mirrors_in_flight")
            .copied()
            .unwrap_or(-1.0) as u64)
    };
    wait_for("mirrored copies in flight", 0, in_flight)?;
    // Binomial(400, 1/2): mean 200, sd 10; 150..=250 is 5 sd either side.
    let copies = b.bed.testsrv_shadowed(&b.v2)?;
    ensure!(
        (150..=250).contains(&copies),
        "v2 got {copies} copies of 400"
    );

    // A slow mirror does not slow the client: v2 answers after 5 s, the client within 4.
    b.apply("mirror.yaml", &mirror(100.0))?;
    b.bed.testsrv_set(&b.v2, "delay_ms=5000")?;
    let status = b
        .bed
        .http_status(&b.client, &url("/"), &["--max-time", "4"])?;
    ensure!(
        status == "200",
        "the client waited for the mirror: {status}"
    );
    Ok(())
}

#[test]
fn http_route_filters_mirror_rewrite_and_redirect() -> Result<()> {
    let b = leaf_services("wpgamma")?;
    b.apply(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /api/v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /reviews}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: reviews-v2, port: 9080}}
    backendRefs: [{name: reviews-v1, port: 9080}]
",
    )?;
    let head = |path: &str| b.bed.http_head(&b.client, &url(path), &[]);
    let moved = head("/old/page?x=1")?;
    ensure!(moved.starts_with("http/1.1 301"), "{moved}");
    ensure!(
        moved.contains(&format!("location: http://{REVIEWS_VIP}:9080/new/page?x=1")),
        "{moved}"
    );
    let rewritten = head("/api/v1/7")?;
    ensure!(rewritten.starts_with("http/1.1 200"), "{rewritten}");
    ensure!(rewritten.contains("x-path: /reviews/7"), "{rewritten}");
    // `/api/v10` is not under the prefix `/api/v1`: no rule matches it.
    let other = head("/api/v10")?;
    ensure!(other.starts_with("http/1.1 404"), "{other}");
    let tally = b
        .bed
        .load(&b.client, &["--url", &url("/api/v1/x"), "--requests", "50"])?;
    ensure!(count(&tally, "body", "v1") == 50, "{tally}");
    wait_for("copies v2 served", 51, || b.bed.testsrv_shadowed(&b.v2))?;
    Ok(())
}
