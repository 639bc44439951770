//! The certificate service: a node proxy asks for the identities of workloads on its own node.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::{info, warn};
use weft_core::api::v1;
use weft_core::identity::SpiffeId;
use weft_core::mesh::Protocol;

use super::Shared;
use crate::ca::Ca;

/// The `Certificates` service.
pub struct CertService {
    shared: Shared,
    ca: Arc<Ca>,
    ttl: Duration,
}

impl CertService {
    /// Signs with `ca`, certificates valid for `ttl`.
    pub fn new(shared: Shared, ca: Arc<Ca>, ttl: Duration) -> Self {
        Self { shared, ca, ttl }
    }

    /// Notes, for operators, when the certificate just issued to `node` for `identity`
    /// expires.
    fn record(&self, node: &str, identity: &SpiffeId) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let issued = super::Issued {
            issued_unix: now,
            expires_unix: now + self.ttl.as_secs(),
        };
        self.shared.proxies.update(node, |s| {
            // Identities whose pods left the node stop being renewed: forget them a lifetime
            // after they expired, so the record does not grow with every pod ever seen.
            s.certificates
                .retain(|_, c| c.expires_unix + self.ttl.as_secs() > now);
            s.certificates.insert(identity.to_string(), issued);
        });
    }
}

#[tonic::async_trait]
impl v1::certificates_server::Certificates for CertService {
    async fn sign(
        &self,
        request: Request<v1::SignRequest>,
    ) -> Result<Response<v1::SignResponse>, Status> {
        let result = self.issue(request).await;
        use crate::metrics::SIGNING_RESULTS as R;
        let outcome = match &result {
            Ok(_) => R[0],
            Err(status) => match status.code() {
                tonic::Code::PermissionDenied => R[1],
                tonic::Code::Unauthenticated => R[2],
                tonic::Code::InvalidArgument => R[3],
                tonic::Code::Unavailable => R[4],
                _ => R[5],
            },
        };
        crate::metrics::METRICS
            .signings
            .get_or_create(&crate::metrics::labels(&[("result", outcome)]))
            .inc();
        result
    }
}

impl CertService {
    async fn issue(
        &self,
        request: Request<v1::SignRequest>,
    ) -> Result<Response<v1::SignResponse>, Status> {
        let node = self.shared.credentials.node_of(request.metadata()).await?;
        let request = request.into_inner();
        let identity: SpiffeId = request.identity.parse().map_err(|e| {
            Status::invalid_argument(format!("identity {:?}: {e}", request.identity))
        })?;
        if self.shared.published.borrow().resources.is_empty() {
            return Err(Status::unavailable(
                "the controller has not read the cluster yet; retry shortly",
            ));
        }
        let waypoint = self
            .shared
            .published
            .borrow()
            .waypoint_identity(&node)
            .cloned();
        if let Some(allowed) = waypoint {
            if identity != allowed {
                warn!(caller = %node, %identity, "certificate refused: a waypoint gets only its own identity");
                return Err(Status::permission_denied(format!(
                    "{node} is a waypoint and may have only {allowed}, not {identity}"
                )));
            }
            let issued = self
                .ca
                .sign_csr(&request.csr_pem, &identity, self.ttl)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            info!(caller = %node, %identity, ttl = ?self.ttl, "waypoint certificate issued");
            self.record(&node, &identity);
            return Ok(Response::new(v1::SignResponse {
                chain_pem: issued.chain_pem,
                trust_bundle_pem: issued.root_pem,
            }));
        }
        let entitled = {
            let published = self.shared.published.borrow();
            published.mesh.workloads.iter().any(|w| {
                w.node == node
                    && w.protocol == Protocol::Hbone
                    && w.namespace == identity.namespace()
                    && w.service_account == identity.service_account()
                    && published.mesh.trust_domain == identity.trust_domain()
            })
        };
        if !entitled {
            warn!(%node, %identity, "certificate refused: no enrolled pod with this identity on the node");
            return Err(Status::permission_denied(format!(
                "node {node} may not have {identity}: no enrolled pod with that service account runs on {node}"
            )));
        }
        let issued = self
            .ca
            .sign_csr(&request.csr_pem, &identity, self.ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        info!(%node, %identity, ttl = ?self.ttl, "certificate issued");
        self.record(&node, &identity);
        Ok(Response::new(v1::SignResponse {
            chain_pem: issued.chain_pem,
            trust_bundle_pem: issued.root_pem,
        }))
    }
}
