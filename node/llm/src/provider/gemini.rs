//! Google Gemini API (`generateContent`, `streamGenerateContent?alt=sse`, `batchEmbedContents`).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::anthropic::parse_arguments;
use super::{
    EventDecoder, ProviderAdapter, ProviderKind, SseStream, StreamDecoder, UpstreamTarget, join_url, new_completion_id,
    post_json, to_json_body, unix_now,
};
use crate::error::{AdapterError, ErrorKind, ProviderError, classify, error_object};
use crate::types::{
    ChatChunk, ChatMessage, ChatRequest, ChatResponse, Choice, ContentPart, Delta, Embedding, EmbeddingVector,
    EmbeddingsInput, EmbeddingsRequest, EmbeddingsResponse, FunctionCall, FunctionCallDelta, MessageContent, Role,
    ToolCall, ToolCallDelta, ToolChoice, Usage,
};

const SYSTEM: &str = "gcp.gemini";

pub struct GeminiAdapter;

/// `/v1beta/models/{model}:{method}`; the model may be configured with or without `models/`.
fn model_url(target: &UpstreamTarget<'_>, method: &str) -> Result<String, AdapterError> {
    let model = target.model.strip_prefix("models/").unwrap_or(target.model);
    if model.is_empty() || model.contains(['/', '?', '#', ':', ' ']) {
        return Err(AdapterError::InvalidTarget(format!("Gemini model id {model:?} must be a plain non-empty name")));
    }
    Ok(join_url(target.base_url, &format!("/v1beta/models/{model}:{method}")))
}

impl ProviderAdapter for GeminiAdapter {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gemini
    }

    fn system(&self) -> &'static str {
        SYSTEM
    }

    fn chat_request(
        &self,
        req: &ChatRequest,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        let method = if req.is_stream() { "streamGenerateContent?alt=sse" } else { "generateContent" };
        let body = to_json_body(&generate_content_body(req)?)?;
        post_json(&model_url(target, method)?, &[("x-goog-api-key", target.api_key)], target, req.is_stream(), body)
    }

    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, AdapterError> {
        let resp: Value =
            serde_json::from_slice(body).map_err(|e| AdapterError::bad_payload(SYSTEM, format!("response: {e}")))?;
        let candidates = resp.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let mut choices = Vec::new();
        for (i, cand) in candidates.iter().enumerate() {
            let index = cand.get("index").and_then(Value::as_u64).unwrap_or(i as u64) as u32;
            let (text, calls) = read_parts(cand);
            let finish = cand.get("finishReason").and_then(Value::as_str).map(|r| finish_reason(r, !calls.is_empty()));
            let calls: Vec<ToolCall> = calls
                .into_iter()
                .enumerate()
                .map(|(n, (id, name, args))| ToolCall {
                    id: id.unwrap_or_else(|| format!("call_{n}")),
                    kind: "function".into(),
                    function: FunctionCall { name, arguments: args },
                })
                .collect();
            let message = ChatMessage {
                role: Role::Assistant,
                content: (!text.is_empty() || calls.is_empty()).then_some(MessageContent::Text(text)),
                name: None,
                tool_calls: (!calls.is_empty()).then_some(calls),
                tool_call_id: None,
                extra: Map::new(),
            };
            choices.push(Choice { index, message, logprobs: None, finish_reason: finish, extra: Map::new() });
        }
        if choices.is_empty() && resp.pointer("/promptFeedback/blockReason").is_some() {
            choices.push(Choice {
                index: 0,
                message: ChatMessage::new(Role::Assistant, ""),
                logprobs: None,
                finish_reason: Some("content_filter".into()),
                extra: Map::new(),
            });
        }
        Ok(ChatResponse {
            id: resp.get("responseId").and_then(Value::as_str).map_or_else(new_completion_id, str::to_owned),
            object: "chat.completion".into(),
            created: unix_now(),
            model: resp.get("modelVersion").and_then(Value::as_str).unwrap_or_default().to_owned(),
            choices,
            usage: resp.get("usageMetadata").map(usage),
            extra: Map::new(),
        })
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        SseStream::boxed(
            SYSTEM,
            GeminiStreamDecoder {
                id: new_completion_id(),
                created: unix_now(),
                model: String::new(),
                candidates: HashMap::new(),
                usage: None,
                finish_reason: None,
                text: String::new(),
                emitted_usage: false,
            },
        )
    }

    fn embeddings_request(
        &self,
        req: &EmbeddingsRequest,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        let texts = match &req.input {
            EmbeddingsInput::One(s) => vec![s.clone()],
            EmbeddingsInput::Many(v) => v.clone(),
            EmbeddingsInput::Tokens(_) | EmbeddingsInput::TokenBatches(_) => {
                return Err(AdapterError::Unsupported {
                    provider: SYSTEM,
                    feature: "token-array embedding input".into(),
                    hint: "send the input as text",
                });
            }
        };
        let model = format!("models/{}", target.model.strip_prefix("models/").unwrap_or(target.model));
        let requests: Vec<Value> = texts
            .into_iter()
            .map(|text| {
                let mut r = json!({"model": model, "content": {"parts": [{"text": text}]}});
                if let Some(d) = req.dimensions {
                    r["outputDimensionality"] = d.into();
                }
                r
            })
            .collect();
        let body = to_json_body(&json!({ "requests": requests }))?;
        post_json(&model_url(target, "batchEmbedContents")?, &[("x-goog-api-key", target.api_key)], target, false, body)
    }

    fn embeddings_response(&self, body: &[u8]) -> Result<EmbeddingsResponse, AdapterError> {
        let resp: Value =
            serde_json::from_slice(body).map_err(|e| AdapterError::bad_payload(SYSTEM, format!("embeddings: {e}")))?;
        let embeddings = resp
            .get("embeddings")
            .and_then(Value::as_array)
            .ok_or_else(|| AdapterError::bad_payload(SYSTEM, "embeddings response has no \"embeddings\" array"))?;
        let data = embeddings
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let values = e.get("values").and_then(Value::as_array).ok_or_else(|| {
                    AdapterError::bad_payload(SYSTEM, format!("embedding {i} has no \"values\" array"))
                })?;
                Ok(Embedding {
                    object: "embedding".into(),
                    index: i as u32,
                    embedding: EmbeddingVector::Float(values.iter().filter_map(Value::as_f64).collect()),
                })
            })
            .collect::<Result<Vec<_>, AdapterError>>()?;
        Ok(EmbeddingsResponse { object: "list".into(), data, model: String::new(), usage: None, extra: Map::new() })
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        let error = error_object(body);
        let message = error.as_ref().and_then(|e| e.get("message")).and_then(Value::as_str).map(str::to_owned);
        let details = error.as_ref().and_then(|e| e.get("details")).and_then(Value::as_array);
        let detail = |key: &str| details.into_iter().flatten().find_map(|d| d.get(key).and_then(Value::as_str));
        // Gemini answers a bad key with 400 INVALID_ARGUMENT; only the detail reason tells.
        let hint = if detail("reason") == Some("API_KEY_INVALID") {
            Some(ErrorKind::Authentication)
        } else {
            error.as_ref().and_then(|e| e.get("status")).and_then(Value::as_str).and_then(kind_from_status)
        };
        let mut err = classify(status, headers, body, message, hint);
        if err.retry_after.is_none() {
            err.retry_after = detail("retryDelay").and_then(parse_duration);
        }
        err
    }
}

fn kind_from_status(status: &str) -> Option<ErrorKind> {
    Some(match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => ErrorKind::InvalidRequest,
        "UNAUTHENTICATED" => ErrorKind::Authentication,
        "PERMISSION_DENIED" => ErrorKind::PermissionDenied,
        "NOT_FOUND" => ErrorKind::NotFound,
        "RESOURCE_EXHAUSTED" => ErrorKind::RateLimited,
        "UNAVAILABLE" => ErrorKind::Unavailable,
        "DEADLINE_EXCEEDED" => ErrorKind::Timeout,
        "INTERNAL" | "UNKNOWN" => ErrorKind::Server,
        _ => return None,
    })
}

/// Protobuf JSON durations: "36s", "0.5s".
fn parse_duration(s: &str) -> Option<Duration> {
    s.strip_suffix('s')?.parse::<f64>().ok().filter(|v| *v >= 0.0 && v.is_finite()).map(Duration::from_secs_f64)
}

fn finish_reason(reason: &str, has_calls: bool) -> String {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => "content_filter",
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
    .to_owned()
}

fn usage(meta: &Value) -> Usage {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64);
    // Thinking tokens are billed as output, so they count as completion tokens.
    let completion = n("candidatesTokenCount").unwrap_or(0) + n("thoughtsTokenCount").unwrap_or(0);
    Usage::new(n("promptTokenCount").unwrap_or(0), completion, n("cachedContentTokenCount"))
}

type Call = (Option<String>, String, String);

/// Text (thought summaries excluded) and function calls `(id, name, JSON args)` of a candidate.
fn read_parts(candidate: &Value) -> (String, Vec<Call>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    let parts = candidate.pointer("/content/parts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for part in parts {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            calls.push((
                call.get("id").and_then(Value::as_str).map(str::to_owned),
                call.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                call.get("args").map_or_else(|| "{}".to_owned(), Value::to_string),
            ));
        }
    }
    (text, calls)
}

// === request translation ===

pub(crate) fn generate_content_body(req: &ChatRequest) -> Result<Value, AdapterError> {
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Gemini's functionResponse names the function, OpenAI's tool message only the call id.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for m in &req.messages {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                system.push(json!({"text": m.text()}));
                continue;
            }
            Role::User => ("user", user_parts(m.content.as_ref())?),
            Role::Assistant => {
                let mut parts = Vec::new();
                let text = m.text();
                if !text.is_empty() {
                    parts.push(json!({"text": text}));
                }
                for call in m.tool_calls.iter().flatten() {
                    call_names.insert(&call.id, &call.function.name);
                    let args = parse_arguments(&call.function.arguments)?;
                    parts.push(json!({"functionCall": {"name": call.function.name, "args": args}}));
                }
                ("model", parts)
            }
            Role::Tool => {
                let name = m
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| call_names.get(id).copied())
                    .or(m.name.as_deref())
                    .ok_or_else(|| {
                    AdapterError::InvalidRequest(
                        "a tool message must answer a tool_call_id of an earlier assistant tool call".into(),
                    )
                })?;
                let text = m.text();
                // Gemini wants an object; its docs name "output" as the key for a plain result.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => json!({"output": text}),
                };
                ("user", vec![json!({"functionResponse": {"name": name, "response": response}})])
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => contents.push((role, parts)),
        }
    }

    let mut body = Map::new();
    body.insert(
        "contents".into(),
        contents.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect(),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    let config = generation_config(req);
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = &req.tools {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.function.name});
                if let Some(desc) = &t.function.description {
                    d["description"] = desc.clone().into();
                }
                if let Some(p) = &t.function.parameters {
                    d["parameters"] = gemini_schema(p);
                }
                d
            })
            .collect();
        body.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
    }
    if let Some(choice) = &req.tool_choice {
        let config = match choice {
            ToolChoice::Mode(m) if m == "required" => json!({"mode": "ANY"}),
            ToolChoice::Mode(m) if m == "none" => json!({"mode": "NONE"}),
            ToolChoice::Mode(_) => json!({"mode": "AUTO"}),
            ToolChoice::Named(n) => json!({"mode": "ANY", "allowedFunctionNames": [n.function.name]}),
        };
        body.insert("toolConfig".into(), json!({ "functionCallingConfig": config }));
    }
    Ok(Value::Object(body))
}

fn generation_config(req: &ChatRequest) -> Map<String, Value> {
    let mut c = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            c.insert(k.to_owned(), v);
        }
    };
    put("maxOutputTokens", req.output_limit().map(Value::from));
    put("temperature", req.temperature.map(Value::from));
    put("topP", req.top_p.map(Value::from));
    let stops = req.stop_sequences();
    put("stopSequences", (!stops.is_empty()).then(|| Value::from(stops)));
    put("candidateCount", req.n.map(Value::from));
    put("presencePenalty", req.presence_penalty.map(Value::from));
    put("frequencyPenalty", req.frequency_penalty.map(Value::from));
    put("seed", req.seed.map(Value::from));
    if let Some(format) = &req.response_format {
        match format.kind.as_str() {
            "json_object" => put("responseMimeType", Some("application/json".into())),
            "json_schema" => {
                put("responseMimeType", Some("application/json".into()));
                put("responseSchema", format.json_schema.as_ref().and_then(|s| s.schema.as_ref()).map(gemini_schema));
            }
            _ => {}
        }
    }
    c
}

/// Gemini's schema is an OpenAPI subset that rejects `additionalProperties` and `$schema`, which
/// OpenAI strict-mode schemas always carry.
fn gemini_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| *k != "additionalProperties" && *k != "$schema")
                .map(|(k, v)| (k.clone(), gemini_schema(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(gemini_schema).collect()),
        v => v.clone(),
    }
}

fn user_parts(content: Option<&MessageContent>) -> Result<Vec<Value>, AdapterError> {
    let Some(content) = content else { return Ok(Vec::new()) };
    content.parts().iter().map(part).collect()
}

fn part(p: &ContentPart) -> Result<Value, AdapterError> {
    match (p.kind.as_str(), &p.text, &p.image_url) {
        ("text", Some(text), _) => Ok(json!({"text": text})),
        ("image_url", _, Some(image)) => Ok(image_part(&image.url)),
        (kind, _, _) => Err(AdapterError::Unsupported {
            provider: SYSTEM,
            feature: format!("content part type {kind:?}"),
            hint: "send text and image_url parts only",
        }),
    }
}

fn image_part(url: &str) -> Value {
    if let Some((mime, data)) = url.strip_prefix("data:").and_then(|r| r.split_once(";base64,")) {
        return json!({"inlineData": {"mimeType": mime, "data": data}});
    }
    let lower = url.to_ascii_lowercase();
    let path = lower.split(['?', '#']).next().unwrap_or_default();
    let mime = match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        _ => "image/jpeg",
    };
    json!({"fileData": {"mimeType": mime, "fileUri": url}})
}

// === streaming ===

#[derive(Default)]
struct CandidateState {
    started: bool,
    tool_calls: u32,
    finished: bool,
}

/// Each SSE event is a whole GenerateContentResponse; the stream has no `[DONE]`, it ends after
/// the candidates' `finishReason`.
struct GeminiStreamDecoder {
    id: String,
    created: u64,
    model: String,
    candidates: HashMap<u32, CandidateState>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    text: String,
    emitted_usage: bool,
}

impl GeminiStreamDecoder {
    fn done(&self) -> bool {
        !self.candidates.is_empty() && self.candidates.values().all(|c| c.finished)
    }

    fn event(&mut self, data: &str, out: &mut Vec<ChatChunk>) -> Result<(), AdapterError> {
        let resp: Value =
            serde_json::from_str(data).map_err(|e| AdapterError::bad_payload(SYSTEM, format!("stream event: {e}")))?;
        if resp.get("error").is_some() {
            let error = GeminiAdapter.error(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new(), data.as_bytes());
            return Err(AdapterError::UpstreamStream { provider: SYSTEM, error });
        }
        if let Some(id) = resp.get("responseId").and_then(Value::as_str) {
            self.id = id.to_owned();
        }
        if let Some(model) = resp.get("modelVersion").and_then(Value::as_str) {
            self.model = model.to_owned();
        }
        if let Some(meta) = resp.get("usageMetadata") {
            self.usage = Some(usage(meta));
        }
        let candidates = resp.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if candidates.is_empty() && resp.pointer("/promptFeedback/blockReason").is_some() {
            let state = self.candidates.entry(0).or_default();
            state.finished = true;
            self.finish_reason = Some("content_filter".into());
            out.push(self.chunk().with_choice(0, Delta::default(), self.finish_reason.clone()));
        }
        for (i, cand) in candidates.iter().enumerate() {
            let index = cand.get("index").and_then(Value::as_u64).unwrap_or(i as u64) as u32;
            let (text, calls) = read_parts(cand);
            let chunk = self.chunk();
            let state = self.candidates.entry(index).or_default();
            let role = (!state.started).then_some(Role::Assistant);
            state.started = true;
            if role.is_some() || !text.is_empty() || !calls.is_empty() {
                let tool_calls: Vec<ToolCallDelta> = calls
                    .into_iter()
                    .map(|(id, name, args)| {
                        let n = state.tool_calls;
                        state.tool_calls += 1;
                        self.text.push_str(&args);
                        ToolCallDelta {
                            index: n,
                            id: Some(id.unwrap_or_else(|| format!("call_{n}"))),
                            kind: Some("function".into()),
                            function: Some(FunctionCallDelta { name: Some(name), arguments: Some(args) }),
                        }
                    })
                    .collect();
                self.text.push_str(&text);
                let delta = Delta {
                    role,
                    content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                    tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                    ..Delta::default()
                };
                out.push(chunk.clone().with_choice(index, delta, None));
            }
            if let Some(reason) = cand.get("finishReason").and_then(Value::as_str) {
                let finish = finish_reason(reason, state.tool_calls > 0);
                state.finished = true;
                self.finish_reason = Some(finish.clone());
                out.push(chunk.with_choice(index, Delta::default(), Some(finish)));
            }
        }
        Ok(())
    }

    fn chunk(&self) -> ChatChunk {
        ChatChunk::new(&self.id, self.created, &self.model)
    }
}

impl EventDecoder for GeminiStreamDecoder {
    fn on_event(&mut self, data: &str, out: &mut Vec<ChatChunk>) -> Result<(), AdapterError> {
        self.event(data, out)
    }

    fn on_end(&mut self, out: &mut Vec<ChatChunk>) -> Result<(), AdapterError> {
        if !self.done() {
            return Err(AdapterError::Truncated { provider: SYSTEM, marker: "a candidate finishReason" });
        }
        // Gemini repeats usageMetadata on every event; only the last one is final, so the
        // usage-only chunk waits for the end of the body.
        if let Some(usage) = self.usage.clone().filter(|_| !self.emitted_usage) {
            self.emitted_usage = true;
            let mut chunk = self.chunk();
            chunk.usage = Some(usage);
            out.push(chunk);
        }
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.clone()
    }

    /// Gemini repeats a running `usageMetadata` on every event; the one with the candidates'
    /// `finishReason` is final.
    fn usage_is_final(&self) -> bool {
        self.usage.is_some() && self.done()
    }

    fn finish_reason(&self) -> Option<String> {
        self.finish_reason.clone()
    }

    fn output_text(&self) -> &str {
        &self.text
    }
}
