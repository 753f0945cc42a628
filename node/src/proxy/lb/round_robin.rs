//! Weighted round robin without locks: the smooth weighted sequence (as nginx
//! computes it) is laid out once per state change; each request takes the
//! next slot with one atomic increment.

use std::sync::atomic::{AtomicUsize, Ordering};

use tollgate_proto::config::v1::Target;

/// Longest precomputed sequence; larger weight sums are scaled down.
const MAX_SEQUENCE: u64 = 4096;

#[derive(Debug)]
pub struct RoundRobin {
    sequence: Vec<u16>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(targets: &[Target]) -> RoundRobin {
        RoundRobin { sequence: smooth_sequence(targets), next: AtomicUsize::new(0) }
    }

    /// The next usable target in the sequence; an unusable one passes its
    /// turn to the target after it in the sequence.
    pub fn pick(&self, targets: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len).map(|offset| usize::from(self.sequence[(slot + offset) % len])).find(|&i| i < targets && usable(i))
    }
}

fn smooth_sequence(targets: &[Target]) -> Vec<u16> {
    let mut weights: Vec<u64> = targets.iter().map(|t| u64::from(t.weight.max(1))).collect();
    let g = weights.iter().copied().fold(0, gcd);
    if g > 1 {
        weights.iter_mut().for_each(|w| *w /= g);
    }
    let total: u64 = weights.iter().sum();
    if total > MAX_SEQUENCE {
        weights.iter_mut().for_each(|w| *w = (*w * MAX_SEQUENCE / total).max(1));
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += *w as i64;
        }
        let (best, _) =
            current.iter().enumerate().max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i))).expect("non-empty");
        current[best] -= total;
        sequence.push(best as u16);
    }
    sequence
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: u32, weight: u32) -> Target {
        Target { host: "127.0.0.1".into(), port, weight }
    }

    #[test]
    fn equal_weights_alternate() {
        let rr = RoundRobin::new(&[target(1, 0), target(2, 0), target(3, 0)]);
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(3, |_| true).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let skipping: Vec<usize> = (0..4).map(|_| rr.pick(3, |i| i != 1).unwrap()).collect();
        assert_eq!(skipping, vec![0, 2, 2, 0], "an unusable target's turn goes to the next one");
    }

    #[test]
    fn weights_share_traffic_proportionally_and_interleave() {
        let rr = RoundRobin::new(&[target(1, 5), target(2, 1), target(3, 1)]);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(3, |_| true).unwrap()).collect();
        assert_eq!(picks.iter().filter(|p| **p == 0).count(), 5);
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0], "smooth: the heavy target is spread out");
    }

    #[test]
    fn empty_has_no_pick() {
        assert!(RoundRobin::new(&[]).pick(0, |_| true).is_none());
    }
}
