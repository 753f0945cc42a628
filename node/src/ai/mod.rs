//! The AI gateway: one OpenAI-compatible API (and Anthropic-format ingress)
//! over many providers, with token and cost accounting.

pub mod catalog;
pub mod ledger;
