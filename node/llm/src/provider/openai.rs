//! OpenAI and OpenAI-compatible servers (Mistral, Groq, DeepSeek, Together, vLLM, Ollama, ...).
//!
//! The canonical types are the OpenAI wire format, so requests and answers pass through with
//! only the model replaced and usage reporting switched on for streams.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::{
    EventDecoder, OpenAiOperation, ProviderAdapter, ProviderKind, SseStream, StreamDecoder, UpstreamTarget, join_url,
    post_json, to_json_body,
};
use crate::error::{AdapterError, ErrorKind, ProviderError, classify, error_object};
use crate::types::{ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, StreamOptions, Usage};

pub struct OpenAiAdapter {
    kind: ProviderKind,
    system: &'static str,
}

pub static OPENAI: OpenAiAdapter = OpenAiAdapter { kind: ProviderKind::OpenAi, system: "openai" };
/// Compatible servers share the code; `gen_ai.system` has no value per vendor behind a base URL,
/// so they report the generic one.
pub static OPENAI_COMPATIBLE: OpenAiAdapter =
    OpenAiAdapter { kind: ProviderKind::OpenAiCompatible, system: "openai_compatible" };

impl ProviderAdapter for OpenAiAdapter {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    fn system(&self) -> &'static str {
        self.system
    }

    fn chat_request(
        &self,
        req: &ChatRequest,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        let body = to_json_body(&upstream_chat_body(req, target.model))?;
        self.openai_wire_request(OpenAiOperation::Chat, body, req.is_stream(), target)
    }

    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, AdapterError> {
        parse_chat_response(self.system, body)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        SseStream::boxed(self.system, OpenAiStreamDecoder::new(self.system, false))
    }

    fn embeddings_request(
        &self,
        req: &EmbeddingsRequest,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        let mut upstream = req.clone();
        upstream.model = target.model.to_owned();
        self.openai_wire_request(OpenAiOperation::Embeddings, to_json_body(&upstream)?, false, target)
    }

    fn embeddings_response(&self, body: &[u8]) -> Result<EmbeddingsResponse, AdapterError> {
        parse_embeddings_response(self.system, body)
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        classify_openai_error(status, headers, body)
    }

    fn openai_wire_request(
        &self,
        operation: OpenAiOperation,
        body: Vec<u8>,
        stream: bool,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        let path = match operation {
            OpenAiOperation::Chat => "/chat/completions",
            OpenAiOperation::Embeddings => "/embeddings",
        };
        let bearer = format!("Bearer {}", target.api_key);
        post_json(&join_url(target.base_url, path), &[("authorization", &bearer)], target, stream, body)
    }
}

/// The caller's request with the provider's model id and, for streams, usage reporting forced on:
/// the gateway bills from the provider's own counts.
pub(crate) fn upstream_chat_body(req: &ChatRequest, model: &str) -> ChatRequest {
    let mut upstream = req.clone();
    upstream.model = model.to_owned();
    if req.is_stream() {
        upstream.stream_options.get_or_insert_with(StreamOptions::default).include_usage = Some(true);
    }
    upstream
}

pub(crate) fn parse_chat_response(provider: &'static str, body: &[u8]) -> Result<ChatResponse, AdapterError> {
    serde_json::from_slice(body).map_err(|e| AdapterError::bad_payload(provider, format!("chat completion: {e}")))
}

pub(crate) fn parse_embeddings_response(
    provider: &'static str,
    body: &[u8],
) -> Result<EmbeddingsResponse, AdapterError> {
    serde_json::from_slice(body).map_err(|e| AdapterError::bad_payload(provider, format!("embeddings: {e}")))
}

/// OpenAI and Azure share the `{"error":{"message","type","code"}}` shape; compatible servers
/// sometimes answer `{"message": ..}` or `{"detail": ..}` (vLLM, FastAPI) instead.
pub(crate) fn classify_openai_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let error = error_object(body);
    let top: Option<Value> = serde_json::from_slice(body).ok();
    let message = error
        .as_ref()
        .and_then(|e| e.get("message").or_else(|| e.as_str().map(|_| e)))
        .or_else(|| top.as_ref().and_then(|t| t.get("message").or_else(|| t.get("detail"))))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let code = error.as_ref().and_then(|e| e.get("code").or_else(|| e.get("type"))).and_then(Value::as_str);
    let hint = match code {
        Some("context_length_exceeded") => Some(ErrorKind::InvalidRequest),
        // A 503 telling "overloaded" (OpenAI's "engine_overloaded") is the same condition as
        // Anthropic's 529: back off and retry.
        Some(c) if c.contains("overloaded") => Some(ErrorKind::Overloaded),
        _ => None,
    };
    classify(status, headers, body, message, hint)
}

/// Reads an OpenAI-format SSE stream. Also used for Azure, which adds a leading chunk with empty
/// `choices` (prompt filter results) that is dropped when `drop_empty` is set.
pub(crate) struct OpenAiStreamDecoder {
    provider: &'static str,
    done: bool,
    drop_empty: bool,
    usage: Option<Usage>,
    /// The usage came in the final usage-only chunk (empty `choices`), not on a content chunk
    /// (some compatible servers report running counts on every chunk).
    final_usage: bool,
    finish_reason: Option<String>,
    text: String,
}

impl OpenAiStreamDecoder {
    pub(crate) fn new(provider: &'static str, drop_empty: bool) -> Self {
        OpenAiStreamDecoder {
            provider,
            done: false,
            drop_empty,
            usage: None,
            final_usage: false,
            finish_reason: None,
            text: String::new(),
        }
    }

    fn event(&mut self, data: &str, out: &mut Vec<ChatChunk>) -> Result<(), AdapterError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if data.is_empty() || self.done {
            return Ok(());
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|e| AdapterError::bad_payload(self.provider, format!("stream chunk is not JSON: {e}")))?;
        if value.get("error").is_some() {
            let error = classify_openai_error(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new(), data.as_bytes());
            return Err(AdapterError::UpstreamStream { provider: self.provider, error });
        }
        let chunk: ChatChunk = serde_json::from_value(value)
            .map_err(|e| AdapterError::bad_payload(self.provider, format!("stream chunk: {e}")))?;
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage.clone());
            self.final_usage = chunk.choices.is_empty();
        }
        for choice in &chunk.choices {
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.clone());
            }
            if let Some(content) = &choice.delta.content {
                self.text.push_str(content);
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                if let Some(args) = call.function.as_ref().and_then(|f| f.arguments.as_deref()) {
                    self.text.push_str(args);
                }
            }
        }
        if !(self.drop_empty && chunk.choices.is_empty() && chunk.usage.is_none()) {
            out.push(chunk);
        }
        Ok(())
    }
}

impl EventDecoder for OpenAiStreamDecoder {
    fn on_event(&mut self, data: &str, out: &mut Vec<ChatChunk>) -> Result<(), AdapterError> {
        self.event(data, out)
    }

    fn on_end(&mut self, _: &mut Vec<ChatChunk>) -> Result<(), AdapterError> {
        if !self.done {
            return Err(AdapterError::Truncated { provider: self.provider, marker: "data: [DONE]" });
        }
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.clone()
    }

    fn usage_is_final(&self) -> bool {
        self.usage.is_some() && (self.final_usage || self.done)
    }

    fn finish_reason(&self) -> Option<String> {
        self.finish_reason.clone()
    }

    fn output_text(&self) -> &str {
        &self.text
    }
}
