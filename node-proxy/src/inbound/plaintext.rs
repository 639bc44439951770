//! Inbound plaintext (port 15006 inside each enrolled pod's namespace): TCP to an enrolled pod
//! that did not arrive over HBONE. It passes the same admission as a tunnel: under STRICT (the
//! default) it is refused with a log line saying who tried; where PeerAuthentication makes the
//! pod (or the port) PERMISSIVE it still has to pass the waypoint guard and the pod's L4
//! authorization, and is counted with `connection_security_policy="none"`.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::warn;

use super::admit::{Arrival, admit};
use crate::capture::PROXY_MARK;
use crate::forward::forward;
use crate::pod::Pod;
use crate::proxy::Proxy;

pub(super) async fn serve_connection(
    proxy: &Proxy,
    pod: &Pod,
    stream: TcpStream,
    client: SocketAddr,
) {
    let started = Instant::now();
    let Ok(destination) = stream.local_addr() else {
        return;
    };
    let index = proxy.index.load();
    let admitted = match admit(
        &index,
        &pod.workload,
        Arrival::Plaintext {
            client,
            destination,
        },
    ) {
        Ok(admitted) => admitted,
        Err(no) => {
            // Dropping the stream closes it.
            warn!(pod = %pod.workload.name, peer = %client, dst = %destination, "{}", no.rejection);
            proxy.metrics.refuse(no.reason, None, Some(&pod.workload));
            return;
        }
    };
    let upstream = match pod.netns.connect(destination, Some(PROXY_MARK)).await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(pod = %pod.workload.name, peer = %client, dst = %destination, error = %e, "plaintext connection to the app failed");
            return;
        }
    };
    let dst_id = index.identity(&pod.workload);
    let conn = admitted.connection(&pod.workload, &dst_id, None, started);
    forward(proxy, conn, stream, upstream).await;
}
