//! openraft's network over the QUIC transport.

use std::fs::File;
use std::future::Future;
use std::sync::Arc;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};

use super::endpoint::{Transport, TransportError};
use super::wire::{PeerRequest, PeerResponse};
use crate::types::TypeConfig;

#[derive(Clone)]
pub struct PeerNetwork {
    transport: Arc<Transport>,
}

impl PeerNetwork {
    pub fn new(transport: Arc<Transport>) -> PeerNetwork {
        PeerNetwork { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient { transport: self.transport.clone(), target, addr: node.addr.clone() }
    }
}

pub struct PeerClient {
    transport: Arc<Transport>,
    target: u64,
    addr: String,
}

fn rpc_error(error: TransportError) -> RPCError<TypeConfig> {
    match error {
        TransportError::Unreachable { .. } | TransportError::Resolve(_) | TransportError::Timeout { .. } => {
            RPCError::Unreachable(Unreachable::new(&error))
        }
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

fn unexpected(target: u64, response: &PeerResponse) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!(
        "node {target} answered with an unexpected message: {response:?}"
    )))
}

impl PeerClient {
    async fn call(&self, request: PeerRequest, option: &RPCOption) -> Result<PeerResponse, RPCError<TypeConfig>> {
        self.transport.call(&self.addr, &request, option.hard_ttl()).await.map_err(rpc_error)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::AppendEntries(rpc), &option).await? {
            PeerResponse::AppendEntries(Ok(r)) => Ok(r),
            PeerResponse::AppendEntries(Err(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::Vote(rpc), &option).await? {
            PeerResponse::Vote(Ok(r)) => Ok(r),
            PeerResponse::Vote(Err(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::PreVote(rpc), &option).await? {
            PeerResponse::Vote(Ok(r)) => Ok(r),
            PeerResponse::Vote(Err(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::TransferLeader(req), &option).await? {
            PeerResponse::TransferLeader(Ok(r)) => Ok(r),
            PeerResponse::TransferLeader(Err(e)) => Err(RPCError::Network(NetworkError::from_string(e))),
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, File>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let size = snapshot.snapshot.metadata().map_err(|e| StreamingError::Network(NetworkError::new(&e)))?.len();
        let header = PeerRequest::Snapshot { vote, meta: snapshot.meta, size };
        let file = tokio::fs::File::from_std(snapshot.snapshot);
        // A snapshot may take long on a slow link: allow a generous multiple of the RPC timeout.
        let timeout = option.hard_ttl().max(std::time::Duration::from_secs(60));
        let send = self.transport.send_snapshot(&self.addr, &header, file, timeout);
        tokio::pin!(cancel);
        let response = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            response = send => response,
        };
        match response {
            Ok(PeerResponse::Snapshot(Ok(r))) => Ok(r),
            Ok(PeerResponse::Snapshot(Err(e))) => Err(StreamingError::Network(NetworkError::from_string(e))),
            Ok(other) => Err(StreamingError::Network(NetworkError::from_string(format!(
                "node {} answered a snapshot with {other:?}",
                self.target
            )))),
            Err(e @ (TransportError::Unreachable { .. } | TransportError::Timeout { .. })) => {
                Err(StreamingError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }
}
