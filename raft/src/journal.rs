//! Which entities recent commands touched, so the data plane can update what
//! changed instead of rebuilding from the whole state after every batch.
//!
//! In memory only: not part of snapshots nor of the `state` family. After a
//! load or a snapshot install it starts empty at the applied index, and a
//! reader from before that rebuilds.

use std::cmp::Ordering;
use std::sync::Arc;

use imbl::Vector;

use crate::entities::EntityKind;

/// Touches kept. A reader that falls further behind than this rebuilds from
/// the whole state, which it must be able to do anyway.
pub(crate) const JOURNAL_CAPACITY: usize = 65_536;

/// One entity touched by an applied command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Touched {
    /// The log index of the command.
    pub index: u64,
    pub kind: EntityKind,
    pub id: Arc<str>,
}

/// The last [`JOURNAL_CAPACITY`] touches, oldest first. A persistent vector,
/// so that cloning the state to publish it stays O(1).
#[derive(Debug, Clone, Default)]
pub(crate) struct Journal {
    touches: Vector<Touched>,
    /// Every touch by a command after this index is in `touches`.
    complete_after: u64,
}

impl Journal {
    /// An empty journal for a state loaded at `index`.
    pub(crate) fn starting_at(index: u64) -> Journal {
        Journal { touches: Vector::new(), complete_after: index }
    }

    pub(crate) fn record(&mut self, touched: Touched) {
        self.touches.push_back(touched);
        while self.touches.len() > JOURNAL_CAPACITY {
            // Other touches of the dropped one's command may remain, but that
            // command is no longer complete here.
            if let Some(dropped) = self.touches.pop_front() {
                self.complete_after = dropped.index;
            }
        }
    }

    /// Touches by commands after `index` up to `applied`, oldest first; None
    /// when some of them are no longer here, or `index` is not a point of
    /// this state's history.
    pub(crate) fn since(&self, index: u64, applied: u64) -> Option<impl Iterator<Item = &Touched>> {
        if index < self.complete_after || index > applied {
            return None;
        }
        // Touches are in index order: the first one after `index`.
        let start =
            self.touches.binary_search_by(|t| if t.index <= index { Ordering::Less } else { Ordering::Greater });
        let start = start.unwrap_or_else(|insert_at| insert_at);
        Some(self.touches.focus().narrow(start..).into_iter())
    }

    #[cfg(test)]
    pub(crate) fn touches(&self) -> &Vector<Touched> {
        &self.touches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(index: u64, id: &str) -> Touched {
        Touched { index, kind: EntityKind::Consumer, id: Arc::from(id) }
    }

    fn ids<'a>(touches: impl Iterator<Item = &'a Touched>) -> Vec<(u64, String)> {
        touches.map(|t| (t.index, t.id.to_string())).collect()
    }

    #[test]
    fn changes_since_an_index_are_the_later_touches_in_order() {
        let mut journal = Journal::starting_at(10);
        journal.record(touch(11, "a"));
        journal.record(touch(13, "b"));
        journal.record(touch(13, "c"));
        assert_eq!(ids(journal.since(10, 13).unwrap()), [(11, "a".into()), (13, "b".into()), (13, "c".into())]);
        assert_eq!(ids(journal.since(11, 13).unwrap()), [(13, "b".into()), (13, "c".into())]);
        assert_eq!(ids(journal.since(12, 13).unwrap()), [(13, "b".into()), (13, "c".into())]);
        assert!(journal.since(13, 13).unwrap().next().is_none());
        assert!(journal.since(9, 13).is_none(), "from before the load");
        assert!(journal.since(14, 13).is_none(), "not in this history");
    }

    #[test]
    fn a_full_journal_forgets_the_oldest_commands_whole() {
        let mut journal = Journal::starting_at(0);
        // Command 1 touches two entities; the first falls out, so command 1
        // is incomplete and a reader at 0 must rebuild, one at 1 need not.
        journal.record(touch(1, "a"));
        journal.record(touch(1, "b"));
        for i in 0..JOURNAL_CAPACITY as u64 - 1 {
            journal.record(touch(2 + i, "c"));
        }
        let applied = JOURNAL_CAPACITY as u64;
        assert_eq!(journal.touches().len(), JOURNAL_CAPACITY);
        assert!(journal.since(0, applied).is_none());
        let after_one = journal.since(1, applied).unwrap();
        assert_eq!(after_one.count(), JOURNAL_CAPACITY - 1);
    }
}
