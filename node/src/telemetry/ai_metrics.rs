//! Prometheus series of the AI gateway, per provider, model, credential and
//! consumer. Label sets are bounded by configuration (providers, their keys,
//! consumers, aliases, priced or listed models), not by client input: a
//! free-form `provider/model` that no configuration names is labelled "other".

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabels {
    pub provider: String,
    pub model: String,
    pub credential: String,
    pub consumer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub provider: String,
    pub model: String,
    pub credential: String,
    pub consumer: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub provider: String,
    pub model: String,
    pub credential: String,
    pub consumer: String,
    /// "input", "output" or "cached_input".
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptErrorLabels {
    pub provider: String,
    pub model: String,
    pub credential: String,
    /// rate_limited, server, timeout, unavailable, authentication, ...
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub provider: String,
    pub credential: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn rate_histogram() -> Histogram {
    // 1 .. ~16k tokens per second
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

#[derive(Clone)]
pub struct AiMetrics {
    pub requests: Family<OutcomeLabels, Counter>,
    pub attempt_errors: Family<AttemptErrorLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost_usd: Family<UsageLabels, Counter<f64>>,
    pub ttft: HistogramFamily<ModelLabels>,
    pub tokens_per_second: HistogramFamily<ModelLabels>,
    pub duration: HistogramFamily<ModelLabels>,
    pub cooldowns: Family<CredentialLabels, Counter>,
    pub fallbacks: Family<ModelLabels, Counter>,
}

impl AiMetrics {
    pub fn register(registry: &mut Registry) -> AiMetrics {
        let m = AiMetrics {
            requests: Family::default(),
            attempt_errors: Family::default(),
            tokens: Family::default(),
            cost_usd: Family::default(),
            ttft: Family::new_with_constructor(seconds_histogram),
            tokens_per_second: Family::new_with_constructor(rate_histogram),
            duration: Family::new_with_constructor(seconds_histogram),
            cooldowns: Family::default(),
            fallbacks: Family::default(),
        };
        registry.register(
            "ai_requests",
            "AI requests by provider, model, credential, consumer and outcome",
            m.requests.clone(),
        );
        registry.register(
            "ai_attempt_errors",
            "Failed attempts at a provider (each retry or fallback counts), by error kind",
            m.attempt_errors.clone(),
        );
        registry.register("ai_tokens", "Tokens by direction (input, output, cached_input)", m.tokens.clone());
        registry.register("ai_cost_usd", "Cost in US dollars at the price each usage record names", m.cost_usd.clone());
        registry.register(
            "ai_time_to_first_token_seconds",
            "Time from request to the first streamed token",
            m.ttft.clone(),
        );
        registry.register(
            "ai_output_tokens_per_second",
            "Output tokens per second after the first token (streams)",
            m.tokens_per_second.clone(),
        );
        registry.register(
            "ai_request_duration_seconds",
            "Time from request to the last byte of the answer",
            m.duration.clone(),
        );
        registry.register(
            "ai_credential_cooldowns",
            "Times a provider key was rested after a 429",
            m.cooldowns.clone(),
        );
        registry.register(
            "ai_fallbacks",
            "Requests answered by another target than the first one tried, by the answering provider and model",
            m.fallbacks.clone(),
        );
        m
    }
}
