//! Provider adapters: one per upstream API family, all behind [`ProviderAdapter`].
//!
//! An adapter is stateless and pure: it builds the upstream `http::Request`, reads upstream
//! bodies into canonical (OpenAI-format) types and classifies upstream errors. Sending is the
//! proxy's job. Streams go through a per-request [`StreamDecoder`].

pub mod anthropic;
pub mod azure;
pub mod gemini;
pub mod openai;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method};

use crate::error::{AdapterError, ProviderError};
use crate::sse::SseParser;
use crate::types::{ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    OpenAiCompatible,
    Anthropic,
    Gemini,
    AzureOpenAi,
}

/// The adapter for a provider kind. Adapters hold no state, so one static instance serves all.
pub fn adapter(kind: ProviderKind) -> &'static dyn ProviderAdapter {
    match kind {
        ProviderKind::OpenAi => &openai::OPENAI,
        ProviderKind::OpenAiCompatible => &openai::OPENAI_COMPATIBLE,
        ProviderKind::Anthropic => &anthropic::AnthropicAdapter,
        ProviderKind::Gemini => &gemini::GeminiAdapter,
        ProviderKind::AzureOpenAi => &azure::AzureAdapter,
    }
}

/// Where and as whom to call the provider, resolved by the gateway from its provider config.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTarget<'a> {
    /// e.g. "https://api.openai.com/v1", Anthropic "https://api.anthropic.com",
    /// Gemini "https://generativelanguage.googleapis.com", Azure "https://res.openai.azure.com".
    pub base_url: &'a str,
    /// The provider's model id (Azure: the deployment name).
    pub model: &'a str,
    pub api_key: &'a str,
    /// Azure `api-version` (default "2024-10-21"), Anthropic `anthropic-version` (default "2023-06-01").
    pub api_version: Option<&'a str>,
    pub extra_headers: &'a [(String, String)],
}

pub trait ProviderAdapter: Send + Sync {
    fn kind(&self) -> ProviderKind;
    /// OpenTelemetry GenAI `gen_ai.system` value: "openai", "anthropic", "gcp.gemini", "az.ai.openai", ...
    fn system(&self) -> &'static str;
    fn chat_request(
        &self,
        req: &ChatRequest,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError>;
    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, AdapterError>;
    fn stream_decoder(&self) -> Box<dyn StreamDecoder>;
    fn embeddings_request(
        &self,
        req: &EmbeddingsRequest,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError>;
    fn embeddings_response(&self, body: &[u8]) -> Result<EmbeddingsResponse, AdapterError>;
    /// Classifies a non-2xx upstream answer (reads Retry-After / retry-after-ms / provider-specific hints).
    fn error(&self, status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> ProviderError;
    /// A body already in OpenAI's wire format (the caller's own, edited by
    /// [`crate::passthrough::rewrite_request`]), sent as it is: the same-format
    /// passthrough. Only the adapters that speak that format accept it.
    fn openai_wire_request(
        &self,
        operation: OpenAiOperation,
        _body: Vec<u8>,
        _stream: bool,
        _target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        Err(AdapterError::Unsupported {
            provider: self.system(),
            feature: format!("an OpenAI-format {operation} body"),
            hint: "the gateway translates the request for this provider",
        })
    }
}

/// The OpenAI endpoints a passed-through body can go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAiOperation {
    Chat,
    Embeddings,
}

impl std::fmt::Display for OpenAiOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenAiOperation::Chat => "chat completions",
            OpenAiOperation::Embeddings => "embeddings",
        })
    }
}

pub trait StreamDecoder: Send {
    /// Raw upstream body bytes in (any split); canonical OpenAI chunks out. The provider's usage
    /// arrives as a final chunk with empty `choices` (forward it only if [`wants_usage_chunk`]).
    ///
    /// [`wants_usage_chunk`]: crate::types::wants_usage_chunk
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<ChatChunk>, AdapterError>;
    /// Upstream body ended. `Err(AdapterError::Truncated{..})` if the provider's end marker
    /// ([DONE] / message_stop / Gemini finishReason) never came.
    fn finish(&mut self) -> Result<Vec<ChatChunk>, AdapterError>;
    /// Usage reported by the provider so far, if any (partial usage counts: Anthropic's
    /// message_start input tokens even if cut).
    fn usage(&self) -> Option<Usage>;
    /// Whether [`usage`](Self::usage) holds the provider's final counts (its output count
    /// included). Before that, what a provider reported is partial — Anthropic's
    /// `message_start` carries a placeholder `output_tokens: 1`, Gemini's running
    /// `candidatesTokenCount` is not final — so a stream cut or cancelled earlier is billed
    /// for its output by the tokenizer, from [`output_text`](Self::output_text).
    fn usage_is_final(&self) -> bool;
    fn finish_reason(&self) -> Option<String>;
    /// Text produced so far (content + tool-call arguments), so the gateway can estimate output
    /// tokens when the provider gave no usage.
    fn output_text(&self) -> &str;
}

/// The provider-specific half of a stream decoder: what one SSE event's `data` means. The SSE
/// framing around it is shared by [`SseStream`].
pub(crate) trait EventDecoder: Send {
    fn on_event(&mut self, data: &str, out: &mut Vec<ChatChunk>) -> Result<(), AdapterError>;
    /// The body ended: `Err(AdapterError::Truncated{..})` unless the end marker came.
    fn on_end(&mut self, out: &mut Vec<ChatChunk>) -> Result<(), AdapterError>;
    fn usage(&self) -> Option<Usage>;
    fn usage_is_final(&self) -> bool;
    fn finish_reason(&self) -> Option<String>;
    fn output_text(&self) -> &str;
}

pub(crate) struct SseStream<E> {
    sse: SseParser,
    inner: E,
}

impl<E: EventDecoder + 'static> SseStream<E> {
    pub(crate) fn boxed(provider: &'static str, inner: E) -> Box<dyn StreamDecoder> {
        Box::new(SseStream { sse: SseParser::new(provider), inner })
    }
}

impl<E: EventDecoder> StreamDecoder for SseStream<E> {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<ChatChunk>, AdapterError> {
        let mut out = Vec::new();
        for ev in self.sse.feed(bytes)? {
            self.inner.on_event(&ev.data, &mut out)?;
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<ChatChunk>, AdapterError> {
        let mut out = Vec::new();
        for ev in self.sse.finish()? {
            self.inner.on_event(&ev.data, &mut out)?;
        }
        self.inner.on_end(&mut out)?;
        Ok(out)
    }

    fn usage(&self) -> Option<Usage> {
        self.inner.usage()
    }

    fn usage_is_final(&self) -> bool {
        self.inner.usage_is_final()
    }

    fn finish_reason(&self) -> Option<String> {
        self.inner.finish_reason()
    }

    fn output_text(&self) -> &str {
        self.inner.output_text()
    }
}

/// `base_url` + `path`, tolerating a trailing slash on the configured base.
pub(crate) fn join_url(base_url: &str, path: &str) -> String {
    format!("{}{}", base_url.trim_end_matches('/'), path)
}

/// A JSON POST with the auth header, the operator's extra headers and, for streams, `accept`.
pub(crate) fn post_json(
    url: &str,
    auth: &[(&str, &str)],
    target: &UpstreamTarget<'_>,
    stream: bool,
    body: Vec<u8>,
) -> Result<http::Request<Bytes>, AdapterError> {
    let uri: http::Uri = url.parse().map_err(|e| AdapterError::InvalidTarget(format!("URL {url:?}: {e}")))?;
    let mut builder = http::Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if stream {
        builder = builder.header(ACCEPT, HeaderValue::from_static("text/event-stream"));
    }
    let mut req = builder.body(Bytes::from(body)).map_err(|e| AdapterError::InvalidTarget(e.to_string()))?;
    let headers = req.headers_mut();
    for (name, value) in
        auth.iter().map(|(n, v)| (*n, *v)).chain(target.extra_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            AdapterError::InvalidTarget(format!("header name {name:?} is not a valid HTTP header name"))
        })?;
        // The value may be a key: never echo it in the message.
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| AdapterError::InvalidTarget(format!("value of header {name} has characters HTTP forbids")))?;
        if auth.iter().any(|(n, _)| name.as_str().eq_ignore_ascii_case(n)) {
            value.set_sensitive(true);
        }
        headers.insert(name, value);
    }
    Ok(req)
}

pub(crate) fn to_json_body<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, AdapterError> {
    serde_json::to_vec(value).map_err(|e| AdapterError::InvalidRequest(format!("cannot serialize request: {e}")))
}

/// Seconds since the Unix epoch, for the `created` field of answers translated from providers
/// that do not send one.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `chatcmpl-` + 24 random hex digits, for providers whose answers carry no id.
pub(crate) fn new_completion_id() -> String {
    format!("chatcmpl-{}", hex::encode(rand::random::<[u8; 12]>()))
}
