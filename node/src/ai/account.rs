//! Accounting of one AI request: tokens (the provider's own counts, else the
//! gateway's tokenizer), cost at a named price, the ledger record, Prometheus
//! series and the GenAI span. Runs exactly once per request — on success, on
//! failure, and (from a stream's `Drop`) when the client goes away.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use opentelemetry::KeyValue;
use tollgate_llm::catalog::dollars;
use tollgate_llm::tokens;
use tollgate_llm::types::{ChatRequest, EmbeddingsInput, EmbeddingsRequest, Usage};
use tollgate_proto::config::v1::{PriceRef, UsageOutcome, UsageRecord};

use super::chat_call::{ChatSource, LazyChat};
use super::pricing::cost_picodollars;
use super::snapshot::AiShared;
use crate::telemetry::ai_metrics::{AttemptErrorLabels, CredentialLabels, Direction, ModelLabels, Outcome};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::tracing::TraceCtx;

/// What the tokenizer needs when the provider reports no usage.
pub enum PromptSource {
    Chat(Arc<ChatRequest>),
    /// An OpenAI caller's chat body, decoded only if an estimate is needed.
    ChatBody(Arc<LazyChat>),
    /// An OpenAI caller's embeddings body, likewise.
    EmbeddingsBody(Bytes),
}

impl PromptSource {
    fn estimate(&self) -> u64 {
        match self {
            PromptSource::Chat(req) => tokens::estimate_prompt_tokens(req),
            PromptSource::ChatBody(lazy) => lazy.prompt_estimate(),
            // Token ids are counted by the caller (one per id), not estimated.
            PromptSource::EmbeddingsBody(body) => match serde_json::from_slice::<EmbeddingsRequest>(body) {
                Ok(EmbeddingsRequest { input: EmbeddingsInput::One(text), .. }) => tokens::count_tokens(&text),
                Ok(EmbeddingsRequest { input: EmbeddingsInput::Many(texts), .. }) => {
                    texts.iter().map(|t| tokens::count_tokens(t)).sum()
                }
                Ok(_) => 0,
                Err(_) => tokens::count_tokens(&String::from_utf8_lossy(body)),
            },
        }
    }
}

impl From<&ChatSource> for PromptSource {
    fn from(source: &ChatSource) -> PromptSource {
        match source {
            ChatSource::Decoded(request) => PromptSource::Chat(request.clone()),
            ChatSource::Raw(lazy) => PromptSource::ChatBody(lazy.clone()),
        }
    }
}

pub struct Accounting {
    shared: Arc<AiShared>,
    metrics: Arc<Metrics>,
    pub record: UsageRecord,
    consumer_label: String,
    started: Instant,
    first_token: Option<Instant>,
    trace: Option<TraceCtx>,
    system: &'static str,
    prompt: PromptSource,
    /// The tokenizer's count of the prompt, computed at most once.
    prompt_tokens: std::sync::OnceLock<u64>,
    done: bool,
    listed_model: bool,
    /// Tokens and cost reserved on the caller's limits, reconciled in `finish`.
    reservation: Option<super::limits::Reservation>,
}

pub struct Served<'a> {
    pub outcome: UsageOutcome,
    pub http_status: u16,
    pub usage: Option<Usage>,
    /// `usage` is the gateway's own count (already estimated by the caller), not the provider's.
    pub usage_is_estimate: bool,
    /// Output produced so far, for estimating when usage is missing or partial.
    pub output_text: &'a str,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
}

impl Accounting {
    pub fn new(
        shared: Arc<AiShared>,
        metrics: Arc<Metrics>,
        record: UsageRecord,
        consumer_label: String,
        started: Instant,
        trace: Option<TraceCtx>,
        prompt: PromptSource,
    ) -> Accounting {
        Accounting {
            shared,
            metrics,
            record,
            consumer_label,
            started,
            first_token: None,
            trace,
            system: "tollgate",
            prompt,
            prompt_tokens: std::sync::OnceLock::new(),
            done: false,
            listed_model: false,
            reservation: None,
        }
    }

    /// Names the provider, model, key and price of the attempt that answered (or the last one tried).
    pub fn set_target(&mut self, provider: &str, system: &'static str, model: &str, credential: &str, price: PriceRef) {
        self.record.provider = provider.to_string();
        self.record.model = model.to_string();
        self.record.credential = credential.to_string();
        self.record.price = Some(price);
        self.system = system;
    }

    pub fn attempt_failed(&mut self, kind: &'static str) {
        self.record.attempts += 1;
        self.metrics
            .ai
            .attempt_errors
            .get_or_create(&AttemptErrorLabels {
                provider: self.record.provider.clone(),
                model: self.model_label().to_string(),
                credential: self.record.credential.clone(),
                kind,
            })
            .inc();
    }

    pub fn credential_rested(&self) {
        self.metrics
            .ai
            .cooldowns
            .get_or_create(&CredentialLabels {
                provider: self.record.provider.clone(),
                credential: self.record.credential.clone(),
            })
            .inc();
    }

    pub fn fell_back(&self) {
        let labels = ModelLabels { provider: self.record.provider.clone(), model: self.model_label().to_string() };
        self.metrics.ai.fallbacks.get_or_create(&labels).inc();
    }

    /// The model as a metric label. Configured models (alias targets, priced
    /// or listed ones) keep their name; a free-form `provider/model` a client
    /// made up is "other", so clients cannot create series without bound.
    fn model_label(&self) -> &str {
        let r = &self.record;
        let direct = r.requested_model.strip_prefix(r.provider.as_str()).and_then(|m| m.strip_prefix('/'))
            == Some(r.model.as_str());
        let priced = r.price.as_ref().is_some_and(|p| p.source != "none");
        if !direct || priced || self.listed_model { &r.model } else { "other" }
    }

    /// The provider lists this model explicitly (so it is configuration, not client input).
    pub fn set_listed(&mut self, listed: bool) {
        self.listed_model = listed;
    }

    pub fn first_token(&mut self) {
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
    }

    /// Hands over the call's reservation, to reconcile when it ends.
    pub fn reserved(&mut self, reservation: super::limits::Reservation) {
        self.reservation = Some(reservation);
    }

    pub fn prompt_estimate(&self) -> u64 {
        *self.prompt_tokens.get_or_init(|| self.prompt.estimate())
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the call's record is in the journal (`finish` ran).
    pub fn recorded(&self) -> bool {
        self.done
    }

    /// Token counts: the provider's when it gave them; otherwise (or for the
    /// part it did not report before a stream broke) the tokenizer's, marked estimated.
    fn tokens(&self, served: &Served<'_>) -> (u64, u64, u64, bool) {
        match &served.usage {
            // Counted by the caller (a stream's billed usage): the input and its cached part may
            // still be the provider's.
            Some(u) if served.usage_is_estimate => {
                (u.prompt_tokens, u.cached_tokens().min(u.prompt_tokens), u.completion_tokens, true)
            }
            Some(u) => {
                let mut output = u.completion_tokens;
                let mut estimated = false;
                if output == 0 && !served.output_text.is_empty() {
                    output = tokens::count_tokens(served.output_text);
                    estimated = true;
                }
                let mut input = u.prompt_tokens;
                if input == 0 {
                    input = self.prompt_estimate();
                    estimated = true;
                }
                (input, u.cached_tokens().min(input), output, estimated)
            }
            None => (self.prompt_estimate(), 0, tokens::count_tokens(served.output_text), true),
        }
    }

    /// Writes the record and the metrics. Idempotent: only the first call counts.
    pub fn finish(&mut self, served: Served<'_>) {
        if self.done {
            return;
        }
        self.done = true;
        let attempted = !self.record.provider.is_empty();
        let (input, cached, output, estimated) =
            if attempted || served.usage.is_some() { self.tokens(&served) } else { (0, 0, 0, false) };
        let elapsed = self.started.elapsed();
        let r = &mut self.record;
        r.outcome = served.outcome as i32;
        r.http_status = u32::from(served.http_status);
        r.error = served.error.clone().unwrap_or_default();
        r.input_tokens = input;
        r.cached_input_tokens = cached;
        r.output_tokens = output;
        r.estimated = estimated && (input > 0 || output > 0);
        r.finish_reason = served.finish_reason.clone().unwrap_or_default();
        r.duration_ms = u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX);
        r.ttft_ms = self.first_token.map_or(0, |t| u32::try_from((t - self.started).as_millis()).unwrap_or(u32::MAX));
        r.cost_picodollars = r.price.as_ref().map_or(0, |p| cost_picodollars(p, input, cached, output));
        // What was used and delivered, a stream cut short included.
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(input, output, r.cost_picodollars);
        }

        let (outcome, counted) = match served.outcome {
            UsageOutcome::Ok => ("ok", Outcome::Ok),
            UsageOutcome::Cancelled => ("cancelled", Outcome::Cancelled),
            _ => ("error", Outcome::Error),
        };
        let r = &self.record;
        let ai = &self.metrics.ai;
        let series = ai.series(&r.provider, self.model_label(), &r.credential, &self.consumer_label);
        series.requests(ai, counted).inc();
        if attempted {
            for (direction, n) in
                [(Direction::Input, input), (Direction::Output, output), (Direction::CachedInput, cached)]
            {
                if n > 0 {
                    series.tokens(ai, direction).inc_by(n);
                }
            }
            series.cost_usd(ai).inc_by(dollars(r.cost_picodollars));
            series.duration(ai).observe(elapsed.as_secs_f64());
            if let Some(first) = self.first_token {
                series.ttft(ai).observe((first - self.started).as_secs_f64());
                let streaming = first.elapsed().as_secs_f64();
                if output > 1 && streaming > 0.0 {
                    series.tokens_per_second(ai).observe(output as f64 / streaming);
                }
            }
        }

        self.shared.ledger.record(r);
        if let Some(trace) = self.trace.take() {
            let operation = if r.endpoint == "embeddings" { "embeddings" } else { "chat" };
            let mut attributes = vec![
                KeyValue::new("gen_ai.operation.name", operation),
                KeyValue::new("gen_ai.system", self.system),
                KeyValue::new("gen_ai.request.model", r.requested_model.clone()),
                KeyValue::new("gen_ai.response.model", r.model.clone()),
                KeyValue::new("gen_ai.usage.input_tokens", input as i64),
                KeyValue::new("gen_ai.usage.output_tokens", output as i64),
                KeyValue::new("tollgate.ai.provider", r.provider.clone()),
                KeyValue::new("tollgate.ai.cost_usd", dollars(r.cost_picodollars)),
                KeyValue::new("tollgate.ai.estimated", r.estimated),
            ];
            if !r.finish_reason.is_empty() {
                attributes.push(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    opentelemetry::Value::Array(vec![opentelemetry::StringValue::from(r.finish_reason.clone())].into()),
                ));
            }
            let name = format!("{operation} {}", r.requested_model);
            trace.finish_client(&name, served.error.as_deref().filter(|_| outcome == "error"), attributes);
        }
    }
}
