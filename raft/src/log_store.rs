//! The Raft log and vote in RocksDB (`raft_log` and `raft_meta` families).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tollgate_storage::{Batch, Cf, Durability, Engine};

use crate::keys;
use crate::types::TypeConfig;

#[derive(Debug, Clone)]
pub struct LogStore {
    engine: Engine,
}

impl LogStore {
    pub fn new(engine: Engine) -> LogStore {
        LogStore { engine }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.engine.get(Cf::RaftMeta, key).map_err(io::Error::other)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T, durability: Durability) -> io::Result<()> {
        self.engine.put(Cf::RaftMeta, key, &encode(value)?, durability).map_err(io::Error::other)
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        let mut failure = None;
        self.engine
            .for_each_from(Cf::RaftLog, &keys::log_key(start), |k, v| {
                let Some(index) = keys::log_index(k) else {
                    failure = Some(io::Error::new(io::ErrorKind::InvalidData, "malformed raft log key"));
                    return false;
                };
                if !range.contains(&index) {
                    return false;
                }
                match decode::<EntryOf<TypeConfig>>(v) {
                    Ok(entry) => {
                        entries.push(entry);
                        true
                    }
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            })
            .map_err(io::Error::other)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(entries),
        }
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<TypeConfig>>> {
        self.get_meta(keys::VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogIdOf<TypeConfig>> = self.get_meta(keys::LAST_PURGED)?;
        let last_log_id = match self.engine.last(Cf::RaftLog).map_err(io::Error::other)? {
            Some((_, bytes)) => Some(decode::<EntryOf<TypeConfig>>(&bytes)?.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
        // A vote forgotten after a crash could let this node vote twice in a term.
        self.put_meta(keys::VOTE, vote, Durability::Machine)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        // Only an optimisation for restart (apply up to here at once), so no fsync.
        self.put_meta(keys::COMMITTED, &committed, Durability::Process)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        Ok(self.get_meta::<Option<LogIdOf<TypeConfig>>>(keys::COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::default();
        for entry in entries {
            batch.put(Cf::RaftLog, &keys::log_key(entry.index()), &encode(&entry)?);
        }
        // Readable on return (openraft's contract), durable when the callback fires.
        self.engine.write(batch, Durability::Process).map_err(io::Error::other)?;
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            callback.io_completed(engine.sync_wal().map_err(io::Error::other));
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let mut batch = Batch::default();
        batch.delete_range(Cf::RaftLog, &keys::log_key(from), &keys::log_key(u64::MAX));
        batch.delete(Cf::RaftLog, &keys::log_key(u64::MAX));
        self.engine.write(batch, Durability::Machine).map_err(io::Error::other)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> io::Result<()> {
        // The marker goes first: entries at or below it are ignored even if a
        // crash leaves some of them behind.
        self.put_meta(keys::LAST_PURGED, &log_id, Durability::Machine)?;
        let mut batch = Batch::default();
        batch.delete_range(Cf::RaftLog, &keys::log_key(0), &keys::log_key(log_id.index() + 1));
        self.engine.write(batch, Durability::Process).map_err(io::Error::other)
    }
}
