//! The peer network of a single-node cluster: there are no peers, so every
//! RPC reports the target unreachable. The QUIC transport replaces this when
//! nodes join (DESIGN §4).

use std::fs::File;
use std::future::Future;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{AnyError, BasicNode, OptionalSend};

use crate::types::TypeConfig;

#[derive(Debug, Clone, Default)]
pub struct NoPeers;

fn unreachable(target: &str) -> Unreachable<TypeConfig> {
    Unreachable::new(&AnyError::error(format!(
        "no peer transport: this node runs as a single-node cluster and cannot reach {target}"
    )))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> NoPeerClient {
        NoPeerClient { target: format!("node {target} at {}", node.addr) }
    }
}

pub struct NoPeerClient {
    target: String,
}

impl RaftNetworkV2<TypeConfig> for NoPeerClient {
    type SnapshotData = File;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(&self.target)))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(&self.target)))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<TypeConfig>,
        _snapshot: SnapshotOf<TypeConfig, File>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable(&self.target)))
    }
}
