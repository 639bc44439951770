//! Request mirroring (Istio's `mirror`/`mirrors`, Gateway API's `RequestMirror`): a copy of a
//! share of a route's requests goes to another backend, its host suffixed `-shadow` as Envoy
//! does. A copy is tried once with the route's timeout (30 s when it has none); its answer is
//! read and dropped and never delays or changes the client's. A copy needs the request's body
//! kept (up to the replay cap: a larger body is not copied), and at most
//! [`MIRRORS_IN_FLIGHT`] copies are in flight per waypoint; a copy beyond that is dropped.
//! Every copy is counted in `weft_waypoint_mirrored_requests_total{mirror, result}`.

use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;
use weft_core::mesh::{Mirror, Route};

use super::body::Replayable;
use super::reply::upstream_request;
use crate::backend::Outcome;
use crate::body::Body;
use crate::shared::Waypoint;
use crate::snapshot::BoundService;
use crate::upstream::{self, Dialer};
use weft_core::rng::Rng;

/// Mirrored copies in flight per waypoint.
pub(crate) const MIRRORS_IN_FLIGHT: usize = 256;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The route's mirrors this request falls in the share of.
pub(crate) fn chosen<'r>(route: &'r Route, rng: &mut Rng) -> Vec<&'r Mirror> {
    route
        .mirrors
        .iter()
        .filter(|m| rng.chance(m.percent))
        .collect()
}

/// One copy to send.
pub(crate) struct Copy<'a> {
    pub(crate) waypoint: &'a Arc<Waypoint>,
    pub(crate) service: &'a BoundService,
    pub(crate) dialer: &'a Dialer,
    pub(crate) parts: &'a http::request::Parts,
    /// The host the client asked for (`name[:port]`).
    pub(crate) host: &'a str,
    /// The port the request came in on.
    pub(crate) port: u16,
    pub(crate) http2: bool,
    pub(crate) timeout: Option<Duration>,
}

impl Copy<'_> {
    /// Starts sending `body` to `mirror`'s backend and returns at once. Without a kept body
    /// (it was over the cap) or a free place, the copy is dropped.
    pub(crate) fn launch(&self, mirror: &Mirror, body: Option<&Replayable>) {
        let Some((backend, ports)) = self.service.backends.get(mirror.backend) else {
            return;
        };
        let place = self.waypoint.mirrors.clone().try_acquire_owned();
        let (Some(body), Ok(place)) = (body, place) else {
            count_result(self.waypoint, &backend.name, "dropped");
            return;
        };
        let service_port = mirror.port.unwrap_or(self.port);
        let target_port = ports
            .iter()
            .find(|p| p.port == service_port)
            .map_or(service_port, |p| p.target_port);
        let shadow = shadow_host(self.host);
        let request = copy_request(self.parts, body.body(), &shadow, self.http2);
        let dialer = Dialer {
            pool: self.dialer.pool.clone(),
            identity: self.dialer.identity.clone(),
            client: self.dialer.client,
            port: target_port,
        };
        let (waypoint, backend) = (self.waypoint.clone(), backend.clone());
        let (http2, timeout) = (self.http2, self.timeout.unwrap_or(DEFAULT_TIMEOUT));
        let in_flight = InFlight::new(self.waypoint.metrics.mirrors_in_flight.clone(), place);
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let Ok((endpoint, _slot)) = backend.pick(&mut waypoint.rng(), None, None) else {
                count_result(&waypoint, &backend.name, "failed");
                return;
            };
            let send = async {
                let response = upstream::send(&backend, &endpoint, &dialer, request, http2).await?;
                let status = response.status().as_u16();
                // Read to the end so the connection can serve again.
                let _ = response.into_body().collect().await;
                Ok::<_, upstream::UpstreamError>(status)
            };
            let result = match tokio::time::timeout(timeout, send).await {
                Ok(Ok(status)) => {
                    backend.record(&endpoint, Outcome::Status(status));
                    "sent"
                }
                Ok(Err(e)) => {
                    debug!(mirror = %backend.name, error = %e, "mirrored copy failed");
                    if !matches!(e, upstream::UpstreamError::Overflow) {
                        backend.record(&endpoint, Outcome::ConnectFailure);
                    }
                    "failed"
                }
                Err(_) => "failed",
            };
            count_result(&waypoint, &backend.name, result);
        });
    }
}

/// A copy's place, counted in the in-flight gauge until it is given back.
struct InFlight {
    gauge: Gauge,
    _place: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(gauge: Gauge, place: OwnedSemaphorePermit) -> Self {
        gauge.inc();
        Self {
            gauge,
            _place: place,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn count_result(waypoint: &Waypoint, mirror: &str, result: &str) {
    waypoint
        .metrics
        .mirrored
        .get_or_create(&vec![
            ("mirror".to_owned(), mirror.to_owned()),
            ("result".to_owned(), result.to_owned()),
        ])
        .inc();
}

/// The copy: the client's request with its host (authority) suffixed `-shadow`.
fn copy_request(
    parts: &http::request::Parts,
    body: Body,
    shadow: &str,
    http2: bool,
) -> Request<Body> {
    let mut request = upstream_request(parts, body, shadow, http2, None);
    if !http2 && let Ok(host) = HeaderValue::from_str(shadow) {
        request.headers_mut().insert(HOST, host);
    }
    request
}

/// `name-shadow[:port]` for `name[:port]`.
fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => format!("{name}-shadow:{port}"),
        _ => format!("{host}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_host_keeps_the_port() {
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(shadow_host("10.96.0.30:9080"), "10.96.0.30-shadow:9080");
    }

    #[test]
    fn each_mirror_takes_its_share() {
        let route = Route {
            mirrors: vec![
                Mirror {
                    backend: 0,
                    port: None,
                    percent: 100.0,
                },
                Mirror {
                    backend: 1,
                    port: None,
                    percent: 25.0,
                },
                Mirror {
                    backend: 2,
                    port: None,
                    percent: 0.0,
                },
            ],
            ..Route::default()
        };
        let mut rng = Rng::seeded(7);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            for m in chosen(&route, &mut rng) {
                counts[m.backend] += 1;
            }
        }
        assert_eq!(counts[0], 10_000);
        assert_eq!(counts[2], 0);
        // Binomial(10000, 0.25): mean 2500, sd 43; ±300 is about 7 sd.
        assert!((2200..=2800).contains(&counts[1]), "{counts:?}");
    }
}
