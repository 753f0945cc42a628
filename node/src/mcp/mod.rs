//! APIs as MCP tools: a route whose backend is `mcp` is a Model Context
//! Protocol server (Streamable HTTP transport) for its authenticated
//! caller. It lists the caller's APIs as tools (`tools.rs`) and runs each
//! call as the caller's own request through this node's proxy (`call.rs`).
//!
//! Both eras of the protocol are spoken, statelessly (no session id):
//! - 2026-07-28, the current revision: `server/discover`, then each
//!   request carries its protocol version (header and `_meta`), checked;
//! - 2025-11-25 and earlier handshake revisions: `initialize`, then
//!   `notifications/initialized`.
//!
//! A refusal of the gateway's own (401, 403, 429 from a tool's route) is a
//! JSON-RPC error; an API's own error answer is a tool result with
//! `isError`, which a model can read and act on.

mod call;
mod tools;

pub use tools::ToolCache;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value, json};

use crate::plumbing::{GatewayBody, GatewayError};

/// The current revision (stateless, per-request envelope).
const MODERN: &str = "2026-07-28";
/// Revisions reached through the `initialize` handshake, newest first.
const HANDSHAKE: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// The largest JSON-RPC message read.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const HEADER_MISMATCH: i64 = -32020;
const UNSUPPORTED_VERSION: i64 = -32022;
/// Implementation-defined (JSON-RPC's -32000..-32099): the gateway refused.
const UNAUTHORIZED: i64 = -32001;
const FORBIDDEN: i64 = -32003;
const RATE_LIMITED: i64 = -32029;
const UNAVAILABLE: i64 = -32050;

/// What serving one MCP message needs.
pub struct Mcp<'a> {
    pub state: Arc<tollgate_raft::GatewayState>,
    /// This node's proxy, for tool calls.
    pub proxy: SocketAddr,
    /// The caller's consumer id (an MCP route authenticates).
    pub consumer_id: &'a str,
    /// The route's team, when it serves only that team's APIs.
    pub team: Option<&'a str>,
    /// The caller's IP: a tool's route's IP rules apply to it.
    pub client_ip: std::net::IpAddr,
    /// The proxy's routes and path rules: a call must land on its tool's route.
    pub snapshot: Arc<crate::proxy::snapshot::GatewaySnapshot>,
    pub path_policy: crate::proxy::PathPolicy,
    /// The tools of the current state, built once per change to them.
    pub tools: &'a tools::ToolCache,
}

impl Mcp<'_> {
    /// Whether the caller's IP may use the route a tool calls: the call
    /// reaches it from this node's own address, so its rules are held here.
    fn ip_allowed(&self, route_id: &str) -> bool {
        self.state.route(route_id).is_none_or(|r| {
            crate::proxy::ip_filter::IpFilter::compile(&r.ip_allow, &r.ip_deny)
                .is_none_or(|f| f.permits(self.client_ip))
        })
    }

    /// Whether a call to `target` reaches the tool's own route, as the
    /// proxy will route it (after normalising the path): no argument and
    /// no document path may send a call to another route.
    fn lands_on(&self, tool: &tools::Tool, target: &call::Target) -> bool {
        let Ok(path) = crate::proxy::path::normalize(&target.path, self.path_policy) else { return false };
        let host = tool.call.host.as_deref().map(|h| h.to_ascii_lowercase());
        self.snapshot
            .router
            .find(&tool.call.method, host.as_deref(), &path)
            .is_some_and(|matched| matched.route.id == tool.call.route_id)
    }

    fn tools(&self) -> Vec<Arc<tools::Tool>> {
        self.tools.for_caller(&self.state, self.consumer_id, self.team)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<GatewayBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed_unsync())
        .expect("a static response is valid")
}

fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// The HTTP status a JSON-RPC error goes out with, as the MCP SDKs' servers send them.
fn status_of(code: i64) -> StatusCode {
    match code {
        METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        PARSE_ERROR | INVALID_REQUEST | INVALID_PARAMS | HEADER_MISMATCH | UNSUPPORTED_VERSION => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::OK,
    }
}

/// A refusal before the MCP server was reached (authentication, limits on
/// the MCP route itself), as a JSON-RPC error an MCP client raises.
pub fn render_error(error: &GatewayError, request_id: &str) -> Response<GatewayBody> {
    let status = error.status();
    let code = match status {
        StatusCode::UNAUTHORIZED => UNAUTHORIZED,
        StatusCode::FORBIDDEN => FORBIDDEN,
        StatusCode::TOO_MANY_REQUESTS => RATE_LIMITED,
        _ => UNAVAILABLE,
    };
    let data = json!({"httpStatus": status.as_u16(), "requestId": request_id});
    let mut response = json_response(status, &error_body(code, &error.to_string(), data));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    }
    response
}

fn error_body(code: i64, message: &str, data: Value) -> Value {
    error(&Value::Null, code, message, Some(data))
}

/// Answers one MCP POST (its body already read).
pub async fn serve(mcp: Mcp<'_>, method: &http::Method, headers: &HeaderMap, body: &[u8]) -> Response<GatewayBody> {
    if method != http::Method::POST {
        // No server-initiated stream and no session to end: POST only.
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &error_body(INVALID_REQUEST, "this MCP server takes POST only", json!({})),
        );
        response.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        return response;
    }
    if body.len() > MAX_MESSAGE_BYTES {
        let message = format!("a message is at most {MAX_MESSAGE_BYTES} bytes");
        return json_response(StatusCode::PAYLOAD_TOO_LARGE, &error_body(INVALID_REQUEST, &message, json!({})));
    }
    let message: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(message)) => Value::Object(message),
        Ok(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &error_body(INVALID_REQUEST, "send one JSON-RPC message (no batches)", json!({})),
            );
        }
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &error_body(PARSE_ERROR, &format!("not JSON: {e}"), json!({})),
            );
        }
    };
    let Some(method) = message["method"].as_str().map(str::to_string) else {
        // A response or an error from the client: we never ask it anything.
        return accepted();
    };
    let id = match message.get("id") {
        // A notification (initialized, cancelled...): nothing to answer.
        None => return accepted(),
        Some(id) if id.is_string() || id.is_number() => id.clone(),
        Some(_) => {
            let refusal = error_body(INVALID_REQUEST, "a request id is a string or a number", json!({}));
            return json_response(StatusCode::BAD_REQUEST, &refusal);
        }
    };
    let params = message["params"].as_object().cloned().unwrap_or_default();
    let answer = match era(headers, &method, &params) {
        Ok(era) => dispatch(&mcp, &method, &params, era, headers).await,
        Err(refusal) => Err(refusal),
    };
    match answer {
        Ok(mut result) => {
            if let Value::Object(fields) = &mut result {
                // Required on 2026-07-28 results, ignored by older clients.
                fields.entry("resultType").or_insert(json!("complete"));
            }
            json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": id, "result": result}))
        }
        Err(Refusal { code, message, data }) => json_response(status_of(code), &error(&id, code, &message, data)),
    }
}

fn accepted() -> Response<GatewayBody> {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .body(Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync())
        .expect("a static response is valid")
}

/// A JSON-RPC error to answer with.
struct Refusal {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl Refusal {
    fn new(code: i64, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into(), data: None }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Era {
    Modern,
    Handshake,
}

/// The era of a request, and the checks of the modern envelope: the
/// version and method in the headers must be those of the message.
fn era(headers: &HeaderMap, method: &str, params: &Map<String, Value>) -> Result<Era, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(version) = header("mcp-protocol-version") else { return Ok(Era::Handshake) };
    if HANDSHAKE.contains(&version) {
        return Ok(Era::Handshake);
    }
    if version != MODERN {
        let data = json!({"supported": supported(), "requested": version});
        return Err(Refusal {
            code: UNSUPPORTED_VERSION,
            message: format!("protocol version {version} is not supported"),
            data: Some(data),
        });
    }
    let envelope = params.get("_meta").and_then(|m| m["io.modelcontextprotocol/protocolVersion"].as_str());
    if envelope.is_some_and(|v| v != version) || header("mcp-method").is_some_and(|m| m != method) {
        return Err(Refusal::new(
            HEADER_MISMATCH,
            "the MCP-Protocol-Version or Mcp-Method header disagrees with the message",
        ));
    }
    if method == "tools/call"
        && header("mcp-name").is_some_and(|n| Some(n) != params.get("name").and_then(Value::as_str))
    {
        return Err(Refusal::new(HEADER_MISMATCH, "the Mcp-Name header disagrees with the tool called"));
    }
    Ok(Era::Modern)
}

fn supported() -> Vec<&'static str> {
    std::iter::once(MODERN).chain(HANDSHAKE).collect()
}

fn server_info() -> Value {
    json!({"name": "tollgate", "version": env!("CARGO_PKG_VERSION")})
}

const INSTRUCTIONS: &str = "The APIs this caller may use through the Tollgate gateway, one tool per operation. \
                            Each call is made with the caller's own credentials, limits and billing.";

async fn dispatch(
    mcp: &Mcp<'_>,
    method: &str,
    params: &Map<String, Value>,
    era: Era,
    headers: &HeaderMap,
) -> Result<Value, Refusal> {
    match method {
        "server/discover" => Ok(json!({
            "supportedVersions": [MODERN],
            "capabilities": {"tools": {}},
            "instructions": INSTRUCTIONS,
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": server_info()},
        })),
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str).unwrap_or_default();
            let version = HANDSHAKE.iter().find(|v| **v == asked).copied().unwrap_or(HANDSHAKE[0]);
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": server_info(),
                "instructions": INSTRUCTIONS,
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => {
            let tools: Vec<Value> = mcp.tools().iter().map(|t| t.listing()).collect();
            let mut result = json!({"tools": tools});
            if era == Era::Modern {
                // Fresh on every listing: a subscription may change at any time.
                result["ttlMs"] = json!(0);
                result["cacheScope"] = json!("private");
            }
            Ok(result)
        }
        "tools/call" => call_tool(mcp, params, headers).await,
        other => Err(Refusal::new(METHOD_NOT_FOUND, format!("method {other:?} is not served here"))),
    }
}

async fn call_tool(mcp: &Mcp<'_>, params: &Map<String, Value>, headers: &HeaderMap) -> Result<Value, Refusal> {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new(INVALID_PARAMS, "name the tool to call"))?;
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(arguments)) => arguments.clone(),
        Some(_) => return Err(Refusal::new(INVALID_PARAMS, "arguments must be an object")),
    };
    let tools = mcp.tools();
    let tool = tools
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Refusal::new(INVALID_PARAMS, format!("Unknown tool: {name}")))?;
    if !mcp.ip_allowed(&tool.call.route_id) {
        return Err(Refusal::new(FORBIDDEN, "your IP address is not allowed on this tool's route"));
    }
    let target = call::target(tool, &arguments).map_err(|e| Refusal::new(INVALID_PARAMS, e.to_string()))?;
    if !mcp.lands_on(tool, &target) {
        return Err(Refusal::new(INVALID_PARAMS, format!("those arguments lead outside the API of {name}")));
    }
    match call::call(tool, &target, &arguments, mcp.proxy, headers).await {
        Ok(answer) => Ok(result_of(tool, answer)),
        Err(call::CallError::Arguments(message)) => Err(Refusal::new(INVALID_PARAMS, message)),
        Err(call::CallError::Refused { status, message, retry_after }) => {
            let code = match status {
                StatusCode::UNAUTHORIZED => UNAUTHORIZED,
                StatusCode::FORBIDDEN => FORBIDDEN,
                _ => RATE_LIMITED,
            };
            let data = json!({"httpStatus": status.as_u16(), "retryAfter": retry_after});
            Err(Refusal { code, message, data: Some(data) })
        }
        Err(call::CallError::Unavailable(message)) => Err(Refusal::new(UNAVAILABLE, message)),
    }
}

/// A tool result: the answer's text, its JSON as structured content, and
/// `isError` for an error status.
fn result_of(tool: &tools::Tool, answer: call::Answer) -> Value {
    let failed = answer.status.is_client_error() || answer.status.is_server_error();
    let mut text = String::from_utf8_lossy(&answer.body).into_owned();
    if failed {
        text = format!("HTTP {}: {text}", answer.status.as_u16());
    }
    if answer.truncated {
        text.push_str("\n[truncated]");
    }
    let mut result = json!({"content": [{"type": "text", "text": text}], "isError": failed});
    match answer.json {
        Some(Value::Object(object)) if !failed => result["structuredContent"] = Value::Object(object),
        // A declared output schema promises structured content.
        Some(value) if !failed && tool.output_schema.is_none() => {
            result["structuredContent"] = json!({"result": value})
        }
        _ => {}
    }
    result
}
