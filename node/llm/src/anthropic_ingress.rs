//! `POST /v1/messages` ingress: Anthropic SDK callers routed to any provider.
//!
//! The request is translated into the canonical request, the provider's canonical answer back
//! into Anthropic's shape. Mapping tables live in the Anthropic adapter and are reused here.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::AdapterError;
use crate::provider::anthropic::{finish_to_stop_reason, image_url_from_source, tool_choice_from_anthropic};
use crate::types::{
    ChatChunk, ChatMessage, ChatRequest, ChatResponse, ContentPart, FunctionCall, FunctionDef, MessageContent, Role,
    Stop, StreamOptions, Tool, ToolCall, Usage,
};

#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<InTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    /// top_k, thinking, service_tier, ...: only an Anthropic upstream understands them.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
struct InMessage {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
struct InTool {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
}

/// Anthropic Messages request body → canonical chat request.
pub fn messages_request_to_chat(body: &[u8]) -> Result<ChatRequest, AdapterError> {
    let req: MessagesRequest = serde_json::from_slice(body).map_err(AdapterError::MalformedRequest)?;
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        let text = match system {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => {
                blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n\n")
            }
            _ => return Err(AdapterError::InvalidRequest("system must be a string or an array of text blocks".into())),
        };
        messages.push(ChatMessage::new(Role::System, text));
    }
    for m in &req.messages {
        match m.role.as_str() {
            "user" => user_turn(&m.content, &mut messages)?,
            "assistant" => messages.push(assistant_turn(&m.content)?),
            other => {
                return Err(AdapterError::InvalidRequest(format!(
                    "message role {other:?} is not valid here; use \"user\" or \"assistant\" (system goes in the top-level system field)"
                )));
            }
        }
    }
    let tools = req
        .tools
        .map(|tools| {
            tools
                .into_iter()
                .map(|t| match t.kind.as_deref() {
                    None | Some("custom") => Ok(Tool {
                        kind: "function".into(),
                        function: FunctionDef {
                            name: t.name,
                            description: t.description,
                            parameters: t.input_schema,
                            strict: None,
                        },
                        extra: Map::new(),
                    }),
                    Some(other) => Err(AdapterError::Unsupported {
                        provider: "the /v1/messages ingress",
                        feature: format!("server tool {other:?}"),
                        hint: "define the tool with a name and input_schema and run it client-side",
                    }),
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let (tool_choice, parallel_tool_calls) =
        req.tool_choice.as_ref().map(tool_choice_from_anthropic).unwrap_or_default();
    let stream = req.stream == Some(true);
    let mut anthropic_extra = req.rest;
    if let Some(metadata) = &req.metadata {
        anthropic_extra.insert("metadata".into(), metadata.clone());
    }
    Ok(ChatRequest {
        model: req.model,
        messages,
        stream: stream.then_some(true),
        // The encoder needs the final usage to fill Anthropic's message_delta.
        stream_options: stream.then(|| StreamOptions { include_usage: Some(true), extra: Map::new() }),
        tools,
        tool_choice,
        parallel_tool_calls,
        stop: req.stop_sequences.filter(|s| !s.is_empty()).map(Stop::Many),
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        user: req.metadata.as_ref().and_then(|m| m.get("user_id")).and_then(Value::as_str).map(str::to_owned),
        anthropic_extra,
        ..ChatRequest::default()
    })
}

/// One Anthropic user turn becomes the `tool` messages of its tool_result blocks (OpenAI wants
/// them right after the assistant turn) followed by a user message with the remaining content.
fn user_turn(content: &Value, out: &mut Vec<ChatMessage>) -> Result<(), AdapterError> {
    let blocks = match content {
        Value::String(s) => {
            out.push(ChatMessage::new(Role::User, s.clone()));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => return Err(AdapterError::InvalidRequest("message content must be a string or an array of blocks".into())),
    };
    let mut parts = Vec::new();
    for block in blocks {
        match block_type(block) {
            "tool_result" => {
                let id = block.get("tool_use_id").and_then(Value::as_str).unwrap_or_default();
                let (text, images) = tool_result_content(block.get("content"))?;
                let mut msg = ChatMessage::new(Role::Tool, text);
                msg.tool_call_id = Some(id.to_owned());
                out.push(msg);
                // OpenAI tool messages carry text only; images a tool returned follow as user content.
                parts.extend(images);
            }
            _ => parts.push(content_part(block)?),
        }
    }
    if !parts.is_empty() {
        out.push(user_message(parts));
    }
    Ok(())
}

fn user_message(parts: Vec<ContentPart>) -> ChatMessage {
    let mut msg = ChatMessage::new(Role::User, "");
    msg.content = Some(match parts.as_slice() {
        [only] if only.kind == "text" => MessageContent::Text(only.text.clone().unwrap_or_default()),
        _ => MessageContent::Parts(parts),
    });
    msg
}

fn block_type(block: &Value) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn content_part(block: &Value) -> Result<ContentPart, AdapterError> {
    match block_type(block) {
        "text" => Ok(ContentPart::text(block.get("text").and_then(Value::as_str).unwrap_or_default())),
        "image" => Ok(ContentPart::image(image_url_from_source(&block["source"])?)),
        other => Err(AdapterError::Unsupported {
            provider: "the /v1/messages ingress",
            feature: format!("content block type {other:?}"),
            hint: "send text, image, tool_use and tool_result blocks",
        }),
    }
}

fn tool_result_content(content: Option<&Value>) -> Result<(String, Vec<ContentPart>), AdapterError> {
    match content {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => Ok((s.clone(), Vec::new())),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            let mut images = Vec::new();
            for b in blocks {
                let part = content_part(b)?;
                match part.text {
                    Some(t) => text.push_str(&t),
                    None => images.push(part),
                }
            }
            Ok((text, images))
        }
        Some(_) => {
            Err(AdapterError::InvalidRequest("tool_result content must be a string or an array of blocks".into()))
        }
    }
}

fn assistant_turn(content: &Value) -> Result<ChatMessage, AdapterError> {
    let mut msg = ChatMessage::new(Role::Assistant, "");
    let blocks = match content {
        Value::String(s) => return Ok(ChatMessage::new(Role::Assistant, s.clone())),
        Value::Array(blocks) => blocks,
        _ => return Err(AdapterError::InvalidRequest("message content must be a string or an array of blocks".into())),
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block_type(block) {
            "text" => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            "tool_use" => calls.push(ToolCall {
                id: block.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: block.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    arguments: block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            }),
            // Thinking blocks are signed for Anthropic only; other providers cannot take them back.
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(AdapterError::Unsupported {
                    provider: "the /v1/messages ingress",
                    feature: format!("assistant content block type {other:?}"),
                    hint: "send text and tool_use blocks in assistant turns",
                });
            }
        }
    }
    msg.content = (!text.is_empty() || calls.is_empty()).then_some(MessageContent::Text(text));
    msg.tool_calls = (!calls.is_empty()).then_some(calls);
    Ok(msg)
}

/// Anthropic usage: `input_tokens` excludes cache reads, which are reported separately.
fn anthropic_usage(usage: Option<&Usage>) -> Value {
    let Some(u) = usage else { return json!({"input_tokens": 0, "output_tokens": 0}) };
    let cached = u.cached_tokens();
    let mut out = json!({
        "input_tokens": u.prompt_tokens.saturating_sub(cached),
        "output_tokens": u.completion_tokens,
    });
    if u.prompt_tokens_details.is_some() {
        out["cache_creation_input_tokens"] = 0.into();
        out["cache_read_input_tokens"] = cached.into();
    }
    out
}

/// Tool arguments the model produced are JSON text; Anthropic callers expect an object.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        // Unparsable arguments (a truncated tool call) are still shown rather than dropped.
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({ "_raw_arguments": arguments }),
    }
}

fn message_id(id: &str) -> String {
    if id.is_empty() { format!("msg_{}", hex::encode(rand::random::<[u8; 12]>())) } else { id.to_owned() }
}

/// Canonical answer → Anthropic Messages response body. `requested_model` is the name the caller
/// used (an alias maybe), echoed back as Anthropic does.
pub fn chat_response_to_messages(resp: &ChatResponse, requested_model: &str) -> Value {
    let choice = resp.choices.first();
    let mut content = Vec::new();
    if let Some(message) = choice.map(|c| &c.message) {
        let text = message.text();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in message.tool_calls.iter().flatten() {
            content.push(json!({
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": tool_input(&call.function.arguments),
            }));
        }
    }
    let stop_reason = choice.and_then(|c| c.finish_reason.as_deref()).map(finish_to_stop_reason);
    json!({
        "id": message_id(&resp.id),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": anthropic_usage(resp.usage.as_ref()),
    })
}

#[derive(Clone, Copy)]
enum OpenBlock {
    Text(u32),
    Tool(u32),
}

/// Turns canonical chunks into Anthropic's SSE event sequence: message_start, then per content
/// block content_block_start / content_block_delta* / content_block_stop, then message_delta
/// (stop_reason, usage) and message_stop.
pub struct MessagesStreamEncoder {
    model: String,
    input_tokens: u64,
    started: bool,
    finished: bool,
    open: Option<OpenBlock>,
    next_block: u32,
    /// OpenAI tool call index → Anthropic content block index.
    tool_blocks: HashMap<u32, u32>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
}

impl MessagesStreamEncoder {
    /// `input_tokens` goes in message_start, before the provider has reported usage: pass the
    /// estimate (`tokens::estimate_prompt_tokens`); the real count follows in message_delta.
    pub fn new(requested_model: &str, input_tokens: u64) -> Self {
        MessagesStreamEncoder {
            model: requested_model.to_owned(),
            input_tokens,
            started: false,
            finished: false,
            open: None,
            next_block: 0,
            tool_blocks: HashMap::new(),
            usage: None,
            finish_reason: None,
        }
    }

    pub fn encode(&mut self, chunk: &ChatChunk) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.start(&chunk.id, &mut out);
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage.clone());
        }
        // Anthropic has no `n`: only the first choice is relayed.
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                let block = match self.open {
                    Some(OpenBlock::Text(b)) => b,
                    _ => self.open_block(json!({"type": "text", "text": ""}), None, &mut out),
                };
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": block, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                let block = match self.tool_blocks.get(&call.index) {
                    Some(&b) => b,
                    None => {
                        let function = call.function.as_ref();
                        let start = json!({
                            "type": "tool_use",
                            "id": call.id.clone().unwrap_or_default(),
                            "name": function.and_then(|f| f.name.clone()).unwrap_or_default(),
                            "input": {},
                        });
                        self.open_block(start, Some(call.index), &mut out)
                    }
                };
                if let Some(args) =
                    call.function.as_ref().and_then(|f| f.arguments.as_deref()).filter(|a| !a.is_empty())
                {
                    out.push(event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": args}}),
                    ));
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.clone());
            }
        }
        out
    }

    /// The upstream stream ended: closes the open block and sends message_delta and message_stop.
    /// `usage` / `finish_reason` override what the chunks carried (e.g. the gateway's estimate).
    pub fn finish(&mut self, usage: Option<&Usage>, finish_reason: Option<&str>) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.start("", &mut out);
        self.close_block(&mut out);
        self.finished = true;
        let usage = usage.or(self.usage.as_ref());
        let reason = finish_reason.or(self.finish_reason.as_deref()).unwrap_or("stop");
        out.push(event(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": finish_to_stop_reason(reason), "stop_sequence": null},
                "usage": anthropic_usage(usage),
            }),
        ));
        out.push(event("message_stop", json!({"type": "message_stop"})));
        out
    }

    fn start(&mut self, id: &str, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(id),
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": self.model,
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
            }}),
        ));
    }

    fn open_block(&mut self, content_block: Value, tool: Option<u32>, out: &mut Vec<Bytes>) -> u32 {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        self.open = Some(match tool {
            Some(t) => {
                self.tool_blocks.insert(t, index);
                OpenBlock::Tool(index)
            }
            None => OpenBlock::Text(index),
        });
        index
    }

    fn close_block(&mut self, out: &mut Vec<Bytes>) {
        if let Some(OpenBlock::Text(index) | OpenBlock::Tool(index)) = self.open.take() {
            out.push(event("content_block_stop", json!({"type": "content_block_stop", "index": index})));
        }
    }
}

fn event(name: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}
