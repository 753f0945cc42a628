//! Protocol upgrades over HTTP/1.1 (WebSocket and anything else sent with
//! `Connection: upgrade`), as nginx and Kong proxy them: the upgrade request
//! goes through every phase like any request, its `Upgrade` and `Connection`
//! headers are passed on instead of dropped as hop-by-hop, and when the target
//! answers 101 the two connections are joined into a byte tunnel that lasts
//! until either side closes. Upgrades are not pooled: the target's connection
//! belongs to the tunnel.

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The protocol an HTTP/1.1 request asks to switch to, if it asks.
pub fn requested(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != http::Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks { parts.headers.get(header::UPGRADE).cloned() } else { None }
}

/// Puts back the two headers that hop-by-hop stripping removed.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Joins the client's and the target's upgraded connections once hyper has
/// handed both over (the client's after the 101 has been written to it).
pub fn tunnel(client: OnUpgrade, upstream: OnUpgrade, target: std::sync::Arc<str>) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => return tracing::debug!(%error, %target, "upgrade did not complete"),
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((sent, received)) => tracing::debug!(sent, received, %target, "upgraded connection closed"),
            Err(error) => tracing::debug!(%error, %target, "upgraded connection failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: http::Version, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut request = http::Request::get("/").version(version);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_an_http11_request_naming_upgrade_in_connection_asks() {
        let ws = [("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")];
        assert_eq!(requested(&parts(http::Version::HTTP_11, &ws)).unwrap(), "websocket");
        assert!(requested(&parts(http::Version::HTTP_10, &ws)).is_none());
        assert!(requested(&parts(http::Version::HTTP_11, &[("upgrade", "websocket")])).is_none());
        assert!(requested(&parts(http::Version::HTTP_11, &[("connection", "upgrade")])).is_none());
    }
}
