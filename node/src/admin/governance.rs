//! `tollgate.admin.v1.GovernanceService` (DESIGN §7): admin tokens, the
//! audit trail, API versions and their lifecycle, subscriptions, and the
//! declarative configuration (`declarative.rs`). Who may call what is the
//! access layer's (`access.rs`); what an operator's team may change is
//! `apply`'s.

use std::sync::Arc;

use prost::Message;
use tollgate_proto::admin::v1::governance_service_server::GovernanceService;
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{
    AdminRole, AdminToken, ApiVersion, AuditEntry, Meta, Subscription, SubscriptionMode, SubscriptionState,
    VersionState,
};
use tollgate_proto::raft::v1::command::Op;
use tollgate_raft::secrets::SecretBox;
use tollgate_raft::{GatewayState, RaftNode};
use tonic::{Request, Response, Status};

use super::access::Caller;
use super::service::{fresh_meta, id_of, not_found, required};
use super::{declarative, propose};
use crate::apikey;
use crate::proxy::ProxyContext;

/// Audit entries one call returns at most.
const MAX_AUDIT_ENTRIES: u32 = 10_000;

/// What one `ListAudit` answer holds at most (gRPC's default limit is 4 MiB).
const MAX_AUDIT_PAGE_BYTES: usize = 3 << 20;

/// How long an approval or a revocation waits for every member to serve it.
const SPREAD_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Governance {
    raft: RaftNode,
    proxy: Arc<ProxyContext>,
    secrets: SecretBox,
}

impl Governance {
    pub fn new(raft: RaftNode, proxy: Arc<ProxyContext>, secrets: SecretBox) -> Governance {
        Governance { raft, proxy, secrets }
    }

    async fn write<T: Message + Default>(&self, op: Op) -> Result<T, Status> {
        propose::write(&self.raft, &self.proxy, op).await
    }

    /// A write that decides who may call: it returns once every member
    /// that answers serves it (see `propose::wait_members_served`).
    async fn write_everywhere<T: Message + Default>(&self, op: Op) -> Result<T, Status> {
        let applied = propose::commit(&self.raft, &self.proxy, op).await?;
        propose::wait_members_served(&self.raft, applied.revision, SPREAD_WITHIN).await;
        propose::entity_of(applied)
    }

    async fn read(&self, stale: bool) -> Result<Arc<GatewayState>, Status> {
        propose::read(&self.raft, stale).await
    }

    /// The version `name` of the service `service` (id or name).
    fn find_version<'s>(state: &'s GatewayState, service: &str, name: &str) -> Result<&'s ApiVersion, Status> {
        let service_id = service_id(state, service)?;
        state
            .api_versions()
            .find(|v| v.service_id == service_id && v.version == name)
            .map(|v| v.as_ref())
            .ok_or_else(|| not_found("version", name))
    }
}

fn service_id(state: &GatewayState, service: &str) -> Result<String, Status> {
    required("service", service)?;
    state.find_service(service).map(|s| id_of(&s.meta)).ok_or_else(|| not_found("service", service))
}

/// What a token's listing shows: never its hash.
fn shown(token: &AdminToken) -> AdminToken {
    AdminToken { secret_sha256: Vec::new(), ..token.clone() }
}

#[tonic::async_trait]
impl GovernanceService for Governance {
    async fn who_am_i(&self, _request: Request<WhoAmIRequest>) -> Result<Response<Identity>, Status> {
        let caller = Caller::current()?;
        Ok(Response::new(Identity {
            name: caller.name.to_string(),
            role: caller.role as i32,
            team_id: caller.team_id.to_string(),
        }))
    }

    async fn create_admin_token(
        &self,
        request: Request<CreateAdminTokenRequest>,
    ) -> Result<Response<CreateAdminTokenResponse>, Status> {
        let request = request.into_inner();
        required("name", &request.name)?;
        let state = self.read(false).await?;
        let team_id = match request.team.as_str() {
            "" => String::new(),
            team => state.find_team(team).map(|t| id_of(&t.meta)).ok_or_else(|| not_found("team", team))?,
        };
        let ttl_ms = i64::try_from(request.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let key = apikey::generate_with(apikey::ADMIN_PREFIX);
        let token = AdminToken {
            meta: Some(Meta { id: key.id.clone(), ..Default::default() }),
            name: request.name,
            role: request.role,
            team_id,
            secret_sha256: key.secret_sha256,
            display_prefix: key.display_prefix,
            expires_at_ms: if ttl_ms == 0 { 0 } else { crate::clock::unix_ms().saturating_add(ttl_ms) },
            revoked: false,
        };
        let stored: AdminToken = self.write(Op::CreateAdminToken(token)).await?;
        Ok(Response::new(CreateAdminTokenResponse { token: Some(shown(&stored)), plaintext: key.plaintext }))
    }

    async fn list_admin_tokens(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<ListAdminTokensResponse>, Status> {
        let state = self.read(request.into_inner().stale).await?;
        let tokens = state.admin_tokens().map(|t| shown(t)).collect();
        Ok(Response::new(ListAdminTokensResponse { tokens }))
    }

    async fn revoke_admin_token(&self, request: Request<DeleteRequest>) -> Result<Response<AdminToken>, Status> {
        let wanted = request.into_inner().id_or_name;
        required("id_or_name", &wanted)?;
        let state = self.read(false).await?;
        let token = state.find_admin_token(&wanted).ok_or_else(|| not_found("admin token", &wanted))?;
        let revoked = AdminToken { revoked: true, ..token.as_ref().clone() };
        let stored: AdminToken = self.write_everywhere(Op::UpdateAdminToken(revoked)).await?;
        Ok(Response::new(shown(&stored)))
    }

    async fn list_audit(&self, request: Request<ListAuditRequest>) -> Result<Response<ListAuditResponse>, Status> {
        let request = request.into_inner();
        let state = self.read(request.stale).await?;
        let limit = match request.limit {
            0 => 1000,
            n => n.min(MAX_AUDIT_ENTRIES),
        } as usize;
        let entity = request.entity.as_str();
        let (kind, entity_name) = match entity.split_once('/') {
            Some((kind, name)) => (Some(kind.replace(['-', '_'], " ")), name),
            None => (None, entity),
        };
        let touches = |e: &AuditEntry| {
            entity.is_empty()
                || e.changes.iter().any(|c| {
                    kind.as_ref().is_none_or(|k| c.kind.eq_ignore_ascii_case(k))
                        && (c.entity_id == entity_name || c.entity_name == entity_name)
                })
        };
        // Entries carry whole entities: a page stops short of gRPC's 4 MiB.
        let mut bytes = 0usize;
        let entries = state
            .audit_entries()
            .rev()
            // Proposers' clocks differ: filter, not stop at the first older one.
            .filter(|e| e.at_ms >= request.since_ms)
            .filter(|e| request.actor.is_empty() || e.actor == request.actor)
            .filter(|e| touches(e))
            .take(limit)
            .take_while(|e| {
                bytes += e.encoded_len();
                bytes <= MAX_AUDIT_PAGE_BYTES
            })
            .map(|e| e.as_ref().clone())
            .collect();
        Ok(Response::new(ListAuditResponse { entries }))
    }

    async fn put_api_version(&self, request: Request<PutApiVersionRequest>) -> Result<Response<ApiVersion>, Status> {
        let request = request.into_inner();
        required("version", &request.version)?;
        let state = self.read(false).await?;
        let service_id = service_id(&state, &request.service)?;
        let existing = state.api_versions().find(|v| v.service_id == service_id && v.version == request.version);
        let fields = |base: ApiVersion| ApiVersion {
            openapi: request.openapi.clone(),
            successor: request.successor.clone(),
            sunset_at_ms: request.sunset_at_ms,
            description: request.description.clone(),
            ..base
        };
        let op = match existing {
            Some(existing) => Op::UpdateApiVersion(fields(existing.as_ref().clone())),
            None => Op::CreateApiVersion(fields(ApiVersion {
                meta: fresh_meta(),
                service_id,
                version: request.version.clone(),
                state: VersionState::Draft as i32,
                ..Default::default()
            })),
        };
        self.write(op).await.map(Response::new)
    }

    async fn set_api_version_state(
        &self,
        request: Request<SetApiVersionStateRequest>,
    ) -> Result<Response<ApiVersion>, Status> {
        let request = request.into_inner();
        let state = self.read(false).await?;
        let mut version = Self::find_version(&state, &request.service, &request.version)?.clone();
        version.state = request.state;
        if !request.successor.is_empty() {
            version.successor = request.successor;
        }
        if request.sunset_at_ms != 0 {
            version.sunset_at_ms = request.sunset_at_ms;
        }
        if request.state == VersionState::Deprecated as i32 && version.deprecated_at_ms == 0 {
            version.deprecated_at_ms = crate::clock::unix_ms();
        }
        self.write(Op::UpdateApiVersion(version)).await.map(Response::new)
    }

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Subscription>, Status> {
        let request = request.into_inner();
        required("consumer", &request.consumer)?;
        let state = self.read(false).await?;
        let consumer =
            state.find_consumer(&request.consumer).ok_or_else(|| not_found("consumer", &request.consumer))?;
        let consumer_id = id_of(&consumer.meta);
        let service_id = service_id(&state, &request.service)?;
        let caller = Caller::current()?;
        let op = match subscription_request(&state, &consumer_id, &service_id, &caller.name) {
            Ok(op) => op,
            Err(unchanged) => return Ok(Response::new(unchanged.as_ref().clone())),
        };
        self.write_everywhere(op).await.map(Response::new)
    }

    async fn decide_subscription(
        &self,
        request: Request<DecideSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        let request = request.into_inner();
        required("id", &request.id)?;
        let decision = SubscriptionState::try_from(request.state).unwrap_or(SubscriptionState::Unspecified);
        if !matches!(decision, SubscriptionState::Approved | SubscriptionState::Rejected | SubscriptionState::Revoked) {
            return Err(Status::invalid_argument("state must be APPROVED, REJECTED or REVOKED"));
        }
        let state = self.read(false).await?;
        let existing = state.subscription(&request.id).ok_or_else(|| not_found("subscription", &request.id))?;
        let caller = Caller::current()?;
        let decided = Subscription {
            state: decision as i32,
            decided_by: caller.name.to_string(),
            reason: request.reason,
            ..existing.as_ref().clone()
        };
        self.write_everywhere(Op::UpdateSubscription(decided)).await.map(Response::new)
    }

    async fn export_config(
        &self,
        request: Request<ExportConfigRequest>,
    ) -> Result<Response<ExportConfigResponse>, Status> {
        let state = self.read(request.into_inner().stale).await?;
        let yaml = declarative::export(&state)?;
        Ok(Response::new(ExportConfigResponse { yaml, revision: state.applied_index() }))
    }

    async fn apply_config(
        &self,
        request: Request<ApplyConfigRequest>,
    ) -> Result<Response<ApplyConfigResponse>, Status> {
        let request = request.into_inner();
        let state = self.read(false).await?;
        let resolved = (!request.dry_run).then_some(&request.secrets);
        let plan = declarative::plan(&state, &request.document, resolved, request.prune, &self.secrets)?;
        if plan.ops.is_empty() {
            return Ok(Response::new(ApplyConfigResponse { changes: plan.changes, revision: 0 }));
        }
        let (op, changes) = plan.into_parts();
        if request.dry_run {
            // Everything apply would check (references, policies, the
            // caller's rights), on this node's state, without proposing.
            let mut command = tollgate_raft::Command::new(op, crate::clock::unix_ms(), "");
            Caller::current()?.stamp(&mut command);
            tollgate_raft::dry_run(&state, &command.0).map_err(super::status::from_apply)?;
            return Ok(Response::new(ApplyConfigResponse { changes, revision: 0 }));
        }
        let applied = propose::commit(&self.raft, &self.proxy, op).await?;
        Ok(Response::new(ApplyConfigResponse { changes, revision: applied.revision }))
    }
}

/// The change that asks for `consumer_id`'s subscription to `service_id`,
/// made by `actor`; the subscription as it is when it already stands so.
/// A consumer once rejected or revoked asks a person again, even where new
/// subscriptions are approved automatically.
pub(crate) fn subscription_request(
    state: &GatewayState,
    consumer_id: &str,
    service_id: &str,
    actor: &str,
) -> Result<Op, Arc<Subscription>> {
    let existing = state.subscriptions().find(|s| s.service_id == service_id && s.consumer_id == consumer_id);
    let decided_before = existing
        .is_some_and(|s| s.state == SubscriptionState::Rejected as i32 || s.state == SubscriptionState::Revoked as i32);
    let auto = !decided_before
        && state.service(service_id).is_some_and(|s| s.subscription == SubscriptionMode::AutoApprove as i32);
    let wanted = if auto { SubscriptionState::Approved } else { SubscriptionState::Pending };
    let decided_by = if auto { actor.to_string() } else { String::new() };
    Ok(match existing {
        Some(existing) if existing.state == wanted as i32 => return Err(existing.clone()),
        Some(existing) => Op::UpdateSubscription(Subscription {
            state: wanted as i32,
            decided_by,
            reason: String::new(),
            ..existing.as_ref().clone()
        }),
        None => Op::CreateSubscription(Subscription {
            meta: fresh_meta(),
            service_id: service_id.to_string(),
            consumer_id: consumer_id.to_string(),
            state: wanted as i32,
            decided_by,
            reason: String::new(),
        }),
    })
}

/// `AdminRole` as the CLI names it.
pub fn parse_role(role: &str) -> Option<AdminRole> {
    match role {
        "admin" => Some(AdminRole::Admin),
        "operator" => Some(AdminRole::Operator),
        "viewer" => Some(AdminRole::Viewer),
        _ => None,
    }
}
