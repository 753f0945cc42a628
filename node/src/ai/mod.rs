//! AI gateway translation layer: canonical (OpenAI-format) types, provider adapters, SSE
//! decoding, the Anthropic-format ingress, and token estimation.
//!
//! Everything here is pure: no sockets, no entities. The proxy sends the `http::Request`s built
//! here, feeds upstream bytes back in, and writes what comes out to the caller.

pub mod anthropic_ingress;
pub mod error;
pub mod provider;
pub mod sse;
pub mod tokens;
pub mod types;

#[cfg(test)]
mod golden_tests;

pub use error::{
    AdapterError, ErrorKind, ProviderError, anthropic_error_body, anthropic_error_event, openai_error_body,
};
pub use provider::{ProviderAdapter, ProviderKind, StreamDecoder, UpstreamTarget, adapter};
pub use types::wants_usage_chunk;
