//! Starts and controls a local cluster of real `tollgate` processes on
//! loopback: each node gets its own data directory, run-time ports (picked at
//! its first start and kept for the life of the cluster, so the addresses
//! printed once stay valid across `stop`/`kill` and `start`), and a relay in
//! front of its peer socket so the harness can partition it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_proto::admin::v1::admin_service_client::AdminServiceClient;
use tollgate_proto::admin::v1::cluster_service_client::ClusterServiceClient;
use tollgate_proto::admin::v1::governance_service_client::GovernanceServiceClient;
use tollgate_proto::admin::v1::usage_service_client::UsageServiceClient;
use tollgate_proto::admin::v1::{
    ClusterStatus, CreateJoinTokenRequest, GetClusterStatusRequest, GetNodeStatusRequest, NodeRequest, NodeStatus,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::relay::{Partitions, Relay};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot find the tollgate binary at {0}; build it (`cargo build --bin tollgate`) or set TOLLGATE_BIN")]
    Binary(PathBuf),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("node {node}: {message} (log: {log})")]
    Node { node: u64, message: String, log: PathBuf },
    #[error("admin API of node {node}: {status}")]
    Admin { node: u64, status: tonic::Status },
    #[error("no node {0} in this cluster")]
    NoSuchNode(u64),
    #[error("{0}")]
    Timeout(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub admin_token: String,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_after_logs: u64,
    pub logs_kept_after_snapshot: u64,
    pub write_timeout_ms: u64,
    /// More TOML for every node's config file (other sections than `[raft]`).
    pub extra_config: String,
}

impl ClusterOptions {
    pub fn new(nodes: usize, dir: impl Into<PathBuf>) -> ClusterOptions {
        ClusterOptions {
            nodes,
            dir: dir.into(),
            binary: default_binary(),
            admin_token: "tollgate-cluster-admin-token".into(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
            write_timeout_ms: 4_000,
            extra_config: String::new(),
        }
    }
}

/// `TOLLGATE_BIN`, else a `tollgate` next to this executable (or one level
/// up, where cargo puts binaries relative to test executables).
pub fn default_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for candidate in [dir.join("tollgate"), dir.join("..").join("tollgate")] {
        if candidate.exists() {
            return candidate;
        }
    }
    dir.join("tollgate")
}

pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;
pub type ClusterClient = ClusterServiceClient<InterceptedService<Channel, Bearer>>;
pub type UsageClient = UsageServiceClient<InterceptedService<Channel, Bearer>>;
pub type GovernanceClient = GovernanceServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
pub struct Bearer(String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0).parse().map_err(|_| tonic::Status::internal("bad token"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

pub struct NodeHandle {
    pub id: u64,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The node's own peer socket.
    pub peer_listen: SocketAddr,
    relay: Relay,
    /// Admin, proxy and ops addresses: port 0 until the first start, then
    /// the same ports on every restart.
    pub admin: SocketAddr,
    pub proxy: SocketAddr,
    pub ops: SocketAddr,
    child: Option<Child>,
    config: PathBuf,
    paused: bool,
}

impl NodeHandle {
    /// The address the rest of the cluster uses for this node (its relay).
    pub fn advertise(&self) -> SocketAddr {
        self.relay.addr()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Frozen by `pause` (SIGSTOP) and not resumed yet.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The listen addresses for the next start: run-time ports the first
    /// time, the ports the node had before on every later start.
    /// The console listens on a port of its own choosing: the harness does
    /// not drive it, and a fixed one would collide between nodes.
    fn listen_args(&self) -> [String; 8] {
        let keep = |addr: SocketAddr| if addr.port() == 0 { "127.0.0.1:0".to_string() } else { addr.to_string() };
        [
            "--proxy-listen".into(),
            keep(self.proxy),
            "--admin-listen".into(),
            keep(self.admin),
            "--ops-listen".into(),
            keep(self.ops),
            "--console-listen".into(),
            "127.0.0.1:0".into(),
        ]
    }
}

/// One `GetNodeStatus` call to the admin API at `admin`, bounded as a whole
/// (connect and answer) by `within`: a frozen node (SIGSTOP) accepts the
/// connection in its kernel but never answers, so only a deadline ends it.
pub async fn probe_status(admin: SocketAddr, token: &str, within: Duration) -> Result<NodeStatus, String> {
    let call = async {
        let channel = Channel::from_shared(format!("http://{admin}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(within)
            .connect()
            .await
            .map_err(|e| format!("admin API unreachable: {e}"))?;
        AdminServiceClient::with_interceptor(channel, Bearer(token.to_string()))
            .get_node_status(GetNodeStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|status| format!("admin API: {}", status.message()))
    };
    match tokio::time::timeout(within, call).await {
        Ok(result) => result,
        Err(_) => Err(format!("admin API did not answer within {} ms (frozen, or overloaded)", within.as_millis())),
    }
}

pub struct Cluster {
    options: ClusterOptions,
    partitions: Arc<Partitions>,
    nodes: Vec<NodeHandle>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if node.paused {
                signal(node, "CONT");
            }
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A node process that is still starting: killed (and reaped) when dropped,
/// unless taken out once it serves.
struct Starting(Option<Child>);

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(node: &NodeHandle, name: &str) -> bool {
    match node.pid() {
        Some(pid) => {
            Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().is_ok_and(|s| s.success())
        }
        None => false,
    }
}

/// Waits (bounded) until every thread of `pid` is in the stopped state
/// (`T` in `/proc/<pid>/task/<tid>/stat`).
fn wait_until_stopped(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while !all_threads_stopped(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        // Gone (or not Linux): nothing left that could answer.
        return true;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            // The state follows the parenthesised command name, which may itself contain spaces.
            .map(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t')))
            .unwrap_or(true)
    })
}

fn free_udp_port() -> Result<SocketAddr, HarnessError> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io("pick a UDP port"))?;
    socket.local_addr().map_err(io("pick a UDP port"))
}

impl Cluster {
    /// Starts node 1 (which forms the cluster), then joins and promotes the
    /// others one by one, and waits until every node is a healthy voter.
    pub async fn up(options: ClusterOptions) -> Result<Cluster, HarnessError> {
        if !options.binary.exists() {
            return Err(HarnessError::Binary(options.binary.clone()));
        }
        std::fs::create_dir_all(&options.dir).map_err(io(format!("create {}", options.dir.display())))?;
        let mut cluster = Cluster { options, partitions: Arc::new(Partitions::default()), nodes: Vec::new() };
        for id in 1..=cluster.options.nodes as u64 {
            let peer_listen = free_udp_port()?;
            cluster.partitions.register(id, peer_listen);
            let relay =
                Relay::start(id, peer_listen, cluster.partitions.clone()).await.map_err(io("start a peer relay"))?;
            let data_dir = cluster.options.dir.join(format!("node-{id}"));
            let config = cluster.options.dir.join(format!("node-{id}.toml"));
            std::fs::write(&config, cluster.node_config()).map_err(io("write a node config"))?;
            cluster.nodes.push(NodeHandle {
                id,
                log: cluster.options.dir.join(format!("node-{id}.log")),
                data_dir,
                peer_listen,
                relay,
                admin: SocketAddr::from(([127, 0, 0, 1], 0)),
                proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
                ops: SocketAddr::from(([127, 0, 0, 1], 0)),
                child: None,
                config,
                paused: false,
            });
        }
        cluster.launch(1, None).await?;
        for id in 2..=cluster.options.nodes as u64 {
            let token = cluster
                .cluster_client(1)
                .await?
                .create_join_token(CreateJoinTokenRequest { ttl_seconds: 3600 })
                .await
                .map_err(|status| HarnessError::Admin { node: 1, status })?
                .into_inner()
                .token;
            let seed = cluster.nodes[0].advertise().to_string();
            cluster.launch(id, Some((seed, token))).await?;
            let leader = cluster.leader().await?;
            cluster
                .cluster_client(leader)
                .await?
                .promote_voter(NodeRequest { node_id: id })
                .await
                .map_err(|status| HarnessError::Admin { node: leader, status })?;
        }
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    fn node_config(&self) -> String {
        let o = &self.options;
        format!(
            "[raft]\nheartbeat_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\n\
             snapshot_after_logs = {}\nlogs_kept_after_snapshot = {}\nwrite_timeout_ms = {}\n{}",
            o.heartbeat_ms,
            o.election_timeout_min_ms,
            o.election_timeout_max_ms,
            o.snapshot_after_logs,
            o.logs_kept_after_snapshot,
            o.write_timeout_ms,
            o.extra_config
        )
    }

    fn handle(&self, id: u64) -> Result<&NodeHandle, HarnessError> {
        self.nodes.iter().find(|n| n.id == id).ok_or(HarnessError::NoSuchNode(id))
    }

    fn handle_mut(&mut self, id: u64) -> Result<&mut NodeHandle, HarnessError> {
        self.nodes.iter_mut().find(|n| n.id == id).ok_or(HarnessError::NoSuchNode(id))
    }

    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    pub fn node(&self, id: u64) -> &NodeHandle {
        self.handle(id).expect("node id within the cluster")
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Starts (or restarts) a node's process and waits until it serves. A
    /// restart binds the ports of the node's first start again.
    async fn launch(&mut self, id: u64, join: Option<(String, String)>) -> Result<(), HarnessError> {
        let binary = self.options.binary.clone();
        let token = self.options.admin_token.clone();
        let node = self.handle_mut(id)?;
        let endpoints = node.data_dir.join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io(format!("open {}", node.log.display())))?;
        let mut command = Command::new(&binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--node-id", &id.to_string()])
            .args(node.listen_args())
            .args(["--cluster-listen", &node.peer_listen.to_string()])
            .args(["--cluster-advertise", &node.relay.addr().to_string()])
            .args(["--admin-token", &token])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((seed, join_token)) = join {
            command.args(["--join", &seed, "--join-token", &join_token]);
        }
        // Guarded from the spawn on: a start-up abandoned (an error, or `up`
        // dropping this future on SIGTERM) must not leave the process behind.
        let mut starting = Starting(Some(command.spawn().map_err(io(format!("start {}", binary.display())))?));
        let child = starting.0.as_mut().expect("just spawned");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&endpoints)
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
                && json["pid"] == pid
            {
                node.admin = json["admin"].as_str().unwrap_or_default().parse().unwrap_or(node.admin);
                node.proxy = json["proxy"].as_str().unwrap_or_default().parse().unwrap_or(node.proxy);
                node.ops = json["ops"].as_str().unwrap_or_default().parse().unwrap_or(node.ops);
                node.child = starting.0.take();
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let ports = if node.admin.port() == 0 {
                    String::new()
                } else {
                    format!(
                        "; it restarts on its earlier ports (proxy {}, admin {}, ops {}), one may be taken",
                        node.proxy, node.admin, node.ops
                    )
                };
                // The log goes with a test's temporary directory: say why here.
                let why = log_tail(&node.log, 5);
                return Err(HarnessError::Node {
                    node: id,
                    message: format!("exited during start-up ({status}){ports}; its log ends: {why}"),
                    log: node.log.clone(),
                });
            }
            if Instant::now() > deadline {
                // Killed by the guard.
                return Err(HarnessError::Node {
                    node: id,
                    message: "not ready within 60 s".into(),
                    log: node.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn channel(&self, id: u64) -> Result<Channel, HarnessError> {
        let node = self.handle(id)?;
        Channel::from_shared(format!("http://{}", node.admin))
            .map_err(|e| HarnessError::Node { node: id, message: e.to_string(), log: node.log.clone() })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .map_err(|e| HarnessError::Node {
                node: id,
                message: format!("admin API unreachable: {e}"),
                log: node.log.clone(),
            })
    }

    pub async fn admin(&self, id: u64) -> Result<Admin, HarnessError> {
        Ok(AdminServiceClient::with_interceptor(self.channel(id).await?, Bearer(self.options.admin_token.clone())))
    }

    pub async fn cluster_client(&self, id: u64) -> Result<ClusterClient, HarnessError> {
        Ok(ClusterServiceClient::with_interceptor(self.channel(id).await?, Bearer(self.options.admin_token.clone())))
    }

    pub async fn governance(&self, id: u64) -> Result<GovernanceClient, HarnessError> {
        Ok(GovernanceServiceClient::with_interceptor(self.channel(id).await?, Bearer(self.options.admin_token.clone())))
    }

    pub async fn usage_client(&self, id: u64) -> Result<UsageClient, HarnessError> {
        Ok(UsageServiceClient::with_interceptor(self.channel(id).await?, Bearer(self.options.admin_token.clone())))
    }

    pub async fn node_status(&self, id: u64) -> Result<NodeStatus, HarnessError> {
        self.admin(id)
            .await?
            .get_node_status(GetNodeStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|status| HarnessError::Admin { node: id, status })
    }

    pub async fn cluster_status(&self, via: u64) -> Result<ClusterStatus, HarnessError> {
        self.cluster_client(via)
            .await?
            .get_cluster_status(GetClusterStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|status| HarnessError::Admin { node: via, status })
    }

    /// The leader as reported by a running, reachable node that considers
    /// itself the leader; waits (bounded) while an election is under way.
    pub async fn leader(&self) -> Result<u64, HarnessError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for node in self.nodes.iter().filter(|n| n.is_running() && !n.paused) {
                if let Ok(status) = self.node_status(node.id).await
                    && status.role == "leader"
                {
                    return Ok(node.id);
                }
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout("no leader within 30 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node is a voter that knows the same leader
    /// and has applied everything the leader committed.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.healthy().await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!("cluster not healthy within {timeout:?}: {why}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn healthy(&self) -> Result<(), String> {
        let leader = self.leader().await.map_err(|e| e.to_string())?;
        let leader_status = self.node_status(leader).await.map_err(|e| e.to_string())?;
        let membership = self.cluster_status(leader).await.map_err(|e| e.to_string())?;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let member = membership
                .members
                .iter()
                .find(|m| m.node_id == node.id)
                .ok_or(format!("node {} is not a member", node.id))?;
            if !member.voter {
                return Err(format!("node {} is not a voter yet", node.id));
            }
            let s = self.node_status(node.id).await.map_err(|e| e.to_string())?;
            if s.leader_id != Some(leader) {
                return Err(format!("node {} thinks the leader is {:?}, not {leader}", node.id, s.leader_id));
            }
            if s.applied_index < leader_status.committed_index || s.data_plane_index < s.applied_index {
                return Err(format!("node {} is behind: {s:?}", node.id));
            }
        }
        Ok(())
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub async fn kill(&mut self, id: u64) -> Result<(), HarnessError> {
        let node = self.handle_mut(id)?;
        if node.paused {
            signal(node, "CONT");
            node.paused = false;
        }
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// SIGTERM and wait for the graceful exit.
    pub async fn stop(&mut self, id: u64) -> Result<(), HarnessError> {
        let node = self.handle_mut(id)?;
        if node.paused {
            signal(node, "CONT");
            node.paused = false;
        }
        signal(node, "TERM");
        if let Some(mut child) = node.child.take() {
            // A node that does not exit within a minute is killed, so that it
            // cannot keep its ports (which a later `start` binds again).
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Restarts a stopped or killed node from its data directory.
    pub async fn start(&mut self, id: u64) -> Result<(), HarnessError> {
        if self.handle(id)?.is_running() {
            return Ok(());
        }
        self.launch(id, None).await
    }

    /// SIGSTOP: the process is frozen, its sockets stay open.
    ///
    /// Returns once every thread of the node is stopped: `kill` only queues
    /// the signal, and a thread running on another core may otherwise still
    /// answer a request or two after `pause` returned.
    pub fn pause(&mut self, id: u64) -> Result<(), HarnessError> {
        let node = self.handle_mut(id)?;
        node.paused = signal(node, "STOP");
        if let (true, Some(pid)) = (node.paused, node.pid()) {
            wait_until_stopped(pid, Duration::from_secs(5));
        }
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> Result<(), HarnessError> {
        let node = self.handle_mut(id)?;
        if signal(node, "CONT") {
            node.paused = false;
        }
        Ok(())
    }

    /// Only nodes in the same group can exchange peer traffic until `heal`.
    pub fn partition(&self, groups: Vec<Vec<u64>>) {
        self.partitions.partition(groups);
    }

    pub fn heal(&self) {
        self.partitions.heal();
    }

    pub fn partitions(&self) -> Option<Vec<Vec<u64>>> {
        self.partitions.current()
    }

    /// Slows the network between the nodes: every round trip between two
    /// of them takes `delay` longer (zero: as fast as loopback again).
    pub fn delay_links(&self, delay: std::time::Duration) {
        self.partitions.set_delay(delay);
    }

    /// Stops every node gracefully.
    pub async fn down(mut self) {
        self.stop_all().await;
    }

    /// Stops every running node gracefully; the cluster can be started
    /// again node by node (`start`).
    pub async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            let _ = self.stop(id).await;
        }
    }
}

/// The last `lines` lines of a node's log, on one line.
fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
