//! Token limits, budgets and model-scoped limits on AI calls (DESIGN §5):
//! before the provider is called, an estimate is reserved from this node's
//! quota leases (the prompt by the tokenizer, the output by `max_tokens` or
//! the limit's default, the cost at the first target's price); when the
//! call ends (or its stream is cut short) `Accounting::finish` reconciles
//! the reservation with what was actually used and delivered.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use tollgate_proto::config::v1::{Limit, LimitScope, LimitUnit};

use crate::limits::{Bucketed, Limiter, Taken};

/// The limits the `limit` phase left to the AI backend, and the limiter.
pub struct AiLimits {
    pub limiter: Arc<Limiter>,
    /// Token, cost and model-scoped limits attached to the caller; the
    /// model-scoped ones get the resolved model as their bucket here.
    pub deferred: Vec<Bucketed>,
}

/// What a call reserved, to reconcile when it ends.
pub struct Reservation {
    taken: Taken,
}

/// The estimate a reservation is made from.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    pub input_tokens: u64,
    /// None: the caller set no output limit; each limit's default applies.
    pub output_tokens: Option<u64>,
    /// Micro-dollars per million tokens of the first target (input, output).
    pub price_micros_per_mtok: (u64, u64),
}

/// Output tokens reserved when neither the request nor the limit says.
const DEFAULT_OUTPUT_TOKENS: u64 = 1024;
/// Model names are client input: a longer one is not a bucket of its own.
const MAX_MODEL_BUCKET: usize = 128;

impl AiLimits {
    /// Reserves `estimate` on every deferred limit for a call to `model`:
    /// the reservation, and the headers the response carries (RateLimit of
    /// the tightest limit, a budget's soft-threshold warning); or the refusal.
    pub async fn reserve(
        &self,
        model: &str,
        estimate: Estimate,
    ) -> Result<(Reservation, HeaderMap), Box<crate::plumbing::LimitRefusal>> {
        let mut limits = self.deferred.clone();
        let bucket: Box<str> = if model.len() <= MAX_MODEL_BUCKET { model.into() } else { "(long model name)".into() };
        for b in &mut limits {
            if b.limit.scope() == LimitScope::Model {
                b.bucket = bucket.clone();
            }
        }
        let taken = self.limiter.admit_patiently(&limits, |limit| units(limit, &estimate)).await?;
        let mut headers = HeaderMap::new();
        if self.limiter.config.admitted_headers {
            crate::limits::headers::on_response(&taken, &mut headers);
        }
        // A budget's warning is the point of its threshold: always sent.
        self.warn_budgets(&taken, &mut headers);
        Ok((Reservation { taken }, headers))
    }

    /// A budget past its soft threshold says so on the response, and counts.
    fn warn_budgets(&self, taken: &Taken, headers: &mut HeaderMap) {
        for (limit, view) in taken.views() {
            if limit.unit() != LimitUnit::CostMicros || limit.warn_at_percent == 0 || view.amount == 0 {
                continue;
            }
            let spent = view.amount - view.remaining;
            if spent.saturating_mul(100) < view.amount.saturating_mul(u64::from(limit.warn_at_percent)) {
                continue;
            }
            let text = format!("budget \"{}\" is {}% spent", limit.name, spent * 100 / view.amount);
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.append(crate::limits::headers::X_BUDGET_WARNING, value);
            }
            if let Some(counters) = self.limiter.counters_of(limit) {
                counters.budget_warnings.inc();
            }
        }
    }
}

impl Reservation {
    /// Reconciles with what the call used: units reserved and not used go
    /// back to the lease, units used beyond the reservation are charged
    /// (the lease may go into debt, paid from its next grants).
    pub fn settle(self, input_tokens: u64, output_tokens: u64, cost_picodollars: u64) {
        let cost_micros = cost_picodollars.div_ceil(1_000_000);
        self.taken.settle(|limit| match limit.unit() {
            LimitUnit::InputTokens => Some(input_tokens),
            LimitUnit::OutputTokens => Some(output_tokens),
            // A provider's usage is not trusted to be small.
            LimitUnit::TotalTokens => Some(input_tokens.saturating_add(output_tokens)),
            LimitUnit::CostMicros => Some(cost_micros),
            // A request counts once whatever it used.
            LimitUnit::Requests | LimitUnit::Unspecified => None,
        });
    }
}

/// What a call reserves on `limit`.
fn units(limit: &Limit, estimate: &Estimate) -> u64 {
    let default_output =
        if limit.default_output_tokens > 0 { limit.default_output_tokens } else { DEFAULT_OUTPUT_TOKENS };
    let output = estimate.output_tokens.unwrap_or(default_output);
    match limit.unit() {
        LimitUnit::Requests => 1,
        LimitUnit::InputTokens => estimate.input_tokens.max(1),
        LimitUnit::OutputTokens => output.max(1),
        // Saturating: `max_tokens` is the client's to set, up to 2^64 - 1.
        LimitUnit::TotalTokens => estimate.input_tokens.saturating_add(output).max(1),
        LimitUnit::CostMicros => {
            let (input_price, output_price) = estimate.price_micros_per_mtok;
            let micros = u128::from(estimate.input_tokens) * u128::from(input_price)
                + u128::from(output) * u128::from(output_price);
            u64::try_from(micros.div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1)
        }
        LimitUnit::Unspecified => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_follow_the_unit_and_the_defaults() {
        let estimate =
            Estimate { input_tokens: 100, output_tokens: None, price_micros_per_mtok: (2_500_000, 10_000_000) };
        let limit = |unit: LimitUnit, default_output_tokens| Limit {
            unit: unit.into(),
            default_output_tokens,
            ..Default::default()
        };
        assert_eq!(units(&limit(LimitUnit::InputTokens, 0), &estimate), 100);
        assert_eq!(units(&limit(LimitUnit::OutputTokens, 0), &estimate), DEFAULT_OUTPUT_TOKENS);
        assert_eq!(units(&limit(LimitUnit::TotalTokens, 50), &estimate), 150);
        // 100 x 2.5 $/M + 1024 x 10 $/M = 250 + 10240 micro-dollars.
        assert_eq!(units(&limit(LimitUnit::CostMicros, 0), &estimate), 10_490);
        let capped = Estimate { output_tokens: Some(10), ..estimate };
        assert_eq!(units(&limit(LimitUnit::TotalTokens, 50), &capped), 110, "max_tokens wins over the default");
        let hostile = Estimate { output_tokens: Some(u64::MAX), ..estimate };
        assert_eq!(units(&limit(LimitUnit::TotalTokens, 50), &hostile), u64::MAX, "saturates, never wraps to a few");
        assert_eq!(units(&limit(LimitUnit::Requests, 0), &capped), 1);
    }
}
