//! Keep-alive HTTP/1.1 connections to upstream targets, plain or TLS, driven
//! by the request that uses them.
//!
//! hyper-util's pooled client spawns a task per connection and talks to it
//! through a channel, so every proxied request crosses tasks twice and, on a
//! one-core runtime, parks and wakes the scheduler around each crossing. Here
//! the request's own task polls the connection — while sending, and then from
//! the response body wrapper while the body streams — and puts it back in
//! the pool when the response is complete, as Pingora does. Health probes,
//! JWKS and AI providers the pools cannot take keep the hyper-util client.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

use tokio::net::{TcpStream, lookup_host};

use super::client::{BoxError, UpstreamBody};
use super::self_wake::SelfWake;
/// Plain TCP, or TLS over it (rustls, the server's name verified).
type UpstreamStream = tokio_util::either::Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;
type Connection = http1::Connection<TokioIo<UpstreamStream>, UpstreamBody>;

/// Idle time before the kernel probes a connection (hyper-util's connector
/// used the same), then the interval and number of unanswered probes after
/// which it gives up: two minutes in all, not Linux's default eleven.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const TCP_KEEPALIVE_PROBES: u32 = 4;

/// A connection: the handle to send on, the connection future that must be
/// polled for anything to happen on the socket, and the waker it is polled with.
struct Upstream {
    sender: SendRequest<UpstreamBody>,
    conn: Pin<Box<Connection>>,
    wake: SelfWake,
}

struct Idle {
    upstream: Upstream,
    since: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {authority}: {source}")]
    Connect { authority: String, source: std::io::Error },
    #[error("connect to {authority} timed out after {ms} ms")]
    ConnectTimeout { authority: String, ms: u64 },
    #[error("TLS with {authority} failed (certificate, host name or protocol): {source}")]
    Tls { authority: String, source: std::io::Error },
    #[error("connecting to {authority} and the TLS handshake took longer than {ms} ms together")]
    TlsTimeout { authority: String, ms: u64 },
    #[error("{authority} is not a host name or address TLS can verify")]
    TlsName { authority: String },
    #[error("HTTP/1.1 handshake with {authority} failed: {source}")]
    Handshake { authority: String, source: hyper::Error },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

pub struct Http1Pool {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_target: usize,
    /// By target authority (set by operators, never by a client), so FxHash:
    /// SipHash was a few hundred instructions per checkout and release.
    idle: Mutex<rustc_hash::FxHashMap<String, Vec<Idle>>>,
    /// Set for a pool of TLS connections: each is verified for the host it
    /// was opened to, or for `server_name` when that is set.
    tls: Option<tokio_rustls::TlsConnector>,
    /// The name every TLS connection is verified for (and sends in SNI),
    /// whatever the target's address: a service's `tls.server_name`.
    server_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl Http1Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Http1Pool {
        Http1Pool {
            connect_timeout,
            idle_timeout,
            max_idle_per_target: 1024,
            idle: Mutex::new(rustc_hash::FxHashMap::default()),
            tls: None,
            server_name: None,
        }
    }

    /// A pool of TLS connections made with `config`; they offer only
    /// HTTP/1.1 in ALPN, as this pool speaks nothing else.
    pub fn with_tls(connect_timeout: Duration, idle_timeout: Duration, mut config: rustls::ClientConfig) -> Http1Pool {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = Some(tokio_rustls::TlsConnector::from(Arc::new(config)));
        Http1Pool { tls, ..Http1Pool::new(connect_timeout, idle_timeout) }
    }

    /// Verifies every TLS connection for `name` instead of the target's host.
    pub fn with_server_name(mut self, name: rustls::pki_types::ServerName<'static>) -> Http1Pool {
        self.server_name = Some(name);
        self
    }

    fn take_idle(&self, authority: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(authority)?;
        while let Some(conn) = list.pop() {
            if conn.since.elapsed() < self.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, authority: &str, upstream: Upstream) {
        let now = Instant::now();
        let idle_conn = Idle { upstream, since: now };
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Allocate the key only for a target's first connection, not per release.
        match idle.get_mut(authority) {
            Some(list) if list.len() < self.max_idle_per_target => {
                // Oldest first, and `take_idle` takes the newest: after a
                // burst, connections past the idle timeout would otherwise
                // stay open (often closed by the upstream) for as long as
                // newer ones keep being reused. One comparison per release.
                if list.first().is_some_and(|oldest| now.duration_since(oldest.since) >= self.idle_timeout) {
                    let expired = list.partition_point(|c| now.duration_since(c.since) >= self.idle_timeout);
                    list.drain(..expired);
                }
                list.push(idle_conn)
            }
            Some(_) => {}
            None => {
                idle.insert(authority.to_string(), vec![idle_conn]);
            }
        }
    }

    /// Closes every idle connection past the idle timeout, for all targets.
    /// Releases and checkouts expire a target's connections only while it
    /// has traffic; this covers targets that stopped getting any (removed
    /// from the configuration, or a pool no service uses any more).
    pub fn close_expired(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|_, list| {
                // Oldest first (see `put_idle`).
                let past = list.partition_point(|c| now.duration_since(c.since) >= self.idle_timeout);
                expired.extend(list.drain(..past));
                !list.is_empty()
            });
        }
        // Closed outside the lock.
        drop(expired);
    }

    async fn connect(&self, authority: &str) -> Result<Upstream, PoolError> {
        let (sender, conn) = self.handshake(authority).await?;
        Ok(Upstream { sender, conn: Box::pin(conn), wake: SelfWake::default() })
    }

    async fn handshake(&self, authority: &str) -> Result<(SendRequest<UpstreamBody>, Connection), PoolError> {
        // One deadline for the TCP connect and the TLS handshake together:
        // `connect_timeout` bounds the whole time to a usable connection, and
        // a slow connect leaves the handshake only what remains. (hyper-util's
        // connector bounded only the TCP connect; its TLS handshake ran until
        // the request timeout.)
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let stream = match &self.tls {
            None => UpstreamStream::Left(self.connect_tcp(authority, deadline).await?),
            Some(connector) => {
                let name = match &self.server_name {
                    Some(name) => name.clone(),
                    None => server_name(authority)?,
                };
                let tcp = self.connect_tcp(authority, deadline).await?;
                UpstreamStream::Right(Box::new(self.connect_tls(connector, authority, name, tcp, deadline).await?))
            }
        };
        http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| PoolError::Handshake { authority: authority.to_string(), source })
    }

    /// The TLS handshake, verifying the certificate for `name` (the pool's
    /// server name, else the host of `authority`), by the connect's deadline.
    async fn connect_tls(
        &self,
        connector: &tokio_rustls::TlsConnector,
        authority: &str,
        name: rustls::pki_types::ServerName<'static>,
        tcp: TcpStream,
        deadline: tokio::time::Instant,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, PoolError> {
        match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(PoolError::Tls { authority: authority.to_string(), source }),
            Err(_) => {
                let ms = self.connect_timeout.as_millis() as u64;
                Err(PoolError::TlsTimeout { authority: authority.to_string(), ms })
            }
        }
    }

    async fn connect_tcp(&self, authority: &str, deadline: tokio::time::Instant) -> Result<TcpStream, PoolError> {
        let ms = self.connect_timeout.as_millis() as u64;
        let timed_out = || PoolError::ConnectTimeout { authority: authority.to_string(), ms };
        let failed = |source| PoolError::Connect { authority: authority.to_string(), source };
        let addresses: Vec<SocketAddr> = match tokio::time::timeout_at(deadline, lookup_host(authority)).await {
            Ok(Ok(addresses)) => addresses.collect(),
            Ok(Err(source)) => return Err(failed(source)),
            Err(_) => return Err(timed_out()),
        };
        let stream = match connect_any(&addresses, deadline).await {
            Ok(stream) => stream,
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return Err(timed_out()),
            Err(source) => return Err(failed(source)),
        };
        let _ = stream.set_nodelay(true);
        // A connection whose upstream host vanished (no FIN, no RST) is
        // noticed by the kernel: a long stream or tunnel then ends instead of
        // waiting for data that never comes. Probes start after a minute of
        // silence, as hyper-util's connector set them.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_PROBES);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(stream)
    }

    /// Sends a protocol-upgrade request on a connection of its own, driven by
    /// a task of its own, which hands the connection over on a 101 answer
    /// (see `upgrade`). Such a connection is never pooled.
    pub async fn send_upgrade(
        &self,
        authority: &str,
        host: &HeaderValue,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        to_origin_form(&mut request, host);
        let (mut sender, conn) = self.handshake(authority).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(sender.send_request(request).await?)
    }

    /// A connection ready for a request: an idle one that is still open, or a new one.
    async fn checkout(&self, authority: &str) -> Result<(Upstream, bool), PoolError> {
        while let Some(Idle { mut upstream, .. }) = self.take_idle(authority) {
            // Ready when its last exchange ended: a close by the upstream since
            // then shows up when the request is sent, and `send` retries it.
            if upstream.sender.is_ready() {
                return Ok((upstream, true));
            }
            // Nobody polled it while idle: this poll notices a close by the
            // upstream (the connection future completes) and lets the
            // dispatcher accept the next request.
            let Upstream { sender, conn, wake } = &mut upstream;
            let usable = std::future::poll_fn(|cx| {
                wake.poll(cx, |cx| {
                    if conn.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    match sender.poll_ready(cx) {
                        Poll::Ready(ready) => Poll::Ready(ready.is_ok()),
                        Poll::Pending => Poll::Ready(false),
                    }
                })
            })
            .await;
            if usable {
                return Ok((upstream, true));
            }
        }
        // Boxed: connecting (and a TLS handshake) is the cold path, and its
        // future would otherwise make every request's future larger by its
        // size (1,472 bytes), pooled connection or not.
        Ok((Box::pin(self.connect(authority)).await?, false))
    }

    /// Sends `request` to `authority` (host:port), in origin form (see `to_origin_form`).
    pub async fn send(
        self: &Arc<Self>,
        authority: &Arc<str>,
        host: &HeaderValue,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        to_origin_form(&mut request, host);
        loop {
            let (mut upstream, reused) = self.checkout(authority).await?;
            let Upstream { sender, conn, wake } = &mut upstream;
            // The polls below run the connection, which takes the request.
            let mut sending = std::pin::pin!(wake.quiet(|| sender.try_send_request(request)));
            let mut conn_done = false;
            let sent = std::future::poll_fn(|cx| {
                wake.poll(cx, |cx| {
                    if !conn_done && conn.as_mut().poll(cx).is_ready() {
                        conn_done = true;
                    }
                    sending.as_mut().poll(cx)
                })
            })
            .await;
            match sent {
                Ok(response) => {
                    let (head, body) = response.into_parts();
                    // A finished connection (closed, or failed) is never pooled again.
                    let upstream = (!conn_done).then_some(upstream);
                    let body = PooledBody { body, upstream, pool: self.clone(), authority: authority.clone() };
                    return Ok(Response::from_parts(head, body));
                }
                Err(mut error) => match error.take_message() {
                    // Never written: a reused connection the upstream had just
                    // closed. Safe to send again on a fresh one.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(PoolError::Http(error.into_error())),
                },
            }
        }
    }
}

/// Connects to the first of `addresses` that answers, in order, by
/// `deadline`. Each gets an equal share of the time left, so an address
/// that never answers (an IPv6 route that goes nowhere, a host that is
/// down) cannot use up the whole deadline before the next is tried, as
/// hyper-util's connector shares its connect timeout. The error is the last
/// address's (`TimedOut` when it ran out of time).
async fn connect_any(addresses: &[SocketAddr], deadline: tokio::time::Instant) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolved to no address");
    for (tried, address) in addresses.iter().enumerate() {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let share = (deadline - now) / u32::try_from(addresses.len() - tried).unwrap_or(u32::MAX);
        last = match tokio::time::timeout(share, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => error,
            Err(_) => std::io::ErrorKind::TimedOut.into(),
        };
    }
    Err(last)
}

/// The name a TLS connection to `authority` (`host:port`, `[v6]:port`) is
/// verified for.
fn server_name(authority: &str) -> Result<rustls::pki_types::ServerName<'static>, PoolError> {
    let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| PoolError::TlsName { authority: authority.to_string() })
}

/// The request line in origin form with a `Host` header (`host` unless the
/// request has one), as an HTTP/1.1 origin server expects.
fn to_origin_form(request: &mut Request<UpstreamBody>, host: &HeaderValue) {
    if request.uri().authority().is_some()
        && let Some(pq) = request.uri().path_and_query().cloned()
    {
        *request.uri_mut() = http::Uri::from(pq);
    }
    if !request.headers().contains_key(header::HOST) {
        request.headers_mut().insert(header::HOST, host.clone());
    }
}

/// A response body from a pooled connection. Polling it also drives the
/// connection; once the body has ended the connection goes back to the pool.
pub struct PooledBody {
    body: Incoming,
    upstream: Option<Upstream>,
    pool: Arc<Http1Pool>,
    authority: Arc<str>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(upstream) = self.upstream.take() {
            self.pool.put_idle(&self.authority, upstream);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let body = &mut this.body;
        let frame = match &mut this.upstream {
            Some(Upstream { conn, wake, .. }) => {
                let mut conn_done = false;
                let frame = wake.poll(cx, |cx| {
                    // What the connection already decoded is taken without running it.
                    if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
                        return Poll::Ready(frame);
                    }
                    if !conn_done && conn.as_mut().poll(cx).is_ready() {
                        conn_done = true;
                    }
                    Pin::new(&mut *body).poll_frame(cx)
                });
                if conn_done {
                    // The connection is finished (closed or failed); the body
                    // reports how that ended for it. Nothing goes back to the pool.
                    this.upstream = None;
                }
                frame
            }
            None => Pin::new(body).poll_frame(cx),
        };
        if let Poll::Ready(None) = frame {
            // One more turn lets the connection finish the exchange, so the
            // next request can take it without polling it first.
            if let Some(Upstream { conn, wake, .. }) = &mut this.upstream
                && wake.poll(cx, |cx| conn.as_mut().poll(cx)).is_ready()
            {
                this.upstream = None;
            }
            this.release();
        }
        frame.map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body the server never polled (HEAD, 204, 304) is complete; one
        // dropped half-read leaves the connection mid-message, so it closes.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn host(addr: &Arc<str>) -> HeaderValue {
        HeaderValue::from_str(addr).unwrap()
    }

    fn get(path: &str) -> Request<UpstreamBody> {
        Request::get(format!("http://upstream{path}"))
            .body(Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap()
    }

    /// An HTTP/1.1 server that counts accepted connections and answers each
    /// request on a connection with "ok"; it closes after `per_conn` requests
    /// (saying so with `connection: close` when `announce` is set).
    async fn server(per_conn: usize) -> (Arc<str>, Arc<std::sync::atomic::AtomicUsize>) {
        let (addr, accepted, _closed) = server_with(per_conn, true).await;
        (addr, accepted)
    }

    async fn server_with(
        per_conn: usize,
        announce: bool,
    ) -> (Arc<str>, Arc<std::sync::atomic::AtomicUsize>, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Arc<str> = listener.local_addr().unwrap().to_string().into();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let closed = closed_tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_conn {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = socket.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            seen.extend_from_slice(&buf[..n]);
                        }
                        let head = String::from_utf8_lossy(&seen).to_string();
                        assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "origin form: {head}");
                        assert!(head.to_ascii_lowercase().contains("\r\nhost: 127.0.0.1:"), "host header: {head}");
                        let close = if per_conn == 1 && announce { "connection: close\r\n" } else { "" };
                        let response = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{close}\r\nok");
                        socket.write_all(response.as_bytes()).await.unwrap();
                    }
                    drop(socket);
                    let _ = closed.send(());
                });
            }
        });
        (addr, accepted, closed_rx)
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_replaced_without_an_error() {
        let (addr, accepted, mut closed) = server_with(1, false).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1), Duration::from_secs(60)));
        for _ in 0..3 {
            let response = pool.send(&addr, &host(&addr), get("/x")).await.unwrap();
            assert_eq!(&response.into_body().collect().await.unwrap().to_bytes()[..], b"ok");
            // The upstream hangs up while the connection sits in the pool.
            closed.recv().await.unwrap();
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_proxied_request_wakes_its_task_only_for_the_network() {
        let (addr, _) = server(usize::MAX).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1), Duration::from_secs(60)));
        // The first request opens the connection; the second reuses it.
        pool.send(&addr, &host(&addr), get("/x")).await.unwrap().into_body().collect().await.unwrap();

        let mut polls = 0;
        let mut request = std::pin::pin!(async {
            let response = pool.send(&addr, &host(&addr), get("/x")).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        });
        let body = std::future::poll_fn(|cx| {
            polls += 1;
            request.as_mut().poll(cx)
        })
        .await;
        assert_eq!(&body[..], b"ok");
        // One poll sends the request, one takes the response when the socket
        // has it. Handing the request to hyper's connection and the response
        // back each wake the task; without `SelfWake` that is two more polls.
        assert_eq!(polls, 2);
    }

    #[tokio::test]
    async fn idle_connections_past_the_timeout_close_while_a_newer_one_keeps_being_reused() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Answers "ok" to every request; counts connections the client closed.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Arc<str> = listener.local_addr().unwrap().to_string().into();
        let closed = Arc::new(AtomicUsize::new(0));
        let count = closed.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while socket.read(&mut buf).await.unwrap_or(0) > 0 {
                        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1), Duration::from_millis(300)));
        // A burst: three connections at once, all idle afterwards.
        let target_host = host(&addr);
        let burst: Vec<_> = (0..3).map(|_| pool.send(&addr, &target_host, get("/x"))).collect();
        let responses = futures::future::try_join_all(burst).await.unwrap();
        for response in responses {
            response.into_body().collect().await.unwrap();
        }
        // Then steady traffic that always finds the newest one fresh.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            pool.send(&addr, &host(&addr), get("/x")).await.unwrap().into_body().collect().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(closed.load(Ordering::SeqCst) >= 2, "the two older connections were closed once past the idle timeout");
    }

    #[tokio::test]
    async fn a_target_without_traffic_has_its_idle_connections_closed_by_the_sweep() {
        let (addr, _) = server(usize::MAX).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1), Duration::from_millis(200)));
        let target_host = host(&addr);
        let burst: Vec<_> = (0..2).map(|_| pool.send(&addr, &target_host, get("/x"))).collect();
        for response in futures::future::try_join_all(burst).await.unwrap() {
            response.into_body().collect().await.unwrap();
        }
        pool.close_expired();
        assert_eq!(pool.idle.lock().unwrap()[&*addr].len(), 2, "fresh connections stay");
        tokio::time::sleep(Duration::from_millis(250)).await;
        pool.close_expired();
        assert!(pool.idle.lock().unwrap().is_empty(), "expired connections and their target's entry are gone");
    }

    /// A listener whose backlog is full: the kernel drops further SYNs, so
    /// a connect to it hangs as one to a host that is down does, on loopback.
    fn unanswering_address() -> (std::net::SocketAddr, Vec<std::net::TcpStream>) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        socket.listen(0).unwrap();
        let address = socket.local_addr().unwrap().as_socket().unwrap();
        let mut filling = Vec::new();
        // Connects that complete in the backlog, never accepted.
        for _ in 0..4 {
            match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
                Ok(stream) => filling.push(stream),
                Err(_) => break,
            }
        }
        std::mem::forget(socket);
        (address, filling)
    }

    #[tokio::test]
    async fn an_address_that_never_answers_leaves_the_next_one_its_share_of_the_deadline() {
        let (silent, _filling) = unanswering_address();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let stream = connect_any(&[silent, good], deadline).await.expect("the second address, within the deadline");
        assert_eq!(stream.peer_addr().unwrap(), good);
        let error = connect_any(&[silent], tokio::time::Instant::now() + Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(connect_any(&[], deadline).await.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn connections_are_reused_after_a_complete_body() {
        let (addr, accepted) = server(usize::MAX).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1), Duration::from_secs(60)));
        for _ in 0..5 {
            let response = pool.send(&addr, &host(&addr), get("/x")).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (addr, accepted) = server(1).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1), Duration::from_secs(60)));
        for _ in 0..3 {
            let response = pool.send(&addr, &host(&addr), get("/x")).await.unwrap();
            assert_eq!(&response.into_body().collect().await.unwrap().to_bytes()[..], b"ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_half_read_body_closes_its_connection() {
        let (addr, accepted) = server(usize::MAX).await;
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1), Duration::from_secs(60)));
        let response = pool.send(&addr, &host(&addr), get("/x")).await.unwrap();
        drop(response);
        let response = pool.send(&addr, &host(&addr), get("/x")).await.unwrap();
        assert_eq!(&response.into_body().collect().await.unwrap().to_bytes()[..], b"ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refused_connections_are_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: Arc<str> = listener.local_addr().unwrap().to_string().into();
        drop(listener);
        let pool = Arc::new(Http1Pool::new(Duration::from_secs(1), Duration::from_secs(60)));
        match pool.send(&addr, &host(&addr), get("/x")).await {
            Err(error) => assert!(matches!(error, PoolError::Connect { .. }), "{error}"),
            Ok(_) => panic!("a closed port answered"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tls_handshake_that_never_answers_ends_at_the_connect_deadline() {
        // Accepts the TCP connection and never says a word of TLS.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Arc<str> = listener.local_addr().unwrap().to_string().into();
        tokio::spawn(async move {
            let (_silent, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let pool = Arc::new(Http1Pool::with_tls(Duration::from_secs(3), Duration::from_secs(60), config));
        match pool.send(&addr, &host(&addr), get("/x")).await {
            Err(PoolError::TlsTimeout { ms, .. }) => assert_eq!(ms, 3000),
            Err(error) => panic!("{error}"),
            Ok(_) => panic!("a silent server answered"),
        }
        // The handshake gets what the connect left of the deadline, not a
        // connect timeout of its own (time is paused: this is the clock's
        // own arithmetic, not a measurement).
        let Some(connector) = &pool.tls else { unreachable!() };
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(1);
        let tcp = pool.connect_tcp(&addr, deadline).await.unwrap();
        let name = server_name(&addr).unwrap();
        let refused = pool.connect_tls(connector, &addr, name, tcp, deadline).await;
        assert!(matches!(refused, Err(PoolError::TlsTimeout { .. })));
        assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(1), "ended at the shared deadline");
    }

    #[tokio::test]
    async fn pooled_connections_have_tcp_keepalive_on() {
        let (addr, _) = server(usize::MAX).await;
        let pool = Http1Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        let stream = pool.connect_tcp(&addr, tokio::time::Instant::now() + Duration::from_secs(1)).await.unwrap();
        assert!(socket2::SockRef::from(&stream).keepalive().unwrap());
        assert_eq!(socket2::SockRef::from(&stream).tcp_keepalive_time().unwrap(), TCP_KEEPALIVE);
    }
}
