//! **lifecycle**: runs once a route matched, before anyone is authenticated.
//! Will answer for the matched API version's lifecycle (DESIGN §2: a draft
//! is not routable, a deprecated version is served with `Deprecation` and
//! `Sunset`, a retired one answers 410 naming its successor). Routes carry
//! no API version yet, so every request continues.

use super::super::snapshot::{CompiledRoute, GatewaySnapshot};
use super::{PhaseResult, RequestCtx, Step};

#[inline]
pub fn run(
    _snapshot: &GatewaySnapshot,
    _rctx: &mut RequestCtx,
    _route: &CompiledRoute,
    _parts: &http::request::Parts,
) -> PhaseResult {
    Ok(Step::Continue)
}
