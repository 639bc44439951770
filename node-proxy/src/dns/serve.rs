//! The DNS proxy's listeners: each enrolled pod's UDP socket (127.0.0.1:15053 in the pod), and
//! captured TCP connections to port 53.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use weft_core::drain;

use crate::pod::Pod;
use crate::proxy::Proxy;

/// Queries of one pod being answered at once; beyond it queries are dropped (clients retry).
const IN_FLIGHT_PER_POD: usize = 128;
/// How long a TCP DNS connection may sit idle.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answers one pod's UDP queries until `drain`.
pub(crate) async fn serve_udp(
    proxy: Arc<Proxy>,
    pod: Arc<Pod>,
    socket: UdpSocket,
    drain: drain::Watch,
) {
    let socket = Arc::new(socket);
    let places = Arc::new(Semaphore::new(IN_FLIGHT_PER_POD));
    let mut buf = vec![0; 65_535];
    loop {
        let (n, peer) = tokio::select! {
            _ = drain.signaled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(pod = %pod.workload.name, error = %e, "DNS listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            debug!(pod = %pod.workload.name, "DNS query dropped: too many in flight");
            continue;
        };
        let raw = buf[..n].to_vec();
        let (proxy, pod, socket) = (proxy.clone(), pod.clone(), socket.clone());
        tokio::spawn(async move {
            let index = proxy.index.load_full();
            if let Some(reply) = proxy
                .dns
                .answer(&index, &pod.workload.namespace, &raw)
                .await
            {
                let _ = socket.send_to(&reply, peer).await;
            }
            drop(place);
        });
    }
}

/// Answers the queries of one captured TCP connection to port 53 (length-prefixed messages).
pub(crate) async fn serve_tcp(proxy: &Proxy, pod: &Pod, mut stream: TcpStream) {
    let mut buf = vec![0; 65_535];
    loop {
        let mut len = [0; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let len = usize::from(u16::from_be_bytes(len));
        let Some(message) = buf.get_mut(..len) else {
            return;
        };
        if tokio::time::timeout(TCP_IDLE, stream.read_exact(message))
            .await
            .map_or(true, |r| r.is_err())
        {
            return;
        }
        let index = proxy.index.load_full();
        let Some(reply) = proxy
            .dns
            .answer(&index, &pod.workload.namespace, message)
            .await
        else {
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&reply_len.to_be_bytes());
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
