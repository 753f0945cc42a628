//! Publish policies (DESIGN §7): rules a published service must keep. They
//! are checked on the state a command would leave, for every published
//! service the command touches (the service, its versions, the routes to it
//! and the limits on them), so a version cannot be published in breach of
//! them, nor a published one brought into breach later. A violation refuses
//! the whole command and names every rule broken.

use std::collections::BTreeMap;

use tollgate_proto::config::v1::{AuthMode, LimitUnit, PublishPolicy, Route, Service};

use super::Change;
use super::governance::service_is_published;
use crate::entities::AnyEntity;
use crate::error::ApplyError;
use crate::registry::Entity;
use crate::state::GatewayState;

/// Refuses `changes` (made to `before`, giving `after`) when a published
/// service they touch breaks an enabled policy.
pub(crate) fn check(before: &GatewayState, after: &GatewayState, changes: &[Change]) -> Result<(), ApplyError> {
    let policies: Vec<_> = after.publish_policies().filter(|p| !p.disabled).collect();
    if policies.is_empty() {
        return Ok(());
    }
    let mut violations = Vec::new();
    for (service_id, only_limits) in touched_services(before, after, changes) {
        let Some(service) = after.service(&service_id) else { continue };
        // A service without versions serves as it always did: it is live.
        if !service_is_published(after, &service_id) {
            continue;
        }
        for policy in &policies {
            let mut broken = violations_of(after, service, policy);
            // A limit changes only whether requests are limited: the other
            // rules are the service's own business, not the limit's.
            if only_limits {
                broken.retain(|v| v.contains("rate limit required"));
            }
            violations.extend(broken);
        }
    }
    if violations.is_empty() {
        return Ok(());
    }
    Err(ApplyError::FailedPrecondition(format!(
        "publish policies refuse this change ({} rule(s) broken): {}",
        violations.len(),
        violations.join("; ")
    )))
}

/// The services whose published form a change may affect, before or after,
/// each with whether only limits touched it.
fn touched_services(before: &GatewayState, after: &GatewayState, changes: &[Change]) -> BTreeMap<String, bool> {
    let mut services: BTreeMap<String, bool> = BTreeMap::new();
    let mut note = |entity: &AnyEntity, state: &GatewayState| {
        let (ids, by_limit): (Vec<String>, bool) = match entity {
            AnyEntity::Service(s) => (vec![s.id().to_string()], false),
            AnyEntity::ApiVersion(v) => (vec![v.service_id.clone()], false),
            AnyEntity::Route(r) => (r.backend_service_id().map(str::to_string).into_iter().collect(), false),
            AnyEntity::Limit(l) => {
                let mut ids = l.service_ids.clone();
                ids.extend(
                    l.route_ids
                        .iter()
                        .filter_map(|id| state.route(id))
                        .filter_map(|r| r.backend_service_id())
                        .map(str::to_string),
                );
                if l.global {
                    ids.extend(state.services().map(|s| s.id().to_string()));
                }
                (ids, true)
            }
            _ => (Vec::new(), false),
        };
        for id in ids {
            let only_limits = services.entry(id).or_insert(by_limit);
            *only_limits &= by_limit;
        }
    };
    for change in changes {
        let (kind, id) = match change {
            Change::Put(entity) => (entity.kind(), entity.id()),
            Change::Delete(kind, id) => (*kind, id.as_ref()),
        };
        if let Some(previous) = before.entity(kind, id) {
            note(&previous, before);
        }
        if let Some(current) = after.entity(kind, id) {
            note(&current, after);
        }
    }
    services
}

fn violations_of(state: &GatewayState, service: &Service, policy: &PublishPolicy) -> Vec<String> {
    let mut broken = Vec::new();
    let mut says = |rule: &str, what: String| {
        broken.push(format!("policy {:?} ({rule}): service {:?} {what}", policy.name, service.name));
    };
    let routes: Vec<&Route> =
        state.routes().filter(|r| r.backend_service_id() == Some(service.id())).map(|r| r.as_ref()).collect();
    if policy.require_auth {
        for route in routes.iter().filter(|r| !authenticates(r)) {
            says("authentication required", format!("is reachable without credentials through route {:?}", route.name));
        }
    }
    if policy.require_rate_limit {
        for route in routes.iter().filter(|r| !request_limited(state, service, r)) {
            says("rate limit required", format!("has no request limit on route {:?}", route.name));
        }
    }
    if policy.require_openapi {
        let undocumented = state.api_versions().filter(|v| {
            v.service_id == service.id()
                && super::governance::is_live(v.state.try_into().unwrap_or_default())
                && v.openapi.trim().is_empty()
        });
        for version in undocumented {
            says("OpenAPI document required", format!("version {:?} has no OpenAPI document", version.version));
        }
    }
    if !policy.allowed_upstream_hosts.is_empty() {
        for target in service.targets.iter().filter(|t| !host_allowed(&policy.allowed_upstream_hosts, &t.host)) {
            says(
                "upstream hosts restricted",
                format!("sends to {:?}, which is not one of {:?}", target.host, policy.allowed_upstream_hosts),
            );
        }
    }
    if policy.require_upstream_tls && !service.tls.as_ref().is_some_and(|t| t.enabled) {
        says("upstream TLS required", "speaks plain HTTP to its targets".to_string());
    }
    broken
}

fn authenticates(route: &Route) -> bool {
    matches!(
        AuthMode::try_from(route.auth).unwrap_or(AuthMode::Unspecified),
        AuthMode::ApiKey | AuthMode::Jwt | AuthMode::ApiKeyOrJwt
    )
}

fn request_limited(state: &GatewayState, service: &Service, route: &Route) -> bool {
    state.limits().any(|l| {
        l.unit == LimitUnit::Requests as i32
            && (l.global
                || l.service_ids.iter().any(|id| id == service.id())
                || l.route_ids.iter().any(|id| id == route.id()))
    })
}

fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    allowed.iter().any(|rule| match rule.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => *rule == host,
    })
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn wildcards_match_whole_labels_below_the_suffix() {
        let allowed = ["api.internal".to_string(), "*.corp.example".to_string()];
        assert!(host_allowed(&allowed, "api.internal"));
        assert!(host_allowed(&allowed, "API.internal"));
        assert!(host_allowed(&allowed, "a.corp.example"));
        assert!(host_allowed(&allowed, "a.b.corp.example"));
        assert!(!host_allowed(&allowed, "corp.example"));
        assert!(!host_allowed(&allowed, "evilcorp.example"));
        assert!(!host_allowed(&allowed, "api.internal.evil"));
    }
}
