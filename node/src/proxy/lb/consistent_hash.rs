//! Consistent hashing on a ring of virtual nodes (160 per unit of weight, as
//! in ketama): a key maps to the first point at or after its hash, so adding
//! or removing a target moves only the keys of that target.

use tollgate_proto::config::v1::Target;

const POINTS_PER_WEIGHT: u64 = 160;
const MAX_POINTS: u64 = 40_000;

pub struct Ring {
    points: Vec<(u64, usize)>,
    targets: usize,
}

/// A stable 64-bit hash (FNV-1a then a finalizer): every node and every
/// restart must place a key on the same target.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finalizer: FNV alone clusters on short, similar keys.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Ring {
    pub fn new(targets: &[Target]) -> Ring {
        let total: u64 = targets.iter().map(|t| u64::from(t.weight.max(1))).sum::<u64>() * POINTS_PER_WEIGHT;
        let scale = if total > MAX_POINTS { MAX_POINTS as f64 / total as f64 } else { 1.0 };
        let mut points = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let n = ((u64::from(t.weight.max(1)) * POINTS_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
            for v in 0..n {
                points.push((hash_key(format!("{}:{}#{v}", t.host, t.port).as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ring { points, targets: targets.len() }
    }

    pub fn pick(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(h, _)| *h < key);
        let mut seen = 0usize;
        let mut checked = vec![false; self.targets];
        for offset in 0..self.points.len() {
            let (_, i) = self.points[(start + offset) % self.points.len()];
            if checked[i] {
                continue;
            }
            if usable(i) {
                return Some(i);
            }
            checked[i] = true;
            seen += 1;
            if seen == self.targets {
                break;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: u32, weight: u32) -> Target {
        Target { host: "10.0.0.1".into(), port, weight }
    }

    #[test]
    fn same_key_same_target_and_removal_moves_only_that_targets_keys() {
        let ring = Ring::new(&[target(1, 1), target(2, 1), target(3, 1)]);
        let before: Vec<usize> =
            (0..1000).map(|k| ring.pick(hash_key(format!("user-{k}").as_bytes()), |_| true).unwrap()).collect();
        let again: Vec<usize> =
            (0..1000).map(|k| ring.pick(hash_key(format!("user-{k}").as_bytes()), |_| true).unwrap()).collect();
        assert_eq!(before, again);
        for t in 0..3 {
            let share = before.iter().filter(|i| **i == t).count();
            assert!((200..=470).contains(&share), "target {t} got {share} of 1000 keys");
        }
        // Target 1 unusable: its keys move, nobody else's do.
        let after: Vec<usize> =
            (0..1000).map(|k| ring.pick(hash_key(format!("user-{k}").as_bytes()), |i| i != 1).unwrap()).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 1 {
                assert_eq!(a, b);
            } else {
                assert_ne!(*a, 1);
            }
        }
    }
}
