//! **account**: runs once for every request, whatever happened before (a
//! refusal in any phase, a cache hit, a REST or an AI answer), when the
//! response head is ready: the route's (or the unrouted) metrics, the access
//! log line (naming the last phase the request reached, so a refusal says
//! where it was refused), and the trace span. The AI backend settles a
//! call's tokens and cost itself, when its answer ends (a stream outlives
//! this phase).

use std::time::Instant;

use http::{Method, StatusCode};

use super::super::ProxyContext;
use super::super::snapshot::CompiledConsumer;
use super::{Phase, RequestCtx};

/// Records the request once its response head is ready.
pub fn run(
    ctx: &ProxyContext,
    rctx: RequestCtx,
    method: &Method,
    path: Option<&str>,
    status: StatusCode,
    started: Instant,
) {
    let elapsed = started.elapsed();
    match &rctx.route {
        Some(route) => route.metrics.record(&ctx.shared.metrics, status.as_u16(), elapsed),
        None => ctx.shared.metrics.unrouted(status.as_u16()),
    }
    let route_name = rctx.route.as_ref().map(|r| r.route.name.as_str());
    if let Some(path) = path {
        let line = serde_json::json!({
            "ts_ms": crate::clock::unix_ms(),
            "request_id": rctx.id(),
            "client": rctx.client.addr.ip().to_string(),
            "method": method.as_str(),
            "path": path,
            "status": status.as_u16(),
            "latency_us": elapsed.as_micros() as u64,
            "route": route_name,
            "service": rctx.service,
            "consumer": rctx.consumer.as_deref().map(CompiledConsumer::name),
            "upstream": rctx.upstream,
            "attempts": rctx.attempts,
            "cache": rctx.cache,
            "phase": rctx.phases.last().map(Phase::name),
            "phases": rctx.phases.names(),
            "trace_id": rctx.trace.as_ref().map(|t| t.trace_id.to_string()),
        });
        ctx.access_log.write(line.to_string());
    }
    if let Some(trace) = rctx.trace {
        let mut attributes = vec![
            opentelemetry::KeyValue::new("http.request.method", method.to_string()),
            opentelemetry::KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        ];
        if let Some(route) = route_name {
            attributes.push(opentelemetry::KeyValue::new("http.route", route.to_string()));
        }
        if let Some(upstream) = rctx.upstream {
            attributes.push(opentelemetry::KeyValue::new("server.address", upstream.to_string()));
        }
        trace.finish("proxy", status.as_u16(), attributes);
    }
}
