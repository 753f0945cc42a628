//! **limit**: runs after `authorize`, so only a caller that may call the
//! route spends its quota, and before `cache`, so a cached answer is
//! counted like any other. Admits from this node's quota leases (DESIGN §5,
//! `crate::limits`): one unit of every request limit attached to the route,
//! its service, the consumer or the key, all or nothing, with no Raft round
//! trip unless a lease is empty (then a bounded wait for the grant in
//! flight). Token limits, budgets and limits scoped by model are left to
//! the AI backend, which reserves an estimate once it has read the request.

use tollgate_proto::config::v1::{LimitScope, LimitUnit};

use super::super::snapshot::{CompiledRoute, GatewaySnapshot};
use super::super::{ProxyContext, snapshot::CompiledConsumer};
use super::{PhaseResult, RequestCtx, Step};
use crate::limits::{Bucketed, Who};
use crate::plumbing::GatewayError;

#[inline]
pub async fn run(
    ctx: &ProxyContext,
    snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    route: &CompiledRoute,
) -> PhaseResult {
    if snapshot.limits.is_empty() {
        return Ok(Step::Continue);
    }
    admit(ctx, snapshot, rctx, route).await
}

async fn admit(
    ctx: &ProxyContext,
    snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    route: &CompiledRoute,
) -> PhaseResult {
    let api_key_id = rctx.api_key.as_ref().and_then(|k| k.meta.as_ref()).map(|m| m.id.as_str());
    let who = Who {
        route_id: &route.id,
        service_id: route.backend.service_id(),
        consumer_id: rctx.consumer.as_deref().map(CompiledConsumer::id).filter(|id| !id.is_empty()),
        api_key_id,
        client_ip: rctx.client.addr.ip(),
    };
    let limits = snapshot.limits.applicable(&who);
    // A prompt API's call is an AI call: its token limits and budgets are
    // reserved and reconciled by the AI gateway, as on AI routes.
    if route.backend.is_ai() || route.prompt.is_some() {
        let deferred = |b: &&Bucketed| b.limit.counts_usage() || b.limit.scope() == LimitScope::Model;
        rctx.ai_limits = limits.iter().filter(deferred).cloned().collect();
    }
    if limits.is_empty() {
        return Ok(Step::Continue);
    }
    let requests_only = |limit: &tollgate_proto::config::v1::Limit| {
        u64::from(limit.unit() == LimitUnit::Requests && limit.scope() != LimitScope::Model)
    };
    match ctx.shared.limiter.admit(&limits, requests_only).await {
        Ok(taken) => {
            rctx.limits = Some(taken);
            Ok(Step::Continue)
        }
        Err(refusal) => Err(GatewayError::RateLimited(refusal)),
    }
}
