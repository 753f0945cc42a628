//! A running Raft member: storage, state machine and openraft wired together,
//! with the calls the admin API needs (propose, linearizable read, status).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tollgate_proto::config::v1::{JoinToken as JoinTokenRecord, Meta};
use tollgate_proto::raft::v1::command::Op;
use tollgate_storage::Engine;

use crate::admit::admit;
use crate::apply::apply;
use crate::error::{ApplyError, RaftNodeError};
use crate::log_store::LogStore;
use crate::pki::ClusterTls;
use crate::state::GatewayState;
use crate::state_machine::StateMachine;
use crate::transport::handler::rejection;
use crate::transport::wire::{JoinRequest, PeerRequest, PeerResponse, WriteRejection};
use crate::transport::{JoinToken, MembershipOp, PeerNetwork, PeerStatus, Transport};
use crate::types::{Applied, Command, Raft};

#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub node_id: u64,
    pub snapshot_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot, so slightly lagging followers
    /// catch up from the log instead of a whole snapshot.
    pub logs_kept_after_snapshot: u64,
    /// How long a write (or a read's wait for the leader) may take before the
    /// caller is told the cluster is unavailable.
    pub write_timeout: Duration,
}

impl RaftConfig {
    pub fn new(node_id: u64, snapshot_dir: PathBuf) -> RaftConfig {
        RaftConfig {
            node_id,
            snapshot_dir,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
            write_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node_id: u64,
    pub role: Role,
    pub current_term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
}

/// Why a proposal did not produce an applied change.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Refused before it was proposed (by this version's admission rules,
    /// or because `apply` would reject it: then it never reached the log),
    /// or rejected the same way by every replica when applied.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    #[error(transparent)]
    Node(#[from] RaftNodeError),
}

/// How this node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSetup {
    /// UDP address for peer QUIC traffic.
    pub listen: SocketAddr,
    /// Address peers should use (a relay, a NAT, a DNS name); default: the bound address.
    pub advertise: Option<String>,
    pub tls: ClusterTls,
    /// On a fresh data directory, form a new single-node cluster. False for a
    /// node that joins an existing cluster.
    pub bootstrap: bool,
    pub admin_addr: String,
    pub proxy_addr: String,
}

/// A member as the cluster status reports it.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub node_id: u64,
    pub addr: String,
    pub voter: bool,
    /// The member's own report, or why it could not be had.
    pub report: Result<PeerStatus, String>,
}

struct Inner {
    raft: Raft,
    node_id: u64,
    state: watch::Receiver<Arc<GatewayState>>,
    transport: Arc<Transport>,
    tls: ClusterTls,
    snapshot_dir: PathBuf,
    advertise: String,
    admin_addr: String,
    proxy_addr: String,
    write_timeout: Duration,
    data_plane_index: AtomicU64,
}

#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl RaftNode {
    /// Opens the log and state machine in `engine`, starts serving peers, and
    /// starts Raft. A fresh data directory with `bootstrap` forms a new
    /// single-node cluster; otherwise the node waits to be contacted by a leader.
    pub async fn start(engine: Engine, config: RaftConfig, cluster: ClusterSetup) -> Result<RaftNode, RaftNodeError> {
        let raft_config = Config {
            cluster_name: "tollgate".into(),
            heartbeat_interval: millis(config.heartbeat_interval),
            election_timeout_min: millis(config.election_timeout_min),
            election_timeout_max: millis(config.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_logs),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            enable_heartbeat: true,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| RaftNodeError::Config(e.to_string()))?);
        let transport = Arc::new(Transport::bind(cluster.listen, &cluster.tls)?);
        let advertise = match cluster.advertise.clone() {
            Some(a) => a,
            None => transport.local_addr().map(|a| a.to_string()).unwrap_or_else(|| cluster.listen.to_string()),
        };
        let (state_machine, state) = StateMachine::open(engine.clone(), config.snapshot_dir.clone())?;
        let network = PeerNetwork::new(transport.clone());
        let raft = Raft::new(config.node_id, raft_config, network, LogStore::new(engine), state_machine)
            .await
            .map_err(|e| RaftNodeError::Fatal(e.to_string()))?;
        let node = RaftNode {
            inner: Arc::new(Inner {
                raft,
                node_id: config.node_id,
                state,
                transport: transport.clone(),
                tls: cluster.tls,
                snapshot_dir: config.snapshot_dir,
                advertise: advertise.clone(),
                admin_addr: cluster.admin_addr,
                proxy_addr: cluster.proxy_addr,
                write_timeout: config.write_timeout,
                data_plane_index: AtomicU64::new(0),
            }),
        };
        tokio::spawn(crate::transport::handler::serve(transport, node.clone()));

        let initialized = node.raft().is_initialized().await.map_err(|e| RaftNodeError::Fatal(e.to_string()))?;
        if !initialized && cluster.bootstrap {
            let members = BTreeMap::from([(config.node_id, BasicNode { addr: advertise })]);
            node.raft().initialize(members).await.map_err(|e| RaftNodeError::Raft(e.to_string()))?;
            tracing::info!(node_id = config.node_id, "bootstrapped a new single-node cluster");
        }
        Ok(node)
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    pub fn advertise_addr(&self) -> &str {
        &self.inner.advertise
    }

    pub fn peer_listen_addr(&self) -> Option<SocketAddr> {
        self.inner.transport.local_addr()
    }

    pub(crate) fn snapshot_dir(&self) -> &Path {
        &self.inner.snapshot_dir
    }

    /// Waits until some node is leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, RaftNodeError> {
        let metrics = self
            .raft()
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .map_err(|e| RaftNodeError::Raft(e.to_string()))?;
        metrics.current_leader.ok_or_else(|| RaftNodeError::Raft("no leader".into()))
    }

    /// Replicates `command` (through the leader, wherever it is), waits until
    /// it is applied on this node, and returns what it did.
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        self.precheck(&command).await?;
        let timeout = self.inner.write_timeout;
        match tokio::time::timeout(timeout, self.propose_inner(command)).await {
            Ok(result) => result,
            Err(_) => Err(RaftNodeError::Unavailable(format!(
                "the write was not confirmed within {} s, so it may or may not have been applied; the cluster \
                 has no reachable majority from this node (partition or lost quorum). Check `tollgate ctl cluster status`",
                timeout.as_secs()
            ))
            .into()),
        }
    }

    /// Runs this version's admission rules (admit.rs) and the same `apply`
    /// every replica will, on this node's state, before anything is
    /// proposed: a command they would all reject must not reach the log,
    /// where it would stay, copied to every member, until the log is
    /// compacted, with whatever it carried (such as a URL with a password in
    /// it). `apply` still decides: the state can change between this check
    /// and the commit.
    async fn precheck(&self, command: &Command) -> Result<(), ProposeError> {
        if let Some(op) = &command.0.op {
            admit(op)?;
        }
        // The index only stamps the entity's revision, which a dry run discards.
        let Err(error) = apply(&self.local_state(), &command.0, 0) else { return Ok(()) };
        // Field rules do not depend on the state: no need to ask the leader.
        if matches!(error, ApplyError::InvalidArgument { .. }) {
            return Err(error.into());
        }
        // Missing or clashing entities do, and this node's view may be behind:
        // confirm on a state that includes every acknowledged write.
        let state = self.linearizable_state().await?;
        apply(&state, &command.0, 0).map(|_| ()).map_err(ProposeError::from)
    }

    async fn propose_inner(&self, command: Command) -> Result<Applied, ProposeError> {
        loop {
            let leader = match self.raft().client_write(command.clone()).await {
                Ok(response) => return Ok(response.data.0?),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    f.leader_node.map(|n| (f.leader_id, n.addr))
                }
                Err(e) => return Err(RaftNodeError::Raft(e.to_string()).into()),
            };
            let Some((leader_id, addr)) = leader else {
                // An election is under way; ask again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let response = self
                .inner
                .transport
                .call(&addr, &PeerRequest::Write(Box::new(command.clone())), self.inner.write_timeout)
                .await
                .map_err(|e| unreachable_leader(leader_id, &e))?;
            match response {
                PeerResponse::Write(Ok(result)) => {
                    let applied = result.0?;
                    self.wait_applied(applied.revision).await?;
                    return Ok(applied);
                }
                PeerResponse::Write(Err(WriteRejection::NotLeader { .. })) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                PeerResponse::Write(Err(WriteRejection::Failed(reason))) => {
                    return Err(
                        RaftNodeError::Unavailable(format!("the leader could not commit the write: {reason}")).into()
                    );
                }
                other => {
                    return Err(RaftNodeError::Raft(format!("unexpected answer from the leader: {other:?}")).into());
                }
            }
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<Arc<GatewayState>, RaftNodeError> {
        let mut rx = self.inner.state.clone();
        let state = rx
            .wait_for(|s| s.applied_index() >= index)
            .await
            .map_err(|_| RaftNodeError::Fatal("state machine stopped".into()))?;
        Ok(state.clone())
    }

    /// The latest applied state, without any consensus round: what the data
    /// plane serves, possibly behind the leader.
    pub fn local_state(&self) -> Arc<GatewayState> {
        self.inner.state.borrow().clone()
    }

    /// A state that reflects every write acknowledged before this call started
    /// (Raft read-index, asked of the leader when this node is not it), once
    /// this node has applied up to that point.
    pub async fn linearizable_state(&self) -> Result<Arc<GatewayState>, RaftNodeError> {
        let timeout = self.inner.write_timeout;
        let read = async {
            loop {
                match self.local_read_index().await {
                    Ok(index) => return self.wait_applied(index).await,
                    Err(WriteRejection::NotLeader { leader_id, leader_addr: Some(addr) }) => {
                        let response = self
                            .inner
                            .transport
                            .call(&addr, &PeerRequest::ReadIndex, timeout)
                            .await
                            .map_err(|e| unreachable_leader(leader_id, &e))?;
                        match response {
                            PeerResponse::ReadIndex(Ok(index)) => return self.wait_applied(index).await,
                            PeerResponse::ReadIndex(Err(WriteRejection::NotLeader { .. })) => {}
                            PeerResponse::ReadIndex(Err(WriteRejection::Failed(reason))) => {
                                return Err(RaftNodeError::Unavailable(reason));
                            }
                            other => return Err(RaftNodeError::Raft(format!("unexpected answer: {other:?}"))),
                        }
                    }
                    Err(WriteRejection::NotLeader { .. }) => {}
                    Err(WriteRejection::Failed(reason)) => return Err(RaftNodeError::Unavailable(reason)),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
            Err(RaftNodeError::Unavailable(format!(
                "no linearizable read point within {} s: this node cannot reach a leader with a majority. \
                 Use --stale to read this node's possibly outdated state",
                timeout.as_secs()
            )))
        })
    }

    /// The read index when this node is the leader.
    pub(crate) async fn local_read_index(&self) -> Result<u64, WriteRejection> {
        match self.raft().ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read) => Ok(read.log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(WriteRejection::NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) })
            }
            Err(e) => Err(WriteRejection::Failed(e.to_string())),
        }
    }

    /// Notified after every applied batch with the new state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<GatewayState>> {
        self.inner.state.clone()
    }

    /// The proxy reports the index of the state it serves, for status.
    pub fn set_data_plane_index(&self, index: u64) {
        self.inner.data_plane_index.store(index, Ordering::Release);
    }

    pub fn status(&self) -> NodeStatus {
        let m = self.raft().metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        NodeStatus {
            node_id: self.inner.node_id,
            role,
            current_term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.cluster_committed.as_ref().or(m.local_committed.as_ref()).map_or(0, |l| l.index()),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index()),
        }
    }

    pub(crate) fn peer_status(&self) -> PeerStatus {
        let s = self.status();
        PeerStatus {
            node_id: s.node_id,
            role: s.role.as_str().to_string(),
            current_term: s.current_term,
            leader_id: s.leader_id,
            last_log_index: s.last_log_index,
            committed_index: s.committed_index,
            applied_index: s.applied_index,
            data_plane_index: self.inner.data_plane_index.load(Ordering::Acquire),
            admin_addr: self.inner.admin_addr.clone(),
            proxy_addr: self.inner.proxy_addr.clone(),
        }
    }

    /// Every member of the current membership with its own report (asked over
    /// the peer network), or why it could not be reached.
    pub async fn cluster_status(&self) -> Vec<MemberStatus> {
        let m = self.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let mut members = Vec::new();
        for (id, node) in membership.nodes() {
            let report = if *id == self.inner.node_id {
                Ok(self.peer_status())
            } else {
                match self.inner.transport.call(&node.addr, &PeerRequest::Status, Duration::from_secs(2)).await {
                    Ok(PeerResponse::Status(s)) => Ok(s),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            };
            members.push(MemberStatus { node_id: *id, addr: node.addr.clone(), voter: voters.contains(id), report });
        }
        members
    }

    /// Applies a membership change through the leader. Returns the log index.
    pub async fn change_membership(&self, op: MembershipOp) -> Result<u64, RaftNodeError> {
        let attempt = async {
            loop {
                match self.change_membership_here(op.clone()).await {
                    Ok(index) => return Ok(index),
                    Err(WriteRejection::Failed(reason)) => return Err(RaftNodeError::Raft(reason)),
                    Err(WriteRejection::NotLeader { leader_id, leader_addr: Some(addr) }) => {
                        let response = self
                            .inner
                            .transport
                            .call(&addr, &PeerRequest::Membership(op.clone()), self.inner.write_timeout)
                            .await
                            .map_err(|e| unreachable_leader(leader_id, &e))?;
                        match response {
                            PeerResponse::Membership(Ok(index)) => return Ok(index),
                            PeerResponse::Membership(Err(WriteRejection::Failed(reason))) => {
                                return Err(RaftNodeError::Raft(reason));
                            }
                            PeerResponse::Membership(Err(WriteRejection::NotLeader { .. })) => {}
                            other => return Err(RaftNodeError::Raft(format!("unexpected answer: {other:?}"))),
                        }
                    }
                    Err(WriteRejection::NotLeader { .. }) => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(self.inner.write_timeout, attempt).await.unwrap_or_else(|_| {
            Err(RaftNodeError::Unavailable(
                "the membership change was not confirmed in time; check cluster status".into(),
            ))
        })
    }

    /// Executes a membership change if this node is the leader.
    pub(crate) async fn change_membership_here(&self, op: MembershipOp) -> Result<u64, WriteRejection> {
        let raft = self.raft();
        let is_voter = |id: u64| {
            let m = raft.metrics().borrow_watched().clone();
            m.membership_config.membership().voter_ids().any(|v| v == id)
        };
        let result = match op {
            MembershipOp::AddLearner { node_id, addr } => raft.add_learner(node_id, BasicNode { addr }, false).await,
            MembershipOp::Promote { node_id } => {
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false).await
            }
            MembershipOp::Remove { node_id } => {
                if is_voter(node_id)
                    && let Err(e) =
                        raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node_id])), false).await
                {
                    return Err(rejection(e));
                }
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false).await
            }
            MembershipOp::TransferLeader { to } => {
                if !is_voter(to) {
                    return Err(WriteRejection::Failed(format!("node {to} is not a voter; promote it first")));
                }
                if raft.metrics().borrow_watched().current_leader != Some(self.inner.node_id) {
                    let m = raft.metrics().borrow_watched().clone();
                    return Err(WriteRejection::NotLeader {
                        leader_id: m.current_leader,
                        leader_addr: m
                            .current_leader
                            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone())),
                    });
                }
                return raft
                    .trigger()
                    .transfer_leader(to)
                    .await
                    .map(|()| 0)
                    .map_err(|e| WriteRejection::Failed(e.to_string()));
            }
        };
        result.map(|r| r.log_id.index()).map_err(rejection)
    }

    /// Creates a join token valid for `ttl`; returns its text (shown once).
    pub async fn create_join_token(&self, ttl: Duration, actor: &str) -> Result<String, ProposeError> {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        let (id, secret) = (hex::encode(id), hex::encode(secret));
        let now = now_ms();
        let record = JoinTokenRecord {
            meta: Some(Meta { id: id.clone(), ..Default::default() }),
            secret_sha256: Sha256::digest(secret.as_bytes()).to_vec(),
            expires_at_ms: now + ttl.as_millis() as i64,
        };
        self.propose(Command::new(Op::CreateJoinToken(record), now, actor)).await?;
        Ok(JoinToken::format(&id, &secret, &self.inner.tls.ca_fingerprint()))
    }

    /// Revokes a join token, given its id or the whole token text. Returns the log index.
    pub async fn revoke_join_token(&self, id_or_token: &str, actor: &str) -> Result<u64, ProposeError> {
        let id = JoinToken::parse(id_or_token).map_or_else(|| id_or_token.to_string(), |t| t.id);
        let applied = self.propose(Command::new(Op::DeleteJoinToken(id), now_ms(), actor)).await?;
        Ok(applied.revision)
    }

    /// Checks a join request and, when it is valid, adds the node as a
    /// learner and returns its TLS material.
    pub(crate) async fn admit(&self, request: &JoinRequest) -> Result<ClusterTls, String> {
        let token = JoinToken::parse(&request.token).ok_or("the join token is malformed")?;
        if token.ca_fingerprint != self.inner.tls.ca_fingerprint() {
            return Err("the join token belongs to another cluster".into());
        }
        if request.node_id == 0 {
            return Err("node id 0 is reserved; choose --node-id 1 or above".into());
        }
        let state = self.linearizable_state().await.map_err(|e| e.to_string())?;
        let record = state.join_token(&token.id).ok_or("the join token is unknown or was revoked")?;
        if Sha256::digest(token.secret.as_bytes()).as_slice() != record.secret_sha256.as_slice() {
            return Err("the join token's secret is wrong".into());
        }
        if record.expires_at_ms <= now_ms() {
            return Err("the join token has expired; create a new one with `tollgate ctl cluster token`".into());
        }
        let membership = self.raft().metrics().borrow_watched().membership_config.membership().clone();
        if let Some(existing) = membership.get_node(&request.node_id)
            && existing.addr != request.addr
        {
            return Err(format!(
                "node id {} is already a member at {}; remove it first or pick another --node-id",
                request.node_id, existing.addr
            ));
        }
        let tls = self.inner.tls.for_joiner(request.node_id).map_err(|e| e.to_string())?;
        self.change_membership(MembershipOp::AddLearner { node_id: request.node_id, addr: request.addr.clone() })
            .await
            .map_err(|e| e.to_string())?;
        Ok(tls)
    }

    /// Stops serving peers and stops Raft. Applied state is already durable.
    pub async fn shutdown(&self) {
        self.inner.transport.close();
        if let Err(e) = self.raft().shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

fn unreachable_leader(leader_id: Option<u64>, error: &crate::transport::TransportError) -> RaftNodeError {
    RaftNodeError::Unavailable(format!(
        "cannot reach the leader{}: {error}. This node may be partitioned from the majority",
        leader_id.map(|l| format!(" (node {l})")).unwrap_or_default()
    ))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
