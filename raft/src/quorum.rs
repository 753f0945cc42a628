//! What a leader knows about its majority: which voters acknowledged it
//! recently, and since when not enough of them have. Status reports it as the
//! role (`leader (no quorum since …)`): openraft keeps an isolated leader in
//! the leader role for the whole partition, so the bare role would show two
//! leaders. Errors on the minority side name the members it can and cannot
//! reach, instead of openraft's debug text.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use openraft::Instant as _;
use openraft::{RaftMetrics, ServerState};

use crate::types::TypeConfig;

/// A voter, as error messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: u64,
    pub addr: String,
}

impl fmt::Display for Voter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ({})", self.id, self.addr)
    }
}

/// Which voters a leader can and cannot reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub leader: u64,
    pub reachable: Vec<Voter>,
    pub unreachable: Vec<Voter>,
}

impl Reach {
    /// Sorts the voters of the membership in `metrics` by whether they are in `acked`.
    pub(crate) fn of(metrics: &RaftMetrics<TypeConfig>, acked: &BTreeSet<u64>) -> Reach {
        let membership = metrics.membership_config.membership();
        let (mut reachable, mut unreachable) = (Vec::new(), Vec::new());
        for id in membership.voter_ids() {
            let addr = membership.get_node(&id).map_or_else(String::new, |n| n.addr.clone());
            let voter = Voter { id, addr };
            if id == metrics.id || acked.contains(&id) { reachable.push(voter) } else { unreachable.push(voter) }
        }
        Reach { leader: metrics.id, reachable, unreachable }
    }

    fn voters(&self) -> usize {
        self.reachable.len() + self.unreachable.len()
    }

    pub fn has_majority(&self) -> bool {
        self.reachable.len() > self.voters() / 2
    }
}

/// "it reaches node 1 (itself) but not node 2 (10.0.0.2:7001) or node 3
/// (10.0.0.3:7001); 2 of 3 voters are needed"
impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |v: &Voter| if v.id == self.leader { format!("node {} (itself)", v.id) } else { v.to_string() };
        let reachable: Vec<String> = self.reachable.iter().map(name).collect();
        let unreachable: Vec<String> = self.unreachable.iter().map(name).collect();
        write!(f, "it reaches {}", reachable.join(", "))?;
        if !unreachable.is_empty() {
            write!(f, " but not {}", unreachable.join(" or "))?;
        }
        write!(f, "; {} of {} voters are needed", self.voters() / 2 + 1, self.voters())
    }
}

/// A leader that has not been acknowledged by a majority for longer than its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumLoss {
    /// When a majority last acknowledged it (Unix ms); `None`: not yet in this term.
    pub since_unix_ms: Option<i64>,
    pub reach: Reach,
}

impl QuorumLoss {
    /// `None` unless this node leads and a majority has not acknowledged it
    /// within `lease`: the same limit openraft applies before it refuses
    /// writes, so the status and the write path agree.
    pub(crate) fn of(metrics: &RaftMetrics<TypeConfig>, lease: Duration, now_unix_ms: i64) -> Option<QuorumLoss> {
        if metrics.state != ServerState::Leader {
            return None;
        }
        let fresh = |elapsed: Duration| elapsed < lease;
        let quorum_elapsed = metrics.last_quorum_acked.as_ref().map(|t| t.elapsed());
        if quorum_elapsed.is_some_and(fresh) {
            return None;
        }
        let acked: BTreeSet<u64> = (metrics.heartbeat.iter().flatten())
            .filter(|(_, at)| at.as_ref().is_some_and(|t| fresh(t.elapsed())))
            .map(|(id, _)| *id)
            .collect();
        let reach = Reach::of(metrics, &acked);
        // A single voter is its own majority; openraft reports no acks for it.
        if reach.has_majority() {
            return None;
        }
        let since_unix_ms = quorum_elapsed.map(|e| now_unix_ms - i64::try_from(e.as_millis()).unwrap_or(i64::MAX));
        Some(QuorumLoss { since_unix_ms, reach })
    }

    /// The status role: `leader (no quorum since 2025-03-01T12:00:03Z)`.
    pub fn role(&self) -> String {
        match self.since_unix_ms {
            Some(ms) => format!("leader (no quorum since {})", utc(ms)),
            None => "leader (no quorum yet)".to_string(),
        }
    }
}

/// RFC 3339 UTC, to the second.
pub(crate) fn utc(unix_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(id: u64) -> Voter {
        Voter { id, addr: format!("127.0.0.1:700{id}") }
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_740_830_403_999), "2025-03-01T12:00:03Z");
    }

    #[test]
    fn an_isolated_leader_names_whom_it_reaches_and_whom_not() {
        let reach = Reach { leader: 1, reachable: vec![voter(1)], unreachable: vec![voter(2), voter(3)] };
        assert!(!reach.has_majority());
        assert_eq!(
            reach.to_string(),
            "it reaches node 1 (itself) but not node 2 (127.0.0.1:7002) or node 3 (127.0.0.1:7003); \
             2 of 3 voters are needed"
        );
    }

    #[test]
    fn a_leader_with_a_majority_has_one() {
        let reach = Reach { leader: 1, reachable: vec![voter(1), voter(3)], unreachable: vec![voter(2)] };
        assert!(reach.has_majority());
        let alone = Reach { leader: 1, reachable: vec![voter(1)], unreachable: vec![] };
        assert!(alone.has_majority(), "a single voter is its own majority");
    }

    #[test]
    fn the_role_says_since_when_there_is_no_quorum() {
        let reach = Reach { leader: 1, reachable: vec![voter(1)], unreachable: vec![voter(2), voter(3)] };
        let loss = QuorumLoss { since_unix_ms: Some(1_740_830_403_000), reach: reach.clone() };
        assert_eq!(loss.role(), "leader (no quorum since 2025-03-01T12:00:03Z)");
        assert_eq!(QuorumLoss { since_unix_ms: None, reach }.role(), "leader (no quorum yet)");
    }
}
