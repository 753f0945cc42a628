//! The ops HTTP listener (DESIGN §8): `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (Raft has a leader and the
//! proxy serves a compiled state).
//!
//! Every wait is bounded (DESIGN §8): a connection that sends no complete
//! request head within `ops.client_idle_timeout_ms` is closed, one that reads
//! none of its response within `ops.client_send_timeout_ms` is cut off, and
//! at most `ops.max_connections` are open, so that probes and scrapers cannot
//! be starved, nor the descriptors reserved for the admin API and Raft taken,
//! by clients that connect and stall.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tollgate_raft::RaftNode;

use crate::config::{Ops, ms};
use crate::net::SendTimeout;
use crate::proxy::ProxyContext;
use crate::telemetry::metrics::TargetLabels;

/// At most one "ops listener full" warning per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The ops listener's bounds, from `config::Ops`.
#[derive(Debug, Clone, Copy)]
pub struct OpsLimits {
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
}

impl From<&Ops> for OpsLimits {
    fn from(ops: &Ops) -> OpsLimits {
        OpsLimits {
            idle_timeout: ms(ops.client_idle_timeout_ms),
            send_timeout: ms(ops.client_send_timeout_ms),
            max_connections: ops.max_connections,
        }
    }
}

pub async fn serve(
    listener: TcpListener,
    limits: OpsLimits,
    proxy: Arc<ProxyContext>,
    raft: RaftNode,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper starts this timer whenever it waits for a request head, so it
    // closes idle keep-alive connections and slow (or absent) headers alike.
    builder.timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout);
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let send_timeouts = proxy.shared.metrics.send_timeouts("ops");
    let warned: Mutex<Option<Instant>> = Mutex::new(None);
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Usually EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            // Closed at once (dropping `stream`): it must not hold a descriptor.
            let mut last = warned.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                *last = Some(Instant::now());
                tracing::warn!(
                    %client,
                    max_connections = limits.max_connections,
                    "the ops listener is at ops.max_connections; closing new connections until some end \
                     (raise ops.max_connections if this many scrapers and probes are expected)"
                );
            }
            continue;
        };
        let (proxy, raft, builder) = (proxy.clone(), raft.clone(), builder.clone());
        let io = TokioIo::new(SendTimeout::new(stream, limits.send_timeout, send_timeouts.clone()));
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&proxy, &raft, &request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            if let Err(error) = builder.serve_connection(io, service).await {
                tracing::debug!(%error, %client, "ops connection ended with an error");
            }
            drop(place);
        });
    }
}

fn respond(proxy: &ProxyContext, raft: &RaftNode, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            refresh_gauges(proxy, raft);
            let mut response = Response::new(Full::new(Bytes::from(proxy.shared.metrics.encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let status = raft.status();
            if status.leader_id.is_some() && proxy.served_revision() > 0 {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no Raft leader yet or no state compiled\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

/// Gauges that mirror state owned elsewhere are read at scrape time.
fn refresh_gauges(proxy: &ProxyContext, raft: &RaftNode) {
    let m = &proxy.shared.metrics;
    let status = raft.status();
    m.raft_term.set(status.current_term as i64);
    m.raft_commit_index.set(status.committed_index as i64);
    m.raft_applied_index.set(status.applied_index as i64);
    m.data_plane_revision.set(proxy.served_revision() as i64);
    let snapshot = proxy.snapshot.load();
    m.upstream_healthy.clear();
    m.upstream_in_flight.clear();
    for service in snapshot.services.values() {
        for target in &service.targets {
            let labels = TargetLabels { service: service.name.clone(), target: target.authority.to_string() };
            m.upstream_healthy.get_or_create(&labels).set(i64::from(target.state.available()));
            m.upstream_in_flight.get_or_create(&labels).set(target.state.in_flight.load(Ordering::Relaxed) as i64);
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}
