//! The one error type of the request path. Every phase and every backend
//! fails with a [`GatewayError`]; it has one [`kind`](GatewayError::kind)
//! (the caller-facing classification every API format shares) and one status,
//! and each backend renders it in its callers' format: REST JSON here
//! ([`GatewayError::into_response`]), OpenAI, Anthropic and Gemini bodies in
//! the AI backend.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::body::GatewayBody;
use tollgate_llm::error::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
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
    /// The path could not be normalised (see `proxy::path`); the reason says what to send.
    #[error("{0}")]
    InvalidPath(String),
    /// No single valid authority (see `proxy::authority`).
    #[error("{0}")]
    InvalidAuthority(String),
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
    /// A backend's own refusal or failure (an AI provider's error, a model
    /// the key may not use), with the kind and status it decided. The
    /// message is already safe to show the caller.
    #[error("{message}")]
    Backend { kind: ErrorKind, status: StatusCode, message: String },
    /// A rate limit or a budget refused the request (429; 400 when no
    /// window could ever admit it).
    #[error("{}", .0.message())]
    RateLimited(Box<LimitRefusal>),
    /// The API version asked for does not exist, is a draft, or none was
    /// named where there is no default (404).
    #[error("{0}")]
    VersionNotFound(String),
    /// The API version asked for is retired (410); the body names the successor.
    #[error(
        "API version {version:?} is retired{}",
        .successor.as_ref().map(|s| format!("; use {s:?}")).unwrap_or_default()
    )]
    VersionRetired { version: String, successor: Option<String> },
    /// The service needs an approved subscription the caller's consumer lacks (403).
    #[error(
        "{} no approved subscription to this API; subscribe and wait for approval",
        if .consumer.is_empty() { "an unidentified caller has".to_string() } else { format!("consumer {:?} has", .consumer) }
    )]
    NotSubscribed { consumer: String },
}

/// Which limit refused a request, and when it lets requests through again.
/// Plain data, so every backend can render it in its own format; the
/// response headers come from `crate::limits::headers`.
#[derive(Debug, Clone)]
pub struct LimitRefusal {
    /// The limit's name: the policy named in the RateLimit headers.
    pub policy: String,
    pub amount: u64,
    pub window_secs: u64,
    pub reset_at_ms: i64,
    pub now_ms: i64,
    /// A budget (money) rather than a rate limit.
    pub budget: bool,
    /// Why: whether a retry can be admitted, and when.
    pub cause: RefusalCause,
    /// "100 requests per minute", "5000000 micro-dollars per month".
    pub what: String,
    /// What the limit counts: "requests", "output tokens", "micro-dollars".
    pub unit: &'static str,
}

/// Why a limit refused, which decides whether and when a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCause {
    /// The window is spent: a retry helps once it resets.
    Spent,
    /// No quota could be granted in time (a busy cluster, or a node cut off
    /// from a majority): retry soon.
    NotInTime,
    /// This request alone needs more units than the limit allows in a
    /// whole window (an AI call's `max_tokens` is the client's to set), so
    /// no retry can ever admit it.
    TooLarge { units: u64 },
}

impl LimitRefusal {
    /// 429 while a retry can be admitted. A request that no window can ever
    /// admit is the client's to change, as for a model's own token limit:
    /// 400, which no client's retry policy retries (a 429 is retried by most,
    /// and each retry would cost the caller a request of its other limits).
    pub fn status(&self) -> StatusCode {
        match self.cause {
            RefusalCause::TooLarge { .. } => StatusCode::BAD_REQUEST,
            RefusalCause::Spent | RefusalCause::NotInTime => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The error's kind for each caller's format (OpenAI `type`, Anthropic
    /// `error.type`, Gemini `status`).
    pub fn kind(&self) -> ErrorKind {
        match self.cause {
            RefusalCause::TooLarge { .. } => ErrorKind::InvalidRequest,
            RefusalCause::Spent | RefusalCause::NotInTime => ErrorKind::RateLimited,
        }
    }

    /// Whole seconds until a retry can be admitted (Retry-After): until the
    /// window resets, at least 1; 1 when the quota was only not granted in
    /// time; None when no retry ever can be.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self.cause {
            RefusalCause::Spent => Some(self.secs_to_reset()),
            RefusalCause::NotInTime => Some(1),
            RefusalCause::TooLarge { .. } => None,
        }
    }

    fn secs_to_reset(&self) -> u64 {
        ((self.reset_at_ms - self.now_ms).max(0) as u64).div_ceil(1_000).max(1)
    }

    pub fn message(&self) -> String {
        let reset = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.reset_at_ms.max(0) as u64),
        );
        let kind = if self.budget { "budget" } else { "rate limit" };
        match self.cause {
            RefusalCause::NotInTime => format!(
                "{kind} {:?} ({}) could not be checked: the cluster granted no quota in time; retry in a second",
                self.policy, self.what
            ),
            RefusalCause::TooLarge { units } => format!(
                "this request needs up to {units} {}, more than {kind} {:?} ({}) allows in a whole window, so it \
                 can never be admitted as it is: ask for fewer output tokens (max_tokens, max_completion_tokens or \
                 maxOutputTokens; a prompt API's own max_tokens is set by its operator) or send less input",
                self.unit, self.policy, self.what
            ),
            RefusalCause::Spent if self.budget => {
                format!("budget {:?} ({}) is spent; it resets at {reset}", self.policy, self.what)
            }
            RefusalCause::Spent => format!(
                "rate limit {:?} ({}) is exceeded; retry after {} s (resets at {reset})",
                self.policy,
                self.what,
                self.secs_to_reset()
            ),
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute { .. } => StatusCode::NOT_FOUND,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BadRequest(_)
            | GatewayError::InvalidPath(_)
            | GatewayError::InvalidAuthority(_)
            | GatewayError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            GatewayError::NoTarget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } | GatewayError::UpstreamConnectTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::CircuitOpen { .. }
            | GatewayError::UpstreamTlsMisconfigured { .. }
            | GatewayError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Backend { status, .. } => *status,
            GatewayError::RateLimited(refusal) => refusal.status(),
            GatewayError::VersionNotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::VersionRetired { .. } => StatusCode::GONE,
            GatewayError::NotSubscribed { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// What kind of failure this is for the caller, in the classification
    /// every API format shares: it picks the OpenAI `type`, the Anthropic
    /// `error.type` and the Gemini `status` of an AI caller's error body.
    pub fn kind(&self) -> ErrorKind {
        match self {
            GatewayError::NoRoute { .. } => ErrorKind::NotFound,
            GatewayError::Unauthorized(_) => ErrorKind::Authentication,
            GatewayError::Forbidden(_) => ErrorKind::PermissionDenied,
            GatewayError::BodyTooLarge { .. }
            | GatewayError::BadRequest(_)
            | GatewayError::InvalidPath(_)
            | GatewayError::InvalidAuthority(_)
            | GatewayError::ClientBody { .. } => ErrorKind::InvalidRequest,
            GatewayError::BodyTimeout { .. }
            | GatewayError::UpstreamTimeout { .. }
            | GatewayError::UpstreamConnectTimeout { .. } => ErrorKind::Timeout,
            GatewayError::NoTarget { .. }
            | GatewayError::CircuitOpen { .. }
            | GatewayError::Overloaded
            | GatewayError::UpstreamTlsMisconfigured { .. } => ErrorKind::Unavailable,
            GatewayError::UpstreamUnavailable { .. } => ErrorKind::Server,
            GatewayError::Backend { kind, .. } => *kind,
            GatewayError::RateLimited(refusal) => refusal.kind(),
            GatewayError::VersionNotFound(_) | GatewayError::VersionRetired { .. } => ErrorKind::NotFound,
            GatewayError::NotSubscribed { .. } => ErrorKind::PermissionDenied,
        }
    }

    /// A stable machine-readable code for clients and dashboards.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::NoRoute { .. } => "route_not_found",
            GatewayError::Unauthorized(_) => "unauthorized",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::BodyTimeout { .. } => "request_timeout",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::InvalidPath(_) => "invalid_path",
            GatewayError::InvalidAuthority(_) => "invalid_host",
            GatewayError::ClientBody { .. } => "bad_request_body",
            GatewayError::NoTarget { .. } => "no_upstream_target",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::UpstreamTimeout { .. } | GatewayError::UpstreamConnectTimeout { .. } => "upstream_timeout",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::CircuitOpen { .. } => "circuit_open",
            GatewayError::Overloaded => "overloaded",
            GatewayError::UpstreamTlsMisconfigured { .. } => "upstream_tls_misconfigured",
            GatewayError::Backend { kind, .. } => kind.code(),
            GatewayError::RateLimited(refusal) if matches!(refusal.cause, RefusalCause::TooLarge { .. }) => {
                "request_exceeds_limit"
            }
            GatewayError::RateLimited(refusal) if refusal.budget && refusal.cause == RefusalCause::Spent => {
                "budget_exceeded"
            }
            GatewayError::RateLimited(_) => "rate_limited",
            GatewayError::VersionNotFound(_) => "api_version_not_found",
            GatewayError::VersionRetired { .. } => "api_version_retired",
            GatewayError::NotSubscribed { .. } => "subscription_required",
        }
    }

    /// Whether the client caused this failure: it then says nothing about the
    /// upstream, and never counts against its health, circuit or retry budget.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            GatewayError::BodyTooLarge { .. }
                | GatewayError::BodyTimeout { .. }
                | GatewayError::BadRequest(_)
                | GatewayError::ClientBody { .. }
        )
    }

    /// What the client is told. Failures of the gateway's side never name an
    /// upstream address, a service's settings or an internal cause: those
    /// go to the log (`Display`), with the request id the client does see.
    pub fn public_message(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        match self {
            GatewayError::UpstreamUnavailable { .. } => Cow::Borrowed("the upstream service failed to answer"),
            GatewayError::UpstreamTimeout { timeout_ms, .. } => {
                Cow::Owned(format!("the upstream service did not respond within {timeout_ms} ms"))
            }
            GatewayError::UpstreamConnectTimeout { timeout_ms, .. } => {
                Cow::Owned(format!("connecting to the upstream service timed out after {timeout_ms} ms"))
            }
            GatewayError::NoTarget { .. } => Cow::Borrowed("the service has no upstream available"),
            GatewayError::CircuitOpen { .. } => {
                Cow::Borrowed("the service is failing and its circuit is open; retry later")
            }
            GatewayError::UpstreamTlsMisconfigured { .. } => Cow::Borrowed("the service is misconfigured"),
            GatewayError::ClientBody { .. } => Cow::Borrowed("the request body was cut off or malformed"),
            other => Cow::Owned(other.to_string()),
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<GatewayBody> {
        let mut body = serde_json::json!({
            "error": { "code": self.code(), "message": self.public_message(), "request_id": request_id }
        });
        if let GatewayError::VersionRetired { version, successor } = &self {
            body["error"]["version"] = version.as_str().into();
            body["error"]["successor"] = successor.as_deref().into();
        }
        let mut response =
            Response::new(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if matches!(self, GatewayError::Unauthorized(_)) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tollgate\""));
        }
        response
    }
}
