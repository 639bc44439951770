//! Inbound plaintext (port 15006 inside each enrolled pod's namespace): TCP to an enrolled pod
//! that did not arrive over HBONE. Enrolled pods require mTLS (STRICT), so it is refused, with
//! a log line saying who tried.

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::warn;
use weft_core::drain;

use crate::pods::Pod;

pub(crate) struct InboundPlaintext {
    pod: Arc<Pod>,
    listener: TcpListener,
}

impl InboundPlaintext {
    pub(crate) fn new(pod: Arc<Pod>, listener: TcpListener) -> Self {
        Self { pod, listener }
    }

    pub(crate) async fn run(self, drain: drain::Watch) {
        loop {
            let accepted = tokio::select! {
                _ = drain.signaled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let dst = stream.local_addr().ok();
                    warn!(
                        pod = %self.pod.workload.name,
                        %peer,
                        dst = ?dst,
                        "plaintext connection refused: the pod requires mTLS (STRICT); the client must be enrolled in the mesh"
                    );
                    // Dropping the stream closes it.
                }
                Err(e) => {
                    warn!(pod = %self.pod.workload.name, error = %e, "inbound plaintext accept failed")
                }
            }
        }
    }
}
