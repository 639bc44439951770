//! In-pod traffic capture with nftables: rules installed inside each enrolled pod's network
//! namespace send its outbound TCP to the proxy's outbound listener and its inbound plaintext to
//! the inbound-plaintext listener; HBONE (15008) reaches the proxy's listener in the pod directly.
//!
//! Sockets the proxy opens inside the pod carry [`PROXY_MARK`] and are never captured. If the
//! proxy is down the rules stay and the listeners are gone, so captured traffic fails closed.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use weft_core::ports;

/// `SO_MARK` of every socket the proxy opens inside a pod: exempt from capture.
pub(crate) const PROXY_MARK: u32 = 0x200;

/// Why capture could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureError {
    #[error("running nft in {netns}: {source} (are nftables and util-linux's nsenter installed?)")]
    Spawn {
        netns: String,
        source: std::io::Error,
    },
    #[error("nft in {netns} failed: {stderr}")]
    Nft { netns: String, stderr: String },
}

fn ruleset() -> String {
    format!(
        r#"table ip weft
delete table ip weft
table ip weft {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    meta l4proto tcp iifname != "lo" ct direction original tcp dport != {hbone} tproxy to :{inbound} accept
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark & {mark:#x} == {mark:#x} return
    oifname "lo" return
    meta l4proto tcp redirect to :{outbound}
  }}
}}
"#,
        hbone = ports::HBONE,
        inbound = ports::INBOUND_PLAINTEXT,
        outbound = ports::OUTBOUND,
        mark = PROXY_MARK,
    )
}

/// Installs (or replaces) the capture rules in the namespace at `netns`.
pub(crate) fn install(netns: &Path) -> Result<(), CaptureError> {
    nft(netns, &ruleset())
}

/// Removes the capture rules; a namespace without them is fine.
pub(crate) fn remove(netns: &Path) -> Result<(), CaptureError> {
    nft(netns, "table ip weft\ndelete table ip weft\n")
}

fn nft(netns: &Path, script: &str) -> Result<(), CaptureError> {
    let name = netns.display().to_string();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={name}"))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn {
            netns: name.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| CaptureError::Spawn {
                netns: name.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::Spawn {
            netns: name.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CaptureError::Nft {
            netns: name,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
