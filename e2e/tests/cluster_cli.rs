//! `weft check` and `weft proxy-status` against a real API server with the test bed as kubelet:
//! `weft check` is all ✓ on a fresh install and names each thing broken one at a time (a node
//! proxy refusing its config, a missing CRD, an expired certificate, the controller down) with
//! a hint and a failing exit; `weft proxy-status` lists every proxy. `weft` runs where an
//! operator's port-forward would put the controller's admin endpoint (127.0.0.1:15014 in node
//! 1's namespace, where the API server listens too). Without the Kubernetes binaries the test
//! says so and does nothing else. Needs root.

#[path = "support/cli.rs"]
mod cli;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cli::weft;
use serde_json::Value;
use weft_testbed::TestBed;
use weft_testbed::cluster::tier_assets;

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
    let Some(assets) = tier_assets() else {
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
