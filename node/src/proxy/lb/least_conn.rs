//! Least connections, weighted: the usable target with the lowest
//! in-flight / weight wins; the scan starts at a rotating offset so ties
//! spread evenly instead of piling onto the first target.

use std::sync::atomic::{AtomicUsize, Ordering};

use tollgate_proto::config::v1::Target;

use super::CompiledTarget;

pub struct LeastConn {
    weights: Vec<u64>,
    start: AtomicUsize,
}

impl LeastConn {
    pub fn new(targets: &[Target]) -> LeastConn {
        LeastConn { weights: targets.iter().map(|t| u64::from(t.weight.max(1))).collect(), start: AtomicUsize::new(0) }
    }

    pub fn pick(&self, targets: &[CompiledTarget], usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = targets.len();
        let start = self.start.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u64, u64)> = None;
        for offset in 0..n {
            let i = (start + offset) % n;
            if !usable(i) {
                continue;
            }
            let load = targets[i].state.in_flight.load(Ordering::Relaxed) as u64;
            let weight = self.weights.get(i).copied().unwrap_or(1);
            // Compare load_a / weight_a < load_b / weight_b without division.
            let better = match best {
                None => true,
                Some((_, best_load, best_weight)) => load * best_weight < best_load * weight,
            };
            if better {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proxy::health::TargetState;

    fn targets(n: usize) -> Vec<CompiledTarget> {
        (0..n)
            .map(|i| CompiledTarget::new(&format!("t{i}"), &format!("t{i}"), Arc::new(TargetState::default())))
            .collect()
    }

    #[test]
    fn picks_the_least_loaded_and_rotates_ties() {
        let ts = targets(3);
        let lc = LeastConn::new(&[Target::default(), Target::default(), Target::default()]);
        ts[0].state.in_flight.store(5, Ordering::Relaxed);
        ts[1].state.in_flight.store(1, Ordering::Relaxed);
        ts[2].state.in_flight.store(3, Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(lc.pick(&ts, |_| true), Some(1));
        }
        ts[1].state.in_flight.store(3, Ordering::Relaxed);
        let picks: std::collections::HashSet<_> = (0..6).map(|_| lc.pick(&ts, |_| true).unwrap()).collect();
        assert_eq!(picks, [1, 2].into_iter().collect(), "ties between 1 and 2 rotate");
        assert_eq!(lc.pick(&ts, |i| i == 0), Some(0), "unusable targets are skipped");
    }
}
