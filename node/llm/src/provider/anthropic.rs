//! Anthropic Messages API (`POST /v1/messages`).
//!
//! The mapping tables here (stop reasons, tool choice, images, usage) are also what the
//! `/v1/messages` ingress uses in the other direction, so both stay in one place.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    EventDecoder, ProviderAdapter, ProviderKind, SseStream, StreamDecoder, UpstreamTarget, join_url, post_json,
    to_json_body, unix_now,
};
use crate::error::{AdapterError, ErrorKind, ProviderError, classify, error_object};
use crate::types::{
    ChatChunk, ChatMessage, ChatRequest, ChatResponse, Choice, ContentPart, Delta, EmbeddingsRequest,
    EmbeddingsResponse, FunctionCall, FunctionCallDelta, FunctionName, MessageContent, NamedToolChoice, ResponseFormat,
    Role, ToolCall, ToolCallDelta, ToolChoice, Usage,
};

pub const DEFAULT_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; OpenAI callers often send none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
const SYSTEM: &str = "anthropic";

pub struct AnthropicAdapter;

impl ProviderAdapter for AnthropicAdapter {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn system(&self) -> &'static str {
        SYSTEM
    }

    fn chat_request(
        &self,
        req: &ChatRequest,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        let body = to_json_body(&messages_body(req, target.model)?)?;
        let version = target.api_version.unwrap_or(DEFAULT_VERSION);
        post_json(
            &join_url(target.base_url, "/v1/messages"),
            &[("x-api-key", target.api_key), ("anthropic-version", version)],
            target,
            req.is_stream(),
            body,
        )
    }

    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, AdapterError> {
        let msg: MessagesResponse =
            serde_json::from_slice(body).map_err(|e| AdapterError::bad_payload(SYSTEM, format!("message: {e}")))?;
        let mut text = String::new();
        let mut calls = Vec::new();
        for block in &msg.content {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
                Some("tool_use") => calls.push(ToolCall {
                    id: str_field(block, "id"),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: str_field(block, "name"),
                        arguments: block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                    },
                }),
                // thinking / redacted_thinking / server tool blocks have no OpenAI equivalent.
                _ => {}
            }
        }
        let message = ChatMessage {
            role: Role::Assistant,
            content: (!text.is_empty() || calls.is_empty()).then_some(MessageContent::Text(text)),
            name: None,
            tool_calls: (!calls.is_empty()).then_some(calls),
            tool_call_id: None,
            extra: Map::new(),
        };
        Ok(ChatResponse {
            id: msg.id,
            object: "chat.completion".into(),
            created: unix_now(),
            model: msg.model,
            choices: vec![Choice {
                index: 0,
                message,
                logprobs: None,
                finish_reason: msg.stop_reason.as_deref().map(|r| stop_reason_to_finish(r).to_owned()),
                extra: Map::new(),
            }],
            usage: msg.usage.map(|u| u.to_usage()),
            extra: Map::new(),
        })
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        SseStream::boxed(SYSTEM, AnthropicStreamDecoder::default())
    }

    fn embeddings_request(
        &self,
        _: &EmbeddingsRequest,
        _: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        Err(embeddings_unsupported())
    }

    fn embeddings_response(&self, _: &[u8]) -> Result<EmbeddingsResponse, AdapterError> {
        Err(embeddings_unsupported())
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        let error = error_object(body);
        let message = error.as_ref().and_then(|e| e.get("message")).and_then(Value::as_str).map(str::to_owned);
        let hint =
            error.as_ref().and_then(|e| e.get("type")).and_then(Value::as_str).and_then(ErrorKind::from_anthropic_type);
        classify(status, headers, body, message, hint)
    }
}

fn embeddings_unsupported() -> AdapterError {
    AdapterError::Unsupported {
        provider: SYSTEM,
        feature: "embeddings".into(),
        hint: "Anthropic has no embeddings API; route embedding models to OpenAI, Azure OpenAI, Gemini or an \
               OpenAI-compatible server",
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

// === mapping tables (shared with the /v1/messages ingress) ===

pub(crate) fn stop_reason_to_finish(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn
        _ => "stop",
    }
}

pub(crate) fn finish_to_stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI `tool_choice` + `parallel_tool_calls` → Anthropic `tool_choice`.
pub(crate) fn tool_choice_to_anthropic(choice: Option<&ToolChoice>, parallel: Option<bool>) -> Option<Value> {
    let mut out = match choice {
        None => parallel.map(|_| json!({"type": "auto"}))?,
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            _ => json!({"type": "auto"}),
        },
        Some(ToolChoice::Named(n)) => json!({"type": "tool", "name": n.function.name}),
    };
    if parallel == Some(false) && out["type"] != "none" {
        out["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Some(out)
}

/// Anthropic `tool_choice` → OpenAI `tool_choice` and `parallel_tool_calls`.
pub(crate) fn tool_choice_from_anthropic(choice: &Value) -> (Option<ToolChoice>, Option<bool>) {
    let mode = |m: &str| Some(ToolChoice::Mode(m.to_owned()));
    let tc = match choice.get("type").and_then(Value::as_str) {
        Some("any") => mode("required"),
        Some("none") => mode("none"),
        Some("tool") => Some(ToolChoice::Named(NamedToolChoice {
            kind: "function".into(),
            function: FunctionName { name: str_field(choice, "name") },
        })),
        Some("auto") => mode("auto"),
        _ => None,
    };
    let parallel = choice.get("disable_parallel_tool_use").and_then(Value::as_bool).filter(|d| *d).map(|_| false);
    (tc, parallel)
}

/// An OpenAI `image_url` (https URL or `data:` URL) → Anthropic image block.
pub(crate) fn image_block(url: &str) -> Result<Value, AdapterError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest.split_once(";base64,").ok_or_else(|| {
            AdapterError::InvalidRequest("image data URLs must look like data:<media type>;base64,<data>".into())
        })?;
        return Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}));
    }
    Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
}

/// Anthropic image `source` → an OpenAI `image_url` URL.
pub(crate) fn image_url_from_source(source: &Value) -> Result<String, AdapterError> {
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => Ok(format!("data:{};base64,{}", str_field(source, "media_type"), str_field(source, "data"))),
        Some("url") => Ok(str_field(source, "url")),
        other => Err(AdapterError::InvalidRequest(format!(
            "image source type {other:?} cannot be translated; use \"base64\" or \"url\""
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Anthropic's `input_tokens` excludes cache reads and writes; OpenAI's `prompt_tokens`
    /// includes everything, with cache reads reported as `cached_tokens`.
    pub(crate) fn to_usage(&self) -> Usage {
        let cached = self.cache_read_input_tokens;
        let prompt =
            self.input_tokens.unwrap_or(0) + cached.unwrap_or(0) + self.cache_creation_input_tokens.unwrap_or(0);
        Usage::new(prompt, self.output_tokens.unwrap_or(0), cached)
    }

    fn merge(&mut self, newer: AnthropicUsage) {
        let keep = |old: &mut Option<u64>, new: Option<u64>| {
            if new.is_some() {
                *old = new;
            }
        };
        keep(&mut self.input_tokens, newer.input_tokens);
        keep(&mut self.output_tokens, newer.output_tokens);
        keep(&mut self.cache_read_input_tokens, newer.cache_read_input_tokens);
        keep(&mut self.cache_creation_input_tokens, newer.cache_creation_input_tokens);
    }
}

#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

// === request translation ===

/// The Anthropic Messages request body for a canonical request.
pub(crate) fn messages_body(req: &ChatRequest, model: &str) -> Result<Value, AdapterError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(AdapterError::Unsupported {
            provider: SYSTEM,
            feature: "n > 1".into(),
            hint: "send one request per completion",
        });
    }
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                system.push(m.text());
                continue;
            }
            Role::User => ("user", user_blocks(m.content.as_ref())?),
            Role::Tool => ("user", vec![tool_result_block(m)?]),
            Role::Assistant => ("assistant", assistant_blocks(m)?),
        };
        if blocks.is_empty() {
            continue;
        }
        // Anthropic wants all results of one assistant turn in a single user turn; merging any
        // consecutive same-role turns also keeps the required user/assistant alternation.
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if let Some(instruction) = req.response_format.as_ref().and_then(json_mode_instruction) {
        system.push(instruction);
    }

    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert(
        "messages".into(),
        turns.into_iter().map(|(role, blocks)| json!({"role": role, "content": collapse(blocks)})).collect(),
    );
    body.insert("max_tokens".into(), req.output_limit().unwrap_or(DEFAULT_MAX_TOKENS).into());
    let system: Vec<String> = system.into_iter().filter(|s| !s.is_empty()).collect();
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    let stops = req.stop_sequences();
    if !stops.is_empty() {
        body.insert("stop_sequences".into(), stops.into());
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), p.into());
    }
    if req.is_stream() {
        body.insert("stream".into(), true.into());
    }
    if let Some(tools) = &req.tools {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut tool = json!({
                    "name": t.function.name,
                    "input_schema": t.function.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = &t.function.description {
                    tool["description"] = d.clone().into();
                }
                tool
            })
            .collect();
        body.insert("tools".into(), tools.into());
    }
    if let Some(tc) = tool_choice_to_anthropic(req.tool_choice.as_ref(), req.parallel_tool_calls) {
        body.insert("tool_choice".into(), tc);
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    for (k, v) in &req.anthropic_extra {
        body.insert(k.clone(), v.clone());
    }
    Ok(Value::Object(body))
}

/// Anthropic has no JSON mode; the documented way to get JSON is to ask for it in the prompt.
fn json_mode_instruction(format: &ResponseFormat) -> Option<String> {
    match format.kind.as_str() {
        "json_object" => Some("Respond with a single valid JSON object and nothing else.".into()),
        "json_schema" => {
            let schema = format.json_schema.as_ref().and_then(|s| s.schema.as_ref()).map(Value::to_string);
            Some(format!(
                "Respond with a single valid JSON value that conforms to this JSON Schema, and nothing else: {}",
                schema.unwrap_or_else(|| "{}".into())
            ))
        }
        _ => None,
    }
}

/// A single plain text block is sent as a string, the shape of Anthropic's own examples.
fn collapse(blocks: Vec<Value>) -> Value {
    if let [only] = blocks.as_slice()
        && only.get("type").and_then(Value::as_str) == Some("text")
        && only.as_object().is_some_and(|o| o.len() == 2)
    {
        return only["text"].clone();
    }
    Value::Array(blocks)
}

fn user_blocks(content: Option<&MessageContent>) -> Result<Vec<Value>, AdapterError> {
    let Some(content) = content else { return Ok(Vec::new()) };
    content.parts().iter().map(part_block).collect()
}

fn part_block(part: &ContentPart) -> Result<Value, AdapterError> {
    match (part.kind.as_str(), &part.text, &part.image_url) {
        ("text", Some(text), _) => Ok(json!({"type": "text", "text": text})),
        ("image_url", _, Some(image)) => image_block(&image.url),
        (kind, _, _) => Err(AdapterError::Unsupported {
            provider: SYSTEM,
            feature: format!("content part type {kind:?}"),
            hint: "send text and image_url parts only",
        }),
    }
}

fn tool_result_block(m: &ChatMessage) -> Result<Value, AdapterError> {
    let id = m.tool_call_id.as_deref().ok_or_else(|| {
        AdapterError::InvalidRequest("a message with role \"tool\" needs the tool_call_id it answers".into())
    })?;
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": m.text()}))
}

fn assistant_blocks(m: &ChatMessage) -> Result<Vec<Value>, AdapterError> {
    let mut blocks = Vec::new();
    let text = m.text();
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for call in m.tool_calls.iter().flatten() {
        blocks.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.function.name,
            "input": parse_arguments(&call.function.arguments)?,
        }));
    }
    Ok(blocks)
}

/// Tool-call arguments are JSON text in OpenAI's format but an object in Anthropic's and Gemini's.
pub(crate) fn parse_arguments(arguments: &str) -> Result<Value, AdapterError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(arguments).map_err(|e| {
        AdapterError::InvalidRequest(format!("tool call arguments must be a JSON object, got {arguments:?}: {e}"))
    })
}

// === streaming ===

/// Translates Anthropic's event sequence (message_start, content_block_*, message_delta,
/// message_stop, ping, error) into OpenAI chunks.
#[derive(Default)]
pub(crate) struct AnthropicStreamDecoder {
    id: String,
    model: String,
    created: u64,
    usage: Option<AnthropicUsage>,
    /// `message_delta` reported the output count; until then the one from `message_start` is
    /// a placeholder (`output_tokens: 1`).
    final_usage: bool,
    finish_reason: Option<String>,
    /// Anthropic content block index → OpenAI tool call index.
    tool_index: HashMap<u64, u32>,
    done: bool,
    text: String,
}

impl AnthropicStreamDecoder {
    fn chunk(&self) -> ChatChunk {
        ChatChunk::new(&self.id, self.created, &self.model)
    }

    fn delta_chunk(&self, delta: Delta) -> ChatChunk {
        self.chunk().with_choice(0, delta, None)
    }

    fn tool_delta(&self, index: u32, id: Option<String>, name: Option<String>, arguments: String) -> ChatChunk {
        self.delta_chunk(Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                kind: id.as_ref().map(|_| "function".to_owned()),
                id,
                function: Some(FunctionCallDelta { name, arguments: Some(arguments) }),
            }]),
            ..Delta::default()
        })
    }

    fn event(&mut self, data: &str, out: &mut Vec<ChatChunk>) -> Result<(), AdapterError> {
        let ev: Value =
            serde_json::from_str(data).map_err(|e| AdapterError::bad_payload(SYSTEM, format!("stream event: {e}")))?;
        let index = ev.get("index").and_then(Value::as_u64).unwrap_or(0);
        match ev.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                let msg = &ev["message"];
                self.id = str_field(msg, "id");
                self.model = str_field(msg, "model");
                self.created = unix_now();
                self.merge_usage(msg.get("usage"));
                out.push(self.delta_chunk(Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    ..Delta::default()
                }));
            }
            "content_block_start" => {
                let block = &ev["content_block"];
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = str_field(block, "text");
                        if !text.is_empty() {
                            self.text.push_str(&text);
                            out.push(self.delta_chunk(Delta { content: Some(text), ..Delta::default() }));
                        }
                    }
                    Some("tool_use") => {
                        let next = self.tool_index.len() as u32;
                        let tool = *self.tool_index.entry(index).or_insert(next);
                        out.push(self.tool_delta(
                            tool,
                            Some(str_field(block, "id")),
                            Some(str_field(block, "name")),
                            String::new(),
                        ));
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &ev["delta"];
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = str_field(delta, "text");
                        self.text.push_str(&text);
                        out.push(self.delta_chunk(Delta { content: Some(text), ..Delta::default() }));
                    }
                    Some("input_json_delta") => {
                        let partial = str_field(delta, "partial_json");
                        // Anthropic opens every tool input with an empty fragment; the tool call
                        // chunk emitted at content_block_start already said as much.
                        if partial.is_empty() {
                            return Ok(());
                        }
                        let Some(&tool) = self.tool_index.get(&index) else {
                            return Err(AdapterError::bad_payload(
                                SYSTEM,
                                format!("input_json_delta for block {index} that is no tool_use"),
                            ));
                        };
                        self.text.push_str(&partial);
                        out.push(self.tool_delta(tool, None, None, partial));
                    }
                    // thinking_delta, signature_delta, citations_delta: no OpenAI equivalent.
                    _ => {}
                }
            }
            "message_delta" => {
                self.merge_usage(ev.get("usage"));
                self.final_usage |= ev.pointer("/usage/output_tokens").is_some_and(Value::is_u64);
                if let Some(reason) = ev["delta"].get("stop_reason").and_then(Value::as_str) {
                    let finish = stop_reason_to_finish(reason).to_owned();
                    self.finish_reason = Some(finish.clone());
                    out.push(self.chunk().with_choice(0, Delta::default(), Some(finish)));
                }
            }
            "message_stop" => {
                self.done = true;
                if let Some(usage) = self.usage() {
                    let mut chunk = self.chunk();
                    chunk.usage = Some(usage);
                    out.push(chunk);
                }
            }
            "error" => {
                let error = &ev["error"];
                let kind = error.get("type").and_then(Value::as_str).and_then(ErrorKind::from_anthropic_type);
                let kind = kind.unwrap_or(ErrorKind::Server);
                return Err(AdapterError::UpstreamStream {
                    provider: SYSTEM,
                    error: ProviderError {
                        status: kind.status().as_u16(),
                        kind,
                        message: str_field(error, "message"),
                        retry_after: None,
                    },
                });
            }
            // ping, content_block_stop, and event types added after this was written.
            _ => {}
        }
        Ok(())
    }

    fn merge_usage(&mut self, usage: Option<&Value>) {
        let Some(Ok(newer)) = usage.map(AnthropicUsage::deserialize) else { return };
        self.usage.get_or_insert_with(AnthropicUsage::default).merge(newer);
    }
}

impl EventDecoder for AnthropicStreamDecoder {
    fn on_event(&mut self, data: &str, out: &mut Vec<ChatChunk>) -> Result<(), AdapterError> {
        self.event(data, out)
    }

    fn on_end(&mut self, _: &mut Vec<ChatChunk>) -> Result<(), AdapterError> {
        if !self.done {
            return Err(AdapterError::Truncated { provider: SYSTEM, marker: "message_stop" });
        }
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.as_ref().map(AnthropicUsage::to_usage)
    }

    fn usage_is_final(&self) -> bool {
        self.final_usage
    }

    fn finish_reason(&self) -> Option<String> {
        self.finish_reason.clone()
    }

    fn output_text(&self) -> &str {
        &self.text
    }
}
