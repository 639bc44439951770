//! The `weft` command line against a real API server with the test bed as kubelet: `weft
//! check` is all ✓ on a fresh install and names each thing broken one at a time (a node proxy
//! refusing its config, a missing CRD, an expired certificate, the controller down) with a hint
//! and a failing exit; `weft proxy-status` lists every proxy. `weft` runs where an operator's
//! port-forward would put the controller's admin endpoint (127.0.0.1:15014 in node 1's
//! namespace, where the API server listens too). Without the Kubernetes binaries the test says
//! so and does nothing else. Needs root.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_testbed::TestBed;
use weft_testbed::cluster::assets;

/// Runs `weft <args>` in the control plane's namespace with the admin kubeconfig.
fn weft(bed: &TestBed, args: &[&str]) -> Result<Output> {
    let plane = bed.control_plane().context("Kubernetes mode")?;
    Ok(plane
        .command(weft_testbed::bin_dir()?.join("weft"))
        .args(args)
        .env("KUBECONFIG", &plane.kubeconfig)
        .env("NO_COLOR", "1")
        .output()?)
}

/// `weft check -o json`: its checks and exit code.
fn check(bed: &TestBed) -> Result<(Vec<Value>, Option<i32>)> {
    let out = weft(bed, &["check", "-o", "json"])?;
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "weft check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((checks, out.status.code()))
}

/// Polls `weft check` until the check `name` fails with `needle` in its detail; returns it.
fn until_failing(bed: &TestBed, name: &str, needle: &str, within: Duration) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let (checks, code) = check(bed)?;
        let found = checks
            .iter()
            .find(|c| c["name"] == name && c["outcome"] == "fail")
            .filter(|c| c["detail"].as_str().is_some_and(|d| d.contains(needle)));
        if let Some(c) = found {
            ensure!(
                code == Some(1),
                "a failed check must fail the run: {code:?}"
            );
            ensure!(
                c["hint"].as_str().is_some_and(|h| !h.is_empty())
                    && c["docs"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("docs/check.md#")),
                "no hint or docs entry: {c}"
            );
            return Ok(c.clone());
        }
        ensure!(
            Instant::now() < deadline,
            "`{name}` did not fail with {needle:?} within {within:?}: {}",
            Value::from(checks.clone())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn weft_check_is_all_green_after_install_and_names_each_break_with_a_hint() -> Result<()> {
    let Some(assets) = assets() else {
        eprintln!("cluster tier did not run: no kube-apiserver (set WEFT_KUBE_ASSETS)");
        return Ok(());
    };
    let mut bed = TestBed::new("weftcheck", 2)?;
    bed.with_kubernetes(&assets);
    // Short-lived certificates, so one left unrenewed expires within the test.
    bed.controller_args(&["--cert-ttl-secs", "20"]);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.start()?;
    bed.serve_http(&web, 8080, &[("x", "web")])?;
    ensure!(bed.fetch(&client, &web, "x")?.0, "request through the mesh");

    // Fresh install: every check passes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (checks, code) = check(&bed)?;
        if code == Some(0) && checks.iter().all(|c| c["outcome"] == "ok") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not all green after install: {}",
            Value::from(checks)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let table = weft(&bed, &["check"])?;
    eprintln!("$ weft check\n{}", String::from_utf8_lossy(&table.stdout));
    let status = weft(&bed, &["proxy-status"])?;
    let text = String::from_utf8_lossy(&status.stdout);
    eprintln!("$ weft proxy-status\n{text}");
    ensure!(status.status.code() == Some(0), "proxy-status: {text}");
    for node in ["node1", "node2"] {
        ensure!(
            text.lines().any(|l| l.starts_with(node)
                && l.contains("node-proxy")
                && l.contains("ACKED")
                && l.contains("ebpf")),
            "proxy-status has no healthy {node}: {text}"
        );
    }

    // 1. A node proxy refusing its config: a pod whose address is a Service's cluster IP.
    let plane = bed.control_plane().context("Kubernetes mode")?;
    let clash_ip = plane.run(&[
        "create",
        "service",
        "clusterip",
        "clash",
        "--tcp=80:80",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let file = bed.dir().join("clash.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: clash, namespace: shop, labels: {app: clash}}\nspec: {nodeName: node1, containers: [{name: c, image: clash}]}\n",
    )?;
    plane.run(&["apply", "-f", &file.display().to_string()])?;
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: clash, namespace: shop}}\nstatus: {{phase: Running, podIP: \"{clash_ip}\", podIPs: [{{ip: \"{clash_ip}\"}}]}}\n"
        ),
    )?;
    plane.run(&[
        "apply",
        "--server-side",
        "--subresource=status",
        "-f",
        &file.display().to_string(),
    ])?;
    let nack = until_failing(&bed, "node proxy on node1", "NACK", Duration::from_secs(15))?;
    eprintln!("NACK: {nack}");
    let status = weft(&bed, &["proxy-status"])?;
    ensure!(
        status.status.code() == Some(1),
        "proxy-status must fail on a NACK"
    );
    ensure!(String::from_utf8_lossy(&status.stdout).contains("NACKED"));
    plane.run(&[
        "delete",
        "pod",
        "clash",
        "-n",
        "shop",
        "--grace-period=0",
        "--force",
    ])?;

    // 2. A CRD deleted.
    plane.run(&[
        "delete",
        "crd",
        "trafficsplits.split.smi-spec.io",
        "--wait=true",
    ])?;
    let crd = until_failing(
        &bed,
        "CRDs present",
        "trafficsplits.split.smi-spec.io",
        Duration::from_secs(10),
    )?;
    eprintln!("CRD: {crd}");
    plane.install_crds()?;

    // 3. An expired certificate: node 2's proxy is gone, nobody renews its pods' certificates
    //    (20 s).
    bed.kill_proxy(1)?;
    let expired = until_failing(
        &bed,
        "workload certificates",
        "expired",
        Duration::from_secs(40),
    )?;
    ensure!(
        expired["detail"]
            .as_str()
            .is_some_and(|d| d.contains("on node2")),
        "{expired}"
    );
    until_failing(
        &bed,
        "node proxy on node2",
        "not connected",
        Duration::from_secs(5),
    )?;
    eprintln!("expired: {expired}");

    // 4. The controller down.
    bed.kill_controller()?;
    let down = until_failing(
        &bed,
        "controller admin reachable",
        "127.0.0.1:15014",
        Duration::from_secs(5),
    )?;
    eprintln!("controller down: {down}");
    let table = weft(&bed, &["check"])?;
    eprintln!("$ weft check\n{}", String::from_utf8_lossy(&table.stdout));
    Ok(())
}

/// Runs `weft <args>` and returns its stdout; fails unless it exits 0.
fn weft_ok(bed: &TestBed, args: &[&str]) -> Result<String> {
    let out = weft(bed, args)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "weft {args:?} exited {:?}: {text}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ weft {}\n{text}", args.join(" "));
    Ok(text)
}

#[test]
fn weft_namespace_and_waypoint_put_a_service_in_the_mesh_and_behind_a_waypoint() -> Result<()> {
    let Some(assets) = assets() else {
        eprintln!("cluster tier did not run: no kube-apiserver (set WEFT_KUBE_ASSETS)");
        return Ok(());
    };
    let mut bed = TestBed::new("weftwp", 2)?;
    bed.with_kubernetes(&assets);
    let client = bed
        .pod("client")
        .namespace("shop")
        .on_node(0)
        .not_enrolled()
        .add()?;
    let v1 = bed
        .pod("reviews-v1")
        .namespace("shop")
        .label("app", "reviews")
        .on_node(1)
        .not_enrolled()
        .add()?;
    bed.service(
        "reviews",
        "shop",
        std::net::Ipv4Addr::new(10, 96, 0, 77),
        9080,
        8080,
        &[&v1],
    );
    bed.start()?;
    bed.serve_testsrv(&v1, "v1")?;
    // The service's address is resolved by node proxies (the bed has no kube-proxy): outside
    // the mesh the client reaches the pod itself.
    let url = "http://10.96.0.77:9080/reviews/1";
    let direct = format!("http://{}:8080/reviews/1", v1.ip);
    let get = |bed: &TestBed, url: &str| -> Result<String> {
        let out = bed.exec(&client, &["curl", "-sS", "--max-time", "5", url])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let ask = |bed: &TestBed| get(bed, url);
    ensure!(get(&bed, &direct)? == "v1", "direct request");

    // Into the mesh.
    let (log0, log1) = (bed.proxy_log(0).len(), bed.proxy_log(1).len());
    weft_ok(&bed, &["namespace", "enroll", "shop"])?;
    bed.wait_log(0, log0, "pod enrolled", Duration::from_secs(5))?;
    bed.wait_log(1, log1, "pod enrolled", Duration::from_secs(5))?;
    ensure!(ask(&bed)? == "v1", "request in the mesh");
    ensure!(bed.mtls_connections_from(0)? >= 1.0, "not mTLS");

    // Behind a waypoint: the Gateway and the label come from `weft waypoint apply`; the bed,
    // as kubelet, runs the pod of the Deployment the controller creates for it.
    weft_ok(
        &bed,
        &[
            "waypoint", "apply", "--for", "service", "reviews", "-n", "shop",
        ],
    )?;
    let waypoint = bed.run_created_waypoint("waypoint", "shop", 1)?;
    weft_ok(
        &bed,
        &[
            "waypoint",
            "apply",
            "--for",
            "service",
            "reviews",
            "-n",
            "shop",
            "--wait-secs",
            "30",
        ],
    )?;
    let status = weft_ok(&bed, &["waypoint", "status", "waypoint", "-n", "shop"])?;
    ensure!(status.contains("Programmed"), "{status}");
    let list = weft_ok(&bed, &["waypoint", "list", "-n", "shop"])?;
    ensure!(
        list.lines().any(|l| l.starts_with("shop")
            && l.contains("waypoint")
            && l.contains("True")
            && l.contains("reviews")),
        "{list}"
    );
    // What the proxies hold, from their own config dumps.
    let workloads = weft_ok(&bed, &["proxy-config", "workloads", "node1"])?;
    ensure!(
        workloads
            .lines()
            .any(|l| l.starts_with("shop") && l.contains("client") && l.contains("HBONE")),
        "{workloads}"
    );
    let services = weft_ok(&bed, &["proxy-config", "services", "node1"])?;
    ensure!(
        services.lines().any(|l| l.contains("reviews")
            && l.contains("10.96.0.77")
            && l.contains("shop/waypoint")),
        "{services}"
    );
    let certs = weft_ok(&bed, &["proxy-config", "certs", "node1"])?;
    ensure!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/client"),
        "{certs}"
    );
    let wrong = weft(&bed, &["proxy-config", "workloads", "node2"])?;
    ensure!(
        wrong.status.code() == Some(2)
            && String::from_utf8_lossy(&wrong.stderr).contains("is node1, not node2"),
        "asking node1's proxy as node2 must fail: {wrong:?}"
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", waypoint.netns_path().display()))
        .arg(weft_testbed::bin_dir()?.join("weft"))
        .args(["proxy-config", "services", "shop/waypoint"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("$ weft proxy-config services shop/waypoint\n{text}");
    ensure!(
        out.status.success()
            && text
                .lines()
                .any(|l| l.contains("reviews") && l.contains("10.96.0.77")),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let through = |bed: &TestBed| -> Result<f64> {
        Ok(weft_testbed::metric_sum(
            &bed.waypoint_metrics(&waypoint)?,
            "weft_requests_total",
            &[],
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = through(&bed)?;
        if ask(&bed)? == "v1" && through(&bed)? > before {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "requests never went through the waypoint"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Deleted: the Gateway and the label go; requests go straight to the service again.
    weft_ok(&bed, &["waypoint", "delete", "waypoint", "-n", "shop"])?;
    let plane = bed.control_plane().context("Kubernetes mode")?;
    let labels = plane.run(&[
        "get",
        "service",
        "reviews",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.labels}",
    ])?;
    ensure!(!labels.contains("use-waypoint"), "{labels}");
    let left = plane.run(&[
        "get",
        "gateways.gateway.networking.k8s.io",
        "-n",
        "shop",
        "-o",
        "name",
    ])?;
    ensure!(left.trim().is_empty(), "{left}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = through(&bed)?;
        if ask(&bed)? == "v1" && through(&bed)? == before {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "requests still go through the deleted waypoint"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Out of the mesh.
    let log0 = bed.proxy_log(0).len();
    weft_ok(&bed, &["namespace", "unenroll", "shop"])?;
    bed.wait_log(0, log0, "pod released", Duration::from_secs(5))?;
    ensure!(get(&bed, &direct)? == "v1", "direct request after unenroll");
    Ok(())
}
