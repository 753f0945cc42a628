//! Gemini-format ingress: `POST …/models/{model}:generateContent` and
//! `:streamGenerateContent` (a JSON array by default, SSE with `alt=sse`), so
//! Google's SDKs (google-genai) reach any provider, as `/v1/messages` does for
//! Anthropic's.
//!
//! The request is translated into the canonical request, the provider's
//! canonical answer back into a `GenerateContentResponse`. A Gemini provider
//! gets the caller's body untranslated (see the gateway).

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{AdapterError, ErrorKind, gemini_error_json};
use crate::types::{
    ChatChunk, ChatMessage, ChatRequest, ChatResponse, ContentPart, FunctionCall, FunctionDef, FunctionName,
    JsonSchemaFormat, MessageContent, NamedToolChoice, ResponseFormat, Role, Stop, StreamOptions, Tool, ToolCall,
    ToolChoice, Usage,
};

const INGRESS: &str = "the Gemini ingress";

/// The most `contents` one request may hold.
pub const MAX_CONTENTS: usize = 10_000;
/// The most parts (text, media, functionCall, functionResponse) one request
/// may hold, over all its contents. A 16 MB body could otherwise carry
/// hundreds of thousands of tiny parts.
pub const MAX_PARTS: usize = 50_000;
/// The range of `candidateCount` accepted (Gemini's own limit is 8).
const CANDIDATE_COUNT: std::ops::RangeInclusive<u64> = 1..=8;

/// How a streamed answer is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// `alt=sse`: one `data:` event per `GenerateContentResponse` (what the SDKs ask for).
    Sse,
    /// The default: one JSON array of `GenerateContentResponse`s, written as they come.
    JsonArray,
}

/// A `generateContent` call, as its path names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeminiCall {
    /// The model as the caller named it (an alias or `provider/model`).
    pub model: String,
    /// `None` for `:generateContent`.
    pub stream: Option<StreamFormat>,
}

/// `…/models/{model}:generateContent` or `…:streamGenerateContent`. The model
/// may itself hold a `/` (`models/openai/gpt-4o:generateContent`), as the SDKs
/// send a `provider/model` name.
pub fn parse_call(path: &str, query: Option<&str>) -> Option<GeminiCall> {
    let path = path.trim_end_matches('/');
    let start = path.find("/models/")? + "/models/".len();
    let (model, method) = path[start..].rsplit_once(':')?;
    let stream = match method {
        "generateContent" => None,
        "streamGenerateContent" if query_param(query, "alt") == Some("sse") => Some(StreamFormat::Sse),
        "streamGenerateContent" => Some(StreamFormat::JsonArray),
        _ => return None,
    };
    Some(GeminiCall { model: percent_decode(model), stream })
}

/// Whether a path is a Gemini `generateContent` call (for errors in Gemini's format).
pub fn is_gemini_path(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent")
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The key a Google client presents: the `x-goog-api-key` header, else the
/// `key` query parameter. Read on AI routes only; the query (and so the key)
/// is never logged — the access log records the path — nor sent upstream,
/// where the gateway builds its own URLs.
pub fn presented_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query_param(query, "key"))
        .filter(|k| !k.is_empty())
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// === request translation ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest {
    #[serde(default)]
    contents: Vec<Content>,
    #[serde(default, alias = "system_instruction")]
    system_instruction: Option<Value>,
    #[serde(default)]
    tools: Vec<Value>,
    #[serde(default, alias = "tool_config")]
    tool_config: Option<Value>,
    #[serde(default, alias = "generation_config")]
    generation_config: Option<Map<String, Value>>,
    // safetySettings, cachedContent, labels: only Gemini has them (it gets the
    // caller's body as is); other providers have no equivalent.
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Value>,
}

/// Reads a field by its camelCase name or its snake_case alias (Google's JSON
/// accepts both).
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// A `GenerateContentRequest` body and the model its path named → canonical chat request.
pub fn generate_content_to_chat(body: &[u8], model: &str, stream: bool) -> Result<ChatRequest, AdapterError> {
    let req: GenerateContentRequest = serde_json::from_slice(body).map_err(AdapterError::MalformedRequest)?;
    if req.contents.is_empty() {
        return Err(AdapterError::InvalidRequest("`contents` is required and must not be empty".into()));
    }
    if req.contents.len() > MAX_CONTENTS {
        return Err(AdapterError::InvalidRequest(format!(
            "`contents` holds {} entries; the gateway accepts at most {MAX_CONTENTS} per request",
            req.contents.len()
        )));
    }
    let parts: usize = req.contents.iter().map(|c| c.parts.len()).sum();
    if parts > MAX_PARTS {
        return Err(AdapterError::InvalidRequest(format!(
            "`contents` holds {parts} parts in all; the gateway accepts at most {MAX_PARTS} parts per request"
        )));
    }
    let mut messages = Vec::new();
    if let Some(system) = &req.system_instruction {
        let text = match system {
            Value::String(s) => s.clone(),
            Value::Object(_) => system
                .get("parts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => return Err(AdapterError::InvalidRequest("systemInstruction must be a Content object".into())),
        };
        if !text.is_empty() {
            messages.push(ChatMessage::new(Role::System, text));
        }
    }
    // Calls of the latest model turn not answered yet: (id, name). Gemini's
    // functionResponse names its function (and may carry the call's id); the
    // canonical tool message needs the id of the call it answers.
    let mut pending = Pending::default();
    for (turn, content) in req.contents.iter().enumerate() {
        match content.role.as_deref().unwrap_or("user") {
            "model" => {
                let (message, calls) = model_turn(&content.parts, turn)?;
                pending = Pending::new(calls);
                messages.push(message);
            }
            // "function" is the older role of functionResponse turns.
            "user" | "function" => user_turn(&content.parts, &mut pending, &mut messages)?,
            other => {
                return Err(AdapterError::InvalidRequest(format!(
                    "content role {other:?} is not valid; use \"user\" or \"model\" (system goes in systemInstruction)"
                )));
            }
        }
    }

    let mut request = ChatRequest {
        model: model.to_string(),
        messages,
        stream: stream.then_some(true),
        // The encoder needs the final usage for the last chunk's usageMetadata.
        stream_options: stream.then(|| StreamOptions { include_usage: Some(true), extra: Map::new() }),
        ..ChatRequest::default()
    };
    if let Some(config) = &req.generation_config {
        apply_generation_config(config, &mut request)?;
    }
    let tools = tools(&req.tools)?;
    if !tools.is_empty() {
        request.tools = Some(tools);
    }
    if let Some(config) =
        req.tool_config.as_ref().and_then(|c| field(c, "functionCallingConfig", "function_calling_config"))
    {
        request.tool_choice = tool_choice(config);
    }
    Ok(request)
}

/// A model turn: its text and function calls (thought parts are the model's own and are dropped).
fn model_turn(parts: &[Value], turn: usize) -> Result<(ChatMessage, Vec<(String, String)>), AdapterError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in parts {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(call) = field(part, "functionCall", "function_call") {
            let name = str_of(call, "name").to_string();
            let id = match call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                Some(id) => id.to_string(),
                None => format!("call_{turn}_{}", calls.len()),
            };
            let arguments =
                call.get("args").filter(|a| !a.is_null()).map_or_else(|| "{}".to_string(), Value::to_string);
            calls.push(ToolCall { id, kind: "function".into(), function: FunctionCall { name, arguments } });
        } else if part.get("thoughtSignature").is_some() || part.get("executableCode").is_some() {
            // Signatures and code Gemini ran belong to Gemini alone.
        } else {
            return Err(unsupported_part(part, "model"));
        }
    }
    let pending = calls.iter().map(|c| (c.id.clone(), c.function.name.clone())).collect();
    let mut message = ChatMessage::new(Role::Assistant, "");
    message.content = (!text.is_empty() || calls.is_empty()).then_some(MessageContent::Text(text));
    message.tool_calls = (!calls.is_empty()).then_some(calls);
    Ok((message, pending))
}

/// The calls of the latest model turn not answered yet, in order, indexed by
/// id and by function name so that matching a response is O(1) amortised
/// (a turn may hold many thousands of calls).
#[derive(Default)]
struct Pending {
    ids: Vec<String>,
    used: Vec<bool>,
    by_id: HashMap<String, VecDeque<usize>>,
    by_name: HashMap<String, VecDeque<usize>>,
}

impl Pending {
    fn new(calls: Vec<(String, String)>) -> Self {
        let mut pending = Pending { used: vec![false; calls.len()], ..Pending::default() };
        for (at, (id, name)) in calls.into_iter().enumerate() {
            pending.by_id.entry(id.clone()).or_default().push_back(at);
            pending.by_name.entry(name).or_default().push_back(at);
            pending.ids.push(id);
        }
        pending
    }

    /// Marks the first unanswered call in `queue` answered and returns its id.
    fn take(queue: Option<&mut VecDeque<usize>>, used: &mut [bool], ids: &[String]) -> Option<String> {
        let queue = queue?;
        while let Some(at) = queue.pop_front() {
            if !used[at] {
                used[at] = true;
                return Some(ids[at].clone());
            }
        }
        None
    }

    fn take_id(&mut self, id: &str) -> Option<String> {
        Self::take(self.by_id.get_mut(id), &mut self.used, &self.ids)
    }

    fn take_name(&mut self, name: &str) -> Option<String> {
        Self::take(self.by_name.get_mut(name), &mut self.used, &self.ids)
    }
}

/// A user turn: the tool messages of its functionResponse parts first (the
/// canonical form wants them right after the assistant's calls), then the rest
/// as one user message.
fn user_turn(parts: &[Value], pending: &mut Pending, out: &mut Vec<ChatMessage>) -> Result<(), AdapterError> {
    // Responses naming their call's id take it first; the others then take the
    // first unanswered call of their function's name.
    let by_id: Vec<Option<String>> = parts
        .iter()
        .map(|part| {
            let id = field(part, "functionResponse", "function_response")?.get("id")?.as_str()?;
            pending.take_id(id)
        })
        .collect();
    let mut content = Vec::new();
    for (part, by_id) in parts.iter().zip(by_id) {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            content.push(ContentPart::text(t));
        } else if let Some(data) = field(part, "inlineData", "inline_data") {
            let mime = field(data, "mimeType", "mime_type").and_then(Value::as_str).unwrap_or_default();
            if !mime.starts_with("image/") {
                return Err(media_unsupported(mime));
            }
            content.push(ContentPart::image(format!("data:{mime};base64,{}", str_of(data, "data"))));
        } else if let Some(file) = field(part, "fileData", "file_data") {
            let mime = field(file, "mimeType", "mime_type").and_then(Value::as_str).unwrap_or_default();
            if !mime.starts_with("image/") {
                return Err(media_unsupported(mime));
            }
            let uri = field(file, "fileUri", "file_uri").and_then(Value::as_str).unwrap_or_default();
            content.push(ContentPart::image(uri));
        } else if let Some(response) = field(part, "functionResponse", "function_response") {
            let name = str_of(response, "name");
            let call_id = match by_id {
                Some(id) => id,
                None => pending.take_name(name).ok_or_else(|| {
                    AdapterError::InvalidRequest(format!(
                        "functionResponse for {name:?} answers no functionCall of the model turn before it"
                    ))
                })?,
            };
            let result = response.get("response").cloned().unwrap_or_else(|| json!({}));
            let mut message = ChatMessage::new(Role::Tool, result.to_string());
            message.tool_call_id = Some(call_id);
            out.push(message);
        } else {
            return Err(unsupported_part(part, "user"));
        }
    }
    if !content.is_empty() {
        let mut message = ChatMessage::new(Role::User, "");
        message.content = Some(match content.as_slice() {
            [only] if only.kind == "text" => MessageContent::Text(only.text.clone().unwrap_or_default()),
            _ => MessageContent::Parts(content),
        });
        out.push(message);
    }
    Ok(())
}

fn media_unsupported(mime: &str) -> AdapterError {
    AdapterError::Unsupported {
        provider: INGRESS,
        feature: format!("inline or file data of type {mime:?}"),
        hint: "send text and images (image/*) only",
    }
}

fn unsupported_part(part: &Value, role: &str) -> AdapterError {
    let kind = part.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_else(|| "empty".into());
    AdapterError::Unsupported {
        provider: INGRESS,
        feature: format!("{role} part {kind:?}"),
        hint: "send text, inlineData/fileData images, functionCall and functionResponse parts",
    }
}

fn apply_generation_config(config: &Map<String, Value>, request: &mut ChatRequest) -> Result<(), AdapterError> {
    let get = |camel: &str, snake: &str| config.get(camel).or_else(|| config.get(snake)).filter(|v| !v.is_null());
    request.temperature = get("temperature", "temperature").and_then(Value::as_f64);
    request.top_p = get("topP", "top_p").and_then(Value::as_f64);
    request.max_tokens = get("maxOutputTokens", "max_output_tokens").and_then(Value::as_u64);
    if let Some(count) = get("candidateCount", "candidate_count") {
        match count.as_u64().filter(|n| CANDIDATE_COUNT.contains(n)) {
            Some(n) => request.n = Some(n as u32),
            None => {
                return Err(AdapterError::InvalidRequest(format!(
                    "generationConfig.candidateCount is {count}; it must be an integer from {} to {}",
                    CANDIDATE_COUNT.start(),
                    CANDIDATE_COUNT.end()
                )));
            }
        }
    }
    request.presence_penalty = get("presencePenalty", "presence_penalty").and_then(Value::as_f64);
    request.frequency_penalty = get("frequencyPenalty", "frequency_penalty").and_then(Value::as_f64);
    request.seed = get("seed", "seed").and_then(Value::as_i64);
    if let Some(stops) = get("stopSequences", "stop_sequences").and_then(Value::as_array) {
        let stops: Vec<String> = stops.iter().filter_map(Value::as_str).map(str::to_owned).collect();
        if !stops.is_empty() {
            request.stop = Some(Stop::Many(stops));
        }
    }
    // Only Anthropic takes top_k among the other providers.
    if let Some(k) = get("topK", "top_k") {
        request.anthropic_extra.insert("top_k".into(), k.clone());
    }
    let schema = get("responseJsonSchema", "response_json_schema").or_else(|| get("responseSchema", "response_schema"));
    match get("responseMimeType", "response_mime_type").and_then(Value::as_str) {
        Some("application/json") => {
            request.response_format = Some(match schema {
                Some(schema) => ResponseFormat {
                    kind: "json_schema".into(),
                    json_schema: Some(JsonSchemaFormat {
                        name: "response".into(),
                        description: None,
                        schema: Some(json_schema(schema)),
                        strict: None,
                    }),
                },
                None => ResponseFormat { kind: "json_object".into(), json_schema: None },
            });
        }
        None | Some("text/plain") => {}
        Some(other) => {
            return Err(AdapterError::Unsupported {
                provider: INGRESS,
                feature: format!("responseMimeType {other:?}"),
                hint: "ask for text/plain or application/json",
            });
        }
    }
    Ok(())
}

fn tools(tools: &[Value]) -> Result<Vec<Tool>, AdapterError> {
    let mut out = Vec::new();
    for tool in tools {
        let Some(object) = tool.as_object() else { continue };
        for (kind, value) in object {
            match kind.as_str() {
                "functionDeclarations" | "function_declarations" => {
                    for decl in value.as_array().into_iter().flatten() {
                        let parameters = field(decl, "parametersJsonSchema", "parameters_json_schema")
                            .or_else(|| decl.get("parameters"))
                            .filter(|p| !p.is_null())
                            .map(json_schema);
                        out.push(Tool {
                            kind: "function".into(),
                            function: FunctionDef {
                                name: str_of(decl, "name").to_string(),
                                description: decl.get("description").and_then(Value::as_str).map(str::to_owned),
                                parameters,
                                strict: None,
                            },
                            extra: Map::new(),
                        });
                    }
                }
                other => {
                    return Err(AdapterError::Unsupported {
                        provider: INGRESS,
                        feature: format!("tool {other:?}"),
                        hint: "declare functions in functionDeclarations and run them client-side",
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Gemini's schema (an OpenAPI subset with upper-case types, `"type": "OBJECT"`)
/// as JSON Schema, which the other providers take.
fn json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| *k != "propertyOrdering" && *k != "property_ordering")
                .map(|(k, v)| match (k.as_str(), v) {
                    ("type", Value::String(t)) => (k.clone(), Value::String(t.to_ascii_lowercase())),
                    // Property names are data, not schema keywords.
                    ("properties", Value::Object(props)) => (
                        k.clone(),
                        Value::Object(props.iter().map(|(name, s)| (name.clone(), json_schema(s))).collect()),
                    ),
                    _ => (k.clone(), json_schema(v)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(json_schema).collect()),
        v => v.clone(),
    }
}

fn tool_choice(config: &Value) -> Option<ToolChoice> {
    let named: Vec<&str> = field(config, "allowedFunctionNames", "allowed_function_names")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mode = |m: &str| Some(ToolChoice::Mode(m.to_string()));
    match config.get("mode").and_then(Value::as_str).unwrap_or("AUTO") {
        "ANY" if named.len() == 1 => Some(ToolChoice::Named(NamedToolChoice {
            kind: "function".into(),
            function: FunctionName { name: named[0].to_string() },
        })),
        "ANY" => mode("required"),
        "NONE" => mode("none"),
        _ => mode("auto"),
    }
}

// === answers ===

fn finish_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "MAX_TOKENS",
        "content_filter" => "SAFETY",
        // Gemini ends a turn of function calls with STOP too.
        _ => "STOP",
    }
}

fn usage_metadata(usage: &Usage) -> Value {
    let mut meta = json!({
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": usage.completion_tokens,
        "totalTokenCount": usage.prompt_tokens + usage.completion_tokens,
    });
    if usage.prompt_tokens_details.is_some() {
        meta["cachedContentTokenCount"] = usage.cached_tokens().into();
    }
    meta
}

/// Tool arguments are JSON text in the canonical form; Gemini's `args` is an object.
fn args(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ if arguments.trim().is_empty() => json!({}),
        // Unparsable arguments (a truncated call) are still shown rather than dropped.
        _ => json!({ "_raw_arguments": arguments }),
    }
}

fn function_call(id: &str, name: &str, arguments: &str) -> Value {
    let mut call = json!({"name": name, "args": args(arguments)});
    if !id.is_empty() {
        call["id"] = id.into();
    }
    json!({ "functionCall": call })
}

fn candidate(index: u32, parts: Vec<Value>, finish: Option<&str>) -> Value {
    let parts = if parts.is_empty() { vec![json!({"text": ""})] } else { parts };
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": index});
    if let Some(finish) = finish {
        candidate["finishReason"] = finish_reason(finish).into();
    }
    candidate
}

/// Canonical answer → `GenerateContentResponse`. `requested_model` is the name
/// the caller used, reported as `modelVersion`.
pub fn chat_response_to_gemini(resp: &ChatResponse, requested_model: &str) -> Value {
    let candidates: Vec<Value> = resp
        .choices
        .iter()
        .map(|choice| {
            let mut parts = Vec::new();
            let text = choice.message.text();
            if !text.is_empty() {
                parts.push(json!({"text": text}));
            }
            for call in choice.message.tool_calls.iter().flatten() {
                parts.push(function_call(&call.id, &call.function.name, &call.function.arguments));
            }
            candidate(choice.index, parts, Some(choice.finish_reason.as_deref().unwrap_or("stop")))
        })
        .collect();
    let mut out = json!({"candidates": candidates, "modelVersion": requested_model, "responseId": resp.id});
    if let Some(usage) = &resp.usage {
        out["usageMetadata"] = usage_metadata(usage);
    }
    out
}

/// Turns canonical chunks into a stream of `GenerateContentResponse`s: one per
/// text delta; function calls, which Gemini sends whole, are gathered from
/// their deltas and sent with the last response, which also carries the
/// finishReason and the final usageMetadata.
pub struct GenerateContentStreamEncoder {
    format: StreamFormat,
    model: String,
    response_id: String,
    /// A JSON array has been opened.
    opened: bool,
    finished: bool,
    /// Canonical tool call index → (id, name, arguments so far).
    calls: BTreeMap<u32, (String, String, String)>,
    finish_reason: Option<String>,
}

impl GenerateContentStreamEncoder {
    pub fn new(format: StreamFormat, requested_model: &str) -> Self {
        GenerateContentStreamEncoder {
            format,
            model: requested_model.to_string(),
            response_id: String::new(),
            opened: false,
            finished: false,
            calls: BTreeMap::new(),
            finish_reason: None,
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self.format {
            StreamFormat::Sse => "text/event-stream",
            StreamFormat::JsonArray => "application/json",
        }
    }

    fn response(&self, candidate: Value) -> Value {
        json!({"candidates": [candidate], "modelVersion": self.model, "responseId": self.response_id})
    }

    fn frame(&mut self, value: &Value) -> Bytes {
        match self.format {
            StreamFormat::Sse => Bytes::from(format!("data: {value}\r\n\r\n")),
            StreamFormat::JsonArray if self.opened => Bytes::from(format!(",\r\n{value}")),
            StreamFormat::JsonArray => {
                self.opened = true;
                Bytes::from(format!("[{value}"))
            }
        }
    }

    pub fn encode(&mut self, chunk: &ChatChunk) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        if self.response_id.is_empty() && !chunk.id.is_empty() {
            self.response_id = chunk.id.clone();
        }
        // Only the first candidate is relayed, as for Anthropic callers.
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                let response = self.response(candidate(0, vec![json!({"text": text})], None));
                out.push(self.frame(&response));
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                let entry = self.calls.entry(call.index).or_default();
                if let Some(id) = call.id.as_deref().filter(|id| !id.is_empty()) {
                    entry.0 = id.to_string();
                }
                if let Some(function) = &call.function {
                    if let Some(name) = function.name.as_deref().filter(|n| !n.is_empty()) {
                        entry.1 = name.to_string();
                    }
                    if let Some(arguments) = &function.arguments {
                        entry.2.push_str(arguments);
                    }
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.clone());
            }
        }
        out
    }

    /// The upstream stream ended: the last response, with the function calls,
    /// the finishReason and `usage` (the billed counts), and the array's end.
    pub fn finish(&mut self, usage: Option<&Usage>, finish_reason: Option<&str>) -> Vec<Bytes> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let parts = self.calls.values().map(|(id, name, arguments)| function_call(id, name, arguments)).collect();
        let reason = finish_reason.or(self.finish_reason.as_deref()).unwrap_or("stop").to_string();
        let mut last = self.response(candidate(0, parts, Some(&reason)));
        if let Some(usage) = usage {
            last["usageMetadata"] = usage_metadata(usage);
        }
        let mut out = vec![self.frame(&last)];
        if self.format == StreamFormat::JsonArray {
            out.push(Bytes::from_static(b"]"));
        }
        out
    }

    /// The stream broke after it started: an error object in the stream's framing, and the end.
    pub fn error(&mut self, kind: ErrorKind, message: &str) -> Bytes {
        self.finished = true;
        let error = gemini_error_json(kind.status(), kind, message);
        match self.format {
            StreamFormat::Sse => Bytes::from(format!("data: {error}\r\n\r\n")),
            StreamFormat::JsonArray => {
                let lead = if self.opened { ",\r\n" } else { "[" };
                self.opened = true;
                Bytes::from(format!("{lead}{error}]"))
            }
        }
    }
}

/// The error of a stream a Gemini provider answered in Gemini's own SSE framing
/// (passed through), for a failure after it started.
pub fn sse_error_event(kind: ErrorKind, message: &str) -> Bytes {
    Bytes::from(format!("data: {}\r\n\r\n", gemini_error_json(kind.status(), kind, message)))
}
