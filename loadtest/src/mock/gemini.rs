//! Gemini mock: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` (SSE with `?alt=sse`, otherwise a JSON array).

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::llm::{Fate, LlmMockConfig, estimate_tokens, full_text, pace, paced_body, read_json, sse_response, token};
use super::{Handler, HandlerFuture, MockBody, MockError, MockHandle, json_response, serve};

pub struct MockGemini;

impl MockGemini {
    pub async fn spawn(cfg: LlmMockConfig) -> Result<MockHandle, MockError> {
        let (listen, tls) = (cfg.listen, cfg.tls.clone());
        serve(listen, tls, Arc::new(GeminiHandler { cfg: Arc::new(cfg) })).await
    }
}

struct GeminiHandler {
    cfg: Arc<LlmMockConfig>,
}

fn error(status: u16, state: &str, message: &str) -> Response<MockBody> {
    json_response(status, &json!({"error": {"code": status, "message": message, "status": state}}))
}

fn chunk(model: &str, text: &str, finish: Option<&str>, usage: Option<Value>) -> Value {
    let mut cand = json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
    if let Some(f) = finish {
        cand["finishReason"] = json!(f);
    }
    let mut v = json!({"candidates": [cand], "modelVersion": model});
    if let Some(u) = usage {
        v["usageMetadata"] = u;
    }
    v
}

impl Handler for GeminiHandler {
    fn handle(&self, req: Request<Incoming>) -> HandlerFuture {
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let sse = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
            let parsed = path.strip_prefix("/v1beta/models/").and_then(|rest| rest.split_once(':'));
            let (model, stream) = match parsed {
                Some((m, "generateContent")) => (m.to_string(), false),
                Some((m, "streamGenerateContent")) => (m.to_string(), true),
                _ => return error(404, "NOT_FOUND", &format!("Not found: {path}")),
            };
            if req.method() != Method::POST {
                return error(405, "INVALID_ARGUMENT", "use POST");
            }
            let Some(body) = read_json(req).await else {
                return error(400, "INVALID_ARGUMENT", "request body is not valid JSON");
            };
            let max = body.pointer("/generationConfig/maxOutputTokens").and_then(Value::as_u64);
            let n = cfg.output_tokens(max);
            let prompt = body.get("contents").map(estimate_tokens).unwrap_or(1);
            let usage =
                json!({"promptTokenCount": prompt, "candidatesTokenCount": n, "totalTokenCount": prompt + n as u64});
            let fate = cfg.draw_fate(stream, n);
            match fate {
                Fate::RateLimited => {
                    return error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (mock)");
                }
                Fate::ServerError => return error(500, "INTERNAL", "Internal error (mock)"),
                _ => {}
            }
            if !stream {
                tokio::time::sleep(cfg.total_delay(n)).await;
                return json_response(200, &chunk(&model, &full_text(n), Some("STOP"), Some(usage)));
            }
            let chunks: Vec<Value> = (0..n)
                .map(|i| {
                    let last = i + 1 == n;
                    chunk(&model, token(i), last.then_some("STOP"), last.then(|| usage.clone()))
                })
                .collect();
            if !sse {
                tokio::time::sleep(cfg.total_delay(n)).await;
                return json_response(200, &Value::Array(chunks));
            }
            let tokens = chunks.iter().map(|c| Bytes::from(format!("data: {c}\r\n\r\n"))).collect();
            let cut = match fate {
                Fate::Cut(k) => Some(k),
                _ => None,
            };
            sse_response(paced_body(pace(&cfg, vec![], tokens, vec![]), cut))
        })
    }
}
