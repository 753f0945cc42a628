//! A tool call, sent through this node's proxy as the caller's own request:
//! the caller's credential, to the tool's route, so authentication,
//! subscriptions, versions, limits, the cache, accounting and the access
//! log treat it as any request of the caller's.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};

use super::tools::Tool;

/// The most of an answer a tool result carries.
const MAX_RESULT_BYTES: usize = 1 << 20;
/// A tool call's answer must come within this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a tool call has no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The arguments do not fit the tool (a JSON-RPC invalid-params error).
    #[error("{0}")]
    Arguments(String),
    /// The gateway refused the caller (401, 403, 429): the status and what it said.
    #[error("{message}")]
    Refused { status: StatusCode, message: String, retry_after: Option<String> },
    /// The proxy could not be reached or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
}

/// The answer of the tool's API.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub truncated: bool,
    pub json: Option<Value>,
}

fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
}

/// Headers of the MCP request that say who the caller is: sent again on
/// each tool call, and nothing else of the caller's.
const CREDENTIALS: [HeaderName; 2] = [header::AUTHORIZATION, HeaderName::from_static("x-api-key")];

/// A path segment or query part percent-encoded but for the unreserved
/// characters (RFC 3986 §2.3, less `.`): an argument cannot add a segment
/// (`/`) or start a query or a fragment. A value of dots alone would still
/// be a dot segment once the proxy decodes `%2E`: `target` refuses it, and
/// the server checks where the path lands.
fn encoded(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text_of).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Where a call goes: the path (filled in) and the query.
pub struct Target {
    pub path: String,
    pub query: Option<String>,
}

/// The path and query a call with `arguments` makes, refusing arguments the
/// tool does not take and path values that are dot segments (which a
/// path's normalisation would climb with).
pub fn target(tool: &Tool, arguments: &Map<String, Value>) -> Result<Target, CallError> {
    let call = &tool.call;
    // A prompt API checks its own variables (and names a wrong one).
    let known = |k: &String| {
        call.prompt
            || call.path_params.contains(k)
            || call.query_params.contains(k)
            || call.header_params.contains(k)
            || (call.body && k == "body")
    };
    if let Some(unknown) = arguments.keys().find(|k| !known(k)) {
        return Err(CallError::Arguments(format!("{unknown:?} is not an argument of {}", tool.name)));
    }
    let mut path = call.path.clone();
    for name in &call.path_params {
        let value = text_of(arguments.get(name).ok_or_else(|| CallError::Arguments(format!("{name:?} is required")))?);
        if value.is_empty() || value.chars().all(|c| c == '.') {
            return Err(CallError::Arguments(format!("{name:?} may not be empty, \".\" or \"..\"")));
        }
        path = path.replace(&format!("{{{name}}}"), &encoded(&value));
    }
    let query: Vec<String> = call
        .query_params
        .iter()
        .filter_map(|name| {
            let value = arguments.get(name).filter(|v| !v.is_null())?;
            Some(format!("{}={}", encoded(name), encoded(&text_of(value))))
        })
        .collect();
    Ok(Target { path, query: (!query.is_empty()).then(|| query.join("&")) })
}

/// The request of a call to `target`, with the caller's credential when
/// the tool's route checks one (an open route's upstream would get it).
fn request_of(
    tool: &Tool,
    target: &Target,
    arguments: &Map<String, Value>,
    proxy: SocketAddr,
    caller: &HeaderMap,
) -> Result<Request<Full<Bytes>>, CallError> {
    let call = &tool.call;
    let path = match &target.query {
        Some(query) => format!("{}?{query}", target.path),
        None => target.path.clone(),
    };
    let host = call.host.clone().unwrap_or_else(|| proxy.to_string());
    let mut request =
        Request::builder().method(call.method.clone()).uri(format!("http://{proxy}{path}")).header(header::HOST, host);
    if call.authenticates {
        for name in CREDENTIALS.iter() {
            for value in caller.get_all(name) {
                request = request.header(name, value);
            }
        }
    }
    for name in &call.header_params {
        if let Some(value) = arguments.get(name).filter(|v| !v.is_null()) {
            let value = HeaderValue::from_str(&text_of(value))
                .map_err(|_| CallError::Arguments(format!("{name:?} cannot be a header value")))?;
            request = request.header(name.as_str(), value);
        }
    }
    if let Some((name, version)) = &call.version_header {
        request = request.header(name.as_str(), version.as_str());
    }
    let payload = match (call.prompt, call.body) {
        (true, _) => Some(Value::Object(arguments.clone())),
        (false, true) => arguments.get("body").cloned(),
        (false, false) => None,
    };
    let body = match payload {
        Some(payload) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(payload.to_string())
        }
        None => Bytes::new(),
    };
    request.body(Full::new(body)).map_err(|e| CallError::Arguments(format!("the arguments make no valid request: {e}")))
}

/// Sends the call through the proxy at `proxy` and reads its answer.
pub async fn call(
    tool: &Tool,
    target: &Target,
    arguments: &Map<String, Value>,
    proxy: SocketAddr,
    caller: &HeaderMap,
) -> Result<Answer, CallError> {
    let request = request_of(tool, target, arguments, loopback(proxy), caller)?;
    // The whole answer, body included, within the bound.
    tokio::time::timeout(CALL_TIMEOUT, send(request)).await.map_err(|_| {
        CallError::Unavailable(format!("{} did not answer within {} s", tool.name, CALL_TIMEOUT.as_secs()))
    })?
}

async fn send(request: Request<Full<Bytes>>) -> Result<Answer, CallError> {
    let response = client()
        .request(request)
        .await
        .map_err(|e| CallError::Unavailable(format!("the gateway could not be reached: {e}")))?;
    let status = response.status();
    let retry_after = response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CallError::Unavailable(format!("the answer broke off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            let room = MAX_RESULT_BYTES - bytes.len();
            bytes.extend_from_slice(&data[..data.len().min(room)]);
            if data.len() > room {
                truncated = true;
                break;
            }
        }
    }
    let body = Bytes::from(bytes);
    let json = if truncated { None } else { serde_json::from_slice(&body).ok() };
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS) {
        let message = json
            .as_ref()
            .and_then(|j: &Value| j["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(CallError::Refused { status, message, retry_after });
    }
    Ok(Answer { status, body, truncated, json })
}

/// The proxy's address as a client reaches it: loopback for a listener on
/// every interface.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    addr
}
