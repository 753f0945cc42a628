//! Prometheus series of the AI gateway, per provider, model, credential and
//! consumer. Label sets are bounded by configuration (providers, their keys,
//! consumers, aliases, priced or listed models), not by client input: a
//! free-form `provider/model` that no configuration names is labelled "other".

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

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

/// The series one AI call ends in, for one (provider, model, credential,
/// consumer): looked up once per call with no label set built, where going
/// through each family would clone four strings and hash them per metric.
/// Each handle is made the first time it counts something (a series that
/// never counted is not exported, as before), and shares its value with
/// the family's series.
pub struct AiSeries {
    provider: String,
    model: String,
    credential: String,
    consumer: String,
    requests: [OnceLock<Counter>; 3],
    tokens: [OnceLock<Counter>; 3],
    cost_usd: OnceLock<Counter<f64>>,
    duration: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    tokens_per_second: OnceLock<Histogram>,
}

/// Which [`AiSeries::requests`] counter.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Ok = 0,
    Error = 1,
    Cancelled = 2,
}

/// Which [`AiSeries::tokens`] counter.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    Input = 0,
    Output = 1,
    CachedInput = 2,
}

impl AiSeries {
    fn usage_labels(&self) -> UsageLabels {
        UsageLabels {
            provider: self.provider.clone(),
            model: self.model.clone(),
            credential: self.credential.clone(),
            consumer: self.consumer.clone(),
        }
    }

    fn model_labels(&self) -> ModelLabels {
        ModelLabels { provider: self.provider.clone(), model: self.model.clone() }
    }

    pub fn requests(&self, metrics: &AiMetrics, outcome: Outcome) -> &Counter {
        self.requests[outcome as usize].get_or_init(|| {
            let UsageLabels { provider, model, credential, consumer } = self.usage_labels();
            let outcome = OUTCOMES[outcome as usize];
            metrics.requests.get_or_create(&OutcomeLabels { provider, model, credential, consumer, outcome }).clone()
        })
    }

    pub fn tokens(&self, metrics: &AiMetrics, direction: Direction) -> &Counter {
        self.tokens[direction as usize].get_or_init(|| {
            let UsageLabels { provider, model, credential, consumer } = self.usage_labels();
            let direction = DIRECTIONS[direction as usize];
            metrics.tokens.get_or_create(&TokenLabels { provider, model, credential, consumer, direction }).clone()
        })
    }

    pub fn cost_usd(&self, metrics: &AiMetrics) -> &Counter<f64> {
        self.cost_usd.get_or_init(|| metrics.cost_usd.get_or_create(&self.usage_labels()).clone())
    }

    pub fn duration(&self, metrics: &AiMetrics) -> &Histogram {
        self.duration.get_or_init(|| metrics.duration.get_or_create(&self.model_labels()).clone())
    }

    pub fn ttft(&self, metrics: &AiMetrics) -> &Histogram {
        self.ttft.get_or_init(|| metrics.ttft.get_or_create(&self.model_labels()).clone())
    }

    pub fn tokens_per_second(&self, metrics: &AiMetrics) -> &Histogram {
        self.tokens_per_second.get_or_init(|| metrics.tokens_per_second.get_or_create(&self.model_labels()).clone())
    }
}

const OUTCOMES: [&str; 3] = ["ok", "error", "cancelled"];
const DIRECTIONS: [&str; 3] = ["input", "output", "cached_input"];

thread_local! {
    /// The lookup key of [`AiMetrics::series`], built in place.
    static SERIES_KEY: RefCell<String> = RefCell::new(String::with_capacity(128));
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
    /// Interned [`AiSeries`], as many as the label sets (bounded by configuration).
    series: Arc<RwLock<HashMap<Box<str>, Arc<AiSeries>>>>,
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
            series: Arc::default(),
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

    /// The series of one label set, made on first use.
    pub fn series(&self, provider: &str, model: &str, credential: &str, consumer: &str) -> Arc<AiSeries> {
        let parts = [provider, model, credential, consumer];
        // Called from a stream's drop too, which may run while this
        // thread's locals are being torn down: then a key of its own.
        SERIES_KEY
            .try_with(|key| self.series_by(&mut key.borrow_mut(), parts))
            .unwrap_or_else(|_| self.series_by(&mut String::new(), parts))
    }

    fn series_by(&self, key: &mut String, parts: [&str; 4]) -> Arc<AiSeries> {
        key.clear();
        // Length-prefixed, so no choice of names can make two label sets one key.
        for part in parts {
            use std::fmt::Write;
            let _ = write!(key, "{}:{part}", part.len());
        }
        if let Some(series) = self.series.read().unwrap_or_else(|p| p.into_inner()).get(key.as_str()) {
            return series.clone();
        }
        let [provider, model, credential, consumer] = parts.map(str::to_string);
        let series = Arc::new(AiSeries {
            provider,
            model,
            credential,
            consumer,
            requests: Default::default(),
            tokens: Default::default(),
            cost_usd: OnceLock::new(),
            duration: OnceLock::new(),
            ttft: OnceLock::new(),
            tokens_per_second: OnceLock::new(),
        });
        let mut all = self.series.write().unwrap_or_else(|p| p.into_inner());
        all.entry(key.as_str().into()).or_insert(series).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn interned_series_count_in_the_families_series() {
        let mut registry = Registry::default();
        let metrics = AiMetrics::register(&mut registry);
        let series = metrics.series("openai", "gpt-4o", "k1", "acme");
        series.requests(&metrics, Outcome::Ok).inc();
        series.tokens(&metrics, Direction::Output).inc_by(7);
        // A second lookup is the same series, not a new one.
        metrics.series("openai", "gpt-4o", "k1", "acme").requests(&metrics, Outcome::Ok).inc();
        let text = exposition(&registry);
        assert!(
            text.contains(
                r#"ai_requests_total{provider="openai",model="gpt-4o",credential="k1",consumer="acme",outcome="ok"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"direction="output"} 7"#), "{text}");
        // What never counted is not exported.
        assert!(!text.contains(r#"outcome="error""#) && !text.contains(r#"direction="input""#), "{text}");
        assert!(!text.contains("ai_time_to_first_token_seconds_count"), "{text}");
    }

    #[test]
    fn label_sets_that_concatenate_alike_stay_apart() {
        let mut registry = Registry::default();
        let metrics = AiMetrics::register(&mut registry);
        metrics.series("ab", "c", "", "").requests(&metrics, Outcome::Ok).inc();
        metrics.series("a", "bc", "", "").requests(&metrics, Outcome::Ok).inc_by(5);
        let text = exposition(&registry);
        assert!(text.contains(r#"provider="ab",model="c",credential="",consumer="",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"provider="a",model="bc",credential="",consumer="",outcome="ok"} 5"#), "{text}");
    }
}
