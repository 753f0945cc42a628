//! **account**: runs once for every request, whatever happened before (a
//! refusal in any phase, a cache hit, a REST or an AI answer), when the
//! response head is ready: the route's (or the unrouted) metrics, the access
//! log line (naming the last phase the request reached, so a refusal says
//! where it was refused), the trace span, and the request's usage record.
//! The AI backend journals a call's record itself, with its tokens and
//! cost, when its answer ends (a stream outlives this phase); `account`
//! journals every other request's, REST and refused AI requests alike.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tollgate_proto::config::v1::UsageOutcome;

use super::super::ProxyContext;
use super::super::snapshot::CompiledConsumer;
use super::{Phase, RequestCtx};
use crate::usage::RequestUsage;
use crate::usage::record::duration_ms;

/// Records the request once its response head is ready, before the
/// response goes out: its usage record is then safe from a killed process.
pub fn run(
    ctx: &ProxyContext,
    rctx: RequestCtx,
    method: &Method,
    path: Option<&str>,
    status: StatusCode,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let now_ms = crate::clock::unix_ms();
    if !rctx.recorded {
        ctx.shared.ai.ledger.record_request(&request_usage(&rctx, status, elapsed, now_ms), now_ms);
    }
    match &rctx.route {
        Some(route) => route.metrics.record(&ctx.shared.metrics, status.as_u16(), elapsed),
        None => ctx.shared.metrics.unrouted(status.as_u16()),
    }
    let route_name = rctx.route.as_ref().map(|r| r.route.name.as_str());
    if let Some(path) = path {
        let line = serde_json::json!({
            "ts_ms": now_ms,
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

/// The usage record of a request no backend accounted for. A status of 500
/// or more is an error (the gateway's or the upstream's failure); a 4xx is
/// the caller's own doing, counted as a request but not as an error.
fn request_usage<'a>(rctx: &'a RequestCtx, status: StatusCode, elapsed: Duration, now_ms: i64) -> RequestUsage<'a> {
    let route = rctx.route.as_deref();
    let is_ai = route.is_some_and(|r| r.backend.is_ai());
    let outcome = if status.is_server_error() { UsageOutcome::Error } else { UsageOutcome::Ok };
    RequestUsage {
        at_ms: now_ms - i64::try_from(elapsed.as_millis()).unwrap_or(0),
        request_id: rctx.id(),
        route: route.map_or("", |r| r.route.name.as_str()),
        service: rctx.service.as_deref().unwrap_or_default(),
        consumer_id: rctx.consumer.as_deref().map_or("", CompiledConsumer::id),
        api_key_id: rctx.api_key.as_ref().and_then(|k| k.meta.as_ref()).map_or("", |m| m.id.as_str()),
        outcome: outcome as i32,
        http_status: u32::from(status.as_u16()),
        duration_ms: duration_ms(elapsed),
        attempts: rctx.attempts,
        kind: if is_ai { "ai" } else { "rest" },
    }
}
