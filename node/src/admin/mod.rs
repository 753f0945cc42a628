//! The admin gRPC server: AdminService (and the Cluster, Ai, Usage and
//! Governance services) behind one access layer (`access.rs`: the bearer
//! token names an admin identity, and every RPC's rule says which roles may
//! call it), plus server reflection (v1 and v1alpha) and the standard health
//! service (both open, so probes and tooling work without a token).

pub mod access;
mod ai;
mod cluster;
pub mod declarative;
mod entities;
pub mod governance;
pub(crate) mod propose;
pub mod schema;
mod service;
pub(crate) mod status;
pub mod token;
mod usage;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tollgate_proto::admin::v1::admin_service_server::AdminServiceServer;
use tollgate_proto::admin::v1::ai_service_server::AiServiceServer;
use tollgate_proto::admin::v1::cluster_service_server::ClusterServiceServer;
use tollgate_proto::admin::v1::governance_service_server::GovernanceServiceServer;
use tollgate_proto::admin::v1::usage_service_server::UsageServiceServer;
use tollgate_raft::RaftNode;
use tonic::transport::server::TcpIncoming;

use crate::proxy::ProxyContext;
use crate::usage::UsageLedger;

/// What the AI admin service needs beyond the Raft node.
pub struct AiAdminParts {
    pub secrets: tollgate_raft::secrets::SecretBox,
    pub ledger: Arc<UsageLedger>,
}

pub async fn serve(
    listener: TcpListener,
    raft: RaftNode,
    proxy: Arc<ProxyContext>,
    token: &str,
    ai: AiAdminParts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AdminServiceServer<service::Admin>>().await;
    // v1, and v1alpha beside it: grpcio-reflection (Python), Postman and
    // older grpcurl speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tollgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("descriptor sets compiled into the binary are valid");
    let reflection_v1alpha = reflection().build_v1alpha().expect("descriptor sets compiled into the binary are valid");
    let access = access::Access::new(token, raft.clone());
    let cluster = ClusterServiceServer::new(cluster::Cluster::new(raft.clone()));
    let usage = UsageServiceServer::new(usage::Usage::new(raft.clone(), ai.ledger.clone()));
    let governance =
        GovernanceServiceServer::new(governance::Governance::new(raft.clone(), proxy.clone(), ai.secrets.clone()));
    let ai = AiServiceServer::new(ai::Ai::new(raft.clone(), proxy.clone(), ai.secrets, ai.ledger));
    let admin = AdminServiceServer::new(service::Admin::new(raft, proxy));
    tonic::transport::Server::builder()
        .layer(access::AccessLayer(access))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(cluster)
        .add_service(ai)
        .add_service(usage)
        .add_service(governance)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}
