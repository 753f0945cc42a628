//! The proxy data plane: listener, router, phases, upstream pool.

pub mod cache;
mod circuit;
mod cors;
mod error;
mod handler;
mod headers;
mod health;
mod ip_filter;
mod jwt;
mod lb;
mod pool;
mod retry;
mod router;
mod self_wake;
mod snapshot;
pub mod tls;
mod transform;
mod upgrade;
mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_raft::GatewayState;

pub use error::ProxyError;
pub use retry::RETRY_BUFFER_BYTES;
pub use snapshot::{GatewaySnapshot, Shared, TimeoutDefaults};
pub use upstream::{BoxError, Upstream, UpstreamClient, UpstreamClients};

use crate::telemetry::access_log::AccessLog;

pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, upstream::BoxError>;

/// What the request path needs to know about a client connection, worked out
/// once when it is accepted rather than on every request.
pub struct ClientConn {
    pub addr: std::net::SocketAddr,
    pub tls: bool,
    /// The client's IP as an X-Forwarded-For element.
    pub forwarded_for: http::HeaderValue,
    /// Set by the first request; until then the connection is on probation.
    sent_a_request: AtomicBool,
}

impl ClientConn {
    pub fn new(addr: std::net::SocketAddr, tls: bool) -> ClientConn {
        let forwarded_for =
            http::HeaderValue::from_str(&addr.ip().to_string()).expect("an IP address is a valid header value");
        ClientConn { addr, tls, forwarded_for, sent_a_request: AtomicBool::new(false) }
    }

    pub fn request_arrived(&self) {
        if !self.sent_a_request.load(Ordering::Relaxed) {
            self.sent_a_request.store(true, Ordering::Relaxed);
        }
    }
}

/// How long an HTTP/2 keep-alive ping may go unanswered before the client
/// connection is taken for dead.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Shared by every connection of the proxy listener.
pub struct ProxyContext {
    pub snapshot: ArcSwap<GatewaySnapshot>,
    pub max_body_bytes: u64,
    /// Pools, health, circuits, budgets, JWKS, cache and metrics: outlive snapshots.
    pub shared: Shared,
    pub access_log: AccessLog,
    /// See `config::Proxy::client_idle_timeout_ms`.
    pub client_idle_timeout: Duration,
    /// Raft index of the snapshot currently served.
    served: watch::Sender<u64>,
}

impl ProxyContext {
    pub fn new(
        max_body_bytes: u64,
        client_idle_timeout: Duration,
        shared: Shared,
        access_log: AccessLog,
    ) -> ProxyContext {
        ProxyContext {
            snapshot: ArcSwap::from_pointee(GatewaySnapshot::empty()),
            max_body_bytes,
            shared,
            access_log,
            client_idle_timeout,
            served: watch::channel(0).0,
        }
    }

    fn install(&self, snapshot: GatewaySnapshot) {
        let revision = snapshot.revision;
        self.snapshot.store(Arc::new(snapshot));
        self.served.send_replace(revision);
    }

    /// Notified with each newly served revision.
    pub fn subscribe_served(&self) -> watch::Receiver<u64> {
        self.served.subscribe()
    }

    /// Raft index of the state the proxy is serving now.
    pub fn served_revision(&self) -> u64 {
        *self.served.borrow()
    }

    /// Resolves once the proxy serves state at or past `revision`, so an admin
    /// write can return only when its change is live on this node.
    pub async fn wait_served(&self, revision: u64) {
        let mut rx = self.served.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = rx.wait_for(|served| *served >= revision).await;
    }
}

/// Recompiles the data-plane snapshot whenever Raft publishes a new state.
/// `watch` keeps only the newest value, so bursts of writes coalesce into one
/// rebuild.
pub async fn follow_state(ctx: Arc<ProxyContext>, mut states: watch::Receiver<Arc<GatewayState>>) {
    loop {
        let state = states.borrow_and_update().clone();
        ctx.install(GatewaySnapshot::compile(&state, &ctx.shared));
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge, h2c; or ALPN with `tls`)
/// until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let idle = ctx.client_idle_timeout;
    // hyper's header-read timeout runs from the moment it waits for a request
    // head, so it bounds idle keep-alive time and slow headers alike.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(idle).keep_alive_timeout(H2_PING_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let conn = Arc::new(ClientConn::new(client, tls.is_some()));
        let watched = conn.clone();
        let service = service_fn(move |request| handler::handle(ctx.clone(), conn.clone(), request));
        match &tls {
            None => {
                let connection =
                    graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
                tokio::spawn(serve_client(connection, watched, idle));
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task so a slow client cannot stall accept.
                let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => return tracing::debug!(%error, %client, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%client, "TLS handshake timed out"),
                    };
                    let connection = watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
                    serve_client(connection, watched, idle).await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(drain_ms = drain.as_millis() as u64, "drain timed out; closing remaining connections");
    }
}

/// Runs one client connection, and drops it if no first request arrives
/// within `idle`: hyper's header timer only starts once it knows HTTP/1 from
/// HTTP/2, so a client that connects and sends nothing (or a trickle) would
/// otherwise stay forever. Once a request has come, the deadline is no longer
/// polled, so it costs nothing per request.
async fn serve_client<E: std::fmt::Display>(
    connection: impl Future<Output = Result<(), E>>,
    conn: Arc<ClientConn>,
    idle: Duration,
) {
    let mut connection = std::pin::pin!(connection);
    let mut deadline = std::pin::pin!(tokio::time::sleep(idle));
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        if !conn.sent_a_request.load(Ordering::Relaxed) && deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    match ended {
        Some(Err(error)) => tracing::debug!(%error, client = %conn.addr, "connection ended with an error"),
        Some(Ok(())) => {}
        None => tracing::debug!(client = %conn.addr, "closed a connection that sent no request"),
    }
}
