//! The AI gateway: one OpenAI-compatible API (and Anthropic-format ingress)
//! over many providers, with token and cost accounting.

pub mod catalog;
pub mod ledger;
pub mod metrics;
pub mod cooldown;
pub mod snapshot;
pub mod account;
pub mod gateway;
pub mod stream;
