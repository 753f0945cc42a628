//! What the layers above may ask of an engine, and the batch they write with.
//!
//! The traits name no RocksDB type: the state machine runs over any
//! [`KvEngine`], so its property tests use [`crate::MemEngine`] while every
//! node runs on [`crate::Engine`]. The conformance suite (`conformance.rs`)
//! holds both to the same contract.

use crate::{Cf, StorageError};

/// One record: key and value bytes.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// How long a write must survive once `write` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In the WAL and the OS page cache: survives a killed process, not a power cut.
    Process,
    /// fsynced: survives a power cut. Raft votes and log appends need this.
    Machine,
}

/// An ordered key/value store with a fixed set of column families.
///
/// Handles are cheap to clone and every clone sees the same data, as the
/// state machine and the log store share one database.
pub trait KvEngine: Clone + Send + Sync + 'static {
    /// The value stored at `key`, if any.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies every operation of `batch`, in the order they were added,
    /// atomically across column families: a reader sees all of them or none.
    /// An in-memory engine has nothing to make durable and ignores `durability`.
    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StorageError>;

    /// Visits keys `>= start` in key order until `visit` returns false. The
    /// visit sees one consistent view: writes made meanwhile are not in it.
    fn for_each_from(
        &self,
        cf: Cf,
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError>;

    /// The greatest key of a family and its value.
    fn last(&self, cf: Cf) -> Result<Option<KeyValue>, StorageError>;

    /// Writes one value; a batch of one.
    fn put(&self, cf: Cf, key: &[u8], value: &[u8], durability: Durability) -> Result<(), StorageError> {
        let mut batch = Batch::default();
        batch.put(cf, key, value);
        self.write(batch, durability)
    }

    /// Every key/value whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<KeyValue>, StorageError> {
        let mut out = Vec::new();
        self.for_each_from(cf, prefix, &mut |k, v| {
            if !k.starts_with(prefix) {
                return false;
            }
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }
}

#[derive(Debug)]
pub(crate) enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// Writes collected for one atomic [`KvEngine::write`].
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.ops.push(Op::Put(cf, key.to_vec(), value.to_vec()));
    }

    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.ops.push(Op::Delete(cf, key.to_vec()));
    }

    /// Deletes keys in `[from, to)`; nothing when `from >= to`.
    pub fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        self.ops.push(Op::DeleteRange(cf, from.to_vec(), to.to_vec()));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}
