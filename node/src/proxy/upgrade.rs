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

/// Puts back the two headers that hop-by-hop stripping removed.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// The protocols a 426 (Upgrade Required) names: the answer is useless
/// without them (RFC 9110 §15.5.22: its `Upgrade` is a MUST), and hop-by-hop
/// stripping would remove them. nginx passes them on too. Empty for any
/// other status.
pub fn required(head: &http::response::Parts) -> Vec<HeaderValue> {
    if head.status != http::StatusCode::UPGRADE_REQUIRED {
        return Vec::new();
    }
    head.headers.get_all(header::UPGRADE).iter().cloned().collect()
}

/// Puts a 426's `Upgrade` back, with the `upgrade` connection option every
/// sender of `Upgrade` must add (RFC 9110 §7.8). It names what the client
/// should speak on a new request; this connection is not switched (the
/// gateway passes on a 101 for WebSocket only), and an HTTP/2 client's
/// response loses both headers in hyper, as RFC 9113 §8.2.2 requires.
pub fn restore_required(headers: &mut HeaderMap, required: Vec<HeaderValue>) {
    if required.is_empty() {
        return;
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    for protocols in required {
        headers.append(header::UPGRADE, protocols);
    }
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
}
