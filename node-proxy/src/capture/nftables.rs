//! The nftables fallback: rules installed inside each enrolled pod's network namespace redirect
//! its outbound TCP to the proxy's outbound listener (the original destination stays in
//! conntrack, read back with `SO_ORIGINAL_DST`) and its DNS queries (UDP to port 53) to the DNS
//! proxy's 127.0.0.1:15053 (conntrack answers as the nameserver), and TPROXY its inbound plaintext to the
//! inbound-plaintext listener; HBONE (15008) and the node's health probes are left alone.
//!
//! Sockets the proxy opens inside the pod carry `PROXY_MARK` and are never captured. If the
//! proxy is down the rules stay and the listeners are gone, so captured traffic fails closed:
//! TPROXY finding no listener lets the packet go on, so the rule after it drops it.
//!
//! The mesh carries IPv4 only: native IPv6 TCP to or from an enrolled pod is refused rather
//! than let around the mesh (a dual-stack socket reaching IPv4 through a v4-mapped address sends
//! IPv4 packets and is captured by the `ip` table).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use weft_core::ports;

use weft_ebpf::PROXY_MARK;

/// Why the rules could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NftError {
    #[error("running nft in {netns}: {source} (are nftables and util-linux's nsenter installed?)")]
    Spawn {
        netns: String,
        source: std::io::Error,
    },
    #[error("nft in {netns} failed: {stderr}")]
    Nft { netns: String, stderr: String },
}

fn ruleset(probe_src: Option<Ipv4Addr>) -> String {
    let probe = probe_src.map_or_else(String::new, |ip| format!("ip saddr != {ip} "));
    format!(
        r#"table ip weft
delete table ip weft
table ip weft {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    meta l4proto tcp iifname != "lo" ct direction original {probe}tcp dport != {hbone} tproxy to :{inbound} accept
    meta l4proto tcp iifname != "lo" ct direction original {probe}tcp dport != {hbone} drop
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark & {mark:#x} == {mark:#x} return
    oifname "lo" return
    meta l4proto udp udp dport 53 redirect to :{dns}
    meta l4proto tcp redirect to :{outbound}
  }}
}}
table ip6 weft
delete table ip6 weft
table ip6 weft {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "lo" accept
    meta l4proto tcp ct direction original drop
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    meta mark & {mark:#x} == {mark:#x} accept
    oifname "lo" accept
    meta l4proto tcp ct direction original reject with tcp reset
  }}
}}
"#,
        hbone = ports::HBONE,
        inbound = ports::INBOUND_PLAINTEXT,
        outbound = ports::OUTBOUND,
        dns = ports::DNS,
        mark = PROXY_MARK,
    )
}

/// Installs (or replaces) the capture rules in the namespace at `netns`.
pub(crate) fn install(netns: &Path, probe_src: Option<Ipv4Addr>) -> Result<(), NftError> {
    nft(netns, &ruleset(probe_src))
}

/// Removes the capture rules; a namespace without them is fine.
pub(crate) fn remove(netns: &Path) -> Result<(), NftError> {
    nft(
        netns,
        "table ip weft\ndelete table ip weft\ntable ip6 weft\ndelete table ip6 weft\n",
    )
}

fn nft(netns: &Path, script: &str) -> Result<(), NftError> {
    let name = netns.display().to_string();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={name}"))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn {
            netns: name.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| NftError::Spawn {
                netns: name.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NftError::Spawn {
        netns: name.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Nft {
            netns: name,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
