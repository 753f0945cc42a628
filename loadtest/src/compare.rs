//! A/B comparison: runs both sides alternately (A B, B A, A B, ...) so slow drifts of a noisy
//! machine hit both sides alike, and reports B/A ratios per round and their median.

use serde::{Deserialize, Serialize};

use crate::runner::{RunConfig, RunError, run};
use crate::summary::RunSummary;

pub struct CompareConfig {
    pub a: RunConfig,
    pub b: RunConfig,
    pub rounds: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub achieved_rate: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareRound {
    pub round: u32,
    /// Which side ran first in this round.
    pub first: String,
    pub a: RunSummary,
    pub b: RunSummary,
    /// B divided by A.
    pub ratios: Ratios,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareSummary {
    pub label_a: String,
    pub label_b: String,
    pub rounds: Vec<CompareRound>,
    /// Median over rounds of each B/A ratio.
    pub median: Ratios,
}

/// b / a, or 0 when a is 0 (undefined ratios must stay JSON-representable).
pub fn ratio(b: f64, a: f64) -> f64 {
    if a > 0.0 { b / a } else { 0.0 }
}

pub fn ratios(a: &RunSummary, b: &RunSummary) -> Ratios {
    Ratios {
        achieved_rate: ratio(b.achieved_rate, a.achieved_rate),
        mean: ratio(b.latency.mean_ms, a.latency.mean_ms),
        p50: ratio(b.latency.p50_ms, a.latency.p50_ms),
        p90: ratio(b.latency.p90_ms, a.latency.p90_ms),
        p99: ratio(b.latency.p99_ms, a.latency.p99_ms),
    }
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

pub fn median_ratios(rounds: &[CompareRound]) -> Ratios {
    let m = |f: fn(&Ratios) -> f64| median(rounds.iter().map(|r| f(&r.ratios)).collect());
    Ratios {
        achieved_rate: m(|r| r.achieved_rate),
        mean: m(|r| r.mean),
        p50: m(|r| r.p50),
        p90: m(|r| r.p90),
        p99: m(|r| r.p99),
    }
}

/// Runs the comparison; `on_round` sees each round as it completes.
pub async fn run_compare(
    cfg: CompareConfig,
    mut on_round: impl FnMut(&CompareRound),
) -> Result<CompareSummary, RunError> {
    cfg.a.validate()?;
    cfg.b.validate()?;
    let mut rounds = Vec::new();
    for round in 0..cfg.rounds.max(1) {
        let a_first = round % 2 == 0;
        let (mut a, mut b) = if a_first {
            let a = run(cfg.a.clone()).await?;
            (a, run(cfg.b.clone()).await?)
        } else {
            let b = run(cfg.b.clone()).await?;
            (run(cfg.a.clone()).await?, b)
        };
        // Per-second series of every round would bloat the report; keep them per run only.
        a.timeline.clear();
        b.timeline.clear();
        let r = CompareRound {
            round: round + 1,
            first: if a_first { "a" } else { "b" }.into(),
            ratios: ratios(&a, &b),
            a,
            b,
        };
        on_round(&r);
        rounds.push(r);
    }
    Ok(CompareSummary {
        label_a: cfg.a.label.clone(),
        label_b: cfg.b.label.clone(),
        median: median_ratios(&rounds),
        rounds,
    })
}
