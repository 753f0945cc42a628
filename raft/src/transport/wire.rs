//! Peer messages and their framing. One request and one response per QUIC
//! bidirectional stream: `[version u8][length u32 LE][postcard body]`; a
//! snapshot's bytes follow its request frame on the same stream. The version
//! byte lets a future node refuse (rather than misread) a message it does not know.

use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::errors::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::pki::ClusterTls;
use crate::types::{Command, CommandResponse, TypeConfig};

pub const WIRE_VERSION: u8 = 1;
/// Largest non-snapshot message; append batches are bounded well below this.
pub const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Followed on the stream by exactly `size` bytes of snapshot file.
    Snapshot {
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
        size: u64,
    },
    /// An admin write received by a follower, forwarded to the leader.
    Write(Box<Command>),
    /// A follower asks the leader for a linearizable read point.
    ReadIndex,
    /// A membership change, executed by the leader.
    Membership(MembershipOp),
    /// This node's view of itself, for cluster status.
    Status,
    /// A forwarded write that only `leader` may append, and only in its
    /// term: if no answer comes, the sender knows in which term a copy could
    /// be in the log, so it can find out whether it committed instead of
    /// sending it twice. (After the others: nodes of the previous version
    /// refuse it, and are sent `Write`.)
    WriteAt {
        command: Box<Command>,
        leader: LeaderTerm,
    },
}

/// A leader and its term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderTerm {
    pub term: u64,
    pub node: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipOp {
    AddLearner { node_id: u64, addr: String },
    Promote { node_id: u64 },
    Remove { node_id: u64 },
    TransferLeader { to: u64 },
}

/// A failure the remote side reports in words (its typed error does not
/// always cross the wire, and the caller only needs to relay it).
pub type Remote<T> = Result<T, String>;

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>),
    Vote(Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>),
    TransferLeader(Remote<TransferLeaderResponse<TypeConfig>>),
    Snapshot(Remote<SnapshotResponse<TypeConfig>>),
    Write(Result<CommandResponse, WriteRejection>),
    ReadIndex(Result<u64, WriteRejection>),
    Membership(Result<u64, WriteRejection>),
    Status(PeerStatus),
    /// The request could not be decoded or is not allowed here.
    Refused(String),
}

/// Why a forwarded write or read was not served by the node asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteRejection {
    /// That node is not the leader either; here is who it believes is.
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    Failed(String),
    /// It reached the leader's log, then the leader lost its leadership
    /// before committing it: the next leader may still commit it. (Only in
    /// answer to `WriteAt`: nodes of the previous version do not know it.)
    Unknown(String),
}

/// One node's report of itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: u64,
    pub role: String,
    pub current_term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub data_plane_index: u64,
    pub admin_addr: String,
    pub proxy_addr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub node_id: u64,
    /// Where the cluster should reach the new node.
    pub addr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum JoinResponse {
    Accepted(ClusterTls),
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer stream failed: {0}")]
    Stream(String),
    #[error("peer speaks wire version {0}, this node speaks {WIRE_VERSION}; upgrade the older node")]
    Version(u8),
    #[error("peer message of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed peer message: {0}")]
    Decode(String),
}

pub async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, value: &T) -> Result<(), WireError> {
    let body = postcard::to_stdvec(value).map_err(|e| WireError::Decode(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(WIRE_VERSION);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    send.write_all(&frame).await.map_err(|e| WireError::Stream(e.to_string()))
}

pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, WireError> {
    let mut header = [0u8; 5];
    recv.read_exact(&mut header).await.map_err(|e| WireError::Stream(e.to_string()))?;
    if header[0] != WIRE_VERSION {
        return Err(WireError::Version(header[0]));
    }
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| WireError::Stream(e.to_string()))?;
    postcard::from_bytes(&body).map_err(|e| WireError::Decode(e.to_string()))
}
