//! WebSocket over HTTP/1.1, as nginx and Kong proxy it: the upgrade request
//! goes through every phase like any request, its `Upgrade` and `Connection`
//! headers are passed on instead of dropped as hop-by-hop, and when the target
//! answers 101 the two connections are joined into a byte tunnel that lasts
//! until either side closes (or, with a route idle timeout, goes quiet).
//! Upgrades are not pooled: the target's connection belongs to the tunnel.
//!
//! Only `websocket` is passed on. Any other protocol, `h2c` above all, would
//! let a client speak past the gateway's per-request phases (h2c smuggling),
//! so such a request loses its upgrade headers and is proxied as a plain one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The `Upgrade` value of an HTTP/1.1 request asking to switch to WebSocket.
pub fn requested(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != http::Version::HTTP_11 {
        return None;
    }
    let asks = super::headers::connection_tokens(&parts.headers).any(|token| token.eq_ignore_ascii_case("upgrade"));
    let upgrade = parts.headers.get(header::UPGRADE).filter(|v| is_websocket(v))?;
    asks.then(|| upgrade.clone())
}

/// Whether an `Upgrade` value names WebSocket (and nothing else).
pub fn is_websocket(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Puts back the two headers that hop-by-hop stripping removed (every
/// sender of `Upgrade` also sends the `upgrade` connection option, RFC
/// 9110 §7.8).
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// What a 426 (Upgrade Required) asks the client to upgrade to, as far as
/// the gateway can carry it: WebSocket only, the one upgrade it passes on
/// (an `h2c` or `TLS/1.2` offer would send the client into a loop of
/// upgrades stripped on the way in). The upstream's `Upgrade` is
/// hop-by-hop, so what the client sees is the gateway's own offer, which
/// a 426 must carry (RFC 9110 §15.5.22). None for any other status, for a
/// client not on HTTP/1.1 (HTTP/2 has no Upgrade, RFC 9113 §8.2.2), and
/// when the upstream offers nothing the gateway can carry.
pub fn required(head: &http::response::Parts, client_version: http::Version) -> Option<HeaderValue> {
    if head.status != http::StatusCode::UPGRADE_REQUIRED || client_version != http::Version::HTTP_11 {
        return None;
    }
    let offers = head.headers.get_all(header::UPGRADE).iter().filter_map(|v| v.to_str().ok());
    offers
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        .then(|| HeaderValue::from_static("websocket"))
}

/// Joins the client's and the target's upgraded connections once hyper has
/// handed both over (the client's after the 101 has been written to it).
/// A tunnel that carries no bytes either way for `idle` (checked once per
/// period, so between one and two periods) is closed. `hold` (the tunnel's
/// place among the proxy's connections) is kept until the tunnel ends. A
/// tunnel cannot be drained, so it is cut when its connection is asked to
/// close (the node is stopping).
pub fn tunnel<H: Send + 'static>(
    client: OnUpgrade,
    upstream: OnUpgrade,
    target: Arc<str>,
    idle: Duration,
    conn: Arc<super::ClientConn>,
    hold: H,
) {
    tokio::spawn(async move {
        let _hold = hold;
        let stopping = async {
            let notified = conn.state.notified();
            if conn.state.close_requested() == super::connections::Close::Open {
                notified.await;
            }
        };
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => return tracing::debug!(%error, %target, "upgrade did not complete"),
        };
        let activity = Arc::new(AtomicU64::new(0));
        let mut client = Counted { io: TokioIo::new(client), reads: activity.clone() };
        let mut upstream = Counted { io: TokioIo::new(upstream), reads: activity.clone() };
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        let quiet = quiet_for(&activity, idle);
        tokio::select! {
            copied = copy => match copied {
                Ok((sent, received)) => tracing::debug!(sent, received, %target, "upgraded connection closed"),
                Err(error) => tracing::debug!(%error, %target, "upgraded connection failed"),
            },
            () = quiet => tracing::debug!(%target, "upgraded connection idle; closed"),
            () = stopping => tracing::debug!(%target, "upgraded connection cut: the node is stopping"),
        }
    });
}

async fn quiet_for(reads: &AtomicU64, idle: Duration) {
    let mut seen = reads.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(idle).await;
        let now = reads.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Counts successful reads, so the idle check costs nothing per byte.
struct Counted<T> {
    io: T,
    reads: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
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
    fn only_an_http11_websocket_upgrade_named_in_connection_is_one() {
        let ws = [("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")];
        assert_eq!(requested(&parts(http::Version::HTTP_11, &ws)).unwrap(), "WebSocket");
        assert!(requested(&parts(http::Version::HTTP_10, &ws)).is_none());
        assert!(requested(&parts(http::Version::HTTP_11, &[("upgrade", "websocket")])).is_none());
        assert!(requested(&parts(http::Version::HTTP_11, &[("connection", "upgrade")])).is_none());
        let h2c =
            [("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQAAP__")];
        assert!(requested(&parts(http::Version::HTTP_11, &h2c)).is_none(), "h2c is never passed on");
        let both = [("connection", "upgrade"), ("upgrade", "websocket, h2c")];
        assert!(requested(&parts(http::Version::HTTP_11, &both)).is_none());
    }

    fn answer(status: u16, upgrade: &[&str]) -> http::response::Parts {
        let mut response = http::Response::builder().status(status);
        for offer in upgrade {
            response = response.header("upgrade", *offer);
        }
        response.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_426_offers_the_client_websocket_only_and_only_on_http11() {
        let http11 = http::Version::HTTP_11;
        assert_eq!(required(&answer(426, &["h2c, WebSocket"]), http11).unwrap(), "websocket");
        assert_eq!(required(&answer(426, &["TLS/1.2", "websocket"]), http11).unwrap(), "websocket", "any line");
        assert!(required(&answer(426, &["TLS/1.2, HTTP/1.1", "h2c"]), http11).is_none(), "nothing it can carry");
        assert!(required(&answer(426, &[]), http11).is_none());
        assert!(required(&answer(426, &["websocket"]), http::Version::HTTP_2).is_none());
        assert!(required(&answer(426, &["websocket"]), http::Version::HTTP_10).is_none());
        assert!(required(&answer(200, &["websocket"]), http11).is_none(), "only a 426 asks for an upgrade");
    }
}
