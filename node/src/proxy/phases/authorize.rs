//! **authorize**: runs after `authenticate`. Whether this caller may send
//! this request here: the route's IP allow and deny lists, and the request
//! body's declared size (refused before anything is read or forwarded; an
//! undeclared body is cut off at the same limit as it streams).

use super::super::ProxyContext;
use super::super::snapshot::CompiledRoute;
use super::{PhaseResult, RequestCtx, Step};
use crate::plumbing::GatewayError;

#[inline]
pub fn run(ctx: &ProxyContext, rctx: &RequestCtx, route: &CompiledRoute, parts: &http::request::Parts) -> PhaseResult {
    if let Some(filter) = &route.ip
        && !filter.permits(rctx.client.addr.ip())
    {
        return Err(GatewayError::Forbidden("your IP address is not allowed on this route"));
    }
    let limit = ctx.max_body_bytes;
    if declared_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    Ok(Step::Continue)
}

#[inline]
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
