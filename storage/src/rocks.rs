//! The production engine: one RocksDB database holding every column family.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::engine::{Batch, Durability, KeyValue, KvEngine, Op};
use crate::{Cf, StorageError};

/// A handle to the database. Cheap to clone; every clone shares one RocksDB.
///
/// The inherent methods are the [`KvEngine`] ones, so callers that hold an
/// `Engine` need not import the trait.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    path: PathBuf,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("path", &self.path).finish()
    }
}

/// How much memory RocksDB may hold. RocksDB's defaults suit a database
/// server (a 64 MiB memtable per column family, two of them, a 32 MiB block
/// cache); a gateway's replicated state is routes, keys and counters, and
/// every node also runs the data path, so the defaults here are small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The block cache, shared by every column family; index and filter
    /// blocks live in it too, so it bounds what reads keep in memory.
    pub block_cache_bytes: usize,
    /// One column family's memtable is flushed to disk at this size.
    pub write_buffer_bytes: usize,
    /// All memtables together, a soft bound: past it RocksDB flushes the
    /// family with the oldest memtable early (writes are not stalled, so a
    /// burst can pass it by at most one memtable per family).
    pub write_buffers_total_bytes: usize,
}

impl Default for MemoryBudget {
    fn default() -> MemoryBudget {
        MemoryBudget { block_cache_bytes: 8 << 20, write_buffer_bytes: 4 << 20, write_buffers_total_bytes: 16 << 20 }
    }
}

/// What RocksDB holds in memory now, in bytes (the budget's tests read it).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Active and immutable memtables of every column family.
    pub memtables: u64,
    pub block_cache: u64,
    pub block_cache_capacity: u64,
}

fn apply_budget(opts: &mut Options, budget: MemoryBudget) {
    let cache = rocksdb::Cache::new_lru_cache(budget.block_cache_bytes);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&cache);
    // Otherwise every open table file keeps its index and filter in memory
    // outside the cache, and that grows with the data.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(budget.write_buffer_bytes);
    opts.set_max_write_buffer_number(2);
    // A write buffer manager over every family, charging the cache's
    // memory too would starve reads on a small budget: memtables only.
    opts.set_db_write_buffer_size(budget.write_buffers_total_bytes);
}

impl Engine {
    /// Opens (creating if needed) the database at `path` with every column
    /// family, within the default [`MemoryBudget`].
    pub fn open(path: impl AsRef<Path>) -> Result<Engine, StorageError> {
        Engine::open_with(path, MemoryBudget::default())
    }

    /// Opens (creating if needed) the database at `path` with every column family.
    pub fn open_with(path: impl AsRef<Path>, budget: MemoryBudget) -> Result<Engine, StorageError> {
        let path = path.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Fresh logs/state compress cheaply with lz4; the bottom level holds most bytes, zstd there.
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
        apply_budget(&mut opts, budget);
        // RocksDB's own "default" family, which holds nothing, is listed so
        // that it shares the budget instead of getting RocksDB's defaults.
        let families = std::iter::once(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .chain(Cf::ALL.map(Cf::name))
            .map(|name| ColumnFamilyDescriptor::new(name, opts.clone()));
        // RocksDB would create it 0755 less the umask; the database is secrets and state.
        crate::private::private_dir(&path).map_err(|source| StorageError::CreateDir { path: path.clone(), source })?;
        let db = DB::open_cf_descriptors(&opts, &path, families)
            .map_err(|source| StorageError::Open { path: path.clone(), source })?;
        Ok(Engine { db: Arc::new(db), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the database holds in memory (RocksDB's own counters).
    #[cfg(test)]
    pub fn memory(&self) -> MemoryUse {
        let state = self.handle(Cf::State);
        let property = |name: &str| self.db.property_int_value_cf(state, name).ok().flatten().unwrap_or(0);
        let memtables = Cf::ALL
            .iter()
            .map(|cf| self.db.property_int_value_cf(self.handle(*cf), "rocksdb.size-all-mem-tables").ok().flatten())
            .map(|bytes| bytes.unwrap_or(0))
            .sum();
        MemoryUse {
            memtables,
            block_cache: property("rocksdb.block-cache-usage"),
            block_cache_capacity: property("rocksdb.block-cache-capacity"),
        }
    }

    fn handle(&self, cf: Cf) -> &ColumnFamily {
        // Every family is created in `open`, so a missing one is a programming error.
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get_cf(self.handle(cf), key).map_err(StorageError::io("get"))
    }

    pub fn put(&self, cf: Cf, key: &[u8], value: &[u8], durability: Durability) -> Result<(), StorageError> {
        KvEngine::put(self, cf, key, value, durability)
    }

    /// Applies every operation of `batch` atomically, across column families.
    pub fn write(&self, batch: Batch, durability: Durability) -> Result<(), StorageError> {
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.handle(cf), k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.handle(cf), k),
                // The trait promises nothing for an empty or reversed range,
                // which RocksDB need not treat as a no-op.
                Op::DeleteRange(cf, from, to) if from < to => wb.delete_range_cf(self.handle(cf), from, to),
                Op::DeleteRange(..) => {}
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(durability == Durability::Machine);
        self.db.write_opt(wb, &opts).map_err(StorageError::io("write"))
    }

    /// fsyncs the write-ahead log, making every earlier `Process` write machine-durable.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true).map_err(StorageError::io("sync wal"))
    }

    /// Every key/value whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<KeyValue>, StorageError> {
        KvEngine::scan_prefix(self, cf, prefix)
    }

    /// Visits keys `>= start` in order until `visit` returns false.
    pub fn for_each_from(
        &self,
        cf: Cf,
        start: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let iter = self.db.iterator_cf(self.handle(cf), IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(StorageError::io("iterate"))?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// The greatest key of a family and its value.
    pub fn last(&self, cf: Cf) -> Result<Option<KeyValue>, StorageError> {
        match self.db.iterator_cf(self.handle(cf), IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(StorageError::io("iterate"))?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
        }
    }

    /// A consistent, openable copy of the whole database at `target` (hard links
    /// where possible), for backups.
    pub fn checkpoint(&self, target: impl AsRef<Path>) -> Result<(), StorageError> {
        let target = target.as_ref();
        let err = |source| StorageError::Checkpoint { path: target.to_path_buf(), source };
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(err)?;
        checkpoint.create_checkpoint(target).map_err(err)
    }

    /// How many handles share this database; lets a restart wait until the
    /// last user has let go before reopening the same directory.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.db)
    }
}

impl KvEngine for Engine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Engine::get(self, cf, key)
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<(), StorageError> {
        Engine::write(self, batch, durability)
    }

    fn for_each_from(
        &self,
        cf: Cf,
        start: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        Engine::for_each_from(self, cf, start, visit)
    }

    fn last(&self, cf: Cf) -> Result<Option<KeyValue>, StorageError> {
        Engine::last(self, cf)
    }
}

#[cfg(test)]
mod tests {
    // What every engine must do is in conformance.rs; these are RocksDB's own:
    // data on disk, checkpoints, one process per directory.
    use super::*;

    #[test]
    fn batch_is_atomic_across_families_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(dir.path()).unwrap();
            let mut batch = Batch::default();
            batch.put(Cf::State, b"svc/1", b"a");
            batch.put(Cf::RaftMeta, b"applied", b"7");
            engine.write(batch, Durability::Machine).unwrap();
        }
        let engine = Engine::open(dir.path()).unwrap();
        assert_eq!(engine.get(Cf::State, b"svc/1").unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(engine.get(Cf::RaftMeta, b"applied").unwrap().as_deref(), Some(&b"7"[..]));
        assert_eq!(engine.get(Cf::Local, b"svc/1").unwrap(), None, "families are separate");
    }

    #[test]
    fn memory_stays_within_the_budget_however_much_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget {
            block_cache_bytes: 2 << 20,
            write_buffer_bytes: 1 << 20,
            write_buffers_total_bytes: 4 << 20,
        };
        let engine = Engine::open_with(dir.path(), budget).unwrap();
        assert_eq!(engine.memory().block_cache_capacity, 2 << 20);
        // 32 MiB of values that do not compress, into two families: RocksDB's
        // own defaults would keep all of it in memtables.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut value = vec![0u8; 4096];
        let mut peak = 0;
        for n in 0..8192u32 {
            for chunk in value.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes());
            }
            let cf = if n % 2 == 0 { Cf::RaftLog } else { Cf::Local };
            engine.put(cf, &n.to_be_bytes(), &value, Durability::Process).unwrap();
            peak = peak.max(engine.memory().memtables);
        }
        // Two families, two 1 MiB memtables each at most (the 4 MiB total is soft).
        assert!(peak <= 8 << 20, "memtables peaked at {peak} bytes, over 2 families x 2 x 1 MiB");
        drop(engine);
        let engine = Engine::open_with(dir.path(), budget).unwrap();
        assert_eq!(engine.get(Cf::Local, &8191u32.to_be_bytes()).unwrap().map(|v| v.len()), Some(4096));
        assert_eq!(engine.get(Cf::RaftLog, &0u32.to_be_bytes()).unwrap().map(|v| v.len()), Some(4096));
    }

    #[test]
    fn checkpoint_opens_as_an_independent_copy() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("db")).unwrap();
        engine.put(Cf::State, b"k", b"before", Durability::Process).unwrap();
        engine.checkpoint(dir.path().join("backup")).unwrap();
        engine.put(Cf::State, b"k", b"after", Durability::Process).unwrap();

        let copy = Engine::open(dir.path().join("backup")).unwrap();
        assert_eq!(copy.get(Cf::State, b"k").unwrap().as_deref(), Some(&b"before"[..]));
    }

    #[test]
    fn second_open_of_a_live_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _engine = Engine::open(dir.path()).unwrap();
        let err = Engine::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another tollgate process"), "{err}");
    }
}
