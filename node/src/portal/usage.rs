//! Usage over time from the cluster's replicated counters (DESIGN §5): per
//! API and per model, for one consumer (the portal) or for the cluster
//! (the console). Every node holds the counters, so any node draws them.

use std::collections::BTreeMap;

use tollgate_raft::GatewayState;

/// The periods a chart covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Span {
    /// The last 48 hours, per hour.
    Hours,
    /// The last 30 days, per day.
    #[default]
    Days,
}

impl Span {
    fn period(self) -> (&'static str, i64, usize) {
        match self {
            Span::Hours => ("hour", 3_600_000, 48),
            Span::Days => ("day", 86_400_000, 30),
        }
    }
}

/// One named series's counts, one entry per period.
#[derive(Debug, Default, Clone)]
pub struct Series {
    pub name: String,
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
    pub tokens: Vec<u64>,
    pub cost_picodollars: Vec<u64>,
}

impl Series {
    pub fn total(values: &[u64]) -> u64 {
        values.iter().sum()
    }
}

/// Series by name over the same periods.
#[derive(Debug, Default)]
pub struct Breakdown {
    /// The start of each period, Unix milliseconds.
    pub periods: Vec<i64>,
    pub series: Vec<Series>,
}

/// `dimension`'s counters over `span`, ending with the current period.
/// With `prefix`, only values starting with it, named without it (a
/// consumer's own `consumer_service` and `consumer_model` counters).
pub fn breakdown(state: &GatewayState, dimension: &str, prefix: &str, span: Span, now_ms: i64) -> Breakdown {
    let (period, length, count) = span.period();
    let last = now_ms.div_euclid(length) * length;
    let first = last - length * (count as i64 - 1);
    let periods: Vec<i64> = (0..count as i64).map(|i| first + i * length).collect();
    let mut by_name: BTreeMap<String, Series> = BTreeMap::new();
    for counter in state.usage_counters_between(period, first, last + length) {
        if counter.dimension != dimension {
            continue;
        }
        let Some(name) = counter.value.strip_prefix(prefix) else { continue };
        let Ok(slot) = usize::try_from((counter.period_start_ms - first) / length) else { continue };
        if slot >= count {
            continue;
        }
        let series = by_name.entry(name.to_string()).or_insert_with(|| Series {
            name: if name.is_empty() { "all".into() } else { name.to_string() },
            requests: vec![0; count],
            errors: vec![0; count],
            tokens: vec![0; count],
            cost_picodollars: vec![0; count],
        });
        series.requests[slot] += counter.requests;
        series.errors[slot] += counter.errors;
        series.tokens[slot] += counter.input_tokens + counter.output_tokens;
        series.cost_picodollars[slot] += counter.cost_picodollars;
    }
    Breakdown { periods, series: by_name.into_values().collect() }
}
