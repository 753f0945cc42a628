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
use tollgate_proto::config::v1::{UsageOutcome, UsageRecord};

use super::super::ProxyContext;
use super::super::snapshot::CompiledConsumer;
use super::{Phase, RequestCtx};
use crate::usage::{Recorded, Ticket};

/// Records the request once its response head is ready. Returns the ticket
/// of its usage record, which the response must wait for (None: a stream's
/// body journals and waits for it when it ends).
pub fn run(
    ctx: &ProxyContext,
    rctx: RequestCtx,
    method: &Method,
    path: Option<&str>,
    status: StatusCode,
    started: Instant,
) -> Option<Ticket> {
    let elapsed = started.elapsed();
    let now_ms = crate::clock::unix_ms();
    let ticket = match rctx.recorded {
        Recorded::No => Some(ctx.shared.ai.ledger.record(usage_record(&rctx, status, elapsed, now_ms))),
        Recorded::Queued(ticket) => Some(ticket),
        Recorded::AtBodyEnd => None,
    };
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
    ticket
}

/// The usage record of a request no backend accounted for. A status of 500
/// or more is an error (the gateway's or the upstream's failure); a 4xx is
/// the caller's own doing, counted as a request but not as an error.
fn usage_record(rctx: &RequestCtx, status: StatusCode, elapsed: Duration, now_ms: i64) -> UsageRecord {
    let route = rctx.route.as_deref();
    let is_ai = route.is_some_and(|r| r.backend.is_ai());
    let outcome = if status.is_server_error() { UsageOutcome::Error } else { UsageOutcome::Ok };
    UsageRecord {
        at_ms: now_ms - i64::try_from(elapsed.as_millis()).unwrap_or(0),
        request_id: rctx.id().to_string(),
        route: route.map(|r| r.route.name.clone()).unwrap_or_default(),
        service: rctx.service.as_deref().unwrap_or_default().to_string(),
        consumer_id: rctx.consumer.as_deref().map(CompiledConsumer::id).unwrap_or_default().to_string(),
        api_key_id: rctx.api_key.as_ref().and_then(|k| k.meta.as_ref()).map(|m| m.id.clone()).unwrap_or_default(),
        outcome: outcome as i32,
        http_status: u32::from(status.as_u16()),
        duration_ms: u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX),
        attempts: rctx.attempts,
        kind: if is_ai { "ai" } else { "rest" }.to_string(),
        ..Default::default()
    }
}
