//! An engine in memory, for tests that want the state machine without a disk:
//! a property test can then run thousands of command sequences in seconds.
//! Nothing survives the last handle; `Durability` means nothing here.

use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use imbl::OrdMap;

use crate::engine::{Batch, Durability, KeyValue, KvEngine, Op};
use crate::{Cf, StorageError};

type Family = OrdMap<Vec<u8>, Vec<u8>>;

/// One ordered map per column family behind a lock. Cheap to clone; every
/// clone shares the same data, like clones of [`crate::Engine`].
///
/// The maps are persistent, so a reader copies a family in O(1) and iterates
/// it without the lock: it sees one consistent view, as a RocksDB iterator
/// does, and may write to the engine while it visits.
#[derive(Clone, Default)]
pub struct MemEngine {
    families: Arc<RwLock<[Family; Cf::ALL.len()]>>,
}

impl std::fmt::Debug for MemEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemEngine").finish_non_exhaustive()
    }
}

impl MemEngine {
    pub fn new() -> MemEngine {
        MemEngine::default()
    }

    /// A copy of one family as it is now.
    fn family(&self, cf: Cf) -> Family {
        // A writer builds the next maps aside and swaps them in whole (see
        // `write`), so a panic while holding the lock leaves consistent maps.
        let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
        families[slot(cf)].clone()
    }
}

fn slot(cf: Cf) -> usize {
    match cf {
        Cf::RaftLog => 0,
        Cf::RaftMeta => 1,
        Cf::State => 2,
        Cf::Local => 3,
    }
}

impl KvEngine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.family(cf).get(key).cloned())
    }

    fn write(&self, batch: Batch, _durability: Durability) -> Result<(), StorageError> {
        let mut families = self.families.write().unwrap_or_else(PoisonError::into_inner);
        // Cloning the maps is O(1); applying to the copy and swapping it in
        // makes the batch all-or-nothing even if applying it panics.
        let mut next = families.clone();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => {
                    next[slot(cf)].insert(k, v);
                }
                Op::Delete(cf, k) => {
                    next[slot(cf)].remove(&k);
                }
                Op::DeleteRange(cf, from, to) if from < to => {
                    let family = &mut next[slot(cf)];
                    let doomed: Vec<Vec<u8>> = family.range(from..to).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        family.remove(&k);
                    }
                }
                Op::DeleteRange(..) => {}
            }
        }
        *families = next;
        Ok(())
    }

    fn for_each_from(
        &self,
        cf: Cf,
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let family = self.family(cf);
        for (k, v) in family.range::<_, [u8]>((Bound::Included(start), Bound::Unbounded)) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, cf: Cf) -> Result<Option<KeyValue>, StorageError> {
        Ok(self.family(cf).get_max().map(|(k, v)| (k.clone(), v.clone())))
    }
}
