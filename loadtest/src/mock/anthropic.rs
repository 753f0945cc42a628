//! Anthropic Messages mock (`POST /v1/messages`), including the streaming event sequence
//! message_start, content_block_start, ping, content_block_delta..., content_block_stop,
//! message_delta (with usage), message_stop; tool use as a `tool_use` block streamed with
//! `input_json_delta` events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::llm::{
    DeclaredTool, Fate, KeyVerdict, LlmMockConfig, LlmRequest, ToolCall, call_tool, estimate_tokens, full_text, pace,
    paced_body, sse_response, token, words_of,
};
use super::{Handler, HandlerFuture, MockBody, MockError, MockHandle, RequestLog, json_response, serve_logged};

pub struct MockAnthropic;

impl MockAnthropic {
    pub async fn spawn(cfg: LlmMockConfig) -> Result<MockHandle, MockError> {
        let (listen, tls) = (cfg.listen, cfg.tls.clone());
        let log = RequestLog::new(cfg.request_log_limit);
        let handler = AnthropicHandler { cfg: Arc::new(cfg), ids: Arc::new(AtomicU64::new(0)), log: log.clone() };
        serve_logged(listen, tls, Arc::new(handler), log).await
    }
}

struct AnthropicHandler {
    cfg: Arc<LlmMockConfig>,
    ids: Arc<AtomicU64>,
    log: RequestLog,
}

fn error(status: u16, kind: &str, message: &str) -> Response<MockBody> {
    json_response(status, &json!({"type": "error", "error": {"type": kind, "message": message}}))
}

fn rate_limited(cfg: &LlmMockConfig) -> Response<MockBody> {
    let mut resp = error(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit \
         (https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage. Please reduce \
         the prompt length or the maximum tokens requested, or try again later.",
    );
    let reset = SystemTime::now() + Duration::from_secs(cfg.retry_after_secs.into());
    let h = resp.headers_mut();
    h.insert("anthropic-ratelimit-requests-limit", HeaderValue::from_static("5"));
    h.insert("anthropic-ratelimit-requests-remaining", HeaderValue::from_static("0"));
    if let Ok(v) = HeaderValue::from_str(&humantime::format_rfc3339_seconds(reset).to_string()) {
        h.insert("anthropic-ratelimit-requests-reset", v);
    }
    cfg.with_retry_after(resp)
}

fn status_error(cfg: &LlmMockConfig, status: u16) -> Response<MockBody> {
    let (kind, message) = match status {
        429 => return rate_limited(cfg),
        400 => ("invalid_request_error", "Invalid request (mock)"),
        401 => ("authentication_error", "invalid x-api-key"),
        403 => ("permission_error", "Your API key does not have permission to use the specified resource."),
        404 => ("not_found_error", "The requested resource could not be found."),
        413 => ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        529 => ("overloaded_error", "Overloaded"),
        _ => ("api_error", "Internal server error (mock)"),
    };
    error(status, kind, message)
}

fn event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

/// The tool call a request gets: tools declared, `tool_choice` not none, and the last message
/// the user's own words (a user turn carrying `tool_result` blocks is answered in text).
fn tool_call(body: &Value, id: String) -> Option<ToolCall> {
    let tools: Vec<DeclaredTool<'_>> = body
        .get("tools")?
        .as_array()?
        .iter()
        .filter_map(|t| Some(DeclaredTool { name: t.get("name")?.as_str()?, schema: t.get("input_schema") }))
        .collect();
    let choice = body.get("tool_choice");
    if choice.and_then(|c| c.get("type")).and_then(Value::as_str) == Some("none") {
        return None;
    }
    let forced = choice.filter(|c| c.get("type").and_then(Value::as_str) == Some("tool")).and_then(|c| c.get("name"));
    let last = body.get("messages")?.as_array()?.last()?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let text = match last.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            if blocks.iter().any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result")) {
                return None;
            }
            blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    };
    call_tool(&tools, forced.and_then(Value::as_str), id, &words_of(Some(&text)))
}

impl Handler for AnthropicHandler {
    fn handle(&self, req: Request<Incoming>) -> HandlerFuture {
        let cfg = self.cfg.clone();
        let log = self.log.clone();
        let seq = self.ids.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let req = LlmRequest::read(req).await;
            let credential = req.header("x-api-key");
            req.record(&log, credential);
            if req.method != Method::POST || req.path != "/v1/messages" {
                return error(404, "not_found_error", &format!("Not found: {}", req.path));
            }
            match cfg.judge_key(credential) {
                KeyVerdict::Accepted => {}
                KeyVerdict::Missing => return error(401, "authentication_error", "x-api-key header is required"),
                KeyVerdict::Invalid => return error(401, "authentication_error", "invalid x-api-key"),
                KeyVerdict::RateLimited => return rate_limited(&cfg),
                KeyVerdict::Status(s) => return status_error(&cfg, s),
            }
            if cfg.require_auth && req.header("anthropic-version").is_none() {
                return error(400, "invalid_request_error", "anthropic-version: header is required");
            }
            let Some(body) = req.body else {
                return error(400, "invalid_request_error", "request body is not valid JSON");
            };
            messages(&cfg, &body, seq).await
        })
    }
}

async fn messages(cfg: &LlmMockConfig, body: &Value, seq: u64) -> Response<MockBody> {
    let id = format!("msg_mock_{seq}");
    let model = body.get("model").and_then(Value::as_str).unwrap_or("mock-claude");
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let call = tool_call(body, format!("toolu_mock_{seq:016}"));
    let pieces = call.as_ref().map(ToolCall::pieces);
    let n = pieces.as_ref().map_or_else(|| cfg.output_tokens(body.get("max_tokens").and_then(Value::as_u64)), Vec::len);
    let prompt = body.get("messages").map(estimate_tokens).unwrap_or(1);
    // Anthropic counts cache reads apart from input_tokens, which are the uncached rest.
    let cached = cfg.cached_of(prompt);
    let input_usage = |output: usize| {
        json!({"input_tokens": prompt - cached, "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": cached, "output_tokens": output, "service_tier": "standard"})
    };
    let fate = cfg.draw_fate(stream, n);
    match fate {
        Fate::RateLimited => return rate_limited(cfg),
        Fate::ServerError => return status_error(cfg, 500),
        _ => {}
    }
    let stop_reason = if call.is_some() { "tool_use" } else { "end_turn" };
    if !stream {
        tokio::time::sleep(cfg.total_delay(n)).await;
        let content = match &call {
            Some(c) => json!([{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}]),
            None => json!([{"type": "text", "text": full_text(n)}]),
        };
        let mut v = json!({
            "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": null
        });
        if !cfg.omit_usage {
            v["usage"] = input_usage(n);
        }
        return json_response(200, &v);
    }
    let mut message = json!({"id": id, "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": null, "stop_sequence": null});
    if !cfg.omit_usage {
        message["usage"] = input_usage(1);
    }
    let block = match &call {
        Some(c) => json!({"type": "tool_use", "id": c.id, "name": c.name, "input": {}}),
        None => json!({"type": "text", "text": ""}),
    };
    let head = vec![
        event("message_start", &json!({"type": "message_start", "message": message})),
        event("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": block})),
        event("ping", &json!({"type": "ping"})),
    ];
    let delta =
        |d: Value| event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": d}));
    let tokens: Vec<Bytes> = match &pieces {
        Some(pieces) => pieces.iter().map(|p| delta(json!({"type": "input_json_delta", "partial_json": p}))).collect(),
        None => (0..n).map(|i| delta(json!({"type": "text_delta", "text": token(i)}))).collect(),
    };
    let mut message_delta =
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}});
    if !cfg.omit_usage {
        message_delta["usage"] = json!({"output_tokens": n});
    }
    let tail = vec![
        event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
        event("message_delta", &message_delta),
        event("message_stop", &json!({"type": "message_stop"})),
    ];
    let cut = match fate {
        Fate::Cut(k) => Some(head.len() + k),
        _ => None,
    };
    sse_response(paced_body(pace(cfg, head, tokens, tail), cut))
}
