//! Starting and stopping a node: storage, Raft, the data-plane follower, the
//! proxy and the admin API, in that order; shut down in reverse.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_raft::pki::{ClusterTls, PkiError};
use tollgate_raft::transport::{self, JoinError};
use tollgate_raft::{ClusterSetup, RaftConfig, RaftNode, RaftNodeError};
use tollgate_storage::{Engine, StorageError};

use crate::admin::{self, token};
use crate::config::{Config, ms};
use crate::plumbing::UpstreamClients;
use crate::proxy::{self, ProxyContext, TimeoutDefaults};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot listen on {addr} ({what}): {source}. Is another process using the port? Choose another with --{flag}"
    )]
    Bind { what: &'static str, flag: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Raft(#[from] RaftNodeError),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot join the cluster at {peer}: {source}")]
    Join { peer: String, source: JoinError },
    #[error("cannot pick a UDP port on {addr} for peer traffic: {source}")]
    PeerPort { addr: SocketAddr, source: std::io::Error },
    #[error("proxy.tls: {0}")]
    Tls(#[from] crate::proxy::tls::TlsError),
    #[error("cannot open the access log: {0}; set proxy.access_log to \"stdout\", \"off\" or a writable path")]
    AccessLog(std::io::Error),
    #[error("usage ledger: {0}")]
    Ledger(#[from] crate::usage::LedgerError),
    #[error("usage journal: {0}; check that the data directory is writable and the disk has room")]
    Usage(String),
}

/// This node's cluster TLS identity, and how it takes part: creates the CA on
/// the very first start of a new cluster, or obtains certificates by joining.
async fn cluster_identity(config: &Config) -> Result<(ClusterTls, SocketAddr, Option<String>, bool), NodeError> {
    let tls_dir = config.tls_dir();
    let mut listen = config.listen.cluster;
    let advertise = config.cluster.advertise.clone();
    // A node that joined must never bootstrap a cluster of its own, even if it
    // restarts before it received any log from the leader.
    let joined_marker = tls_dir.join("joined");
    if let Some(tls) = ClusterTls::load(&tls_dir)? {
        return Ok((tls, listen, advertise, !joined_marker.exists()));
    }
    let (Some(peer), Some(token)) = (&config.cluster.join, &config.cluster.join_token) else {
        let tls = ClusterTls::create(config.node_id)?;
        tls.save(&tls_dir)?;
        tracing::info!(ca = %tls.ca_fingerprint(), "created a new cluster certificate authority");
        return Ok((tls, listen, advertise, true));
    };
    // The cluster must be told where to reach us before we can bind with the
    // certificate it gives us: settle the port now.
    if listen.port() == 0 {
        let probe = std::net::UdpSocket::bind(listen).map_err(|source| NodeError::PeerPort { addr: listen, source })?;
        listen = probe.local_addr().map_err(|source| NodeError::PeerPort { addr: listen, source })?;
    }
    let reach = advertise.clone().unwrap_or_else(|| listen.to_string());
    let tls = transport::join(peer, token, config.node_id, &reach)
        .await
        .map_err(|source| NodeError::Join { peer: peer.clone(), source })?;
    std::fs::create_dir_all(&tls_dir)
        .and_then(|()| std::fs::write(&joined_marker, peer.as_bytes()))
        .map_err(|source| NodeError::DataDir { path: joined_marker.clone(), source })?;
    tls.save(&tls_dir)?;
    tracing::info!(%peer, node_id = config.node_id, "joined the cluster as a learner");
    Ok((tls, listen, advertise, false))
}

async fn report_data_plane(proxy: Arc<ProxyContext>, raft: RaftNode) {
    let mut served = proxy.subscribe_served();
    loop {
        raft.set_data_plane_index(*served.borrow_and_update());
        if served.changed().await.is_err() {
            return;
        }
    }
}

/// `proxy.max_connections`, or what the descriptor budget allows when it is
/// 0. A configured cap above the budget is kept (the operator may know
/// better, e.g. few upstream connections) but warned about.
fn proxy_max_connections(config: &Config, fds: crate::net::FdBudget) -> usize {
    let derived = fds.default_max_connections();
    let max = match config.proxy.max_connections {
        0 => derived,
        configured => {
            if configured > derived {
                tracing::warn!(
                    max_connections = configured,
                    open_file_limit = fds.limit,
                    fits = derived,
                    "proxy.max_connections is more than the open-file limit leaves room for; when it is reached \
                     the admin API and Raft may run out of descriptors. Raise the limit (ulimit -n, LimitNOFILE=) \
                     or lower proxy.max_connections"
                );
            }
            configured
        }
    };
    tracing::info!(max_connections = max, open_file_limit = fds.limit, "proxy connection cap");
    max
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin_token: String,
    /// True when this start created the admin token (so it should be shown).
    pub admin_token_generated: bool,
    pub data_dir: PathBuf,
    /// Ops HTTP listener (/metrics, /healthz, /readyz).
    pub ops_addr: SocketAddr,
    /// TLS proxy listener, when proxy.tls is configured.
    pub proxy_tls_addr: Option<SocketAddr>,
    /// Web console and developer portal.
    pub console_addr: SocketAddr,
    dataplane_tasks: Vec<JoinHandle<()>>,
    raft: RaftNode,
    proxy: Arc<ProxyContext>,
    stop: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    follower_task: JoinHandle<()>,
    /// Folds the usage journal into the cluster's counters; stopped after the proxy.
    usage_task: JoinHandle<()>,
    usage_stop: watch::Sender<bool>,
    engine: Engine,
    ledger: Arc<crate::usage::UsageLedger>,
}

/// A listener on `addr`, and the address it got (the port of `:0` settled).
async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<(TcpListener, SocketAddr), NodeError> {
    let error = |source| NodeError::Bind { what, flag, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

impl Node {
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        let data_dir = config.data_dir.clone();
        let created = !data_dir.exists();
        let started = Node::start_in(config).await;
        if started.is_err() && created {
            // A start that failed (a port in use, a refused join) leaves no
            // data directory behind to puzzle the next attempt: a cluster CA
            // or database left by it would make a retry with --join
            // bootstrap a cluster of its own. Only one this run created.
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        started
    }

    async fn start_in(config: Config) -> Result<Node, NodeError> {
        let data_dir = config.data_dir.clone();
        // Before any socket or file is open: the proxy's connection cap is sized from it.
        let fds = crate::net::raise_nofile_limit();
        // Bind first: a port conflict should fail before anything touches the data.
        let (proxy_listener, proxy_addr) = bind(config.listen.proxy, "proxy", "proxy-listen").await?;
        let (admin_listener, admin_addr) = bind(config.listen.admin, "admin API", "admin-listen").await?;
        let (ops_listener, ops_addr) = bind(config.listen.ops, "ops", "ops-listen").await?;
        let (console_listener, console_addr) = bind(config.listen.console, "console", "console-listen").await?;
        let tls_listener = match &config.proxy.tls {
            Some(tls) => Some(bind(tls.listen, "proxy TLS", "config proxy.tls.listen").await?),
            None => None,
        };
        let proxy_tls_addr = tls_listener.as_ref().map(|(_, addr)| *addr);
        let tls_listener = tls_listener.map(|(listener, _)| listener);
        // Raft binds its UDP port only once the data is open; a busy one must
        // fail here, before the CA is created or RocksDB opened. Port 0 is
        // settled later and cannot be busy.
        if config.listen.cluster.port() != 0 {
            drop(std::net::UdpSocket::bind(config.listen.cluster).map_err(|source| NodeError::Bind {
                what: "cluster",
                flag: "cluster-listen",
                addr: config.listen.cluster,
                source,
            })?);
        }
        // 0700, files 0600 (umask, for RocksDB's), an older open one closed: see storage::private.
        tollgate_storage::private::secure_data_dir(&data_dir)
            .map_err(|source| NodeError::DataDir { path: data_dir.clone(), source })?;
        let terminator = match &config.proxy.tls {
            Some(tls) => Some(Arc::new(crate::proxy::tls::TlsTerminator::new(tls.certificates.clone())?)),
            None => None,
        };
        if let Some(endpoint) = config
            .telemetry
            .otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.is_empty())
        {
            crate::telemetry::tracing::init_otlp(&endpoint);
        }

        let (tls, cluster_listen, advertise, bootstrap) = cluster_identity(&config).await?;
        let engine = Engine::open_with(data_dir.join("db"), config.storage.budget())?;
        let secrets = tollgate_raft::secrets::SecretBox::from_cluster(&tls);
        let ledger = Arc::new(crate::usage::UsageLedger::open(
            &engine,
            &data_dir.join("usage"),
            config.node_id,
            config.usage.journal_options(),
        )?);
        let mut raft_config = RaftConfig::new(config.node_id, data_dir.join("snapshots"));
        raft_config.heartbeat_interval = ms(config.raft.heartbeat_ms);
        raft_config.election_timeout_min = ms(config.raft.election_timeout_min_ms);
        raft_config.election_timeout_max = ms(config.raft.election_timeout_max_ms);
        raft_config.snapshot_after_logs = config.raft.snapshot_after_logs;
        raft_config.logs_kept_after_snapshot = config.raft.logs_kept_after_snapshot;
        raft_config.write_timeout = ms(config.raft.write_timeout_ms);
        let setup = ClusterSetup {
            listen: cluster_listen,
            advertise,
            tls,
            bootstrap,
            admin_addr: admin_addr.to_string(),
            proxy_addr: proxy_addr.to_string(),
        };
        let raft = RaftNode::start(engine.clone(), raft_config, setup).await?;
        // At once, so a joining node's first snapshot install is seen as a
        // change. A member silent for a few election timeouts is worth a
        // warning; shorter gaps are a restart or a join in progress.
        let unreachable_after = (ms(config.raft.election_timeout_max_ms) * 3).max(Duration::from_secs(5));
        let events_task = tokio::spawn(crate::cluster_events::watch(raft.clone(), unreachable_after));
        if bootstrap {
            // A single node elects itself at once; make the first admin write
            // succeed instead of racing the election.
            if let Err(error) = raft.wait_for_leader(Duration::from_secs(5)).await {
                tracing::warn!(%error, "no leader yet; serving the last applied state until one is elected");
            }
        }

        let token = token::load_or_create(config.admin.token.as_deref(), &config.admin_token_path())?;
        let admin_token_generated = matches!(token, token::AdminToken::Generated(_));
        let admin_token = token.value().to_string();

        let clients = UpstreamClients::new(ms(config.proxy.upstream_idle_timeout_ms));
        tokio::spawn(clients.idle_sweeper());
        let defaults = TimeoutDefaults {
            connect: ms(config.proxy.connect_timeout_ms),
            request: ms(config.proxy.request_timeout_ms),
        };
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
        // Providers are reached over https with the system's roots (or plain
        // http for local servers such as vLLM and Ollama), through the
        // request-driven pools; hyper-util's client takes what they cannot.
        let provider_tls = tollgate_proto::config::v1::UpstreamTls { enabled: true, ..Default::default() };
        let ai = Arc::new(crate::ai::snapshot::AiShared {
            ledger: ledger.clone(),
            cooldowns: Default::default(),
            clients: crate::plumbing::ProviderClients::new(
                clients.upstream(defaults.connect, None).ok(),
                clients.provider_tls_pool(defaults.connect),
                clients.get(defaults.connect, Some(&provider_tls)),
            ),
            catalog: tollgate_llm::catalog::Catalog::builtin(),
        });
        let (limiter, lease_asks) = crate::limits::Limiter::new(config.limits.clone(), metrics.limits.clone());
        tokio::spawn(crate::limits::client::run(limiter.clone(), lease_asks, config.node_id, lease_proposer(&raft)));
        let mut shared =
            proxy::Shared::new(clients, defaults, metrics, config.proxy.cache_max_bytes, ai, secrets.clone());
        shared.limiter = limiter;
        let access_log = crate::telemetry::access_log::AccessLog::start(&crate::telemetry::access_log::Sink::parse(
            &config.proxy.access_log,
        ))
        .map_err(NodeError::AccessLog)?;
        let idle = ms(config.proxy.client_idle_timeout_ms);
        let path_policy = crate::proxy::PathPolicy {
            slashes: config.proxy.path_slashes,
            escaped_separators: config.proxy.path_escaped_separators,
        };
        let max_connections = proxy_max_connections(&config, fds);
        let proxy = Arc::new(
            ProxyContext::new(config.proxy.max_body_bytes, idle, shared, access_log)
                .with_path_policy(path_policy)
                .with_client_limits(max_connections, ms(config.proxy.client_send_timeout_ms)),
        );
        let _ = proxy.own_addr.set(proxy_addr);
        let mut first_served = proxy.subscribe_served();
        let follower_task = tokio::spawn(proxy::follow_state(proxy.clone(), raft.subscribe()));
        // The proxy opens only once the first snapshot of the node's state is
        // installed: a restarted node must not answer 404 for the routes it
        // has while it compiles them.
        let _ = first_served.changed().await;
        let (usage_stop, usage_stopped) = watch::channel(false);
        let flusher = crate::usage::flush::Flusher::new(ledger.clone(), raft.clone());
        // Before the proxy serves: no record may be numbered at or below
        // what the cluster already counted for this node.
        flusher.number_after(flusher.after_seq()).map_err(|e| NodeError::Usage(e.to_string()))?;
        let usage_task = tokio::spawn(crate::usage::flush::run(flusher, config.usage.flush_config(), usage_stopped));
        tokio::spawn(report_data_plane(proxy.clone(), raft.clone()));
        if config.audit.retention_days > 0 {
            let retention = Duration::from_secs(config.audit.retention_days.saturating_mul(86_400));
            tokio::spawn(prune_audit(raft.clone(), retention));
        }

        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let drain = ms(config.proxy.drain_timeout_ms);
        let proxy_task =
            tokio::spawn(proxy::serve(proxy_listener, proxy.clone(), until_stopped(stopped.clone()), drain, None));
        let mut dataplane_tasks = vec![
            events_task,
            tokio::spawn(crate::ops::serve(
                ops_listener,
                crate::ops::OpsLimits::from(&config.ops),
                proxy.clone(),
                raft.clone(),
                until_stopped(stopped.clone()),
            )),
        ];
        if let (Some(listener), Some(terminator), Some(tls)) = (tls_listener, terminator, &config.proxy.tls) {
            let interval = ms(if tls.reload_interval_ms == 0 { 5000 } else { tls.reload_interval_ms });
            dataplane_tasks.push(tokio::spawn(terminator.clone().watch(interval)));
            let acceptor = Some(terminator.acceptor.clone());
            dataplane_tasks.push(tokio::spawn(proxy::serve(
                listener,
                proxy.clone(),
                until_stopped(stopped.clone()),
                drain,
                acceptor,
            )));
        }
        let portal = crate::portal::Portal::new(raft.clone(), proxy.clone(), &admin_token, admin_addr);
        dataplane_tasks.push(tokio::spawn(crate::portal::serve(
            console_listener,
            portal,
            until_stopped(stopped.clone()),
        )));
        let admin_task = {
            let (raft, proxy, token, stopped) = (raft.clone(), proxy.clone(), admin_token.clone(), stopped.clone());
            let ai = admin::AiAdminParts { secrets: secrets.clone(), ledger: ledger.clone() };
            tokio::spawn(async move {
                if let Err(error) = admin::serve(admin_listener, raft, proxy, &token, ai, until_stopped(stopped)).await
                {
                    tracing::error!(%error, "admin API stopped");
                }
            })
        };

        let node = Node {
            proxy_addr,
            admin_addr,
            admin_token,
            admin_token_generated,
            data_dir,
            ops_addr,
            proxy_tls_addr,
            console_addr,
            dataplane_tasks,
            raft,
            proxy,
            stop,
            proxy_task,
            admin_task,
            follower_task,
            usage_task,
            usage_stop,
            engine,
            ledger,
        };
        node.write_endpoints();
        Ok(node)
    }

    /// `<data-dir>/endpoints.json` names the bound addresses, so tools and
    /// tests can find a node started on port 0.
    fn write_endpoints(&self) {
        let endpoints = serde_json::json!({
            "node_id": self.raft.node_id(),
            "proxy": self.proxy_addr.to_string(),
            "admin": self.admin_addr.to_string(),
            "peer": self.raft.peer_listen_addr().map(|a| a.to_string()),
            "advertise": self.raft.advertise_addr(),
            "ops": self.ops_addr.to_string(),
            "console": self.console_addr.to_string(),
            "pid": std::process::id(),
        });
        let path = self.data_dir.join("endpoints.json");
        let tmp = self.data_dir.join("endpoints.json.tmp");
        let result = std::fs::write(&tmp, endpoints.to_string()).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(error) = result {
            tracing::warn!(%error, path = %path.display(), "cannot write endpoints file");
        }
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// Raft index of the state the proxy is serving.
    pub fn data_plane_revision(&self) -> u64 {
        self.proxy.served_revision()
    }

    /// Stops accepting, drains in-flight proxy requests, stops the admin API
    /// and Raft, and waits until the database is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.proxy_task.await;
        // Every answered request's record is queued by now: one last flush.
        let _ = self.usage_stop.send(true);
        let _ = self.usage_task.await;
        for task in self.dataplane_tasks {
            // The TLS reload loop never ends by itself; the listeners end on `stop`.
            task.abort();
            let _ = task.await;
        }
        crate::telemetry::tracing::shutdown();
        let _ = self.admin_task.await;
        self.raft.shutdown().await;
        self.follower_task.abort();
        let _ = self.follower_task.await;
        drop(self.raft);
        // Usage records still queued are written before the database closes.
        self.ledger.close();
        // openraft's tasks release their storage handles shortly after shutdown;
        // wait so the same directory can be reopened at once.
        for _ in 0..200 {
            if self.engine.handle_count() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(self.data_dir.join("endpoints.json"));
    }
}

/// Deletes audit entries older than `retention`, hourly, from the leader
/// only (one prune per hour for the cluster, not one per node).
async fn prune_audit(raft: RaftNode, retention: Duration) {
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    loop {
        hourly.tick().await;
        if raft.status().role != tollgate_raft::Role::Leader {
            continue;
        }
        let before_ms = crate::clock::unix_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let due = raft.local_state().audit_entries().next().is_some_and(|e| e.at_ms < before_ms);
        if !due {
            continue;
        }
        let op = tollgate_proto::raft::v1::command::Op::PruneAudit(before_ms);
        let command = tollgate_raft::Command::new(op, crate::clock::unix_ms(), format!("node {}", raft.node_id()));
        if let Err(error) = raft.propose(command).await {
            tracing::warn!(%error, "old audit entries could not be pruned; retrying in an hour");
        }
    }
}

/// Lease commands go through Raft like any write (to the leader, from any
/// node), stamped with this node's clock: the replicated state opens and
/// closes windows from these times (see `tollgate_raft`'s `apply/quota.rs`).
/// The grant in the leader's answer is all the node uses (its leases are
/// its own, in memory), so it does not wait to apply the command itself.
fn lease_proposer(raft: &RaftNode) -> crate::limits::client::ProposeLease {
    let raft = raft.clone();
    Arc::new(move |request| {
        let raft = raft.clone();
        Box::pin(async move {
            let actor = format!("node {}", request.node_id);
            let op = tollgate_proto::raft::v1::command::Op::Lease(request);
            let command = tollgate_raft::Command::new(op, crate::clock::unix_ms(), actor);
            let applied = raft.propose_for_answer(command).await.map_err(|e| e.to_string())?;
            let bytes = applied.entity.unwrap_or_default();
            prost::Message::decode(bytes.as_slice()).map_err(|e| format!("a lease answer did not decode: {e}"))
        })
    })
}
