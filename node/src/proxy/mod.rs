//! The proxy data plane: listener, router, phases, upstream pool.

mod authority;
pub mod cache;
mod circuit;
mod client_body;
mod connections;
mod cors;
mod handler;
mod headers;
mod health;
pub(crate) mod ip_filter;
mod jwt;
mod lb;
pub(crate) mod path;
mod phases;
mod retry;
mod router;
mod service_backend;
pub(crate) mod snapshot;
#[cfg(test)]
mod snapshot_tests;
pub mod tls;
mod transform;
mod upgrade;
mod versions;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_raft::GatewayState;

pub use connections::{ConnGuard, Connections, UpstreamSlots};
pub use path::{EscapedSeparatorPolicy, PathPolicy, SlashPolicy};
pub use retry::RETRY_BUFFER_BYTES;
pub use snapshot::{GatewaySnapshot, Shared, TimeoutDefaults};

use crate::net::SendTimeout;
use crate::telemetry::access_log::AccessLog;

pub use crate::plumbing::GatewayBody;

/// What the request path needs to know about a client connection, worked out
/// once when it is accepted rather than on every request.
pub struct ClientConn {
    pub addr: std::net::SocketAddr,
    pub tls: bool,
    /// The client's IP as an X-Forwarded-For element.
    pub forwarded_for: http::HeaderValue,
    /// Set by the first request; until then the connection is on probation.
    sent_a_request: AtomicBool,
    /// Requests in flight and whether it was asked to close (see `connections`).
    state: connections::ConnState,
}

impl ClientConn {
    pub fn new(addr: std::net::SocketAddr, tls: bool) -> ClientConn {
        let forwarded_for =
            http::HeaderValue::from_str(&addr.ip().to_string()).expect("an IP address is a valid header value");
        ClientConn { addr, tls, forwarded_for, sent_a_request: AtomicBool::new(false), state: Default::default() }
    }

    pub fn sent_a_request(&self) -> bool {
        self.sent_a_request.load(Ordering::Relaxed)
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

/// `config::Proxy::client_send_timeout_ms`'s default.
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Shared by every connection of the proxy listener.
pub struct ProxyContext {
    pub snapshot: ArcSwap<GatewaySnapshot>,
    pub max_body_bytes: u64,
    /// Pools, health, circuits, budgets, JWKS, cache and metrics: outlive snapshots.
    pub shared: Shared,
    pub access_log: AccessLog,
    /// See `config::Proxy::client_idle_timeout_ms`.
    pub client_idle_timeout: Duration,
    /// See `config::Proxy::path_slashes` and `path_escaped_separators`.
    pub path_policy: PathPolicy,
    /// Open client connections against `config::Proxy::max_connections`.
    pub connections: Arc<Connections>,
    /// Upstream requests in flight, against the same cap.
    pub upstream_slots: Arc<UpstreamSlots>,
    /// See `config::Proxy::client_send_timeout_ms`.
    pub client_send_timeout: Duration,
    /// Raft index of the snapshot currently served.
    served: watch::Sender<u64>,
    /// The replicated state the snapshot was compiled from, for the MCP
    /// backend's tool listings (read in memory; no Raft or disk access).
    pub state: ArcSwap<tollgate_raft::GatewayState>,
    /// The plain-HTTP proxy listener's address, for MCP tool calls made
    /// through the proxy itself.
    pub own_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// MCP tools built from the state, shared by every MCP request.
    pub mcp_tools: crate::mcp::ToolCache,
}

impl ProxyContext {
    pub fn new(
        max_body_bytes: u64,
        client_idle_timeout: Duration,
        shared: Shared,
        access_log: AccessLog,
    ) -> ProxyContext {
        let shared_metrics = shared.metrics.clone();
        ProxyContext {
            snapshot: ArcSwap::from_pointee(GatewaySnapshot::empty()),
            max_body_bytes,
            shared,
            access_log,
            client_idle_timeout,
            path_policy: PathPolicy::default(),
            connections: Arc::new(Connections::new(usize::MAX, shared_metrics)),
            upstream_slots: Arc::new(UpstreamSlots::new(usize::MAX)),
            client_send_timeout: DEFAULT_SEND_TIMEOUT,
            served: watch::channel(0).0,
            state: ArcSwap::from_pointee(tollgate_raft::GatewayState::default()),
            own_addr: std::sync::OnceLock::new(),
            mcp_tools: Default::default(),
        }
    }

    /// Caps the client connections of the proxy listeners and bounds how long
    /// a client may leave a response unread (see `config::Proxy`).
    pub fn with_client_limits(mut self, max_connections: usize, send_timeout: Duration) -> ProxyContext {
        self.connections = Arc::new(Connections::new(max_connections, self.shared.metrics.clone()));
        self.upstream_slots = Arc::new(UpstreamSlots::new(max_connections));
        self.client_send_timeout = send_timeout;
        self
    }

    pub fn with_path_policy(mut self, path_policy: PathPolicy) -> ProxyContext {
        self.path_policy = path_policy;
        self
    }

    fn install(&self, snapshot: GatewaySnapshot) -> Arc<GatewaySnapshot> {
        let revision = snapshot.revision;
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(snapshot.clone());
        self.served.send_replace(revision);
        snapshot
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

/// Moves the data-plane snapshot to each state Raft publishes: by the
/// entities changed since the snapshot served (see `GatewaySnapshot::update`),
/// or compiled whole when the state's change journal no longer reaches back
/// (at start, after a snapshot install, after a very large burst). `watch`
/// keeps only the newest value, so bursts of writes coalesce into one update.
pub async fn follow_state(ctx: Arc<ProxyContext>, mut states: watch::Receiver<Arc<GatewayState>>) {
    let mut served: Option<Arc<GatewaySnapshot>> = None;
    loop {
        let state = states.borrow_and_update().clone();
        ctx.state.store(state.clone());
        let next = match served.as_deref().and_then(|s| Some((s, state.changes_since(s.revision)?))) {
            Some((current, touched)) => current.update(&state, touched, &ctx.shared),
            None => GatewaySnapshot::compile(&state, &ctx.shared),
        };
        served = Some(ctx.install(next));
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge, h2c; or ALPN with `tls`)
/// until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish for up to `drain`.
///
/// Connections count against `ctx.connections` from accept to close. When
/// the proxy is full, accepting pauses while an idle connection is closed to
/// make room (bounded); a client for whom no room can be made is closed at
/// once, so it holds no descriptor.
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
    let send_timeouts = ctx.shared.metrics.send_timeouts("proxy");
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
        let conn = Arc::new(ClientConn::new(client, tls.is_some()));
        let place = match ctx.connections.try_admit(&conn) {
            Some(place) => place,
            None => match ctx.connections.admit_evicting(&conn).await {
                Some(place) => place,
                None => {
                    tracing::debug!(%client, "refused a connection: the proxy is at proxy.max_connections");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let stream = SendTimeout::new(stream, ctx.client_send_timeout, send_timeouts.clone());
        let watched = conn.clone();
        let ctx = ctx.clone();
        let service = service_fn(move |request| {
            let (ctx, conn) = (ctx.clone(), conn.clone());
            async move {
                // Marks the connection busy, so that it is not the one closed to make room.
                let _busy = conn.state.busy();
                handler::handle(ctx, conn.clone(), request).await
            }
        });
        match &tls {
            None => {
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                tokio::spawn(serve_client(connection, watched, idle, place));
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task so a slow client cannot stall accept.
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    // A connection still shaking hands holds a place too, and
                    // is the first closed to make room: stop when asked.
                    let stream = tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => return tracing::debug!(%error, %client, "TLS handshake failed"),
                            Err(_) => return tracing::debug!(%client, "TLS handshake timed out"),
                        },
                        () = watched.state.notified() => return tracing::debug!(%client, "closed during its TLS handshake"),
                    };
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    // Boxed as `Send` here: rustc cannot prove it through the
                    // connection's higher-ranked bounds inside this async block.
                    let served: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
                        Box::pin(serve_client(connection, watched, idle, place));
                    served.await;
                });
            }
        }
    }
    drop(listener);
    ctx.connections.close_all(connections::Close::Graceful);
    if tokio::time::timeout(drain, ctx.connections.closed()).await.is_err() {
        tracing::warn!(drain_ms = drain.as_millis() as u64, "drain timed out; closing remaining connections");
        ctx.connections.close_all(connections::Close::Now);
    }
}

/// How long a connection that never sent a request may stay open after it
/// was asked to close before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// How a client connection's task ended.
enum Ended<E> {
    Served(Result<(), E>),
    SentNoRequest,
    Dropped,
}

/// Runs one client connection until it ends, holding its `place` among the
/// proxy's connections until then.
///
/// It is dropped if no first request arrives within `idle`: hyper's header
/// timer only starts once it knows HTTP/1 from HTTP/2, so a client that
/// connects and sends nothing (or a trickle) would otherwise stay forever.
/// Once a request has come, the deadline is no longer polled, so it costs
/// nothing per request. When asked to close (to make room, or on shutdown)
/// it shuts down gracefully: an idle HTTP/1 connection closes at once, a
/// busy one after its response, HTTP/2 with GOAWAY.
async fn serve_client<C>(connection: C, conn: Arc<ClientConn>, idle: Duration, place: ConnGuard)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    let mut deadline = std::pin::pin!(tokio::time::sleep(idle));
    let mut close = std::pin::pin!(conn.state.notified());
    let mut shutting_down = false;
    // Armed by a graceful close: a connection that never sent a request and
    // is still open after it (an HTTP/2 or TLS client that ignores GOAWAY)
    // is dropped, so closing such a one to make room always makes room. One
    // that did send requests is left to finish: hyper may still be writing
    // a response whose body it has already let go of.
    let mut grace = std::pin::pin!(tokio::time::sleep(Duration::MAX));
    let ended = std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Ended::Served(result));
            }
            if close.as_mut().poll(cx).is_ready() {
                close.set(conn.state.notified());
                match conn.state.close_requested() {
                    connections::Close::Now => return Poll::Ready(Ended::Dropped),
                    connections::Close::Graceful if !shutting_down => {
                        shutting_down = true;
                        connection.as_mut().graceful_shutdown();
                        grace.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                    _ => {}
                }
                // Poll the connection again (it acts on the shutdown) and
                // register for the next close request.
                continue;
            }
            if !conn.sent_a_request() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::SentNoRequest);
            }
            if shutting_down && !conn.sent_a_request() && grace.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::Dropped);
            }
            return Poll::Pending;
        }
    })
    .await;
    match ended {
        Ended::Served(Err(error)) => tracing::debug!(%error, client = %conn.addr, "connection ended with an error"),
        Ended::Served(Ok(())) => {}
        Ended::SentNoRequest => tracing::debug!(client = %conn.addr, "closed a connection that sent no request"),
        Ended::Dropped => tracing::debug!(client = %conn.addr, "dropped a connection that did not close when asked"),
    }
    drop(place);
}
