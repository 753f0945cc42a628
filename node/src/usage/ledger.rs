//! The ledger's front: the request path appends each request's record to
//! this node's journal before the response goes out, and reads list, sum and
//! hand records to the flush.
//!
//! The journal is `tollgate_journal`: memory-mapped segments under
//! `<data_dir>/usage`, where an append is a copy into the page cache under a
//! mutex. A record is therefore in the journal, safe from a killed process,
//! by the time its response is written, at no system call and no wait; a
//! power loss can take what the kernel had not written back yet (up to
//! `vm.dirty_expire_centisecs`, 30 s by default). Records the previous
//! layout kept in RocksDB's `local` column family are moved in on open.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use tokio::sync::Notify;
use tollgate_journal::{Frame, Journal, Options};
use tollgate_proto::admin::v1::UsageRow;
use tollgate_proto::config::v1::{UsageOutcome, UsageRecord};
use tollgate_storage::{Batch, Cf, Durability, Engine};

use super::LedgerError;
use super::record::{RecordFilter, RequestUsage};

/// Where the previous layout kept records (RocksDB, `local`).
const LEGACY_PREFIX: &[u8] = b"usage/r/";
const LEGACY_SEQ_KEY: &[u8] = b"usage/seq";

/// A record is appended when its request ends, so one that started inside a
/// time window may have been written long after it (a stream). Time queries
/// read this much further; a request that outlasted it is listed by when it
/// ended.
const LATE_RECORD_MS: i64 = 3_600_000;

thread_local! {
    /// Encoding buffer, reused by every request on this thread.
    static ENCODED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

pub struct UsageLedger {
    journal: Journal,
    node_id: u64,
    /// The flush wants waking once the journal's last number reaches this.
    wake_flush_at: AtomicU64,
    flush_wanted: Notify,
}

impl UsageLedger {
    /// Opens the journal in `dir`, moving in records an older version kept
    /// in `engine`.
    pub fn open(engine: &Engine, dir: &Path, node_id: u64, options: Options) -> Result<UsageLedger, LedgerError> {
        let ledger = UsageLedger {
            journal: Journal::open(dir, options)?,
            node_id,
            wake_flush_at: AtomicU64::new(u64::MAX),
            flush_wanted: Notify::new(),
        };
        ledger.move_legacy_records(engine)?;
        Ok(ledger)
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Journals a record built by the caller (AI calls). Once this returns
    /// the record survives a killed process; a failure (disk full, the node
    /// shutting down) is logged, never the caller's problem.
    pub fn record(&self, record: &UsageRecord) {
        let record = fitted(record);
        let now_ms = crate::clock::unix_ms().max(record.at_ms);
        self.append_with(now_ms, |out| record.encode(out).expect("a Vec grows as needed"));
    }

    /// Journals a request no backend accounted for, without building a
    /// `UsageRecord` (see `record::RequestUsage`), at `now_ms` (the caller
    /// has read the clock already).
    pub fn record_request(&self, usage: &RequestUsage<'_>, now_ms: i64) {
        self.append_with(now_ms, |out| usage.encode(out));
    }

    fn append_with(&self, now_ms: i64, encode: impl FnOnce(&mut Vec<u8>)) {
        let appended = ENCODED.with_borrow_mut(|out| {
            out.clear();
            encode(out);
            self.journal.append(now_ms, out)
        });
        match appended {
            Ok(seq) if seq == self.wake_flush_at.load(Ordering::Relaxed) => self.flush_wanted.notify_one(),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "cannot journal a usage record; it is lost"),
        }
    }

    /// Journals `record` and returns its number (tests, imports).
    pub fn append(&self, record: &UsageRecord) -> Result<u64, LedgerError> {
        let written_ms = crate::clock::unix_ms().max(record.at_ms);
        Ok(self.journal.append(written_ms, &fitted(record).encode_to_vec())?)
    }

    /// The number of the last record journaled (0: none yet).
    pub fn last_seq(&self) -> Result<u64, LedgerError> {
        Ok(self.journal.last_seq())
    }

    /// Completes once the journal's last number reaches `seq`, or at once
    /// if it already has.
    pub(super) async fn reached(&self, seq: u64) {
        let notified = self.flush_wanted.notified();
        self.wake_flush_at.store(seq, Ordering::Relaxed);
        if self.journal.last_seq() >= seq {
            return;
        }
        notified.await;
    }

    /// Up to `max` records numbered above `after_seq`, still encoded (the
    /// flush decodes only the fields it sums).
    pub(super) fn read_after(&self, after_seq: u64, max: usize) -> Result<Vec<Frame>, LedgerError> {
        Ok(self.journal.read_after(after_seq, max)?)
    }

    /// Numbers the next record `next_seq` at least. A journal behind the
    /// cluster's watermark was reset (its data directory lost, the node id
    /// reused): records numbered at or below the watermark would never count.
    pub(super) fn skip_to(&self, next_seq: u64) -> Result<bool, LedgerError> {
        Ok(self.journal.skip_to(next_seq)?)
    }

    /// Deletes records written before `cutoff_ms` and numbered at most
    /// `folded_seq` (the cluster's counters hold them), a segment at a time.
    pub fn prune(&self, cutoff_ms: i64, folded_seq: u64) -> Result<usize, LedgerError> {
        Ok(self.journal.prune(cutoff_ms, folded_seq)?)
    }

    /// Writes the journal back to disk and stops taking records.
    pub fn close(&self) {
        if let Err(error) = self.journal.close() {
            tracing::warn!(%error, "cannot write the usage journal back to disk at shutdown");
        }
    }

    /// Records with `from_ms <= at_ms < to_ms`, by start time.
    pub fn records(&self, from_ms: i64, to_ms: i64) -> Result<Vec<UsageRecord>, LedgerError> {
        let filter = RecordFilter { from_ms, to_ms, ..Default::default() };
        Ok(self.list(&filter, usize::MAX)?.0)
    }

    /// Visits the records matching `filter`, in the order they were
    /// written, until `visit` returns false.
    fn each_matching(
        &self,
        filter: &RecordFilter,
        mut visit: impl FnMut(UsageRecord) -> bool,
    ) -> Result<(), LedgerError> {
        let end = filter.to_ms.saturating_add(LATE_RECORD_MS);
        let mut corrupt = None;
        // A record is written at or after its start: none written before
        // `from_ms` can match.
        self.journal.scan(filter.from_ms, |frame| {
            if frame.written_ms >= end {
                return false;
            }
            match decode(&frame, self.node_id) {
                Ok(record) if filter.matches(&record) => visit(record),
                Ok(_) => true,
                Err(error) => {
                    corrupt = Some(error);
                    false
                }
            }
        })?;
        corrupt.map_or(Ok(()), Err)
    }

    /// Records matching `filter`, by start time, at most `limit` (the first
    /// written); and whether more matched.
    pub fn list(&self, filter: &RecordFilter, limit: usize) -> Result<(Vec<UsageRecord>, bool), LedgerError> {
        let mut out = Vec::new();
        let mut more = false;
        self.each_matching(filter, |record| {
            if out.len() == limit {
                more = true;
                return false;
            }
            out.push(record);
            true
        })?;
        // Written in the order requests ended; listed in the order they started.
        out.sort_by_key(|r| (r.at_ms, r.seq));
        Ok((out, more))
    }

    /// Sums records in `[from_ms, to_ms)` by the named dimensions, reading
    /// them one at a time (a node's journal holds every request).
    pub fn report(&self, from_ms: i64, to_ms: i64, group_by: &[String]) -> Result<Vec<UsageRow>, LedgerError> {
        if let Some(unknown) = group_by.iter().find(|g| !REPORT_GROUPS.contains(&g.as_str())) {
            return Err(LedgerError::UnknownGroup(unknown.clone()));
        }
        let mut rows: BTreeMap<Vec<String>, UsageRow> = BTreeMap::new();
        let filter = RecordFilter { from_ms, to_ms, ..Default::default() };
        self.each_matching(&filter, |r| {
            let group: Vec<String> = group_by.iter().map(|g| dimension(&r, g)).collect();
            let row = rows.entry(group.clone()).or_insert_with(|| UsageRow { group, ..Default::default() });
            row.requests += 1;
            match UsageOutcome::try_from(r.outcome) {
                Ok(UsageOutcome::Error) => row.errors += 1,
                Ok(UsageOutcome::Cancelled) => row.cancelled += 1,
                _ => {}
            }
            row.input_tokens += r.input_tokens;
            row.output_tokens += r.output_tokens;
            row.cached_input_tokens += r.cached_input_tokens;
            row.estimated += u64::from(r.estimated);
            row.cost_picodollars = row.cost_picodollars.saturating_add(r.cost_picodollars);
            true
        })?;
        Ok(rows.into_values().collect())
    }

    /// Appends the records of the previous layout (RocksDB, keyed by start
    /// time) in their old numbering order, then deletes them. A move cut
    /// short by a crash leaves the old records in place and is done again
    /// (the journal then holds them twice, and both copies are folded into
    /// the cluster's counters: a crash in the one start after an upgrade
    /// that moves records can count pre-upgrade AI calls twice).
    fn move_legacy_records(&self, engine: &Engine) -> Result<(), LedgerError> {
        let legacy = engine.scan_prefix(Cf::Local, LEGACY_PREFIX)?;
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
        for record in &records {
            self.journal.append(record.at_ms, &fitted(record).encode_to_vec())?;
        }
        // On disk before the originals go.
        self.journal.sync()?;
        let mut batch = Batch::default();
        // `usage/r0` is the first key after every `usage/r/…` ('0' follows '/').
        batch.delete_range(Cf::Local, LEGACY_PREFIX, b"usage/r0");
        batch.delete(Cf::Local, LEGACY_SEQ_KEY);
        engine.write(batch, Durability::Process)?;
        tracing::info!(records = records.len(), "moved usage records from RocksDB into the usage journal");
        Ok(())
    }
}

/// A record's text fields are cut to this many bytes when the record would
/// not fit in a journal frame: a model name or an error message quoting one
/// is the client's to choose, and a record must never be refused for size
/// (a request that got an answer is counted).
const MAX_FIELD_BYTES: usize = 1024;

/// `record` as journaled: itself, or with its long text fields cut.
fn fitted(record: &UsageRecord) -> std::borrow::Cow<'_, UsageRecord> {
    if record.encoded_len() <= tollgate_journal::MAX_PAYLOAD {
        return std::borrow::Cow::Borrowed(record);
    }
    let mut cut = record.clone();
    for field in [
        &mut cut.request_id,
        &mut cut.route,
        &mut cut.consumer_id,
        &mut cut.api_key_id,
        &mut cut.endpoint,
        &mut cut.requested_model,
        &mut cut.provider,
        &mut cut.model,
        &mut cut.credential,
        &mut cut.error,
        &mut cut.finish_reason,
        &mut cut.service,
        &mut cut.kind,
    ] {
        if field.len() > MAX_FIELD_BYTES {
            let mut end = MAX_FIELD_BYTES;
            while !field.is_char_boundary(end) {
                end -= 1;
            }
            field.truncate(end);
        }
    }
    std::borrow::Cow::Owned(cut)
}

/// A journaled record, with this node's id and its number filled in (the
/// journal keeps those in the frame, not in the record's bytes).
pub(super) fn decode(frame: &Frame, node_id: u64) -> Result<UsageRecord, LedgerError> {
    let mut record = UsageRecord::decode(frame.payload.clone())
        .map_err(|e| LedgerError::Corrupt { key: format!("usage record {}", frame.seq), detail: e.to_string() })?;
    record.node_id = node_id;
    record.seq = frame.seq;
    Ok(record)
}

/// What a node's own report may group by.
pub const REPORT_GROUPS: [&str; 9] =
    ["key", "consumer", "model", "provider", "credential", "route", "service", "kind", "day"];

fn dimension(r: &UsageRecord, group: &str) -> String {
    let or_none = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    match group {
        "key" => or_none(&r.api_key_id),
        "consumer" => or_none(&r.consumer_id),
        "model" => or_none(&model_of(r)),
        "provider" => or_none(&r.provider),
        "credential" => {
            or_none(&if r.credential.is_empty() { String::new() } else { format!("{}/{}", r.provider, r.credential) })
        }
        "route" => or_none(&r.route),
        "service" => or_none(&r.service),
        "kind" => or_none(&r.kind),
        "day" => utc_day(r.at_ms),
        _ => String::new(),
    }
}

/// The model a record counts for: `provider/model` as served, else the
/// model asked for (a request refused before any provider), else none.
pub fn model_of(r: &UsageRecord) -> String {
    if r.provider.is_empty() { r.requested_model.clone() } else { format!("{}/{}", r.provider, r.model) }
}

/// `YYYY-MM-DD` (UTC) of a Unix millisecond time.
pub fn utc_day(at_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    let mut day = humantime::format_rfc3339_seconds(at).to_string();
    day.truncate(10);
    day
}
