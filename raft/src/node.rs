//! A running Raft member: storage, state machine and openraft wired together,
//! with the calls the admin API needs (propose, linearizable read, status).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tollgate_storage::Engine;

use crate::error::{ApplyError, RaftNodeError};
use crate::log_store::LogStore;
use crate::network::NoPeers;
use crate::state::GatewayState;
use crate::state_machine::StateMachine;
use crate::types::{Applied, Command, Raft};

#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub node_id: u64,
    /// Where peers reach this node (recorded in the membership).
    pub advertise_addr: String,
    pub snapshot_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot, so slightly lagging followers
    /// catch up from the log instead of a whole snapshot.
    pub logs_kept_after_snapshot: u64,
}

impl RaftConfig {
    pub fn new(node_id: u64, advertise_addr: impl Into<String>, snapshot_dir: PathBuf) -> RaftConfig {
        RaftConfig {
            node_id,
            advertise_addr: advertise_addr.into(),
            snapshot_dir,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
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
    /// Committed, and every replica rejected it the same way.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    #[error(transparent)]
    Node(#[from] RaftNodeError),
}

#[derive(Clone)]
pub struct RaftNode {
    raft: Raft,
    node_id: u64,
    state: watch::Receiver<Arc<GatewayState>>,
}

impl RaftNode {
    /// Opens the log and state machine in `engine` and starts Raft. A fresh
    /// data directory bootstraps a single-node cluster; an existing one
    /// resumes where it stopped.
    pub async fn start(engine: Engine, config: RaftConfig) -> Result<RaftNode, RaftNodeError> {
        let raft_config = Config {
            cluster_name: "tollgate".into(),
            heartbeat_interval: millis(config.heartbeat_interval),
            election_timeout_min: millis(config.election_timeout_min),
            election_timeout_max: millis(config.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_logs),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| RaftNodeError::Config(e.to_string()))?);
        let (state_machine, state) = StateMachine::open(engine.clone(), config.snapshot_dir.clone())?;
        let raft = Raft::new(config.node_id, raft_config, NoPeers, LogStore::new(engine), state_machine)
            .await
            .map_err(|e| RaftNodeError::Fatal(e.to_string()))?;

        let initialized = raft.is_initialized().await.map_err(|e| RaftNodeError::Fatal(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(config.node_id, BasicNode { addr: config.advertise_addr.clone() })]);
            raft.initialize(members).await.map_err(|e| RaftNodeError::Raft(e.to_string()))?;
            tracing::info!(node_id = config.node_id, "bootstrapped a new single-node cluster");
        }
        Ok(RaftNode { raft, node_id: config.node_id, state })
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Waits until some node is leader (this one, for a single-node cluster).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, RaftNodeError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .map_err(|e| RaftNodeError::Raft(e.to_string()))?;
        metrics.current_leader.ok_or_else(|| RaftNodeError::Raft("no leader".into()))
    }

    /// Replicates `command`, waits until it is applied here, and returns what it did.
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data.0?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(RaftNodeError::NotLeader { leader: f.leader_id }.into())
            }
            Err(e) => Err(RaftNodeError::Raft(e.to_string()).into()),
        }
    }

    /// The latest applied state, without any consensus round: what the data
    /// plane serves, possibly behind the leader.
    pub fn local_state(&self) -> Arc<GatewayState> {
        self.state.borrow().clone()
    }

    /// A state that reflects every write acknowledged before this call started
    /// (Raft read-index), once this node has applied up to that point.
    pub async fn linearizable_state(&self) -> Result<Arc<GatewayState>, RaftNodeError> {
        let read = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map_err(|e| match e {
            RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => {
                RaftNodeError::NotLeader { leader: f.leader_id }
            }
            RaftError::APIError(other) => RaftNodeError::Raft(other.to_string()),
            RaftError::Fatal(f) => RaftNodeError::Fatal(f.to_string()),
        })?;
        let wanted = read.log_id().index();
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| s.applied_index() >= wanted)
            .await
            .map_err(|_| RaftNodeError::Fatal("state machine stopped".into()))?;
        Ok(state.clone())
    }

    /// Notified after every applied batch with the new state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<GatewayState>> {
        self.state.clone()
    }

    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        NodeStatus {
            node_id: self.node_id,
            role,
            current_term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.cluster_committed.as_ref().or(m.local_committed.as_ref()).map_or(0, |l| l.index()),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index()),
        }
    }

    /// Stops Raft. In-flight proposals fail; applied state is already durable.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
