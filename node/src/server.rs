//! Starting and stopping a node: storage, Raft, the data-plane follower, the
//! proxy and the admin API, in that order; shut down in reverse.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_raft::{RaftConfig, RaftNode, RaftNodeError};
use tollgate_storage::{Engine, StorageError};

use crate::admin::{self, token};
use crate::config::{Config, ms};
use crate::proxy::{self, ProxyContext, TimeoutDefaults, UpstreamClients};

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
    #[error("proxy.tls: {0}")]
    Tls(#[from] crate::proxy::tls::TlsError),
    #[error("cannot open the access log: {0}; set proxy.access_log to \"stdout\", \"off\" or a writable path")]
    AccessLog(std::io::Error),
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
    dataplane_tasks: Vec<JoinHandle<()>>,
    raft: RaftNode,
    proxy: Arc<ProxyContext>,
    stop: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    follower_task: JoinHandle<()>,
    engine: Engine,
}

async fn bind(addr: SocketAddr, what: &'static str, flag: &'static str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { what, flag, addr, source })
}

impl Node {
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| NodeError::DataDir { path: data_dir.clone(), source })?;
        // Bind first: a port conflict should fail before anything touches the data.
        let proxy_listener = bind(config.listen.proxy, "proxy", "proxy-listen").await?;
        let admin_listener = bind(config.listen.admin, "admin API", "admin-listen").await?;
        let proxy_addr = proxy_listener.local_addr().map_err(|source| NodeError::Bind {
            what: "proxy",
            flag: "proxy-listen",
            addr: config.listen.proxy,
            source,
        })?;
        let admin_addr = admin_listener.local_addr().map_err(|source| NodeError::Bind {
            what: "admin API",
            flag: "admin-listen",
            addr: config.listen.admin,
            source,
        })?;

        let ops_listener = bind(config.listen.ops, "ops", "ops-listen").await?;
        let ops_addr = ops_listener.local_addr().map_err(|source| NodeError::Bind {
            what: "ops",
            flag: "ops-listen",
            addr: config.listen.ops,
            source,
        })?;
        let tls_listener = match &config.proxy.tls {
            Some(tls) => Some(bind(tls.listen, "proxy TLS", "config proxy.tls.listen").await?),
            None => None,
        };
        let proxy_tls_addr = tls_listener.as_ref().and_then(|l| l.local_addr().ok());
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

        let engine = Engine::open(data_dir.join("db"))?;
        let mut raft_config =
            RaftConfig::new(config.node_id, config.listen.cluster.to_string(), data_dir.join("snapshots"));
        raft_config.heartbeat_interval = ms(config.raft.heartbeat_ms);
        raft_config.election_timeout_min = ms(config.raft.election_timeout_min_ms);
        raft_config.election_timeout_max = ms(config.raft.election_timeout_max_ms);
        raft_config.snapshot_after_logs = config.raft.snapshot_after_logs;
        raft_config.logs_kept_after_snapshot = config.raft.logs_kept_after_snapshot;
        let raft = RaftNode::start(engine.clone(), raft_config).await?;
        raft.wait_for_leader(Duration::from_secs(30)).await?;

        let token = token::load_or_create(config.admin.token.as_deref(), &config.admin_token_path())?;
        let admin_token_generated = matches!(token, token::AdminToken::Generated(_));
        let admin_token = token.value().to_string();

        let clients = UpstreamClients::new(ms(config.proxy.upstream_idle_timeout_ms));
        let defaults = TimeoutDefaults {
            connect: ms(config.proxy.connect_timeout_ms),
            request: ms(config.proxy.request_timeout_ms),
        };
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
        let shared = proxy::Shared::new(clients, defaults, metrics, config.proxy.cache_max_bytes);
        let access_log = crate::telemetry::access_log::AccessLog::start(&crate::telemetry::access_log::Sink::parse(
            &config.proxy.access_log,
        ))
        .map_err(NodeError::AccessLog)?;
        let proxy = Arc::new(ProxyContext::new(config.proxy.max_body_bytes, shared, access_log));
        let follower_task = tokio::spawn(proxy::follow_state(proxy.clone(), raft.subscribe()));

        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let drain = ms(config.proxy.drain_timeout_ms);
        let proxy_task =
            tokio::spawn(proxy::serve(proxy_listener, proxy.clone(), until_stopped(stopped.clone()), drain, None));
        let mut dataplane_tasks = vec![tokio::spawn(crate::ops::serve(
            ops_listener,
            proxy.clone(),
            raft.clone(),
            until_stopped(stopped.clone()),
        ))];
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
        let admin_task = {
            let (raft, proxy, token, stopped) = (raft.clone(), proxy.clone(), admin_token.clone(), stopped.clone());
            tokio::spawn(async move {
                if let Err(error) = admin::serve(admin_listener, raft, proxy, &token, until_stopped(stopped)).await {
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
            dataplane_tasks,
            raft,
            proxy,
            stop,
            proxy_task,
            admin_task,
            follower_task,
            engine,
        };
        node.write_endpoints();
        Ok(node)
    }

    /// `<data-dir>/endpoints.json` names the bound addresses, so tools and
    /// tests can find a node started on port 0.
    fn write_endpoints(&self) {
        let endpoints = serde_json::json!({
            "proxy": self.proxy_addr.to_string(),
            "admin": self.admin_addr.to_string(),
            "ops": self.ops_addr.to_string(),
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
