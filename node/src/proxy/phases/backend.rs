//! **backend**: runs last before `account`, when no earlier phase answered.
//! Calls the route's backend: a REST service (`proxy::service_backend`:
//! balancing, retries, health, circuit breaking, WebSocket tunnels) or the
//! AI gateway (`crate::ai::gateway`, which knows nothing of the proxy and is
//! handed the caller as the earlier phases established it).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::super::connections::{Streaming, UpstreamSlot};
use super::super::snapshot::{CompiledConsumer, CompiledRoute, GatewaySnapshot, RouteBackend};
use super::super::{ClientConn, ProxyContext, service_backend};
use super::RequestCtx;
use crate::ai::gateway::AiCall;
use crate::plumbing::{BoxError, GatewayBody, GatewayError};

#[inline]
pub async fn run(
    ctx: &ProxyContext,
    snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    route: &Arc<CompiledRoute>,
    parts: http::request::Parts,
    body: Incoming,
) -> Result<Response<GatewayBody>, GatewayError> {
    // The AI, prompt and MCP futures are boxed: inline, their state (the AI
    // gateway's is several kilobytes) would be part of every REST request's
    // future too, which the layers above create and move.
    match &route.backend {
        RouteBackend::Service { service_id } => match &route.prompt {
            Some(prompt) => Box::pin(ai(ctx, snapshot, rctx, route, parts, body, Some(prompt.clone()))).await,
            None => service_backend::serve(ctx, snapshot, rctx, route, service_id, parts, body).await,
        },
        RouteBackend::Ai => Box::pin(ai(ctx, snapshot, rctx, route, parts, body, None)).await,
        RouteBackend::Mcp { team_id } => Ok(Box::pin(mcp(ctx, rctx, route, team_id.as_deref(), parts, body)).await),
    }
}

/// The MCP server of an MCP route (`crate::mcp`), for the caller the
/// earlier phases authenticated.
async fn mcp(
    ctx: &ProxyContext,
    rctx: &RequestCtx,
    route: &CompiledRoute,
    team: Option<&str>,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    let timeout = route.request_timeout.unwrap_or(ctx.shared.defaults.request);
    let limit = usize::try_from(ctx.max_body_bytes).unwrap_or(usize::MAX).min(crate::mcp::MAX_MESSAGE_BYTES);
    let bytes = match tokio::time::timeout(timeout, http_body_util::Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            let error = GatewayError::BadRequest(format!("an MCP message is at most {limit} bytes, and whole"));
            return crate::mcp::render_error(&error, rctx.id());
        }
        Err(_) => {
            let error = GatewayError::BadRequest("the MCP message did not arrive whole in time".into());
            return crate::mcp::render_error(&error, rctx.id());
        }
    };
    let Some(proxy) = ctx.own_addr.get().copied() else {
        return crate::mcp::render_error(&GatewayError::Overloaded, rctx.id());
    };
    let server = crate::mcp::Mcp {
        state: ctx.state.load_full(),
        proxy,
        consumer_id: rctx.consumer.as_deref().map(CompiledConsumer::id).unwrap_or_default(),
        team,
        client_ip: rctx.client.addr.ip(),
        snapshot: ctx.snapshot.load_full(),
        path_policy: ctx.path_policy,
        tools: &ctx.mcp_tools,
    };
    crate::mcp::serve(server, &parts.method, &parts.headers, &bytes).await
}

/// The AI gateway's own endpoints, or a prompt API (`crate::ai::prompt`)
/// of the service named with it.
async fn ai(
    ctx: &ProxyContext,
    snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    route: &CompiledRoute,
    parts: http::request::Parts,
    body: Incoming,
    prompt: Option<Arc<crate::ai::prompt::CompiledPrompt>>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let consumer = rctx.consumer.as_deref();
    let call = AiCall {
        request_id: rctx.id().to_string(),
        route: route.route.name.clone(),
        consumer_id: consumer.map(CompiledConsumer::id).unwrap_or_default().to_string(),
        consumer_name: consumer.map(CompiledConsumer::name).unwrap_or_default().to_string(),
        api_key: rctx.api_key.clone(),
        // The request's own span; the AI gateway opens its client span under it.
        trace: rctx.trace.clone(),
        max_body_bytes: ctx.max_body_bytes,
        // As for a REST body held for retries (see `service_backend`).
        body_timeout: route.request_timeout.unwrap_or(ctx.shared.defaults.request),
        anthropic_beta: parts.headers.get("anthropic-beta").cloned(),
        limits: (!rctx.ai_limits.is_empty()).then(|| crate::ai::limits::AiLimits {
            limiter: ctx.shared.limiter.clone(),
            deferred: std::mem::take(&mut rctx.ai_limits),
        }),
        service: String::new(),
    };
    let slot = ctx.upstream_slots.try_take().ok_or(GatewayError::Overloaded)?;
    let served = match prompt {
        Some(prompt) => {
            let service = route.service_label.as_deref().unwrap_or_default().to_string();
            let gateway = crate::ai::prompt::Gateway {
                shared: &ctx.shared.ai,
                snapshot: &snapshot.ai,
                metrics: &ctx.shared.metrics,
            };
            crate::ai::prompt::serve(gateway, AiCall { service, ..call }, &prompt, parts, body).await
        }
        None => crate::ai::gateway::serve(&ctx.shared.ai, &snapshot.ai, &ctx.shared.metrics, call, parts, body).await,
    };
    rctx.upstream = served.provider.map(Arc::from);
    rctx.attempts = served.attempts;
    rctx.recorded = served.recorded;
    Ok(keep_busy_while_streaming(served.response, &rctx.client, slot))
}

/// An AI answer (often a stream) keeps its connection busy until it ends.
/// Its upstream slot is held as long.
fn keep_busy_while_streaming(
    response: Response<GatewayBody>,
    client: &Arc<ClientConn>,
    slot: UpstreamSlot,
) -> Response<GatewayBody> {
    if response.body().is_end_stream() {
        return response;
    }
    let hold = (Streaming::new(client), slot);
    response.map(|body| StreamingBody { inner: body, _hold: hold }.boxed_unsync())
}

/// A body that keeps its connection busy until it is dropped; everything
/// else (frames, end of stream, length) is the inner body's, so a sized
/// answer keeps its Content-Length.
struct StreamingBody {
    inner: GatewayBody,
    _hold: (Streaming, UpstreamSlot),
}

impl Body for StreamingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
