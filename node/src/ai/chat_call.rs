//! What the gateway knows of one chat call before it picks a target: the
//! few fields every call needs (model, stream, output limit, whether the
//! caller wants a usage chunk), and the request itself, which an OpenAI
//! caller's call to an OpenAI-format provider never needs decoded in full
//! (same-format passthrough, `tollgate_llm::passthrough`).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tollgate_llm::error::AdapterError;
use tollgate_llm::passthrough::ChatHead;
use tollgate_llm::tokens;
use tollgate_llm::types::{self, ChatRequest};

/// The caller's OpenAI chat body, decoded into a [`ChatRequest`] only when
/// something needs one: a target of another format, or a prompt estimate
/// (token limits, an answer without usage, a cut stream).
pub struct LazyChat {
    body: Bytes,
    decoded: OnceLock<Arc<ChatRequest>>,
}

impl LazyChat {
    /// The decoded request; a body the head reader accepted but the full
    /// decode refuses is the caller's 400, as it always was.
    pub fn request(&self) -> Result<Arc<ChatRequest>, AdapterError> {
        if let Some(request) = self.decoded.get() {
            return Ok(request.clone());
        }
        let request =
            Arc::new(serde_json::from_slice::<ChatRequest>(&self.body).map_err(AdapterError::MalformedRequest)?);
        Ok(self.decoded.get_or_init(|| request).clone())
    }

    /// The tokenizer's count of the prompt; a body that does not decode is
    /// counted as text (it was never sent anywhere, but a refusal after a
    /// reservation still settles something sensible).
    pub fn prompt_estimate(&self) -> u64 {
        match self.request() {
            Ok(request) => tokens::estimate_prompt_tokens(&request),
            Err(_) => tokens::count_tokens(&String::from_utf8_lossy(&self.body)),
        }
    }
}

/// The request behind a chat call.
#[derive(Clone)]
pub enum ChatSource {
    /// Decoded up front: the Anthropic and Gemini ingresses (translated from
    /// their formats) and the gateway's own calls (prompt APIs).
    Decoded(Arc<ChatRequest>),
    /// An OpenAI caller's bytes, decoded only if needed.
    Raw(Arc<LazyChat>),
}

impl ChatSource {
    pub fn request(&self) -> Result<Arc<ChatRequest>, AdapterError> {
        match self {
            ChatSource::Decoded(request) => Ok(request.clone()),
            ChatSource::Raw(lazy) => lazy.request(),
        }
    }
}

/// One chat call's facts, read once.
pub struct ChatCall {
    pub requested: String,
    pub stream: bool,
    pub output_limit: Option<u64>,
    /// The caller asked for a usage chunk at the end of its stream.
    pub wants_usage_chunk: bool,
    pub source: ChatSource,
}

impl ChatCall {
    pub fn decoded(request: ChatRequest) -> ChatCall {
        ChatCall {
            requested: request.model.clone(),
            stream: request.is_stream(),
            output_limit: request.output_limit(),
            wants_usage_chunk: types::wants_usage_chunk(&request),
            source: ChatSource::Decoded(Arc::new(request)),
        }
    }

    /// An OpenAI caller's body, read only as far as its head: the rest is
    /// checked to be JSON and goes to an OpenAI-format provider as it is.
    pub fn raw(body: &Bytes) -> Result<ChatCall, AdapterError> {
        let head = ChatHead::read(body)?;
        Ok(ChatCall {
            requested: head.model.to_string(),
            stream: head.is_stream(),
            output_limit: head.output_limit(),
            wants_usage_chunk: head.wants_usage_chunk(),
            source: ChatSource::Raw(Arc::new(LazyChat { body: body.clone(), decoded: OnceLock::new() })),
        })
    }
}
