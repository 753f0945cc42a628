//! The AI gateway: one OpenAI-compatible API (and Anthropic- and
//! Gemini-format ingress) over many providers, with token and cost accounting.
//!
//! The translation layer is pure and lives in `tollgate-llm` — canonical
//! (OpenAI-format) types, provider adapters, SSE decoding, the Anthropic and
//! Gemini ingresses, token estimation, the price catalog. This module is the
//! request path (`gateway`, `stream`, `account`) that sends what it builds,
//! and the state it reads (`snapshot`, `pricing`, `cooldown`); usage records go to
//! the node's ledger (`crate::usage`).

pub mod account;
pub mod chat_call;
pub mod cooldown;
pub mod gateway;
pub mod limits;
pub mod pricing;
pub mod prompt;
pub mod prompt_doc;
pub mod snapshot;
pub mod stream;

#[cfg(test)]
mod stream_tests;
