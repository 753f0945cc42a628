//! `tollgate ctl` for governance (DESIGN §7): `whoami`, `admin token`,
//! `audit`, `version`, `subscription`, and the declarative configuration
//! (`export`, `diff`, `apply`, `schema`).

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{AdminRole, ApiVersion, AuditEntry, Subscription, SubscriptionState, VersionState};

use super::client::Governance;
use super::{CtlError, Printer, entities, id, output};
use crate::admin::access::role_name;
use crate::admin::declarative::{is_reference, references_in};

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Named admin tokens: who may change what (roles admin, operator, viewer).
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; it is printed once and cannot be shown again.
    Create {
        /// Its name: what the audit trail calls whoever uses it.
        #[arg(long)]
        name: String,
        /// admin (everything), operator (what its team owns) or viewer (read).
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        /// The team an operator acts for (name or id).
        #[arg(long, default_value = "")]
        team: String,
        /// Lifetime such as 12h or 90d; default never expires.
        #[arg(long, value_parser = super::parse_lifetime)]
        ttl: Option<i64>,
    },
    /// Every token (never its secret).
    List,
    /// Revoke a token on every node.
    Revoke {
        /// Its name or id.
        token: String,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries of the last stretch of time, e.g. 1h or 7d.
    #[arg(long, value_parser = super::parse_lifetime)]
    since: Option<i64>,
    /// Only what this admin token (its name) did.
    #[arg(long, default_value = "")]
    actor: String,
    /// Only changes of this entity: an id, a name, or kind/name (`service/orders`).
    #[arg(long, default_value = "")]
    entity: String,
    /// At most this many entries, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum VersionCmd {
    /// Create a version (a draft) or replace its document, successor and sunset.
    Put(VersionPut),
    /// draft → published: routable, listed in the catalog.
    Publish(VersionRef),
    /// published → deprecated: served with Deprecation, Sunset and Link headers.
    Deprecate(VersionTransition),
    /// deprecated → retired: answers 410 naming the successor.
    Retire(VersionTransition),
    /// The versions of every service, or of one.
    List {
        /// Only this service's (name or id).
        service: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct VersionRef {
    /// The service (name or id).
    service: String,
    /// The version, e.g. v2.
    version: String,
}

#[derive(Debug, Args)]
pub struct VersionPut {
    #[command(flatten)]
    version: VersionRef,
    /// The OpenAPI 3.x document (JSON or YAML); `-` reads stdin.
    #[arg(long)]
    openapi: Option<PathBuf>,
    /// The version that replaces this one, once it is deprecated.
    #[arg(long, default_value = "")]
    successor: String,
    /// What the version is, for the catalog.
    #[arg(long, default_value = "")]
    description: String,
}

#[derive(Debug, Args)]
pub struct VersionTransition {
    #[command(flatten)]
    version: VersionRef,
    /// The version that replaces it.
    #[arg(long, default_value = "")]
    successor: String,
    /// When it stops being served (RFC 3339, e.g. 2027-06-30T00:00:00Z): the Sunset header.
    #[arg(long, value_parser = parse_time)]
    sunset: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionCmd {
    /// Subscribe a consumer to a service: approved at once if the service
    /// auto-approves, else pending until an operator of its team decides.
    Create {
        /// The consumer (name or id).
        #[arg(long)]
        consumer: String,
        /// The service (name or id).
        #[arg(long)]
        service: String,
    },
    /// Approve a pending subscription: the consumer's keys work on the service at once.
    Approve(Decision),
    /// Refuse a pending subscription.
    Reject(Decision),
    /// End an approved subscription: the consumer's keys stop working on the service at once.
    Revoke(Decision),
    /// Every subscription, or only those waiting for a decision.
    List {
        /// Only those waiting for a decision.
        #[arg(long)]
        pending: bool,
    },
}

#[derive(Debug, Args)]
pub struct Decision {
    /// The subscription's id.
    id: String,
    /// Why, for the consumer and the audit trail.
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The configuration file (YAML or JSON); `-` reads stdin.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Also delete what the file does not name.
    #[arg(long)]
    prune: bool,
}

fn parse_time(s: &str) -> Result<i64, String> {
    let time = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{s:?}: {e}; use e.g. 2027-06-30T00:00:00Z"))?;
    let since = time.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{s:?} is before 1970"))?;
    i64::try_from(since.as_millis()).map_err(|_| format!("{s:?} is too far away"))
}

fn read_input(path: &PathBuf) -> Result<String, CtlError> {
    if path.as_os_str() == "-" {
        return std::io::read_to_string(std::io::stdin())
            .map_err(|e| CtlError::Usage(format!("cannot read stdin: {e}")));
    }
    std::fs::read_to_string(path).map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", path.display())))
}

pub async fn whoami(mut governance: Governance, out: &Printer) -> Result<(), CtlError> {
    let me = governance.who_am_i(WhoAmIRequest {}).await?.into_inner();
    let role = role_name(AdminRole::try_from(me.role).unwrap_or_default());
    let value = json!({"name": me.name, "role": role, "team_id": me.team_id});
    out.one(value, || {
        if me.team_id.is_empty() {
            format!("{} ({role})", me.name)
        } else {
            format!("{} ({role} of team {})", me.name, me.team_id)
        }
    });
    Ok(())
}

pub async fn admin_command(
    cmd: AdminCmd,
    mut governance: Governance,
    out: &Printer,
    stale: bool,
) -> Result<(), CtlError> {
    let AdminCmd::Token(cmd) = cmd;
    match cmd {
        TokenCmd::Create { name, role, team, ttl } => {
            let role = crate::admin::governance::parse_role(&role).unwrap_or_default();
            let ttl_seconds = ttl.map_or(0, |ms| u64::try_from(ms / 1000).unwrap_or(0));
            let request = CreateAdminTokenRequest { name, role: role as i32, team, ttl_seconds };
            let created = governance.create_admin_token(request).await?.into_inner();
            let token = created.token.unwrap_or_default();
            let mut value = token_json(&token);
            value["plaintext"] = created.plaintext.clone().into();
            out.one(value, || {
                format!(
                    "created admin token {} ({})\n\n    {}\n\nStore it now: it is shown only once and cannot be recovered.",
                    token.name,
                    role_name(role),
                    created.plaintext
                )
            });
        }
        TokenCmd::List => {
            let tokens = governance.list_admin_tokens(ListRequest { stale }).await?.into_inner().tokens;
            let mut rows = vec![["NAME", "ROLE", "TEAM", "PREFIX", "EXPIRES", "REVOKED"].map(String::from).to_vec()];
            rows.extend(tokens.iter().map(|t| {
                vec![
                    t.name.clone(),
                    role_name(AdminRole::try_from(t.role).unwrap_or_default()).into(),
                    t.team_id.clone(),
                    t.display_prefix.clone(),
                    if t.expires_at_ms == 0 { "never".into() } else { output::date(t.expires_at_ms) },
                    t.revoked.to_string(),
                ]
            }));
            out.list(tokens.iter().map(token_json).collect(), rows);
        }
        TokenCmd::Revoke { token } => {
            let revoked = governance.revoke_admin_token(DeleteRequest { id_or_name: token }).await?.into_inner();
            out.one(token_json(&revoked), || format!("revoked admin token {}", revoked.name));
        }
    }
    Ok(())
}

fn token_json(t: &tollgate_proto::config::v1::AdminToken) -> Value {
    json!({
        "id": id(&t.meta), "name": t.name, "role": role_name(AdminRole::try_from(t.role).unwrap_or_default()),
        "team_id": t.team_id, "display_prefix": t.display_prefix, "expires_at_ms": t.expires_at_ms, "revoked": t.revoked,
    })
}

pub async fn audit(args: AuditArgs, mut governance: Governance, out: &Printer, stale: bool) -> Result<(), CtlError> {
    let since_ms = args.since.map_or(0, |ms| crate::clock::unix_ms() - ms);
    let request = ListAuditRequest { since_ms, actor: args.actor, entity: args.entity, limit: args.limit, stale };
    let entries = governance.list_audit(request).await?.into_inner().entries;
    let values = entries.iter().map(audit_json).collect::<Result<Vec<_>, _>>()?;
    let mut rows = vec![["TIME", "ACTOR", "ROLE", "RPC", "WHAT", "OUTCOME"].map(String::from).to_vec()];
    rows.extend(entries.iter().map(|e| {
        vec![
            output::date(e.at_ms),
            e.actor.clone(),
            role_name(AdminRole::try_from(e.actor_role).unwrap_or_default()).into(),
            e.rpc.clone(),
            e.summary.clone(),
            if e.denied { format!("denied: {}", e.reason) } else { "applied".into() },
        ]
    }));
    out.list(values, rows);
    Ok(())
}

/// An entry with its images as JSON (they are protobuf bytes on the wire).
fn audit_json(e: &AuditEntry) -> Result<Value, CtlError> {
    let image = |image: &Option<tollgate_proto::config::v1::AuditImage>| -> Result<Value, CtlError> {
        match image {
            Some(i) => entities::message_json(&i.type_name, &i.entity),
            None => Ok(Value::Null),
        }
    };
    let changes = e
        .changes
        .iter()
        .map(|c| {
            Ok(json!({
                "kind": c.kind, "id": c.entity_id, "name": c.entity_name,
                "before": image(&c.before)?, "after": image(&c.after)?,
            }))
        })
        .collect::<Result<Vec<_>, CtlError>>()?;
    Ok(json!({
        "index": id(&e.meta), "at_ms": e.at_ms, "actor": e.actor,
        "role": role_name(AdminRole::try_from(e.actor_role).unwrap_or_default()), "team_id": e.actor_team,
        "rpc": e.rpc, "summary": e.summary, "denied": e.denied, "reason": e.reason, "changes": changes,
    }))
}

pub async fn version_command(
    cmd: VersionCmd,
    mut governance: Governance,
    admin: super::client::Admin,
    out: &Printer,
    stale: bool,
) -> Result<(), CtlError> {
    let transition = |t: VersionTransition, state: VersionState| SetApiVersionStateRequest {
        service: t.version.service,
        version: t.version.version,
        state: state as i32,
        successor: t.successor,
        sunset_at_ms: t.sunset.unwrap_or(0),
    };
    let request = match cmd {
        VersionCmd::Put(put) => {
            let openapi = put.openapi.as_ref().map(read_input).transpose()?.unwrap_or_default();
            let request = PutApiVersionRequest {
                service: put.version.service,
                version: put.version.version,
                openapi,
                successor: put.successor,
                sunset_at_ms: 0,
                description: put.description,
            };
            let v = governance.put_api_version(request).await?.into_inner();
            out.one(version_json(&v), || format!("stored version {} ({})", v.version, state_name(&v)));
            return Ok(());
        }
        VersionCmd::Publish(r) => SetApiVersionStateRequest {
            service: r.service,
            version: r.version,
            state: VersionState::Published as i32,
            ..Default::default()
        },
        VersionCmd::Deprecate(t) => transition(t, VersionState::Deprecated),
        VersionCmd::Retire(t) => transition(t, VersionState::Retired),
        VersionCmd::List { service } => return list_versions(service, admin, out, stale).await,
    };
    let v = governance.set_api_version_state(request).await?.into_inner();
    out.one(version_json(&v), || format!("version {} is {}", v.version, state_name(&v)));
    Ok(())
}

async fn list_versions(
    service: Option<String>,
    mut admin: super::client::Admin,
    out: &Printer,
    stale: bool,
) -> Result<(), CtlError> {
    let services = admin.list_services(ListRequest { stale }).await?.into_inner().services;
    let service_id =
        match &service {
            Some(s) => {
                Some(services.iter().find(|x| &x.name == s || &id(&x.meta) == s).map(|x| id(&x.meta)).ok_or_else(
                    || CtlError::Status(tonic::Status::not_found(format!("service {s:?} does not exist"))),
                )?)
            }
            None => None,
        };
    let request = ListEntitiesRequest { kind: "api version".into(), stale };
    let listed = admin.list_entities(request).await?.into_inner();
    let mut versions = listed
        .entities
        .iter()
        .map(|bytes| prost::Message::decode(bytes.as_slice()))
        .collect::<Result<Vec<ApiVersion>, _>>()
        .map_err(|e| CtlError::Status(tonic::Status::internal(e.to_string())))?;
    versions.retain(|v| service_id.as_ref().is_none_or(|s| &v.service_id == s));
    let name_of = |sid: &str| services.iter().find(|s| id(&s.meta) == sid).map_or(sid.to_string(), |s| s.name.clone());
    let mut rows = vec![["SERVICE", "VERSION", "STATE", "SUCCESSOR", "SUNSET", "OPENAPI"].map(String::from).to_vec()];
    rows.extend(versions.iter().map(|v| {
        vec![
            name_of(&v.service_id),
            v.version.clone(),
            state_name(v).into(),
            v.successor.clone(),
            if v.sunset_at_ms == 0 { String::new() } else { output::date(v.sunset_at_ms) },
            if v.openapi.is_empty() { "no".into() } else { format!("{} bytes", v.openapi.len()) },
        ]
    }));
    out.list(versions.iter().map(version_json).collect(), rows);
    Ok(())
}

fn state_name(v: &ApiVersion) -> &'static str {
    tollgate_raft::version_state_name(VersionState::try_from(v.state).unwrap_or_default())
}

fn version_json(v: &ApiVersion) -> Value {
    json!({
        "id": id(&v.meta), "service_id": v.service_id, "version": v.version, "state": state_name(v),
        "successor": v.successor, "sunset_at_ms": v.sunset_at_ms, "deprecated_at_ms": v.deprecated_at_ms,
        "description": v.description, "openapi_bytes": v.openapi.len(),
    })
}

pub async fn subscription_command(
    cmd: SubscriptionCmd,
    mut governance: Governance,
    mut admin: super::client::Admin,
    out: &Printer,
    stale: bool,
) -> Result<(), CtlError> {
    let decide = |d: Decision, state: SubscriptionState| DecideSubscriptionRequest {
        id: d.id,
        state: state as i32,
        reason: d.reason,
    };
    let request = match cmd {
        SubscriptionCmd::Create { consumer, service } => {
            let s = governance.subscribe(SubscribeRequest { consumer, service }).await?.into_inner();
            out.one(subscription_json(&s), || format!("subscription {} is {}", id(&s.meta), sub_state(&s)));
            return Ok(());
        }
        SubscriptionCmd::Approve(d) => decide(d, SubscriptionState::Approved),
        SubscriptionCmd::Reject(d) => decide(d, SubscriptionState::Rejected),
        SubscriptionCmd::Revoke(d) => decide(d, SubscriptionState::Revoked),
        SubscriptionCmd::List { pending } => {
            let listed =
                admin.list_entities(ListEntitiesRequest { kind: "subscription".into(), stale }).await?.into_inner();
            let mut subs = listed
                .entities
                .iter()
                .map(|bytes| prost::Message::decode(bytes.as_slice()))
                .collect::<Result<Vec<Subscription>, _>>()
                .map_err(|e| CtlError::Status(tonic::Status::internal(e.to_string())))?;
            subs.retain(|s| !pending || s.state == SubscriptionState::Pending as i32);
            let mut rows = vec![["ID", "CONSUMER", "SERVICE", "STATE", "DECIDED_BY"].map(String::from).to_vec()];
            rows.extend(subs.iter().map(|s| {
                vec![
                    id(&s.meta),
                    s.consumer_id.clone(),
                    s.service_id.clone(),
                    sub_state(s).into(),
                    s.decided_by.clone(),
                ]
            }));
            out.list(subs.iter().map(subscription_json).collect(), rows);
            return Ok(());
        }
    };
    let s = governance.decide_subscription(request).await?.into_inner();
    out.one(subscription_json(&s), || format!("subscription {} is {}", id(&s.meta), sub_state(&s)));
    Ok(())
}

fn sub_state(s: &Subscription) -> &'static str {
    match SubscriptionState::try_from(s.state).unwrap_or_default() {
        SubscriptionState::Pending => "pending",
        SubscriptionState::Approved => "approved",
        SubscriptionState::Rejected => "rejected",
        SubscriptionState::Revoked => "revoked",
        SubscriptionState::Unspecified => "unspecified",
    }
}

fn subscription_json(s: &Subscription) -> Value {
    json!({
        "id": id(&s.meta), "service_id": s.service_id, "consumer_id": s.consumer_id, "state": sub_state(s),
        "decided_by": s.decided_by, "reason": s.reason,
    })
}

pub async fn export(mut governance: Governance, stale: bool) -> Result<String, CtlError> {
    Ok(governance.export_config(ExportConfigRequest { stale }).await?.into_inner().yaml)
}

/// `diff` (dry run) and `apply`: the file's secret references are resolved
/// here, on the operator's machine, and only their values sent.
pub async fn apply(args: ApplyArgs, dry_run: bool, mut governance: Governance, out: &Printer) -> Result<(), CtlError> {
    let document = read_input(&args.file)?;
    let references = references_in(&document).map_err(CtlError::Usage)?;
    // The file says what this machine's environment and files are read for:
    // a file from elsewhere must not send them anywhere unseen.
    if !references.is_empty() {
        let names: Vec<&str> = references.iter().map(String::as_str).collect();
        eprintln!("secret references in the file: {}", names.join(", "));
    }
    let secrets = if dry_run { HashMap::new() } else { resolve(&references)? };
    let request = ApplyConfigRequest { document, secrets, prune: args.prune, dry_run };
    let answer = governance.apply_config(request).await?.into_inner();
    let values: Vec<Value> = answer
        .changes
        .iter()
        .map(|c| json!({"action": c.action, "kind": c.kind, "name": c.name, "fields": c.fields}))
        .collect();
    let summary = if answer.changes.is_empty() {
        "no changes".to_string()
    } else {
        let lines: Vec<String> = answer
            .changes
            .iter()
            .map(|c| {
                let sign = match c.action.as_str() {
                    "create" => "+",
                    "delete" => "-",
                    _ => "~",
                };
                let fields = if c.fields.is_empty() { String::new() } else { format!(" ({})", c.fields.join(", ")) };
                format!("{sign} {} {}{fields}", c.kind, c.name)
            })
            .collect();
        let tail = if dry_run {
            format!("{} change(s) would be made; `tollgate ctl apply` makes them", answer.changes.len())
        } else {
            format!("applied {} change(s) at revision {}", answer.changes.len(), answer.revision)
        };
        format!("{}\n{tail}", lines.join("\n"))
    };
    out.one(json!({"changes": values, "revision": answer.revision, "dry_run": dry_run}), || summary);
    Ok(())
}

/// Reads each `env:NAME` and `file:PATH` the document names.
fn resolve(references: &std::collections::BTreeSet<String>) -> Result<HashMap<String, String>, CtlError> {
    let mut values = HashMap::new();
    for reference in references.iter().filter(|r| is_reference(r)) {
        let value = if let Some(name) = reference.strip_prefix("env:") {
            std::env::var(name).map_err(|_| {
                CtlError::Usage(format!("the file names {reference}, but the environment variable {name} is not set"))
            })?
        } else {
            let path = reference.strip_prefix("file:").unwrap_or_default();
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| CtlError::Usage(format!("the file names {reference}, which cannot be read: {e}")))?
        };
        if value.is_empty() {
            return Err(CtlError::Usage(format!("the file names {reference}, which is empty")));
        }
        values.insert(reference.clone(), value);
    }
    Ok(values)
}
