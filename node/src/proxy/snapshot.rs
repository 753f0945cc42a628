//! What the data plane reads: an immutable, precompiled view of the gateway
//! state (router, balancers, policies, keys), rebuilt after each applied Raft
//! batch and swapped in atomically. Requests never touch RocksDB or Raft.
//! Anything that must outlive a snapshot (connection pools, target health,
//! circuit state, retry budgets, JWKS documents, metrics) lives in [`Shared`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tollgate_proto::config::v1::{ApiKey, Consumer, HashOn, JwtAuth, Route, Service, route};
use tollgate_raft::secrets::SecretBox;
use tollgate_raft::{EntityKind, GatewayState, Touched};

use super::cache::ResponseCache;
use super::circuit::Circuit;
use super::cors::CompiledCors;
use super::health::{HealthRegistry, ProbeSpec};
use super::ip_filter::IpFilter;
use super::jwt::{JwksStore, JwtVerifier};
use super::lb::{Balancer, CompiledTarget};
use super::retry::RetryBudget;
use super::router::Router;
use super::transform::{HeaderOps, Rewrite};
use super::versions::CompiledVersions;
use crate::plumbing::{Upstream, UpstreamClient, UpstreamClients};
use crate::telemetry::metrics::{Metrics, RouteMetrics, ServiceMetrics};

/// The routes, matched by the router.
pub type RouteTable = Router<Arc<CompiledRoute>>;
/// The services, by id.
pub type ServiceTable = rustc_hash::FxHashMap<String, CompiledService>;

/// A persistent map hashed with FxHash, for the per-request lookups of
/// consumers and keys (SipHash cost a few hundred instructions a lookup).
/// Flooding a table needs control over the keys inserted: key ids are random,
/// made by the gateway (admin API and portal alike), and consumer ids too,
/// unless an administrator applies a declarative document naming them. A
/// caller only looks keys up, which costs no more for a chosen key.
pub type LookupMap<K, V> = imbl::GenericHashMap<K, V, rustc_hash::FxBuildHasher, imbl::shared_ptr::DefaultSharedPtr>;

/// What the data plane serves from, compiled from one replicated state.
///
/// A change costs what it changes (see [`GatewaySnapshot::update`]):
/// consumers and keys, which can number in the hundreds of thousands, are
/// persistent maps updated entry by entry and shared between snapshots;
/// routes with their services, and the AI gateway's providers and models
/// (dozens, each compiled with clients, probes and verifiers), are rebuilt
/// as a whole when one of them changes and shared otherwise.
#[derive(Clone)]
pub struct GatewaySnapshot {
    /// Raft log index this snapshot reflects.
    pub revision: u64,
    pub router: Arc<RouteTable>,
    pub services: Arc<ServiceTable>,
    pub api_keys: LookupMap<Arc<str>, Arc<ApiKey>>,
    pub consumers: LookupMap<Arc<str>, Arc<CompiledConsumer>>,
    pub consumer_ids_by_name: imbl::HashMap<Arc<str>, Arc<str>>,
    pub ai: Arc<crate::ai::snapshot::AiSnapshot>,
    /// Rate limits and budgets, indexed by what they are attached to.
    pub limits: Arc<crate::limits::CompiledLimits>,
    /// Approved subscriptions, as `subscription_key(service, consumer)`.
    pub approved: imbl::HashSet<Arc<str>>,
    /// Each approved subscription's key in `approved`, by subscription id.
    approved_keys: imbl::HashMap<Arc<str>, Arc<str>>,
}

/// How `GatewaySnapshot::approved` names a (service, consumer) pair. Ids
/// never hold a newline.
pub fn subscription_key(service_id: &str, consumer_id: &str) -> String {
    format!("{service_id}\n{consumer_id}")
}

/// A consumer with the identity headers sent upstream built once, not per request.
pub struct CompiledConsumer {
    pub consumer: Arc<Consumer>,
    /// `X-Consumer-Id`; None for a caller that is no stored consumer.
    pub id_header: Option<HeaderValue>,
    /// `X-Consumer-Name`; None when the name cannot be a header value.
    pub name_header: Option<HeaderValue>,
    /// A JWT caller that names no consumer (see `CompiledConsumer::anonymous`).
    pub anonymous: bool,
}

impl CompiledConsumer {
    pub fn new(consumer: Arc<Consumer>) -> CompiledConsumer {
        let id = consumer.meta.as_ref().map(|m| m.id.as_str()).filter(|id| !id.is_empty());
        CompiledConsumer {
            id_header: id.and_then(|id| HeaderValue::from_str(id).ok()),
            name_header: HeaderValue::from_str(&consumer.name).ok(),
            consumer,
            anonymous: false,
        }
    }

    /// Stands for JWT callers that name no consumer. It has no id, and no
    /// identity headers, so a real consumer that happens to be called
    /// "anonymous" is never confused with it.
    pub fn anonymous() -> CompiledConsumer {
        let consumer = Arc::new(Consumer { name: "anonymous".into(), ..Default::default() });
        CompiledConsumer { consumer, id_header: None, name_header: None, anonymous: true }
    }

    pub fn id(&self) -> &str {
        self.consumer.meta.as_ref().map(|m| m.id.as_str()).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        &self.consumer.name
    }
}

pub struct CompiledService {
    pub id: String,
    pub name: String,
    /// The name again, shared cheaply with each request's context.
    pub label: Arc<str>,
    pub balancer: Balancer,
    pub targets: Vec<CompiledTarget>,
    /// For health probes. None when the TLS settings are unusable.
    pub client: Option<UpstreamClient>,
    /// For proxied requests. None when the TLS settings are unusable: the service answers 503.
    pub upstream: Option<Upstream>,
    pub scheme: &'static str,
    pub tls: Option<tollgate_proto::config::v1::UpstreamTls>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub hash_on: HashOn,
    pub hash_header: Option<HeaderName>,
    /// Passive checks: (consecutive failures, ejection ms).
    pub eject: Option<(u32, u64)>,
    pub retry: Option<RetrySettings>,
    pub budget: Arc<RetryBudget>,
    /// (state, failure threshold, open ms)
    pub circuit: Option<(Arc<Circuit>, u32, u64)>,
    pub metrics: ServiceMetrics,
    /// The service's API versions; None when it has no versioning.
    pub versions: Option<Arc<CompiledVersions>>,
    /// A key works only with an approved subscription of its consumer.
    pub subscription_required: bool,
    pub team_id: Arc<str>,
    /// A prompt API: a model answers it (`crate::ai::prompt`), not targets.
    pub prompt: Option<Arc<crate::ai::prompt::CompiledPrompt>>,
}

pub struct RetrySettings {
    pub attempts: u32,
    pub budget_percent: u32,
    pub on_statuses: Vec<u16>,
}

pub struct CompiledRoute {
    pub id: String,
    pub route: Arc<Route>,
    /// What serves a matched request.
    pub backend: RouteBackend,
    /// The metrics label of the route's service, for routes whose backend is
    /// a service (routes are recompiled with their services, so it is current).
    pub service_label: Option<Arc<str>>,
    pub metrics: RouteMetrics,
    pub jwt: Option<JwtVerifier>,
    pub ip: Option<IpFilter>,
    pub cors: Option<CompiledCors>,
    pub rewrite: Option<Rewrite>,
    pub request_headers: Option<HeaderOps>,
    pub response_headers: Option<HeaderOps>,
    pub cache: Option<CacheSettings>,
    /// Set when the route overrides the service's connect timeout.
    pub upstream: Option<Upstream>,
    pub request_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// The service's versions (see `proxy::versions`).
    pub versions: Option<Arc<CompiledVersions>>,
    /// The service's id when callers need an approved subscription to it.
    pub subscription_service: Option<Arc<str>>,
    /// The team that owns the route's service ("" for none): its preview
    /// keys may call its draft versions.
    pub service_team: Arc<str>,
    /// The service's prompt, when it is a prompt API (a model answers it).
    pub prompt: Option<Arc<crate::ai::prompt::CompiledPrompt>>,
}

/// A route's backend, from its proto `oneof backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteBackend {
    /// The REST service backend (`proxy::service_backend`).
    Service { service_id: String },
    /// The AI gateway (`crate::ai::gateway`).
    Ai,
    /// An MCP server over the caller's APIs (`crate::mcp`); only `team`'s
    /// when it names one.
    Mcp { team_id: Option<Arc<str>> },
}

impl RouteBackend {
    fn of(route: &Route) -> RouteBackend {
        match &route.backend {
            Some(route::Backend::Ai(_)) => RouteBackend::Ai,
            Some(route::Backend::Mcp(m)) => {
                RouteBackend::Mcp { team_id: (!m.team_id.is_empty()).then(|| Arc::from(m.team_id.as_str())) }
            }
            Some(route::Backend::Service(s)) => RouteBackend::Service { service_id: s.service_id.clone() },
            // The state holds only routes with a backend (apply adopts the
            // previous format's fields); an empty one forwards nowhere.
            None => RouteBackend::Service { service_id: String::new() },
        }
    }

    pub fn is_ai(&self) -> bool {
        matches!(self, RouteBackend::Ai)
    }

    pub fn service_id(&self) -> Option<&str> {
        match self {
            RouteBackend::Service { service_id } => Some(service_id),
            RouteBackend::Ai | RouteBackend::Mcp { .. } => None,
        }
    }
}

pub struct CacheSettings {
    pub ttl: Duration,
    pub vary: Vec<HeaderName>,
    pub max_body_bytes: u64,
    /// `ResponseCache.allow_cookies`.
    pub allow_cookies: bool,
}

/// Defaults for services that leave a timeout at 0.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutDefaults {
    pub connect: Duration,
    pub request: Duration,
}

/// Node-lifetime state the snapshots point into.
pub struct Shared {
    pub clients: UpstreamClients,
    pub health: HealthRegistry,
    pub jwks: JwksStore,
    pub metrics: Arc<Metrics>,
    pub cache: ResponseCache,
    pub defaults: TimeoutDefaults,
    pub ai: Arc<crate::ai::snapshot::AiShared>,
    /// The node's key material: opens (and the admin API seals) the
    /// secrets kept sealed in the replicated state, JWT HMAC secrets and
    /// provider credentials alike.
    pub secrets: SecretBox,
    /// This node's quota leases; replaced by the server with one whose
    /// lease client runs (see `crate::limits::client`).
    pub limiter: Arc<crate::limits::Limiter>,
    circuits: Mutex<HashMap<String, Arc<Circuit>>>,
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
}

impl Shared {
    pub fn new(
        clients: UpstreamClients,
        defaults: TimeoutDefaults,
        metrics: Arc<Metrics>,
        cache_bytes: u64,
        ai: Arc<crate::ai::snapshot::AiShared>,
        secrets: SecretBox,
    ) -> Shared {
        let jwks_client = clients.get(defaults.connect, None).expect("the plain upstream pool always builds");
        let metrics_limits = metrics.limits.clone();
        Shared {
            clients,
            health: HealthRegistry::default(),
            jwks: JwksStore::new(jwks_client),
            metrics,
            cache: ResponseCache::new(cache_bytes),
            defaults,
            ai,
            secrets,
            // No lease client: a limit refuses everything it is not granted.
            limiter: crate::limits::Limiter::new(Default::default(), metrics_limits).0,
            circuits: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
        }
    }

    fn circuit(&self, service_id: &str) -> Arc<Circuit> {
        let mut map = self.circuits.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(service_id.to_string()).or_default().clone()
    }

    fn budget(&self, service_id: &str) -> Arc<RetryBudget> {
        let mut map = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(service_id.to_string()).or_default().clone()
    }
}

fn or_default(ms: u32, default: Duration) -> Duration {
    if ms == 0 { default } else { Duration::from_millis(ms.into()) }
}

fn id_of(meta: &Option<tollgate_proto::config::v1::Meta>) -> String {
    meta.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

impl GatewaySnapshot {
    pub fn empty() -> GatewaySnapshot {
        GatewaySnapshot {
            revision: 0,
            router: Arc::new(Router::build([])),
            services: Default::default(),
            api_keys: LookupMap::default(),
            consumers: LookupMap::default(),
            consumer_ids_by_name: imbl::HashMap::new(),
            ai: Default::default(),
            limits: Default::default(),
            approved: imbl::HashSet::new(),
            approved_keys: imbl::HashMap::new(),
        }
    }

    /// Compiles the whole of `state`: at start, and when the state's change
    /// journal no longer reaches back to the snapshot being served.
    pub fn compile(state: &GatewayState, shared: &Shared) -> GatewaySnapshot {
        let (router, services) = compile_routing(state, shared);
        GatewaySnapshot {
            revision: state.applied_index(),
            router,
            services,
            api_keys: state.api_keys().map(|k| (Arc::from(id_of(&k.meta)), k.clone())).collect(),
            consumers: state
                .consumers()
                .map(|c| (Arc::from(id_of(&c.meta)), Arc::new(CompiledConsumer::new(c.clone()))))
                .collect(),
            consumer_ids_by_name: state
                .consumers()
                .map(|c| (Arc::from(c.name.as_str()), Arc::from(id_of(&c.meta))))
                .collect(),
            ai: Arc::new(crate::ai::snapshot::AiSnapshot::compile(state, &shared.secrets)),
            limits: Arc::new(crate::limits::CompiledLimits::compile(state)),
            approved_keys: state
                .subscriptions()
                .filter_map(|s| Some((Arc::from(id_of(&s.meta)), approved_key(s)?)))
                .collect(),
            approved: state.subscriptions().filter_map(|s| approved_key(s)).collect(),
        }
    }

    /// This snapshot moved to `state`, given the entities `touched` since
    /// this snapshot's revision (from `GatewayState::changes_since`). Costs
    /// what the touched entities cost to compile, not the whole state: the
    /// result shares everything untouched with `self`.
    pub fn update<'t>(
        &self,
        state: &GatewayState,
        touched: impl Iterator<Item = &'t Touched>,
        shared: &Shared,
    ) -> GatewaySnapshot {
        let mut next = self.clone();
        let (mut routing, mut ai, mut limits) = (false, false, false);
        for touch in touched {
            match touch.kind {
                EntityKind::Service | EntityKind::Route => routing = true,
                EntityKind::Provider | EntityKind::ModelAlias | EntityKind::ModelPrice => ai = true,
                EntityKind::Consumer => next.put_consumer(state, &touch.id),
                EntityKind::ApiKey => match state.api_key(&touch.id) {
                    Some(key) => {
                        next.api_keys.insert(touch.id.clone(), key.clone());
                    }
                    None => {
                        next.api_keys.remove(&*touch.id);
                    }
                },
                // Read by the cluster's join handshake, never by the data plane.
                // Every kind has an arm (no wildcard): a new entity does not
                // compile until it says here what the data plane does with it.
                EntityKind::JoinToken => {}
                EntityKind::Limit => limits = true,
                // Lease and ledger bookkeeping: read by the admin API and the
                // console from the replicated state, not by requests (a
                // node's leases live in its memory, from the leader's answers).
                EntityKind::QuotaWindow | EntityKind::UsageCounter | EntityKind::UsageWatermark => {}
                // Versions are compiled into their service's routes.
                EntityKind::ApiVersion => routing = true,
                EntityKind::Subscription => next.put_subscription(state, &touch.id),
                // Governance records the admin API reads from the state:
                // ownership, admin identities, publish rules, the trail.
                EntityKind::Team | EntityKind::AdminToken | EntityKind::PublishPolicy | EntityKind::AuditEntry => {}
            }
        }
        if routing {
            (next.router, next.services) = compile_routing(state, shared);
        }
        if ai {
            next.ai = Arc::new(crate::ai::snapshot::AiSnapshot::compile(state, &shared.secrets));
        }
        if limits {
            next.limits = Arc::new(crate::limits::CompiledLimits::compile(state));
        }
        next.revision = state.applied_index();
        next
    }

    /// Subscription `id` as `state` has it now: approved, or not (any more).
    fn put_subscription(&mut self, state: &GatewayState, id: &Arc<str>) {
        if let Some(old) = self.approved_keys.remove(&**id) {
            self.approved.remove(&old);
        }
        if let Some(key) = state.subscription(id).and_then(|s| approved_key(s)) {
            self.approved.insert(key.clone());
            self.approved_keys.insert(id.clone(), key);
        }
    }

    /// Consumer `id` as `state` has it now (or gone), with its name index.
    fn put_consumer(&mut self, state: &GatewayState, id: &Arc<str>) {
        let current = state.consumer(id);
        if let Some(old) = self.consumers.get(&**id)
            && current.is_none_or(|c| c.name != old.name())
            && self.consumer_ids_by_name.get(old.name()).is_some_and(|holder| holder == id)
        {
            self.consumer_ids_by_name.remove(old.name());
        }
        match current {
            Some(consumer) => {
                self.consumer_ids_by_name.insert(Arc::from(consumer.name.as_str()), id.clone());
                self.consumers.insert(id.clone(), Arc::new(CompiledConsumer::new(consumer.clone())));
            }
            None => {
                self.consumers.remove(&**id);
            }
        }
    }

    /// A consumer by id, else by unique name (JWT claims may carry either).
    pub fn consumer_by_id_or_name(&self, key: &str) -> Option<&Arc<CompiledConsumer>> {
        self.consumers.get(key).or_else(|| self.consumers.get(&**self.consumer_ids_by_name.get(key)?))
    }
}

fn approved_key(s: &tollgate_proto::config::v1::Subscription) -> Option<Arc<str>> {
    use tollgate_proto::config::v1::SubscriptionState;
    (s.state == SubscriptionState::Approved as i32).then(|| Arc::from(subscription_key(&s.service_id, &s.consumer_id)))
}

/// Services and the routes over them, compiled together (a route holds its
/// service's clients and names). Also reconciles the health probes and the
/// JWKS documents with what is now configured.
fn compile_routing(state: &GatewayState, shared: &Shared) -> (Arc<RouteTable>, Arc<ServiceTable>) {
    let mut probes = Vec::new();
    let mut live_targets = Vec::new();
    let mut versions: HashMap<&str, Vec<&tollgate_proto::config::v1::ApiVersion>> = HashMap::new();
    for version in state.api_versions() {
        versions.entry(version.service_id.as_str()).or_default().push(version);
    }
    let services: ServiceTable = state
        .services()
        .map(|s| {
            let mut compiled = compile_service(s, shared, &mut probes, &mut live_targets);
            compiled.versions = CompiledVersions::compile(
                s.versioning.as_ref(),
                versions.get(compiled.id.as_str()).map_or(&[], Vec::as_slice),
            );
            (compiled.id.clone(), compiled)
        })
        .collect();
    shared.health.reconcile(probes, &live_targets);
    let routes: Vec<(Arc<Route>, Arc<CompiledRoute>)> = state
        .routes()
        .map(|r| {
            (r.clone(), Arc::new(compile_route(r, r.backend_service_id().and_then(|id| services.get(id)), shared)))
        })
        .collect();
    shared.jwks.retain_used();
    let router = Router::build(routes.iter().map(|(r, c)| (r.as_ref(), c.clone())));
    (Arc::new(router), Arc::new(services))
}

/// Logs why a service's TLS settings cannot be used; it answers 503.
fn unusable(service: &str, error: &str) {
    tracing::error!(service, %error, "the service's upstream TLS settings are unusable; it will answer 503");
}

/// A target's `host:port` (IPv6 in brackets) and the `Host` header it is
/// sent: the same without the scheme's default port, as hyper-util's client
/// and browsers write it (some upstreams match the exact Host, or build
/// redirects from it).
fn target_addresses(host: &str, port: u32, tls: bool) -> (String, String) {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let authority = format!("{host}:{port}");
    let default_port = if tls { 443 } else { 80 };
    let header = if port == default_port { host } else { authority.clone() };
    (authority, header)
}

fn compile_service(
    s: &Service,
    shared: &Shared,
    probes: &mut Vec<ProbeSpec>,
    live_targets: &mut Vec<(String, String)>,
) -> CompiledService {
    let id = id_of(&s.meta);
    let tls = s.tls.clone().filter(|t| t.enabled);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let connect_timeout = or_default(s.connect_timeout_ms, shared.defaults.connect);
    let client = shared.clients.get(connect_timeout, tls.as_ref());
    let targets: Vec<CompiledTarget> = s
        .targets
        .iter()
        .map(|t| {
            let (authority, host_header) = target_addresses(&t.host, t.port, tls.is_some());
            live_targets.push((id.clone(), authority.clone()));
            let state = shared.health.target(&id, &authority);
            if let (Some(check), Some(client)) = (&s.health_check, &client) {
                probes.push(ProbeSpec {
                    service_id: id.clone(),
                    service_name: s.name.clone(),
                    scheme,
                    authority: authority.clone(),
                    check: check.clone(),
                    client: client.clone(),
                    state: state.clone(),
                });
            }
            CompiledTarget::new(&authority, &host_header, state)
        })
        .collect();
    let hash_on = HashOn::try_from(s.hash_on).unwrap_or(HashOn::Unspecified);
    CompiledService {
        name: s.name.clone(),
        label: Arc::from(s.name.as_str()),
        balancer: Balancer::new(s.lb_policy, &s.targets),
        targets,
        upstream: shared
            .clients
            .upstream(connect_timeout, tls.as_ref())
            .map_err(|error| unusable(&s.name, &error))
            .ok(),
        client,
        scheme,
        tls,
        connect_timeout,
        request_timeout: or_default(s.request_timeout_ms, shared.defaults.request),
        hash_on,
        hash_header: (hash_on == HashOn::Header)
            .then(|| HeaderName::from_bytes(s.hash_header.as_bytes()).ok())
            .flatten(),
        eject: s.outlier_detection.as_ref().map(|o| {
            (
                if o.consecutive_failures == 0 { 5 } else { o.consecutive_failures },
                u64::from(if o.ejection_ms == 0 { 30_000 } else { o.ejection_ms }),
            )
        }),
        retry: s.retry.as_ref().filter(|r| r.attempts > 0).map(|r| RetrySettings {
            attempts: r.attempts,
            budget_percent: if r.budget_percent == 0 { 20 } else { r.budget_percent },
            on_statuses: r.on_statuses.iter().filter_map(|s| u16::try_from(*s).ok()).collect(),
        }),
        budget: shared.budget(&id),
        circuit: s.circuit_breaker.as_ref().map(|c| {
            (
                shared.circuit(&id),
                if c.failure_threshold == 0 { 5 } else { c.failure_threshold },
                u64::from(if c.open_ms == 0 { 10_000 } else { c.open_ms }),
            )
        }),
        metrics: shared.metrics.service(&s.name),
        versions: None,
        subscription_required: s.subscription != tollgate_proto::config::v1::SubscriptionMode::Unspecified as i32,
        team_id: Arc::from(s.team_id.as_str()),
        prompt: s.prompt.as_ref().map(|p| Arc::new(crate::ai::prompt::CompiledPrompt::compile(p))),
        id,
    }
}

/// The route's JWT HMAC secret: unsealed, or in plain text as earlier
/// versions stored it. One that does not open leaves HS* tokens unverifiable,
/// so they are refused.
fn jwt_secret(r: &Route, jwt: &JwtAuth, shared: &Shared) -> Option<String> {
    if jwt.sealed_hs_secret.is_empty() {
        return Some(jwt.hs_secret.clone()).filter(|s| !s.is_empty());
    }
    let context = tollgate_raft::secrets::jwt_secret_context(&id_of(&r.meta));
    match shared.secrets.open(&context, &jwt.sealed_hs_secret) {
        Ok(secret) => Some(secret),
        Err(_) => {
            tracing::error!(
                route = %r.name,
                "the route's JWT secret does not open (sealed by another cluster, or corrupt): HS* tokens are refused; set it again with `tollgate ctl route update {} --jwt-secret ...`",
                r.name
            );
            None
        }
    }
}

fn compile_route(r: &Route, service: Option<&CompiledService>, shared: &Shared) -> CompiledRoute {
    let service_name = service.map_or("", |s| s.name.as_str());
    let upstream = match (r.connect_timeout_ms, service) {
        (0, _) | (_, None) => None,
        (ms, Some(s)) => shared
            .clients
            .upstream(Duration::from_millis(ms.into()), s.tls.as_ref())
            .map_err(|error| unusable(&s.name, &error))
            .ok(),
    };
    CompiledRoute {
        id: id_of(&r.meta),
        backend: RouteBackend::of(r),
        service_label: service.map(|s| s.label.clone()),
        route: Arc::new(r.clone()),
        metrics: shared.metrics.route(&r.name, service_name),
        jwt: r.jwt.as_ref().map(|j| JwtVerifier::compile(j, jwt_secret(r, j, shared).as_deref(), &shared.jwks)),
        ip: IpFilter::compile(&r.ip_allow, &r.ip_deny),
        cors: r.cors.as_ref().map(|c| CompiledCors::compile(c, &r.methods)),
        rewrite: Rewrite::compile(&r.rewrite_path),
        request_headers: HeaderOps::compile(r.request_headers.as_ref()),
        response_headers: HeaderOps::compile(r.response_headers.as_ref()),
        cache: r.cache.as_ref().filter(|c| c.enabled).map(|c| CacheSettings {
            ttl: or_default(c.ttl_ms, Duration::from_secs(60)),
            vary: c.vary_headers.iter().filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()).collect(),
            max_body_bytes: if c.max_body_bytes == 0 { 1 << 20 } else { u64::from(c.max_body_bytes) },
            allow_cookies: c.allow_cookies,
        }),
        upstream,
        request_timeout: (r.request_timeout_ms > 0).then(|| Duration::from_millis(r.request_timeout_ms.into())),
        idle_timeout: (r.idle_timeout_ms > 0).then(|| Duration::from_millis(r.idle_timeout_ms.into())),
        versions: service.and_then(|s| s.versions.clone()),
        subscription_service: service.filter(|s| s.subscription_required).map(|s| Arc::from(s.id.as_str())),
        service_team: service.map_or_else(|| Arc::from(""), |s| s.team_id.clone()),
        prompt: service.and_then(|s| s.prompt.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::target_addresses;

    #[test]
    fn the_host_header_leaves_out_the_schemes_default_port_only() {
        let both = |a: &str, h: &str| (a.to_string(), h.to_string());
        assert_eq!(target_addresses("api.internal", 443, true), both("api.internal:443", "api.internal"));
        assert_eq!(target_addresses("api.internal", 80, false), both("api.internal:80", "api.internal"));
        assert_eq!(target_addresses("api.internal", 80, true), both("api.internal:80", "api.internal:80"));
        assert_eq!(target_addresses("api.internal", 443, false), both("api.internal:443", "api.internal:443"));
        assert_eq!(target_addresses("10.0.0.5", 8443, true), both("10.0.0.5:8443", "10.0.0.5:8443"));
        assert_eq!(target_addresses("::1", 443, true), both("[::1]:443", "[::1]"));
        assert_eq!(target_addresses("::1", 9000, false), both("[::1]:9000", "[::1]:9000"));
    }
}
