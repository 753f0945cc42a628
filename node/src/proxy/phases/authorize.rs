//! **authorize**: runs after `authenticate`. Whether this caller may send
//! this request here: the route's IP allow and deny lists; a draft API
//! version only for a preview key of the service's team (anyone else gets
//! the 404 of a version that does not exist); on a service that needs subscriptions, only a
//! consumer whose subscription is approved in this node's snapshot (so an
//! approval or a revocation applies on every node as it commits); and the
//! request body's declared size (refused before anything is read or
//! forwarded; an undeclared body is cut off at the same limit as it streams).

use super::super::ProxyContext;
use super::super::snapshot::{CompiledRoute, GatewaySnapshot, subscription_key};
use super::{PhaseResult, RequestCtx, Step};
use crate::plumbing::GatewayError;

#[inline]
pub fn run(
    ctx: &ProxyContext,
    snapshot: &GatewaySnapshot,
    rctx: &RequestCtx,
    route: &CompiledRoute,
    parts: &http::request::Parts,
) -> PhaseResult {
    if let Some(filter) = &route.ip
        && !filter.permits(rctx.client.addr.ip())
    {
        return Err(GatewayError::Forbidden("your IP address is not allowed on this route"));
    }
    if let Some(version) = rctx.version.as_ref().filter(|v| v.is_draft())
        && !previews(rctx, route)
    {
        return Err(GatewayError::VersionNotFound(format!("API version {:?} does not exist", version.name)));
    }
    // The team trying its own draft needs no subscription to it.
    let own_draft = rctx.version.as_ref().is_some_and(|v| v.is_draft());
    if let Some(service_id) = route.subscription_service.as_ref().filter(|_| !own_draft) {
        subscribed(snapshot, rctx, service_id)?;
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

/// A preview key of a consumer of the service's own team: the team that
/// writes a draft tries it; no other team's key sees it.
fn previews(rctx: &RequestCtx, route: &CompiledRoute) -> bool {
    rctx.api_key.as_ref().is_some_and(|k| k.preview)
        && rctx.consumer.as_ref().is_some_and(|c| c.consumer.team_id == *route.service_team)
}

/// Whether the caller's consumer holds an approved subscription to the
/// service. A caller that is no stored consumer (an open route, a JWT that
/// names none) holds none.
fn subscribed(snapshot: &GatewaySnapshot, rctx: &RequestCtx, service_id: &str) -> Result<(), GatewayError> {
    let consumer = rctx.consumer.as_ref().filter(|c| !c.anonymous && !c.id().is_empty());
    match consumer {
        Some(c) if snapshot.approved.contains(subscription_key(service_id, c.id()).as_str()) => Ok(()),
        Some(c) => Err(GatewayError::NotSubscribed { consumer: c.name().to_string() }),
        None => Err(GatewayError::NotSubscribed { consumer: String::new() }),
    }
}
