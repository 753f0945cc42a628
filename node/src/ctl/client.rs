//! Connecting to the admin API with the bearer token attached to every call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_proto::admin::v1::admin_service_client::AdminServiceClient;
use tollgate_proto::admin::v1::cluster_service_client::ClusterServiceClient;
use tollgate_proto::admin::v1::usage_service_client::UsageServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::CtlError;

pub type Admin = AdminServiceClient<InterceptedService<Channel, BearerToken>>;
pub type Cluster = ClusterServiceClient<InterceptedService<Channel, BearerToken>>;

#[derive(Clone)]
pub struct BearerToken(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The token from the flag/env, else from the local node's data directory.
pub fn resolve_token(explicit: Option<&str>, data_dir: &Path) -> Result<String, CtlError> {
    if let Some(token) = explicit {
        return Ok(token.to_string());
    }
    let path: PathBuf = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_string()),
        _ => Err(CtlError::Usage(format!(
            "no admin token: pass --token or set TOLLGATE_ADMIN_TOKEN (a local node keeps it in {})",
            path.display()
        ))),
    }
}

pub async fn connect(
    endpoint: &str,
    token: &str,
    timeout: Duration,
) -> Result<(Admin, Cluster, super::ai::AiClient), CtlError> {
    let (channel, bearer) = channel(endpoint, token, timeout).await?;
    Ok((
        AdminServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        ClusterServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        tollgate_proto::admin::v1::ai_service_client::AiServiceClient::with_interceptor(channel, bearer),
    ))
}

pub type Usage = UsageServiceClient<InterceptedService<Channel, BearerToken>>;
pub type Governance = tollgate_proto::admin::v1::governance_service_client::GovernanceServiceClient<
    InterceptedService<Channel, BearerToken>,
>;

/// The governance service of the node at `endpoint`.
pub async fn connect_governance(endpoint: &str, token: &str, timeout: Duration) -> Result<Governance, CtlError> {
    let (channel, bearer) = channel(endpoint, token, timeout).await?;
    Ok(tollgate_proto::admin::v1::governance_service_client::GovernanceServiceClient::with_interceptor(channel, bearer))
}

/// The usage service of the node at `endpoint` (a member's admin address
/// when `ctl usage` asks each member for its own records).
pub async fn connect_usage(endpoint: &str, token: &str, timeout: Duration) -> Result<Usage, CtlError> {
    let (channel, bearer) = channel(endpoint, token, timeout).await?;
    Ok(UsageServiceClient::with_interceptor(channel, bearer))
}

async fn channel(endpoint: &str, token: &str, timeout: Duration) -> Result<(Channel, BearerToken), CtlError> {
    let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let channel = Channel::from_shared(url.clone())
        .map_err(|e| CtlError::Usage(format!("invalid --admin address {url:?}: {e}")))?
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|e| CtlError::Unavailable {
            addr: endpoint.to_string(),
            why: format!("cannot connect to the admin API ({}). Is `tollgate` running there?", causes(&e)),
        })?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| CtlError::Usage("the admin token contains characters not allowed in a header".into()))?;
    Ok((channel, BearerToken(value)))
}

/// An error's message and its causes, each once: tonic's "transport error"
/// alone says nothing, its source says what happened.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    with_causes(error.to_string(), error.source())
}

fn with_causes(text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut parts = vec![text];
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&cause_text)) {
            parts.push(cause_text);
        }
        source = cause.source();
    }
    // tonic's wrapper says nothing its causes do not say better.
    if parts.len() > 1 {
        parts.retain(|p| p != "transport error");
    }
    parts.join(": ")
}

/// Every failure to reach the node, or to get an answer from it, becomes
/// [`CtlError::Unavailable`] (exit 7) and names the address: a connection
/// refused or reset, a node that died mid-request (tonic's bare "transport
/// error", exit 1 before), or a node that answers UNAVAILABLE (no leader).
/// Answers the node gave on purpose (not found, invalid, ...) stay as they are.
pub fn name_the_node(error: CtlError, addr: &str) -> CtlError {
    let CtlError::Status(status) = error else { return error };
    use tonic::Code;
    // A status built by the client from an I/O or HTTP/2 failure carries
    // that failure as its source; one the server sent has none.
    let from_transport = std::error::Error::source(&status).is_some();
    if not_grpc(&status) {
        return CtlError::Unavailable {
            addr: addr.to_string(),
            why: "this does not look like a Tollgate admin API (is it the admin port? default 127.0.0.1:9090)"
                .to_string(),
        };
    }
    match status.code() {
        Code::Unknown | Code::Internal | Code::Cancelled | Code::Unavailable if from_transport => {
            CtlError::Unavailable {
                addr: addr.to_string(),
                why: format!(
                    "the connection to the admin API broke before it answered ({}); the node may have \
                     stopped or restarted. Is `tollgate` running there?",
                    with_causes(status.message().to_string(), std::error::Error::source(&status))
                ),
            }
        }
        Code::Unavailable | Code::DeadlineExceeded => {
            CtlError::Unavailable { addr: addr.to_string(), why: status.message().to_string() }
        }
        _ => CtlError::Status(status),
    }
}

/// A status the client made up because the answer was not gRPC at all: an
/// HTTP server (the proxy port, say) answering 404 or HTML, or one that does
/// not speak HTTP/2. tonic's own words for it mean nothing to an operator.
fn not_grpc(status: &tonic::Status) -> bool {
    use tonic::Code;
    if !matches!(status.code(), Code::Internal | Code::Unknown | Code::Unimplemented) {
        return false;
    }
    let text = with_causes(status.message().to_string(), std::error::Error::source(status));
    ["grpc-status header missing", "invalid compression flag", "protocol error", "frame with invalid size"]
        .iter()
        .any(|sign| text.contains(sign))
}
