//! Waypoints end to end: the guide's YAML applied unchanged to a mesh of network namespaces,
//! real node proxies, a real controller and a real `weft-waypoint`; unmodified curl and the
//! `weft-testsrv` load client in the client pod, captured like any app. Needs root.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use weft_testbed::fixtures::{REVIEWS_VIP, ReviewsBehindWaypoint, reviews_behind_waypoint};
use weft_testbed::{Pod, TestBed, metric_sum};

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
    let ReviewsBehindWaypoint { v1, v2, waypoint } = reviews_behind_waypoint(&mut bed)?;
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

/// The guide's DestinationRule subsets for `reviews`, which its retry example refers to.
const REVIEWS_SUBSETS: &str = "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

#[test]
fn retries_hide_a_backend_failing_30_percent_and_per_try_timeouts_cut_at_2s() -> Result<()> {
    let b = bookinfo("wpretry")?;
    // The subsets alone change nothing the waypoint does; the retry route that uses them does.
    b.bed.write_manifest("subsets.yaml", REVIEWS_SUBSETS)?;
    apply(&b, "retry.yaml", &guide("istio-retry.yaml")?)?;

    // Without retries the client would see 30% 503s: the backend fails 3 of every 10 arrivals
    // (arrivals 0, 4 and 7 of each 10: never two in a row). One request at a time makes the
    // input deterministic: every failed try is retried on the next arrival, which succeeds, so
    // every request must succeed, and the backend serves exactly the tries this model counts.
    b.bed.testsrv_set(&b.v1, "fail=30&status=503&reset=1")?;
    let requests = 1000u64;
    let tally = b.bed.load(
        &b.client,
        &[
            "--url",
            &url("/reviews/1"),
            "--requests",
            &requests.to_string(),
            "--concurrency",
            "1",
        ],
    )?;
    let ok = count(&tally, "status", "200");
    let served = b.bed.testsrv_count(&b.v1)?;
    let fails = |arrival: u64| (arrival * 30) % 100 < 30;
    let mut expected_tries = 0u64;
    for _ in 0..requests {
        while fails(expected_tries) {
            expected_tries += 1;
        }
        expected_tries += 1;
    }
    eprintln!(
        "30% failing backend, attempts 3: {ok}/{requests} succeeded; backend served {served} (model: {expected_tries})"
    );
    ensure!(ok == requests, "success {ok}/{requests}: {tally}");
    ensure!(
        served == expected_tries,
        "the backend served {served} tries, the model says {expected_tries}"
    );

    // A backend that takes 5 s: each try is cut at perTryTimeout (2 s); the request fails
    // after 1 + 3 tries with 504 and the UT flag.
    b.bed.testsrv_set(&b.v1, "fail=0&delay_ms=5000&reset=1")?;
    let started = std::time::Instant::now();
    let slow = b.bed.load(
        &b.client,
        &[
            "--url",
            &url("/slow"),
            "--requests",
            "1",
            "--timeout-ms",
            "20000",
        ],
    )?;
    let took = started.elapsed();
    eprintln!("5 s backend, perTryTimeout 2s x 4 tries: {slow} in {took:?}");
    ensure!(count(&slow, "status", "504") == 1, "{slow}");
    ensure!(count(&slow, "flags", "UT") == 1, "{slow}");
    ensure!(
        took >= std::time::Duration::from_secs(8) && took < std::time::Duration::from_secs(10),
        "4 tries of 2 s took {took:?}"
    );
    ensure!(b.bed.testsrv_count(&b.v1)? == 4, "tries at the backend");
    Ok(())
}

#[test]
fn route_timeout_cuts_a_5s_backend_at_the_configured_time() -> Result<()> {
    let b = bookinfo("wptimeout")?;
    apply(
        &b,
        "timeout.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - timeout: 1500ms
    route:
    - destination:
        host: reviews
",
    )?;
    b.bed.testsrv_set(&b.v1, "delay_ms=5000")?;
    b.bed.testsrv_set(&b.v2, "delay_ms=5000")?;
    let started = std::time::Instant::now();
    let out = b.bed.exec(
        &b.client,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            &url("/"),
        ],
    )?;
    let took = started.elapsed();
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("route timeout 1500ms against a 5 s backend: {code} after {took:?}");
    ensure!(code == "504", "curl got {code}");
    ensure!(
        took >= std::time::Duration::from_millis(1400)
            && took < std::time::Duration::from_millis(2500),
        "cut after {took:?}"
    );
    Ok(())
}

#[test]
fn the_retry_budget_caps_extra_load_when_the_backend_fails_everything() -> Result<()> {
    let mut bed = TestBed::new("wpbudget", 2)?;
    bed.with_controller();
    let client = bed.pod("client").namespace("default").on_node(0).add()?;
    let server = bed
        .pod("my-service-1")
        .namespace("default")
        .label("app", "my-service")
        .on_node(1)
        .add()?;
    let waypoint = bed.waypoint("waypoint", "default", 1)?;
    bed.service(
        "my-service",
        "default",
        "10.96.0.40".parse()?,
        80,
        8080,
        &[&server],
    );
    bed.use_waypoint("default", "my-service", Some("waypoint"))?;
    bed.start()?;
    bed.serve_testsrv(&server, "my-service")?;
    let b = Bookinfo {
        client: client.clone(),
        v1: server.clone(),
        v2: server.clone(),
        waypoint,
        bed,
    };
    apply(&b, "retry.yaml", &guide("linkerd-retry.yaml")?)?;
    b.bed.testsrv_set(&server, "fail=100&status=503&reset=1")?;
    // 1,000 POSTs at 250/s to the retryable route: the budget (retryRatio 0.2, plus 10/s
    // over its 10 s window) allows about 300 retries where 3 attempts each would be 3,000.
    let tally = b.bed.load(
        &client,
        &[
            "--url",
            "http://10.96.0.40:80/api/items",
            "--method",
            "POST",
            "--requests",
            "1000",
            "--rate",
            "250",
            "--concurrency",
            "8",
        ],
    )?;
    let served = b.bed.testsrv_count(&server)?;
    eprintln!("backend failing 100%: clients sent 1000, backend served {served} ({tally})");
    ensure!(count(&tally, "status", "503") == 1000, "{tally}");
    ensure!(
        served <= 1000 + 200 + 100 + 10,
        "the budget let {} retries through",
        served - 1000
    );
    ensure!(
        served >= 1000 + 150,
        "retries were not attempted at all ({served})"
    );
    Ok(())
}

#[test]
fn authorization_policy_allows_get_from_productpage_and_denies_the_rest() -> Result<()> {
    let mut bed = TestBed::new("wpauthz", 2)?;
    bed.with_controller();
    let productpage = bed
        .pod("productpage")
        .namespace("default")
        .service_account("bookinfo-productpage")
        .on_node(0)
        .add()?;
    let other = bed
        .pod("ratings")
        .namespace("default")
        .service_account("bookinfo-ratings")
        .on_node(0)
        .add()?;
    let v1 = bed
        .pod("reviews-v1")
        .namespace("default")
        .service_account("reviews")
        .label("app", "reviews")
        .on_node(1)
        .add()?;
    let waypoint = bed.waypoint("reviews-waypoint", "default", 1)?;
    bed.service("reviews", "default", REVIEWS_VIP, 9080, 8080, &[&v1]);
    bed.use_waypoint("default", "reviews", Some("reviews-waypoint"))?;
    bed.start()?;
    bed.serve_testsrv(&v1, "v1")?;
    let b = Bookinfo {
        client: productpage.clone(),
        v1: v1.clone(),
        v2: v1.clone(),
        waypoint,
        bed,
    };
    apply(&b, "security.yaml", &guide("istio-security.yaml")?)?;
    let code = |pod: &Pod, method: &str| -> Result<(String, String)> {
        let out = b.bed.exec(
            pod,
            &[
                "curl",
                "-sS",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                "--max-time",
                "5",
                &url("/reviews/1"),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        Ok((code.to_owned(), body.to_owned()))
    };
    let (get, get_body) = code(&productpage, "GET")?;
    let (post, post_body) = code(&productpage, "POST")?;
    let (stranger, stranger_body) = code(&other, "GET")?;
    eprintln!(
        "GET from productpage {get}; POST {post} ({post_body}); GET from ratings {stranger} ({stranger_body})"
    );
    ensure!(
        get == "200",
        "GET from productpage: {get} {get_body}\nwaypoint log:\n{}\nnode2 log (tail):\n{}",
        std::fs::read_to_string(b.bed.waypoint_log_path(&b.waypoint)).unwrap_or_default(),
        b.bed
            .proxy_log(1)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        post == "403" && post_body.contains("RBAC: access denied"),
        "POST: {post} {post_body}"
    );
    ensure!(
        stranger == "403" && stranger_body.contains("bookinfo-ratings"),
        "GET from another principal: {stranger} {stranger_body}"
    );
    Ok(())
}

#[test]
fn grpc_unavailable_is_retried() -> Result<()> {
    let b = bookinfo("wpgrpc")?;
    apply(
        &b,
        "grpc.yaml",
        "apiVersion: networking.istio.io/v1
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
    retries:
      attempts: 3
      retryOn: unavailable
",
    )?;
    for pod in [&b.v1, &b.v2] {
        b.bed.testsrv_set(pod, "grpc_unavailable=30&reset=1")?;
    }
    // Without the waypoint's retries, 30% of calls would end UNAVAILABLE (14).
    let tally = b.bed.load(
        &b.client,
        &[
            "--url",
            &url("/reviews.Reviews/Get"),
            "--grpc",
            "--body-bytes",
            "64",
            "--requests",
            "500",
            "--concurrency",
            "4",
        ],
    )?;
    let served = b.bed.testsrv_count(&b.v1)? + b.bed.testsrv_count(&b.v2)?;
    eprintln!("gRPC with 30% UNAVAILABLE: {tally}; backends served {served}");
    ensure!(count(&tally, "grpc_status", "0") >= 495, "{tally}");
    ensure!(served > 600, "no retries reached the backends ({served})");
    Ok(())
}

/// `httpbin` with two endpoints behind a waypoint.
fn httpbin(label: &str) -> Result<(Bookinfo, Pod)> {
    let mut bed = TestBed::new(label, 2)?;
    bed.with_controller();
    let client = bed.pod("client").namespace("default").on_node(0).add()?;
    let a = bed
        .pod("httpbin-a")
        .namespace("default")
        .service_account("httpbin")
        .label("app", "httpbin")
        .on_node(1)
        .add()?;
    let b2 = bed
        .pod("httpbin-b")
        .namespace("default")
        .service_account("httpbin")
        .label("app", "httpbin")
        .on_node(0)
        .add()?;
    let waypoint = bed.waypoint("waypoint", "default", 1)?;
    bed.service(
        "httpbin",
        "default",
        "10.96.0.50".parse()?,
        8000,
        8080,
        &[&a, &b2],
    );
    bed.use_waypoint("default", "httpbin", Some("waypoint"))?;
    bed.start()?;
    bed.serve_testsrv(&a, "a")?;
    bed.serve_testsrv(&b2, "b")?;
    Ok((
        Bookinfo {
            bed,
            client: client.clone(),
            v1: a,
            v2: b2,
            waypoint,
        },
        client,
    ))
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint_and_brings_it_back_after_30s() -> Result<()> {
    let (b, client) = httpbin("wpeject")?;
    apply(&b, "cb.yaml", &guide("istio-circuit-breaker.yaml")?)?;
    let httpbin = "http://10.96.0.50:8000/get";
    b.bed.testsrv_set(&b.v1, "fail=100&status=503&reset=1")?;
    // consecutiveGatewayFailure: 5 — a few 503s reach the client, then endpoint a is ejected
    // (one of two: within maxEjectionPercent 50 and minHealthPercent 40).
    let first = b
        .bed
        .load(&client, &["--url", httpbin, "--requests", "40"])?;
    let failures_seen = b.bed.testsrv_count(&b.v1)?;
    eprintln!("while a fails: {first}; a served {failures_seen}");
    ensure!(
        failures_seen == 5,
        "a served {failures_seen} requests before ejection, not 5"
    );
    let after = b
        .bed
        .load(&client, &["--url", httpbin, "--requests", "50"])?;
    ensure!(count(&after, "body", "b") == 50, "after ejection: {after}");
    ensure!(
        b.bed.testsrv_count(&b.v1)? == 5,
        "ejected endpoint got traffic"
    );

    // a recovers; baseEjectionTime 30s later it takes traffic again.
    b.bed.testsrv_set(&b.v1, "fail=0")?;
    std::thread::sleep(std::time::Duration::from_secs(31));
    let back = b
        .bed
        .load(&client, &["--url", httpbin, "--requests", "50"])?;
    eprintln!("after the ejection time: {back}");
    ensure!(count(&back, "body", "a") > 0, "a did not come back: {back}");
    ensure!(count(&back, "status", "200") == 50, "{back}");
    Ok(())
}

#[test]
fn pool_limits_answer_503_with_the_uo_flag() -> Result<()> {
    let (b, client) = httpbin("wppool")?;
    apply(
        &b,
        "pool.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
",
    )?;
    for pod in [&b.v1, &b.v2] {
        b.bed.testsrv_set(pod, "delay_ms=300")?;
    }
    // 10 at once against 1 connection + 1 pending: most overflow.
    let tally = b.bed.load(
        &client,
        &[
            "--url",
            "http://10.96.0.50:8000/get",
            "--requests",
            "10",
            "--concurrency",
            "10",
        ],
    )?;
    eprintln!("10 concurrent requests, maxConnections 1, pending 1: {tally}");
    let (ok, overflow) = (count(&tally, "status", "200"), count(&tally, "flags", "UO"));
    ensure!((1..=3).contains(&ok), "{tally}");
    ensure!(
        overflow + ok == 10 && count(&tally, "status", "503") == overflow,
        "{tally}"
    );
    let metrics = b.bed.waypoint_metrics(&b.waypoint)?;
    let counted = metric_sum(
        &metrics,
        "weft_requests_total",
        &[("response_code", "503"), ("response_flags", "UO")],
    );
    ensure!(
        counted == overflow as f64,
        "waypoint metrics count {counted} UO"
    );
    Ok(())
}

#[test]
fn peer_authentication_strict_permissive_and_disable() -> Result<()> {
    let mut bed = TestBed::new("wppeer", 2)?;
    bed.with_controller();
    let outsider = bed
        .pod("outsider")
        .namespace("legacy")
        .not_enrolled()
        .on_node(0)
        .add()?;
    let client = bed.pod("client").namespace("default").on_node(0).add()?;
    let app = bed
        .pod("my-app-1")
        .namespace("default")
        .label("app", "my-app")
        .on_node(1)
        .add()?;
    let legacy = bed
        .pod("legacy-app-1")
        .namespace("default")
        .label("app", "legacy-app")
        .on_node(1)
        .add()?;
    bed.start()?;
    bed.serve_testsrv(&app, "my-app")?;
    bed.serve_testsrv(&legacy, "legacy")?;
    let get = |from: &Pod, to: &Pod| -> Result<bool> {
        let out = bed.exec(
            from,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://{}:8080/", to.ip),
            ],
        )?;
        Ok(out.status.success())
    };
    let docs: Vec<String> = guide("istio-mtls.yaml")?
        .split("\n---\n")
        .map(str::to_owned)
        .collect();
    let wait_for = |needle: &str| -> Result<()> {
        let mark = bed.proxy_log(1).len();
        let _ = bed.wait_log(1, mark, needle, std::time::Duration::from_secs(3));
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(())
    };

    // STRICT (the guide's strict-mtls): plaintext from outside the mesh is refused; the
    // enrolled client still gets through over mTLS.
    bed.write_manifest("peer.yaml", &docs[0])?;
    wait_for("config update applied")?;
    ensure!(!get(&outsider, &app)?, "STRICT let plaintext through");
    ensure!(get(&client, &app)?, "mTLS client refused under STRICT");

    // PERMISSIVE: both.
    bed.write_manifest("peer.yaml", &docs[1])?;
    wait_for("config update applied")?;
    ensure!(get(&outsider, &app)?, "PERMISSIVE refused plaintext");
    ensure!(get(&client, &app)?, "PERMISSIVE refused mTLS");
    let plaintext_seen = metric_sum(
        &bed.metrics(1)?,
        "weft_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "none"),
        ],
    );
    ensure!(
        plaintext_seen >= 1.0,
        "PERMISSIVE plaintext not counted as none"
    );

    // DISABLE on legacy-app: plain TCP both ways, no HBONE to it; the source reports none.
    bed.write_manifest("peer.yaml", &docs[2])?;
    wait_for("config update applied")?;
    let before = bed.metrics(0)?;
    ensure!(
        get(&client, &legacy)?,
        "enrolled client to DISABLE workload failed"
    );
    ensure!(
        get(&outsider, &legacy)?,
        "plaintext to DISABLE workload failed"
    );
    let after = bed.metrics(0)?;
    let none = |m| {
        metric_sum(
            m,
            "weft_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_workload", "legacy-app-1"),
                ("connection_security_policy", "none"),
            ],
        )
    };
    let mtls = |m| {
        metric_sum(
            m,
            "weft_tcp_connections_opened_total",
            &[
                ("destination_workload", "legacy-app-1"),
                ("connection_security_policy", "mutual_tls"),
            ],
        )
    };
    ensure!(
        none(&after) - none(&before) == 1.0,
        "DISABLE not reported as connection_security_policy=none"
    );
    ensure!(
        mtls(&after) == mtls(&before),
        "HBONE still used to the DISABLE workload"
    );
    Ok(())
}

#[test]
fn a_pod_behind_a_waypoint_refuses_tunnels_that_skip_it() -> Result<()> {
    use weft_core::hbone::HboneError;
    use weft_core::identity::TrustBundle;

    let b = bookinfo("wpbypass")?;
    // Through the mesh (even addressed to the pod's own IP) the request passes the waypoint.
    let direct_ip = format!("http://{}:8080/", b.v1.ip);
    let out = b
        .bed
        .exec(&b.client, &["curl", "-sS", "--max-time", "5", &direct_ip])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "v1",
        "pod-IP request via the waypoint failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let via_waypoint = metric_sum(
        &b.bed.waypoint_metrics(&b.waypoint)?,
        "weft_requests_total",
        &[
            ("destination_workload", "reviews-v1"),
            ("response_code", "200"),
        ],
    );
    ensure!(
        via_waypoint == 1.0,
        "the pod-IP request did not pass the waypoint"
    );

    // The client's own, valid certificate, but a tunnel straight to reviews-v1: refused (401).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Dialled from node 1's namespace, outside the client pod (whose own connects are captured).
    let netns = std::sync::Arc::new(weft_core::netns::Netns::open(
        &Path::new("/run/netns").join(&b.bed.nodes()[0].netns),
    )?);
    let client_cert = weft_testbed::rogue::cert(b.bed.ca(), &b.client.identity(), None)?;
    let bundle = TrustBundle::from_pem("bed root", b.bed.ca().root_pem())?;
    let mark = b.bed.proxy_log(1).len();
    let refused = rt
        .block_on(weft_testbed::rogue::tunnel(
            &netns,
            &client_cert,
            &bundle,
            std::net::SocketAddr::new(b.v1.ip.into(), 8080),
            &b.v1.identity(),
            std::net::SocketAddr::new(b.client.ip.into(), 40000),
        ))
        .err()
        .context("a tunnel that skipped the waypoint was opened")?;
    ensure!(
        matches!(refused, HboneError::Refused { status, .. } if status == 401),
        "{refused}"
    );
    b.bed.wait_log(
        1,
        mark,
        "traffic must come through it",
        std::time::Duration::from_secs(2),
    )?;
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
    apply(&b, "split.yaml", &guide("linkerd-canary.yaml")?)?;
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
fn a_waypoint_gets_its_own_certificate_from_the_controller_and_no_other() -> Result<()> {
    let b = bookinfo("wpca")?;
    let log = std::fs::read_to_string(b.bed.waypoint_log_path(&b.waypoint))?;
    ensure!(
        log.contains("certificate issued by the controller"),
        "the waypoint did not get its certificate from the CA:\n{log}"
    );
    let credential = std::fs::read_to_string(
        b.bed
            .dir()
            .join("waypoint.default.reviews-waypoint.credential"),
    )?;
    let own = b.bed.ask_for_cert(&credential, &b.waypoint.identity())?;
    ensure!(own.is_ok(), "the waypoint's own identity: {own:?}");
    let Err((code, message)) = b.bed.ask_for_cert(&credential, &b.v1.identity())? else {
        anyhow::bail!("a waypoint got a certificate for the workload it fronts");
    };
    ensure!(
        code == tonic::Code::PermissionDenied && message.contains("may have only"),
        "{code:?}: {message}"
    );
    Ok(())
}

#[test]
fn garbage_on_the_waypoint_port_is_refused_and_it_keeps_serving() -> Result<()> {
    use std::io::{Read, Write};

    let b = bookinfo("wpgarbage")?;
    let node = Path::new("/run/netns").join(&b.bed.nodes()[0].netns);
    let target = std::net::SocketAddr::new(b.waypoint.ip.into(), 15008);
    for payload in [
        &b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x00, 0x13, 0x37, 0x42][..],
    ] {
        let payload = payload.to_vec();
        let closed = weft_testbed::in_netns(&node, move || -> Result<bool> {
            let mut stream =
                std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2))?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            stream.write_all(&payload)?;
            let mut buf = [0u8; 64];
            // The waypoint closes the connection (or sends a TLS alert, then closes).
            let mut total = 0;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => return Ok(true),
                    Ok(n) => total += n,
                    Err(_) => return Ok(total > 0),
                }
                if total > 4096 {
                    return Ok(false);
                }
            }
        })??;
        ensure!(closed, "the waypoint kept a garbage connection open");
    }
    let log = std::fs::read_to_string(b.bed.waypoint_log_path(&b.waypoint))?;
    ensure!(
        log.matches("HBONE connection refused").count() >= 2,
        "no refusal logged:\n{log}"
    );
    let tally = b
        .bed
        .load(&b.client, &["--url", &url("/"), "--requests", "20"])?;
    ensure!(
        count(&tally, "status", "200") == 20,
        "after garbage: {tally}"
    );
    Ok(())
}
