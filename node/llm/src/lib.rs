//! Tollgate's LLM translation layer: the canonical (OpenAI-format) request,
//! response and stream types, one adapter per provider family (OpenAI and
//! OpenAI-compatible servers, Azure OpenAI, Anthropic Messages, Google Gemini),
//! SSE decoding, the Anthropic- and Gemini-format ingresses, token estimation
//! and the built-in price catalog.
//!
//! Everything here is a pure function of its input: an adapter builds an
//! `http::Request<Bytes>` and reads bytes back, and never sends or receives
//! anything itself. This crate does no I/O: no sockets, no runtime, no
//! storage, no Raft. The node (`tollgate-node`, `ai::gateway` and
//! `ai::stream`) calls the providers, enforces keys, limits and budgets, and
//! resolves price overrides replicated through the admin API; none of that
//! belongs here.
//!
//! The golden tests (`golden_tests/`) replay the providers' documented
//! examples, kept as files under `tests/fixtures/<provider>/`.
#![forbid(unsafe_code)]

pub mod anthropic_ingress;
pub mod catalog;
pub mod error;
pub mod gemini_ingress;
pub mod passthrough;
pub mod provider;
pub mod sse;
pub mod tokens;
pub mod types;

#[cfg(test)]
mod golden_tests;

pub use error::{
    AdapterError, ErrorKind, ProviderError, anthropic_error_body, anthropic_error_event, gemini_error_body,
    openai_error_body,
};
pub use provider::{ProviderAdapter, ProviderKind, StreamDecoder, UpstreamTarget, adapter};
pub use types::wants_usage_chunk;
