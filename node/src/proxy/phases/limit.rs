//! **limit**: runs after `authorize`, so only a caller that may call the
//! route spends its quota, and before `cache`, so a cached answer is
//! counted like any other. Will admit from local quota leases (DESIGN §5):
//! request and token rate limits and budgets, without a Raft round trip.
//! No limit is defined yet, so every request continues.

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
