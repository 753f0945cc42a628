//! The AI gateway: one OpenAI-compatible API (and Anthropic- and
//! Gemini-format ingress) over many providers, with token and cost accounting.
//!
//! The translation layer is pure — canonical (OpenAI-format) types, provider
//! adapters, SSE decoding, the Anthropic and Gemini ingresses, token
//! estimation — and the
//! request path (`gateway`, `stream`, `account`) sends what it builds.

pub mod account;
pub mod anthropic_ingress;
pub mod catalog;
pub mod cooldown;
pub mod error;
pub mod gateway;
pub mod gemini_ingress;
pub mod ledger;
pub mod metrics;
pub mod provider;
pub mod snapshot;
pub mod sse;
pub mod stream;
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
