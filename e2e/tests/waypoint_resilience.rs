//! Waypoint resilience end to end: retries (with their budget), route and per-try timeouts,
//! gRPC retries, outlier detection and connection-pool limits, from the guide's YAML. Needs
//! root.

use anyhow::{Context, Result, ensure};
use weft_testbed::fixtures::{
    Bookinfo, REVIEWS_SUBSETS, bookinfo, guide, httpbin, reviews_url as url, tally_count as count,
};
use weft_testbed::{TestBed, metric_sum};

#[test]
fn retries_hide_a_backend_failing_30_percent_and_per_try_timeouts_cut_at_2s() -> Result<()> {
    let b = bookinfo("wpretry")?;
    // The subsets alone change nothing the waypoint does; the retry route that uses them does.
    b.bed.write_manifest("subsets.yaml", REVIEWS_SUBSETS)?;
    b.apply("retry.yaml", &guide("istio-retry.yaml")?)?;

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
    b.apply(
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
    let code = b.bed.http_status(&b.client, &url("/"), &[])?;
    let took = started.elapsed();
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
fn timed_out_requests_give_back_their_connections() -> Result<()> {
    let b = bookinfo("wpwedge")?;
    b.apply(
        "pool.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - timeout: 1s
    retries: {attempts: 0}
    route:
    - destination: {host: reviews}
",
    )?;
    let code = |path: &str| b.bed.http_status(&b.client, &url(path), &[]);
    // Four requests time out at the waypoint, each holding one of the two connections when
    // its timeout fires.
    b.bed.testsrv_set(&b.v1, "delay_ms=3000")?;
    b.bed.testsrv_set(&b.v2, "delay_ms=3000")?;
    for i in 0..4 {
        let c = code("/slow")?;
        ensure!(c == "504", "slow request {i}: {c}");
    }
    // The backend is healthy again: every request must be served. A connection slot leaked
    // by each timeout would leave none (504 UT or 503 UO from here on).
    b.bed.testsrv_set(&b.v1, "delay_ms=0")?;
    b.bed.testsrv_set(&b.v2, "delay_ms=0")?;
    for i in 0..20 {
        let c = code("/reviews/1")?;
        ensure!(c == "200", "request {i} after the timeouts: {c}");
    }
    Ok(())
}

#[test]
fn on_sigterm_the_waypoint_finishes_requests_in_flight_then_exits() -> Result<()> {
    let b = bookinfo("wpdrain")?;
    b.bed.testsrv_set(&b.v1, "delay_ms=2000")?;
    b.bed.testsrv_set(&b.v2, "delay_ms=2000")?;
    let pid = b
        .bed
        .waypoint_pid(&b.waypoint)
        .context("the waypoint runs")?;
    let code = |path: &str| b.bed.http_status(&b.client, &url(path), &[]);
    let (in_flight, exited) = std::thread::scope(|scope| -> Result<(String, bool)> {
        let request = scope.spawn(|| code("/slow"));
        // The request is at the backend (it takes 2 s) when the waypoint is told to stop.
        std::thread::sleep(std::time::Duration::from_millis(700));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let in_flight = request
            .join()
            .map_err(|_| anyhow::anyhow!("request thread panicked"))??;
        // Then it exits, well before its 10 s deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut exited = false;
        while std::time::Instant::now() < deadline {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.is_empty() || state.split(' ').nth(2) == Some("Z") {
                exited = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok((in_flight, exited))
    })?;
    ensure!(in_flight == "200", "the request in flight got {in_flight}");
    ensure!(exited, "the waypoint did not exit after draining");
    let log = std::fs::read_to_string(b.bed.waypoint_log_path(&b.waypoint))?;
    ensure!(log.contains("draining"), "no drain logged:\n{log}");
    ensure!(log.contains("waypoint stopped"), "no stop logged:\n{log}");
    Ok(())
}

#[test]
fn injected_faults_delay_and_abort_their_share() -> Result<()> {
    let b = bookinfo("wpfault")?;
    b.apply(
        "fault.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /delayed}}]
    fault: {delay: {fixedDelay: 500ms, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /reviews.Reviews/}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
  - fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
",
    )?;
    let started = std::time::Instant::now();
    let delayed = b
        .bed
        .load(&b.client, &["--url", &url("/delayed"), "--requests", "2"])?;
    let took = started.elapsed();
    ensure!(count(&delayed, "status", "200") == 2, "{delayed}");
    ensure!(
        took >= std::time::Duration::from_millis(1000),
        "two requests delayed 500 ms each took {took:?}"
    );
    let tally = b.bed.load(
        &b.client,
        &[
            "--url",
            &url("/reviews/1"),
            "--requests",
            "400",
            "--concurrency",
            "4",
        ],
    )?;
    let aborted = count(&tally, "flags", "FI");
    eprintln!("fault abort 50%: {tally}");
    ensure!(count(&tally, "status", "503") == aborted, "{tally}");
    ensure!(count(&tally, "status", "200") + aborted == 400, "{tally}");
    // Binomial(400, 1/2): mean 200, sd 10; 140..=260 is 6 sd either side.
    ensure!((140..=260).contains(&aborted), "{aborted} of 400 aborted");

    // gRPC callers get a gRPC status (trailers-only), not an HTTP error.
    let grpc = b.bed.load(
        &b.client,
        &[
            "--url",
            &url("/reviews.Reviews/Get"),
            "--grpc",
            "--body-bytes",
            "16",
            "--requests",
            "20",
        ],
    )?;
    ensure!(count(&grpc, "grpc_status", "14") == 20, "{grpc}");
    ensure!(count(&grpc, "status", "200") == 20, "{grpc}");
    ensure!(count(&grpc, "flags", "FI") == 20, "{grpc}");
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
    b.apply("retry.yaml", &guide("linkerd-retry.yaml")?)?;
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
fn grpc_unavailable_is_retried() -> Result<()> {
    let b = bookinfo("wpgrpc")?;
    b.apply(
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
            "--timeout-ms",
            "5000",
            "--deadline-ms",
            "60000",
        ],
    )?;
    let served = b.bed.testsrv_count(&b.v1)? + b.bed.testsrv_count(&b.v2)?;
    eprintln!("gRPC with 30% UNAVAILABLE: {tally}; backends served {served}");
    if count(&tally, "grpc_status", "0") < 485 {
        eprintln!("{}", b.logs());
    }
    // Model: each try fails with p = 0.3 (the backends' pattern is even, but concurrent calls
    // and retries interleave on it, so tries are taken as independent); a call fails only if
    // all 4 tries do: p^4 = 0.0081, so Binomial(500, 0.0081) failures, mean 4.05, sd 2.0.
    // At most 15 is 5.4 sd above the mean; without retries 150 would fail.
    ensure!(count(&tally, "grpc_status", "0") >= 485, "{tally}");
    ensure!(served > 600, "no retries reached the backends ({served})");
    Ok(())
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint_and_brings_it_back_after_30s() -> Result<()> {
    let (b, client) = httpbin("wpeject")?;
    b.apply("cb.yaml", &guide("istio-circuit-breaker.yaml")?)?;
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
    b.apply(
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
