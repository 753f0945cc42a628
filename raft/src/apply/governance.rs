//! Rules of the governance entities (DESIGN §7): teams, admin tokens, API
//! versions and their lifecycle, subscriptions and publish policies.

use tollgate_proto::config::v1::{
    AdminRole, AdminToken, ApiVersion, PublishPolicy, Subscription, SubscriptionState, Team, VersionState,
};

use super::{Change, Rules};
use crate::entities::EntityKind;
use crate::error::ApplyError;
use crate::registry::Entity;
use crate::state::GatewayState;
use crate::validate;

/// An OpenAPI document may be this large (the Raft log carries it whole).
pub const MAX_OPENAPI_BYTES: usize = 1 << 20;

/// Refuses a team id that names no team; empty means "no team".
pub(crate) fn team_ref(state: &GatewayState, team_id: &str) -> Result<(), ApplyError> {
    if !team_id.is_empty() && state.team(team_id).is_none() {
        return Err(ApplyError::not_found(EntityKind::Team, team_id));
    }
    Ok(())
}

impl Rules for Team {
    fn validate(&self, _state: &GatewayState) -> Result<(), ApplyError> {
        validate::name("name", &self.name)?;
        description(&self.description)
    }

    /// A team that still owns something, or that a token acts for, stays.
    fn on_delete(state: &GatewayState, id: &str) -> Result<Vec<Change>, ApplyError> {
        let owned = |kind: EntityKind, names: Vec<&str>| -> Result<(), ApplyError> {
            match names.first() {
                None => Ok(()),
                Some(first) => Err(ApplyError::FailedPrecondition(format!(
                    "team {id:?} still owns {} {kind} ({first:?}{}); move them to another team or delete them first",
                    names.len(),
                    if names.len() > 1 { ", …" } else { "" }
                ))),
            }
        };
        owned(EntityKind::Service, state.services().filter(|s| s.team_id == id).map(|s| s.name.as_str()).collect())?;
        owned(EntityKind::Route, state.routes().filter(|r| r.team_id == id).map(|r| r.name.as_str()).collect())?;
        owned(EntityKind::Consumer, state.consumers().filter(|c| c.team_id == id).map(|c| c.name.as_str()).collect())?;
        owned(EntityKind::Limit, state.limits().filter(|l| l.team_id == id).map(|l| l.name.as_str()).collect())?;
        owned(
            EntityKind::AdminToken,
            state.admin_tokens().filter(|t| t.team_id == id && !t.revoked).map(|t| t.name.as_str()).collect(),
        )?;
        Ok(Vec::new())
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        (arbitrary_id(), arbitrary_name())
            .prop_map(|(id, name)| Team { meta: meta(&id), name, ..Default::default() })
            .boxed()
    }
}

impl Rules for AdminToken {
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        validate::name("name", &self.name)?;
        if super::access::RESERVED_ACTORS.contains(&self.name.as_str()) || self.name.starts_with("node") {
            return Err(ApplyError::invalid(
                "name",
                "bootstrap, cluster, admin and names starting with \"node\" name the cluster's own actors in the audit trail; pick another",
            ));
        }
        let role = AdminRole::try_from(self.role).unwrap_or(AdminRole::Unspecified);
        match role {
            AdminRole::Unspecified | AdminRole::Consumer => {
                return Err(ApplyError::invalid("role", "say what the token may do: admin, operator or viewer"));
            }
            AdminRole::Operator if self.team_id.is_empty() => {
                return Err(ApplyError::invalid("team_id", "an operator acts for a team: name it (--team)"));
            }
            AdminRole::Admin | AdminRole::Viewer if !self.team_id.is_empty() => {
                return Err(ApplyError::invalid(
                    "team_id",
                    "only operators act for a team; admins and viewers have none",
                ));
            }
            _ => {}
        }
        team_ref(state, &self.team_id)?;
        if self.secret_sha256.len() != 32 {
            return Err(ApplyError::invalid("secret_sha256", "must be a 32-byte SHA-256 digest"));
        }
        if self.expires_at_ms < 0 {
            return Err(ApplyError::invalid("expires_at_ms", "must be 0 (never) or a Unix time in milliseconds"));
        }
        Ok(())
    }

    /// A token's identity and powers are fixed: what it did stays
    /// attributable. Only its expiry may change, and it may be revoked, once.
    fn check_update(&self, existing: &AdminToken) -> Result<(), ApplyError> {
        if self.name != existing.name
            || self.role != existing.role
            || self.team_id != existing.team_id
            || self.secret_sha256 != existing.secret_sha256
        {
            return Err(ApplyError::invalid(
                "admin_token",
                "a token's name, role, team and secret cannot change; create a new token and revoke this one",
            ));
        }
        if existing.revoked && !self.revoked {
            return Err(ApplyError::invalid("revoked", "a revoked token stays revoked; create a new one"));
        }
        Ok(())
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        (arbitrary_id(), arbitrary_name(), 0i32..4, prop::option::of(arbitrary_id()), any::<bool>())
            .prop_map(|(id, name, role, team, revoked)| AdminToken {
                meta: meta(&id),
                name,
                role,
                team_id: team.unwrap_or_default(),
                secret_sha256: vec![9; 32],
                revoked,
                ..Default::default()
            })
            .boxed()
    }
}

pub(crate) fn version_state(v: &ApiVersion) -> VersionState {
    VersionState::try_from(v.state).unwrap_or(VersionState::Unspecified)
}

/// Whether requests may reach a version of this state (with headers, for a
/// deprecated one).
pub fn is_live(state: VersionState) -> bool {
    matches!(state, VersionState::Published | VersionState::Deprecated)
}

/// A service is published while one of its versions is live, or, when it has
/// no versions at all, as it always was.
pub fn service_is_published(state: &GatewayState, service_id: &str) -> bool {
    let mut versions = state.api_versions().filter(|v| v.service_id == service_id).peekable();
    versions.peek().is_none() || versions.any(|v| is_live(version_state(v)))
}

impl Rules for ApiVersion {
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        let service = state
            .service(&self.service_id)
            .ok_or_else(|| ApplyError::not_found(EntityKind::Service, &self.service_id))?;
        // Without it requests would not pick versions, and a draft or a
        // retired version would be served like any other.
        if service.versioning.is_none() {
            return Err(ApplyError::FailedPrecondition(format!(
                "service {:?} does not say how requests pick a version: set its versioning first",
                service.name
            )));
        }
        validate::name("version", &self.version)?;
        let lifecycle = version_state(self);
        if lifecycle == VersionState::Unspecified {
            return Err(ApplyError::invalid("state", "must be draft, published, deprecated or retired"));
        }
        if self.openapi.len() > MAX_OPENAPI_BYTES {
            return Err(ApplyError::invalid("openapi", "the document must be at most 1 MiB"));
        }
        description(&self.description)?;
        if self.sunset_at_ms < 0 || self.deprecated_at_ms < 0 {
            return Err(ApplyError::invalid("sunset_at_ms", "times are Unix milliseconds, or 0"));
        }
        if matches!(lifecycle, VersionState::Deprecated | VersionState::Retired) && self.deprecated_at_ms == 0 {
            return Err(ApplyError::invalid("deprecated_at_ms", "a deprecated or retired version says since when"));
        }
        let siblings = || state.api_versions().filter(|v| v.service_id == self.service_id && v.id() != self.id());
        if siblings().any(|v| v.version == self.version) {
            return Err(ApplyError::AlreadyExists { kind: EntityKind::ApiVersion, name: self.version.clone() });
        }
        if !self.successor.is_empty() && !siblings().any(|v| v.version == self.successor) {
            return Err(ApplyError::invalid(
                "successor",
                format!("{:?} is not another version of this service", self.successor),
            ));
        }
        Ok(())
    }

    /// One step forward at a time, so that no client meets a retirement it
    /// was never warned of by a deprecation.
    fn check_update(&self, existing: &ApiVersion) -> Result<(), ApplyError> {
        if self.service_id != existing.service_id || self.version != existing.version {
            return Err(ApplyError::invalid("version", "a version's service and name cannot change; create another"));
        }
        let (from, to) = (version_state(existing), version_state(self));
        let allowed = from == to
            || matches!(
                (from, to),
                (VersionState::Draft, VersionState::Published)
                    | (VersionState::Published, VersionState::Deprecated)
                    | (VersionState::Deprecated, VersionState::Retired)
            );
        if !allowed {
            return Err(ApplyError::FailedPrecondition(format!(
                "version {:?} cannot go from {} to {}: versions go draft → published → deprecated → retired, one step at a time",
                self.version,
                state_name(from),
                state_name(to)
            )));
        }
        Ok(())
    }

    /// Clients may depend on a live version: retire it first.
    fn on_delete(state: &GatewayState, id: &str) -> Result<Vec<Change>, ApplyError> {
        let version = state.api_version(id).ok_or_else(|| ApplyError::not_found(EntityKind::ApiVersion, id))?;
        if is_live(version_state(version)) {
            return Err(ApplyError::FailedPrecondition(format!(
                "version {:?} is {}: deprecate and retire it before deleting it",
                version.version,
                state_name(version_state(version))
            )));
        }
        Ok(Vec::new())
    }

    fn label(&self, _action: super::Action) -> String {
        format!("{} of service {}", self.version, self.service_id)
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        (arbitrary_id(), arbitrary_id(), arbitrary_name(), 0i32..5, any::<bool>())
            .prop_map(|(id, service_id, version, state, dated)| ApiVersion {
                meta: meta(&id),
                service_id,
                version,
                state,
                deprecated_at_ms: if dated { 1 } else { 0 },
                ..Default::default()
            })
            .boxed()
    }
}

pub fn state_name(state: VersionState) -> &'static str {
    match state {
        VersionState::Unspecified => "unspecified",
        VersionState::Draft => "draft",
        VersionState::Published => "published",
        VersionState::Deprecated => "deprecated",
        VersionState::Retired => "retired",
    }
}

fn subscription_state(s: &Subscription) -> SubscriptionState {
    SubscriptionState::try_from(s.state).unwrap_or(SubscriptionState::Unspecified)
}

impl Rules for Subscription {
    fn validate(&self, state: &GatewayState) -> Result<(), ApplyError> {
        if state.service(&self.service_id).is_none() {
            return Err(ApplyError::not_found(EntityKind::Service, &self.service_id));
        }
        if state.consumer(&self.consumer_id).is_none() {
            return Err(ApplyError::not_found(EntityKind::Consumer, &self.consumer_id));
        }
        let wanted = subscription_state(self);
        if wanted == SubscriptionState::Unspecified {
            return Err(ApplyError::invalid("state", "must be pending, approved, rejected or revoked"));
        }
        if self.reason.len() > 1024 || self.decided_by.len() > validate::MAX_NAME_LEN {
            return Err(ApplyError::invalid("reason", "must be at most 1024 bytes"));
        }
        if matches!(wanted, SubscriptionState::Pending | SubscriptionState::Approved)
            && !service_is_published(state, &self.service_id)
        {
            return Err(ApplyError::FailedPrecondition(format!(
                "service {:?} has no published version to subscribe to",
                self.service_id
            )));
        }
        let duplicate = state
            .subscriptions()
            .any(|s| s.service_id == self.service_id && s.consumer_id == self.consumer_id && s.id() != self.id());
        if duplicate {
            return Err(ApplyError::AlreadyExists {
                kind: EntityKind::Subscription,
                name: format!("{} to {}", self.consumer_id, self.service_id),
            });
        }
        Ok(())
    }

    fn check_update(&self, existing: &Subscription) -> Result<(), ApplyError> {
        if self.service_id != existing.service_id || self.consumer_id != existing.consumer_id {
            return Err(ApplyError::invalid("subscription", "its service and consumer cannot change"));
        }
        use SubscriptionState::*;
        let (from, to) = (subscription_state(existing), subscription_state(self));
        let allowed = from == to
            || matches!(
                (from, to),
                (Pending, Approved | Rejected | Revoked)
                    | (Approved, Revoked)
                    | (Rejected | Revoked, Pending | Approved)
            );
        if !allowed {
            return Err(ApplyError::FailedPrecondition(format!(
                "a subscription cannot go from {from:?} to {to:?}: pending → approved | rejected, approved → revoked, \
                 and a rejected or revoked one may be asked for again"
            )));
        }
        Ok(())
    }

    fn label(&self, _action: super::Action) -> String {
        format!("{} to {}", self.consumer_id, self.service_id)
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{arbitrary_id, meta};
        (arbitrary_id(), arbitrary_id(), arbitrary_id(), 0i32..5)
            .prop_map(|(id, service_id, consumer_id, state)| Subscription {
                meta: meta(&id),
                service_id,
                consumer_id,
                state,
                ..Default::default()
            })
            .boxed()
    }
}

impl Rules for PublishPolicy {
    fn validate(&self, _state: &GatewayState) -> Result<(), ApplyError> {
        validate::name("name", &self.name)?;
        description(&self.description)?;
        for (i, host) in self.allowed_upstream_hosts.iter().enumerate() {
            let field = format!("allowed_upstream_hosts[{i}]");
            let bare = host.strip_prefix("*.").unwrap_or(host);
            validate::hostname(&field, bare)?;
            if host.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(ApplyError::invalid(field, "host names are compared in lower case: write them so"));
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn arbitrary() -> proptest::strategy::BoxedStrategy<Self> {
        use proptest::prelude::*;

        use crate::tests::{arbitrary_id, arbitrary_name, meta};
        (arbitrary_id(), arbitrary_name(), any::<bool>(), any::<bool>())
            .prop_map(|(id, name, require_auth, require_openapi)| PublishPolicy {
                meta: meta(&id),
                name,
                require_auth,
                require_openapi,
                ..Default::default()
            })
            .boxed()
    }
}

fn description(text: &str) -> Result<(), ApplyError> {
    if text.len() > 1024 {
        return Err(ApplyError::invalid("description", "must be at most 1024 bytes"));
    }
    Ok(())
}

/// A service's versions and subscriptions go with it; a live version keeps
/// it (retire it first).
pub(crate) fn service_dependents(state: &GatewayState, service_id: &str) -> Result<Vec<Change>, ApplyError> {
    let mut changes = Vec::new();
    for version in state.api_versions().filter(|v| v.service_id == service_id) {
        if is_live(version_state(version)) {
            return Err(ApplyError::FailedPrecondition(format!(
                "the service's version {:?} is {}: retire it before deleting the service",
                version.version,
                state_name(version_state(version))
            )));
        }
        changes.push(Change::delete::<ApiVersion>(version.id()));
    }
    changes.extend(
        state.subscriptions().filter(|s| s.service_id == service_id).map(|s| Change::delete::<Subscription>(s.id())),
    );
    Ok(changes)
}

/// A consumer's subscriptions go with it.
pub(crate) fn consumer_subscriptions(state: &GatewayState, consumer_id: &str) -> Vec<Change> {
    state
        .subscriptions()
        .filter(|s| s.consumer_id == consumer_id)
        .map(|s| Change::delete::<Subscription>(s.id()))
        .collect()
}
