//! Enrolled pods on this node: for each, its network namespace, capture rules and the three
//! in-pod listeners. Reconciled against the config: new pods are enrolled, removed or
//! unenrolled pods are released, all without touching the pod's processes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};
use weft_core::config::{Protocol, Workload};
use weft_core::drain;
use weft_core::netns::{ListenOpts, Netns};
use weft_core::ports;

use crate::capture;
use crate::inbound::Inbound;
use crate::inbound_plaintext::InboundPlaintext;
use crate::inputs::Inputs;
use crate::outbound::Outbound;

/// Accepts on one of a pod's listeners until `drain`, running `handle` for each connection in
/// its own task, under a span naming the listener, a connection id, the pod and the peer.
pub(crate) async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    listener_name: &'static str,
    inputs: Arc<Inputs>,
    pod: Arc<Pod>,
    drain: drain::Watch,
    handle: F,
) where
    F: Fn(Arc<Inputs>, Arc<Pod>, tokio::net::TcpStream, SocketAddr, drain::Watch) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tracing::Instrument;
    loop {
        let (stream, peer) = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(pod = %pod.workload.name, listener = listener_name, error = %e, "accept failed");
                    continue;
                }
            },
        };
        let span = tracing::info_span!(
            "conn",
            listener = listener_name,
            id = inputs.conn_id(),
            pod = %pod.workload.name,
            %peer
        );
        let task = handle(inputs.clone(), pod.clone(), stream, peer, drain.clone());
        tokio::spawn(task.instrument(span));
    }
}

/// An enrolled pod.
pub(crate) struct Pod {
    pub(crate) workload: Arc<Workload>,
    pub(crate) netns: Arc<Netns>,
}

struct Running {
    pod: Arc<Pod>,
    stop: drain::Signal,
}

/// The set of enrolled pods.
#[derive(Default)]
pub(crate) struct Pods {
    running: HashMap<(String, String), Running>,
}

/// Why a pod could not be enrolled.
#[derive(Debug, thiserror::Error)]
enum EnrollError {
    #[error("pod has no netns path in the config")]
    NoNetns,
    #[error(transparent)]
    Netns(std::io::Error),
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    #[error(
        "opening listener {port} in the pod: {source} (is something in the pod already using it?)"
    )]
    Listen { port: u16, source: std::io::Error },
}

impl Pods {
    /// Brings the enrolled set in line with the current state.
    pub(crate) async fn reconcile(&mut self, inputs: &Arc<Inputs>, global: &drain::Watch) {
        let state = inputs.state.load_full();
        let wanted: HashMap<(String, String), &Arc<Workload>> = state
            .workloads_on(&inputs.config.node)
            .filter(|w| w.protocol == Protocol::Hbone)
            .map(|w| ((w.namespace.clone(), w.name.clone()), w))
            .collect();

        let stale: Vec<_> = self
            .running
            .iter()
            .filter(|(key, running)| wanted.get(*key).is_none_or(|w| **w != running.pod.workload))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(running) = self.running.remove(&key) {
                self.release(running).await;
            }
        }

        for (key, workload) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            match enroll(inputs, workload, global).await {
                Ok(running) => {
                    info!(pod = %workload.name, namespace = %workload.namespace, ip = %workload.ip, "pod enrolled: traffic captured");
                    self.running.insert(key, running);
                }
                Err(e) => {
                    error!(pod = %workload.name, namespace = %workload.namespace, error = %e, "cannot enroll pod; will retry");
                }
            }
        }
    }

    async fn release(&self, running: Running) {
        let pod = running.pod;
        if let Err(e) = capture::remove(pod.netns.path()) {
            // The namespace may be gone with the pod: nothing left to capture.
            warn!(pod = %pod.workload.name, error = %e, "removing capture rules");
        }
        info!(pod = %pod.workload.name, namespace = %pod.workload.namespace, "pod released: traffic no longer captured");
        tokio::spawn(running.stop.drain(Duration::from_secs(5)));
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

    /// Stops every pod's listeners (shutdown). Capture rules stay: traffic fails closed.
    pub(crate) fn stop_all(&mut self) {
        for (_, running) in self.running.drain() {
            tokio::spawn(running.stop.drain(Duration::from_secs(1)));
        }
    }
}

async fn enroll(
    inputs: &Arc<Inputs>,
    workload: &Arc<Workload>,
    global: &drain::Watch,
) -> Result<Running, EnrollError> {
    let path = workload.netns.as_ref().ok_or(EnrollError::NoNetns)?;
    let netns = Arc::new(Netns::open(path).map_err(EnrollError::Netns)?);
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
    // Listeners first, rules second: no moment where traffic is captured with nobody listening.
    let outbound = listen(ports::OUTBOUND, false, Ipv4Addr::LOCALHOST).await?;
    let plaintext = listen(ports::INBOUND_PLAINTEXT, true, Ipv4Addr::UNSPECIFIED).await?;
    let hbone = listen(ports::HBONE, false, Ipv4Addr::UNSPECIFIED).await?;
    let install_path = path.clone();
    tokio::task::spawn_blocking(move || capture::install(&install_path))
        .await
        .map_err(|e| EnrollError::Netns(std::io::Error::other(e)))??;

    let pod = Arc::new(Pod {
        workload: workload.clone(),
        netns,
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
    run(Box::pin(
        Outbound::new(inputs.clone(), pod.clone(), outbound).run(watch.clone()),
    ));
    run(Box::pin(
        Inbound::new(inputs.clone(), pod.clone(), hbone).run(global.clone()),
    ));
    run(Box::pin(
        InboundPlaintext::new(pod.clone(), plaintext).run(watch.clone()),
    ));
    Ok(Running { pod, stop })
}
