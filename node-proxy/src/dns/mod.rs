//! The DNS proxy: enrolled pods' DNS queries (UDP to port 53, sent to each pod's
//! 127.0.0.1:15053 by the capture; TCP to port 53, through the outbound listener) are answered
//! from the registry — Kubernetes services by their cluster names, ServiceEntry hosts by their
//! own addresses or the ones the mesh allocated them — and forwarded to the upstream nameserver
//! otherwise (every query, when the mesh turns the proxy off). Each query is counted by how it
//! was answered.

mod message;
pub(crate) mod serve;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;
use tracing::debug;
use weft_core::mesh::MeshIndex;

use message::{Query, Unread};

/// The cluster's DNS domain.
const CLUSTER_DOMAIN: &str = "cluster.local";
/// TTL of the proxy's own answers: short, since the registry changes.
const TTL: u32 = 30;
/// How long the upstream nameserver gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// How a query was answered (the `outcome` label).
#[derive(Clone, Copy)]
enum Outcome {
    /// From the registry.
    Answered,
    /// By the upstream nameserver.
    Forwarded,
    /// SERVFAIL: the upstream did not answer.
    Failed,
    /// FORMERR: not a query the proxy can read.
    Malformed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Forwarded => "forwarded",
            Self::Failed => "failed",
            Self::Malformed => "malformed",
        }
    }
}

/// The DNS proxy's settings and counters.
pub(crate) struct Dns {
    upstream: Option<SocketAddr>,
    queries: Family<Vec<(String, String)>, Counter>,
}

impl Dns {
    /// A proxy forwarding to `upstream` (none: what it cannot answer fails), counted in
    /// `registry`.
    pub(crate) fn register(registry: &mut Registry, upstream: Option<SocketAddr>) -> Self {
        let queries = Family::default();
        registry.register(
            "dns_requests",
            "DNS queries from enrolled pods, by outcome: answered (from the registry), forwarded (upstream), failed (no upstream answer), malformed",
            queries.clone(),
        );
        Self { upstream, queries }
    }

    fn count(&self, outcome: Outcome) {
        self.queries
            .get_or_create(&vec![("outcome".to_owned(), outcome.as_str().to_owned())])
            .inc();
    }

    /// The answer to `raw` from a pod of `namespace`, if it gets one.
    pub(crate) async fn answer(
        &self,
        index: &MeshIndex,
        namespace: &str,
        raw: &[u8],
    ) -> Option<Vec<u8>> {
        let query = match message::parse_query(raw) {
            Ok(query) => query,
            Err(Unread::Short) => return None,
            Err(Unread::Malformed(id)) => {
                self.count(Outcome::Malformed);
                return Some(message::bare_error(id, message::FORMERR));
            }
            Err(Unread::Other) => return self.forward_or_fail(raw, None).await,
        };
        if index.config().outbound.dns_proxy
            && query.qclass == message::CLASS_IN
            && let Some(addresses) = registered(index, namespace, &query.name)
        {
            self.count(Outcome::Answered);
            return Some(message::answer(raw, &query, &addresses, TTL));
        }
        self.forward_or_fail(raw, Some(&query)).await
    }

    async fn forward_or_fail(&self, raw: &[u8], query: Option<&Query>) -> Option<Vec<u8>> {
        match self.forward(raw).await {
            Ok(reply) => {
                self.count(Outcome::Forwarded);
                Some(reply)
            }
            Err(e) => {
                debug!(error = %e, "DNS query not answered upstream");
                self.count(Outcome::Failed);
                let id = message::id_of(raw)?;
                Some(match query {
                    Some(q) => message::error(raw, q, message::SERVFAIL),
                    None => message::bare_error(id, message::SERVFAIL),
                })
            }
        }
    }

    /// Sends `raw` to the upstream nameserver and returns its answer (the one with the
    /// query's id).
    async fn forward(&self, raw: &[u8]) -> Result<Vec<u8>, String> {
        let upstream = self.upstream.ok_or("no upstream nameserver")?;
        let id = message::id_of(raw).ok_or("no id")?;
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
        socket.connect(upstream).await.map_err(|e| e.to_string())?;
        socket.send(raw).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0; 65_535];
        let waited = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let n = socket.recv(&mut buf).await?;
                if message::id_of(&buf[..n]) == Some(id) {
                    return Ok::<_, std::io::Error>(n);
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(n)) => Ok(buf[..n].to_vec()),
            Ok(Err(e)) => Err(format!("{upstream}: {e}")),
            Err(_) => Err(format!("{upstream}: no answer in {UPSTREAM_TIMEOUT:?}")),
        }
    }

    /// The addresses the upstream nameserver gives `host` (A records).
    pub(crate) async fn resolve_upstream(&self, host: &str) -> Result<Vec<Ipv4Addr>, String> {
        // A transaction id no one off the path can guess (with the socket's random port).
        let mut random = [0u8; 2];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut random)
            .map_err(|_| "no randomness for a DNS id".to_owned())?;
        let id = u16::from_be_bytes(random);
        let query = message::a_query(id, host).ok_or_else(|| format!("{host:?} is no name"))?;
        let reply = self.forward(&query).await?;
        message::a_records(&reply, id).ok_or_else(|| format!("{host}: no answer"))
    }
}

/// What the registry answers for `name`, asked from a pod of `namespace`: a service's VIP
/// (`svc.ns.svc.cluster.local`, `svc.ns.svc`, `svc.ns`, or `svc` in the pod's namespace), or
/// a ServiceEntry host's addresses.
fn registered(index: &MeshIndex, namespace: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
    let config = index.config();
    let short = name
        .strip_suffix(CLUSTER_DOMAIN)
        .and_then(|n| n.strip_suffix('.'))
        .unwrap_or(name);
    let short = short.strip_suffix(".svc").unwrap_or(short);
    let (service, service_ns) = match short.split_once('.') {
        Some((s, ns)) if !ns.contains('.') => (s, ns),
        Some(_) => ("", ""),
        None => (short, namespace),
    };
    let vip = config.services.iter().find_map(|s| match s.vip {
        IpAddr::V4(vip) if s.name == service && s.namespace == service_ns => Some(vip),
        _ => None,
    });
    if let Some(vip) = vip {
        return Some(vec![vip]);
    }
    config
        .outbound
        .external
        .iter()
        .map(|e| e.addresses_of(name))
        .find(|a| !a.is_empty())
}

/// The first nameserver of a resolv.conf text.
pub fn nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "nameserver")
            .then(|| words.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_core::mesh::MeshConfig;

    fn index() -> MeshIndex {
        let config = MeshConfig::parse(
            std::path::Path::new("mesh.yaml"),
            r#"
workloads:
  - {name: web-1, namespace: shop, serviceAccount: web, ip: 10.0.2.2, node: n2}
services:
  - {name: web, namespace: shop, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], endpoints: [web-1]}
outbound:
  dnsProxy: true
  external:
    - name: api
      namespace: shop
      hosts: [api.example.test]
      allocated: [{host: api.example.test, ip: 240.240.3.4}]
    - name: pinned
      namespace: shop
      hosts: [pinned.example.test]
      addresses: [203.0.113.9/32]
"#,
        )
        .expect("config");
        MeshIndex::new(config)
    }

    #[test]
    fn services_and_entry_hosts_are_answered_from_the_registry() {
        let index = index();
        let vip = Some(vec![Ipv4Addr::new(10, 96, 0, 10)]);
        for name in ["web.shop.svc.cluster.local", "web.shop.svc", "web.shop"] {
            assert_eq!(registered(&index, "other", name), vip, "{name}");
        }
        assert_eq!(registered(&index, "shop", "web"), vip);
        assert_eq!(registered(&index, "other", "web"), None);
        assert_eq!(
            registered(&index, "shop", "api.example.test"),
            Some(vec![Ipv4Addr::new(240, 240, 3, 4)])
        );
        assert_eq!(
            registered(&index, "shop", "pinned.example.test"),
            Some(vec![Ipv4Addr::new(203, 0, 113, 9)])
        );
        assert_eq!(registered(&index, "shop", "example.org"), None);
    }

    #[test]
    fn the_registry_answers_and_the_rest_goes_upstream_or_fails() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // A real nameserver stand-in on loopback: answers every query with 192.0.2.1.
            let upstream = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let addr = upstream.local_addr().expect("addr");
            tokio::spawn(async move {
                let mut buf = [0; 512];
                while let Ok((n, peer)) = upstream.recv_from(&mut buf).await {
                    let q = message::parse_query(&buf[..n]).expect("query");
                    let reply = message::answer(&buf[..n], &q, &[Ipv4Addr::new(192, 0, 2, 1)], 5);
                    let _ = upstream.send_to(&reply, peer).await;
                }
            });
            let mut registry = Registry::default();
            let dns = Dns::register(&mut registry, Some(addr));
            let index = index();
            let ask = |name: &str, id| message::a_query(id, name).expect("query");
            let reply = dns
                .answer(&index, "shop", &ask("api.example.test", 1))
                .await;
            assert_eq!(
                message::a_records(&reply.expect("answered"), 1),
                Some(vec![Ipv4Addr::new(240, 240, 3, 4)])
            );
            let reply = dns.answer(&index, "shop", &ask("example.org", 2)).await;
            assert_eq!(
                message::a_records(&reply.expect("forwarded"), 2),
                Some(vec![Ipv4Addr::new(192, 0, 2, 1)])
            );
            assert_eq!(
                dns.resolve_upstream("example.org").await,
                Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
            );
            // Garbage gets FORMERR, and a proxy without upstream answers SERVFAIL.
            let reply = dns.answer(&index, "shop", &[0, 9, 0x80, 0, 0, 1]).await;
            assert_eq!(reply.map(|r| r[3] & 0xf), Some(message::FORMERR as u8));
            let lonely = Dns::register(&mut Registry::default(), None);
            let reply = lonely.answer(&index, "shop", &ask("example.org", 3)).await;
            assert_eq!(reply.map(|r| r[3] & 0xf), Some(message::SERVFAIL as u8));
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
            for outcome in ["answered", "forwarded", "malformed"] {
                assert!(
                    text.contains(&format!("dns_requests_total{{outcome=\"{outcome}\"}}")),
                    "{text}"
                );
            }
        });
    }

    #[test]
    fn the_first_nameserver_is_the_upstream() {
        assert_eq!(
            nameserver("# x\nsearch a\nnameserver 10.255.255.53\nnameserver 8.8.8.8\n"),
            Some("10.255.255.53:53".parse().expect("addr"))
        );
        assert_eq!(nameserver("search a\n"), None);
    }
}
