//! The `weft` commands that change a cluster, against a real API server: `install` (dry run,
//! an overlay, again), and with the test bed as kubelet `namespace enroll|unenroll`, `waypoint
//! apply|list|status|delete`, `proxy-config` and `uninstall`. Without the Kubernetes binaries
//! each test says so and does nothing else. Needs root.

#[path = "support/cli.rs"]
mod cli;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cli::{weft, weft_ok, weft_on};
use weft_testbed::TestBed;
use weft_testbed::cluster::tier_assets;

#[test]
fn weft_namespace_and_waypoint_put_a_service_in_the_mesh_and_behind_a_waypoint() -> Result<()> {
    let Some(assets) = tier_assets() else {
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

    // Uninstalled: `weft uninstall` deletes Weft once the proxies released everything; the
    // bed, as kubelet, stops the node proxies as their pods go; nothing stays pinned.
    let plane = bed.control_plane().context("Kubernetes mode")?;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let uninstall = plane
        .command(weft_testbed::bin_dir()?.join("weft"))
        .args([
            "uninstall",
            "--wait-secs",
            "60",
            "--deploy-dir",
            &deploy.display().to_string(),
        ])
        .env("KUBECONFIG", &plane.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut uninstall = uninstall;
    if let Err(e) = bed.stop_deleted_weft_pods(Duration::from_secs(90)) {
        let _ = uninstall.kill();
        let out = uninstall.wait_with_output()?;
        anyhow::bail!(
            "{e}; weft uninstall said:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = uninstall.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "$ weft uninstall\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "weft uninstall failed");
    for node in 0..2 {
        ensure!(!bed.pin_dir(node).exists(), "node {node} still has pins");
    }
    ensure!(
        get(&bed, &direct)? == "v1",
        "direct request after uninstall"
    );
    Ok(())
}

#[test]
fn weft_install_dry_runs_then_applies_an_overlay_and_again_changes_nothing() -> Result<()> {
    let Some(assets) = tier_assets() else {
        return Ok(());
    };
    let plane = weft_testbed::cluster::ControlPlane::start(&assets, "weftinstall")?;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let deploy = deploy.display().to_string();
    let get = |args: &[&str]| plane.run(args).unwrap_or_default();
    // `weft install --deploy-dir <workspace>/deploy <args>`.
    let install = |args: &[&str]| {
        let mut all = vec!["install", "--deploy-dir", deploy.as_str()];
        all.extend_from_slice(args);
        weft_on(&plane, &all)
    };

    let dry = install(&["--overlay", "production", "--dry-run"])?;
    let text = String::from_utf8_lossy(&dry.stdout);
    ensure!(
        dry.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    ensure!(text.contains("nothing was changed"), "{text}");
    ensure!(
        get(&[
            "get",
            "namespace",
            "weft-system",
            "-o",
            "name",
            "--ignore-not-found"
        ])
        .is_empty(),
        "a dry run created the namespace"
    );

    let out = install(&["--overlay", "small", "--wait-secs", "0"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("$ weft install --overlay small --wait-secs 0\n{text}");
    ensure!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text.matches("created  customresourcedefinition/").count() == 12,
        "{text}"
    );
    let replicas = get(&[
        "get",
        "deployment",
        "weft-controller",
        "-n",
        "weft-system",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    ensure!(
        replicas == "1",
        "the small overlay's controller replicas: {replicas:?}"
    );
    ensure!(
        get(&[
            "get",
            "daemonset",
            "weft-node-proxy",
            "-n",
            "weft-system",
            "-o",
            "name"
        ])
        .trim()
            == "daemonset.apps/weft-node-proxy"
    );
    let managers = get(&[
        "get",
        "daemonset",
        "weft-node-proxy",
        "-n",
        "weft-system",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    ensure!(
        managers.split(' ').any(|m| m == "weft"),
        "field managers: {managers}"
    );

    // Again: the CRDs are kept, nothing else changes.
    let before = get(&[
        "get",
        "daemonset",
        "weft-node-proxy",
        "-n",
        "weft-system",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    let again = install(&["--overlay", "small", "--wait-secs", "0"])?;
    let text = String::from_utf8_lossy(&again.stdout);
    ensure!(
        again.status.success() && text.matches("kept ").count() == 12,
        "{text}"
    );
    let after = get(&[
        "get",
        "daemonset",
        "weft-node-proxy",
        "-n",
        "weft-system",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    ensure!(
        before == after,
        "re-installing changed the DaemonSet: {before} -> {after}"
    );

    let bad = install(&["--overlay", "nonsense"])?;
    ensure!(bad.status.code() == Some(2), "an unknown overlay: {bad:?}");
    ensure!(String::from_utf8_lossy(&bad.stderr).contains("no kustomization"));
    Ok(())
}

#[test]
fn weft_check_pre_judges_this_machine_the_cni_config_and_permissions() -> Result<()> {
    let Some(assets) = tier_assets() else {
        return Ok(());
    };
    let plane = weft_testbed::cluster::ControlPlane::start(&assets, "weftpre")?;
    let conf = plane.dir().join("net.d");
    std::fs::create_dir_all(&conf)?;
    let pre = |bed_conf: &std::path::Path| -> Result<(serde_json::Value, Option<i32>)> {
        let out = weft_on(
            &plane,
            &[
                "check",
                "--pre",
                "--cni-conf-dir",
                &bed_conf.display().to_string(),
                "-o",
                "json",
            ],
        )?;
        Ok((serde_json::from_slice(&out.stdout)?, out.status.code()))
    };
    let outcome = |checks: &serde_json::Value, name: &str| -> String {
        checks
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .map(|c| c["outcome"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    // No network plugin config yet: install would have nothing to chain into.
    let (checks, code) = pre(&conf)?;
    ensure!(
        code == Some(1) && outcome(&checks, "CNI configuration") == "fail",
        "{checks}"
    );
    // This machine has what eBPF capture needs, and the admin may install.
    for name in [
        "kernel",
        "bpffs",
        "cgroup v2",
        "kernel BTF",
        "permission to install",
    ] {
        ensure!(outcome(&checks, name) == "ok", "{name}: {checks}");
    }
    std::fs::write(conf.join("10-pods.conflist"), "{}")?;
    let (checks, code) = pre(&conf)?;
    ensure!(code == Some(0), "all met, yet: {checks}");
    // A user without the rights to install is told so.
    plane.run(&["create", "serviceaccount", "nobody", "-n", "default"])?;
    let token = plane.token("default", "nobody", None)?;
    let kubeconfig = plane.token_kubeconfig("nobody", &token)?;
    let out = plane
        .command(weft_testbed::bin_dir()?.join("weft"))
        .args([
            "check",
            "--pre",
            "--cni-conf-dir",
            &conf.display().to_string(),
            "-o",
            "json",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()?;
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        out.status.code() == Some(1) && outcome(&checks, "permission to install") == "fail",
        "{checks}"
    );
    Ok(())
}
