//! **cache**: runs after `limit`, right before the backend, on routes that
//! enable the response cache. A fresh stored response answers the request
//! (`X-Cache: HIT`); otherwise the backend's answer is offered to
//! [`store`] once it is in (RFC 9111: a response to a request that carried
//! credentials is stored only if it says it may be shared).

use http::header::{self, HeaderValue};
use http::{Method, Response};
use http_body_util::BodyExt;

use super::super::ProxyContext;
use super::super::authority::Authority;
use super::super::cache::{self, RequestPolicy};
use super::super::snapshot::{CompiledConsumer, CompiledRoute};
use super::authorize::declared_length;
use super::{PhaseResult, RequestCtx, Step};
use crate::plumbing::{GatewayBody, GatewayError, empty, full};

pub static X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

/// A cache miss that may be stored once the response is in.
pub struct Miss {
    key: String,
    request_headers: http::HeaderMap,
}

/// Looks the request up; a miss that may be stored is left in `miss`.
#[inline]
pub fn lookup(
    ctx: &ProxyContext,
    rctx: &mut RequestCtx,
    route: &CompiledRoute,
    parts: &http::request::Parts,
    miss: &mut Option<Miss>,
) -> PhaseResult {
    // Not for a WebSocket upgrade, and not for AI answers: each is its own
    // (billed) generation.
    let Some(settings) = route.cache.as_ref().filter(|_| rctx.upgrade.is_none() && !route.backend.is_ai()) else {
        return Ok(Step::Continue);
    };
    let policy = cache::request_policy(&parts.method, &parts.headers, settings.allow_cookies);
    if policy != RequestPolicy::Bypass {
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let of = cache::KeyOf {
            route_id: &route.id,
            consumer: rctx.consumer.as_deref().map(CompiledConsumer::id),
            version: rctx.version.as_deref().map(|v| v.name.as_str()),
            method: &parts.method,
            host: rctx.authority.as_ref().map(Authority::as_str),
            path_and_query: pq,
        };
        let key = cache::key(of, &settings.vary, &parts.headers);
        if policy == RequestPolicy::Normal
            && let Some(hit) = ctx.shared.cache.lookup(&key, &parts.headers)
        {
            route.metrics.hit.inc();
            rctx.cache = Some("HIT");
            return Ok(Step::Respond(cached_response(&hit, parts.method == Method::HEAD)));
        }
        route.metrics.miss.inc();
        // The headers a response's Vary may name, as this lookup saw them.
        *miss = Some(Miss { key, request_headers: parts.headers.clone() });
    }
    rctx.cache = Some("MISS");
    Ok(Step::Continue)
}

/// Stores the backend's response when the lookup missed and the response
/// may be stored; returns the response to send either way.
#[inline]
pub async fn store(
    ctx: &ProxyContext,
    rctx: &RequestCtx,
    route: &CompiledRoute,
    miss: Option<Miss>,
    response: Response<GatewayBody>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let (mut head, body) = response.into_parts();
    if let Some(x_cache) = rctx.cache {
        head.headers.insert(X_CACHE.clone(), HeaderValue::from_static(x_cache));
    }
    let (Some(miss), Some(settings)) = (miss, &route.cache) else {
        return Ok(Response::from_parts(head, body));
    };
    // A response to a request that took Authorization to the upstream
    // is stored only if it says it may be shared (RFC 9111 §3.5).
    let ttl = cache::response_ttl(
        head.status,
        &head.headers,
        settings.ttl,
        cache::carries_credentials(&miss.request_headers),
    );
    let Some(ttl) = ttl.filter(|_| declared_length(&head.headers).is_some_and(|len| len <= settings.max_body_bytes))
    else {
        return Ok(Response::from_parts(head, body));
    };
    // Small and cacheable: read it whole, store it, answer from memory.
    // hyper enforces the declared Content-Length, checked against the limit above.
    let bytes = body
        .collect()
        .await
        .map_err(|e| GatewayError::UpstreamUnavailable {
            target: rctx.upstream.as_deref().unwrap_or_default().to_string(),
            reason: e.to_string(),
        })?
        .to_bytes();
    let mut stored = head.headers.clone();
    stored.remove(&X_CACHE);
    let parts = cache::StoredParts { status: head.status, headers: stored, body: bytes.clone() };
    ctx.shared.cache.store(miss.key, &miss.request_headers, parts, ttl);
    Ok(Response::from_parts(head, full(bytes)))
}

fn cached_response(hit: &cache::CachedResponse, head_only: bool) -> Response<GatewayBody> {
    let body = if head_only { empty() } else { full(hit.body.clone()) };
    let mut response = Response::new(body);
    *response.status_mut() = hit.status;
    *response.headers_mut() = hit.headers.clone();
    response.headers_mut().insert(X_CACHE.clone(), HeaderValue::from_static("HIT"));
    response.headers_mut().insert(header::AGE, HeaderValue::from(hit.age_secs()));
    response
}
