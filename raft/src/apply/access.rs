//! Who may make a change (DESIGN §7): checked by `apply` against the state
//! the command applies to, so that a team's ownership cannot change between
//! the check and the write. The admin server has already refused what the
//! caller's role may never do (node/src/admin/access.rs); this is where an
//! operator's changes are held to what its team owns.
//!
//! The match over `Op` has no wildcard: a new operation does not compile
//! until it says who may propose it.

use tollgate_proto::config::v1::{AdminRole, SubscriptionMode, SubscriptionState};
use tollgate_proto::raft::v1::Command;
use tollgate_proto::raft::v1::command::Op;

use crate::entities::EntityKind;
use crate::error::ApplyError;
use crate::state::GatewayState;

/// The identity a command was proposed for.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    pub name: &'a str,
    pub role: AdminRole,
    pub team: &'a str,
}

impl<'a> Actor<'a> {
    pub fn of(cmd: &'a Command) -> Actor<'a> {
        Actor {
            name: if cmd.actor.is_empty() { "cluster" } else { &cmd.actor },
            role: AdminRole::try_from(cmd.actor_role).unwrap_or(AdminRole::Unspecified),
            team: &cmd.actor_team,
        }
    }
}

/// Refuses `op` when `actor` may not make it.
pub(crate) fn check(state: &GatewayState, actor: &Actor, op: &Op) -> Result<(), ApplyError> {
    match actor.role {
        // The cluster's own commands, and commands from before roles existed
        // (the single admin token could do everything).
        AdminRole::Unspecified | AdminRole::Admin => return Ok(()),
        AdminRole::Viewer => return Err(denied(actor, "a viewer token can only read")),
        AdminRole::Operator => {}
    }
    let team = Team { state, actor };
    match op {
        Op::CreateService(s) => team.owns(EntityKind::Service, &s.name, &s.team_id),
        Op::UpdateService(s) => {
            team.owns_existing(EntityKind::Service, s.meta.as_ref().map_or("", |m| &m.id))?;
            team.owns(EntityKind::Service, &s.name, &s.team_id)
        }
        Op::DeleteService(id) => team.owns_existing(EntityKind::Service, id),
        Op::CreateRoute(r) | Op::UpdateRoute(r) => {
            if matches!(op, Op::UpdateRoute(_)) {
                team.owns_existing(EntityKind::Route, r.meta.as_ref().map_or("", |m| &m.id))?;
            }
            team.owns(EntityKind::Route, &r.name, &r.team_id)?;
            match r.backend_service_id() {
                Some(service) => team.owns_existing(EntityKind::Service, service),
                None => Ok(()),
            }
        }
        Op::DeleteRoute(id) => team.owns_existing(EntityKind::Route, id),
        Op::CreateConsumer(c) => team.owns(EntityKind::Consumer, &c.name, &c.team_id),
        Op::UpdateConsumer(c) => {
            team.owns_existing(EntityKind::Consumer, c.meta.as_ref().map_or("", |m| &m.id))?;
            team.owns(EntityKind::Consumer, &c.name, &c.team_id)
        }
        Op::DeleteConsumer(id) => team.owns_existing(EntityKind::Consumer, id),
        Op::CreateApiKey(k) => team.owns_existing(EntityKind::Consumer, &k.consumer_id),
        Op::UpdateApiKey(k) => team.owns_key(k.meta.as_ref().map_or("", |m| &m.id)),
        Op::DeleteApiKey(id) => team.owns_key(id),
        Op::CreateLimit(l) | Op::UpdateLimit(l) => {
            if matches!(op, Op::UpdateLimit(_)) {
                team.owns_existing(EntityKind::Limit, l.meta.as_ref().map_or("", |m| &m.id))?;
            }
            team.owns(EntityKind::Limit, &l.name, &l.team_id)?;
            if l.global {
                return Err(denied(actor, "a global limit applies to every team: only an admin sets one"));
            }
            for id in &l.service_ids {
                team.owns_existing(EntityKind::Service, id)?;
            }
            for id in &l.route_ids {
                team.owns_existing(EntityKind::Route, id)?;
            }
            for id in &l.consumer_ids {
                team.owns_existing(EntityKind::Consumer, id)?;
            }
            l.api_key_ids.iter().try_for_each(|id| team.owns_key(id))
        }
        Op::DeleteLimit(id) => team.owns_existing(EntityKind::Limit, id),
        Op::CreateApiVersion(v) => team.owns_existing(EntityKind::Service, &v.service_id),
        Op::UpdateApiVersion(v) => team.owns_version(v.meta.as_ref().map_or("", |m| &m.id)),
        Op::DeleteApiVersion(id) => team.owns_version(id),
        Op::CreateSubscription(s) => {
            let approved = s.state == SubscriptionState::Approved as i32;
            let needs_approval = state
                .service(&s.service_id)
                .is_some_and(|svc| svc.subscription != SubscriptionMode::AutoApprove as i32);
            if approved && needs_approval {
                // Approving is the service team's decision.
                team.owns_existing(EntityKind::Service, &s.service_id)
            } else {
                team.owns_either(&s.consumer_id, &s.service_id)
            }
        }
        Op::UpdateSubscription(s) => {
            let existing = state.subscription(s.meta.as_ref().map_or("", |m| &m.id));
            let Some(existing) = existing else { return Ok(()) }; // apply says not found
            let decides = s.state != existing.state
                && matches!(
                    SubscriptionState::try_from(s.state),
                    Ok(SubscriptionState::Approved | SubscriptionState::Rejected)
                );
            if decides {
                team.owns_existing(EntityKind::Service, &existing.service_id)
            } else {
                // Either side may end a subscription or ask again.
                team.owns_either(&existing.consumer_id, &existing.service_id)
            }
        }
        Op::DeleteSubscription(id) => match state.subscription(id) {
            Some(s) => team.owns_either(&s.consumer_id, &s.service_id),
            None => Ok(()),
        },
        // Cluster-wide settings and identities: admins only.
        Op::CreateTeam(_) | Op::UpdateTeam(_) | Op::DeleteTeam(_) => admin_only(actor, "teams"),
        Op::CreateAdminToken(_) | Op::UpdateAdminToken(_) | Op::DeleteAdminToken(_) => {
            admin_only(actor, "admin tokens")
        }
        Op::CreatePublishPolicy(_) | Op::UpdatePublishPolicy(_) | Op::DeletePublishPolicy(_) => {
            admin_only(actor, "publish policies")
        }
        Op::CreateJoinToken(_) | Op::DeleteJoinToken(_) => admin_only(actor, "cluster membership"),
        Op::CreateProvider(_) | Op::UpdateProvider(_) | Op::DeleteProvider(_) => admin_only(actor, "AI providers"),
        Op::CreateModelAlias(_) | Op::UpdateModelAlias(_) | Op::DeleteModelAlias(_) => {
            admin_only(actor, "model aliases")
        }
        Op::PutModelPrice(_) | Op::DeleteModelPrice(_) => admin_only(actor, "model prices"),
        Op::ApplyConfig(_) => admin_only(actor, "the whole configuration"),
        Op::Lease(_) | Op::Usage(_) | Op::RecordDenied(_) | Op::PruneAudit(_) => {
            admin_only(actor, "the cluster's own records")
        }
    }
}

fn denied(actor: &Actor, why: &str) -> ApplyError {
    ApplyError::PermissionDenied(format!("{} may not do this: {why}", actor.name))
}

fn admin_only(actor: &Actor, what: &str) -> Result<(), ApplyError> {
    Err(denied(actor, &format!("only an admin token changes {what}")))
}

/// An operator's view: what its team owns.
struct Team<'a> {
    state: &'a GatewayState,
    actor: &'a Actor<'a>,
}

impl Team<'_> {
    /// Whether an entity with this team field may be written by the actor.
    fn owns(&self, kind: EntityKind, name: &str, team_id: &str) -> Result<(), ApplyError> {
        if team_id == self.actor.team {
            return Ok(());
        }
        Err(ApplyError::PermissionDenied(format!(
            "{} (operator of team {}) may not write {kind} {name:?} for {}: an operator changes only what its \
             team owns (set team_id to its own team, or ask an admin)",
            self.actor.name,
            self.team_name(self.actor.team),
            self.owner(team_id),
        )))
    }

    /// Whether the stored entity of `kind` with this id is the actor's team's.
    /// A missing one passes: `apply` then refuses it as not found.
    fn owns_existing(&self, kind: EntityKind, id: &str) -> Result<(), ApplyError> {
        let Some(entity) = self.state.entity(kind, id) else { return Ok(()) };
        let team = entity_team(&entity);
        let name = entity.name().unwrap_or(id).to_string();
        if team == self.actor.team {
            return Ok(());
        }
        Err(ApplyError::PermissionDenied(format!(
            "{} (operator of team {}) may not change {kind} {name:?}: it belongs to {}",
            self.actor.name,
            self.team_name(self.actor.team),
            self.owner(team),
        )))
    }

    fn owns_key(&self, key_id: &str) -> Result<(), ApplyError> {
        match self.state.api_key(key_id) {
            Some(key) => self.owns_existing(EntityKind::Consumer, &key.consumer_id),
            None => Ok(()),
        }
    }

    fn owns_version(&self, version_id: &str) -> Result<(), ApplyError> {
        match self.state.api_version(version_id) {
            Some(version) => self.owns_existing(EntityKind::Service, &version.service_id),
            None => Ok(()),
        }
    }

    fn owns_either(&self, consumer_id: &str, service_id: &str) -> Result<(), ApplyError> {
        self.owns_existing(EntityKind::Consumer, consumer_id)
            .or_else(|_| self.owns_existing(EntityKind::Service, service_id))
    }

    fn team_name(&self, team_id: &str) -> String {
        self.state.team(team_id).map_or_else(|| team_id.to_string(), |t| t.name.clone())
    }

    fn owner(&self, team_id: &str) -> String {
        if team_id.is_empty() {
            "no team (admins only)".to_string()
        } else {
            format!("team {}", self.team_name(team_id))
        }
    }
}

/// The owning team of an entity of a kind teams own; empty for the rest.
fn entity_team(entity: &crate::entities::AnyEntity) -> &str {
    use crate::entities::AnyEntity;
    match entity {
        AnyEntity::Service(s) => &s.team_id,
        AnyEntity::Route(r) => &r.team_id,
        AnyEntity::Consumer(c) => &c.team_id,
        AnyEntity::Limit(l) => &l.team_id,
        _ => "",
    }
}
