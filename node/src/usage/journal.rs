//! The journal's storage: where records live in the node-local `local`
//! column family, and the reads and deletes the ledger, the flush and
//! retention need. Synchronous RocksDB calls; callers keep them off the
//! request path (the writer thread, `spawn_blocking`).
//!
//! Layout:
//! - `usage/j/<journal_ms be><seq be>` → one encoded `UsageRecord`.
//!   `journal_ms` is the journal's own clock when the record was written:
//!   never below an earlier record's, nor below the record's `at_ms`. Key
//!   order is therefore sequence order and time order at once, so the flush
//!   reads the records after the watermark as one run, retention deletes a
//!   prefix, and a time query seeks to its start.
//! - `usage/seq` → the next sequence number and the journal clock (8 + 8 bytes).
//! - `usage/folded` → the position of the last record the cluster folded.
//! - `usage/r/<at_ms be><seq be>`: the previous layout, keyed by the
//!   request's start. Its order is not sequence order, so `open` moves such
//!   records to `usage/j/` once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use prost::Message;
use tollgate_proto::config::v1::UsageRecord;
use tollgate_storage::{Batch, Cf, Durability, Engine};

use super::LedgerError;

const JOURNAL_PREFIX: &[u8] = b"usage/j/";
const LEGACY_PREFIX: &[u8] = b"usage/r/";
const SEQ_KEY: &[u8] = b"usage/seq";
const FOLDED_KEY: &[u8] = b"usage/folded";

/// A record is journaled when its request ends, so one that started inside a
/// time window may sit past the window's end in the journal. Time queries
/// look this much further; a request that outlasted it (only a stream can)
/// is listed by when it ended.
const LATE_RECORD_MS: i64 = 3_600_000;

/// Where a record sits in the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub journal_ms: i64,
    pub seq: u64,
}

impl Position {
    fn key(self) -> Vec<u8> {
        journal_key(self.journal_ms, self.seq)
    }

    /// The smallest key after this record's: sequence numbers are unique, so
    /// the next record's key is at least this.
    fn after_key(self) -> Vec<u8> {
        journal_key(self.journal_ms, self.seq.saturating_add(1))
    }

    fn decode(bytes: &[u8]) -> Option<Position> {
        let journal_ms = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let seq = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Position { journal_ms, seq })
    }

    fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.journal_ms.to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }
}

fn journal_key(journal_ms: i64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(JOURNAL_PREFIX.len() + 16);
    key.extend_from_slice(JOURNAL_PREFIX);
    key.extend_from_slice(&(journal_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn position_of(key: &[u8]) -> Option<Position> {
    Position::decode(key.strip_prefix(JOURNAL_PREFIX)?)
}

/// The next sequence number and the journal clock, changed only together
/// with the write that uses them.
struct Head {
    next_seq: u64,
    clock_ms: i64,
}

/// Which records a listing wants; empty strings and 0 match everything.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    /// Records with `from_ms <= at_ms < to_ms`.
    pub from_ms: i64,
    pub to_ms: i64,
    pub key: String,
    pub consumer: String,
    pub route: String,
    /// The model as asked for, as served, or as `provider/model`.
    pub model: String,
    pub status: u32,
}

impl RecordFilter {
    fn matches(&self, r: &UsageRecord) -> bool {
        let model_matches = || {
            self.model == r.model
                || self.model == r.requested_model
                || self.model.split_once('/').is_some_and(|(p, m)| p == r.provider && m == r.model)
        };
        r.at_ms >= self.from_ms
            && r.at_ms < self.to_ms
            && (self.key.is_empty() || self.key == r.api_key_id)
            && (self.consumer.is_empty() || self.consumer == r.consumer_id)
            && (self.route.is_empty() || self.route == r.route)
            && (self.status == 0 || self.status == r.http_status)
            && (self.model.is_empty() || model_matches())
    }
}

pub(super) struct Journal {
    engine: Engine,
    node_id: u64,
    head: Mutex<Head>,
    /// The last sequence number written, readable without the lock.
    last_seq: AtomicU64,
    /// The last record the cluster folded, as the flush last confirmed it.
    folded: Mutex<Option<Position>>,
}

impl Journal {
    pub(super) fn open(engine: Engine, node_id: u64) -> Result<Journal, LedgerError> {
        let (next_seq, clock_ms) = match engine.get(Cf::Local, SEQ_KEY)? {
            // The previous layout stored the sequence number alone.
            Some(bytes) if bytes.len() == 8 || bytes.len() == 16 => {
                let number = |range: std::ops::Range<usize>| bytes.get(range).map_or(0, be_u64);
                (number(0..8), number(8..16) as i64)
            }
            Some(bytes) => {
                return Err(LedgerError::Corrupt {
                    key: "usage/seq".into(),
                    detail: format!("{} bytes instead of 16", bytes.len()),
                });
            }
            None => (1, 0),
        };
        let folded = engine.get(Cf::Local, FOLDED_KEY)?.and_then(|b| Position::decode(&b));
        let journal = Journal {
            engine,
            node_id,
            head: Mutex::new(Head { next_seq: next_seq.max(1), clock_ms }),
            last_seq: AtomicU64::new(next_seq.max(1) - 1),
            folded: Mutex::new(folded),
        };
        journal.move_legacy_records()?;
        Ok(journal)
    }

    /// Stamps each record with this node's id and the next sequence number
    /// and writes them in one batch. Returns the last sequence number; None
    /// when `may_stall` is false and RocksDB would have stalled the write
    /// (nothing is written then).
    pub(super) fn write(&self, records: &mut [UsageRecord], may_stall: bool) -> Result<Option<u64>, LedgerError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let journal_ms =
            records.iter().map(|r| r.at_ms).chain([crate::clock::unix_ms(), head.clock_ms]).max().unwrap_or(0);
        let mut seq = head.next_seq;
        let mut batch = Batch::default();
        let mut buffer = Vec::with_capacity(256);
        for record in records.iter_mut() {
            record.node_id = self.node_id;
            record.seq = seq;
            buffer.clear();
            record.encode(&mut buffer).expect("a Vec grows as needed");
            batch.put(Cf::Local, &journal_key(journal_ms, seq), &buffer);
            seq += 1;
        }
        batch.put(Cf::Local, SEQ_KEY, &head_value(seq, journal_ms));
        // The WAL without fsync: survives a killed process, which is what
        // the ledger promises; a machine crash may lose the last records.
        if may_stall {
            self.engine.write(batch, Durability::Process)?;
        } else if !self.engine.write_unless_stalled(&batch, Durability::Process)? {
            return Ok(None);
        }
        head.next_seq = seq;
        head.clock_ms = journal_ms;
        self.last_seq.store(seq - 1, Ordering::Release);
        Ok(Some(seq - 1))
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Numbers the next record `next` at least. A journal behind the
    /// cluster's watermark was reset (its data directory lost, the node id
    /// reused): records numbered at or below the watermark would never count.
    pub(super) fn skip_to(&self, next: u64) -> Result<bool, LedgerError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if head.next_seq >= next {
            return Ok(false);
        }
        self.engine.put(Cf::Local, SEQ_KEY, &head_value(next, head.clock_ms), Durability::Process)?;
        head.next_seq = next;
        self.last_seq.store(next - 1, Ordering::Release);
        Ok(true)
    }

    pub(super) fn folded(&self) -> Option<Position> {
        *self.folded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that the cluster folded everything up to `position`.
    pub(super) fn set_folded(&self, position: Position) -> Result<(), LedgerError> {
        self.engine.put(Cf::Local, FOLDED_KEY, &position.encode(), Durability::Process)?;
        *self.folded.lock().unwrap_or_else(|p| p.into_inner()) = Some(position);
        Ok(())
    }

    /// Up to `max` records numbered above `after_seq`, in order, with their
    /// positions, still encoded (the flush decodes only the fields it sums).
    /// Starts at the folded position when that is not past `after_seq`;
    /// otherwise (the cluster's watermark went back, as after a restore) at
    /// the start of the journal.
    pub(super) fn read_after(&self, after_seq: u64, max: usize) -> Result<Vec<(Position, Bytes)>, LedgerError> {
        let start = match self.folded() {
            Some(folded) if folded.seq <= after_seq => folded.key(),
            _ => JOURNAL_PREFIX.to_vec(),
        };
        let mut out = Vec::new();
        self.engine.for_each_from(Cf::Local, &start, |k, v| {
            let Some(position) = position_of(k) else { return false };
            if position.seq > after_seq {
                out.push((position, Bytes::copy_from_slice(v)));
            }
            out.len() < max
        })?;
        Ok(out)
    }

    /// Records matching `filter`, oldest first, at most `limit`; and whether
    /// more matched.
    pub(super) fn list(&self, filter: &RecordFilter, limit: usize) -> Result<(Vec<UsageRecord>, bool), LedgerError> {
        let end = filter.to_ms.saturating_add(LATE_RECORD_MS);
        let mut out = Vec::new();
        let mut more = false;
        self.scan(&journal_key(filter.from_ms, 0), |position, record| {
            if position.journal_ms >= end {
                return false;
            }
            if filter.matches(&record) {
                if out.len() == limit {
                    more = true;
                    return false;
                }
                out.push(record);
            }
            true
        })?;
        // Written in the order requests ended; listed in the order they started.
        out.sort_by_key(|r| (r.at_ms, r.seq));
        Ok((out, more))
    }

    /// Visits records from `start` in key order until `visit` returns false.
    fn scan(&self, start: &[u8], mut visit: impl FnMut(Position, UsageRecord) -> bool) -> Result<(), LedgerError> {
        let mut failure = None;
        self.engine.for_each_from(Cf::Local, start, |k, v| {
            let Some(position) = position_of(k) else { return false };
            match UsageRecord::decode(v) {
                Ok(record) => visit(position, record),
                Err(e) => {
                    failure = Some(LedgerError::Corrupt { key: hex::encode(k), detail: e.to_string() });
                    false
                }
            }
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// Deletes the records journaled before `cutoff_ms` that the cluster
    /// has folded; records it has not folded stay, however old.
    pub(super) fn prune(&self, cutoff_ms: i64) -> Result<(), LedgerError> {
        let Some(folded) = self.folded() else { return Ok(()) };
        let end = journal_key(cutoff_ms, 0).min(folded.after_key());
        let mut batch = Batch::default();
        batch.delete_range(Cf::Local, JOURNAL_PREFIX, &end);
        self.engine.write(batch, Durability::Process)?;
        Ok(())
    }

    /// Moves records of the previous layout to `usage/j/`, numbered as they
    /// were, their journal time the running maximum of `at_ms` in sequence
    /// order. Idempotent: a move cut short by a crash is done again whole.
    fn move_legacy_records(&self) -> Result<(), LedgerError> {
        let legacy = self.engine.scan_prefix(Cf::Local, LEGACY_PREFIX)?;
        if legacy.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(legacy.len());
        for (key, value) in &legacy {
            let record = UsageRecord::decode(value.as_slice())
                .map_err(|e| LedgerError::Corrupt { key: hex::encode(key), detail: e.to_string() })?;
            records.push(record);
        }
        records.sort_by_key(|r| r.seq);
        let mut batch = Batch::default();
        let mut clock = 0;
        for record in &records {
            clock = clock.max(record.at_ms);
            batch.put(Cf::Local, &journal_key(clock, record.seq), &record.encode_to_vec());
        }
        // `usage/r0` is the first key after every `usage/r/…` ('0' follows '/').
        batch.delete_range(Cf::Local, LEGACY_PREFIX, b"usage/r0");
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        head.clock_ms = head.clock_ms.max(clock);
        batch.put(Cf::Local, SEQ_KEY, &head_value(head.next_seq, head.clock_ms));
        self.engine.write(batch, Durability::Process)?;
        tracing::info!(records = records.len(), "moved usage records to the journal's sequence-ordered layout");
        Ok(())
    }
}

/// `usage/seq`'s value: the next sequence number, then the journal clock.
fn head_value(next_seq: u64, clock_ms: i64) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&next_seq.to_be_bytes());
    out[8..].copy_from_slice(&clock_ms.to_be_bytes());
    out
}

fn be_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_be_bytes)
}
