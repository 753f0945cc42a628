//! Prompt APIs (DESIGN §6): `POST` a JSON object of the declared variables
//! to a prompt service's route and get the model's answer, as the JSON the
//! output schema describes (or `{"output": "<text>"}` without one). The
//! template is filled in here; the call itself is the AI gateway's
//! (`gateway::chat`), so aliases, key pools, fallbacks, token limits and
//! the cost ledger apply as to any AI request.
//!
//! - A missing, unknown or mistyped variable is 400 naming it.
//! - Output that does not parse as JSON or match the schema is asked for
//!   once more, with the reason; then 502 with it. Both calls are billed.
//! - `Accept: text/event-stream` streams: `delta` events carry the text as
//!   it comes, then one `output` event (the checked JSON, or the text) or
//!   one `error` event, then `done`. A stream cannot be asked for again.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Map, Value, json};
use tollgate_llm::sse::SseParser;
use tollgate_llm::types::ChatRequest;
use tollgate_proto::config::v1::{PromptSpec, PromptVariableType};
use tollgate_proto::prompt::{Segment, segments};

use super::gateway::{AiCall, AiOutcome, RequestBodyError, read_request};
use super::snapshot::{AiShared, AiSnapshot};
use crate::plumbing::{BoxError, GatewayBody};
use crate::telemetry::metrics::Metrics;

/// A string variable's longest value when the spec names none.
const DEFAULT_MAX_LENGTH: usize = 32 << 10;
/// The largest non-streamed answer read back from the gateway.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// A prompt service's spec, with its output schema compiled once per state.
pub struct CompiledPrompt {
    pub spec: PromptSpec,
    /// None without a schema; Err when it does not compile (admission
    /// refuses such schemas, so only state from elsewhere has one).
    output: Option<Result<jsonschema::Validator, String>>,
}

impl CompiledPrompt {
    pub fn compile(spec: &PromptSpec) -> CompiledPrompt {
        let output = (!spec.output_schema.is_empty()).then(|| {
            let schema: Value = serde_json::from_str(&spec.output_schema).map_err(|e| e.to_string())?;
            jsonschema::validator_for(&schema).map_err(|e| e.to_string())
        });
        CompiledPrompt { spec: spec.clone(), output }
    }

    /// The request's variables, each checked against its declaration.
    pub fn variables(&self, body: &[u8]) -> Result<Map<String, Value>, VariableError> {
        let parsed: Value = serde_json::from_slice(body).map_err(|e| VariableError {
            variable: String::new(),
            message: format!("the body must be a JSON object of the variables: {e}"),
        })?;
        let Value::Object(given) = parsed else {
            return Err(VariableError { variable: String::new(), message: "the body must be a JSON object".into() });
        };
        if let Some(unknown) = given.keys().find(|k| !self.spec.variables.iter().any(|v| &v.name == *k)) {
            return Err(VariableError::of(unknown, "is not a variable of this API"));
        }
        for declared in &self.spec.variables {
            match given.get(&declared.name) {
                None | Some(Value::Null) if declared.required => {
                    return Err(VariableError::of(&declared.name, "is required"));
                }
                None | Some(Value::Null) => {}
                Some(value) => check_type(declared, value)?,
            }
        }
        Ok(given)
    }

    /// The chat completion the template and `variables` make.
    pub fn chat_request(&self, variables: &Map<String, Value>, stream: bool) -> ChatRequest {
        let messages: Vec<Value> = self
            .spec
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": fill(&m.content, variables)}))
            .collect();
        let mut request = json!({"model": self.spec.model, "messages": messages});
        let fields = request.as_object_mut().expect("built as an object");
        if stream {
            fields.insert("stream".into(), Value::Bool(true));
            fields.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if let Some(t) = self.spec.temperature {
            fields.insert("temperature".into(), json!(t));
        }
        if let Some(p) = self.spec.top_p {
            fields.insert("top_p".into(), json!(p));
        }
        if let Some(n) = self.spec.max_tokens {
            fields.insert("max_tokens".into(), json!(n));
        }
        if self.output.is_some() {
            fields.insert("response_format".into(), json!({"type": "json_object"}));
        }
        serde_json::from_value(request).expect("a chat request built from its own fields")
    }

    /// The answer for the caller: the output as JSON when it meets the
    /// schema, `{"output": text}` without one, or why it does not.
    pub fn output(&self, text: &str) -> Result<Value, OutputError> {
        let Some(validator) = &self.output else { return Ok(json!({"output": text})) };
        let validator = validator.as_ref().map_err(|e| OutputError::Schema(e.clone()))?;
        let value: Value = serde_json::from_str(strip_fences(text)).map_err(|e| OutputError::NotJson(e.to_string()))?;
        let mismatch = validator.iter_errors(&value).next().map(|e| format!("{e} at {}", e.instance_path()));
        match mismatch {
            None => Ok(value),
            Some(reason) => Err(OutputError::Mismatch(reason)),
        }
    }
}

/// Why a model's output is not what the API promises.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("the model's output is not JSON ({0})")]
    NotJson(String),
    #[error("the model's output does not match the output schema: {0}")]
    Mismatch(String),
    #[error("the API's output schema does not compile: {0}; an admin must fix it")]
    Schema(String),
}

/// Models often wrap JSON in a Markdown code fence; the JSON is inside.
fn strip_fences(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(inner) = trimmed.strip_prefix("```") else { return trimmed };
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    inner.strip_suffix("```").unwrap_or(inner).trim()
}

fn fill(template: &str, variables: &Map<String, Value>) -> String {
    // Apply refused templates that do not parse or name undeclared variables.
    let Ok(pieces) = segments(template) else { return template.to_string() };
    pieces
        .into_iter()
        .map(|piece| match piece {
            Segment::Text(text) => text.to_string(),
            Segment::Variable(name) => match variables.get(name) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            },
        })
        .collect()
}

fn check_type(declared: &tollgate_proto::config::v1::PromptVariable, value: &Value) -> Result<(), VariableError> {
    let kind = PromptVariableType::try_from(declared.r#type).unwrap_or_default();
    let fits = match kind {
        PromptVariableType::Unspecified | PromptVariableType::String => value.is_string(),
        PromptVariableType::Number => value.is_number(),
        PromptVariableType::Integer => value.is_i64() || value.is_u64(),
        PromptVariableType::Boolean => value.is_boolean(),
    };
    if !fits {
        return Err(VariableError::of(&declared.name, &format!("must be {}", type_name(kind))));
    }
    if let Value::String(text) = value {
        let max = if declared.max_length == 0 { DEFAULT_MAX_LENGTH } else { declared.max_length as usize };
        if text.chars().count() > max {
            return Err(VariableError::of(&declared.name, &format!("is longer than {max} characters")));
        }
        if !declared.allowed.is_empty() && !declared.allowed.iter().any(|a| a == text) {
            return Err(VariableError::of(&declared.name, &format!("must be one of {}", declared.allowed.join(", "))));
        }
    }
    Ok(())
}

pub fn type_name(kind: PromptVariableType) -> &'static str {
    match kind {
        PromptVariableType::Unspecified | PromptVariableType::String => "string",
        PromptVariableType::Number => "number",
        PromptVariableType::Integer => "integer",
        PromptVariableType::Boolean => "boolean",
    }
}

/// A variable the request got wrong.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct VariableError {
    pub variable: String,
    pub message: String,
}

impl VariableError {
    fn of(name: &str, what: &str) -> VariableError {
        VariableError { variable: name.to_string(), message: format!("variable {name:?} {what}") }
    }
}

fn json_answer(status: StatusCode, body: &Value) -> Response<GatewayBody> {
    let bytes = Bytes::from(body.to_string());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed_unsync())
        .expect("a static response is valid")
}

fn error_answer(status: StatusCode, code: &str, message: &str, variable: Option<&str>) -> Response<GatewayBody> {
    let mut error = json!({"code": code, "message": message});
    if let Some(variable) = variable {
        error["variable"] = Value::String(variable.to_string());
    }
    json_answer(status, &json!({"error": error}))
}

fn answered(response: Response<GatewayBody>) -> AiOutcome {
    AiOutcome { response, provider: None, attempts: 0, recorded: false }
}

/// Everything a prompt call needs of the gateway.
pub struct Gateway<'a> {
    pub shared: &'a Arc<AiShared>,
    pub snapshot: &'a AiSnapshot,
    pub metrics: &'a Arc<Metrics>,
}

pub async fn serve(
    gateway: Gateway<'_>,
    call: AiCall,
    prompt: &Arc<CompiledPrompt>,
    parts: http::request::Parts,
    body: Incoming,
) -> AiOutcome {
    if parts.method != http::Method::POST {
        let mut response =
            error_answer(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "a prompt API takes POST", None);
        response.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        return answered(response);
    }
    let bytes = match read_request(&call, body).await {
        Ok(bytes) => bytes,
        Err(RequestBodyError::Timeout(error)) => {
            return answered(error_answer(StatusCode::REQUEST_TIMEOUT, "body_timeout", &error.to_string(), None));
        }
        Err(RequestBodyError::Refused(status, message)) => {
            return answered(error_answer(status, "invalid_request", &message, None));
        }
    };
    let variables = match prompt.variables(&bytes) {
        Ok(variables) => variables,
        Err(e) => {
            let variable = (!e.variable.is_empty()).then_some(e.variable.as_str());
            return answered(error_answer(StatusCode::BAD_REQUEST, "invalid_variable", &e.message, variable));
        }
    };
    let wants_stream = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if wants_stream {
        stream(gateway, &call, prompt, &variables).await
    } else {
        once(gateway, &call, prompt, &variables).await
    }
}

/// Asks, checks, asks once more with the reason, and answers.
async fn once(
    gateway: Gateway<'_>,
    call: &AiCall,
    prompt: &CompiledPrompt,
    variables: &Map<String, Value>,
) -> AiOutcome {
    let mut request = prompt.chat_request(variables, false);
    let mut attempts = 0;
    let mut reason = String::new();
    let mut last_provider = None;
    for _ in 0..2 {
        let outcome =
            super::gateway::chat(gateway.shared, gateway.snapshot, gateway.metrics, call, request.clone()).await;
        attempts += outcome.attempts;
        let provider = outcome.provider.clone();
        last_provider.clone_from(&provider);
        if outcome.response.status() != StatusCode::OK {
            return AiOutcome { attempts, ..outcome };
        }
        let text = match answer_text(outcome.response).await {
            Ok(text) => text,
            Err(error) => {
                let response = error_answer(StatusCode::BAD_GATEWAY, "provider_error", &error, None);
                return AiOutcome { response, provider, attempts, recorded: true };
            }
        };
        match prompt.output(&text) {
            Ok(value) => {
                return AiOutcome { response: json_answer(StatusCode::OK, &value), provider, attempts, recorded: true };
            }
            Err(why) => {
                tracing::info!(request_id = %call.request_id, reason = %why, "prompt output refused; asking once more");
                request
                    .messages
                    .push(serde_json::from_value(json!({"role": "assistant", "content": text})).expect("a message"));
                let again = format!("{why}. Answer again with only JSON that meets the schema.");
                request
                    .messages
                    .push(serde_json::from_value(json!({"role": "user", "content": again})).expect("a message"));
                reason = why.to_string();
            }
        }
    }
    let message = format!("asked twice, the model did not answer as the API promises: {reason}");
    AiOutcome {
        response: error_answer(StatusCode::BAD_GATEWAY, "output_invalid", &message, None),
        provider: None,
        attempts,
        recorded: true,
    }
}

/// The text of an OpenAI-format chat completion.
async fn answer_text(response: Response<GatewayBody>) -> Result<String, String> {
    // Read frame by frame: `Limited` over a body of boxed errors trips a
    // rustc limitation on the Send-ness of this future.
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the answer could not be read: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_ANSWER_BYTES {
                return Err(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"));
            }
            bytes.extend_from_slice(&data);
        }
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))?;
    match &value["choices"][0]["message"]["content"] {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        other => Ok(other.to_string()),
    }
}

/// Streams the text as it comes, then the checked output.
async fn stream(
    gateway: Gateway<'_>,
    call: &AiCall,
    prompt: &Arc<CompiledPrompt>,
    variables: &Map<String, Value>,
) -> AiOutcome {
    let request = prompt.chat_request(variables, true);
    let outcome = super::gateway::chat(gateway.shared, gateway.snapshot, gateway.metrics, call, request).await;
    if outcome.response.status() != StatusCode::OK {
        return outcome;
    }
    let AiOutcome { response, provider, attempts, recorded } = outcome;
    let (mut head, upstream) = response.into_parts();
    let relay = Relay {
        upstream,
        parser: SseParser::new("gateway"),
        text: String::new(),
        prompt: prompt.clone(),
        finished: false,
    };
    let events = futures::stream::unfold(relay, relay_frame);
    head.headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    head.headers.remove(header::CONTENT_LENGTH);
    AiOutcome {
        response: Response::from_parts(head, StreamBody::new(events).boxed_unsync()),
        provider,
        attempts,
        recorded,
    }
}

/// The next frame of the prompt API's stream, until its last.
async fn relay_frame(mut relay: Relay) -> Option<(Result<Frame<Bytes>, BoxError>, Relay)> {
    while !relay.finished {
        if let Some(bytes) = relay.next_events().await {
            return Some((Ok(Frame::data(bytes)), relay));
        }
    }
    None
}

/// Turns the gateway's OpenAI-format stream into the prompt API's events.
struct Relay {
    upstream: GatewayBody,
    parser: SseParser,
    text: String,
    prompt: Arc<CompiledPrompt>,
    finished: bool,
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl Relay {
    /// The events the next piece of the upstream makes, if any.
    async fn next_events(&mut self) -> Option<Bytes> {
        let piece = match self.upstream.frame().await {
            Some(Ok(frame)) => frame.into_data().ok()?,
            Some(Err(error)) => return Some(self.end(Err(format!("the model's stream broke: {error}")))),
            None => {
                let result = self.prompt.output(&self.text).map_err(|e| e.to_string());
                return Some(self.end(result));
            }
        };
        let events = match self.parser.feed(&piece) {
            Ok(events) => events,
            Err(error) => return Some(self.end(Err(error.to_string()))),
        };
        let mut out = String::new();
        for sse in events.iter().filter(|e| e.data != "[DONE]") {
            let Ok(chunk) = serde_json::from_str::<Value>(&sse.data) else { continue };
            if let Some(error) = chunk.get("error") {
                return Some(self.end(Err(error["message"].as_str().unwrap_or("the model failed").to_string())));
            }
            if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str().filter(|d| !d.is_empty()) {
                self.text.push_str(delta);
                out += &event("delta", &json!({"text": delta}));
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    fn end(&mut self, result: Result<Value, String>) -> Bytes {
        self.finished = true;
        let last = match result {
            Ok(output) => event("output", &output),
            Err(reason) => event("error", &json!({"code": "output_invalid", "message": reason})),
        };
        Bytes::from(last + &event("done", &json!({})))
    }
}
