//! The console's changes go through this node's own admin API, with the
//! signed-in admin's token, exactly as `tollgate ctl` sends them: the access
//! layer checks the role, `apply` the team, and the audit trail records the
//! admin, not the console.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tollgate_proto::admin::v1::governance_service_client::GovernanceServiceClient;
use tollgate_proto::admin::v1::{DecideSubscriptionRequest, SetApiVersionStateRequest};
use tollgate_proto::config::v1::{SubscriptionState, VersionState};
use tonic::transport::{Channel, Endpoint};

use super::PortalError;

pub struct AdminApi {
    channel: Channel,
}

impl AdminApi {
    /// A channel to the admin listener, connected at the first call. A
    /// listener on every interface is reached on loopback.
    pub fn new(admin: SocketAddr) -> AdminApi {
        let mut target = admin;
        if target.ip().is_unspecified() {
            target.set_ip(if admin.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() });
        }
        let endpoint = Endpoint::from_shared(format!("http://{target}"))
            .expect("a socket address makes a valid URI")
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30));
        AdminApi { channel: endpoint.connect_lazy() }
    }

    fn governance(&self) -> GovernanceServiceClient<Channel> {
        GovernanceServiceClient::new(self.channel.clone())
    }

    pub async fn decide_subscription(
        &self,
        token: &str,
        id: &str,
        state: SubscriptionState,
        reason: &str,
    ) -> Result<(), PortalError> {
        let message = DecideSubscriptionRequest { id: id.into(), state: state as i32, reason: reason.into() };
        self.governance()
            .decide_subscription(bearer(token, message)?)
            .await
            .map_err(|s| PortalError::from_status(&s))?;
        Ok(())
    }

    pub async fn set_version_state(
        &self,
        token: &str,
        service: &str,
        version: &str,
        state: VersionState,
    ) -> Result<(), PortalError> {
        let message = SetApiVersionStateRequest {
            service: service.into(),
            version: version.into(),
            state: state as i32,
            ..Default::default()
        };
        self.governance()
            .set_api_version_state(bearer(token, message)?)
            .await
            .map_err(|s| PortalError::from_status(&s))?;
        Ok(())
    }
}

fn bearer<T>(token: &str, message: T) -> Result<tonic::Request<T>, PortalError> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| PortalError::BadRequest("the session's admin token is not a valid header value".into()))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}
