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
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } | ProxyError::UpstreamConnectTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::CircuitOpen { .. } | ProxyError::UpstreamTlsMisconfigured { .. } => {
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
            ProxyError::NoTarget { .. } => "no_upstream_target",
            ProxyError::UpstreamUnavailable { .. } => "upstream_unavailable",
            ProxyError::UpstreamTimeout { .. } | ProxyError::UpstreamConnectTimeout { .. } => "upstream_timeout",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::CircuitOpen { .. } => "circuit_open",
            ProxyError::UpstreamTlsMisconfigured { .. } => "upstream_tls_misconfigured",
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string(), "request_id": request_id }
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
