//! The outcomes of the commands this node applied last, so a write whose
//! leader failed mid-request can learn whether its first copy committed
//! instead of being sent again and applied twice. Every node computes the
//! same outcome for the same entry (`apply` is deterministic), so a follower
//! can answer from its own journal what only the dead leader was going to say.
//!
//! A copy appended by the leader of term T either is in the log before the
//! first entry a later leader committed, or never commits: once this node
//! has applied an entry of a later term, "not in the journal" is final.

use std::collections::VecDeque;
use std::sync::Mutex;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::types::{Command, CommandResponse};

/// How many applied commands are remembered: a failover resolves within a
/// few seconds, during which a busy cluster applies far fewer.
const KEPT: usize = 4096;

/// A command's identity: the hash of its encoding (which carries its time,
/// its actor and, for a create, the new entity's random id).
pub(crate) type Fingerprint = [u8; 32];

pub(crate) fn fingerprint(command: &Command) -> Fingerprint {
    Sha256::digest(upgrade_stable(&command.0).encode_to_vec()).into()
}

/// The command as every version in a rolling upgrade keeps it. A leader of
/// the previous version re-encodes a forwarded command with its own types,
/// dropping the fields it does not know (a route's `backend`, whose legacy
/// mirror it keeps), so the forwarder must not count those fields, or it
/// would never recognise its own write in that leader's log.
fn upgrade_stable(
    command: &tollgate_proto::raft::v1::Command,
) -> std::borrow::Cow<'_, tollgate_proto::raft::v1::Command> {
    use tollgate_proto::raft::v1::command::Op;
    match &command.op {
        Some(Op::CreateRoute(route) | Op::UpdateRoute(route)) if route.backend.is_some() => {
            let mut stable = command.clone();
            if let Some(Op::CreateRoute(route) | Op::UpdateRoute(route)) = &mut stable.op {
                route.backend = None;
            }
            std::borrow::Cow::Owned(stable)
        }
        _ => std::borrow::Cow::Borrowed(command),
    }
}

/// What became of a command a leader may have appended in some term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fate {
    /// It committed and was applied here with this outcome.
    Applied(CommandResponse),
    /// It never committed and never will: it is safe to propose again.
    Lost,
    /// Not applied so far, and no entry of a later term applied yet.
    Pending,
    /// The journal no longer covers the entries in question (a snapshot was
    /// installed, or too many were applied since).
    Unknowable,
}

#[derive(Default)]
struct Journal {
    entries: VecDeque<(u64, Fingerprint, CommandResponse)>,
    /// Every command applied after this index is in `entries`.
    complete_after: u64,
    /// The term of the last entry applied.
    last_term: u64,
}

pub(crate) struct Outcomes {
    journal: Mutex<Journal>,
}

impl Outcomes {
    /// A journal that knows nothing up to `applied` (what the state machine
    /// loaded from disk).
    pub(crate) fn new(applied: u64, term: u64) -> Outcomes {
        Outcomes { journal: Mutex::new(Journal { complete_after: applied, last_term: term, ..Journal::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes an applied entry; `command` and its outcome for a command entry.
    pub(crate) fn applied(&self, index: u64, term: u64, command: Option<(&Command, &CommandResponse)>) {
        let mut journal = self.lock();
        journal.last_term = term;
        if let Some((command, response)) = command {
            journal.entries.push_back((index, fingerprint(command), response.clone()));
            if journal.entries.len() > KEPT
                && let Some((evicted, _, _)) = journal.entries.pop_front()
            {
                journal.complete_after = evicted;
            }
        }
    }

    /// A snapshot replaced the state: the entries it covers were never seen here.
    pub(crate) fn reset(&self, applied: u64, term: u64) {
        *self.lock() = Journal { complete_after: applied, last_term: term, ..Journal::default() };
    }

    /// What became of `command`, appended (if at all) by the leader of
    /// `term` after this node had applied `applied_before`.
    pub(crate) fn fate(&self, command: &Fingerprint, applied_before: u64, term: u64) -> Fate {
        let journal = self.lock();
        if journal.complete_after > applied_before {
            return Fate::Unknowable;
        }
        let mut after = journal.entries.iter().rev().take_while(|(index, _, _)| *index > applied_before);
        if let Some((_, _, response)) = after.find(|(_, f, _)| f == command) {
            return Fate::Applied(response.clone());
        }
        if journal.last_term > term { Fate::Lost } else { Fate::Pending }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::config::v1::Consumer;
    use tollgate_proto::raft::v1::command::Op;

    use super::*;
    use crate::types::Applied;

    fn create(name: &str) -> Command {
        Command::new(Op::CreateConsumer(Consumer { name: name.into(), ..Default::default() }), 7, "test")
    }

    fn ok(revision: u64) -> CommandResponse {
        CommandResponse(Ok(Applied { revision, entity: None }))
    }

    #[test]
    fn a_copy_committed_by_the_next_leader_is_found_with_its_outcome() {
        let outcomes = Outcomes::new(10, 3);
        let write = create("a");
        assert_eq!(outcomes.fate(&fingerprint(&write), 10, 3), Fate::Pending);
        outcomes.applied(11, 3, Some((&write, &ok(11))));
        outcomes.applied(12, 4, None); // the new leader's first entry
        assert_eq!(outcomes.fate(&fingerprint(&write), 10, 3), Fate::Applied(ok(11)));
    }

    #[test]
    fn a_copy_absent_once_a_later_term_applies_is_lost() {
        let outcomes = Outcomes::new(10, 3);
        outcomes.applied(11, 3, Some((&create("other"), &ok(11))));
        assert_eq!(outcomes.fate(&fingerprint(&create("a")), 10, 3), Fate::Pending, "term 3 may still commit it");
        outcomes.applied(12, 4, None);
        assert_eq!(outcomes.fate(&fingerprint(&create("a")), 10, 3), Fate::Lost);
    }

    #[test]
    fn entries_before_the_request_do_not_count() {
        let outcomes = Outcomes::new(10, 3);
        let write = create("a");
        outcomes.applied(11, 3, Some((&write, &ok(11))));
        outcomes.applied(12, 4, None);
        // An identical command applied before this attempt started is another request.
        assert_eq!(outcomes.fate(&fingerprint(&write), 11, 3), Fate::Lost);
    }

    #[test]
    fn a_journal_that_does_not_cover_the_request_cannot_tell() {
        let outcomes = Outcomes::new(10, 3);
        assert_eq!(outcomes.fate(&fingerprint(&create("a")), 9, 3), Fate::Unknowable);
        outcomes.reset(50, 5);
        assert_eq!(outcomes.fate(&fingerprint(&create("a")), 10, 3), Fate::Unknowable);
        for index in 51..=(51 + KEPT as u64) {
            outcomes.applied(index, 5, Some((&create(&index.to_string()), &ok(index))));
        }
        assert_eq!(outcomes.fate(&fingerprint(&create("a")), 50, 5), Fate::Unknowable, "evicted");
    }

    #[test]
    fn a_route_write_re_encoded_by_a_previous_version_leader_is_still_recognised() {
        use tollgate_proto::config::v1::Route;
        use tollgate_proto::raft::v1::command::Op;
        let mut route = Route { name: "r".into(), ..Default::default() };
        route.set_service_backend("s1".into());
        let sent = Command(tollgate_proto::raft::v1::Command {
            op: Some(Op::CreateRoute(route.clone())),
            ..Default::default()
        });
        // What an older leader logs: the route without the field it does not know.
        let mut logged = sent.clone();
        if let Some(Op::CreateRoute(r)) = &mut logged.0.op {
            r.backend = None;
        }
        assert_eq!(fingerprint(&sent), fingerprint(&logged));
        let mut other = route;
        other.set_service_backend("s2".into());
        let different =
            Command(tollgate_proto::raft::v1::Command { op: Some(Op::CreateRoute(other)), ..Default::default() });
        assert_ne!(fingerprint(&sent), fingerprint(&different), "the mirror still tells writes apart");
    }
}
