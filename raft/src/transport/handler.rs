//! The serving side of the peer protocol: accept connections, check what
//! each may do, and answer its requests from the local Raft node.

use std::sync::Arc;

use openraft::alias::SnapshotOf;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::vote::RaftLeaderId;
use tokio::io::AsyncWriteExt;

use super::endpoint::Transport;
use super::tls::{ALPN_JOIN, ALPN_RAFT};
use super::wire::{self, JoinRequest, JoinResponse, PeerRequest, PeerResponse, WriteRejection};
use crate::node::RaftNode;
use crate::types::TypeConfig;

/// Accepts peer connections until the endpoint is closed.
pub(crate) async fn serve(transport: Arc<Transport>, node: RaftNode) {
    while let Some(incoming) = transport.endpoint().accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::debug!(%error, "peer handshake failed");
                    return;
                }
            };
            let alpn = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol);
            let authenticated = conn.peer_identity().is_some();
            match alpn.as_deref() {
                Some(p) if p == ALPN_RAFT && authenticated => serve_peer(conn, node).await,
                Some(p) if p == ALPN_JOIN => serve_join(conn, node).await,
                _ => {
                    tracing::warn!(remote = %conn.remote_address(), "refused a peer without a cluster certificate");
                    conn.close(1u32.into(), b"a certificate signed by the cluster CA is required");
                }
            }
        });
    }
}

async fn serve_peer(conn: quinn::Connection, node: RaftNode) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(send, recv, node).await {
                tracing::debug!(%error, "peer request failed");
            }
        });
    }
}

async fn answer(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    node: RaftNode,
) -> Result<(), wire::WireError> {
    let response = match wire::read_frame::<PeerRequest>(&mut recv).await {
        Ok(request) => dispatch(request, &mut recv, &node).await,
        Err(error) => PeerResponse::Refused(error.to_string()),
    };
    wire::write_frame(&mut send, &response).await?;
    let _ = send.finish();
    // Wait until the peer has read the answer before the stream is dropped.
    let _ = send.stopped().await;
    Ok(())
}

pub(crate) fn rejection(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> WriteRejection {
    match error {
        // Refused before it reached the log: safe to send to the leader named.
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            WriteRejection::NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) }
        }
        // In the log, then this node lost its leadership: the next leader
        // may still commit it, so it must not be sent again blindly.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => WriteRejection::Unknown(format!(
            "the leader lost its leadership before the change was committed{}",
            f.leader_id.map(|l| format!(" (node {l} leads now)")).unwrap_or_default()
        )),
        other => WriteRejection::Failed(other.to_string()),
    }
}

async fn dispatch(request: PeerRequest, recv: &mut quinn::RecvStream, node: &RaftNode) -> PeerResponse {
    if let Some(refusal) = refuse_own_traffic(&request, node.node_id()) {
        return refusal;
    }
    let raft = node.raft();
    match request {
        PeerRequest::AppendEntries(rpc) => PeerResponse::AppendEntries(raft.append_entries(rpc).await),
        PeerRequest::Vote(rpc) => PeerResponse::Vote(raft.vote(rpc).await),
        PeerRequest::PreVote(rpc) => PeerResponse::Vote(raft.pre_vote(rpc).await),
        PeerRequest::TransferLeader(req) => {
            PeerResponse::TransferLeader(raft.handle_transfer_leader(req).await.map_err(|e| e.to_string()))
        }
        PeerRequest::Snapshot { vote, meta, size } => {
            PeerResponse::Snapshot(receive_snapshot(node, vote, meta, size, recv).await)
        }
        PeerRequest::WriteAt { command, leader } => PeerResponse::Write(node.write_here(*command, Some(leader)).await),
        // From a node of the previous version, which does not know `Unknown`.
        PeerRequest::Write(command) => {
            PeerResponse::Write(node.write_here(*command, None).await.map_err(|e| match e {
                WriteRejection::Unknown(why) => {
                    WriteRejection::Failed(format!("{why}, so it may or may not have been applied; read it back"))
                }
                other => other,
            }))
        }
        PeerRequest::ReadIndex => PeerResponse::ReadIndex(node.local_read_index().await),
        PeerRequest::Membership(op) => PeerResponse::Membership(node.change_membership_here(op).await),
        PeerRequest::Status => PeerResponse::Status(node.peer_status()),
    }
}

/// A node never sends Raft messages to itself: one that carries this node's
/// own id as leader or candidate came back through another member listed at
/// this node's address. openraft would panic on it (a leader made to follow
/// itself), so it is refused; replication to that member just fails until
/// it is removed.
fn refuse_own_traffic(request: &PeerRequest, own_id: u64) -> Option<PeerResponse> {
    let sender = match request {
        PeerRequest::AppendEntries(rpc) => rpc.vote.leader_id().node_id(),
        PeerRequest::Vote(rpc) | PeerRequest::PreVote(rpc) => rpc.vote.leader_id().node_id(),
        PeerRequest::Snapshot { vote, .. } => vote.leader_id().node_id(),
        _ => return None,
    };
    (*sender == own_id).then(|| {
        tracing::warn!(
            node_id = own_id,
            "received Raft traffic from this node itself: another member is listed at this node's address; \
             remove it with `tollgate ctl cluster remove <id>`"
        );
        PeerResponse::Refused(format!(
            "node {own_id} was sent its own Raft traffic: a member shares its address; remove that member"
        ))
    })
}

/// Streams the snapshot into a file beside the others, then installs it.
async fn receive_snapshot(
    node: &RaftNode,
    vote: openraft::alias::VoteOf<TypeConfig>,
    meta: openraft::alias::SnapshotMetaOf<TypeConfig>,
    size: u64,
    recv: &mut quinn::RecvStream,
) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, String> {
    let dir = node.snapshot_dir().to_path_buf();
    tollgate_storage::private::private_dir(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(format!("incoming-{}.part", rand::random::<u64>()));
    let result = async {
        // The incoming snapshot is the whole gateway state: 0600 like the rest.
        let file = tollgate_storage::private::private_file_options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        let mut file = tokio::fs::File::from_std(file);
        let mut received = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while received < size {
            match recv.read(&mut buf).await.map_err(|e| e.to_string())? {
                Some(n) => {
                    file.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
                    received += n as u64;
                }
                None => break,
            }
        }
        if received != size {
            return Err(format!("snapshot stream ended after {received} of {size} bytes"));
        }
        file.sync_all().await.map_err(|e| e.to_string())?;
        let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        node.raft()
            .install_full_snapshot(vote, SnapshotOf::<TypeConfig, std::fs::File> { meta, snapshot: file })
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    result
}

async fn serve_join(conn: quinn::Connection, node: RaftNode) {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let response = match wire::read_frame::<JoinRequest>(&mut recv).await {
        Ok(request) => match node.admit(&request).await {
            Ok(tls) => {
                tracing::info!(node_id = request.node_id, addr = %request.addr, "admitted a new node as learner");
                JoinResponse::Accepted(tls)
            }
            Err(reason) => {
                tracing::warn!(node_id = request.node_id, %reason, "refused a join request");
                JoinResponse::Refused(reason)
            }
        },
        Err(error) => JoinResponse::Refused(error.to_string()),
    };
    if wire::write_frame(&mut send, &response).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}
