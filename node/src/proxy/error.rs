//! Every failure on the request path maps to one status and one JSON body, here.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::ProxyBody;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body did not arrive within {timeout_ms} ms")]
    BodyTimeout { timeout_ms: u64 },
    #[error("request is malformed: {0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidPath(#[from] super::path::PathError),
    #[error("{0}")]
    InvalidAuthority(#[from] super::authority::AuthorityError),
    /// The client's request body broke off or was badly framed while it was
    /// being forwarded: the client's fault, never the upstream's.
    #[error("the request body was cut off or malformed: {reason}")]
    ClientBody { reason: String },
    #[error("service {service} has no upstream targets")]
    NoTarget { service: String },
    #[error("upstream {target} failed: {reason}")]
    UpstreamUnavailable { target: String, reason: String },
    #[error("upstream {target} did not respond within {timeout_ms} ms")]
    UpstreamTimeout { target: String, timeout_ms: u64 },
    #[error("connecting to upstream {target} timed out after {timeout_ms} ms")]
    UpstreamConnectTimeout { target: String, timeout_ms: u64 },
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the gateway is at its connection limit (proxy.max_connections); retry later")]
    Overloaded,
    #[error("service {service} is failing and its circuit is open; retry later")]
    CircuitOpen { service: String },
    #[error("service {service} has unusable upstream TLS settings (check tls.ca_pem and tls.server_name)")]
    UpstreamTlsMisconfigured { service: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_)
            | ProxyError::InvalidPath(_)
            | ProxyError::InvalidAuthority(_)
            | ProxyError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::NoTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } | ProxyError::UpstreamConnectTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::CircuitOpen { .. } | ProxyError::UpstreamTlsMisconfigured { .. } | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// A stable machine-readable code for clients and dashboards.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "route_not_found",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyTimeout { .. } => "request_timeout",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::InvalidAuthority(_) => "invalid_host",
            ProxyError::ClientBody { .. } => "bad_request_body",
            ProxyError::NoTarget { .. } => "no_upstream_target",
            ProxyError::UpstreamUnavailable { .. } => "upstream_unavailable",
            ProxyError::UpstreamTimeout { .. } | ProxyError::UpstreamConnectTimeout { .. } => "upstream_timeout",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::Overloaded => "overloaded",
            ProxyError::UpstreamTlsMisconfigured { .. } => "upstream_tls_misconfigured",
        }
    }

    /// Whether the client caused this failure: it then says nothing about the
    /// upstream, and never counts against its health, circuit or retry budget.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::BodyTooLarge { .. }
                | ProxyError::BodyTimeout { .. }
                | ProxyError::BadRequest(_)
                | ProxyError::ClientBody { .. }
        )
    }

    /// What the client is told. Failures of the gateway's side never name an
    /// upstream address, a service's settings or an internal cause: those
    /// go to the log (`Display`), with the request id the client does see.
    pub fn public_message(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        match self {
            ProxyError::UpstreamUnavailable { .. } => Cow::Borrowed("the upstream service failed to answer"),
            ProxyError::UpstreamTimeout { timeout_ms, .. } => {
                Cow::Owned(format!("the upstream service did not respond within {timeout_ms} ms"))
            }
            ProxyError::UpstreamConnectTimeout { timeout_ms, .. } => {
                Cow::Owned(format!("connecting to the upstream service timed out after {timeout_ms} ms"))
            }
            ProxyError::NoTarget { .. } => Cow::Borrowed("the service has no upstream available"),
            ProxyError::CircuitOpen { .. } => {
                Cow::Borrowed("the service is failing and its circuit is open; retry later")
            }
            ProxyError::UpstreamTlsMisconfigured { .. } => Cow::Borrowed("the service is misconfigured"),
            ProxyError::ClientBody { .. } => Cow::Borrowed("the request body was cut off or malformed"),
            other => Cow::Owned(other.to_string()),
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.public_message(), "request_id": request_id }
        });
        let mut response =
            Response::new(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if matches!(self, ProxyError::Unauthorized(_)) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tollgate\""));
        }
        response
    }
}
