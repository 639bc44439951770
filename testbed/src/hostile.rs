//! Raw clients for hostile-peer tests, driven by hand from inside a namespace of the bed: TCP
//! that never speaks, TLS that stops after the handshake, HTTP/2 that opens and resets streams;
//! and what a node proxy holds (resident memory, file descriptors), to show it returns to its
//! baseline after an attack.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weft_core::identity::{SpiffeId, TrustBundle, WorkloadCert};
use weft_core::netns::Netns;

use crate::TestBed;

/// What a process holds.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: usize,
}

impl TestBed {
    /// What node `i`'s proxy holds now.
    pub fn proxy_usage(&self, i: usize) -> Result<Usage> {
        let pid = self
            .proxy_pid(i)
            .ok_or_else(|| anyhow!("no proxy on node {i}"))?;
        usage(pid)
    }

    /// Waits (up to `within`) until node `i`'s proxy holds no more than `baseline` plus
    /// `slack_fds` descriptors and `slack_kib` of memory; the error says what it still held.
    pub fn wait_proxy_back(
        &self,
        i: usize,
        baseline: Usage,
        slack_fds: usize,
        slack_kib: u64,
        within: Duration,
    ) -> Result<Usage> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.proxy_usage(i)?;
            if now.fds <= baseline.fds + slack_fds && now.rss_kib <= baseline.rss_kib + slack_kib {
                return Ok(now);
            }
            ensure!(
                Instant::now() < deadline,
                "node {i}'s proxy did not return to its baseline {baseline:?}: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Resident memory and open descriptors of process `pid`.
pub fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(Usage { rss_kib, fds })
}

/// A TLS session to `addr` (proving `server_id`) with `cert`, dialled from `netns`.
pub async fn tls(
    netns: &Arc<Netns>,
    addr: SocketAddr,
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    server_id: &SpiffeId,
) -> Result<TlsStream<TcpStream>> {
    let config = weft_core::tls::client_config(cert, server_id.clone(), bundle)?;
    let tcp = netns.connect(addr, None).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    Ok(tls)
}

/// An HTTP/2 client session over [`tls`]; the connection is driven by a task of its own.
pub async fn h2(
    netns: &Arc<Netns>,
    addr: SocketAddr,
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    server_id: &SpiffeId,
) -> Result<h2::client::SendRequest<Bytes>> {
    let tls = tls(netns, addr, cert, bundle, server_id).await?;
    let (sender, connection) = h2::client::handshake(tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A CONNECT to `target` as an HBONE client sends it, with `forwarded` naming `client`.
pub fn connect_request(target: SocketAddr, client: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target.to_string())
        .header("forwarded", format!("for=\"{client}\""))
        .body(())
        .expect("a CONNECT request")
}
