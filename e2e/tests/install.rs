//! Installing on a node: `weft-cni install` (what the node proxy's init container runs) puts
//! the plugin in the CNI bin directory and chains it into the node's network config, and a
//! node proxy stopped by SIGTERM takes it out again, leaving the primary plugin's chain as it
//! was. Needs root.

use anyhow::{Result, ensure};
use weft_testbed::TestBed;

const BRIDGE: &str = r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

fn chain(conf: &std::path::Path) -> Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(conf)?)?;
    Ok(value["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["type"].as_str().unwrap_or_default().to_owned())
        .collect())
}

#[test]
fn the_init_container_chains_weft_cni_and_a_stopping_node_proxy_takes_it_out() -> Result<()> {
    let mut bed = TestBed::new("cnichain", 1)?;
    let conf_dir = bed.dir().join("host/etc/cni/net.d");
    let bin_dir = bed.dir().join("host/opt/cni/bin");
    std::fs::create_dir_all(&conf_dir)?;
    std::fs::create_dir_all(&bin_dir)?;
    let conf = conf_dir.join("10-pods.conflist");
    std::fs::write(&conf, BRIDGE)?;

    let install = std::process::Command::new(weft_testbed::bin_dir()?.join("weft-cni"))
        .args(["install", "--conf-dir"])
        .arg(&conf_dir)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()?;
    ensure!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    ensure!(
        bin_dir.join("weft-cni").exists(),
        "the plugin binary was not copied"
    );
    ensure!(
        chain(&conf)? == ["bridge", "portmap", "weft-cni"],
        "{:?}",
        chain(&conf)?
    );

    bed.proxy_args(&["--cni-conf-dir", &conf_dir.display().to_string()]);
    bed.start()?;
    ensure!(
        chain(&conf)?.contains(&"weft-cni".to_owned()),
        "running: still chained"
    );
    let status = bed.stop_proxy(0)?;
    ensure!(status.success(), "the node proxy exited with {status}");
    ensure!(
        chain(&conf)? == ["bridge", "portmap"],
        "{:?}",
        chain(&conf)?
    );
    let original: serde_json::Value = serde_json::from_str(BRIDGE)?;
    let now: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&conf)?)?;
    ensure!(
        now == original,
        "the primary plugin's config changed: {now}"
    );
    Ok(())
}
