//! Connecting to the admin API with the bearer token attached to every call.

use std::path::{Path, PathBuf};

use tollgate_proto::admin::v1::admin_service_client::AdminServiceClient;
use tollgate_proto::admin::v1::cluster_service_client::ClusterServiceClient;
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

pub async fn connect(endpoint: &str, token: &str) -> Result<(Admin, Cluster, super::ai::AiClient), CtlError> {
    let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let channel = Channel::from_shared(url.clone())
        .map_err(|e| CtlError::Usage(format!("invalid --admin address {url:?}: {e}")))?
        .connect()
        .await
        .map_err(|e| {
            CtlError::Unavailable(format!("cannot connect to the admin API at {url}: {e}. Is `tollgate` running?"))
        })?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| CtlError::Usage("the admin token contains characters not allowed in a header".into()))?;
    let bearer = BearerToken(value);
    Ok((
        AdminServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        ClusterServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        tollgate_proto::admin::v1::ai_service_client::AiServiceClient::with_interceptor(channel, bearer),
    ))
}
