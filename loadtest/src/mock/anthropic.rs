//! Anthropic Messages mock (`POST /v1/messages`), including the streaming event sequence
//! message_start, content_block_start, ping, content_block_delta..., content_block_stop,
//! message_delta (with usage), message_stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::llm::{Fate, LlmMockConfig, estimate_tokens, full_text, pace, paced_body, read_json, sse_response, token};
use super::{Handler, HandlerFuture, MockBody, MockError, MockHandle, json_response, serve};

pub struct MockAnthropic;

impl MockAnthropic {
    pub async fn spawn(cfg: LlmMockConfig) -> Result<MockHandle, MockError> {
        let (listen, tls) = (cfg.listen, cfg.tls.clone());
        serve(listen, tls, Arc::new(AnthropicHandler { cfg: Arc::new(cfg), ids: Arc::new(AtomicU64::new(0)) })).await
    }
}

struct AnthropicHandler {
    cfg: Arc<LlmMockConfig>,
    ids: Arc<AtomicU64>,
}

fn error(status: u16, kind: &str, message: &str) -> Response<MockBody> {
    json_response(status, &json!({"type": "error", "error": {"type": kind, "message": message}}))
}

fn event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

impl Handler for AnthropicHandler {
    fn handle(&self, req: Request<Incoming>) -> HandlerFuture {
        let cfg = self.cfg.clone();
        let id = format!("msg_mock_{}", self.ids.fetch_add(1, Ordering::Relaxed));
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if req.method() != Method::POST || path != "/v1/messages" {
                return error(404, "not_found_error", &format!("Not found: {path}"));
            }
            let Some(body) = read_json(req).await else {
                return error(400, "invalid_request_error", "request body is not valid JSON");
            };
            let model = body.get("model").and_then(Value::as_str).unwrap_or("mock-claude").to_string();
            let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
            let n = cfg.output_tokens(body.get("max_tokens").and_then(Value::as_u64));
            let input = body.get("messages").map(estimate_tokens).unwrap_or(1);
            let fate = cfg.draw_fate(stream, n);
            match fate {
                Fate::RateLimited => return error(429, "rate_limit_error", "Rate limited (mock)"),
                Fate::ServerError => {
                    return error(500, "api_error", "Internal server error (mock)");
                }
                _ => {}
            }
            if !stream {
                tokio::time::sleep(cfg.total_delay(n)).await;
                return json_response(
                    200,
                    &json!({
                        "id": id, "type": "message", "role": "assistant", "model": model,
                        "content": [{"type": "text", "text": full_text(n)}],
                        "stop_reason": "end_turn", "stop_sequence": null,
                        "usage": {"input_tokens": input, "output_tokens": n}
                    }),
                );
            }
            let head = vec![
                event(
                    "message_start",
                    &json!({"type": "message_start", "message": {
                    "id": id, "type": "message", "role": "assistant", "content": [], "model": model,
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input, "output_tokens": 1}}}),
                ),
                event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ),
                event("ping", &json!({"type": "ping"})),
            ];
            let tokens = (0..n)
                .map(|i| {
                    event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": token(i)}}),
                    )
                })
                .collect();
            let tail = vec![
                event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
                event(
                    "message_delta",
                    &json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": n}}),
                ),
                event("message_stop", &json!({"type": "message_stop"})),
            ];
            let cut = match fate {
                Fate::Cut(k) => Some(3 + k),
                _ => None,
            };
            sse_response(paced_body(pace(&cfg, head, tokens, tail), cut))
        })
    }
}
