//! Who may call which admin RPC (DESIGN §7), checked in one place: a tower
//! layer in front of every gRPC service of the admin server.
//!
//! - It finds the caller from the bearer token: the node's bootstrap token
//!   (an admin), or a named admin token (`tgadm_<id>_<secret>`) from the
//!   replicated state: unrevoked, unexpired, its secret's hash matching.
//! - It looks the RPC up in [`RULES`], which names every RPC of every
//!   service with what it needs: `Read` (every role), `Write` (operators and
//!   admins; `apply` then holds an operator to what its team owns) or
//!   `Admin`. An RPC that is not in the table is refused: a new RPC must be
//!   given a rule, and the table test fails until it is.
//! - A refused caller's attempt goes to the audit trail (rate-limited, so a
//!   flood of refusals cannot fill the Raft log); an unknown token is only
//!   logged, as it names no one.
//! - The caller rides with the request's task (`CALLER`), so every command
//!   an RPC proposes carries its identity, role and team (`propose.rs`).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use subtle::ConstantTimeEq;
use tollgate_proto::config::v1::{AdminRole, AuditEntry};
use tollgate_proto::raft::v1::command::Op;
use tollgate_raft::{Command, RaftNode};
use tonic::Status;

use crate::apikey;

/// What an RPC needs of the caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone with a valid token.
    Read,
    /// Operators and admins; what an operator may change is its team's.
    Write,
    /// Admins only.
    Admin,
}

/// Every admin RPC and what it needs. `grpc.health` and server reflection
/// are open (probes and tooling need no token); everything else is here.
pub const RULES: &[(&str, Need)] = &[
    ("tollgate.admin.v1.AdminService/CreateService", Need::Write),
    ("tollgate.admin.v1.AdminService/GetService", Need::Read),
    ("tollgate.admin.v1.AdminService/ListServices", Need::Read),
    ("tollgate.admin.v1.AdminService/UpdateService", Need::Write),
    ("tollgate.admin.v1.AdminService/DeleteService", Need::Write),
    ("tollgate.admin.v1.AdminService/CreateRoute", Need::Write),
    ("tollgate.admin.v1.AdminService/GetRoute", Need::Read),
    ("tollgate.admin.v1.AdminService/ListRoutes", Need::Read),
    ("tollgate.admin.v1.AdminService/UpdateRoute", Need::Write),
    ("tollgate.admin.v1.AdminService/DeleteRoute", Need::Write),
    ("tollgate.admin.v1.AdminService/CreateConsumer", Need::Write),
    ("tollgate.admin.v1.AdminService/GetConsumer", Need::Read),
    ("tollgate.admin.v1.AdminService/ListConsumers", Need::Read),
    ("tollgate.admin.v1.AdminService/UpdateConsumer", Need::Write),
    ("tollgate.admin.v1.AdminService/DeleteConsumer", Need::Write),
    ("tollgate.admin.v1.AdminService/CreateApiKey", Need::Write),
    ("tollgate.admin.v1.AdminService/GetApiKey", Need::Read),
    ("tollgate.admin.v1.AdminService/ListApiKeys", Need::Read),
    ("tollgate.admin.v1.AdminService/UpdateApiKey", Need::Write),
    ("tollgate.admin.v1.AdminService/DeleteApiKey", Need::Write),
    ("tollgate.admin.v1.AdminService/PutEntity", Need::Write),
    ("tollgate.admin.v1.AdminService/GetEntity", Need::Read),
    ("tollgate.admin.v1.AdminService/ListEntities", Need::Read),
    ("tollgate.admin.v1.AdminService/DeleteEntity", Need::Write),
    ("tollgate.admin.v1.AdminService/GetNodeStatus", Need::Read),
    ("tollgate.admin.v1.ClusterService/GetClusterStatus", Need::Read),
    ("tollgate.admin.v1.ClusterService/AddLearner", Need::Admin),
    ("tollgate.admin.v1.ClusterService/PromoteVoter", Need::Admin),
    ("tollgate.admin.v1.ClusterService/RemoveNode", Need::Admin),
    ("tollgate.admin.v1.ClusterService/TransferLeader", Need::Admin),
    ("tollgate.admin.v1.ClusterService/CreateJoinToken", Need::Admin),
    ("tollgate.admin.v1.ClusterService/ListJoinTokens", Need::Read),
    ("tollgate.admin.v1.ClusterService/RevokeJoinToken", Need::Admin),
    ("tollgate.admin.v1.AiService/CreateProvider", Need::Admin),
    ("tollgate.admin.v1.AiService/GetProvider", Need::Read),
    ("tollgate.admin.v1.AiService/ListProviders", Need::Read),
    ("tollgate.admin.v1.AiService/UpdateProvider", Need::Admin),
    ("tollgate.admin.v1.AiService/DeleteProvider", Need::Admin),
    ("tollgate.admin.v1.AiService/CreateModelAlias", Need::Admin),
    ("tollgate.admin.v1.AiService/GetModelAlias", Need::Read),
    ("tollgate.admin.v1.AiService/ListModelAliases", Need::Read),
    ("tollgate.admin.v1.AiService/UpdateModelAlias", Need::Admin),
    ("tollgate.admin.v1.AiService/DeleteModelAlias", Need::Admin),
    ("tollgate.admin.v1.AiService/PutModelPrice", Need::Admin),
    ("tollgate.admin.v1.AiService/ListModelPrices", Need::Read),
    ("tollgate.admin.v1.AiService/DeleteModelPrice", Need::Admin),
    ("tollgate.admin.v1.AiService/GetUsage", Need::Read),
    ("tollgate.admin.v1.UsageService/GetClusterUsage", Need::Read),
    ("tollgate.admin.v1.UsageService/ListUsageRecords", Need::Read),
    ("tollgate.admin.v1.GovernanceService/WhoAmI", Need::Read),
    ("tollgate.admin.v1.GovernanceService/CreateAdminToken", Need::Admin),
    ("tollgate.admin.v1.GovernanceService/ListAdminTokens", Need::Read),
    ("tollgate.admin.v1.GovernanceService/RevokeAdminToken", Need::Admin),
    ("tollgate.admin.v1.GovernanceService/ListAudit", Need::Read),
    ("tollgate.admin.v1.GovernanceService/PutApiVersion", Need::Write),
    ("tollgate.admin.v1.GovernanceService/SetApiVersionState", Need::Write),
    ("tollgate.admin.v1.GovernanceService/Subscribe", Need::Write),
    ("tollgate.admin.v1.GovernanceService/DecideSubscription", Need::Write),
    ("tollgate.admin.v1.GovernanceService/ExportConfig", Need::Read),
    ("tollgate.admin.v1.GovernanceService/ApplyConfig", Need::Admin),
];

/// Services any client may call without a token.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.", "/grpc.reflection."];

/// The rule of the RPC at this request path, and the RPC's name.
pub fn rule(path: &str) -> Option<(&'static str, Need)> {
    let full = path.strip_prefix('/')?;
    RULES.iter().find(|(rpc, _)| *rpc == full).map(|(rpc, need)| (rpc.rsplit('/').next().unwrap_or(rpc), *need))
}

/// Whether `role` may call an RPC that needs `need`.
pub fn permits(role: AdminRole, need: Need) -> bool {
    match role {
        AdminRole::Admin => true,
        AdminRole::Operator => need != Need::Admin,
        AdminRole::Viewer => need == Need::Read,
        // A consumer's portal session is no admin identity.
        AdminRole::Unspecified | AdminRole::Consumer => false,
    }
}

/// The admin identity of a request, for the RPC it called.
#[derive(Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub role: AdminRole,
    pub team_id: Arc<str>,
    pub rpc: &'static str,
    recorder: Arc<DeniedRecorder>,
}

tokio::task_local! {
    static CALLER: Caller;
}

impl Caller {
    /// The caller of the RPC this task serves. Every authenticated RPC runs
    /// inside the access layer's scope; outside it there is no caller, and
    /// no command may be proposed for one.
    pub fn current() -> Result<Caller, Status> {
        CALLER.try_with(Caller::clone).map_err(|_| Status::internal("an admin call ran outside the access layer"))
    }

    /// Stamps `command` with who proposes it.
    pub fn stamp(&self, command: &mut Command) {
        command.0.actor = self.name.to_string();
        command.0.actor_role = self.role as i32;
        command.0.actor_team = self.team_id.to_string();
        command.0.rpc = self.rpc.to_string();
    }

    /// Puts a refused attempt in the audit trail.
    pub fn record_denied(&self, summary: &str, reason: &str) {
        self.recorder.record(self, summary, reason);
    }
}

/// Finds callers and keeps the trail of refusals.
pub struct Access {
    bootstrap: Arc<str>,
    raft: RaftNode,
    recorder: Arc<DeniedRecorder>,
}

impl Access {
    pub fn new(bootstrap: &str, raft: RaftNode) -> Arc<Access> {
        let recorder = Arc::new(DeniedRecorder { raft: raft.clone(), budget: Mutex::new((0, Default::default())) });
        Arc::new(Access { bootstrap: Arc::from(bootstrap), raft, recorder })
    }

    /// The caller of `rpc`, or why there is none.
    fn identify(&self, headers: &http::HeaderMap, rpc: &'static str) -> Result<Caller, Status> {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing admin token: send `authorization: Bearer <token>` (see <data-dir>/admin-token)",
                )
            })?;
        self.caller_of(presented, rpc)
    }

    /// The admin identity `presented` (a token's text) stands for; the
    /// console signs its sessions in with it.
    pub fn caller_of(&self, presented: &str, rpc: &'static str) -> Result<Caller, Status> {
        let caller = |name: &str, role: AdminRole, team_id: &str| Caller {
            name: Arc::from(name),
            role,
            team_id: Arc::from(team_id),
            rpc,
            recorder: self.recorder.clone(),
        };
        if presented.as_bytes().ct_eq(self.bootstrap.as_bytes()).into() {
            return Ok(caller("bootstrap", AdminRole::Admin, ""));
        }
        let invalid = || Status::unauthenticated("the admin token is not valid (revoked, expired or unknown)");
        let parsed = apikey::parse_with(apikey::ADMIN_PREFIX, presented).ok_or_else(invalid)?;
        let state = self.raft.local_state();
        let token = state.admin_token(parsed.id).ok_or_else(invalid)?;
        let expired = token.expires_at_ms != 0 && token.expires_at_ms <= crate::clock::unix_ms();
        if !parsed.matches(&token.secret_sha256) || token.revoked || expired {
            return Err(invalid());
        }
        let role = AdminRole::try_from(token.role).unwrap_or(AdminRole::Unspecified);
        Ok(caller(&token.name, role, &token.team_id))
    }

    /// The caller, allowed to call the RPC at `path`; None for the open services.
    fn authorize(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(None);
        }
        let (rpc, need) = rule(path).ok_or_else(|| Status::unimplemented(format!("no admin RPC {path}")))?;
        let caller = self.identify(headers, rpc).inspect_err(|status| {
            tracing::warn!(rpc, reason = status.message(), "admin call refused: unauthenticated");
        })?;
        if !permits(caller.role, need) {
            let reason = format!(
                "{} is a{} {} token; {rpc} needs {}",
                caller.name,
                if caller.role == AdminRole::Admin { "n" } else { "" },
                role_name(caller.role),
                match need {
                    Need::Read => "any admin token",
                    Need::Write => "an operator or admin token",
                    Need::Admin => "an admin token",
                }
            );
            caller.record_denied(rpc, &reason);
            return Err(Status::permission_denied(reason));
        }
        Ok(Some(caller))
    }
}

pub fn role_name(role: AdminRole) -> &'static str {
    match role {
        AdminRole::Admin => "admin",
        AdminRole::Operator => "operator",
        AdminRole::Viewer => "viewer",
        AdminRole::Consumer => "consumer",
        AdminRole::Unspecified => "unspecified",
    }
}

/// Proposes refused attempts: at most `PER_ACTOR` a minute for one admin
/// token and `PER_MINUTE` for all on this node, so that a token looping on
/// a refused call neither grows the replicated trail without bound nor
/// crowds out the refusals of others. What goes over is logged.
struct DeniedRecorder {
    raft: RaftNode,
    /// The current minute, and the refusals recorded in it per actor.
    budget: Mutex<(i64, std::collections::HashMap<Arc<str>, u32>)>,
}

impl DeniedRecorder {
    const PER_ACTOR: u32 = 10;
    const PER_MINUTE: u32 = 120;

    fn admit(&self, actor: &Arc<str>, now: i64) -> bool {
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if budget.0 != now / 60_000 {
            *budget = (now / 60_000, Default::default());
        }
        let total: u32 = budget.1.values().sum();
        let mine = budget.1.entry(actor.clone()).or_default();
        if *mine >= Self::PER_ACTOR || total >= Self::PER_MINUTE {
            return false;
        }
        *mine += 1;
        true
    }

    fn record(&self, caller: &Caller, summary: &str, reason: &str) {
        let now = crate::clock::unix_ms();
        if !self.admit(&caller.name, now) {
            tracing::warn!(actor = %caller.name, rpc = caller.rpc, reason, "refused admin call not audited: too many refusals this minute");
            return;
        }
        let entry = AuditEntry {
            actor: caller.name.to_string(),
            actor_role: caller.role as i32,
            actor_team: caller.team_id.to_string(),
            rpc: caller.rpc.to_string(),
            summary: truncated(summary, 256),
            reason: truncated(reason, 2048),
            denied: true,
            ..Default::default()
        };
        let raft = self.raft.clone();
        let node = raft.node_id();
        tokio::spawn(async move {
            let command = Command::new(Op::RecordDenied(entry), crate::clock::unix_ms(), format!("node {node}"));
            if let Err(error) = raft.propose(command).await {
                tracing::warn!(%error, "a refused admin call could not be added to the audit trail");
            }
        });
    }
}

fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The layer that wraps every service of the admin server.
#[derive(Clone)]
pub struct AccessLayer(pub Arc<Access>);

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService { inner, access: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    access: Arc<Access>,
}

impl<S, B> tower::Service<http::Request<B>> for AccessService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone is not ready; the one polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let decision = self.access.authorize(request.uri().path(), request.headers());
        Box::pin(async move {
            match decision {
                Ok(None) => inner.call(request).await,
                Ok(Some(caller)) => CALLER.scope(caller, inner.call(request)).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every RPC the admin server offers, from the descriptors compiled in.
    fn every_rpc() -> BTreeSet<String> {
        let pool = crate::admin::declarative::pool();
        let mut rpcs = BTreeSet::new();
        for service in pool.services().filter(|s| s.package_name() == "tollgate.admin.v1") {
            for method in service.methods() {
                rpcs.insert(format!("{}/{}", service.full_name(), method.name()));
            }
        }
        rpcs
    }

    #[test]
    fn every_rpc_has_exactly_one_rule() {
        let rpcs = every_rpc();
        let ruled: BTreeSet<String> = RULES.iter().map(|(rpc, _)| rpc.to_string()).collect();
        let missing: Vec<_> = rpcs.difference(&ruled).collect();
        assert!(missing.is_empty(), "RPCs with no access rule (add them to RULES): {missing:?}");
        let stale: Vec<_> = ruled.difference(&rpcs).collect();
        assert!(stale.is_empty(), "rules for RPCs that do not exist: {stale:?}");
        assert_eq!(ruled.len(), RULES.len(), "an RPC has two rules");
        assert!(rpcs.len() > 50, "the descriptor set lists the admin services");
    }

    /// The table test: each role against each RPC.
    #[test]
    fn each_role_may_call_what_its_rule_allows() {
        for (rpc, need) in RULES {
            let path = format!("/{rpc}");
            let (name, found) = rule(&path).unwrap();
            assert_eq!(found, *need);
            assert!(rpc.ends_with(name));
            let read_only = *need == Need::Read;
            let admin_only = *need == Need::Admin;
            assert!(permits(AdminRole::Admin, *need), "{rpc}");
            assert_eq!(permits(AdminRole::Operator, *need), !admin_only, "operator on {rpc}");
            assert_eq!(permits(AdminRole::Viewer, *need), read_only, "viewer on {rpc}");
            assert!(!permits(AdminRole::Unspecified, *need), "{rpc}");
        }
        // What each name suggests is what the table says, so a misfiled rule shows.
        for (rpc, need) in RULES {
            let method = rpc.rsplit('/').next().unwrap();
            let reads = ["Get", "List", "WhoAmI", "Export"].iter().any(|p| method.starts_with(p));
            assert_eq!(*need == Need::Read, reads, "{rpc} is filed as {need:?}");
        }
        assert!(rule("/tollgate.admin.v1.AdminService/Nope").is_none());
        assert!(rule("tollgate.admin.v1.AdminService/GetService").is_none(), "paths start with /");
    }
}
