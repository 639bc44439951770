//! The one place an inbound connection is judged, whichever way it arrived (an HBONE tunnel
//! or plaintext): the pod's mTLS mode must allow the way it came, a pod behind a waypoint
//! takes traffic only from that waypoint, an HBONE peer must be the workload it says it
//! forwards for, and the pod's L4 authorization policies must allow the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use weft_core::authz::{self, Subject};
use weft_core::hbone::Rejection;
use weft_core::identity::SpiffeId;
use weft_core::mesh::{MeshIndex, Workload};
use weft_core::metrics::{RefusalReason, Reporter, SecurityPolicy};

use crate::forward::{Connection, Peer, Via};

/// How a connection reached the pod.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arrival<'a> {
    /// An HBONE tunnel: `peer` is the identity the peer proved in the mTLS handshake,
    /// `destination` the CONNECT's `:authority`, `client` its `forwarded` address.
    Hbone {
        peer: &'a SpiffeId,
        destination: SocketAddr,
        client: Option<SocketAddr>,
    },
    /// Plain TCP captured on its way to the pod: nothing about the client is proven.
    Plaintext {
        client: SocketAddr,
        destination: SocketAddr,
    },
}

/// A connection the pod may take.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The original client.
    pub(crate) client: SocketAddr,
    /// Where in the pod it goes.
    pub(crate) destination: SocketAddr,
    /// The workload at the client's address, if it is one of the mesh's.
    pub(crate) source: Option<Arc<Workload>>,
    /// How the connection was secured, for the metrics.
    pub(crate) security: SecurityPolicy,
}

impl Admitted {
    /// What the metrics and the access log say about this connection to `pod` (whose identity
    /// is `pod_identity`), from a peer that proved `peer` (`None`: plaintext).
    pub(crate) fn connection<'a>(
        &'a self,
        pod: &'a Workload,
        pod_identity: &'a SpiffeId,
        peer: Option<&'a SpiffeId>,
        started: Instant,
    ) -> Connection<'a> {
        Connection {
            reporter: Reporter::destination,
            via: match peer {
                Some(_) => Via::Hbone,
                None => Via::Plaintext,
            },
            security: self.security,
            src_addr: self.client,
            source: Peer {
                workload: self.source.as_deref(),
                identity: peer,
            },
            dst_addr: self.destination,
            destination: Peer {
                workload: Some(pod),
                identity: Some(pod_identity),
            },
            service: None,
            started,
            trace: None,
        }
    }
}

/// A refusal: what the peer is told, and why, for the metrics.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) reason: RefusalReason,
    pub(crate) rejection: Rejection,
}

pub(crate) fn refused(reason: RefusalReason, rejection: Rejection) -> Refused {
    Refused { reason, rejection }
}

/// Judges a connection to `pod` (the workload as enrolled) under the mesh as of `index`.
/// Policy fields (mTLS mode, authorization) are read from `index`, so a policy change takes
/// effect on the next connection.
pub(crate) fn admit(
    index: &MeshIndex,
    pod: &Workload,
    arrival: Arrival<'_>,
) -> Result<Admitted, Refused> {
    let current = index.workload_by_ip(pod.ip);
    let (client, destination, peer) = match arrival {
        Arrival::Hbone {
            peer,
            destination,
            client,
        } => {
            if destination.ip() != pod.ip {
                return Err(refused(
                    RefusalReason::bad_request,
                    Rejection::BadRequest(format!(
                        ":authority {destination} is not this pod ({} has {})",
                        pod.name, pod.ip
                    )),
                ));
            }
            let client = client.ok_or_else(|| {
                refused(
                    RefusalReason::unverified_source,
                    Rejection::Denied("no forwarded header: the source workload is unknown".into()),
                )
            })?;
            (client, destination, Some(peer))
        }
        Arrival::Plaintext {
            client,
            destination,
        } => {
            if !current.is_some_and(|w| w.mtls.accepts_plaintext(destination.port())) {
                return Err(refused(
                    RefusalReason::mtls_required,
                    Rejection::Denied(format!(
                        "plaintext connection refused: {} requires mTLS (STRICT) on port {}; the client must be enrolled in the mesh",
                        pod.name,
                        destination.port()
                    )),
                ));
            }
            (client, destination, None)
        }
    };
    let source = index.workload_by_ip(client.ip()).cloned();

    // A pod behind a waypoint takes traffic only from it: the waypoint vouches for the
    // original client (in `forwarded`), having applied the service's L7 policy.
    if let Some(waypoint) = index.waypoint_guarding(pod.ip) {
        return match peer {
            Some(peer) if *peer == waypoint.identity => Ok(Admitted {
                client,
                destination,
                source,
                security: SecurityPolicy::mutual_tls,
            }),
            Some(peer) => Err(refused(
                RefusalReason::not_through_waypoint,
                Rejection::Denied(format!(
                    "{} is behind waypoint {}: traffic must come through it, not from {peer}",
                    pod.name, waypoint.name
                )),
            )),
            None => Err(refused(
                RefusalReason::not_through_waypoint,
                Rejection::Denied(format!(
                    "{} is behind waypoint {}: plaintext from {client} cannot have come through it",
                    pod.name, waypoint.name
                )),
            )),
        };
    }

    if let Some(peer) = peer {
        let claimed = source.as_deref().ok_or_else(|| {
            refused(
                RefusalReason::unverified_source,
                Rejection::Denied(format!(
                    "source {} is not a workload of this mesh (peer identity {peer})",
                    client.ip()
                )),
            )
        })?;
        // A waypoint forwards for its clients (a split to a service it does not guard, say):
        // it has checked the client's address against the client's identity.
        if !index.has_identity(claimed, peer) && !index.is_waypoint(peer) {
            let expected = index.identity(claimed);
            return Err(refused(
                RefusalReason::unverified_source,
                Rejection::Denied(format!(
                    "peer identity {peer} does not match the source {} ({}/{}, identity {expected})",
                    client.ip(),
                    claimed.namespace,
                    claimed.name
                )),
            ));
        }
    }

    // L4 authorization: the pod's AuthorizationPolicies, as of now.
    if let Some(workload) = current
        && !workload.authz.is_empty()
    {
        let principal = peer.map(SpiffeId::principal);
        let subject = Subject {
            principal: principal.as_deref(),
            namespace: peer.map(SpiffeId::namespace),
            ip: client.ip(),
            port: destination.port(),
            request: None,
        };
        authz::check(&workload.authz, &subject).map_err(|denied| {
            let who = peer.map_or_else(|| format!("plaintext from {client}"), |p| p.to_string());
            refused(
                RefusalReason::authorization_denied,
                Rejection::Denied(format!(
                    "{who} may not connect to {} port {}: {}",
                    pod.name,
                    destination.port(),
                    denied.policy
                )),
            )
        })?;
    }
    Ok(Admitted {
        client,
        destination,
        source,
        security: match peer {
            Some(_) => SecurityPolicy::mutual_tls,
            None => SecurityPolicy::none,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use weft_core::mesh::MeshConfig;

    use super::*;

    /// `client` and `other` (shop) call `web-1`; `guarded-1` backs a service bound to a
    /// waypoint; `open-1` is PERMISSIVE, with a DENY on one address block.
    const MESH: &str = r#"
workloads:
  - {name: client, namespace: shop, serviceAccount: client, ip: 10.0.1.2, node: n1}
  - {name: other, namespace: shop, serviceAccount: other, ip: 10.0.1.3, node: n1}
  - {name: waypoint, namespace: shop, serviceAccount: waypoint, ip: 10.0.1.9, node: n1}
  - name: web-1
    namespace: shop
    serviceAccount: web
    ip: 10.0.2.2
    node: n2
    authz:
      - name: shop/only-client
        action: allow
        rules: [{from: [{principals: [cluster.local/ns/shop/sa/client]}]}]
  - {name: guarded-1, namespace: shop, serviceAccount: guarded, ip: 10.0.2.3, node: n2}
  - name: open-1
    namespace: shop
    serviceAccount: open
    ip: 10.0.2.4
    node: n2
    mtls: {permissive: true, exceptPorts: [9000]}
    authz:
      - name: shop/no-lab
        action: deny
        rules: [{from: [{ipBlocks: [192.168.7.0/24]}]}]
services:
  - name: guarded
    namespace: shop
    vip: 10.96.0.20
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [guarded-1]
    waypoint: {name: shop/waypoint, ip: 10.0.1.9, identity: "spiffe://cluster.local/ns/shop/sa/waypoint"}
"#;

    fn index() -> MeshIndex {
        MeshIndex::new(MeshConfig::parse(Path::new("mesh.yaml"), MESH).expect("valid mesh"))
    }

    fn workload<'a>(index: &'a MeshIndex, ip: &str) -> &'a Workload {
        index
            .workload_by_ip(ip.parse().expect("ip"))
            .expect("workload")
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "shop", sa)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn hbone<'a>(peer: &'a SpiffeId, client: &str, destination: &str) -> Arrival<'a> {
        Arrival::Hbone {
            peer,
            destination: addr(destination),
            client: Some(addr(client)),
        }
    }

    fn plaintext(client: &str, destination: &str) -> Arrival<'static> {
        Arrival::Plaintext {
            client: addr(client),
            destination: addr(destination),
        }
    }

    fn denied(result: Result<Admitted, Refused>) -> String {
        match result {
            Err(Refused {
                rejection: Rejection::Denied(why),
                ..
            }) => why,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    fn reason(result: Result<Admitted, Refused>) -> RefusalReason {
        match result {
            Err(no) => no.reason,
            Ok(admitted) => panic!("expected a refusal, got {admitted:?}"),
        }
    }

    #[test]
    fn hbone_from_the_allowed_workload_is_admitted_with_its_source() {
        let index = index();
        let web = workload(&index, "10.0.2.2");
        let client = id("client");
        let admitted = admit(
            &index,
            web,
            hbone(&client, "10.0.1.2:4000", "10.0.2.2:8080"),
        )
        .expect("admitted");
        assert_eq!(admitted.source.expect("source").name, "client");
        assert_eq!(admitted.destination, addr("10.0.2.2:8080"));
        assert_eq!(admitted.security, SecurityPolicy::mutual_tls);
    }

    #[test]
    fn hbone_is_refused_for_another_pod_a_missing_source_or_a_false_one() {
        let index = index();
        let web = workload(&index, "10.0.2.2");
        let client = id("client");
        let other_pod = admit(
            &index,
            web,
            hbone(&client, "10.0.1.2:4000", "10.0.2.3:8080"),
        );
        assert!(
            matches!(
                other_pod,
                Err(Refused {
                    reason: RefusalReason::bad_request,
                    rejection: Rejection::BadRequest(_)
                })
            ),
            "{other_pod:?}"
        );
        let no_forwarded = Arrival::Hbone {
            peer: &client,
            destination: addr("10.0.2.2:8080"),
            client: None,
        };
        assert!(denied(admit(&index, web, no_forwarded)).contains("no forwarded"));
        // `client`'s certificate claiming to forward for `other`.
        let why = denied(admit(
            &index,
            web,
            hbone(&client, "10.0.1.3:4000", "10.0.2.2:8080"),
        ));
        assert!(why.contains("does not match the source"), "{why}");
        let why = denied(admit(
            &index,
            web,
            hbone(&client, "10.9.9.9:4000", "10.0.2.2:8080"),
        ));
        assert!(why.contains("not a workload of this mesh"), "{why}");
    }

    #[test]
    fn l4_authorization_denies_a_workload_no_allow_policy_names() {
        let index = index();
        let web = workload(&index, "10.0.2.2");
        let other = id("other");
        let why = denied(admit(
            &index,
            web,
            hbone(&other, "10.0.1.3:4000", "10.0.2.2:8080"),
        ));
        assert!(why.contains("no ALLOW policy matched"), "{why}");
        assert_eq!(
            reason(admit(
                &index,
                web,
                hbone(&other, "10.0.1.3:4000", "10.0.2.2:8080")
            )),
            RefusalReason::authorization_denied
        );
    }

    #[test]
    fn a_pod_behind_a_waypoint_takes_only_the_waypoint() {
        let index = index();
        let guarded = workload(&index, "10.0.2.3");
        let waypoint = id("waypoint");
        admit(
            &index,
            guarded,
            hbone(&waypoint, "10.0.1.2:4000", "10.0.2.3:8080"),
        )
        .expect("the waypoint is admitted for the client it forwards");
        let client = id("client");
        let why = denied(admit(
            &index,
            guarded,
            hbone(&client, "10.0.1.2:4000", "10.0.2.3:8080"),
        ));
        assert!(why.contains("behind waypoint shop/waypoint"), "{why}");
    }

    #[test]
    fn a_waypoint_may_forward_to_a_pod_it_does_not_guard() {
        // A TrafficSplit at the waypoint sends to another service's pod (open-1): the peer is
        // the waypoint, forwarding for the client; the pod's own L4 policy still applies.
        let index = index();
        let open = workload(&index, "10.0.2.4");
        let waypoint = id("waypoint");
        let admitted = admit(
            &index,
            open,
            hbone(&waypoint, "10.0.1.2:4000", "10.0.2.4:8080"),
        )
        .expect("the waypoint forwards for the client");
        assert_eq!(admitted.source.expect("source").name, "client");
        // An ordinary workload may not forward for another.
        let other = id("other");
        let why = denied(admit(
            &index,
            open,
            hbone(&other, "10.0.1.2:4000", "10.0.2.4:8080"),
        ));
        assert!(why.contains("does not match the source"), "{why}");
        // web-1 allows only the client's principal: what the waypoint forwards is judged as
        // the waypoint's.
        let web = workload(&index, "10.0.2.2");
        let why = denied(admit(
            &index,
            web,
            hbone(&waypoint, "10.0.1.2:4000", "10.0.2.2:8080"),
        ));
        assert!(why.contains("no ALLOW policy matched"), "{why}");
    }

    #[test]
    fn plaintext_is_refused_under_strict_and_on_strict_ports() {
        let index = index();
        let web = workload(&index, "10.0.2.2");
        let why = denied(admit(
            &index,
            web,
            plaintext("10.0.1.2:4000", "10.0.2.2:8080"),
        ));
        assert!(why.contains("plaintext connection refused"), "{why}");
        assert_eq!(
            reason(admit(
                &index,
                web,
                plaintext("10.0.1.2:4000", "10.0.2.2:8080")
            )),
            RefusalReason::mtls_required
        );
        let open = workload(&index, "10.0.2.4");
        let strict_port = denied(admit(
            &index,
            open,
            plaintext("10.0.1.2:4000", "10.0.2.4:9000"),
        ));
        assert!(strict_port.contains("port 9000"), "{strict_port}");
    }

    #[test]
    fn permissive_plaintext_still_passes_l4_authorization() {
        let index = index();
        let open = workload(&index, "10.0.2.4");
        let admitted = admit(&index, open, plaintext("10.0.1.2:4000", "10.0.2.4:8080"))
            .expect("PERMISSIVE takes plaintext");
        assert_eq!(admitted.security, SecurityPolicy::none);
        assert_eq!(admitted.source.expect("source").name, "client");
        let why = denied(admit(
            &index,
            open,
            plaintext("192.168.7.20:4000", "10.0.2.4:8080"),
        ));
        assert!(why.contains("DENY policy shop/no-lab"), "{why}");
    }

    #[test]
    fn plaintext_cannot_skip_a_waypoint_even_when_permissive() {
        let mesh = MESH.replace(
            "{name: guarded-1, namespace: shop, serviceAccount: guarded, ip: 10.0.2.3, node: n2}",
            "{name: guarded-1, namespace: shop, serviceAccount: guarded, ip: 10.0.2.3, node: n2, mtls: {permissive: true}}",
        );
        let index =
            MeshIndex::new(MeshConfig::parse(Path::new("mesh.yaml"), &mesh).expect("valid"));
        let guarded = workload(&index, "10.0.2.3");
        let why = denied(admit(
            &index,
            guarded,
            plaintext("10.0.1.2:4000", "10.0.2.3:8080"),
        ));
        assert!(why.contains("behind waypoint"), "{why}");
    }

    #[test]
    fn policy_is_read_from_the_index_not_the_enrolled_copy() {
        // The pod was enrolled STRICT; PeerAuthentication later made it PERMISSIVE.
        let index = index();
        let mut enrolled = workload(&index, "10.0.2.4").clone();
        enrolled.mtls = Default::default();
        admit(
            &index,
            &enrolled,
            plaintext("10.0.1.2:4000", "10.0.2.4:8080"),
        )
        .expect("the current PERMISSIVE mode applies");
    }
}
