//! Errors of the translation layer, upstream error classification, and error bodies rendered in
//! the caller's own API format.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

/// A translation failed. Each message says what the caller (or operator) can change.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("request body is not valid JSON for this endpoint: {0}; send a JSON object as documented for the API")]
    MalformedRequest(#[source] serde_json::Error),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("{feature} is not supported by {provider}; {hint}")]
    Unsupported { provider: &'static str, feature: String, hint: &'static str },
    #[error("upstream target is misconfigured: {0}; fix the provider's base URL, model or headers")]
    InvalidTarget(String),
    #[error("{provider} answered a payload this gateway cannot read: {detail}")]
    BadUpstreamPayload { provider: &'static str, detail: String },
    #[error("{provider} stream ended before its end marker ({marker}); the answer is incomplete")]
    Truncated { provider: &'static str, marker: &'static str },
    #[error("{provider} reported an error inside the stream: {error}")]
    UpstreamStream { provider: &'static str, error: ProviderError },
}

impl AdapterError {
    pub(crate) fn bad_payload(provider: &'static str, detail: impl std::fmt::Display) -> Self {
        AdapterError::BadUpstreamPayload { provider, detail: detail.to_string() }
    }
}

/// What kind of failure an upstream answer was; drives retries, fallbacks and the caller's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    PermissionDenied,
    NotFound,
    RateLimited,
    Overloaded,
    Server,
    Timeout,
    Unavailable,
    /// The provider refused the gateway's own credential (a 401 or 403 to the
    /// provider key, or a provider with no usable key): the operator's problem,
    /// never the caller's, so it is reported as a bad gateway with a code of
    /// its own rather than as the caller's authentication error. Only the
    /// gateway produces it; no upstream answer is classified as it.
    ProviderAuth,
}

impl ErrorKind {
    /// Classification from the HTTP status alone, used when the body has no better hint.
    pub fn from_status(status: u16) -> ErrorKind {
        match status {
            401 => ErrorKind::Authentication,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            408 | 504 => ErrorKind::Timeout,
            429 => ErrorKind::RateLimited,
            503 => ErrorKind::Unavailable,
            529 => ErrorKind::Overloaded,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::InvalidRequest,
        }
    }

    /// The status the gateway answers its caller with for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Overloaded | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Server | ErrorKind::ProviderAuth => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn openai_type_and_code(self) -> (&'static str, &'static str) {
        match self {
            ErrorKind::InvalidRequest => ("invalid_request_error", "invalid_request"),
            ErrorKind::Authentication => ("authentication_error", "invalid_api_key"),
            ErrorKind::PermissionDenied => ("permission_error", "permission_denied"),
            ErrorKind::NotFound => ("not_found_error", "model_not_found"),
            ErrorKind::RateLimited => ("rate_limit_error", "rate_limit_exceeded"),
            ErrorKind::Overloaded => ("server_error", "overloaded"),
            ErrorKind::Server => ("server_error", "server_error"),
            ErrorKind::Timeout => ("server_error", "timeout"),
            ErrorKind::Unavailable => ("server_error", "service_unavailable"),
            ErrorKind::ProviderAuth => ("server_error", "provider_auth_failed"),
        }
    }

    /// The machine-readable code of this kind, the same in every caller format
    /// (OpenAI's `error.code`, Gemini's `ErrorInfo.reason` in lower case).
    pub fn code(self) -> &'static str {
        self.openai_type_and_code().1
    }

    /// Google's canonical status name (`error.status` of a Gemini error body).
    pub fn gemini_status(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "INVALID_ARGUMENT",
            ErrorKind::Authentication => "UNAUTHENTICATED",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::RateLimited => "RESOURCE_EXHAUSTED",
            ErrorKind::Overloaded | ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Timeout => "DEADLINE_EXCEEDED",
            ErrorKind::Server | ErrorKind::ProviderAuth => "INTERNAL",
        }
    }

    /// Anthropic's documented `error.type` values.
    pub fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Overloaded => "overloaded_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Server | ErrorKind::Unavailable | ErrorKind::ProviderAuth => "api_error",
        }
    }

    pub fn from_anthropic_type(t: &str) -> Option<ErrorKind> {
        Some(match t {
            "invalid_request_error" | "request_too_large" => ErrorKind::InvalidRequest,
            "authentication_error" => ErrorKind::Authentication,
            "permission_error" | "billing_error" => ErrorKind::PermissionDenied,
            "not_found_error" => ErrorKind::NotFound,
            "rate_limit_error" => ErrorKind::RateLimited,
            "overloaded_error" => ErrorKind::Overloaded,
            "timeout_error" => ErrorKind::Timeout,
            "api_error" => ErrorKind::Server,
            _ => return None,
        })
    }
}

/// A classified non-2xx upstream answer (or an error event inside a stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream status {status} ({kind:?}): {message}")]
pub struct ProviderError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// Worth another attempt (same provider later, another key, or a fallback model).
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited
                | ErrorKind::Overloaded
                | ErrorKind::Server
                | ErrorKind::Timeout
                | ErrorKind::Unavailable
        ) || self.status == 429
            || (500..=599).contains(&self.status)
    }
}

/// Longest upstream text copied into an error message; bodies can be whole HTML pages.
const MAX_MESSAGE_CHARS: usize = 512;

/// Shared classification: status first, then the provider's error `type`/`status` string, then
/// the standard retry headers. `message` is the provider's text when its body had one.
pub(crate) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    message: Option<String>,
    kind_hint: Option<ErrorKind>,
) -> ProviderError {
    let message = message.filter(|m| !m.is_empty()).unwrap_or_else(|| fallback_message(status, body));
    ProviderError {
        status: status.as_u16(),
        kind: kind_hint.unwrap_or_else(|| ErrorKind::from_status(status.as_u16())),
        message,
        retry_after: retry_after(headers),
    }
}

fn fallback_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status.canonical_reason().unwrap_or("upstream error").to_owned();
    }
    text.chars().take(MAX_MESSAGE_CHARS).collect()
}

/// `retry-after-ms` (OpenAI, Azure) wins over `retry-after` (seconds). HTTP-date values are
/// ignored: no provider we talk to sends them, and a wrong guess would stall retries.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok().filter(|v| *v >= 0.0);
    if let Some(ms) = num("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    num("retry-after").map(Duration::from_secs_f64)
}

/// `error.message` of an `{"error":{"message":..}}` body (OpenAI, Azure, Anthropic, Gemini).
pub(crate) fn error_object(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    // Gemini's streaming endpoint wraps its error in a one-element array.
    let v = match v {
        Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
        v => v,
    };
    v.get("error").cloned()
}

/// An OpenAI-format error body for the caller: `{"error":{"message","type","param","code"}}`.
pub fn openai_error_body(status: StatusCode, kind: ErrorKind, message: &str) -> (StatusCode, Bytes) {
    let (kind_type, code) = kind.openai_type_and_code();
    let body = json!({"error": {"message": message, "type": kind_type, "param": null, "code": code}});
    (status, Bytes::from(body.to_string()))
}

/// An Anthropic-format error body for `/v1/messages` callers: `{"type":"error","error":{..}}`.
pub fn anthropic_error_body(status: StatusCode, kind: ErrorKind, message: &str) -> (StatusCode, Bytes) {
    (status, Bytes::from(anthropic_error_json(kind, message).to_string()))
}

/// The same error as an Anthropic SSE `error` event, for failures after a stream has started.
pub fn anthropic_error_event(kind: ErrorKind, message: &str) -> Bytes {
    Bytes::from(format!("event: error\ndata: {}\n\n", anthropic_error_json(kind, message)))
}

fn anthropic_error_json(kind: ErrorKind, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind.anthropic_type(), "message": message}})
}

/// A Gemini-format error body for `…:generateContent` callers:
/// `{"error":{"code","message","status","details":[ErrorInfo]}}`, as Google's
/// APIs answer, with the gateway's code as the `ErrorInfo` reason.
pub fn gemini_error_body(status: StatusCode, kind: ErrorKind, message: &str) -> (StatusCode, Bytes) {
    (status, Bytes::from(gemini_error_json(status, kind, message).to_string()))
}

pub(crate) fn gemini_error_json(status: StatusCode, kind: ErrorKind, message: &str) -> Value {
    json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "status": kind.gemini_status(),
        "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": kind.code().to_ascii_uppercase(),
            "domain": "tollgate",
        }],
    }})
}
