use tollgate_storage::{Cf, KeyValue, KvEngine};

use crate::apply::Change;
use crate::entities::{EntityKind, Tables};
use crate::error::{ApplyError, RaftNodeError};
use crate::journal::{Journal, Touched};
use crate::registry::Entity;
use crate::table::Table;

/// The whole replicated gateway configuration, in memory.
///
/// Cloning is O(1) and the copies share everything (persistent maps, see
/// `table.rs`), which is what lets the state machine publish an immutable
/// copy to the data plane after every applied batch while it keeps applying.
/// The per-entity accessors (`services()`, `find_route(..)`, …) are declared
/// with the entities, in `entities.rs`.
#[derive(Debug, Clone, Default)]
pub struct GatewayState {
    applied_index: u64,
    tables: Tables,
    journal: Journal,
}

impl GatewayState {
    /// An empty state that reflects the log up to `applied_index`, and whose
    /// change journal starts there.
    pub(crate) fn empty_at(applied_index: u64) -> GatewayState {
        GatewayState { applied_index, tables: Tables::default(), journal: Journal::starting_at(applied_index) }
    }

    /// The Raft log index of the last command reflected in this state.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub(crate) fn set_applied_index(&mut self, index: u64) {
        self.applied_index = index;
    }

    /// Entities put or deleted by commands applied after `index`, oldest
    /// first; an entity touched twice appears twice. None when the journal no
    /// longer reaches back that far (or a snapshot was installed since): the
    /// caller must rebuild from the whole state.
    pub fn changes_since(&self, index: u64) -> Option<impl Iterator<Item = &Touched>> {
        self.journal.since(index, self.applied_index)
    }

    pub(crate) fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The entities of type `E`.
    pub(crate) fn table<E: Entity>(&self) -> &Table<E> {
        E::table(&self.tables)
    }

    /// The state after the command at log `index`, as a replica applying it
    /// would hold it (its changes committed and journalled, the applied index
    /// moved), or why it is rejected. `self` is untouched, and the copy costs
    /// what the command changes. For tools and tests that need a state
    /// without a Raft log, such as the data plane's incremental rebuild test.
    pub fn with_command(
        &self,
        cmd: &tollgate_proto::raft::v1::Command,
        index: u64,
    ) -> Result<GatewayState, ApplyError> {
        let outcome = crate::apply::apply(self, cmd, index)?;
        let mut next = self.clone();
        for change in &outcome.changes {
            next.commit(change, index);
        }
        next.applied_index = index;
        Ok(next)
    }

    /// A copy with `changes` made (what a command would leave), for checks
    /// on the result before it is committed. Costs what the changes touch.
    pub(crate) fn staged(&self, changes: &[Change], index: u64) -> GatewayState {
        let mut next = self.clone();
        for change in changes {
            next.commit(change, index);
        }
        next
    }

    /// Makes `change`, a change of the command at log `index`, and journals it.
    pub(crate) fn commit(&mut self, change: &Change, index: u64) {
        let (kind, id) = match change {
            Change::Put(entity) => (entity.kind(), self.tables.put(entity)),
            Change::Delete(kind, id) => {
                self.tables.remove(*kind, id);
                (*kind, id.clone())
            }
        };
        self.journal.record(Touched { index, kind, id });
    }

    /// Every entity as the `(key, value)` pairs of the `state` column family,
    /// in key order: the snapshot format, and what two replicas must agree on.
    pub fn encoded_entries(&self) -> Vec<KeyValue> {
        let mut out = Vec::new();
        self.tables.encode_into(&mut out);
        // Each table is in id order; the kinds' prefixes order the tables.
        out.sort_unstable();
        out
    }

    /// Rebuilds the in-memory state from the `state` column family.
    pub fn load<E: KvEngine>(engine: &E, applied_index: u64) -> Result<GatewayState, RaftNodeError> {
        let mut state = GatewayState::empty_at(applied_index);
        for (key, value) in engine.scan_prefix(Cf::State, b"")? {
            state.insert_encoded(&key, &value)?;
        }
        Ok(state)
    }

    /// Adds one `state` family record; used by `load` and snapshot install.
    /// Records of a previous format are held in the current form.
    pub(crate) fn insert_encoded(&mut self, key: &[u8], value: &[u8]) -> Result<(), RaftNodeError> {
        let kind = EntityKind::of_key(key).ok_or_else(|| RaftNodeError::Corrupt {
            what: "state key",
            detail: format!("unknown key {:?}", String::from_utf8_lossy(key)),
        })?;
        self.tables.insert_encoded(kind, value)
    }

    #[cfg(test)]
    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }
}
