//! The proxy data plane: listener, router, phases, upstream pool.

mod balancer;
mod error;
mod handler;
mod headers;
mod router;
mod snapshot;
mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_raft::GatewayState;

pub use error::ProxyError;
pub use snapshot::{GatewaySnapshot, TimeoutDefaults};
pub use upstream::UpstreamClients;

pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, upstream::BoxError>;

/// Shared by every connection of the proxy listener.
pub struct ProxyContext {
    pub snapshot: ArcSwap<GatewaySnapshot>,
    pub max_body_bytes: u64,
    /// Raft index of the snapshot currently served.
    served: watch::Sender<u64>,
}

impl ProxyContext {
    pub fn new(max_body_bytes: u64) -> ProxyContext {
        ProxyContext {
            snapshot: ArcSwap::from_pointee(GatewaySnapshot::empty()),
            max_body_bytes,
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
pub async fn follow_state(
    ctx: Arc<ProxyContext>,
    mut states: watch::Receiver<Arc<GatewayState>>,
    clients: Arc<UpstreamClients>,
    defaults: TimeoutDefaults,
) {
    loop {
        let state = states.borrow_and_update().clone();
        ctx.install(GatewaySnapshot::compile(&state, &clients, defaults));
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge, h2c) until `shutdown`
/// resolves, then stops accepting and lets in-flight requests finish for up to `drain`.
pub async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>, shutdown: impl Future<Output = ()>, drain: Duration) {
    let builder = auto::Builder::new(TokioExecutor::new());
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
        let service = service_fn(move |request| handler::handle(ctx.clone(), client, request));
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %client, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(drain_ms = drain.as_millis() as u64, "drain timed out; closing remaining connections");
    }
}
