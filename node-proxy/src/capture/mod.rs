//! How enrolled pods' traffic reaches the proxy's in-pod listeners: eBPF (the default) or the
//! nftables fallback, with one contract. Outbound TCP from the pod arrives at 127.0.0.1:15001
//! (transparent) with its original destination recoverable; inbound plaintext arrives at 15006
//! (transparent, so the accepted socket's local address is the original destination); HBONE
//! reaches 15008 directly; the node's health probes reach the app; the proxy's own sockets
//! ([`PROXY_MARK`]) are never captured; with the proxy down, captured traffic finds no listener
//! and fails.

pub(crate) mod nftables;

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{info, warn};
use weft_core::netns::Netns;

/// `SO_MARK` bit of every socket the proxy opens inside a pod: exempt from capture.
pub(crate) const PROXY_MARK: u32 = weft_ebpf::PROXY_MARK;

/// The capture mechanism an operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Requested {
    /// eBPF, or nftables if the programs cannot be loaded.
    Auto,
    /// eBPF only: fail to start without it.
    Ebpf,
    /// nftables TPROXY rules in each pod.
    Nftables,
}

/// Why a pod's capture could not be changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureError {
    #[error(transparent)]
    Ebpf(#[from] weft_ebpf::Error),
    #[error(transparent)]
    Nft(#[from] nftables::NftError),
    #[error("in the pod's network namespace: {0}")]
    Netns(io::Error),
}

/// A pod's network as capture needs it.
pub(crate) struct PodNet {
    pub(crate) netns: Arc<Netns>,
    /// The kernel's cookie for the pod's network namespace.
    pub(crate) cookie: u64,
    pub(crate) ip: Ipv4Addr,
    /// The node's address on the pod network: kubelet probes from it are not captured.
    pub(crate) probe_src: Option<Ipv4Addr>,
}

/// The active capture mechanism.
pub(crate) enum Capture {
    Ebpf(Arc<weft_ebpf::Capture>),
    /// `fallback`: why eBPF was not used, when it was asked for (`auto`) and failed.
    Nftables {
        stale_pins: PathBuf,
        fallback: Option<String>,
    },
}

impl Capture {
    /// Sets up capture as `requested`; `auto` falls back to nftables, saying why.
    pub(crate) fn start(
        requested: Requested,
        pin_dir: &Path,
        cgroup: Option<&Path>,
    ) -> Result<Self, weft_ebpf::Error> {
        let nftables = |fallback| Self::Nftables {
            stale_pins: pin_dir.to_path_buf(),
            fallback,
        };
        if requested == Requested::Nftables {
            return Ok(nftables(None));
        }
        let loaded = match cgroup {
            Some(cgroup) => weft_ebpf::Capture::load(pin_dir, cgroup),
            None => {
                weft_ebpf::cgroup2_root().and_then(|root| weft_ebpf::Capture::load(pin_dir, &root))
            }
        };
        match (loaded, requested) {
            (Ok(capture), _) => Ok(Self::Ebpf(Arc::new(capture))),
            (Err(e), Requested::Auto) => {
                warn!(error = %e, "eBPF capture unavailable; falling back to nftables");
                Ok(nftables(Some(e.to_string())))
            }
            (Err(e), _) => Err(e),
        }
    }

    /// `ebpf` or `nftables`.
    pub(crate) fn mode(&self) -> &'static str {
        match self {
            Self::Ebpf(_) => "ebpf",
            Self::Nftables { .. } => "nftables",
        }
    }

    /// What the node proxy tells the controller about itself: role, version, capture mode and,
    /// after a fallback, why eBPF was not used.
    pub(crate) fn about(&self) -> std::collections::HashMap<String, String> {
        let mut about: std::collections::HashMap<String, String> = [
            ("role".to_owned(), "node-proxy".to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("capture".to_owned(), self.mode().to_owned()),
        ]
        .into();
        if let Self::Nftables {
            fallback: Some(why),
            ..
        } = self
        {
            about.insert("capture_fallback".to_owned(), why.clone());
        }
        about
    }

    /// Starts capturing a pod whose listeners are already open.
    pub(crate) async fn install(&self, pod: &PodNet) -> Result<(), CaptureError> {
        match self {
            Self::Ebpf(capture) => {
                // Rules left by an earlier nftables run would capture twice.
                let path = pod.netns.path().to_path_buf();
                let _ = tokio::task::spawn_blocking(move || nftables::remove(&path)).await;
                capture.enroll(pod.cookie, pod.ip, pod.probe_src)?;
                let attach = capture.clone();
                let links = pod
                    .netns
                    .run(move || attach.attach_pod_interfaces())
                    .await
                    .map_err(CaptureError::Netns)??;
                let interfaces = capture.pin_pod_links(pod.cookie, pod.ip, links)?;
                info!(ip = %pod.ip, ?interfaces, "eBPF capture attached");
                Ok(())
            }
            Self::Nftables { .. } => {
                let path = pod.netns.path().to_path_buf();
                let probe = pod.probe_src;
                tokio::task::spawn_blocking(move || nftables::install(&path, probe))
                    .await
                    .map_err(|e| CaptureError::Netns(io::Error::other(e)))??;
                Ok(())
            }
        }
    }

    /// Stops capturing a pod.
    pub(crate) async fn remove(&self, pod: &PodNet) -> Result<(), CaptureError> {
        match self {
            Self::Ebpf(capture) => Ok(capture.release(pod.cookie, pod.ip)?),
            Self::Nftables { .. } => {
                let path = pod.netns.path().to_path_buf();
                tokio::task::spawn_blocking(move || nftables::remove(&path))
                    .await
                    .map_err(|e| CaptureError::Netns(io::Error::other(e)))??;
                Ok(())
            }
        }
    }

    /// Removes the node's capture state (pinned programs, links and maps): called on the way
    /// out when no pod is captured, so a node proxy that is uninstalled leaves nothing behind.
    /// Pod rules are per pod and went when each pod was released.
    pub(crate) fn remove_all(&self) -> io::Result<()> {
        match self {
            Self::Ebpf(capture) => weft_ebpf::remove_pins(capture.pin_dir()),
            Self::Nftables { stale_pins, .. } => weft_ebpf::remove_pins(stale_pins),
        }
    }

    /// Drops what earlier runs left for pods that are gone or no longer enrolled; in nftables
    /// mode, removes an earlier eBPF run's programs.
    pub(crate) fn sweep(&self, keep: &BTreeSet<Ipv4Addr>) {
        match self {
            Self::Ebpf(capture) => match capture.sweep(keep) {
                Ok(0) => {}
                Ok(n) => info!(pods = n, "released pods left by an earlier run"),
                Err(e) => warn!(error = %e, "sweeping eBPF state of departed pods"),
            },
            Self::Nftables { stale_pins, .. } => {
                if stale_pins.exists() {
                    match weft_ebpf::remove_pins(stale_pins) {
                        Ok(()) => {
                            info!(dir = %stale_pins.display(), "removed an earlier eBPF capture")
                        }
                        Err(e) => {
                            warn!(dir = %stale_pins.display(), error = %e, "removing an earlier eBPF capture")
                        }
                    }
                }
            }
        }
    }

    /// The destination a connection accepted on `pod`'s outbound listener was meant for.
    pub(crate) fn original_dst(
        &self,
        pod_cookie: u64,
        stream: &TcpStream,
        client: SocketAddr,
    ) -> io::Result<SocketAddr> {
        match self {
            Self::Ebpf(capture) => {
                let SocketAddr::V4(client) = client else {
                    return Err(io::Error::other("IPv6 is not captured"));
                };
                capture
                    .original_dst(pod_cookie, client)
                    .map(SocketAddr::V4)
                    .ok_or_else(|| io::Error::other("no original destination recorded for this connection (not redirected by the capture program)"))
            }
            // TPROXY keeps the destination: the accepted socket's own address.
            Self::Nftables { .. } => stream.local_addr(),
        }
    }
}
