//! Uninstalling as the README says, on a real API server with the test bed as kubelet: take
//! the namespaces out of the mesh, `kubectl delete -k deploy/base`; the node proxies stop as
//! their DaemonSet pods go, and each node is left as it was before Weft: the primary plugin's
//! CNI chain unchanged, no pinned program, map or link, no program of Weft's still loaded, no
//! tc program or nftables rule in any pod's namespace. Without the Kubernetes binaries the test
//! says so and does nothing else. Needs root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_testbed::cluster::tier_assets;
use weft_testbed::{CaptureMode, TestBed};

const BRIDGE: &str = r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

/// Runs `argv` (in `netns` if given) and returns its stdout; fails with its stderr.
fn run(netns: Option<&str>, argv: &[&str]) -> Result<String> {
    let mut command = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]);
            c.args(argv);
            c
        }
        None => {
            let mut c = std::process::Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    let out = command.output()?;
    ensure!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The programs behind the links a node proxy pinned (`link_*` in its pin directory).
fn pinned_programs(pin_dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(pin_dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
        {
            let link: serde_json::Value = serde_json::from_str(&run(
                None,
                &[
                    "bpftool",
                    "-j",
                    "link",
                    "show",
                    "pinned",
                    &path.display().to_string(),
                ],
            )?)?;
            ids.push(link["prog_id"].as_u64().context("link without prog_id")?);
        }
    }
    Ok(ids)
}

#[test]
fn uninstalled_as_the_readme_says_each_node_is_left_as_before_weft() -> Result<()> {
    let Some(assets) = tier_assets() else {
        return Ok(());
    };
    let mut bed = TestBed::new("uninstall", 2)?;
    bed.with_kubernetes(&assets);
    bed.capture_mode(CaptureMode::Ebpf);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    // Each node's CNI config, with weft-cni chained by what the init container runs.
    let conf_dir = |node: &str| bed.dir().join(format!("host-{node}/etc/cni/net.d"));
    let mut confs: Vec<PathBuf> = Vec::new();
    for node in ["node1", "node2"] {
        let dir = conf_dir(node);
        let bin = bed.dir().join(format!("host-{node}/opt/cni/bin"));
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&bin)?;
        std::fs::write(dir.join("10-pods.conflist"), BRIDGE)?;
        let bin_dir = weft_testbed::bin_dir()?;
        run(
            None,
            &[
                &bin_dir.join("weft-cni").display().to_string(),
                "install",
                "--conf-dir",
                &dir.display().to_string(),
                "--bin-dir",
                &bin.display().to_string(),
            ],
        )?;
        confs.push(dir.join("10-pods.conflist"));
    }
    let template = bed.dir().join("host-{node}/etc/cni/net.d");
    bed.proxy_args(&["--cni-conf-dir", &template.display().to_string()]);
    bed.start()?;
    bed.serve_http(&web, 8080, &[("x", "web")])?;
    ensure!(bed.fetch(&client, &web, "x")?.0, "request through the mesh");
    ensure!(bed.mtls_connections_from(0)? == 1.0, "not mTLS");
    for conf in &confs {
        ensure!(
            std::fs::read_to_string(conf)?.contains("weft-cni"),
            "weft-cni not chained in {}",
            conf.display()
        );
    }
    let pins: Vec<PathBuf> = (0..2).map(|i| bed.pin_dir(i)).collect();
    let mut programs = Vec::new();
    for pin in &pins {
        programs.extend(pinned_programs(pin)?);
    }
    ensure!(
        !programs.is_empty(),
        "no pinned capture program before the uninstall"
    );

    // 1. Every namespace out of the mesh; the node proxies release their pods.
    let (log0, log1) = (bed.proxy_log(0).len(), bed.proxy_log(1).len());
    bed.kubectl(&["label", "namespace", "--all", "weft.io/dataplane-mode-"])?;
    bed.wait_log(0, log0, "pod released", Duration::from_secs(5))?;
    bed.wait_log(1, log1, "pod released", Duration::from_secs(5))?;
    // 2. Weft deleted; the bed, as kubelet, stops the node proxies as their pods go.
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
    bed.kubectl(&["delete", "-k", &base.display().to_string(), "--wait=false"])?;
    bed.stop_deleted_weft_pods(Duration::from_secs(60))?;

    for (i, conf) in confs.iter().enumerate() {
        let now: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(conf)?)?;
        let before: serde_json::Value = serde_json::from_str(BRIDGE)?;
        ensure!(
            now == before,
            "node {i}'s CNI config after uninstall: {now}"
        );
    }
    for pin in &pins {
        ensure!(!pin.exists(), "{} is still pinned", pin.display());
    }
    for id in programs {
        let gone = run(None, &["bpftool", "prog", "show", "id", &id.to_string()]).is_err();
        ensure!(gone, "program {id} is still loaded");
    }
    for pod in [&client, &web] {
        let net = run(Some(&pod.netns), &["bpftool", "-j", "net", "show"])?;
        let net: serde_json::Value = serde_json::from_str(&net)?;
        let tc = &net[0]["tc"];
        ensure!(
            tc.as_array().is_none_or(Vec::is_empty),
            "tc programs left in {}: {tc}",
            pod.name
        );
        let tables = run(Some(&pod.netns), &["nft", "list", "tables"])?;
        ensure!(
            !tables.contains("weft"),
            "nftables left in {}: {tables}",
            pod.name
        );
    }
    // And traffic goes direct.
    ensure!(
        bed.fetch(&client, &web, "x")?.0,
        "request after the uninstall"
    );
    Ok(())
}
