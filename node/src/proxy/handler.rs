//! The request path: takes one snapshot, runs the phases of
//! [`super::phases`] in order, and renders a failure in the format of the
//! route's backend (REST JSON, or the AI caller's own API format).

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::headers::{self, X_REQUEST_ID};
use super::phases::route_match::Routed;
use super::phases::{self, Phase, RequestCtx, Step};
use super::snapshot::{GatewaySnapshot, RouteBackend};
use super::{ClientConn, GatewayBody, ProxyContext};
use crate::ai::gateway::Ingress;
use crate::plumbing::GatewayError;
use crate::telemetry::tracing::TraceCtx;

pub async fn handle(
    ctx: Arc<ProxyContext>,
    client: Arc<ClientConn>,
    request: Request<Incoming>,
) -> Result<Response<GatewayBody>, std::convert::Infallible> {
    let started = Instant::now();
    client.request_arrived();
    let snapshot = ctx.snapshot.load_full();
    let trace = crate::telemetry::tracing::enabled().then(|| TraceCtx::start(request.headers()));
    let mut rctx = RequestCtx::new(headers::request_id(request.headers()), client, trace);
    let method = request.method().clone();
    let path = ctx.access_log.enabled().then(|| request.uri().path().to_string());
    let ai_format = Ingress::of_path(request.uri().path());

    let mut response = match run_phases(&ctx, &snapshot, &mut rctx, request).await {
        Ok(response) => response,
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(request_id = rctx.id(), %error, "request failed");
            }
            let refusal = match &error {
                GatewayError::RateLimited(refusal) => Some(refusal.clone()),
                _ => None,
            };
            let mut response = match &rctx.route {
                // AI clients (OpenAI, Anthropic and Google SDKs) parse errors in their own format.
                Some(route) if route.backend.is_ai() => crate::ai::gateway::render_error(&error, rctx.id(), ai_format),
                // MCP clients raise a JSON-RPC error; a bare one would be "internal error".
                Some(route) if matches!(route.backend, RouteBackend::Mcp { .. }) => {
                    crate::mcp::render_error(&error, rctx.id())
                }
                _ => error.into_response(rctx.id()),
            };
            if let Some(refusal) = refusal {
                crate::limits::headers::refused(&refusal, response.headers_mut());
            }
            response
        }
    };
    // The AI backend's token or budget headers (on an answer or a refusal,
    // which may carry the policy alone) speak for the tighter limits; the
    // request limit's do not replace them.
    if let Some(taken) = &rctx.limits
        && ctx.shared.limiter.config.admitted_headers
        && !response.headers().contains_key(crate::limits::headers::RATELIMIT_POLICY)
    {
        crate::limits::headers::on_response(taken, response.headers_mut());
    }
    if let Some(route) = &rctx.route
        && let Some(cors) = &route.cors
    {
        cors.decorate(rctx.origin.as_ref(), response.headers_mut());
    }
    // Appended: the upstream's own Link headers (pagination…) stay.
    for (name, value) in rctx.deprecation.drain(..) {
        response.headers_mut().append(name, value);
    }
    response.headers_mut().insert(X_REQUEST_ID.clone(), rctx.request_id.clone());
    rctx.phases.enter(Phase::Account);
    phases::account::run(&ctx, rctx, &method, path.as_deref(), response.status(), started);
    Ok(response)
}

/// Runs the phases up to and including the backend; a phase that answers
/// ends the run (`account` still runs, in `handle`).
async fn run_phases(
    ctx: &ProxyContext,
    snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    request: Request<Incoming>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let (mut parts, body) = request.into_parts();
    macro_rules! phase {
        ($phase:expr, $run:expr) => {
            rctx.phases.enter($phase);
            if let Step::Respond(response) = $run? {
                return Ok(response);
            }
        };
    }
    rctx.phases.enter(Phase::Match);
    let route = match phases::route_match::run(ctx, snapshot, rctx, &mut parts)? {
        Routed::To(route) => route,
        Routed::Respond(response) => return Ok(response),
    };
    phase!(Phase::Lifecycle, phases::lifecycle::run(snapshot, rctx, route, &mut parts));
    phase!(Phase::Authenticate, phases::authenticate::run(snapshot, rctx, route, &mut parts));
    phase!(Phase::Authorize, phases::authorize::run(ctx, snapshot, rctx, route, &parts));
    phase!(Phase::Limit, phases::limit::run(ctx, snapshot, rctx, route).await);
    let mut miss = None;
    phase!(Phase::Cache, phases::cache::lookup(ctx, rctx, route, &parts, &mut miss));
    rctx.phases.enter(Phase::Backend);
    let response = phases::backend::run(ctx, snapshot, rctx, route, parts, body).await?;
    phases::cache::store(ctx, rctx, route, miss, response).await
}
