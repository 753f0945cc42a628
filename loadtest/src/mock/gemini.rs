//! Gemini mock: `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent`
//! (SSE with `?alt=sse`, otherwise a JSON array), `:embedContent` and `:batchEmbedContents`
//! (also under `/v1/`). Tool calls are `functionCall` parts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::llm::{
    DeclaredTool, Fate, KeyVerdict, LlmMockConfig, LlmRequest, ToolCall, call_tool, embedding, estimate_tokens,
    full_text, pace, paced_body, sse_response, token, words_of,
};
use super::{Handler, HandlerFuture, MockBody, MockError, MockHandle, RequestLog, json_response, serve_logged};

pub struct MockGemini;

impl MockGemini {
    pub async fn spawn(cfg: LlmMockConfig) -> Result<MockHandle, MockError> {
        let (listen, tls) = (cfg.listen, cfg.tls.clone());
        let log = RequestLog::new(cfg.request_log_limit);
        let handler = GeminiHandler { cfg: Arc::new(cfg), ids: Arc::new(AtomicU64::new(0)), log: log.clone() };
        serve_logged(listen, tls, Arc::new(handler), log).await
    }
}

struct GeminiHandler {
    cfg: Arc<LlmMockConfig>,
    ids: Arc<AtomicU64>,
    log: RequestLog,
}

fn error(status: u16, state: &str, message: &str) -> Response<MockBody> {
    json_response(status, &json!({"error": {"code": status, "message": message, "status": state}}))
}

fn rate_limited(cfg: &LlmMockConfig) -> Response<MockBody> {
    let resp = json_response(
        429,
        &json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
            "message": "Resource has been exhausted (e.g. check quota).",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                         "retryDelay": format!("{}s", cfg.retry_after_secs)}]}}),
    );
    cfg.with_retry_after(resp)
}

fn status_error(cfg: &LlmMockConfig, status: u16) -> Response<MockBody> {
    let state = match status {
        429 => return rate_limited(cfg),
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        499 => "CANCELLED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    error(status, state, &format!("Mock status {status}"))
}

fn invalid_key() -> Response<MockBody> {
    json_response(
        400,
        &json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "API key not valid. Please pass a valid API key.",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                         "domain": "googleapis.com",
                         "metadata": {"service": "generativelanguage.googleapis.com"}}]}}),
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Generate,
    Stream,
    Embed,
    BatchEmbed,
}

fn route(path: &str) -> Option<(String, Op)> {
    let rest = path.strip_prefix("/v1beta/models/").or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.split_once(':')?;
    let op = match method {
        "generateContent" => Op::Generate,
        "streamGenerateContent" => Op::Stream,
        "embedContent" => Op::Embed,
        "batchEmbedContents" => Op::BatchEmbed,
        _ => return None,
    };
    Some((model.to_string(), op))
}

impl Handler for GeminiHandler {
    fn handle(&self, req: Request<Incoming>) -> HandlerFuture {
        let cfg = self.cfg.clone();
        let log = self.log.clone();
        let seq = self.ids.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let req = LlmRequest::read(req).await;
            let credential = req.header("x-goog-api-key").or_else(|| req.query_param("key"));
            req.record(&log, credential);
            let Some((model, op)) = route(&req.path) else {
                return error(404, "NOT_FOUND", &format!("Not found: {}", req.path));
            };
            if req.method != Method::POST {
                return error(405, "INVALID_ARGUMENT", "use POST");
            }
            match cfg.judge_key(credential) {
                KeyVerdict::Accepted => {}
                // Google answers a missing key with 403, not 401.
                KeyVerdict::Missing => {
                    return error(
                        403,
                        "PERMISSION_DENIED",
                        "Method doesn't allow unregistered callers (callers without established identity). Please \
                         use API Key or other form of API consumer identity to call this API.",
                    );
                }
                KeyVerdict::Invalid => return invalid_key(),
                KeyVerdict::RateLimited => return rate_limited(&cfg),
                KeyVerdict::Status(s) => return status_error(&cfg, s),
            }
            let Some(body) = req.body.as_ref() else {
                return error(400, "INVALID_ARGUMENT", "request body is not valid JSON");
            };
            match op {
                Op::Generate | Op::Stream => {
                    let sse = req.query_param("alt") == Some("sse");
                    generate(&cfg, &model, body, op == Op::Stream, sse, seq).await
                }
                Op::Embed | Op::BatchEmbed => embed(&cfg, body, op == Op::BatchEmbed).await,
            }
        })
    }
}

/// The function call a request gets: function declarations present, calling mode not NONE,
/// and the last turn not a `functionResponse` (which is answered in text).
fn tool_call(body: &Value) -> Option<ToolCall> {
    let tools: Vec<DeclaredTool<'_>> = body
        .get("tools")?
        .as_array()?
        .iter()
        .flat_map(|t| {
            let decls = t.get("functionDeclarations").or_else(|| t.get("function_declarations"));
            decls.and_then(Value::as_array).into_iter().flatten()
        })
        .filter_map(|d| {
            let schema = d.get("parameters").or_else(|| d.get("parametersJsonSchema"));
            Some(DeclaredTool { name: d.get("name")?.as_str()?, schema })
        })
        .collect();
    let calling = body.pointer("/toolConfig/functionCallingConfig");
    if calling.and_then(|c| c.get("mode")).and_then(Value::as_str) == Some("NONE") {
        return None;
    }
    let forced = calling
        .and_then(|c| c.get("allowedFunctionNames"))
        .and_then(Value::as_array)
        .and_then(|names| names.first())
        .and_then(Value::as_str);
    let last = body.get("contents")?.as_array()?.last()?;
    if last.get("role").and_then(Value::as_str).is_some_and(|r| r != "user") {
        return None;
    }
    let parts = last.get("parts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if parts.iter().any(|p| p.get("functionResponse").is_some()) {
        return None;
    }
    let text = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ");
    // Gemini function calls carry no id; the field is required by ToolCall only.
    call_tool(&tools, forced, String::new(), &words_of(Some(&text)))
}

fn candidate(parts: Value, finish: Option<&str>) -> Value {
    let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(f) = finish {
        cand["finishReason"] = json!(f);
    }
    cand
}

async fn generate(
    cfg: &LlmMockConfig,
    model: &str,
    body: &Value,
    stream: bool,
    sse: bool,
    seq: u64,
) -> Response<MockBody> {
    let call = tool_call(body);
    let max = body.pointer("/generationConfig/maxOutputTokens").and_then(Value::as_u64);
    let n = call.as_ref().map_or_else(|| cfg.output_tokens(max), |c| c.pieces().len());
    let prompt = body.get("contents").map(estimate_tokens).unwrap_or(1);
    let cached = cfg.cached_of(prompt);
    let response_id = format!("mock-{seq}");
    // Gemini puts usageMetadata on every chunk, candidatesTokenCount counting up; clients
    // must take the last one rather than add them.
    let with_usage = |mut v: Value, output: usize| {
        if !cfg.omit_usage {
            let mut u = json!({"promptTokenCount": prompt, "candidatesTokenCount": output,
                "totalTokenCount": prompt + output as u64,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]});
            if cached > 0 {
                u["cachedContentTokenCount"] = json!(cached);
            }
            v["usageMetadata"] = u;
        }
        v["modelVersion"] = json!(model);
        v["responseId"] = json!(response_id);
        v
    };
    let fate = cfg.draw_fate(stream && call.is_none(), n);
    match fate {
        Fate::RateLimited => return rate_limited(cfg),
        Fate::ServerError => return status_error(cfg, 500),
        _ => {}
    }
    let chunks: Vec<Value> = match &call {
        // A function call arrives whole, in one part, even when streaming.
        Some(c) => {
            let part = json!([{"functionCall": {"name": c.name, "args": c.arguments}}]);
            vec![with_usage(json!({"candidates": [candidate(part, Some("STOP"))]}), n)]
        }
        None if !stream => {
            vec![with_usage(json!({"candidates": [candidate(json!([{"text": full_text(n)}]), Some("STOP"))]}), n)]
        }
        None => (0..n)
            .map(|i| {
                let last = i + 1 == n;
                let cand = candidate(json!([{"text": token(i)}]), last.then_some("STOP"));
                with_usage(json!({"candidates": [cand]}), i + 1)
            })
            .collect(),
    };
    if !stream || !sse {
        tokio::time::sleep(cfg.total_delay(n)).await;
        let v = if stream { Value::Array(chunks) } else { chunks.into_iter().next().unwrap_or_default() };
        return json_response(200, &v);
    }
    let tokens = chunks.iter().map(|c| Bytes::from(format!("data: {c}\r\n\r\n"))).collect();
    let cut = match fate {
        Fate::Cut(k) => Some(k),
        _ => None,
    };
    sse_response(paced_body(pace(cfg, vec![], tokens, vec![]), cut))
}

fn text_of(content: Option<&Value>) -> String {
    let parts = content.and_then(|c| c.get("parts")).and_then(Value::as_array);
    parts.into_iter().flatten().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
}

async fn embed(cfg: &LlmMockConfig, body: &Value, batch: bool) -> Response<MockBody> {
    let one = |req: &Value| {
        let dims =
            req.get("outputDimensionality").and_then(Value::as_u64).map_or(cfg.embedding_dimensions, |d| d as usize);
        json!({"values": embedding(&text_of(req.get("content")), dims)})
    };
    let v = if batch {
        let Some(requests) = body.get("requests").and_then(Value::as_array).filter(|r| !r.is_empty()) else {
            return error(400, "INVALID_ARGUMENT", "* BatchEmbedContentsRequest.requests: requests is required");
        };
        json!({"embeddings": requests.iter().map(one).collect::<Vec<_>>()})
    } else {
        if body.get("content").is_none() {
            return error(400, "INVALID_ARGUMENT", "* EmbedContentRequest.content: contents is not specified");
        }
        json!({"embedding": one(body)})
    };
    match cfg.draw_fate(false, 0) {
        Fate::RateLimited => return rate_limited(cfg),
        Fate::ServerError => return status_error(cfg, 500),
        _ => {}
    }
    cfg.ttft.wait().await;
    json_response(200, &v)
}
