//! OpenAI Chat Completions mock (`POST /v1/chat/completions`, `GET /v1/models`), including
//! SSE streaming with `stream_options.include_usage` and `data: [DONE]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::llm::{
    Fate, LlmMockConfig, estimate_tokens, full_text, pace, paced_body, read_json, sse_response, token, unix_now,
};
use super::{Handler, HandlerFuture, MockBody, MockError, MockHandle, json_response, serve};

pub struct MockOpenAi;

impl MockOpenAi {
    pub async fn spawn(cfg: LlmMockConfig) -> Result<MockHandle, MockError> {
        let (listen, tls) = (cfg.listen, cfg.tls.clone());
        serve(listen, tls, Arc::new(OpenAiHandler { cfg: Arc::new(cfg), ids: Arc::new(AtomicU64::new(0)) })).await
    }
}

struct OpenAiHandler {
    cfg: Arc<LlmMockConfig>,
    ids: Arc<AtomicU64>,
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> Response<MockBody> {
    let mut resp =
        json_response(status, &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}));
    if status == 429 {
        resp.headers_mut().insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    }
    resp
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

impl Handler for OpenAiHandler {
    fn handle(&self, req: Request<Incoming>) -> HandlerFuture {
        let cfg = self.cfg.clone();
        let id = format!("chatcmpl-mock-{}", self.ids.fetch_add(1, Ordering::Relaxed));
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if req.method() == Method::GET && path == "/v1/models" {
                return json_response(
                    200,
                    &json!({"object": "list", "data": [{"id": "mock-gpt", "object": "model", "created": 0, "owned_by": "tollgate-mock"}]}),
                );
            }
            if req.method() != Method::POST || path != "/v1/chat/completions" {
                return error(404, "invalid_request_error", "unknown_url", &format!("Unknown request URL: {path}"));
            }
            let Some(body) = read_json(req).await else {
                return error(400, "invalid_request_error", "invalid_json", "request body is not valid JSON");
            };
            let model = body.get("model").and_then(Value::as_str).unwrap_or("mock-gpt").to_string();
            let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
            let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
            let max = body.get("max_completion_tokens").or_else(|| body.get("max_tokens")).and_then(Value::as_u64);
            let n = cfg.output_tokens(max);
            let prompt = body.get("messages").map(estimate_tokens).unwrap_or(1);
            let usage = json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n as u64});
            let created = unix_now();
            let fate = cfg.draw_fate(stream, n);
            match fate {
                Fate::RateLimited => {
                    return error(429, "requests", "rate_limit_exceeded", "Rate limit reached (mock)");
                }
                Fate::ServerError => {
                    return error(500, "server_error", "internal_error", "The server had an error (mock)");
                }
                _ => {}
            }
            if !stream {
                tokio::time::sleep(cfg.total_delay(n)).await;
                return json_response(
                    200,
                    &json!({
                        "id": id, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": full_text(n), "refusal": null},
                                     "logprobs": null, "finish_reason": "stop"}],
                        "usage": usage, "system_fingerprint": "fp_mock"
                    }),
                );
            }
            let chunk = |delta: Value, finish: Value| {
                let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "fp_mock",
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
                if include_usage {
                    v["usage"] = Value::Null;
                }
                data(&v)
            };
            let head = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
            let tokens = (0..n).map(|i| chunk(json!({"content": token(i)}), Value::Null)).collect();
            let mut tail = vec![chunk(json!({}), json!("stop"))];
            if include_usage {
                tail.push(data(
                    &json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "fp_mock", "choices": [], "usage": usage}),
                ));
            }
            tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
            let cut = match fate {
                Fate::Cut(k) => Some(1 + k),
                _ => None,
            };
            sse_response(paced_body(pace(&cfg, head, tokens, tail), cut))
        })
    }
}
