//! `tollgate ctl`: the admin API from the command line. Tables for people,
//! `-o json` for scripts, and exit codes scripts can branch on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other error |
//! | 2 | bad usage (flags, arguments, missing token) |
//! | 3 | not found |
//! | 4 | already exists |
//! | 5 | invalid argument or failed precondition |
//! | 6 | admin token rejected |
//! | 7 | node unreachable or unavailable |

mod ai;
mod client;
mod output;
mod policy;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{AuthMode, Consumer, PathMatch, Route, RoutePath, Service, Target};

pub use output::Format;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        use tonic::Code;
        match self {
            CtlError::Usage(_) => 2,
            CtlError::Unavailable(_) => 7,
            CtlError::Status(s) => match s.code() {
                Code::NotFound => 3,
                Code::AlreadyExists => 4,
                Code::InvalidArgument | Code::FailedPrecondition => 5,
                Code::Unauthenticated | Code::PermissionDenied => 6,
                Code::Unavailable | Code::DeadlineExceeded => 7,
                _ => 1,
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin API address of any node.
    #[arg(long, global = true, env = "TOLLGATE_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Admin bearer token [default: read from <data-dir>/admin-token].
    #[arg(long, global = true, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory of a local node, to find its admin token.
    #[arg(long, global = true, env = "TOLLGATE_DATA_DIR", default_value = "./tollgate-data")]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: Format,
    /// Read this node's applied state instead of a linearizable read through
    /// the leader: works during a partition, may miss the latest writes.
    #[arg(long, global = true)]
    pub stale: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

// Parsed once per process; boxing the flag structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Backend APIs that routes forward to.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Rules that map requests to services.
    #[command(subcommand)]
    Route(RouteCmd),
    /// Callers of APIs, who own API keys.
    #[command(subcommand)]
    Consumer(ConsumerCmd),
    /// API keys of consumers.
    #[command(subcommand)]
    Key(KeyCmd),
    /// This node's Raft role and indexes.
    Status,
    /// Cluster membership: status, join tokens, learners, voters, leadership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// AI providers (OpenAI, Anthropic, Gemini, Azure, OpenAI-compatible) and their keys.
    #[command(subcommand)]
    Provider(ai::ProviderCmd),
    /// Model names clients use, and the provider models behind them.
    #[command(subcommand)]
    Alias(ai::AliasCmd),
    /// Model prices: the built-in catalog and overrides.
    #[command(subcommand)]
    Price(ai::PriceCmd),
    /// Tokens and cost from this node's usage ledger.
    Usage(ai::UsageArgs),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Every member with its role, term, log/commit/applied/data-plane indexes and lag.
    Status,
    /// Create a join token for `tollgate serve --join <peer> --join-token <token>`.
    Token {
        /// Lifetime such as 3600s, 90m, 12h or 7d.
        #[arg(long, default_value = "24h", value_parser = parse_lifetime)]
        ttl: i64,
    },
    /// Join tokens that exist (ids and expiry; secrets are never shown again).
    Tokens,
    /// Revoke a join token (its id, or the whole token).
    RevokeToken { id: String },
    /// Add a running node (with the cluster's certificates) as a learner.
    AddLearner { node_id: u64, peer_addr: String },
    /// Make a learner a voter.
    Promote { node_id: u64 },
    /// Remove a node from the cluster.
    Remove { node_id: u64 },
    /// Hand leadership to another voter.
    TransferLeader { node_id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a service: `service create orders --target 10.0.0.5:8080 --target 10.0.0.6:8080*3`.
    Create {
        name: String,
        #[command(flatten)]
        fields: ServiceFields,
    },
    List,
    Get {
        service: String,
    },
    /// Change fields of a service; flags not given keep their value.
    Update {
        service: String,
        #[arg(long)]
        rename: Option<String>,
        #[command(flatten)]
        fields: ServiceFields,
    },
    Delete {
        service: String,
    },
}

#[derive(Debug, Args)]
pub struct ServiceFields {
    /// Upstream target as host:port, or host:port*weight. Repeatable.
    #[arg(long = "target", value_name = "HOST:PORT[*WEIGHT]")]
    targets: Vec<String>,
    #[arg(long = "api-version")]
    version: Option<String>,
    #[arg(long)]
    connect_timeout_ms: Option<u32>,
    #[arg(long)]
    request_timeout_ms: Option<u32>,
    #[arg(long)]
    description: Option<String>,
    #[command(flatten)]
    policy: policy::ServicePolicyFlags,
}

#[derive(Debug, Subcommand)]
pub enum RouteCmd {
    /// Create a route: `route create orders --service orders --path /orders --strip-prefix`,
    /// or an AI gateway route: `route create llm --ai --path /v1`.
    Create {
        name: String,
        #[arg(long, required_unless_present = "ai", conflicts_with = "ai")]
        service: Option<String>,
        /// Serve the OpenAI-compatible AI API below the route's path instead of forwarding.
        #[arg(long)]
        ai: bool,
        #[command(flatten)]
        fields: RouteFields,
    },
    List,
    Get {
        route: String,
    },
    /// Change fields of a route; list flags (--path, --host, --method) replace the whole list when given.
    Update {
        route: String,
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        fields: RouteFields,
    },
    Delete {
        route: String,
    },
}

#[derive(Debug, Args)]
pub struct RouteFields {
    /// Prefix path (matches the path and everything below it). Repeatable.
    #[arg(long = "path")]
    prefix_paths: Vec<String>,
    /// Exact path. Repeatable.
    #[arg(long = "exact-path")]
    exact_paths: Vec<String>,
    /// Template path with {params}, e.g. /users/{id}. Repeatable.
    #[arg(long = "template-path")]
    template_paths: Vec<String>,
    /// Host name or *.wildcard. Repeatable; none = any host.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// HTTP method. Repeatable; none = any method.
    #[arg(long = "method")]
    methods: Vec<String>,
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
    /// Remove the matched prefix before forwarding.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    strip_prefix: Option<bool>,
    /// Authentication: api-key (default), jwt, api-key-or-jwt, or none.
    #[arg(long, value_parser = ["api-key", "none", "jwt", "api-key-or-jwt"])]
    auth: Option<String>,
    #[command(flatten)]
    policy: policy::RoutePolicyFlags,
}

#[derive(Debug, Subcommand)]
pub enum ConsumerCmd {
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Get {
        consumer: String,
    },
    /// Deletes the consumer and all of its API keys.
    Delete {
        consumer: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a key; its plaintext is printed once and cannot be shown again.
    Create {
        #[arg(long)]
        consumer: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime such as 3600s, 90m, 12h or 30d; default never expires.
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<i64>,
        /// AI model (alias or provider/model, trailing * for a prefix) the key may use.
        /// Repeatable; none = every model.
        #[arg(long = "model")]
        models: Vec<String>,
    },
    List {
        #[arg(long, default_value = "")]
        consumer: String,
    },
    Get {
        id: String,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    Delete {
        id: String,
    },
}

/// Parses `3600s`, `90m`, `12h`, `30d` (or bare seconds) into milliseconds.
pub fn parse_lifetime(s: &str) -> Result<i64, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = number.parse().map_err(|_| format!("{s:?}: expected a number followed by s, m, h or d"))?;
    let seconds = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(seconds * 1000)
}

fn parse_target(s: &str) -> Result<Target, CtlError> {
    let (addr, weight) = match s.rsplit_once('*') {
        Some((addr, w)) => {
            (addr, w.parse().map_err(|_| CtlError::Usage(format!("target {s:?}: weight must be a number")))?)
        }
        None => (s, 1),
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| CtlError::Usage(format!("target {s:?} must be host:port, e.g. 127.0.0.1:8000")))?;
    let port = port.parse().map_err(|_| CtlError::Usage(format!("target {s:?}: port must be a number")))?;
    Ok(Target { host: host.trim_start_matches('[').trim_end_matches(']').to_string(), port, weight })
}

impl ServiceFields {
    fn apply_to(&self, service: &mut Service) -> Result<(), CtlError> {
        if !self.targets.is_empty() {
            service.targets = self.targets.iter().map(|t| parse_target(t)).collect::<Result<_, _>>()?;
        }
        if let Some(v) = &self.version {
            service.version = v.clone();
        }
        if let Some(v) = self.connect_timeout_ms {
            service.connect_timeout_ms = v;
        }
        if let Some(v) = self.request_timeout_ms {
            service.request_timeout_ms = v;
        }
        if let Some(v) = &self.description {
            service.description = v.clone();
        }
        self.policy.apply_to(service)
    }
}

impl RouteFields {
    fn apply_to(&self, route: &mut Route) -> Result<(), CtlError> {
        let paths: Vec<RoutePath> = [
            (PathMatch::Prefix, &self.prefix_paths),
            (PathMatch::Exact, &self.exact_paths),
            (PathMatch::Template, &self.template_paths),
        ]
        .into_iter()
        .flat_map(|(kind, list)| list.iter().map(move |p| RoutePath { kind: kind as i32, path: p.clone() }))
        .collect();
        if !paths.is_empty() {
            route.paths = paths;
        }
        if !self.hosts.is_empty() {
            route.hosts = self.hosts.clone();
        }
        if !self.methods.is_empty() {
            route.methods = self.methods.clone();
        }
        if let Some(p) = self.priority {
            route.priority = p;
        }
        if let Some(s) = self.strip_prefix {
            route.strip_prefix = s;
        }
        match self.auth.as_deref() {
            Some("none") => route.auth = AuthMode::None as i32,
            Some("jwt") => route.auth = AuthMode::Jwt as i32,
            Some("api-key-or-jwt") => route.auth = AuthMode::ApiKeyOrJwt as i32,
            Some(_) => route.auth = AuthMode::ApiKey as i32,
            None => {}
        }
        self.policy.apply_to(route)
    }
}

/// Runs one ctl command, printing its result to stdout.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    let token = client::resolve_token(args.token.as_deref(), &args.data_dir)?;
    let (mut admin, cluster, ai_client) = client::connect(&args.admin, &token).await?;
    let out = Printer(args.output);
    let stale = args.stale;
    match args.command {
        CtlCommand::Service(cmd) => match cmd {
            ServiceCmd::Create { name, fields } => {
                let mut service = Service { name, ..Default::default() };
                fields.apply_to(&mut service)?;
                let created = admin.create_service(service).await?.into_inner();
                out.one(output::service_json(&created), || {
                    format!("created service {} ({})", created.name, id(&created.meta))
                });
            }
            ServiceCmd::List => {
                let list = admin.list_services(ListRequest { stale }).await?.into_inner().services;
                out.list(list.iter().map(output::service_json).collect(), output::service_rows(&list));
            }
            ServiceCmd::Get { service } => {
                let s = admin.get_service(GetRequest { id_or_name: service, stale }).await?.into_inner();
                let rows = output::service_rows(std::slice::from_ref(&s));
                out.detail(output::service_json(&s), rows, output::service_detail_rows(&s));
            }
            ServiceCmd::Update { service, rename, fields } => {
                let mut s = admin.get_service(GetRequest { id_or_name: service, stale: false }).await?.into_inner();
                fields.apply_to(&mut s)?;
                if let Some(name) = rename {
                    s.name = name;
                }
                let updated = admin.update_service(s).await?.into_inner();
                out.one(output::service_json(&updated), || format!("updated service {}", updated.name));
            }
            ServiceCmd::Delete { service } => {
                let r = admin.delete_service(DeleteRequest { id_or_name: service.clone() }).await?.into_inner();
                out.one(json!({"deleted": service, "revision": r.revision}), || format!("deleted service {service}"));
            }
        },
        CtlCommand::Route(cmd) => match cmd {
            RouteCmd::Create { name, service, ai, fields } => {
                let mut route =
                    Route { name, service_id: service.unwrap_or_default(), ai_gateway: ai, ..Default::default() };
                fields.apply_to(&mut route)?;
                let created = admin.create_route(route).await?.into_inner();
                out.one(output::route_json(&created), || {
                    format!("created route {} ({})", created.name, id(&created.meta))
                });
            }
            RouteCmd::List => {
                let list = admin.list_routes(ListRequest { stale }).await?.into_inner().routes;
                out.list(list.iter().map(output::route_json).collect(), output::route_rows(&list));
            }
            RouteCmd::Get { route } => {
                let r = admin.get_route(GetRequest { id_or_name: route, stale }).await?.into_inner();
                out.detail(
                    output::route_json(&r),
                    output::route_rows(std::slice::from_ref(&r)),
                    output::route_detail_rows(&r),
                );
            }
            RouteCmd::Update { route, service, fields } => {
                let mut r = admin.get_route(GetRequest { id_or_name: route, stale: false }).await?.into_inner();
                fields.apply_to(&mut r)?;
                if let Some(service) = service {
                    r.service_id = service;
                }
                let updated = admin.update_route(r).await?.into_inner();
                out.one(output::route_json(&updated), || format!("updated route {}", updated.name));
            }
            RouteCmd::Delete { route } => {
                let r = admin.delete_route(DeleteRequest { id_or_name: route.clone() }).await?.into_inner();
                out.one(json!({"deleted": route, "revision": r.revision}), || format!("deleted route {route}"));
            }
        },
        CtlCommand::Consumer(cmd) => match cmd {
            ConsumerCmd::Create { name, description } => {
                let created =
                    admin.create_consumer(Consumer { name, description, ..Default::default() }).await?.into_inner();
                out.one(output::consumer_json(&created), || {
                    format!("created consumer {} ({})", created.name, id(&created.meta))
                });
            }
            ConsumerCmd::List => {
                let list = admin.list_consumers(ListRequest { stale }).await?.into_inner().consumers;
                out.list(list.iter().map(output::consumer_json).collect(), output::consumer_rows(&list));
            }
            ConsumerCmd::Get { consumer } => {
                let c = admin.get_consumer(GetRequest { id_or_name: consumer, stale }).await?.into_inner();
                out.list_one(output::consumer_json(&c), output::consumer_rows(std::slice::from_ref(&c)));
            }
            ConsumerCmd::Delete { consumer } => {
                let r = admin.delete_consumer(DeleteRequest { id_or_name: consumer.clone() }).await?.into_inner();
                out.one(json!({"deleted": consumer, "revision": r.revision}), || {
                    format!("deleted consumer {consumer}")
                });
            }
        },
        CtlCommand::Key(cmd) => match cmd {
            KeyCmd::Create { consumer, name, expires_in, models } => {
                let expires_at_ms = expires_in.map_or(0, |ms| crate::clock::unix_ms() + ms);
                let request = CreateApiKeyRequest { consumer, name, expires_at_ms, allowed_models: models };
                let created = admin.create_api_key(request).await?.into_inner();
                let key = created.api_key.unwrap_or_default();
                let mut value = output::api_key_json(&key);
                value["plaintext"] = Value::String(created.plaintext.clone());
                out.one(value, || {
                    format!(
                        "created key {}\n\n    {}\n\nStore it now: it is shown only once and cannot be recovered.",
                        id(&key.meta),
                        created.plaintext
                    )
                });
            }
            KeyCmd::List { consumer } => {
                let list = admin.list_api_keys(ListApiKeysRequest { consumer, stale }).await?.into_inner().api_keys;
                out.list(list.iter().map(output::api_key_json).collect(), output::api_key_rows(&list));
            }
            KeyCmd::Get { id } => {
                let k = admin.get_api_key(GetRequest { id_or_name: id, stale }).await?.into_inner();
                out.list_one(output::api_key_json(&k), output::api_key_rows(std::slice::from_ref(&k)));
            }
            KeyCmd::Disable { id } => {
                let k = admin
                    .update_api_key(UpdateApiKeyRequest { id, disabled: Some(true), ..Default::default() })
                    .await?;
                let k = k.into_inner();
                out.one(output::api_key_json(&k), || format!("disabled key {}", self::id(&k.meta)));
            }
            KeyCmd::Enable { id } => {
                let k = admin
                    .update_api_key(UpdateApiKeyRequest { id, disabled: Some(false), ..Default::default() })
                    .await?;
                let k = k.into_inner();
                out.one(output::api_key_json(&k), || format!("enabled key {}", self::id(&k.meta)));
            }
            KeyCmd::Delete { id } => {
                let r = admin.delete_api_key(DeleteRequest { id_or_name: id.clone() }).await?.into_inner();
                out.one(json!({"deleted": id, "revision": r.revision}), || format!("deleted key {id}"));
            }
        },
        CtlCommand::Cluster(cmd) => cluster_command(cmd, cluster, &out).await?,
        CtlCommand::Provider(cmd) => ai::provider_command(cmd, ai_client, &out, stale).await?,
        CtlCommand::Alias(cmd) => ai::alias_command(cmd, ai_client, &out, stale).await?,
        CtlCommand::Price(cmd) => ai::price_command(cmd, ai_client, &out).await?,
        CtlCommand::Usage(args) => ai::usage_command(args, ai_client, &out).await?,
        CtlCommand::Status => {
            let s = admin.get_node_status(GetNodeStatusRequest {}).await?.into_inner();
            let value = json!({
                "node_id": s.node_id, "role": s.role, "current_term": s.current_term, "leader_id": s.leader_id,
                "last_log_index": s.last_log_index, "committed_index": s.committed_index,
                "applied_index": s.applied_index, "data_plane_index": s.data_plane_index, "version": s.version,
            });
            let rows = vec![
                ["NODE", "ROLE", "TERM", "LEADER", "LAST_LOG", "COMMITTED", "APPLIED", "DATA_PLANE"]
                    .map(String::from)
                    .to_vec(),
                vec![
                    s.node_id.to_string(),
                    s.role.clone(),
                    s.current_term.to_string(),
                    s.leader_id.map_or("-".into(), |l| l.to_string()),
                    s.last_log_index.to_string(),
                    s.committed_index.to_string(),
                    s.applied_index.to_string(),
                    s.data_plane_index.to_string(),
                ],
            ];
            out.list_one(value, rows);
        }
    }
    Ok(())
}

async fn cluster_command(cmd: ClusterCmd, mut cluster: client::Cluster, out: &Printer) -> Result<(), CtlError> {
    let membership = |r: tonic::Response<MembershipResponse>, what: String| {
        let index = r.into_inner().index;
        out.one(json!({"index": index}), || format!("{what} (log index {index})"));
    };
    match cmd {
        ClusterCmd::Status => {
            let status = cluster.get_cluster_status(GetClusterStatusRequest {}).await?.into_inner();
            let members: Vec<Value> = status
                .members
                .iter()
                .map(|m| {
                    let s = m.status.clone().unwrap_or_default();
                    json!({
                        "node_id": m.node_id, "peer_addr": m.peer_addr, "voter": m.voter, "reachable": m.reachable,
                        "error": m.error, "role": s.role, "current_term": s.current_term, "leader_id": s.leader_id,
                        "last_log_index": s.last_log_index, "committed_index": s.committed_index,
                        "applied_index": s.applied_index, "data_plane_index": s.data_plane_index, "lag": m.lag,
                        "admin_addr": m.admin_addr, "proxy_addr": m.proxy_addr,
                    })
                })
                .collect();
            let value = json!({"leader_id": status.leader_id, "current_term": status.current_term, "members": members});
            let mut rows = vec![
                ["NODE", "ROLE", "VOTER", "PEER", "TERM", "COMMITTED", "APPLIED", "DATA_PLANE", "LAG", "ADMIN"]
                    .map(String::from)
                    .to_vec(),
            ];
            for m in &status.members {
                let s = m.status.clone().unwrap_or_default();
                let role = if m.reachable { s.role.clone() } else { format!("unreachable: {}", m.error) };
                rows.push(vec![
                    m.node_id.to_string(),
                    role,
                    m.voter.to_string(),
                    m.peer_addr.clone(),
                    s.current_term.to_string(),
                    s.committed_index.to_string(),
                    s.applied_index.to_string(),
                    s.data_plane_index.to_string(),
                    m.lag.to_string(),
                    m.admin_addr.clone(),
                ]);
            }
            out.list_one(value, rows);
        }
        ClusterCmd::Token { ttl } => {
            let ttl_seconds = (ttl / 1000).max(1) as u64;
            let r = cluster.create_join_token(CreateJoinTokenRequest { ttl_seconds }).await?.into_inner();
            out.one(json!({"token": r.token, "expires_at_ms": r.expires_at_ms}), || r.token.clone());
        }
        ClusterCmd::Tokens => {
            let tokens = cluster.list_join_tokens(ListJoinTokensRequest {}).await?.into_inner().tokens;
            let rows: Vec<Vec<String>> =
                std::iter::once(vec!["ID".to_string(), "CREATED_AT_MS".into(), "EXPIRES_AT_MS".into()])
                    .chain(tokens.iter().map(|t| {
                        let m = t.meta.clone().unwrap_or_default();
                        vec![m.id, m.created_at_ms.to_string(), t.expires_at_ms.to_string()]
                    }))
                    .collect();
            let values = tokens
                .iter()
                .map(|t| {
                    let m = t.meta.clone().unwrap_or_default();
                    json!({"id": m.id, "created_at_ms": m.created_at_ms, "expires_at_ms": t.expires_at_ms})
                })
                .collect();
            out.list(values, rows);
        }
        ClusterCmd::RevokeToken { id } => {
            let r = cluster.revoke_join_token(NodeTokenRequest { id: id.clone() }).await?.into_inner();
            out.one(json!({"revoked": id, "revision": r.revision}), || "revoked the join token".to_string());
        }
        ClusterCmd::AddLearner { node_id, peer_addr } => {
            let r = cluster.add_learner(AddLearnerRequest { node_id, peer_addr }).await?;
            membership(r, format!("added node {node_id} as a learner"));
        }
        ClusterCmd::Promote { node_id } => {
            let r = cluster.promote_voter(NodeRequest { node_id }).await?;
            membership(r, format!("node {node_id} is a voter"));
        }
        ClusterCmd::Remove { node_id } => {
            let r = cluster.remove_node(NodeRequest { node_id }).await?;
            membership(r, format!("removed node {node_id}"));
        }
        ClusterCmd::TransferLeader { node_id } => {
            let r = cluster.transfer_leader(NodeRequest { node_id }).await?;
            membership(r, format!("asked node {node_id} to take over leadership"));
        }
    }
    Ok(())
}

fn id(meta: &Option<tollgate_proto::config::v1::Meta>) -> String {
    meta.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

struct Printer(Format);

impl Printer {
    /// A write's result: a short sentence, or the entity as JSON.
    fn one(&self, value: Value, message: impl FnOnce() -> String) {
        match self.0 {
            Format::Json => println!("{value:#}"),
            Format::Table => println!("{}", message()),
        }
    }

    fn list(&self, values: Vec<Value>, rows: Vec<Vec<String>>) {
        match self.0 {
            Format::Json => println!("{:#}", Value::Array(values)),
            Format::Table => print!("{}", output::table(&rows)),
        }
    }

    /// One entity: its row, then its settings one per line (`get`).
    fn detail(&self, value: Value, rows: Vec<Vec<String>>, details: Vec<Vec<String>>) {
        match self.0 {
            Format::Json => println!("{value:#}"),
            Format::Table if details.is_empty() => print!("{}", output::table(&rows)),
            Format::Table => print!("{}\n{}", output::table(&rows), output::table(&details)),
        }
    }

    fn list_one(&self, value: Value, rows: Vec<Vec<String>>) {
        match self.0 {
            Format::Json => println!("{value:#}"),
            Format::Table => print!("{}", output::table(&rows)),
        }
    }
}
