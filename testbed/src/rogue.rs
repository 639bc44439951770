//! Clients that do not play by the mesh's rules, for tests that prove they are refused: a
//! certificate of any identity (from any CA, with any validity) and a raw HBONE tunnel opened
//! from inside a pod's network namespace without its node proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use weft_controller::ca::{Ca, DEFAULT_WORKLOAD_TTL};
use weft_core::hbone::{ConnectRequest, H2Stream, HboneError, Pool, PoolConfig, PoolKey};
use weft_core::identity::{SpiffeId, TrustBundle, WorkloadCert, WorkloadCsr};
use weft_core::netns::Netns;

/// A certificate for `id` signed by `ca`, valid now (or within `valid`).
pub fn cert(
    ca: &Ca,
    id: &SpiffeId,
    valid: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> Result<WorkloadCert> {
    let csr = WorkloadCsr::generate(id)?;
    let issued = match valid {
        Some((from, to)) => ca.sign_csr_valid(&csr.csr_pem, id, from, to)?,
        None => ca.sign_csr(&csr.csr_pem, id, DEFAULT_WORKLOAD_TTL)?,
    };
    Ok(WorkloadCert::from_pem(id, &issued.chain_pem, &csr.key_pem)?)
}

/// Opens an HBONE tunnel to `server` (its proxy at `server.ip():15008`, proving `server_id`)
/// with `cert`, claiming to come from `client`, dialling from inside `netns`.
pub async fn tunnel(
    netns: &Arc<Netns>,
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    server: SocketAddr,
    server_id: &SpiffeId,
    client: SocketAddr,
) -> Result<H2Stream, HboneError> {
    tunnel_via(netns, cert, bundle, server.ip(), server_id, server, client).await
}

/// Opens an HBONE tunnel to `destination` through the proxy at `proxy:15008` (proving
/// `proxy_id`: a waypoint, say), with `cert`, claiming to come from `client`.
pub async fn tunnel_via(
    netns: &Arc<Netns>,
    cert: &WorkloadCert,
    bundle: &TrustBundle,
    proxy: std::net::IpAddr,
    proxy_id: &SpiffeId,
    destination: SocketAddr,
    client: SocketAddr,
) -> Result<H2Stream, HboneError> {
    let server = destination;
    let server_id = proxy_id;
    let pool = Pool::new(PoolConfig::default());
    let key = PoolKey {
        source: cert.identity().clone(),
        proxy: SocketAddr::new(proxy, 15008),
        destination: server_id.clone(),
    };
    let netns = netns.clone();
    pool.connect(
        &key,
        || weft_core::tls::client_config(cert, server_id.clone(), bundle),
        |addr| async move { netns.connect(addr, None).await },
        &ConnectRequest {
            destination: server,
            client,
            traceparent: None,
            baggage: None,
        },
    )
    .await
}
