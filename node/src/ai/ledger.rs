//! This node's usage journal: one `UsageRecord` per AI request, in the
//! never-replicated `local` column family, written before the response's
//! accounting is considered done so a crash loses no record. A later flush to
//! Raft can use (node_id, seq) as the idempotency key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prost::Message;
use tollgate_proto::admin::v1::UsageRow;
use tollgate_proto::config::v1::{UsageOutcome, UsageRecord};
use tollgate_storage::{Batch, Cf, Durability, Engine, StorageError};

const RECORD_PREFIX: &[u8] = b"usage/r/";
const SEQ_KEY: &[u8] = b"usage/seq";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("usage record {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("unknown group {0:?}; use key, consumer, model, provider, credential or day")]
    UnknownGroup(String),
    #[error("the usage ledger is closed: {0}")]
    Closed(String),
}

fn record_key(at_ms: i64, seq: u64) -> Vec<u8> {
    let mut key = RECORD_PREFIX.to_vec();
    key.extend_from_slice(&(at_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The journal proper: sequence numbers and RocksDB writes.
struct Journal {
    engine: Engine,
    node_id: u64,
    // Serialises seq assignment with the write that persists it.
    next_seq: Mutex<u64>,
}

impl Journal {
    fn write(&self, records: Vec<UsageRecord>) -> Result<u64, LedgerError> {
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut seq = *next;
        let mut batch = Batch::default();
        for mut record in records {
            record.node_id = self.node_id;
            record.seq = seq;
            batch.put(Cf::Local, &record_key(record.at_ms, seq), &record.encode_to_vec());
            seq += 1;
        }
        batch.put(Cf::Local, SEQ_KEY, &seq.to_be_bytes());
        // The WAL without fsync: survives a process crash, like the rest of the
        // node-local bookkeeping; a machine crash may lose the last records.
        self.engine.write(batch, Durability::Process)?;
        *next = seq;
        Ok(seq - 1)
    }
}

enum Queued {
    Record(Box<UsageRecord>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Requests hand records to a writer thread, so a slow disk never stalls the
/// request path (which may be a single-threaded runtime); the thread writes
/// whatever has queued up as one batch.
pub struct UsageLedger {
    journal: Mutex<Option<Arc<Journal>>>,
    queue: Mutex<Option<std::sync::mpsc::Sender<Queued>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

const MAX_BATCH: usize = 1024;

fn run_writer(journal: Arc<Journal>, queue: std::sync::mpsc::Receiver<Queued>) {
    while let Ok(first) = queue.recv() {
        let mut records = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Queued::Record(r) => records.push(*r),
                Queued::Flush(done) => flushes.push(done),
            }
            next = if records.len() < MAX_BATCH { queue.try_recv().ok() } else { None };
        }
        if !records.is_empty() {
            let count = records.len();
            if let Err(error) = journal.write(records) {
                tracing::error!(%error, count, "cannot journal AI usage records; they are lost");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

impl UsageLedger {
    pub fn open(engine: Engine, node_id: u64) -> Result<UsageLedger, LedgerError> {
        let next_seq = match engine.get(Cf::Local, SEQ_KEY)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| LedgerError::Corrupt {
                key: "usage/seq".into(),
                detail: format!("{} bytes instead of 8", bytes.len()),
            })?),
            None => 1,
        };
        let journal = Arc::new(Journal { engine, node_id, next_seq: Mutex::new(next_seq) });
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let journal = journal.clone();
            std::thread::Builder::new()
                .name("usage-ledger".into())
                .spawn(move || run_writer(journal, rx))
                .map_err(|e| LedgerError::Closed(format!("cannot start the ledger writer: {e}")))?
        };
        Ok(UsageLedger {
            journal: Mutex::new(Some(journal)),
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    fn journal(&self) -> Result<Arc<Journal>, LedgerError> {
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        journal.clone().ok_or_else(|| LedgerError::Closed("the node is shutting down".into()))
    }

    /// Queues a record for the writer thread; never blocks on the disk.
    pub fn record(&self, record: UsageRecord) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let request_id = record.request_id.clone();
        let queued = queue.as_ref().is_some_and(|tx| tx.send(Queued::Record(Box::new(record))).is_ok());
        if !queued {
            tracing::warn!(%request_id, "usage ledger closed; a record arrived too late and is lost");
        }
    }

    /// Waits until every record queued before this call is on disk.
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        let sent = {
            let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.as_ref().is_some_and(|tx| tx.send(Queued::Flush(done)).is_ok())
        };
        if sent {
            let _ = wait.recv();
        }
    }

    /// Writes what is queued, stops the writer and releases the database.
    pub fn close(&self) {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
        drop(self.journal.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Stamps the record with this node's id and the next sequence number and
    /// journals it at once. Returns the sequence number.
    pub fn append(&self, record: UsageRecord) -> Result<u64, LedgerError> {
        self.journal()?.write(vec![record])
    }

    /// Records with `from_ms <= at_ms < to_ms`, oldest first.
    pub fn records(&self, from_ms: i64, to_ms: i64) -> Result<Vec<UsageRecord>, LedgerError> {
        self.flush();
        let journal = self.journal()?;
        let mut out = Vec::new();
        let mut failure = None;
        let start = record_key(from_ms, 0);
        journal.engine.for_each_from(Cf::Local, &start, |k, v| {
            if !k.starts_with(RECORD_PREFIX) {
                return false;
            }
            match UsageRecord::decode(v) {
                Ok(r) if r.at_ms >= to_ms => false,
                Ok(r) => {
                    out.push(r);
                    true
                }
                Err(e) => {
                    failure = Some(LedgerError::Corrupt { key: hex::encode(k), detail: e.to_string() });
                    false
                }
            }
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Sums records in `[from_ms, to_ms)` by the named dimensions.
    pub fn report(&self, from_ms: i64, to_ms: i64, group_by: &[String]) -> Result<Vec<UsageRow>, LedgerError> {
        for g in group_by {
            if !matches!(g.as_str(), "key" | "consumer" | "model" | "provider" | "credential" | "day") {
                return Err(LedgerError::UnknownGroup(g.clone()));
            }
        }
        let mut rows: BTreeMap<Vec<String>, UsageRow> = BTreeMap::new();
        for r in self.records(from_ms, to_ms)? {
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
        }
        Ok(rows.into_values().collect())
    }
}

impl Drop for UsageLedger {
    fn drop(&mut self) {
        self.close();
    }
}

fn dimension(r: &UsageRecord, group: &str) -> String {
    let or_none = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    match group {
        "key" => or_none(&r.api_key_id),
        "consumer" => or_none(&r.consumer_id),
        "model" => or_none(&if r.provider.is_empty() {
            r.requested_model.clone()
        } else {
            format!("{}/{}", r.provider, r.model)
        }),
        "provider" => or_none(&r.provider),
        "credential" => {
            or_none(&if r.credential.is_empty() { String::new() } else { format!("{}/{}", r.provider, r.credential) })
        }
        "day" => utc_day(r.at_ms),
        _ => String::new(),
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix millisecond time.
pub fn utc_day(at_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    let mut day = humantime::format_rfc3339_seconds(at).to_string();
    day.truncate(10);
    day
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at_ms: i64, key: &str, model: &str, input: u64, output: u64, cost: u64) -> UsageRecord {
        UsageRecord {
            at_ms,
            api_key_id: key.into(),
            provider: "openai".into(),
            model: model.into(),
            outcome: UsageOutcome::Ok as i32,
            input_tokens: input,
            output_tokens: output,
            cost_picodollars: cost,
            ..Default::default()
        }
    }

    #[test]
    fn records_survive_reopen_and_group_by_key_model_and_day() {
        let dir = tempfile::tempdir().unwrap();
        let day1 = 1_764_201_600_000; // 2025-11-27T00:00:00Z
        {
            let engine = Engine::open(dir.path()).unwrap();
            let ledger = UsageLedger::open(engine, 7).unwrap();
            assert_eq!(ledger.append(record(day1 + 10, "k1", "gpt-4o", 10, 5, 100)).unwrap(), 1);
            assert_eq!(ledger.append(record(day1 + 20, "k1", "gpt-4o", 1, 1, 1)).unwrap(), 2);
        }
        let engine = Engine::open(dir.path()).unwrap();
        let ledger = UsageLedger::open(engine, 7).unwrap();
        assert_eq!(ledger.append(record(day1 + 86_400_000, "k2", "gpt-4o-mini", 3, 4, 7)).unwrap(), 3, "seq continues");
        ledger.record(record(day1 + 30, "k3", "queued", 1, 1, 1));
        let all = ledger.records(0, i64::MAX).unwrap();
        assert_eq!(all.len(), 4, "records() waits for queued records");
        let all: Vec<_> = all.into_iter().filter(|r| r.api_key_id != "k3").collect();
        assert_eq!(all.iter().map(|r| (r.node_id, r.seq)).collect::<Vec<_>>(), vec![(7, 1), (7, 2), (7, 3)]);

        let by = |g: &[&str]| ledger.report(0, i64::MAX, &g.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let rows = by(&["key", "model", "day"]);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].group, vec!["k1", "openai/gpt-4o", "2025-11-27"]);
        assert_eq!(
            (rows[0].requests, rows[0].input_tokens, rows[0].output_tokens, rows[0].cost_picodollars),
            (2, 11, 6, 101)
        );
        assert_eq!(rows[1].group, vec!["k2", "openai/gpt-4o-mini", "2025-11-28"]);
        let total = by(&[]);
        assert_eq!((total.len(), total[0].requests, total[0].cost_picodollars), (1, 4, 109));
        // The time window is half-open.
        assert_eq!(ledger.records(day1 + 20, day1 + 86_400_000).unwrap().len(), 2);
        ledger.close();
        assert!(matches!(ledger.records(0, i64::MAX), Err(LedgerError::Closed(_))));
        assert!(matches!(ledger.report(0, 1, &["colour".into()]), Err(LedgerError::UnknownGroup(_))));
    }

    #[test]
    fn utc_days_match_the_calendar() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_798_675_199_999), "2026-12-30");
        assert_eq!(utc_day(1_798_761_599_999), "2026-12-31");
    }
}
