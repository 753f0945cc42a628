//! `tollgate ctl`: the admin API from the command line. Tables for people,
//! `-o json` for scripts, and exit codes scripts can branch on
//! ([`EXIT_CODES`], also printed by `tollgate ctl --help`):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also when stdout is closed early, as by `| head`) |
//! | 1 | any other error |
//! | 2 | bad usage (flags, arguments, missing token) |
//! | 3 | not found |
//! | 4 | already exists |
//! | 5 | invalid argument or failed precondition |
//! | 6 | admin token rejected |
//! | 7 | node unreachable, not answering within `--timeout`, or unavailable (no leader with a majority) |
//!
//! `get`, `list`, `create`, `update` and `delete` take an entity kind and
//! serve every kind without secrets, those added later included, as JSON
//! (`entities.rs`); the per-kind commands (`service`, `route`, …) have flags.
//!
//! Every command is bounded by `--timeout` (15 s by default): a frozen node
//! (SIGSTOP, a full disk) must not hang a script. Errors that concern the node
//! start with its address, as ripgrep's start with the path.

mod ai;
mod client;
mod entities;
mod governance;
mod limits;
mod output;
mod policy;
mod secret;
mod usage;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{AuthMode, Consumer, PathMatch, Route, RoutePath, Service, Target};

pub use output::Format;

/// The exit codes, for `--help` (see the module docs).
pub const EXIT_CODES: &str = "Exit codes: 0 success (also when stdout is closed early, e.g. by `| head`), \
1 other error, 2 usage, 3 not found, 4 already exists, 5 invalid argument or failed precondition, \
6 admin token rejected, 7 node unreachable, not answering within --timeout, or without a leader";

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    /// The node could not be reached, stopped answering, or answered that it
    /// cannot serve the request now. The message starts with its address.
    #[error("{addr}: {why}")]
    Unavailable { addr: String, why: String },
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// Stdout was closed before everything was written (`| head`): not an
    /// error for the person who closed it, so nothing is printed.
    #[error("broken pipe")]
    BrokenPipe,
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        use tonic::Code;
        match self {
            CtlError::BrokenPipe => 0,
            CtlError::Usage(_) => 2,
            CtlError::Unavailable { .. } => 7,
            CtlError::Output(_) => 1,
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

    /// Whether `main` should print nothing (the pipe reader went away).
    pub fn is_quiet(&self) -> bool {
        matches!(self, CtlError::BrokenPipe)
    }
}

/// Parses `--timeout`: `15s`, `500ms`, `2m`, or bare seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}; use e.g. 15s, 500ms or 2m"))?,
    };
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

const GLOBAL: &str = "Global options";

#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct CtlArgs {
    /// Admin API address of any node.
    #[arg(long, global = true, env = "TOLLGATE_ADMIN", default_value = "127.0.0.1:9090", help_heading = GLOBAL)]
    pub admin: String,
    /// Admin bearer token [default: read from <data-dir>/admin-token].
    #[arg(long, global = true, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true, help_heading = GLOBAL)]
    pub token: Option<String>,
    /// Data directory of a local node, to find its admin token.
    #[arg(long, global = true, env = "TOLLGATE_DATA_DIR", default_value = "./tollgate-data", help_heading = GLOBAL)]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table", help_heading = GLOBAL)]
    pub output: Format,
    /// Read this node's applied state instead of a linearizable read through
    /// the leader: works during a partition, may miss the latest writes.
    /// Reads only; a write always needs the leader.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub stale: bool,
    /// Give up after this long, connecting and answering together (e.g. 15s,
    /// 500ms, 2m); then exit 7. Writes wait up to the node's raft.write_timeout_ms
    /// (10 s by default) for a majority, so keep it above that.
    #[arg(long, global = true, env = "TOLLGATE_CTL_TIMEOUT", default_value = "15s", value_parser = parse_timeout,
          help_heading = GLOBAL)]
    pub timeout: Duration,
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
    /// Rate limits (requests or tokens per second … day) and budgets (money per day or month).
    #[command(subcommand)]
    Limit(limits::LimitCmd),
    /// Requests, tokens and cost of the whole cluster (any node answers),
    /// one node's own journal (--node), or per-request records (`usage records`).
    Usage(usage::UsageArgs),
    /// One entity of any kind without secrets, by name or id: `get model-price openai/gpt-4o`.
    Get(entities::GetArgs),
    /// Every entity of a kind: `list consumer`.
    List(entities::ListArgs),
    /// Create an entity from JSON: `create consumer -f acme.json` (`-f -` reads stdin).
    Create(entities::CreateArgs),
    /// Change an entity: the file's top-level fields replace its own.
    Update(entities::UpdateArgs),
    /// Delete an entity of any kind without secrets.
    Delete(entities::DeleteArgs),
    /// The admin identity of the token in use: its name, role and team.
    Whoami,
    /// Admin identities: `admin token create --name ci --role operator --team payments`.
    #[command(subcommand)]
    Admin(governance::AdminCmd),
    /// Who changed what, and refused attempts, newest first.
    Audit(governance::AuditArgs),
    /// API versions of services and their lifecycle (draft → published → deprecated → retired).
    #[command(subcommand)]
    Version(governance::VersionCmd),
    /// Consumers' subscriptions to services, and their approval.
    #[command(subcommand)]
    Subscription(governance::SubscriptionCmd),
    /// The whole configuration as YAML (secrets as references): `ctl export > gateway.yaml`.
    Export,
    /// What `apply -f` would change, without changing it.
    Diff(governance::ApplyArgs),
    /// Make the cluster match a configuration file, as one change (all or nothing).
    Apply(governance::ApplyArgs),
    /// The JSON Schema of the configuration file (docs/gateway.schema.json).
    Schema,
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
    /// Revoke a join token.
    RevokeToken {
        /// Its id, or the whole token.
        id: String,
    },
    /// Add a running node (with the cluster's certificates) as a learner.
    AddLearner {
        /// The node's --node-id.
        node_id: u64,
        /// Its peer (QUIC) address, host:port.
        peer_addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's node id.
        node_id: u64,
    },
    /// Remove a node from the cluster.
    Remove {
        /// The member's node id.
        node_id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter's node id.
        node_id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a service: `service create orders --target 10.0.0.5:8080 --target 10.0.0.6:8080*3`.
    Create {
        /// Name routes use to refer to it.
        name: String,
        /// Upstream target as host:port, or host:port*weight. Repeatable; at least one.
        #[arg(long = "target", value_name = "HOST:PORT[*WEIGHT]", required = true)]
        targets: Vec<String>,
        #[command(flatten)]
        fields: ServiceFields,
    },
    /// Every service.
    List,
    /// One service and its policies.
    Get {
        /// Name or id.
        service: String,
    },
    /// Change fields of a service; flags not given keep their value.
    Update {
        /// Name or id.
        service: String,
        /// New name (routes refer to the id, so they keep working).
        #[arg(long)]
        rename: Option<String>,
        /// Upstream target as host:port, or host:port*weight. Repeatable; replaces the whole list.
        #[arg(long = "target", value_name = "HOST:PORT[*WEIGHT]")]
        targets: Vec<String>,
        #[command(flatten)]
        fields: ServiceFields,
    },
    /// Fails while routes still use the service.
    Delete {
        /// Name or id.
        service: String,
    },
}

#[derive(Debug, Args)]
pub struct ServiceFields {
    /// Free-form version label shown with the service, e.g. v1 or 2024-06-01 (not used for routing).
    #[arg(long = "api-version")]
    version: Option<String>,
    /// Longest wait to connect to a target, then the next target or 504
    /// [default: the node's proxy.connect_timeout_ms, 5000].
    #[arg(long)]
    connect_timeout_ms: Option<u32>,
    /// Longest wait for a target's response headers, then 504
    /// [default: the node's proxy.request_timeout_ms, 60000].
    #[arg(long)]
    request_timeout_ms: Option<u32>,
    /// Free-form note for people.
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
        /// Unique route name.
        name: String,
        /// Service (name or id) that receives the matched requests; required unless --ai.
        #[arg(long, required_unless_present = "ai", conflicts_with = "ai")]
        service: Option<String>,
        /// Serve the OpenAI-compatible AI API below the route's path instead of forwarding.
        #[arg(long)]
        ai: bool,
        #[command(flatten)]
        fields: RouteFields,
    },
    /// Every route, with the name of the service it forwards to.
    List,
    /// One route and its policies.
    Get {
        /// Name or id.
        route: String,
    },
    /// Change fields of a route; list flags (--path, --host, --method) replace the whole list when given.
    Update {
        /// Name or id.
        route: String,
        /// Service (name or id) that receives the matched requests.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        fields: RouteFields,
    },
    /// Delete a route; its traffic gets 404 (or a less specific route) at once.
    Delete {
        /// Name or id.
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
    /// Breaks ties between equally specific routes: the higher wins; negative allowed [default: 0].
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
    /// Create a consumer: `consumer create acme --description "Acme Corp, billing team"`.
    Create {
        /// Unique consumer name (sent upstream as x-consumer-name).
        name: String,
        /// Free-form note for people.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every consumer.
    List,
    /// One consumer.
    Get {
        /// Name or id.
        consumer: String,
    },
    /// Deletes the consumer and all of its API keys.
    Delete {
        /// Name or id.
        consumer: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a key; its plaintext is printed once and cannot be shown again.
    Create {
        /// Consumer (name or id) the key belongs to.
        #[arg(long)]
        consumer: String,
        /// Label for people, e.g. the machine that uses the key.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime such as 3600s, 90m, 12h or 30d; default never expires.
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<i64>,
        /// AI model (alias or provider/model, trailing * for a prefix) the key may use.
        /// Repeatable; none = every model.
        #[arg(long = "model")]
        models: Vec<String>,
        /// The key may call draft API versions (for testing before publishing).
        #[arg(long)]
        preview: bool,
    },
    /// Keys (never their secrets), with their consumer's name.
    List {
        /// Only this consumer's keys (name or id).
        #[arg(long, default_value = "")]
        consumer: String,
    },
    /// One key.
    Get {
        /// Key id.
        id: String,
    },
    /// Refuse the key until enabled again.
    Disable {
        /// Key id.
        id: String,
    },
    /// Accept a disabled key again.
    Enable {
        /// Key id.
        id: String,
    },
    /// Delete the key for good.
    Delete {
        /// Key id.
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
    fn apply_to(&self, targets: &[String], service: &mut Service) -> Result<(), CtlError> {
        if !targets.is_empty() {
            service.targets = targets.iter().map(|t| parse_target(t)).collect::<Result<_, _>>()?;
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

/// Runs one ctl command within `--timeout`, printing its result to stdout.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    let token = client::resolve_token(args.token.as_deref(), &args.data_dir)?;
    let addr = args.admin.clone();
    let timeout = args.timeout;
    let out = Printer::new(args.output);
    let outcome = tokio::time::timeout(timeout, execute(args, &token, &out)).await;
    let result = match outcome {
        Ok(result) => result,
        Err(_) => Err(CtlError::Unavailable {
            addr: addr.clone(),
            why: format!(
                "no answer within {} (--timeout): the node may be stopped (SIGSTOP), overloaded, or \
                 waiting for a leader; check it with `tollgate ctl --admin <another node> cluster status`",
                humantime::format_duration(timeout)
            ),
        }),
    };
    // What was printed so far goes out even when a later call failed.
    out.flush()?;
    result.map_err(|e| client::name_the_node(e, &addr))
}

async fn governance_client(addr: &str, token: &str, timeout: Duration) -> Result<client::Governance, CtlError> {
    client::connect_governance(addr, token, timeout).await
}

async fn execute(args: CtlArgs, token: &str, out: &Printer) -> Result<(), CtlError> {
    if matches!(args.command, CtlCommand::Schema) {
        // Compiled in: no node needed.
        out.push(format_args!("{:#}\n", crate::admin::schema::document_schema()));
        return Ok(());
    }
    let (mut admin, mut cluster, ai_client) = client::connect(&args.admin, token, args.timeout).await?;
    let stale = args.stale;
    match args.command {
        CtlCommand::Service(cmd) => match cmd {
            ServiceCmd::Create { name, targets, fields } => {
                let mut service = Service { name, ..Default::default() };
                fields.apply_to(&targets, &mut service)?;
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
            ServiceCmd::Update { service, rename, targets, fields } => {
                let mut s = admin
                    .get_service(GetRequest { id_or_name: service.clone(), stale: false })
                    .await
                    .map_err(|e| pre_read_failed(e, "service", &service))?
                    .into_inner();
                fields.apply_to(&targets, &mut s)?;
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
                let mut route = Route { name, ..Default::default() };
                // With the legacy mirror, so an admin node of the previous
                // version (during a rolling upgrade) reads the same route.
                match (ai, service) {
                    (true, _) => route.set_ai_backend(),
                    (false, Some(service_id)) => route.set_service_backend(service_id),
                    (false, None) => {}
                }
                fields.apply_to(&mut route)?;
                let created = admin.create_route(route).await?.into_inner();
                out.one(output::route_json(&created), || {
                    format!("created route {} ({})", created.name, id(&created.meta))
                });
            }
            RouteCmd::List => {
                let list = admin.list_routes(ListRequest { stale }).await?.into_inner().routes;
                let names = service_names(&mut admin, stale, out).await?;
                out.list(list.iter().map(output::route_json).collect(), output::route_rows(&list, &names));
            }
            RouteCmd::Get { route } => {
                let r = admin.get_route(GetRequest { id_or_name: route, stale }).await?.into_inner();
                let names = service_names(&mut admin, stale, out).await?;
                out.detail(
                    output::route_json(&r),
                    output::route_rows(std::slice::from_ref(&r), &names),
                    output::route_detail_rows(&r),
                );
            }
            RouteCmd::Update { route, service, fields } => {
                let mut r = admin
                    .get_route(GetRequest { id_or_name: route.clone(), stale: false })
                    .await
                    .map_err(|e| pre_read_failed(e, "route", &route))?
                    .into_inner();
                fields.apply_to(&mut r)?;
                if let Some(service) = service {
                    r.set_service_backend(service);
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
            KeyCmd::Create { consumer, name, expires_in, models, preview } => {
                let expires_at_ms = expires_in.map_or(0, |ms| crate::clock::unix_ms() + ms);
                let request = CreateApiKeyRequest { consumer, name, expires_at_ms, allowed_models: models, preview };
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
                let names = consumer_names(&mut admin, stale, out).await?;
                out.list(list.iter().map(output::api_key_json).collect(), output::api_key_rows(&list, &names));
            }
            KeyCmd::Get { id } => {
                let k = admin.get_api_key(GetRequest { id_or_name: id, stale }).await?.into_inner();
                let names = consumer_names(&mut admin, stale, out).await?;
                out.list_one(output::api_key_json(&k), output::api_key_rows(std::slice::from_ref(&k), &names));
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
        CtlCommand::Cluster(cmd) => cluster_command(cmd, cluster, out).await?,
        CtlCommand::Limit(cmd) => limits::limit_command(cmd, admin, out, stale).await?,
        CtlCommand::Get(args) => entities::get(args, admin, out, stale).await?,
        CtlCommand::List(args) => entities::list(args, admin, out, stale).await?,
        CtlCommand::Create(args) => entities::create(args, admin, out).await?,
        CtlCommand::Update(args) => entities::update(args, admin, out).await?,
        CtlCommand::Delete(args) => entities::delete(args, admin, out).await?,
        CtlCommand::Provider(cmd) => ai::provider_command(cmd, ai_client, out, stale).await?,
        CtlCommand::Alias(cmd) => ai::alias_command(cmd, ai_client, out, stale).await?,
        CtlCommand::Price(cmd) => ai::price_command(cmd, ai_client, out).await?,
        CtlCommand::Whoami => {
            governance::whoami(governance_client(&args.admin, token, args.timeout).await?, out).await?
        }
        CtlCommand::Admin(cmd) => {
            governance::admin_command(cmd, governance_client(&args.admin, token, args.timeout).await?, out, stale)
                .await?
        }
        CtlCommand::Audit(audit_args) => {
            governance::audit(audit_args, governance_client(&args.admin, token, args.timeout).await?, out, stale)
                .await?
        }
        CtlCommand::Version(cmd) => {
            let governance = governance_client(&args.admin, token, args.timeout).await?;
            governance::version_command(cmd, governance, admin, out, stale).await?
        }
        CtlCommand::Subscription(cmd) => {
            let governance = governance_client(&args.admin, token, args.timeout).await?;
            governance::subscription_command(cmd, governance, admin, out, stale).await?
        }
        CtlCommand::Export => {
            let yaml = governance::export(governance_client(&args.admin, token, args.timeout).await?, stale).await?;
            out.push(format_args!("{yaml}"));
        }
        CtlCommand::Diff(apply_args) => {
            let governance = governance_client(&args.admin, token, args.timeout).await?;
            governance::apply(apply_args, true, governance, out).await?
        }
        CtlCommand::Apply(apply_args) => {
            let governance = governance_client(&args.admin, token, args.timeout).await?;
            governance::apply(apply_args, false, governance, out).await?
        }
        CtlCommand::Schema => unreachable!("answered before connecting"),
        CtlCommand::Usage(usage_args) => {
            let cx = usage::Context {
                admin: &mut admin,
                cluster: &mut cluster,
                addr: &args.admin,
                token,
                timeout: args.timeout,
                out,
                stale,
            };
            usage::command(usage_args, cx).await?
        }
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
            let rows: Vec<Vec<String>> = std::iter::once(vec!["ID".to_string(), "CREATED".into(), "EXPIRES".into()])
                .chain(tokens.iter().map(|t| {
                    let m = t.meta.clone().unwrap_or_default();
                    vec![m.id, output::date(m.created_at_ms), output::date(t.expires_at_ms)]
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

/// Service names by id, for tables (scripts get ids in `-o json`).
async fn service_names(admin: &mut client::Admin, stale: bool, out: &Printer) -> Result<output::Names, CtlError> {
    if out.format == Format::Json {
        return Ok(output::Names::new());
    }
    let services = admin.list_services(ListRequest { stale }).await?.into_inner().services;
    Ok(services.into_iter().map(|s| (id(&s.meta), s.name)).collect())
}

/// Consumer names by id, for tables.
async fn consumer_names(admin: &mut client::Admin, stale: bool, out: &Printer) -> Result<output::Names, CtlError> {
    if out.format == Format::Json {
        return Ok(output::Names::new());
    }
    let consumers = admin.list_consumers(ListRequest { stale }).await?.into_inner().consumers;
    Ok(consumers.into_iter().map(|c| (id(&c.meta), c.name)).collect())
}

/// The read an update starts with (get, change, put) goes through the
/// leader like the write will, so when it fails the advice is about the
/// write: the server's hint to read with `--stale` is left out, as it would
/// only fetch a copy the write could not use.
fn pre_read_failed(status: tonic::Status, kind: &str, name: &str) -> CtlError {
    if !matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) {
        return CtlError::Status(status);
    }
    let reason: Vec<&str> =
        status.message().split(". ").map(str::trim).filter(|s| !s.is_empty() && !s.contains("--stale")).collect();
    let reason = reason.join(". ");
    let reason = reason.trim_end_matches('.');
    CtlError::Status(tonic::Status::unavailable(format!(
        "cannot update {kind} {name}: reading its current settings failed: {reason}. An update is a write and \
         needs a leader with a majority; see which members answer with `tollgate ctl cluster status`"
    )))
}

/// Collects the output and writes it once at the end, so a closed stdout
/// (`| head`) is one error handled in one place: a quiet exit, as ripgrep's.
struct Printer {
    format: Format,
    buffer: RefCell<String>,
}

impl Printer {
    fn new(format: Format) -> Printer {
        Printer { format, buffer: RefCell::new(String::new()) }
    }

    fn push(&self, text: std::fmt::Arguments<'_>) {
        // Writing into a String cannot fail.
        let _ = self.buffer.borrow_mut().write_fmt(text);
    }

    /// A write's result: a short sentence, or the entity as JSON.
    fn one(&self, value: Value, message: impl FnOnce() -> String) {
        match self.format {
            Format::Json => self.push(format_args!("{value:#}\n")),
            Format::Table | Format::Csv => self.push(format_args!("{}\n", message())),
        }
    }

    fn list(&self, values: Vec<Value>, rows: Vec<Vec<String>>) {
        match self.format {
            Format::Json => self.push(format_args!("{:#}\n", Value::Array(values))),
            Format::Table => self.push(format_args!("{}", output::table(&rows))),
            Format::Csv => self.push(format_args!("{}", output::csv(&rows))),
        }
    }

    /// A listing whose CSV is not its table: ids instead of names, plain
    /// numbers, for scripts. JSON is `value` as it is.
    fn listing(&self, value: Value, table: Vec<Vec<String>>, csv: Vec<Vec<String>>) {
        match self.format {
            Format::Json => self.push(format_args!("{value:#}\n")),
            Format::Table => self.push(format_args!("{}", output::table(&table))),
            Format::Csv => self.push(format_args!("{}", output::csv(&csv))),
        }
    }

    /// One entity: its row, then its settings one per line (`get`).
    fn detail(&self, value: Value, rows: Vec<Vec<String>>, details: Vec<Vec<String>>) {
        match self.format {
            Format::Json => self.push(format_args!("{value:#}\n")),
            Format::Table if details.is_empty() => self.push(format_args!("{}", output::table(&rows))),
            Format::Table => self.push(format_args!("{}\n{}", output::table(&rows), output::table(&details))),
            Format::Csv => self.push(format_args!("{}", output::csv(&rows))),
        }
    }

    fn list_one(&self, value: Value, rows: Vec<Vec<String>>) {
        match self.format {
            Format::Json => self.push(format_args!("{value:#}\n")),
            Format::Table => self.push(format_args!("{}", output::table(&rows))),
            Format::Csv => self.push(format_args!("{}", output::csv(&rows))),
        }
    }

    /// Writes what was collected to stdout. A closed pipe is
    /// [`CtlError::BrokenPipe`] (exit 0, nothing printed), never a panic.
    fn flush(&self) -> Result<(), CtlError> {
        let text = std::mem::take(&mut *self.buffer.borrow_mut());
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CtlError::BrokenPipe,
            _ => CtlError::Output(e),
        })
    }
}
