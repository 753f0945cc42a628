//! OpenAI mock: `POST /v1/chat/completions` (JSON, or SSE with `stream_options.include_usage`
//! and `data: [DONE]`), `POST /v1/embeddings`, `GET /v1/models`, and the Azure OpenAI paths
//! `POST /openai/deployments/{deployment}/chat/completions|embeddings?api-version=...`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::llm::{
    DeclaredTool, Fate, KeyVerdict, LlmMockConfig, LlmRequest, ToolCall, call_tool, embedding, estimate_tokens,
    full_text, pace, paced_body, sse_response, text_tokens, token, unix_now, words_of,
};
use super::{
    Handler, HandlerFuture, MockBody, MockError, MockHandle, RequestLog, json_response, json_text_response,
    serve_logged,
};

pub struct MockOpenAi;

impl MockOpenAi {
    pub async fn spawn(cfg: LlmMockConfig) -> Result<MockHandle, MockError> {
        let (listen, tls) = (cfg.listen, cfg.tls.clone());
        let log = RequestLog::new(cfg.request_log_limit);
        let handler = OpenAiHandler { cfg: Arc::new(cfg), ids: Arc::new(AtomicU64::new(0)), log: log.clone() };
        serve_logged(listen, tls, Arc::new(handler), log).await
    }
}

struct OpenAiHandler {
    cfg: Arc<LlmMockConfig>,
    ids: Arc<AtomicU64>,
    log: RequestLog,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Models,
    Chat,
    Embeddings,
}

/// Where a request came in: OpenAI's own API or an Azure deployment.
#[derive(Debug, Clone, PartialEq)]
enum Api {
    OpenAi,
    Azure { deployment: String },
}

fn route(method: &Method, path: &str) -> Option<(Op, Api)> {
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (deployment, op) = rest.split_once('/')?;
        let op = match op {
            "chat/completions" => Op::Chat,
            "embeddings" => Op::Embeddings,
            _ => return None,
        };
        return (*method == Method::POST && !deployment.is_empty())
            .then(|| (op, Api::Azure { deployment: deployment.to_string() }));
    }
    match (method, path) {
        (&Method::GET, "/v1/models") => Some((Op::Models, Api::OpenAi)),
        (&Method::POST, "/v1/chat/completions") => Some((Op::Chat, Api::OpenAi)),
        (&Method::POST, "/v1/embeddings") => Some((Op::Embeddings, Api::OpenAi)),
        _ => None,
    }
}

fn error(status: u16, kind: &str, code: Option<&str>, message: &str) -> Response<MockBody> {
    json_response(status, &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

/// Errors Azure's front door produces itself (auth, routing, throttling) have their own shape;
/// errors from the model server behind it are OpenAI's.
fn azure_error(status: u16, code: &str, message: &str) -> Response<MockBody> {
    json_response(status, &json!({"error": {"code": code, "message": message}}))
}

fn rate_limited(cfg: &LlmMockConfig, api: &Api, model: &str) -> Response<MockBody> {
    let resp = match api {
        Api::OpenAi => {
            let mut resp = error(
                429,
                "requests",
                Some("rate_limit_exceeded"),
                &format!(
                    "Rate limit reached for {model} in organization org-mock on requests per min (RPM): Limit 3, \
                     Used 3, Requested 1. Please try again in {}s. Visit https://platform.openai.com/account/rate-limits \
                     to learn more.",
                    cfg.retry_after_secs
                ),
            );
            let h = resp.headers_mut();
            h.insert("x-ratelimit-limit-requests", HeaderValue::from_static("3"));
            h.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("0"));
            h.insert("x-ratelimit-reset-requests", HeaderValue::from(cfg.retry_after_secs));
            resp
        }
        Api::Azure { .. } => azure_error(
            429,
            "429",
            &format!(
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have \
                 exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after {} seconds.",
                cfg.retry_after_secs
            ),
        ),
    };
    cfg.with_retry_after(resp)
}

fn status_error(cfg: &LlmMockConfig, api: &Api, model: &str, status: u16) -> Response<MockBody> {
    match status {
        429 => rate_limited(cfg, api, model),
        400 => error(400, "invalid_request_error", None, "Invalid request (mock)"),
        401 => unauthorized(api, true),
        403 => error(403, "invalid_request_error", Some("unsupported_country_region_territory"), "Forbidden (mock)"),
        404 => error(404, "invalid_request_error", Some("model_not_found"), "The model does not exist (mock)"),
        s if s >= 500 => error(s, "server_error", None, "The server had an error while processing your request (mock)"),
        s => error(s, "invalid_request_error", None, &format!("Mock status {s}")),
    }
}

fn unauthorized(api: &Api, present: bool) -> Response<MockBody> {
    match (api, present) {
        (Api::Azure { .. }, _) => azure_error(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key \
             for an active subscription and use a correct regional API endpoint for your resource.",
        ),
        (Api::OpenAi, false) => error(
            401,
            "invalid_request_error",
            None,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using \
             Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        ),
        (Api::OpenAi, true) => error(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        ),
    }
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// `v` written out with `extra` (raw JSON members) first in it.
fn with_extra(v: &Value, extra: Option<&str>) -> String {
    let json = v.to_string();
    match (extra, json.strip_prefix('{')) {
        (Some(extra), Some("}")) => format!("{{{extra}}}"),
        (Some(extra), Some(rest)) => format!("{{{extra},{rest}"),
        _ => json,
    }
}

fn no_content_filter() -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe})
}

impl Handler for OpenAiHandler {
    fn handle(&self, req: Request<Incoming>) -> HandlerFuture {
        let cfg = self.cfg.clone();
        let log = self.log.clone();
        let seq = self.ids.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let req = LlmRequest::read(req).await;
            let routed = route(&req.method, &req.path);
            let credential = match &routed {
                Some((_, Api::Azure { .. })) => req.header("api-key").or_else(|| req.bearer()),
                _ => req.bearer(),
            };
            req.record(&log, credential);
            let Some((op, api)) = routed else {
                if req.path.starts_with("/openai/") {
                    return azure_error(404, "404", "Resource not found");
                }
                let msg = format!("Unknown request URL: {} {}. Please check the URL for typos.", req.method, req.path);
                return error(404, "invalid_request_error", Some("unknown_url"), &msg);
            };
            // Azure routes on api-version before it looks at credentials.
            if matches!(api, Api::Azure { .. }) && req.query_param("api-version").is_none_or(str::is_empty) {
                return azure_error(404, "404", "Resource not found");
            }
            let body_model = req.body.as_ref().and_then(|b| b.get("model")).and_then(Value::as_str);
            let model = match &api {
                Api::OpenAi => body_model.unwrap_or("mock-gpt").to_string(),
                Api::Azure { deployment } => match cfg.azure_model(deployment) {
                    Some(m) => m,
                    None => {
                        return azure_error(
                            404,
                            "DeploymentNotFound",
                            "The API deployment for this resource does not exist. If you created the deployment \
                             within the last 5 minutes, please wait a moment and try again.",
                        );
                    }
                },
            };
            match cfg.judge_key(credential) {
                KeyVerdict::Accepted => {}
                KeyVerdict::Missing => return unauthorized(&api, false),
                KeyVerdict::Invalid => return unauthorized(&api, true),
                KeyVerdict::RateLimited => return rate_limited(&cfg, &api, &model),
                KeyVerdict::Status(s) => return status_error(&cfg, &api, &model, s),
            }
            if op == Op::Models {
                return json_response(
                    200,
                    &json!({"object": "list", "data": [{"id": "mock-gpt", "object": "model", "created": 0, "owned_by": "tollgate-mock"}]}),
                );
            }
            let Some(body) = req.body else {
                return error(400, "invalid_request_error", None, "We could not parse the JSON body of your request.");
            };
            let ctx = Ctx { cfg, api, model, seq };
            match op {
                Op::Embeddings => ctx.embeddings(&body).await,
                _ => ctx.chat(&body).await,
            }
        })
    }
}

struct Ctx {
    cfg: Arc<LlmMockConfig>,
    api: Api,
    model: String,
    seq: u64,
}

/// The tool call a chat request gets: tools declared, `tool_choice` not "none", and the
/// last message the user's (after a `tool` message the model answers in text).
fn chat_tool_call(body: &Value, id: String) -> Option<ToolCall> {
    let tools: Vec<DeclaredTool<'_>> = body
        .get("tools")?
        .as_array()?
        .iter()
        .filter_map(|t| {
            let f = t.get("function")?;
            Some(DeclaredTool { name: f.get("name")?.as_str()?, schema: f.get("parameters") })
        })
        .collect();
    let forced = match body.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => return None,
        Some(choice) => choice.pointer("/function/name").and_then(Value::as_str),
        None => None,
    };
    let last = body.get("messages")?.as_array()?.last()?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let text = match last.get("content") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(parts)) => {
            Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" "))
        }
        _ => None,
    };
    call_tool(&tools, forced, id, &words_of(text.as_deref()))
}

impl Ctx {
    fn fail(&self, fate: Fate) -> Option<Response<MockBody>> {
        match fate {
            Fate::RateLimited => Some(rate_limited(&self.cfg, &self.api, &self.model)),
            Fate::ServerError => Some(status_error(&self.cfg, &self.api, &self.model, 500)),
            _ => None,
        }
    }

    fn usage(&self, prompt: u64, completion: u64) -> Value {
        json!({
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.cfg.cached_of(prompt), "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        })
    }

    async fn chat(&self, body: &Value) -> Response<MockBody> {
        let cfg = &self.cfg;
        let id = format!("chatcmpl-mock-{}", self.seq);
        let model = self.model.as_str();
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
        let max = body.get("max_completion_tokens").or_else(|| body.get("max_tokens")).and_then(Value::as_u64);
        let call = chat_tool_call(body, format!("call_mock{:016}", self.seq));
        let pieces = call.as_ref().map(ToolCall::pieces);
        let n = pieces.as_ref().map_or_else(|| cfg.output_tokens(max), Vec::len);
        let prompt = body.get("messages").map(estimate_tokens).unwrap_or(1);
        let usage = self.usage(prompt, n as u64);
        let created = unix_now();
        let fate = cfg.draw_fate(stream, n);
        if let Some(resp) = self.fail(fate) {
            return resp;
        }
        let azure = matches!(self.api, Api::Azure { .. });
        if !stream {
            tokio::time::sleep(cfg.total_delay(n)).await;
            let (message, finish) = match &call {
                Some(c) => (
                    json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                        "id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments.to_string()}}]}),
                    "tool_calls",
                ),
                None => (json!({"role": "assistant", "content": full_text(n), "refusal": null}), "stop"),
            };
            let mut v = json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                "system_fingerprint": "fp_mock"
            });
            if !cfg.omit_usage {
                v["usage"] = usage;
            }
            if azure {
                v["prompt_filter_results"] =
                    json!([{"prompt_index": 0, "content_filter_results": no_content_filter()}]);
                v["choices"][0]["content_filter_results"] = no_content_filter();
            }
            return json_text_response(200, with_extra(&v, cfg.answer_extra.as_deref()));
        }
        let with_usage = include_usage && !cfg.omit_usage;
        let chunk = |delta: Value, finish: Value| {
            let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
            if with_usage {
                v["usage"] = Value::Null;
            }
            Bytes::from(format!("data: {}\n\n", with_extra(&v, cfg.answer_extra.as_deref())))
        };
        let mut head = Vec::new();
        if azure {
            // Azure opens a stream with a chunk that has no choices, only the prompt's filter results.
            head.push(data(&json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": no_content_filter()}]})));
        }
        let (tokens, finish): (Vec<Bytes>, &str) = match (&call, pieces) {
            (Some(c), Some(pieces)) => {
                head.push(chunk(
                    json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{"index": 0,
                        "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}]}),
                    Value::Null,
                ));
                let tokens = pieces
                    .iter()
                    .map(|p| chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}), Value::Null))
                    .collect();
                (tokens, "tool_calls")
            }
            _ => {
                head.push(chunk(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null));
                ((0..n).map(|i| chunk(json!({"content": token(i)}), Value::Null)).collect(), "stop")
            }
        };
        let mut tail = vec![chunk(json!({}), json!(finish))];
        if with_usage {
            tail.push(data(&json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "fp_mock", "choices": [], "usage": usage})));
        }
        tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let cut = match fate {
            Fate::Cut(k) => Some(head.len() + k),
            _ => None,
        };
        sse_response(paced_body(pace(cfg, head, tokens, tail), cut))
    }

    async fn embeddings(&self, body: &Value) -> Response<MockBody> {
        // `input` is a string, a list of strings, a list of token ids or a list of those lists.
        let inputs: Vec<(String, u64)> = match body.get("input") {
            Some(Value::String(s)) => vec![(s.clone(), text_tokens(s))],
            Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_number) => {
                vec![(Value::Array(items.clone()).to_string(), items.len() as u64)]
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => (s.clone(), text_tokens(s)),
                    other => (other.to_string(), other.as_array().map_or(1, |a| a.len() as u64)),
                })
                .collect(),
            _ => Vec::new(),
        };
        if inputs.is_empty() || inputs.iter().any(|(s, _)| s.is_empty()) {
            return error(400, "invalid_request_error", None, "'$.input' is invalid. Please check the API reference.");
        }
        if let Some(resp) = self.fail(self.cfg.draw_fate(false, 0)) {
            return resp;
        }
        let dims = body.get("dimensions").and_then(Value::as_u64).map_or(self.cfg.embedding_dimensions, |d| d as usize);
        let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, (text, _))| {
                let values = embedding(text, dims);
                let encoded = if base64 {
                    // The SDKs' default: little-endian f32s, base64-encoded.
                    let bytes: Vec<u8> = values.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(values)
                };
                json!({"object": "embedding", "index": i, "embedding": encoded})
            })
            .collect();
        let tokens: u64 = inputs.iter().map(|(_, t)| t).sum();
        self.cfg.ttft.wait().await;
        let mut v = json!({"object": "list", "data": data, "model": self.model});
        if !self.cfg.omit_usage {
            v["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
        }
        json_response(200, &v)
    }
}
