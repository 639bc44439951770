//! Upgrades (WebSocket, or any `Upgrade:` protocol over HTTP/1.1), after routing and
//! authorization like any request: the endpoint gets the request with its `Upgrade` header, and
//! if it answers `101 Switching Protocols` the client's and the endpoint's connections are
//! joined as one opaque byte stream. Such a request is tried once (it cannot be replayed).

use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::body::Body;

/// The protocol `request` asks to switch to, if it asks (HTTP/1.1 `Connection: upgrade` with
/// an `Upgrade` header).
pub(crate) fn requested<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let asks = request
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| request.headers().get(http::header::UPGRADE).cloned())
        .flatten()
}

/// If the endpoint switched protocols, joins `client` (the downstream connection once hyper
/// has upgraded it) with the endpoint's upgraded connection, in a task of its own.
pub(crate) fn join(client: OnUpgrade, response: &mut Response<Body>) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let endpoint = hyper::upgrade::on(&mut *response);
    tokio::spawn(async move {
        match tokio::try_join!(client, endpoint) {
            Ok((client, endpoint)) => {
                let (mut client, mut endpoint) = (TokioIo::new(client), TokioIo::new(endpoint));
                let copied = tokio::io::copy_bidirectional(&mut client, &mut endpoint).await;
                debug!(?copied, "upgraded connection closed");
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_http_1_1_request_that_names_upgrade_in_connection_asks() {
        let ask = |version, connection: &str| {
            let request = Request::builder()
                .version(version)
                .header("connection", connection)
                .header("upgrade", "websocket")
                .body(())
                .expect("request");
            requested(&request)
        };
        assert_eq!(
            ask(Version::HTTP_11, "keep-alive, Upgrade")
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(ask(Version::HTTP_11, "keep-alive"), None);
        assert_eq!(ask(Version::HTTP_2, "upgrade"), None);
    }
}
