//! Inbound plaintext (port 15006 inside each enrolled pod's namespace): TCP to an enrolled pod
//! that did not arrive over HBONE. Under STRICT (the default) it is refused, with a log line
//! saying who tried; where PeerAuthentication makes the pod (or the port) PERMISSIVE it is
//! passed to the app and counted with `connection_security_policy="none"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};
use weft_core::drain;
use weft_core::metrics::{Reporter, SecurityPolicy};

use crate::capture::PROXY_MARK;
use crate::inputs::{Inputs, Peer, tcp_labels};
use crate::pods::Pod;

pub(crate) struct InboundPlaintext {
    inputs: Arc<Inputs>,
    pod: Arc<Pod>,
    listener: TcpListener,
}

impl InboundPlaintext {
    pub(crate) fn new(inputs: Arc<Inputs>, pod: Arc<Pod>, listener: TcpListener) -> Self {
        Self {
            inputs,
            pod,
            listener,
        }
    }

    pub(crate) async fn run(self, drain: drain::Watch) {
        loop {
            let accepted = tokio::select! {
                _ = drain.signaled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Ok(dst) = stream.local_addr() else {
                        continue;
                    };
                    let state = self.inputs.state.load();
                    let permissive = state
                        .workload_by_ip(self.pod.workload.ip)
                        .is_some_and(|w| w.mtls.accepts_plaintext(dst.port()));
                    if !permissive {
                        warn!(
                            pod = %self.pod.workload.name,
                            %peer,
                            %dst,
                            "plaintext connection refused: the pod requires mTLS (STRICT); the client must be enrolled in the mesh"
                        );
                        // Dropping the stream closes it.
                        continue;
                    }
                    let (inputs, pod) = (self.inputs.clone(), self.pod.clone());
                    tokio::spawn(async move { pass(&inputs, &pod, stream, peer, dst).await });
                }
                Err(e) => {
                    warn!(pod = %self.pod.workload.name, error = %e, "inbound plaintext accept failed")
                }
            }
        }
    }
}

/// PERMISSIVE: the plaintext connection goes to the app.
async fn pass(inputs: &Inputs, pod: &Pod, stream: TcpStream, peer: SocketAddr, dst: SocketAddr) {
    let started = Instant::now();
    let upstream = match pod.netns.connect(dst, Some(PROXY_MARK)).await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(pod = %pod.workload.name, %peer, %dst, error = %e, "plaintext connection to the app failed");
            return;
        }
    };
    let state = inputs.state.load();
    let source = state.workload_by_ip(peer.ip()).cloned();
    let dst_id = state.identity(&pod.workload);
    let labels = tcp_labels(
        Reporter::destination,
        &Peer {
            workload: source.as_deref(),
            identity: None,
        },
        &Peer {
            workload: Some(&pod.workload),
            identity: Some(&dst_id),
        },
        None,
        SecurityPolicy::none,
    );
    let metrics = inputs.metrics.open(&labels);
    let result = weft_core::copy::proxy(stream, upstream, &metrics).await;
    let (sent, received) = result.as_ref().map_or((0, 0), |r| *r);
    info!(
        target: "access",
        src_addr = %peer,
        dst_addr = %dst,
        dst_workload = %pod.workload.name,
        via = "plaintext (PERMISSIVE)",
        bytes_sent = sent,
        bytes_received = received,
        duration_ms = started.elapsed().as_millis() as u64,
        "connection complete"
    );
}
