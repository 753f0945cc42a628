//! **lifecycle**: runs once a route matched, before anyone is authenticated.
//! Picks the API version the request asks for when the route's service has
//! versions (`proxy::versions`: the path segment `match` found, else the
//! version header, else the default) and applies its lifecycle: a retired
//! version answers 410 naming its successor, an unknown one 404, a
//! deprecated one is served with `Deprecation`, `Sunset` and `Link`
//! headers (added to the response by `handle`), and a draft is marked for
//! `authorize`, which lets only a preview key through. When the service
//! names versions by header, the header the upstream receives is set to the
//! version served, whatever the client sent (a client's second value, or a
//! header naming another version than the path, must not reach an
//! upstream that reads it; two values are refused). Services without
//! versions continue untouched.

use super::super::snapshot::{CompiledRoute, GatewaySnapshot};
use super::super::versions::VersionRefusal;
use super::{PhaseResult, RequestCtx, Step};
use crate::plumbing::GatewayError;

#[inline]
pub fn run(
    _snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    route: &CompiledRoute,
    parts: &mut http::request::Parts,
) -> PhaseResult {
    let Some(versions) = &route.versions else { return Ok(Step::Continue) };
    let version = versions.select(rctx.version.take(), &parts.headers).map_err(refused)?;
    if let Some(refusal) = version.refusal() {
        return Err(refused(refusal));
    }
    // Only a preview key may reach a draft: without any credential, the
    // answer is the 404 of a version that does not exist, not a 401 that
    // would tell the draft is there.
    if version.is_draft() && !crate::proxy::cache::carries_credentials(&parts.headers) {
        return Err(GatewayError::VersionNotFound(format!("API version {:?} does not exist", version.name)));
    }
    if let (Some(header), Some(value)) = (&versions.header, &version.header_value) {
        parts.headers.insert(header.clone(), value.clone());
        rctx.sent.mark(header);
    }
    rctx.deprecation = version.deprecation_headers(parts.uri.path(), rctx.version_segment);
    rctx.version = Some(version);
    Ok(Step::Continue)
}

fn refused(refusal: VersionRefusal) -> GatewayError {
    match refusal {
        VersionRefusal::NotFound(message) => GatewayError::VersionNotFound(message),
        VersionRefusal::Retired { version, successor } => GatewayError::VersionRetired { version, successor },
        VersionRefusal::Ambiguous(message) => GatewayError::BadRequest(message),
    }
}
