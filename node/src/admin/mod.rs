//! The admin gRPC server: AdminService (and the Cluster, Ai and Usage
//! services) behind a bearer-token check, plus
//! server reflection (v1 and v1alpha) and the standard health service (both
//! open, so probes and tooling work without the token). The token check is
//! one interceptor per gRPC service ([`RequireToken`]), so every RPC of
//! AdminService, the generic entity RPCs (`entities.rs`) included, needs it.

mod ai;
mod cluster;
mod entities;
mod propose;
mod service;
mod status;
pub mod token;
mod usage;

use std::future::Future;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tollgate_proto::admin::v1::admin_service_server::AdminServiceServer;
use tollgate_proto::admin::v1::ai_service_server::AiServiceServer;
use tollgate_proto::admin::v1::cluster_service_server::ClusterServiceServer;
use tollgate_proto::admin::v1::usage_service_server::UsageServiceServer;
use tollgate_raft::RaftNode;
use tonic::service::Interceptor;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

use crate::proxy::ProxyContext;
use crate::usage::UsageLedger;

/// What the AI admin service needs beyond the Raft node.
pub struct AiAdminParts {
    pub secrets: tollgate_raft::secrets::SecretBox,
    pub ledger: Arc<UsageLedger>,
}

#[derive(Clone)]
pub struct RequireToken {
    expected: Arc<str>,
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing admin token: send `authorization: Bearer <token>` (see <data-dir>/admin-token)",
                )
            })?;
        if presented.as_bytes().ct_eq(self.expected.as_bytes()).into() {
            Ok(request)
        } else {
            Err(Status::unauthenticated("the admin token is not valid"))
        }
    }
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
    let require_token = RequireToken { expected: Arc::from(token) };
    let cluster = ClusterServiceServer::with_interceptor(cluster::Cluster::new(raft.clone()), require_token.clone());
    let usage =
        UsageServiceServer::with_interceptor(usage::Usage::new(raft.clone(), ai.ledger.clone()), require_token.clone());
    let ai = AiServiceServer::with_interceptor(
        ai::Ai::new(raft.clone(), proxy.clone(), ai.secrets, ai.ledger),
        require_token.clone(),
    );
    let admin = AdminServiceServer::with_interceptor(service::Admin::new(raft, proxy), require_token);
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(cluster)
        .add_service(ai)
        .add_service(usage)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}
