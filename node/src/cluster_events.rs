//! The cluster events an operator needs in the log, as our own INFO lines:
//! leadership won and lost, the leader changing, members joining, being
//! promoted and leaving, snapshots built and installed; and one WARN (then one
//! INFO when it recovers) for a member that stops answering the leader.
//!
//! openraft logs at WARN for every heartbeat a peer misses, which buries these
//! (telemetry keeps openraft at ERROR by default). Instead this task watches
//! `RaftMetrics` and logs the *changes*, so a clean 3-node join reads as a few
//! lines. It only reads metrics: it never touches Raft or storage.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::Instant as _;
use openraft::async_runtime::WatchReceiver;
use tollgate_raft::RaftNode;
use tollgate_raft::TypeConfig;

/// What this module reads from one `RaftMetrics`: small, comparable, and
/// built without openraft types so [`changes`] can be tested directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub node_id: u64,
    pub leader: bool,
    pub term: u64,
    pub current_leader: Option<u64>,
    /// Every member (voters and learners) with its peer address.
    pub members: BTreeMap<u64, String>,
    pub voters: BTreeSet<u64>,
    /// Last log index covered by this node's snapshot.
    pub snapshot: Option<u64>,
    pub applied: Option<u64>,
}

impl View {
    fn from_metrics(m: &openraft::RaftMetrics<TypeConfig>) -> View {
        let membership = m.membership_config.membership();
        View {
            node_id: m.id,
            leader: m.state.is_leader(),
            term: m.current_term,
            current_leader: m.current_leader,
            members: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
            voters: membership.voter_ids().collect(),
            snapshot: m.snapshot.as_ref().map(|l| l.index()),
            applied: m.last_applied.as_ref().map(|l| l.index()),
        }
    }
}

/// One line of the operator's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    BecameLeader { term: u64 },
    LostLeadership { term: u64, leader: Option<u64> },
    LeaderIs { leader: u64, term: u64 },
    Joined { node_id: u64, addr: String, voter: bool },
    Promoted { node_id: u64 },
    Demoted { node_id: u64 },
    Left { node_id: u64, addr: String },
    SnapshotBuilt { up_to: u64 },
    SnapshotInstalled { up_to: u64 },
}

/// The events between two consecutive views. `prev` is `None` for the first
/// view after start: then only leadership is reported, not the membership
/// or snapshot the node started with.
pub fn changes(prev: Option<&View>, next: &View) -> Vec<Event> {
    let mut events = Vec::new();
    let was_leader = prev.is_some_and(|p| p.leader);
    if next.leader && !was_leader {
        events.push(Event::BecameLeader { term: next.term });
    } else if was_leader && !next.leader {
        events.push(Event::LostLeadership { term: next.term, leader: next.current_leader });
    }
    if !next.leader
        && let Some(leader) = next.current_leader
        && leader != next.node_id
        && prev.is_none_or(|p| p.current_leader != Some(leader) || p.term != next.term)
    {
        events.push(Event::LeaderIs { leader, term: next.term });
    }
    let Some(prev) = prev else { return events };
    for (&node_id, addr) in &next.members {
        let voter = next.voters.contains(&node_id);
        match (prev.members.contains_key(&node_id), prev.voters.contains(&node_id), voter) {
            // This node's own arrival is told by start-up ("bootstrapped",
            // "joined the cluster").
            (false, _, _) if node_id == next.node_id => {}
            (false, _, _) => events.push(Event::Joined { node_id, addr: addr.clone(), voter }),
            (true, false, true) => events.push(Event::Promoted { node_id }),
            (true, true, false) => events.push(Event::Demoted { node_id }),
            _ => {}
        }
    }
    for (&node_id, addr) in &prev.members {
        if !next.members.contains_key(&node_id) {
            events.push(Event::Left { node_id, addr: addr.clone() });
        }
    }
    if let Some(up_to) = next.snapshot
        && next.snapshot > prev.snapshot
    {
        // A snapshot past what this node had applied came from the leader;
        // one within it was built here from the applied state.
        if Some(up_to) > prev.applied {
            events.push(Event::SnapshotInstalled { up_to });
        } else {
            events.push(Event::SnapshotBuilt { up_to });
        }
    }
    events
}

fn log(event: &Event) {
    match event {
        Event::BecameLeader { term } => tracing::info!(term, "became the leader"),
        Event::LostLeadership { term, leader: Some(leader) } => {
            tracing::info!(term, leader, "lost leadership to node {leader}")
        }
        Event::LostLeadership { term, leader: None } => tracing::info!(term, "lost leadership"),
        Event::LeaderIs { leader, term } => tracing::info!(leader, term, "node {leader} is the leader"),
        Event::Joined { node_id, addr, voter: false } => {
            tracing::info!(node_id, %addr, "member {node_id} joined as a learner")
        }
        Event::Joined { node_id, addr, voter: true } => {
            tracing::info!(node_id, %addr, "member {node_id} joined as a voter")
        }
        Event::Promoted { node_id } => tracing::info!(node_id, "member {node_id} was promoted to voter"),
        Event::Demoted { node_id } => tracing::info!(node_id, "member {node_id} is a learner now"),
        Event::Left { node_id, addr } => tracing::info!(node_id, %addr, "member {node_id} left the cluster"),
        Event::SnapshotBuilt { up_to } => tracing::info!(up_to_index = up_to, "built a snapshot"),
        Event::SnapshotInstalled { up_to } => {
            tracing::info!(up_to_index = up_to, "installed a snapshot from the leader")
        }
    }
}

/// Members the leader has not heard from for `after`: warned about once,
/// and told about again when they answer.
struct Silence {
    after: Duration,
    /// When each member was first seen by this leader term, for members that
    /// have never answered.
    since: BTreeMap<u64, Instant>,
    warned: BTreeSet<u64>,
}

impl Silence {
    fn check(&mut self, view: &View, acks: &BTreeMap<u64, Option<Duration>>) {
        if !view.leader {
            self.since.clear();
            self.warned.clear();
            return;
        }
        self.since.retain(|id, _| view.members.contains_key(id));
        self.warned.retain(|id| view.members.contains_key(id));
        for (&node_id, addr) in view.members.iter().filter(|(id, _)| **id != view.node_id) {
            let first_seen = *self.since.entry(node_id).or_insert_with(Instant::now);
            let quiet = acks.get(&node_id).copied().flatten().unwrap_or_else(|| first_seen.elapsed());
            if quiet >= self.after && self.warned.insert(node_id) {
                tracing::warn!(
                    node_id,
                    %addr,
                    voter = view.voters.contains(&node_id),
                    "member {node_id} has not answered the leader for {} s; is it running and reachable at {addr}?",
                    quiet.as_secs()
                );
            } else if quiet < self.after && self.warned.remove(&node_id) {
                tracing::info!(node_id, %addr, "member {node_id} answers the leader again");
            }
        }
    }
}

/// Logs cluster events until Raft stops. `unreachable_after` is how long a
/// member may stay silent before the leader warns about it.
pub async fn watch(raft: RaftNode, unreachable_after: Duration) {
    let mut metrics = raft.raft().metrics();
    let mut prev: Option<View> = None;
    let mut silence = Silence { after: unreachable_after, since: BTreeMap::new(), warned: BTreeSet::new() };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (view, acks) = {
            let m = metrics.borrow_watched();
            let acks: BTreeMap<u64, Option<Duration>> =
                m.heartbeat.iter().flatten().map(|(id, at)| (*id, at.as_ref().map(|at| at.elapsed()))).collect();
            (View::from_metrics(&m), acks)
        };
        if prev.as_ref() != Some(&view) {
            for event in changes(prev.as_ref(), &view) {
                log(&event);
            }
        }
        silence.check(&view, &acks);
        prev = Some(view);
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(leader: bool, term: u64, current_leader: u64, voters: &[u64], learners: &[u64]) -> View {
        View {
            node_id: 1,
            leader,
            term,
            current_leader: Some(current_leader),
            members: voters.iter().chain(learners).map(|id| (*id, format!("10.0.0.{id}:7000"))).collect(),
            voters: voters.iter().copied().collect(),
            snapshot: None,
            applied: Some(10),
        }
    }

    #[test]
    fn leadership_won_lost_and_seen() {
        let leader = view(true, 1, 1, &[1], &[]);
        assert_eq!(changes(None, &leader), [Event::BecameLeader { term: 1 }]);
        assert_eq!(changes(Some(&leader), &leader), []);
        let follower = view(false, 2, 3, &[1], &[]);
        assert_eq!(
            changes(Some(&leader), &follower),
            [Event::LostLeadership { term: 2, leader: Some(3) }, Event::LeaderIs { leader: 3, term: 2 }]
        );
        assert_eq!(changes(Some(&follower), &follower), [], "the same leader is not announced again");
    }

    #[test]
    fn members_join_get_promoted_and_leave() {
        let one = view(true, 1, 1, &[1], &[]);
        let learner = view(true, 1, 1, &[1], &[2]);
        let voter = view(true, 1, 1, &[1, 2], &[]);
        assert_eq!(changes(None, &learner), [Event::BecameLeader { term: 1 }], "no membership at start");
        assert_eq!(
            changes(Some(&one), &learner),
            [Event::Joined { node_id: 2, addr: "10.0.0.2:7000".into(), voter: false }]
        );
        assert_eq!(changes(Some(&learner), &voter), [Event::Promoted { node_id: 2 }]);
        assert_eq!(changes(Some(&voter), &learner), [Event::Demoted { node_id: 2 }]);
        assert_eq!(changes(Some(&voter), &one), [Event::Left { node_id: 2, addr: "10.0.0.2:7000".into() }]);
        let empty = View { members: BTreeMap::new(), voters: BTreeSet::new(), ..one.clone() };
        assert_eq!(changes(Some(&empty), &one), [], "the node's own bootstrap is logged by start-up");
    }

    #[test]
    fn snapshots_built_here_or_installed_from_the_leader() {
        let before = view(false, 1, 2, &[1, 2], &[]);
        let built = View { snapshot: Some(8), ..before.clone() };
        assert_eq!(changes(Some(&before), &built), [Event::SnapshotBuilt { up_to: 8 }]);
        let installed = View { snapshot: Some(50), applied: Some(50), ..before.clone() };
        assert_eq!(changes(Some(&before), &installed), [Event::SnapshotInstalled { up_to: 50 }]);
        assert_eq!(changes(Some(&installed), &installed), []);
    }
}
