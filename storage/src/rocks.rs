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

impl Engine {
    /// Opens (creating if needed) the database at `path` with every column family.
    pub fn open(path: impl AsRef<Path>) -> Result<Engine, StorageError> {
        let path = path.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Fresh logs/state compress cheaply with lz4; the bottom level holds most bytes, zstd there.
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
        let families = Cf::ALL.map(|cf| ColumnFamilyDescriptor::new(cf.name(), opts.clone()));
        // RocksDB would create it 0755 less the umask; the database is secrets and state.
        crate::private::private_dir(&path).map_err(|source| StorageError::CreateDir { path: path.clone(), source })?;
        let db = DB::open_cf_descriptors(&opts, &path, families)
            .map_err(|source| StorageError::Open { path: path.clone(), source })?;
        Ok(Engine { db: Arc::new(db), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
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
