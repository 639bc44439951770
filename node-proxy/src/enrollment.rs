//! Enrolled pods on this node: for each, its network namespace, its capture and the three
//! in-pod listeners. Reconciled against the config and the pods the CNI plugin reported: new
//! pods are enrolled, removed or unenrolled pods are released, all without touching the pod's
//! processes.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};
use weft_core::accept::ConnectionLimits;
use weft_core::drain;
use weft_core::mesh::{Protocol, Workload};
use weft_core::netns::{ListenOpts, Netns};
use weft_core::ports;

use crate::capture::{self, PodNet};
use crate::cni;
use crate::pod::{
    MAX_CONNECTIONS_PER_LISTENER, MAX_HBONE_PER_PEER, MAX_PLAINTEXT_PER_PEER, Pod, accept_loop,
};
use crate::proxy::Proxy;
use crate::{inbound, outbound};

struct Running {
    pod: Arc<Pod>,
    net: PodNet,
    stop: drain::Signal,
}

/// Where a wanted pod lives: from the CNI plugin's report, or the config's `netns`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Placement {
    netns: PathBuf,
    ip: Ipv4Addr,
    probe_src: Option<Ipv4Addr>,
}

/// The set of enrolled pods.
#[derive(Default)]
pub(crate) struct Pods {
    running: HashMap<(String, String), Running>,
    /// Why a wanted pod is not enrolled (reported to the CNI plugin).
    failed: HashMap<(String, String), String>,
}

/// Why a pod could not be enrolled.
#[derive(Debug, thiserror::Error)]
enum EnrollError {
    #[error(transparent)]
    Netns(std::io::Error),
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    #[error(
        "opening listener {port} in the pod: {source} (is something in the pod already using it?)"
    )]
    Listen { port: u16, source: std::io::Error },
}

/// Whether a pod is captured now, as the CNI plugin is told.
pub(crate) enum Enrollment {
    Captured,
    NotInMesh,
    Failed(String),
}

/// Whether two versions of a workload are captured the same way. Policy fields (mTLS mode,
/// authorization) are read from the current state on every connection: a policy change must
/// not release and re-enroll the pod, which would drop its listeners.
fn same_capture(a: &Workload, b: &Workload) -> bool {
    a.name == b.name
        && a.namespace == b.namespace
        && a.service_account == b.service_account
        && a.ip == b.ip
        && a.node == b.node
        && a.protocol == b.protocol
        && a.netns == b.netns
}

impl Pods {
    /// Brings the enrolled set in line with the current state and the pods the CNI plugin
    /// reported. Returns the IPs of every pod that is, or should be, captured.
    pub(crate) async fn reconcile(
        &mut self,
        proxy: &Arc<Proxy>,
        registry: &cni::Registry,
        global: &drain::Watch,
    ) -> BTreeSet<Ipv4Addr> {
        let index = proxy.index.load_full();
        let wanted: HashMap<(String, String), (&Arc<Workload>, Placement)> = index
            .workloads_on(&proxy.config.node)
            .filter(|w| w.protocol == Protocol::Hbone)
            .filter_map(|w| {
                Some((
                    (w.namespace.clone(), w.name.clone()),
                    (w, placement(w, registry)?),
                ))
            })
            .collect();
        let keep: BTreeSet<Ipv4Addr> = wanted.values().map(|(_, p)| p.ip).collect();

        let stale: Vec<_> = self
            .running
            .iter()
            .filter(|(key, running)| {
                wanted.get(*key).is_none_or(|(w, place)| {
                    !same_capture(w, &running.pod.workload)
                        || place.netns != running.pod.netns.path()
                        || place.ip != running.net.ip
                        || place.probe_src != running.net.probe_src
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(running) = self.running.remove(&key) {
                release(proxy, running).await;
            }
        }
        self.failed.retain(|key, _| wanted.contains_key(key));

        for (key, (workload, place)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            if workload.ip != std::net::IpAddr::V4(place.ip) {
                warn!(pod = %workload.name, config_ip = %workload.ip, cni_ip = %place.ip, "the config and the CNI plugin disagree on the pod's IP; capturing the CNI's");
            }
            match enroll(proxy, workload, &place, global).await {
                Ok(running) => {
                    info!(pod = %workload.name, namespace = %workload.namespace, ip = %place.ip, capture = proxy.capture.mode(), "pod enrolled: traffic captured");
                    self.failed.remove(&key);
                    self.running.insert(key, running);
                }
                Err(e) => {
                    if self.failed.get(&key) != Some(&e.to_string()) {
                        error!(pod = %workload.name, namespace = %workload.namespace, error = %e, "cannot enroll pod; will retry");
                    }
                    self.failed.insert(key, e.to_string());
                }
            }
        }
        proxy.gauges.enrolled.set(self.running.len() as i64);
        keep
    }

    /// Whether the pod `namespace/name` is captured.
    pub(crate) fn enrollment(&self, proxy: &Proxy, namespace: &str, name: &str) -> Enrollment {
        let key = (namespace.to_owned(), name.to_owned());
        if self.running.contains_key(&key) {
            return Enrollment::Captured;
        }
        if let Some(why) = self.failed.get(&key) {
            return Enrollment::Failed(why.clone());
        }
        let index = proxy.index.load();
        let wanted = index
            .workloads_on(&proxy.config.node)
            .any(|w| w.namespace == namespace && w.name == name && w.protocol == Protocol::Hbone);
        if wanted {
            Enrollment::Failed("not enrolled yet".into())
        } else {
            Enrollment::NotInMesh
        }
    }

    /// Names of enrolled pods, for the config dump.
    pub(crate) fn enrolled(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .running
            .keys()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect();
        names.sort();
        names
    }

    /// Stops every pod's listeners (shutdown). Capture stays: traffic fails closed.
    pub(crate) fn stop_all(&mut self) {
        for (_, running) in self.running.drain() {
            tokio::spawn(running.stop.drain(Duration::from_secs(1)));
        }
    }
}

fn placement(workload: &Workload, registry: &cni::Registry) -> Option<Placement> {
    if let Some(pod) = registry.get(&workload.namespace, &workload.name) {
        return Some(Placement {
            netns: pod.netns.clone(),
            ip: pod.ip,
            probe_src: pod.gateway,
        });
    }
    let std::net::IpAddr::V4(ip) = workload.ip else {
        return None;
    };
    Some(Placement {
        netns: workload.netns.clone()?,
        ip,
        probe_src: None,
    })
}

async fn release(proxy: &Proxy, running: Running) {
    let pod = &running.pod;
    if let Err(e) = proxy.capture.remove(&running.net).await {
        // The namespace may be gone with the pod: nothing left to capture.
        warn!(pod = %pod.workload.name, error = %e, "removing capture");
    }
    info!(pod = %pod.workload.name, namespace = %pod.workload.namespace, "pod released: traffic no longer captured");
    tokio::spawn(running.stop.drain(Duration::from_secs(5)));
}

async fn enroll(
    proxy: &Arc<Proxy>,
    workload: &Arc<Workload>,
    place: &Placement,
    global: &drain::Watch,
) -> Result<Running, EnrollError> {
    let netns = Arc::new(Netns::open(&place.netns).map_err(EnrollError::Netns)?);
    let listen = |port, transparent, ip: Ipv4Addr| {
        let netns = netns.clone();
        async move {
            netns
                .listen(
                    SocketAddr::from((ip, port)),
                    ListenOpts {
                        transparent,
                        mark: Some(capture::PROXY_MARK),
                    },
                )
                .await
                .map_err(|source| EnrollError::Listen { port, source })
        }
    };
    // Listeners first, capture second: no moment where traffic is captured with nobody listening.
    // Transparent: nftables capture hands outbound connections to it by TPROXY.
    let outbound = listen(ports::OUTBOUND, true, Ipv4Addr::LOCALHOST).await?;
    let plaintext = listen(ports::INBOUND_PLAINTEXT, true, Ipv4Addr::UNSPECIFIED).await?;
    let hbone = listen(ports::HBONE, false, Ipv4Addr::UNSPECIFIED).await?;
    let dns = netns
        .udp_bind(
            SocketAddr::from((Ipv4Addr::LOCALHOST, ports::DNS)),
            Some(capture::PROXY_MARK),
        )
        .await
        .map_err(|source| EnrollError::Listen {
            port: ports::DNS,
            source,
        })?;
    let cookie = weft_ebpf::netns_cookie(&outbound).map_err(EnrollError::Netns)?;
    let net = PodNet {
        netns: netns.clone(),
        cookie,
        ip: place.ip,
        probe_src: place.probe_src,
    };
    proxy.capture.install(&net).await?;

    let pod = Arc::new(Pod {
        workload: workload.clone(),
        netns,
        cookie,
        ip: place.ip,
    });
    let (stop, watch) = drain::channel();
    let both = |listener_watch: drain::Watch| {
        let global = global.clone();
        async move {
            tokio::select! {
                _ = listener_watch.signaled() => {}
                _ = global.signaled() => {}
            }
        }
    };
    let run = |fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
        let stopped = both(watch.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = stopped => {}
            }
        });
    };
    // Outbound connections all come from the pod itself: one limit.
    let total = MAX_CONNECTIONS_PER_LISTENER;
    run(Box::pin(accept_loop(
        outbound,
        "outbound",
        ConnectionLimits::new(total, total),
        proxy.clone(),
        pod.clone(),
        watch.clone(),
        outbound::handle,
    )));
    run(Box::pin(
        // HBONE connections drain with the proxy (GOAWAY to peers), not with the pod.
        accept_loop(
            hbone,
            "inbound",
            ConnectionLimits::new(total, MAX_HBONE_PER_PEER),
            proxy.clone(),
            pod.clone(),
            global.clone(),
            inbound::handle_hbone,
        ),
    ));
    run(Box::pin(crate::dns::serve::serve_udp(
        proxy.clone(),
        pod.clone(),
        dns,
        watch.clone(),
    )));
    run(Box::pin(accept_loop(
        plaintext,
        "inbound_plaintext",
        ConnectionLimits::new(total, MAX_PLAINTEXT_PER_PEER),
        proxy.clone(),
        pod.clone(),
        watch.clone(),
        inbound::handle_plaintext,
    )));
    Ok(Running { pod, net, stop })
}
