//! L7 authorization: the service's AuthorizationPolicies judge the request with every HTTP
//! attribute known (`weft_core::authz`, shared with the node proxy's L4 check).

use http::{Request, StatusCode};
use weft_core::authz::{self, Subject};

use super::reply::{Reply, ResponseFlag, local};
use crate::shared::Tunnel;
use crate::snapshot::BoundService;

/// `None` if the policies allow the request, else the 403 answer naming the policy.
pub(crate) fn authorize<B>(
    tunnel: &Tunnel,
    service: &BoundService,
    request: &Request<B>,
    port: u16,
    host: &str,
) -> Option<Reply> {
    // An outside client has no identity: rules naming principals or namespaces do not match it.
    let principal = tunnel.peer.as_ref().map(|p| p.principal());
    let subject = Subject {
        principal: principal.as_deref(),
        namespace: tunnel.peer.as_ref().map(|p| p.namespace()),
        ip: tunnel.client.ip(),
        port,
        request: Some(authz::Request {
            method: request.method().as_str(),
            path: request.uri().path(),
            host: host.split(':').next().unwrap_or(host),
            headers: request.headers(),
        }),
    };
    let denied = authz::check(&service.policy.authz, &subject).err()?;
    Some(local(
        StatusCode::FORBIDDEN,
        ResponseFlag::Denied,
        format!(
            "RBAC: access denied: {} may not {} {} on {}.{} ({})",
            tunnel
                .peer
                .as_ref()
                .map_or_else(|| tunnel.client.ip().to_string(), ToString::to_string),
            request.method(),
            request.uri().path(),
            service.policy.name,
            service.policy.namespace,
            denied.policy
        ),
    ))
}
