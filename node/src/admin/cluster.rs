//! `tollgate.admin.v1.ClusterService`: membership and cluster health.

use std::time::Duration;

use tollgate_proto::admin::v1::cluster_service_server::ClusterService;
use tollgate_proto::admin::v1::*;
use tollgate_raft::RaftNode;
use tollgate_raft::transport::MembershipOp;
use tonic::{Request, Response, Status};

use super::status;

pub struct Cluster {
    raft: RaftNode,
}

impl Cluster {
    pub fn new(raft: RaftNode) -> Cluster {
        Cluster { raft }
    }

    async fn change(&self, op: MembershipOp) -> Result<Response<MembershipResponse>, Status> {
        let index = self.raft.change_membership(op).await.map_err(status::from_node)?;
        Ok(Response::new(MembershipResponse { index }))
    }
}

fn node_id(request: Request<NodeRequest>) -> Result<u64, Status> {
    match request.into_inner().node_id {
        0 => Err(Status::invalid_argument("node_id is required (node ids start at 1)")),
        id => Ok(id),
    }
}

#[tonic::async_trait]
impl ClusterService for Cluster {
    async fn get_cluster_status(&self, _: Request<GetClusterStatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        let own = self.raft.status();
        let members = self.raft.cluster_status().await;
        let highest_applied =
            members.iter().filter_map(|m| m.report.as_ref().ok()).map(|r| r.applied_index).max().unwrap_or(0);
        let members = members
            .into_iter()
            .map(|m| {
                let (reachable, error, status, admin_addr, proxy_addr, lag) = match m.report {
                    Ok(r) => (
                        true,
                        String::new(),
                        Some(tollgate_proto::admin::v1::NodeStatus {
                            node_id: r.node_id,
                            role: r.role,
                            current_term: r.current_term,
                            leader_id: r.leader_id,
                            last_log_index: r.last_log_index,
                            committed_index: r.committed_index,
                            applied_index: r.applied_index,
                            data_plane_index: r.data_plane_index,
                            version: String::new(),
                        }),
                        r.admin_addr,
                        r.proxy_addr,
                        highest_applied.saturating_sub(r.applied_index),
                    ),
                    Err(e) => (false, e, None, String::new(), String::new(), 0),
                };
                Member {
                    node_id: m.node_id,
                    peer_addr: m.addr,
                    voter: m.voter,
                    reachable,
                    error,
                    status,
                    admin_addr,
                    proxy_addr,
                    lag,
                }
            })
            .collect();
        Ok(Response::new(ClusterStatus { leader_id: own.leader_id, current_term: own.current_term, members }))
    }

    async fn add_learner(&self, request: Request<AddLearnerRequest>) -> Result<Response<MembershipResponse>, Status> {
        let r = request.into_inner();
        if r.node_id == 0 || r.peer_addr.is_empty() {
            return Err(Status::invalid_argument("node_id and peer_addr are required"));
        }
        self.change(MembershipOp::AddLearner { node_id: r.node_id, addr: r.peer_addr }).await
    }

    async fn promote_voter(&self, request: Request<NodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        self.change(MembershipOp::Promote { node_id: node_id(request)? }).await
    }

    async fn remove_node(&self, request: Request<NodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        self.change(MembershipOp::Remove { node_id: node_id(request)? }).await
    }

    async fn transfer_leader(&self, request: Request<NodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        self.change(MembershipOp::TransferLeader { to: node_id(request)? }).await
    }

    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let ttl = match request.into_inner().ttl_seconds {
            0 => Duration::from_secs(24 * 3600),
            s => Duration::from_secs(s),
        };
        let actor = super::access::Caller::current()?.name;
        let token = self.raft.create_join_token(ttl, &actor).await.map_err(status::from_propose)?;
        let now = crate::clock::unix_ms();
        Ok(Response::new(CreateJoinTokenResponse { token, expires_at_ms: now + ttl.as_millis() as i64 }))
    }

    async fn list_join_tokens(
        &self,
        _: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        let state = self.raft.linearizable_state().await.map_err(status::from_node)?;
        let tokens = state
            .join_tokens()
            .map(|t| tollgate_proto::config::v1::JoinToken { secret_sha256: Vec::new(), ..t.as_ref().clone() })
            .collect();
        Ok(Response::new(ListJoinTokensResponse { tokens }))
    }

    async fn revoke_join_token(&self, request: Request<NodeTokenRequest>) -> Result<Response<DeleteResponse>, Status> {
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("the token id is required; see `tollgate ctl cluster tokens`"));
        }
        let actor = super::access::Caller::current()?.name;
        let revision = self.raft.revoke_join_token(&id, &actor).await.map_err(status::from_propose)?;
        Ok(Response::new(DeleteResponse { revision }))
    }
}
