//! What every admin write and read does, for each admin service: propose a
//! command and return once it is live in this node's proxy; read the state
//! linearizably unless the caller accepts this node's view.

use std::sync::Arc;

use prost::Message;
use tollgate_proto::admin::v1::DeleteResponse;
use tollgate_proto::raft::v1::command::Op;
use tollgate_raft::{Applied, Command, GatewayState, RaftNode};
use tonic::{Response, Status};

use super::access::Caller;
use super::status;
use crate::proxy::ProxyContext;

/// Proposes `op` for the RPC's caller (who it is, its role and team go in
/// the command, for `apply`'s checks and the audit trail) and returns once
/// this node's proxy serves its result. A change the caller's team may not
/// make is refused by `apply`, and the attempt audited.
pub(super) async fn commit(raft: &RaftNode, proxy: &ProxyContext, op: Op) -> Result<Applied, Status> {
    let caller = Caller::current()?;
    let mut command = Command::new(op, crate::clock::unix_ms(), "");
    caller.stamp(&mut command);
    let summary = command.summary();
    let applied = raft.propose(command).await.map_err(status::from_propose).inspect_err(|status| {
        if status.code() == tonic::Code::PermissionDenied {
            caller.record_denied(&summary, status.message());
        }
    })?;
    proxy.wait_served(applied.revision).await;
    Ok(applied)
}

/// Proposes `op` and returns the entity it created or updated.
pub(super) async fn write<T: Message + Default>(raft: &RaftNode, proxy: &ProxyContext, op: Op) -> Result<T, Status> {
    entity_of(commit(raft, proxy, op).await?)
}

/// The entity a command created or updated, as `apply` returned it.
pub(super) fn entity_of<T: Message + Default>(applied: Applied) -> Result<T, Status> {
    let bytes = applied.entity.ok_or_else(|| Status::internal("the state machine returned no entity"))?;
    T::decode(bytes.as_slice()).map_err(|e| Status::internal(format!("cannot decode applied entity: {e}")))
}

pub(super) async fn delete(raft: &RaftNode, proxy: &ProxyContext, op: Op) -> Result<Response<DeleteResponse>, Status> {
    let applied = commit(raft, proxy, op).await?;
    Ok(Response::new(DeleteResponse { revision: applied.revision }))
}

/// Linearizable unless the caller asked for this node's possibly stale view.
pub(super) async fn read(raft: &RaftNode, stale: bool) -> Result<Arc<GatewayState>, Status> {
    if stale { Ok(raft.local_state()) } else { raft.linearizable_state().await.map_err(status::from_node) }
}

/// Waits until every member that answers serves `revision`, for at most
/// `within` in all: for approvals and revocations, so that once the call
/// returns, the first request to any node sees the change. A member that
/// does not answer is cut off from the cluster and cannot learn of the
/// change until it rejoins; it is logged, not waited for, as is a member
/// still behind when the time is up.
pub(crate) async fn wait_members_served(raft: &RaftNode, revision: u64, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        let Ok(members) = tokio::time::timeout_at(deadline, raft.cluster_status()).await else {
            tracing::warn!(revision, "members did not all report serving the change in time");
            return;
        };
        let behind: Vec<u64> = members
            .iter()
            .filter(|m| m.report.as_ref().is_ok_and(|r| r.data_plane_index < revision))
            .map(|m| m.node_id)
            .collect();
        if behind.is_empty() {
            let unreachable: Vec<u64> = members.iter().filter(|m| m.report.is_err()).map(|m| m.node_id).collect();
            if !unreachable.is_empty() {
                tracing::warn!(
                    revision,
                    ?unreachable,
                    "members that did not answer serve the change only once they rejoin"
                );
            }
            return;
        }
        if tokio::time::Instant::now() + pause >= deadline {
            tracing::warn!(revision, ?behind, "members still behind the change when the call returned");
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
}
