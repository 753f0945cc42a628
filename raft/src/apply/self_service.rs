//! What a consumer may do for itself in the developer portal (actor
//! `consumer <id>`, role `ADMIN_ROLE_CONSUMER`): ask to subscribe to a
//! published API, end its own subscriptions, and create and delete its own
//! API keys. Everything else is refused.
//!
//! A consumer may not gain through self-service what its team did not give
//! it: a new key is no preview key, reaches no model and lives no longer
//! than the keys it has, and cannot be minted while a per-key limit could
//! count it (a fresh key would be a fresh quota). Decisions stay the
//! service team's: a consumer never approves itself where the service asks
//! a person.

use tollgate_proto::config::v1::{ApiKey, Subscription, SubscriptionMode, SubscriptionState};
use tollgate_proto::raft::v1::command::Op;

use super::access::Actor;
use crate::error::ApplyError;
use crate::registry::Entity;
use crate::state::GatewayState;

/// Live keys a consumer may hold through the portal: enough for every
/// environment it runs, few enough that a loop cannot fill the state.
pub const MAX_SELF_SERVICE_KEYS: usize = 20;

/// The actor name of a consumer acting for itself.
pub fn consumer_actor(consumer_id: &str) -> String {
    format!("consumer {consumer_id}")
}

pub(crate) fn check(state: &GatewayState, actor: &Actor, op: &Op) -> Result<(), ApplyError> {
    let Some(me) = actor.name.strip_prefix("consumer ") else {
        return Err(denied(actor, "a consumer actor is named \"consumer <id>\""));
    };
    match op {
        Op::CreateSubscription(s) => create_subscription(state, actor, me, s),
        Op::UpdateSubscription(s) => update_subscription(state, actor, me, s),
        Op::CreateApiKey(k) => create_key(state, actor, me, k),
        Op::DeleteApiKey(id) => match state.api_key(id) {
            Some(key) if key.consumer_id == me => Ok(()),
            Some(_) => Err(denied(actor, "the key belongs to another consumer")),
            None => Ok(()), // apply says not found
        },
        _ => Err(denied(
            actor,
            "a consumer may only subscribe, end its own subscriptions, and create and delete its own keys",
        )),
    }
}

fn create_subscription(state: &GatewayState, actor: &Actor, me: &str, s: &Subscription) -> Result<(), ApplyError> {
    if s.consumer_id != me {
        return Err(denied(actor, "a consumer subscribes only itself"));
    }
    let mode = offered(state, actor, &s.service_id)?;
    let wanted = SubscriptionState::try_from(s.state).unwrap_or(SubscriptionState::Unspecified);
    let allowed = match wanted {
        SubscriptionState::Pending => s.decided_by.is_empty(),
        SubscriptionState::Approved => mode == SubscriptionMode::AutoApprove && s.decided_by == actor.name,
        _ => false,
    };
    if !allowed || !s.reason.is_empty() {
        return Err(denied(
            actor,
            "a new subscription is pending (approved at once only where the service approves automatically)",
        ));
    }
    Ok(())
}

/// A consumer asks again after a rejection or its own cancellation, or ends
/// a subscription; deciding is the service team's.
fn update_subscription(state: &GatewayState, actor: &Actor, me: &str, s: &Subscription) -> Result<(), ApplyError> {
    let Some(existing) = state.subscription(s.id()) else { return Ok(()) }; // apply says not found
    if existing.consumer_id != me || s.consumer_id != me || s.service_id != existing.service_id {
        return Err(denied(actor, "the subscription is another consumer's"));
    }
    let from = SubscriptionState::try_from(existing.state).unwrap_or(SubscriptionState::Unspecified);
    let to = SubscriptionState::try_from(s.state).unwrap_or(SubscriptionState::Unspecified);
    let allowed = match (from, to) {
        (SubscriptionState::Rejected | SubscriptionState::Revoked, SubscriptionState::Pending) => {
            offered(state, actor, &s.service_id)?;
            s.decided_by.is_empty() && s.reason.is_empty()
        }
        (SubscriptionState::Pending | SubscriptionState::Approved, SubscriptionState::Revoked) => {
            s.decided_by == actor.name && s.reason == existing.reason
        }
        _ => false,
    };
    if !allowed {
        return Err(denied(
            actor,
            "a consumer may ask again after a rejection or cancellation, or cancel; the service's team decides",
        ));
    }
    Ok(())
}

/// The subscription mode of a service a consumer may subscribe to: one with
/// a live version (in the catalog) that takes subscriptions.
fn offered(state: &GatewayState, actor: &Actor, service_id: &str) -> Result<SubscriptionMode, ApplyError> {
    let service = state.service(service_id).ok_or_else(|| denied(actor, "no such API in the catalog"))?;
    let live = state
        .api_versions()
        .any(|v| v.service_id == service_id && super::governance::is_live(super::governance::version_state(v)));
    let mode = SubscriptionMode::try_from(service.subscription).unwrap_or(SubscriptionMode::Unspecified);
    if !live {
        return Err(denied(actor, "no such API in the catalog"));
    }
    if mode == SubscriptionMode::Unspecified {
        return Err(ApplyError::FailedPrecondition(format!(
            "API {:?} takes no subscriptions: any key of a consumer may call it",
            service.name
        )));
    }
    Ok(mode)
}

/// A new key is made from what the consumer's keys already have: it needs
/// one (not disabled) to start from, reaches no model none of them
/// reaches, lives no longer than the longest-lived of them, and is refused
/// while a per-key limit could count it (a fresh key would be a fresh quota).
fn create_key(state: &GatewayState, actor: &Actor, me: &str, key: &ApiKey) -> Result<(), ApplyError> {
    if key.consumer_id != me {
        return Err(denied(actor, "a consumer creates keys only for itself"));
    }
    if key.preview {
        return Err(denied(actor, "preview keys reach drafts: the service's team issues them"));
    }
    let own: Vec<_> = state.api_keys().filter(|k| k.consumer_id == me).collect();
    if own.len() >= MAX_SELF_SERVICE_KEYS {
        return Err(ApplyError::FailedPrecondition(format!(
            "a consumer holds at most {MAX_SELF_SERVICE_KEYS} keys: delete one first"
        )));
    }
    let usable: Vec<_> = own.iter().filter(|k| !k.disabled).collect();
    if usable.is_empty() {
        return Err(denied(actor, "a consumer with no usable key gets its next one from its team"));
    }
    if let Some(limit) = state.limits().find(|l| counts_new_keys(l, me, &own)) {
        return Err(ApplyError::FailedPrecondition(format!(
            "limit {:?} counts each API key apart, and a new key would be a new quota: ask the API's team for \
             another key",
            limit.name
        )));
    }
    let unrestricted = usable.iter().any(|k| k.allowed_models.is_empty());
    let granted = |model: &String| usable.iter().any(|k| k.allowed_models.iter().any(|m| m == model));
    if !unrestricted && (key.allowed_models.is_empty() || !key.allowed_models.iter().all(granted)) {
        return Err(denied(actor, "a new key may reach only models the consumer's keys already reach"));
    }
    let longest = if usable.iter().any(|k| k.expires_at_ms == 0) {
        0
    } else {
        usable.iter().map(|k| k.expires_at_ms).max().unwrap_or(0)
    };
    if longest != 0 && (key.expires_at_ms == 0 || key.expires_at_ms > longest) {
        return Err(denied(actor, "a new key may live no longer than the consumer's longest-lived key"));
    }
    Ok(())
}

/// Whether a new key would escape `limit` or get a quota of its own from
/// it: a limit bound to the consumer's keys (the new one is not), or one
/// that counts each key apart (global, or on routes, services or the
/// consumer).
fn counts_new_keys(limit: &tollgate_proto::config::v1::Limit, me: &str, own: &[&std::sync::Arc<ApiKey>]) -> bool {
    let bound_to_keys = limit.api_key_ids.iter().any(|id| own.iter().any(|k| k.id() == id));
    let per_key = limit.scope == tollgate_proto::config::v1::LimitScope::ApiKey as i32
        && (limit.global
            || !limit.route_ids.is_empty()
            || !limit.service_ids.is_empty()
            || limit.consumer_ids.iter().any(|c| c == me));
    bound_to_keys || per_key
}

fn denied(actor: &Actor, why: &str) -> ApplyError {
    ApplyError::PermissionDenied(format!("{} may not do this: {why}", actor.name))
}
