//! Traffic capture end to end, under eBPF and under the nftables fallback: who is captured and
//! who is not, enrolling running pods, health probes, the node proxy going away and coming
//! back, and the CNI plugin's contract. Real node proxies, real CNI plugins (bridge, host-local,
//! weft-cni), curl and Python's http.server, in network namespaces. Needs root.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use weft_testbed::{CaptureMode, Pod, TestBed, metric_sum};

weft_testbed::in_both_capture_modes!(
    pods_outside_the_mesh_talk_directly,
    enrolling_a_running_pod_captures_its_next_connection,
    health_probes_from_the_node_reach_an_enrolled_pod,
    proxy_down_fails_closed_and_restart_recovers_within_2s,
    cni_add_needs_the_proxy_and_del_always_succeeds,
    native_ipv6_from_an_enrolled_pod_is_refused_not_bypassed,
    a_pod_connecting_to_the_proxy_listener_itself_is_refused_without_a_loop,
);

/// Connections the node proxies have handled, all reporters, both nodes.
fn proxied(bed: &TestBed) -> Result<f64> {
    let mut total = 0.0;
    for i in 0..bed.nodes().len() {
        total += metric_sum(&bed.metrics(i)?, "weft_tcp_connections_opened_total", &[]);
    }
    Ok(total)
}

fn fetch(bed: &TestBed, from: &Pod, to: &Pod, path: &str) -> Result<(bool, String, String)> {
    bed.fetch(from, to, path)
}

/// Requests a Python http.server in `pod` has logged.
fn served(bed: &TestBed, pod: &Pod) -> usize {
    std::fs::read_to_string(bed.dir().join(format!("http-{}.log", pod.name)))
        .map(|log| log.lines().filter(|l| l.contains("\"GET ")).count())
        .unwrap_or(0)
}

/// Starts the pod's stand-in app (`sleep`) and returns its process ids once it runs.
fn start_app(bed: &mut TestBed, pod: &Pod) -> Result<Vec<String>> {
    bed.spawn_in(
        &pod.netns,
        &["sleep", "600"],
        &format!("{}-app.log", pod.name),
    )?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = pids(pod)?;
        if !pids.is_empty() {
            return Ok(pids);
        }
        ensure!(
            Instant::now() < deadline,
            "the app did not start in {}",
            pod.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Process ids of the pod's app (the `sleep` the tests start in it).
fn pids(pod: &Pod) -> Result<Vec<String>> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &pod.netns])
        .output()?;
    let mut pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .map(str::to_owned)
        .collect();
    pids.sort();
    Ok(pids)
}

/// Whether the pod's app processes are all still there (the pod was not restarted).
fn still_running(pod: &Pod, before: &[String]) -> Result<bool> {
    let now = pids(pod)?;
    Ok(before.iter().all(|p| now.contains(p)))
}

fn pods_outside_the_mesh_talk_directly(mode: CaptureMode) -> Result<()> {
    let mut bed = TestBed::new("direct", 2)?;
    bed.capture_mode(mode);
    let enrolled = bed.pod("client").namespace("shop").on_node(0).add()?;
    let outsider = bed
        .pod("batch")
        .namespace("legacy")
        .on_node(0)
        .not_enrolled()
        .add()?;
    // In an enrolled namespace but opted out (`weft.io/dataplane-mode=none`).
    let opted_out = bed
        .pod("debug")
        .namespace("shop")
        .on_node(0)
        .not_enrolled()
        .add()?;
    let plain = bed
        .pod("plain")
        .namespace("legacy")
        .on_node(1)
        .not_enrolled()
        .add()?;
    bed.start()?;
    bed.serve_http(&plain, 8080, &[("x", "plain")])?;

    let before = proxied(&bed)?;
    for pod in [&outsider, &opted_out] {
        let (ok, body, err) = fetch(&bed, pod, &plain, "x")?;
        ensure!(ok && body == "plain", "{} -> plain: {err}", pod.name);
    }
    ensure!(
        proxied(&bed)? == before,
        "a pod outside the mesh went through a node proxy ({before} -> {})",
        proxied(&bed)?
    );
    // The control: the enrolled pod's request to the same server is proxied.
    let (ok, _, err) = fetch(&bed, &enrolled, &plain, "x")?;
    ensure!(ok, "enrolled -> plain: {err}");
    ensure!(
        proxied(&bed)? == before + 1.0,
        "the enrolled pod's connection was not seen by its node proxy"
    );
    Ok(())
}

fn enrolling_a_running_pod_captures_its_next_connection(mode: CaptureMode) -> Result<()> {
    let mut bed = TestBed::new("enroll", 2)?;
    bed.capture_mode(mode);
    let client = bed
        .pod("client")
        .namespace("shop")
        .on_node(0)
        .not_enrolled()
        .add()?;
    let plain = bed
        .pod("plain")
        .namespace("legacy")
        .on_node(1)
        .not_enrolled()
        .add()?;
    bed.start()?;
    bed.serve_http(&plain, 8080, &[("x", "plain")])?;
    // A long-running process stands for the pod's app: it must survive (un)enrollment.
    let pids_before = start_app(&mut bed, &client)?;

    let count = |bed: &TestBed| -> Result<f64> {
        Ok(metric_sum(
            &bed.metrics(0)?,
            "weft_tcp_connections_opened_total",
            &[("reporter", "source"), ("source_workload", "client")],
        ))
    };
    let (ok, _, err) = fetch(&bed, &client, &plain, "x")?;
    ensure!(ok, "before enrollment: {err}");
    ensure!(count(&bed)? == 0.0, "captured before enrollment");
    // Routing of the pod's own at the priority and in the table the nftables loop uses.
    ip(
        &bed,
        &client,
        "rule add pref 15001 fwmark 0x1/0x1 lookup 200",
    )?;
    ip(
        &bed,
        &client,
        "route add local 10.99.0.0/16 dev lo table 15001",
    )?;

    let log_at = bed.proxy_log(0).len();
    bed.set_enrolled(&client, true)?;
    let enrolled_at = Instant::now();
    bed.wait_log(0, log_at, "pod enrolled", Duration::from_secs(3))?;
    let (ok, _, err) = fetch(&bed, &client, &plain, "x")?;
    ensure!(ok, "after enrollment: {err}");
    ensure!(
        count(&bed)? == 1.0,
        "the first connection after enrollment was not captured"
    );
    let took = enrolled_at.elapsed();

    let loop_rule = "fwmark 0x400/0x400 lookup 15001";
    ensure!(
        (mode == CaptureMode::Nftables) == ip(&bed, &client, "rule show")?.contains(loop_rule),
        "the loop's policy rule, in {mode:?} mode: {}",
        ip(&bed, &client, "rule show")?
    );

    let log_at = bed.proxy_log(0).len();
    bed.set_enrolled(&client, false)?;
    bed.wait_log(0, log_at, "pod released", Duration::from_secs(3))?;
    let (ok, _, err) = fetch(&bed, &client, &plain, "x")?;
    ensure!(ok, "after unenrollment: {err}");
    ensure!(count(&bed)? == 1.0, "still captured after unenrollment");
    // Released: the loop's rule and route are gone, the pod's own are untouched.
    let (rules, routes) = (
        ip(&bed, &client, "rule show")?,
        ip(&bed, &client, "route show table all")?,
    );
    ensure!(
        !rules.contains(loop_rule) && rules.contains("fwmark 0x1/0x1 lookup 200"),
        "rules after release: {rules}"
    );
    ensure!(
        !routes.contains("local default dev lo table 15001")
            && routes.contains("local 10.99.0.0/16 dev lo table 15001"),
        "routes after release: {routes}"
    );

    ensure!(
        still_running(&client, &pids_before)?,
        "the pod's processes changed: {pids_before:?} -> {:?}",
        pids(&client)?
    );
    eprintln!("enrolled and captured within {took:?}");
    Ok(())
}

/// `ip -4 <args>` in `pod`'s namespace; its output.
fn ip(bed: &TestBed, pod: &Pod, args: &str) -> Result<String> {
    let argv: Vec<&str> = ["ip", "-4"].into_iter().chain(args.split(' ')).collect();
    let out = bed.exec(pod, &argv)?;
    ensure!(out.status.success(), "ip {args:?}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn health_probes_from_the_node_reach_an_enrolled_pod(mode: CaptureMode) -> Result<()> {
    let mut bed = TestBed::new("probe", 2)?;
    bed.capture_mode(mode);
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    let other = bed
        .pod("other")
        .namespace("legacy")
        .on_node(1)
        .not_enrolled()
        .add()?;
    let remote = bed
        .pod("remote")
        .namespace("legacy")
        .on_node(0)
        .not_enrolled()
        .add()?;
    bed.start()?;
    bed.serve_http(&web, 8080, &[("healthz", "ok")])?;

    // The kubelet's probe comes from the node itself.
    let node = bed.nodes()[1].netns.clone();
    let url = format!("http://{}:8080/healthz", web.ip);
    let out = bed.exec_in(
        &node,
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "--connect-timeout",
            "1",
            &url,
        ],
    )?;
    ensure!(
        out.status.success() && out.stdout == b"ok",
        "probe from the node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every other plaintext source is refused (STRICT), same node or not.
    for pod in [&other, &remote] {
        let (ok, _, _) = fetch(&bed, pod, &web, "healthz")?;
        ensure!(!ok, "plaintext from {} reached the enrolled pod", pod.name);
    }
    ensure!(
        served(&bed, &web) == 1,
        "the app saw {} requests, expected only the probe",
        served(&bed, &web)
    );
    Ok(())
}

fn proxy_down_fails_closed_and_restart_recovers_within_2s(mode: CaptureMode) -> Result<()> {
    let mut bed = TestBed::new("restart", 2)?;
    bed.capture_mode(mode);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    let plain = bed
        .pod("plain")
        .namespace("legacy")
        .on_node(1)
        .not_enrolled()
        .add()?;
    let outsider = bed
        .pod("outsider")
        .namespace("legacy")
        .on_node(0)
        .not_enrolled()
        .add()?;
    bed.start()?;
    bed.serve_http(&web, 8080, &[("x", "web")])?;
    bed.serve_http(&plain, 8080, &[("x", "plain")])?;
    let pids_before = start_app(&mut bed, &client)?;
    for to in [&web, &plain] {
        let (ok, _, err) = fetch(&bed, &client, to, "x")?;
        ensure!(ok, "before the kill, client -> {}: {err}", to.name);
    }
    let (web_seen, plain_seen) = (served(&bed, &web), served(&bed, &plain));

    // Source node proxy down: the enrolled pod's connections fail, none goes around the mesh.
    bed.kill_proxy(0)?;
    for to in [&web, &plain] {
        let (ok, _, _) = fetch(&bed, &client, to, "x")?;
        ensure!(!ok, "with its node proxy down, client reached {}", to.name);
    }
    ensure!(
        served(&bed, &plain) == plain_seen,
        "the non-mesh server was reached directly while the proxy was down"
    );
    // Destination node proxy down: plaintext to the enrolled pod does not reach its app.
    bed.restart_proxy(0)?;
    bed.kill_proxy(1)?;
    let (ok, _, _) = fetch(&bed, &outsider, &web, "x")?;
    ensure!(
        !ok,
        "with its node proxy down, the enrolled pod took plaintext"
    );
    ensure!(
        served(&bed, &web) == web_seen,
        "the app was reached around the mesh"
    );

    // Back up: new connections succeed within 2 s, with no change to the pods.
    let log_at = bed.proxy_log(1).len();
    let restarted = Instant::now();
    bed.restart_proxy(1)?;
    loop {
        let (ok, body, _) = fetch(&bed, &client, &web, "x")?;
        if ok && body == "web" {
            break;
        }
        ensure!(
            restarted.elapsed() < Duration::from_secs(2),
            "not recovered 2 s after the restart; log:\n{}",
            bed.proxy_log(1)
        );
    }
    let recovered = restarted.elapsed();
    ensure!(
        !bed.proxy_log(1)[log_at..].contains("CNI request"),
        "the restarted proxy needed the CNI plugin to find its pods"
    );
    ensure!(
        still_running(&client, &pids_before)?,
        "the pod's processes changed: {pids_before:?} -> {:?}",
        pids(&client)?
    );
    eprintln!("recovered {recovered:?} after the restart began");
    Ok(())
}

fn cni_add_needs_the_proxy_and_del_always_succeeds(mode: CaptureMode) -> Result<()> {
    let mut bed = TestBed::new("cni", 1)?;
    bed.capture_mode(mode);
    let first = bed.pod("first").namespace("shop").on_node(0).add()?;
    bed.start()?;

    // CHECK on a captured pod passes; VERSION answers.
    let out = bed.weft_cni(&first, "CHECK")?;
    ensure!(
        out.status.success(),
        "CHECK: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = bed.weft_cni(&first, "VERSION")?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("supportedVersions"),
        "VERSION: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    bed.kill_proxy(0)?;
    let refused = bed.pod("second").namespace("shop").on_node(0).add();
    let Err(e) = refused else {
        anyhow::bail!("CNI ADD succeeded with the node proxy down");
    };
    let msg = format!("{e:#}");
    ensure!(
        msg.contains("not reachable") && msg.contains("\"code\":11"),
        "unclear error: {msg}"
    );
    // DEL succeeds with the proxy down, and again (idempotent).
    for _ in 0..2 {
        let out = bed.weft_cni(&first, "DEL")?;
        ensure!(
            out.status.success(),
            "DEL: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    bed.restart_proxy(0)?;
    let out = bed.weft_cni(&first, "DEL")?;
    ensure!(out.status.success(), "DEL after restart failed");
    Ok(())
}

#[test]
fn auto_falls_back_to_nftables_and_says_so() -> Result<()> {
    let mut bed = TestBed::new("fallback", 2)?;
    // A cgroup path that does not exist makes loading the eBPF programs fail.
    bed.capture_mode(CaptureMode::Auto)
        .proxy_args(&["--cgroup", "/nonexistent/weft-test-cgroup"]);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.start()?;
    bed.serve_http(&web, 8080, &[("x", "web")])?;
    for i in 0..2 {
        bed.wait_log(i, 0, "falling back to nftables", Duration::from_secs(1))?;
        let mode = |m: &str| -> Result<f64> {
            Ok(metric_sum(
                &bed.metrics(i)?,
                "weft_capture_mode",
                &[("mode", m)],
            ))
        };
        ensure!(
            mode("nftables")? == 1.0 && mode("ebpf")? == 0.0,
            "capture mode metric wrong"
        );
        let (status, dump) = bed.http_get_node(i, 15000, "/config_dump")?;
        ensure!(
            status == 200 && dump.contains(r#""capture_mode": "nftables""#),
            "config dump: {dump}"
        );
    }
    let (ok, body, err) = fetch(&bed, &client, &web, "x")?;
    ensure!(ok && body == "web", "traffic under the fallback: {err}");
    ensure!(
        metric_sum(
            &bed.metrics(1)?,
            "weft_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls")
            ]
        ) == 1.0,
        "the request did not arrive over mTLS"
    );
    Ok(())
}

fn native_ipv6_from_an_enrolled_pod_is_refused_not_bypassed(mode: CaptureMode) -> Result<()> {
    let mut bed = TestBed::new("ipv6", 1)?;
    bed.capture_mode(mode);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let outsider = bed
        .pod("outsider")
        .namespace("legacy")
        .on_node(0)
        .not_enrolled()
        .add()?;
    let plain = bed
        .pod("plain")
        .namespace("legacy")
        .on_node(0)
        .not_enrolled()
        .add()?;
    bed.start()?;
    // The pods share the node's bridge: give them IPv6 addresses of their own (the CNI config
    // is IPv4-only, as the mesh is).
    for (pod, addr) in [
        (&client, "fd00:77::2/64"),
        (&outsider, "fd00:77::3/64"),
        (&plain, "fd00:77::4/64"),
    ] {
        let out = bed.exec(pod, &["ip", "addr", "add", addr, "dev", "eth0", "nodad"])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let root = bed.dir().join("www-v6");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("x"), "v6")?;
    let root = root.display().to_string();
    bed.spawn_in(
        &plain.netns,
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "::",
            "--directory",
            &root,
        ],
        "http-plain.log",
    )?;
    let url = "http://[fd00:77::4]:8080/x";
    let curl = |pod: &Pod| -> Result<bool> {
        let out = bed.exec(
            pod,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                "--connect-timeout",
                "1",
                url,
            ],
        )?;
        Ok(out.status.success() && out.stdout == b"v6")
    };
    // The control: IPv6 works between pods outside the mesh.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !curl(&outsider)? {
        ensure!(
            Instant::now() < deadline,
            "IPv6 between non-mesh pods does not work"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = served(&bed, &plain);
    ensure!(
        !curl(&client)?,
        "an enrolled pod reached an IPv6 destination around the mesh"
    );
    ensure!(
        served(&bed, &plain) == seen,
        "the server saw the enrolled pod's IPv6 request"
    );
    Ok(())
}

/// Open file descriptors of node `i`'s proxy.
fn proxy_fds(bed: &TestBed, i: usize) -> Result<usize> {
    let pid = bed
        .proxy_pid(i)
        .ok_or_else(|| anyhow::anyhow!("no proxy on node {i}"))?;
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn a_pod_connecting_to_the_proxy_listener_itself_is_refused_without_a_loop(
    mode: CaptureMode,
) -> Result<()> {
    let mut bed = TestBed::new("selfconn", 2)?;
    bed.capture_mode(mode);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let server = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.start()?;
    bed.serve_http(&server, 8080, &[("x", "web")])?;
    let (ok, _, err) = fetch(&bed, &client, &server, "x")?;
    ensure!(ok, "client -> web before: {err}");
    let fds_before = proxy_fds(&bed, 0)?;
    let mark = bed.proxy_log(0).len();
    // The pod dials the proxy's own outbound listener (and its other mesh ports) directly.
    for url in [
        "http://127.0.0.1:15001/".to_owned(),
        format!("http://{}:15006/", client.ip),
        format!("http://{}:15001/", client.ip),
    ] {
        let started = Instant::now();
        let out = bed.exec(&client, &["curl", "-sS", "--max-time", "5", &url])?;
        ensure!(!out.status.success(), "{url} answered");
        ensure!(
            started.elapsed() < Duration::from_secs(4),
            "{url}: the connection hung instead of being refused"
        );
    }
    // Nothing runs away: a loop would open connections (file descriptors) by the thousand.
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = proxy_fds(&bed, 0)?;
    ensure!(
        fds_after <= fds_before + 20,
        "the proxy's file descriptors went from {fds_before} to {fds_after}"
    );
    let log = bed.proxy_log(0);
    let new = &log[mark..];
    ensure!(
        new.lines().count() < 200,
        "{} log lines for three refused connections",
        new.lines().count()
    );
    ensure!(bed.proxy_running(0), "the proxy died");
    let (ok, body, err) = fetch(&bed, &client, &server, "x")?;
    ensure!(ok && body == "web", "client -> web after: {err}");
    Ok(())
}
