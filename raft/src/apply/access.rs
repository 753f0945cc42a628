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
use crate::registry::Entity;
use crate::state::GatewayState;

/// The identity a command was proposed for.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    pub name: &'a str,
    pub role: AdminRole,
    pub team: &'a str,
}

/// Names no admin token may take: the actors of the node's own token, of
/// the cluster's own commands and of commands from before roles existed.
pub const RESERVED_ACTORS: &[&str] = &["bootstrap", "cluster", "admin"];

impl<'a> Actor<'a> {
    /// As the command says; [`Actor::resolve`] holds it to the token record.
    pub fn of(cmd: &'a Command) -> Actor<'a> {
        Actor {
            name: if cmd.actor.is_empty() { "cluster" } else { &cmd.actor },
            role: AdminRole::try_from(cmd.actor_role).unwrap_or(AdminRole::Unspecified),
            team: &cmd.actor_team,
        }
    }

    /// The actor with the powers its admin token has in `state` when the
    /// command applies: the role and team of the record, not of the
    /// command, so a node of an earlier version that forwarded the command
    /// without them grants nothing more, and a token revoked or expired
    /// since the call was checked writes nothing. Actors that name no token
    /// (the bootstrap token, the cluster, commands from before roles
    /// existed) keep what the command says.
    pub fn resolve(cmd: &'a Command, state: &'a GatewayState) -> Result<Actor<'a>, ApplyError> {
        let actor = Actor::of(cmd);
        let tokens = state.table::<tollgate_proto::config::v1::AdminToken>();
        let Some(token) = tokens.id_of_name(actor.name).and_then(|id| tokens.get(id)) else {
            // No token by that name: the cluster itself, the bootstrap token,
            // or a command from before roles existed. A role claimed for
            // anyone else names a token that no longer exists.
            if actor.role == AdminRole::Consumer {
                return Self::consumer(actor, state);
            }
            let own = actor.role == AdminRole::Unspecified
                || RESERVED_ACTORS.contains(&actor.name)
                || actor.name.starts_with("node ");
            if !own {
                return Err(ApplyError::PermissionDenied(format!("the admin token {:?} no longer exists", actor.name)));
            }
            return Ok(actor);
        };
        let expired = token.expires_at_ms != 0 && token.expires_at_ms <= cmd.proposed_at_ms;
        if token.revoked || expired {
            return Err(ApplyError::PermissionDenied(format!(
                "the admin token {:?} was {} before this change applied",
                token.name,
                if token.revoked { "revoked" } else { "expired" }
            )));
        }
        Ok(Actor {
            name: actor.name,
            role: AdminRole::try_from(token.role).unwrap_or(AdminRole::Viewer),
            team: &token.team_id,
        })
    }

    /// A consumer acting for itself in the portal: it must still exist.
    fn consumer(actor: Actor<'a>, state: &GatewayState) -> Result<Actor<'a>, ApplyError> {
        let id = actor.name.strip_prefix("consumer ").unwrap_or_default();
        if id.is_empty() || state.consumer(id).is_none() {
            return Err(ApplyError::PermissionDenied(format!("{:?} names no consumer", actor.name)));
        }
        Ok(actor)
    }
}

/// Refuses `op` when `actor` may not make it.
pub(crate) fn check(state: &GatewayState, actor: &Actor, op: &Op) -> Result<(), ApplyError> {
    match actor.role {
        // The cluster's own commands, and commands from before roles existed
        // (the single admin token could do everything).
        AdminRole::Unspecified | AdminRole::Admin => return Ok(()),
        AdminRole::Viewer => return Err(denied(actor, "a viewer token can only read")),
        AdminRole::Consumer => return super::self_service::check(state, actor, op),
        AdminRole::Operator => {}
    }
    let team = Team { state, actor };
    match op {
        Op::CreateService(_) | Op::UpdateService(_) | Op::DeleteService(_) => services(&team, op),
        Op::CreateRoute(_) | Op::UpdateRoute(_) | Op::DeleteRoute(_) => routes(&team, op),
        Op::CreateConsumer(_)
        | Op::UpdateConsumer(_)
        | Op::DeleteConsumer(_)
        | Op::CreateApiKey(_)
        | Op::UpdateApiKey(_)
        | Op::DeleteApiKey(_) => consumers(&team, op),
        Op::CreateLimit(l) | Op::UpdateLimit(l) => limit(&team, op, l),
        Op::DeleteLimit(id) => team.owns_existing(EntityKind::Limit, id),
        Op::CreateApiVersion(v) => team.owns_existing(EntityKind::Service, &v.service_id),
        Op::UpdateApiVersion(v) => team.owns_version(v.id()),
        Op::DeleteApiVersion(id) => team.owns_version(id),
        Op::CreateSubscription(_) | Op::UpdateSubscription(_) | Op::DeleteSubscription(_) => subscriptions(&team, op),
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

/// A prompt API spends the cluster's provider keys, as an AI route does:
/// an admin's, like those.
fn services(team: &Team, op: &Op) -> Result<(), ApplyError> {
    if let Op::CreateService(s) | Op::UpdateService(s) = op
        && s.prompt.is_some()
    {
        return Err(denied(team.actor, "prompt APIs are an admin's (they spend the cluster's provider keys)"));
    }
    match op {
        Op::CreateService(s) => team.owns(EntityKind::Service, &s.name, &s.team_id),
        Op::UpdateService(s) => {
            team.owns_existing(EntityKind::Service, s.id())?;
            team.owns(EntityKind::Service, &s.name, &s.team_id)
        }
        Op::DeleteService(id) => team.owns_existing(EntityKind::Service, id),
        _ => unreachable!("only service operations come here"),
    }
}

/// A route decides which requests reach a service: an operator's may lead
/// only to its team's services, never to the AI gateway (an admin's), and
/// may not overlap another team's routes, which it could shadow.
fn routes(team: &Team, op: &Op) -> Result<(), ApplyError> {
    let route = match op {
        Op::DeleteRoute(id) => return team.owns_existing(EntityKind::Route, id),
        Op::UpdateRoute(r) => {
            team.owns_existing(EntityKind::Route, r.id())?;
            r
        }
        Op::CreateRoute(r) => r,
        _ => unreachable!("only route operations come here"),
    };
    // Checked in the form it will be stored in: a route of the previous
    // format names its backend in the legacy fields (apply adopts them).
    let mut route = route.clone();
    route.adopt_legacy_backend().map_err(|reason| ApplyError::invalid("service_id", reason))?;
    let route = &route;
    team.owns(EntityKind::Route, &route.name, &route.team_id)?;
    if let Some(path) = route.paths.iter().find(|p| !super::overlap::is_normal(&p.path)) {
        return Err(ApplyError::invalid(
            "paths",
            format!(
                "{:?} is not in normal form: write it without percent-escapes, '//', '.' or '..' segments",
                path.path
            ),
        ));
    }
    match route.backend_service_id() {
        Some(service) => team.owns_existing(EntityKind::Service, service)?,
        None if route.is_ai_backend() => {
            return Err(denied(
                team.actor,
                "routes to the AI gateway are an admin's (they spend the cluster's provider keys)",
            ));
        }
        None if route.mcp_backend().is_some_and(|m| m.team_id != team.actor.team) => {
            return Err(denied(
                team.actor,
                "an operator's MCP route serves only its own team's APIs (set its team_id)",
            ));
        }
        None => {}
    }
    let mut foreign = team.state.routes().filter(|r| r.team_id != team.actor.team && r.id() != route.id());
    match foreign.find(|other| super::overlap::routes_overlap(route, other)) {
        Some(other) => Err(ApplyError::PermissionDenied(format!(
            "{} may not write route {:?}: it could take requests of route {:?}, which is {}; pick hosts or paths of your own, or ask an admin",
            team.actor.name,
            route.name,
            other.name,
            team.owner(&other.team_id)
        ))),
        None => Ok(()),
    }
}

fn consumers(team: &Team, op: &Op) -> Result<(), ApplyError> {
    match op {
        Op::CreateConsumer(c) => team.owns(EntityKind::Consumer, &c.name, &c.team_id),
        Op::UpdateConsumer(c) => {
            team.owns_existing(EntityKind::Consumer, c.id())?;
            team.owns(EntityKind::Consumer, &c.name, &c.team_id)
        }
        Op::DeleteConsumer(id) => {
            team.owns_existing(EntityKind::Consumer, id)?;
            // Deleting would also delete another team's decision about it:
            // the consumer could then be made again and subscribe afresh.
            let decided_elsewhere = team.state.subscriptions().find(|s| {
                s.consumer_id == *id
                    && matches!(
                        SubscriptionState::try_from(s.state),
                        Ok(SubscriptionState::Rejected | SubscriptionState::Revoked)
                    )
                    && team.owns_existing(EntityKind::Service, &s.service_id).is_err()
            });
            match decided_elsewhere {
                Some(s) => Err(ApplyError::PermissionDenied(format!(
                    "{} may not delete consumer {id:?}: another team's service {:?} refused or revoked its \
                     subscription, and only that team (or an admin) may clear that",
                    team.actor.name, s.service_id
                ))),
                None => Ok(()),
            }
        }
        Op::CreateApiKey(k) => team.owns_existing(EntityKind::Consumer, &k.consumer_id),
        Op::UpdateApiKey(k) => team.owns_key(k.id()),
        Op::DeleteApiKey(id) => team.owns_key(id),
        _ => unreachable!("only consumer and key operations come here"),
    }
}

fn limit(team: &Team, op: &Op, l: &tollgate_proto::config::v1::Limit) -> Result<(), ApplyError> {
    if matches!(op, Op::UpdateLimit(_)) {
        team.owns_existing(EntityKind::Limit, l.id())?;
    }
    team.owns(EntityKind::Limit, &l.name, &l.team_id)?;
    if l.global {
        return Err(denied(team.actor, "a global limit applies to every team: only an admin sets one"));
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

/// Either side may ask, and the consumer's side may end a subscription;
/// approving, rejecting and deleting (which would let an auto-approving
/// service approve a revoked consumer again) are the service team's.
fn subscriptions(team: &Team, op: &Op) -> Result<(), ApplyError> {
    match op {
        Op::CreateSubscription(s) => {
            let approved = s.state == SubscriptionState::Approved as i32;
            let needs_approval = team
                .state
                .service(&s.service_id)
                .is_some_and(|svc| svc.subscription != SubscriptionMode::AutoApprove as i32);
            if approved && needs_approval {
                team.owns_existing(EntityKind::Service, &s.service_id)
            } else {
                team.owns_either(&s.consumer_id, &s.service_id)
            }
        }
        Op::UpdateSubscription(s) => {
            let Some(existing) = team.state.subscription(s.id()) else { return Ok(()) }; // apply says not found
            let decides = (s.state != existing.state
                && matches!(
                    SubscriptionState::try_from(s.state),
                    Ok(SubscriptionState::Approved | SubscriptionState::Rejected)
                ))
                || (!s.decided_by.is_empty() && s.decided_by != existing.decided_by);
            if decides {
                team.owns_existing(EntityKind::Service, &existing.service_id)
            } else {
                team.owns_either(&existing.consumer_id, &existing.service_id)
            }
        }
        Op::DeleteSubscription(id) => match team.state.subscription(id) {
            Some(s) => team.owns_existing(EntityKind::Service, &s.service_id),
            None => Ok(()),
        },
        _ => unreachable!("only subscription operations come here"),
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
