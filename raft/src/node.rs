//! A running Raft member: storage, state machine and openraft wired together,
//! with the calls the admin API needs (propose, linearizable read, status).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::alias::LeaderIdOf;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{LinearizableReadError, RaftError};
use openraft::impls::ProgressResponder;
use openraft::raft::ReadPolicy;
use openraft::vote::RaftLeaderIdExt;
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
use crate::leader::{self, LeaderError, via_leader};
use crate::log_store::LogStore;
use crate::outcomes::Outcomes;
use crate::pki::ClusterTls;
use crate::quorum::{QuorumLoss, Reach};
use crate::state::GatewayState;
use crate::state_machine::StateMachine;
use crate::transport::handler::rejection;
use crate::transport::wire::{JoinRequest, LeaderTerm, PeerRequest, PeerResponse, WriteRejection};
use crate::transport::{JoinToken, MembershipOp, PeerNetwork, PeerStatus, Transport};
use crate::types::{Applied, Command, CommandResponse, Raft, TypeConfig};

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
    /// Set when this node leads but a majority has not acknowledged it
    /// within its lease: a partitioned leader still holds the role.
    pub quorum_loss: Option<QuorumLoss>,
}

impl NodeStatus {
    /// The role as status reports it: `leader (no quorum since …)` for a
    /// leader cut off from its majority, so two nodes never both read "leader".
    pub fn role_text(&self) -> String {
        match &self.quorum_loss {
            Some(loss) => loss.role(),
            None => self.role.as_str().to_string(),
        }
    }
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
    /// openraft's leader lease (its maximum election timeout): a leader not
    /// acknowledged by a majority for this long refuses writes.
    lease: Duration,
    outcomes: Arc<Outcomes>,
    /// The highest revision (log index) any write of this node was answered
    /// with. A write sent after that answer lands after it in the log, so a
    /// lost answer is looked for only after it (`leader::attempt`), even
    /// while this node has not applied that far: of two writes of one node
    /// sent one after the other that read the same (two lease asks stamped
    /// in one millisecond, or after the clock stepped back), the second is
    /// never settled with the first's answer. (Two sent at once could be;
    /// the lease client sends one command at a time.)
    answered_through: AtomicU64,
    data_plane_index: AtomicU64,
    /// Held from checking a new learner against the membership until it is
    /// added, so two joins cannot both claim one free address.
    learner_lock: tokio::sync::Mutex<()>,
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
            // A node cut off from the others must not raise its term with
            // every election timeout: back in touch, the higher term would
            // depose a healthy leader. Pre-vote asks first whether it could win.
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| RaftNodeError::Config(e.to_string()))?);
        let transport = Arc::new(Transport::bind(cluster.listen, &cluster.tls)?);
        let advertise = match cluster.advertise.clone() {
            Some(a) => a,
            None => transport.local_addr().map(|a| a.to_string()).unwrap_or_else(|| cluster.listen.to_string()),
        };
        let (state_machine, state) = StateMachine::open(engine.clone(), config.snapshot_dir.clone())?;
        let outcomes = state_machine.outcomes();
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
                lease: config.election_timeout_max,
                outcomes,
                answered_through: AtomicU64::new(0),
                data_plane_index: AtomicU64::new(0),
                learner_lock: tokio::sync::Mutex::new(()),
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

    /// Replicates `command` (through the leader, wherever it is, and through
    /// a change of leader), waits until it is applied on this node, and
    /// returns what it did: what an admin write needs, so that a read of
    /// this node after it sees the write.
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.inner.write_timeout;
        let applied = self.propose_until(command, deadline).await?;
        // The leader has applied it; this node follows within a heartbeat or so.
        match tokio::time::timeout_at(deadline, self.wait_applied(applied.revision)).await {
            Ok(state) => state.map(|_| applied).map_err(ProposeError::from),
            Err(_) => Err(RaftNodeError::Unavailable(format!(
                "the write was applied (revision {}), but this node has not caught up with it within {} s; \
                 read it from the leader, or check this node with `tollgate ctl cluster status`",
                applied.revision,
                self.inner.write_timeout.as_secs()
            ))
            .into()),
        }
    }

    /// As `propose`, for a command whose answer is all its proposer uses (a
    /// quota lease's grant): returned as soon as the leader has applied it
    /// (so it is committed), without waiting for this node to apply it too.
    /// A follower learns of a commit with the leader's next append, up to a
    /// heartbeat later: on every lease ask, that wait was the larger part of
    /// a follower's grant time.
    pub async fn propose_for_answer(&self, command: Command) -> Result<Applied, ProposeError> {
        self.propose_until(command, tokio::time::Instant::now() + self.inner.write_timeout).await
    }

    async fn propose_until(&self, command: Command, deadline: tokio::time::Instant) -> Result<Applied, ProposeError> {
        self.precheck(&command, deadline).await?;
        let response = via_leader(self, &leader::Write(&command), deadline).await.map_err(|e| self.write_error(e))?;
        let applied = response.0?;
        self.inner.answered_through.fetch_max(applied.revision, Ordering::AcqRel);
        Ok(applied)
    }

    /// Where a write's entry may start in the log, as far as this node
    /// knows: after what it has applied, and after every answer it had.
    pub(crate) fn written_after(&self) -> u64 {
        self.local_state().applied_index().max(self.inner.answered_through.load(Ordering::Acquire))
    }

    /// Runs this version's admission rules (admit.rs) and the same `apply`
    /// every replica will, on this node's state, before anything is
    /// proposed: a command they would all reject must not reach the log,
    /// where it would stay, copied to every member, until the log is
    /// compacted, with whatever it carried (such as a URL with a password in
    /// it). `apply` still decides: the state can change between this check
    /// and the commit.
    async fn precheck(&self, command: &Command, deadline: tokio::time::Instant) -> Result<(), ProposeError> {
        if let Some(op) = &command.0.op {
            admit(op)?;
        }
        // The index only stamps the entity's revision, which a dry run discards.
        // The state is shared, not copied: the dry run costs what the command touches.
        let Err(error) = apply(&self.local_state(), &command.0, 0) else { return Ok(()) };
        // Field rules do not depend on the state: no need to ask the leader.
        if matches!(error, ApplyError::InvalidArgument { .. }) {
            return Err(error.into());
        }
        // Missing or clashing entities do, and this node's view may be behind:
        // confirm on a state that includes every acknowledged write. Nothing
        // was proposed yet, so a failure here is the write's failure.
        let state = self.read_point(deadline).await.map_err(|e| match e {
            LeaderError::Failed(reason) => {
                RaftNodeError::Unavailable(format!("the write was not applied: {reason}")).into()
            }
            other => self.write_error(other),
        })?;
        apply(&state, &command.0, 0).map(|_| ()).map_err(ProposeError::from)
    }

    /// Proposes `command` when this node leads (also for a follower's
    /// forwarded write), or says who leads. With `leader`, only if this node
    /// is that leader in that term: the sender then knows in which term a
    /// copy could be in the log.
    pub(crate) async fn write_here(
        &self,
        command: Command,
        leader: Option<LeaderTerm>,
    ) -> Result<CommandResponse, WriteRejection> {
        let (responder, answer) = ProgressResponder::complete_only();
        let mut write = self.raft().write(command).responder(responder);
        if let Some(leader) = leader {
            write = write.with_leader(LeaderIdOf::<TypeConfig>::new_committed(leader.term, leader.node));
        }
        write.await.map_err(|fatal| WriteRejection::Failed(fatal.to_string()))?;
        match answer.await {
            Ok(result) => result.map(|r| r.data).map_err(|e| rejection(RaftError::APIError(e))),
            Err(_) => Err(WriteRejection::Failed("raft stopped before answering".into())),
        }
    }

    /// The leader this node follows (or is), its term and its address.
    pub(crate) fn known_leader(&self) -> Option<(LeaderTerm, String)> {
        let metrics = self.raft().metrics();
        let m = metrics.borrow_watched();
        if !m.vote.committed {
            return None;
        }
        let leader = LeaderTerm { term: m.vote.leader_id.term, node: m.vote.leader_id.node_id };
        let addr = m.membership_config.membership().get_node(&leader.node)?.addr.clone();
        Some((leader, addr))
    }

    pub(crate) fn outcomes(&self) -> &Outcomes {
        &self.inner.outcomes
    }

    /// Completes when this node no longer believes `leader` leads (a vote
    /// for a candidate, a new leader, shutdown): a request forwarded to it
    /// and not received yet can then go to the next leader.
    pub(crate) async fn leader_changed_from(&self, leader: u64) {
        // Server metrics change with the role, the leader or the membership
        // only, not with every log entry as the full metrics do.
        let mut rx = self.raft().server_metrics();
        while rx.borrow_watched().current_leader == Some(leader) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
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
        self.read_point(tokio::time::Instant::now() + timeout).await.map_err(|e| match e {
            LeaderError::Deadline { last, .. } => RaftNodeError::Unavailable(format!(
                "no linearizable read point within {} s: {}. Use --stale to read this node's possibly outdated state",
                timeout.as_secs(),
                self.why_no_leader(last)
            )),
            other => RaftNodeError::Unavailable(format!(
                "no linearizable read point: {other}. Use --stale to read this node's possibly outdated state"
            )),
        })
    }

    async fn read_point(&self, deadline: tokio::time::Instant) -> Result<Arc<GatewayState>, LeaderError> {
        let index = via_leader(self, &leader::ReadIndex, deadline).await?;
        match tokio::time::timeout_at(deadline, self.wait_applied(index)).await {
            Ok(state) => state.map_err(|e| LeaderError::Failed(e.to_string())),
            Err(_) => Err(LeaderError::Deadline {
                last: Some(format!("this node has not applied up to the read point (index {index}) yet")),
                maybe_applied: false,
            }),
        }
    }

    /// The read index when this node is the leader.
    pub(crate) async fn local_read_index(&self) -> Result<u64, WriteRejection> {
        match self.raft().ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read) => Ok(read.log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(WriteRejection::NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) })
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
                let reach = Reach::of(&self.raft().metrics().borrow_watched(), &q.got);
                Err(WriteRejection::Failed(format!(
                    "node {} leads but cannot confirm it still does: {reach}. Writes and linearizable reads \
                     resume once a majority is reachable; meanwhile use a node on the majority side",
                    self.inner.node_id
                )))
            }
            Err(e) => Err(WriteRejection::Failed(e.to_string())),
        }
    }

    /// Why nothing was served by the deadline, in this node's own terms: a
    /// leader cut off from its majority names whom it reaches and whom not.
    fn why_no_leader(&self, last: Option<String>) -> String {
        if let Some(loss) = self.status().quorum_loss {
            return format!("this node (node {}) leads without a majority: {}", self.inner.node_id, loss.reach);
        }
        let last = last.map(|l| format!(" (last attempt: {l})")).unwrap_or_default();
        format!("this node cannot reach a leader with a majority (partition or lost quorum){last}")
    }

    /// A write's failure in words that say whether it took effect and what to do.
    fn write_error(&self, error: LeaderError) -> ProposeError {
        let secs = self.inner.write_timeout.as_secs();
        let message = match error {
            LeaderError::Deadline { last, maybe_applied: true } => format!(
                "the write was not confirmed within {secs} s, so it may or may not have been applied: {}. \
                 Check `tollgate ctl cluster status`, and read the change back before retrying it",
                self.why_no_leader(last)
            ),
            LeaderError::Deadline { last, maybe_applied: false } => format!(
                "the write was not applied (no leader took it within {secs} s): {}. Retry it once \
                 `tollgate ctl cluster status` shows a leader with a majority",
                self.why_no_leader(last)
            ),
            LeaderError::Unknown { leader, why } => format!(
                "{why}. Node {leader} failed or lost its leadership, and this node can no longer tell whether the \
                 write was committed, so it may or may not have been applied: read the change back before retrying it"
            ),
            LeaderError::Failed(reason) => format!("the leader could not commit the write: {reason}"),
        };
        RaftNodeError::Unavailable(message).into()
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
            quorum_loss: QuorumLoss::of(&m, self.inner.lease, now_ms()),
        }
    }

    pub(crate) fn peer_status(&self) -> PeerStatus {
        let s = self.status();
        PeerStatus {
            node_id: s.node_id,
            role: s.role_text(),
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

    /// Applies a membership change through the leader (and through a
    /// change of leader). Returns the log index.
    pub async fn change_membership(&self, op: MembershipOp) -> Result<u64, RaftNodeError> {
        // Checked here against this node's view for a typed answer, and
        // again by the leader against the current membership.
        if let MembershipOp::AddLearner { node_id, addr } = &op {
            self.learner_conflict(*node_id, addr).map_err(RaftNodeError::InvalidMembership)?;
        }
        let secs = self.inner.write_timeout.as_secs();
        let deadline = tokio::time::Instant::now() + self.inner.write_timeout;
        via_leader(self, &leader::Membership(&op), deadline).await.map_err(|e| match e {
            LeaderError::Failed(reason) => RaftNodeError::Raft(reason),
            LeaderError::Deadline { last, maybe_applied } => RaftNodeError::Unavailable(format!(
                "the membership change was not confirmed within {secs} s{}: {}. Check `tollgate ctl cluster status`",
                if maybe_applied { ", so it may or may not have been made" } else { " and was not made" },
                self.why_no_leader(last)
            )),
            unknown @ LeaderError::Unknown { .. } => RaftNodeError::Unavailable(format!(
                "{unknown}, so the membership change may or may not have been made. Check `tollgate ctl cluster status`"
            )),
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
            MembershipOp::AddLearner { node_id, addr } => {
                let _serial = self.inner.learner_lock.lock().await;
                self.learner_conflict(node_id, &addr).map_err(WriteRejection::Failed)?;
                raft.add_learner(node_id, BasicNode { addr }, false).await
            }
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
        self.learner_conflict(request.node_id, &request.addr)?;
        let tls = self.inner.tls.for_joiner(request.node_id).map_err(|e| e.to_string())?;
        self.change_membership(MembershipOp::AddLearner { node_id: request.node_id, addr: request.addr.clone() })
            .await
            .map_err(|e| e.to_string())?;
        Ok(tls)
    }

    /// Why node `node_id` cannot be added as a learner at `addr`, given the
    /// membership this node knows. Re-adding a member at its own address is fine.
    fn learner_conflict(&self, node_id: u64, addr: &str) -> Result<(), String> {
        let membership = self.raft().metrics().borrow_watched().membership_config.membership().clone();
        let mut members: Vec<(u64, String)> = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        // This node, under every address it answers at (normally also in the membership).
        members.push((self.inner.node_id, self.inner.advertise.clone()));
        if let Some(listen) = self.peer_listen_addr() {
            members.push((self.inner.node_id, listen.to_string()));
        }
        check_new_learner(members.iter().map(|(id, a)| (*id, a.as_str())), node_id, addr)
    }

    /// Stops serving peers and stops Raft. Applied state is already durable.
    pub async fn shutdown(&self) {
        self.inner.transport.close();
        if let Err(e) = self.raft().shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

/// Why node `node_id` cannot join at `addr` beside `members` (id, address).
/// Two members at one address would make the leader send Raft traffic to
/// itself (openraft panics on that, again at every restart), and one id at
/// two addresses would split what the cluster knows of that node.
pub(crate) fn check_new_learner<'a>(
    members: impl IntoIterator<Item = (u64, &'a str)>,
    node_id: u64,
    addr: &str,
) -> Result<(), String> {
    let members: Vec<(u64, &str)> = members.into_iter().collect();
    if let Some((_, existing)) = members.iter().find(|(id, a)| *id == node_id && !same_address(a, addr)) {
        return Err(format!(
            "node id {node_id} is already a member at {existing}; remove it first or pick another --node-id"
        ));
    }
    if let Some((other, _)) = members.iter().find(|(id, a)| *id != node_id && same_address(a, addr)) {
        return Err(format!(
            "node {other} already uses address {addr}; give the joining node its own --cluster-listen/--cluster-advertise"
        ));
    }
    Ok(())
}

/// Whether two peer addresses name the same endpoint: equal as socket
/// addresses (`[::1]:7000` vs `[0:0:0:0:0:0:0:1]:7000`), or as host:port text.
fn same_address(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod learner_tests {
    use super::check_new_learner;

    const MEMBERS: [(u64, &str); 2] = [(1, "10.0.0.1:7000"), (2, "10.0.0.2:7000")];

    #[test]
    fn a_new_learner_needs_an_address_and_id_of_its_own() {
        assert!(check_new_learner(MEMBERS, 3, "10.0.0.3:7000").is_ok());
        // Re-joining with the same id and address is idempotent.
        assert!(check_new_learner(MEMBERS, 2, "10.0.0.2:7000").is_ok());
        let err = check_new_learner(MEMBERS, 3, "10.0.0.1:7000").unwrap_err();
        assert!(err.contains("node 1 already uses address 10.0.0.1:7000"), "{err}");
        assert!(err.contains("--cluster-listen/--cluster-advertise"), "{err}");
        let err = check_new_learner(MEMBERS, 2, "10.0.0.9:7000").unwrap_err();
        assert!(err.contains("node id 2 is already a member at 10.0.0.2:7000"), "{err}");
        // One endpoint written two ways is still one endpoint.
        let v6 = [(1, "[::1]:7000")];
        assert!(check_new_learner(v6, 3, "[0:0:0:0:0:0:0:1]:7000").is_err());
        let named = [(1, "Node-A.example:7000")];
        assert!(check_new_learner(named, 3, "node-a.example:7000").is_err());
        assert!(check_new_learner(named, 3, "node-a.example:7001").is_ok());
    }
}
