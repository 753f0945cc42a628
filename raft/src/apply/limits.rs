//! Rate limits and budgets as entities: what a valid limit is, and what
//! deleting something a limit is attached to means.

use tollgate_proto::config::v1::{
    AuditEntry, Limit, LimitScope, LimitUnit, LimitWindow, QuotaWindow, UsageCounter, UsageWatermark,
};

use super::{Change, Rules};
use crate::entities::EntityKind;
use crate::error::ApplyError;
use crate::state::GatewayState;
use crate::validate;

/// Attachments per limit: a limit for more than this many of one kind is
/// better made global or attached to their service.
const MAX_ATTACHMENTS: usize = 256;

impl Rules for Limit {
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        validate::name("name", &self.name)?;
        if self.description.len() > 1024 {
            return Err(ApplyError::invalid("description", "must be at most 1024 bytes"));
        }
        let unit = LimitUnit::try_from(self.unit).unwrap_or(LimitUnit::Unspecified);
        let window = LimitWindow::try_from(self.window).unwrap_or(LimitWindow::Unspecified);
        let scope = LimitScope::try_from(self.scope).unwrap_or(LimitScope::Unspecified);
        if unit == LimitUnit::Unspecified {
            return Err(ApplyError::invalid(
                "unit",
                "say what the limit counts: requests, input_tokens, output_tokens, total_tokens or cost_micros",
            ));
        }
        if window == LimitWindow::Unspecified {
            return Err(ApplyError::invalid("window", "say per what: second, minute, hour, day or month"));
        }
        if scope == LimitScope::Unspecified {
            return Err(ApplyError::invalid(
                "scope",
                "say whose use is counted: api_key, consumer, route, service, model or client_ip",
            ));
        }
        if self.amount == 0 {
            return Err(ApplyError::invalid("amount", "must be at least 1 (delete the limit to stop admitting)"));
        }
        if window == LimitWindow::Month && unit != LimitUnit::CostMicros {
            return Err(ApplyError::invalid("window", "calendar months are for budgets (unit cost_micros)"));
        }
        if unit == LimitUnit::CostMicros {
            if !matches!(scope, LimitScope::ApiKey | LimitScope::Consumer) {
                return Err(ApplyError::invalid("scope", "a budget is per api_key or per consumer"));
            }
            if !matches!(window, LimitWindow::Day | LimitWindow::Month) {
                return Err(ApplyError::invalid("window", "a budget is per day or per month (UTC)"));
            }
        }
        if self.warn_at_percent >= 100 {
            return Err(ApplyError::invalid("warn_at_percent", "must be 1 to 99, or 0 for no warning"));
        }
        if self.warn_at_percent > 0 && unit != LimitUnit::CostMicros {
            return Err(ApplyError::invalid("warn_at_percent", "warnings are for budgets (unit cost_micros)"));
        }
        if self.default_output_tokens > 10_000_000 {
            return Err(ApplyError::invalid("default_output_tokens", "must be at most 10000000"));
        }
        super::governance::team_ref(state, &self.team_id)?;
        validate_attachments(self, state)
    }

    fn on_delete(state: &GatewayState, id: &str) -> Result<Vec<Change>, ApplyError> {
        Ok(quota_of_limit(state, id))
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        (arbitrary_id(), arbitrary_name(), 0i32..7, 0u64..20, 0i32..7, 0i32..8, arbitrary_id(), any::<bool>())
            .prop_map(|(id, name, unit, amount, window, scope, attached, global)| Limit {
                meta: meta(&id),
                name,
                unit,
                amount,
                window,
                scope,
                route_ids: if global { Vec::new() } else { vec![attached] },
                global,
                ..Default::default()
            })
            .boxed()
    }
}

fn validate_attachments(limit: &Limit, state: &GatewayState) -> Result<(), ApplyError> {
    let lists: [(&str, &[String], EntityKind); 4] = [
        ("route_ids", &limit.route_ids, EntityKind::Route),
        ("service_ids", &limit.service_ids, EntityKind::Service),
        ("consumer_ids", &limit.consumer_ids, EntityKind::Consumer),
        ("api_key_ids", &limit.api_key_ids, EntityKind::ApiKey),
    ];
    let attached: usize = lists.iter().map(|(_, ids, _)| ids.len()).sum();
    if attached == 0 && !limit.global {
        return Err(ApplyError::invalid(
            "route_ids",
            "attach the limit to routes, services, consumers or keys, or make it global",
        ));
    }
    if attached > 0 && limit.global {
        return Err(ApplyError::invalid("global", "a global limit applies everywhere: drop the attachments"));
    }
    for (field, ids, kind) in lists {
        if ids.len() > MAX_ATTACHMENTS {
            return Err(ApplyError::invalid(field, format!("at most {MAX_ATTACHMENTS}")));
        }
        for id in ids {
            if state.entity(kind, id).is_none_or(|e| e.id() != id) {
                return Err(ApplyError::not_found(kind, id));
            }
        }
    }
    Ok(())
}

/// Whether `limit` names `id` among its attachments of `kind`.
fn is_attached_to(limit: &Limit, kind: EntityKind, id: &str) -> bool {
    let ids = match kind {
        EntityKind::Route => &limit.route_ids,
        EntityKind::Service => &limit.service_ids,
        EntityKind::Consumer => &limit.consumer_ids,
        EntityKind::ApiKey => &limit.api_key_ids,
        _ => return false,
    };
    ids.iter().any(|attached| attached == id)
}

/// Refuses to delete what a limit is attached to: the limit would silently
/// stop applying (or, with nothing left, apply nowhere).
pub(crate) fn refuse_if_limited(state: &GatewayState, kind: EntityKind, ids: &[&str]) -> Result<(), ApplyError> {
    let limits: Vec<&str> =
        state.limits().filter(|l| ids.iter().any(|id| is_attached_to(l, kind, id))).map(|l| l.name.as_str()).collect();
    if limits.is_empty() {
        return Ok(());
    }
    Err(ApplyError::FailedPrecondition(format!(
        "{kind} {} is attached to limit(s) {}; detach it with `tollgate ctl limit update` or delete the limits first",
        ids.join(", "),
        limits.join(", ")
    )))
}

/// Written only by the cluster's own commands (quota.rs, usage.rs, audit.rs): there is
/// no create or update to validate.
macro_rules! system_entity {
    ($($ty:ident),+) => {$(
        impl Rules for $ty {
            fn validate(&self, _state: &GatewayState) -> Result<(), ApplyError> {
                Err(ApplyError::invalid("op", concat!(stringify!($ty), " is written by the cluster, not by admins")))
            }

            #[cfg(test)]
            fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
                proptest::strategy::Strategy::boxed(proptest::strategy::Just($ty::default()))
            }
        }
    )+};
}
system_entity!(QuotaWindow, UsageCounter, UsageWatermark, AuditEntry);

/// A limit's quota windows go with it.
pub(crate) fn quota_of_limit(state: &GatewayState, limit_id: &str) -> Vec<Change> {
    state
        .quota_windows()
        .filter(|w| w.limit_id == limit_id)
        .map(|w| Change::delete::<QuotaWindow>(crate::registry::Entity::id(w.as_ref())))
        .collect()
}
