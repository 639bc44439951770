//! Network namespaces and CNI: nodes joined to a fabric, pods wired by the real `bridge` and
//! `host-local` plugins called from the node's namespace (as a kubelet would), then `weft-cni`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, anyhow, ensure};

/// Where Debian's containernetworking-plugins put the CNI plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub(crate) fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ],
    )
}

pub(crate) fn parse_cni_ip(result: &str) -> Result<Ipv4Addr> {
    let v: serde_json::Value = serde_json::from_str(result)?;
    let addr = v["ips"][0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no ips[0].address"))?;
    let ip = addr.split('/').next().unwrap_or_default();
    Ok(ip.parse()?)
}

/// Runs `f` on a thread inside the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}
