//! The ops HTTP listener (DESIGN §8): `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (Raft has a leader and the
//! proxy serves a compiled state).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tollgate_raft::RaftNode;

use crate::proxy::ProxyContext;
use crate::telemetry::metrics::TargetLabels;

pub async fn serve(
    listener: TcpListener,
    proxy: Arc<ProxyContext>,
    raft: RaftNode,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (proxy, raft) = (proxy.clone(), raft.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&proxy, &raft, &request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
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
