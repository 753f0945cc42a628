//! Folding this node's journal into the cluster's counters.
//!
//! One batch at a time: the records after the cluster's watermark for this
//! node, summed per (hour, key, consumer, model, provider, route, service),
//! proposed as `Op::Usage { first_seq: watermark + 1, last_seq, deltas }`.
//! The state machine folds it only if it starts right after the watermark
//! and answers with the watermark either way, so the flush never needs to
//! know whether an earlier attempt (cut off by a crash, a timeout or a
//! change of leader) went through: it resumes after whatever watermark the
//! answer names, and no record counts twice.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rustc_hash::FxHashMap;
use tokio::sync::watch;
use tollgate_proto::config::v1::{UsageOutcome, UsageWatermark};
use tollgate_proto::raft::v1::command::Op;
use tollgate_proto::raft::v1::{UsageBatch, UsageDelta};
use tollgate_raft::{Command, ProposeError, RaftNode};

use super::LedgerError;
use super::ledger::UsageLedger;
use tollgate_journal::Frame;

/// Records per batch, at most; also how many waiting records start a flush
/// before the interval is up. A batch is one Raft entry, fsynced on a
/// majority, so a loaded node should send few (docs/benchmarks.md, "Usage
/// ledger"); the entry stays small however many records it sums: records of
/// one hour and the same dimensions share a delta, and a batch stops at
/// [`MAX_DELTAS`].
pub const MAX_BATCH_RECORDS: usize = 100_000;
/// Distinct deltas per batch: the state machine's bound (raft `apply/usage.rs`).
pub const MAX_DELTAS: usize = 4_096;
/// The state machine refuses longer dimension values, and the model a
/// client names can be anything.
const MAX_VALUE_LEN: usize = 256;
const HOUR_MS: i64 = 3_600_000;
/// Batches per flush, at most, before the task looks at its stop signal again.
const MAX_ROUNDS: usize = 64;
/// Folded records older than the retention are deleted this often.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long a node that is shutting down tries to fold its last records.
const LAST_FLUSH: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cannot read the usage journal: {0}")]
    Ledger(#[from] LedgerError),
    #[error("the cluster did not take the usage batch; it is sent again at the next flush: {0}")]
    Propose(#[from] ProposeError),
    #[error("the cluster's answer to a usage batch is not a watermark: {0}")]
    Answer(String),
    #[error("the journal read stopped: {0}")]
    Task(String),
}

/// Where batches go: the Raft node, or in tests a state in memory.
pub trait Fold: Send + Sync {
    /// This node's watermark as this node's copy of the state has it (may lag).
    fn known_watermark(&self, node_id: u64) -> u64;

    /// Proposes `batch`; returns the node's watermark after it was applied.
    fn fold(&self, batch: UsageBatch) -> impl Future<Output = Result<u64, FlushError>> + Send;
}

impl Fold for RaftNode {
    fn known_watermark(&self, node_id: u64) -> u64 {
        self.local_state().usage_watermark(&node_id.to_string()).map_or(0, |w| w.last_seq)
    }

    async fn fold(&self, batch: UsageBatch) -> Result<u64, FlushError> {
        let actor = format!("node {} usage", batch.node_id);
        let applied = self.propose(Command::new(Op::Usage(batch), crate::clock::unix_ms(), actor)).await?;
        let bytes = applied.entity.ok_or_else(|| FlushError::Answer("no entity".into()))?;
        let watermark = UsageWatermark::decode(bytes.as_slice()).map_err(|e| FlushError::Answer(e.to_string()))?;
        Ok(watermark.last_seq)
    }
}

/// A batch ready to propose, and how many records it sums.
pub struct Pending {
    pub batch: UsageBatch,
    pub records: usize,
}

/// Indexes of `Summed::dims`.
const KEY: usize = 0;
const CONSUMER: usize = 1;
const PROVIDER: usize = 2;
const MODEL: usize = 3;
const ROUTE: usize = 4;
const SERVICE: usize = 5;

/// The fields of a `UsageRecord` (entities.proto) a batch sums, read in
/// place: the flush reads every record once, so it decodes only these, and
/// the dimension values are slices of the record's bytes, not copies.
#[derive(Default)]
struct Summed<'a> {
    at_ms: i64,
    dims: [&'a [u8]; 6],
    outcome: i32,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cost_picodollars: u64,
}

/// Where a string field of `UsageRecord` goes in `Summed::dims`.
fn dimension_of(tag: u32) -> Option<usize> {
    Some(match tag {
        7 => KEY,
        6 => CONSUMER,
        10 => PROVIDER,
        11 => MODEL,
        5 => ROUTE,
        27 => SERVICE,
        _ => return None,
    })
}

fn summed(mut buf: &[u8]) -> Result<Summed<'_>, String> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut r = Summed::default();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        let mut varint = || decode_varint(&mut buf).map_err(|e| e.to_string());
        match (tag, wire_type) {
            (3, WireType::Varint) => r.at_ms = varint()? as i64,
            (14, WireType::Varint) => r.outcome = varint()? as i32,
            (17, WireType::Varint) => r.input_tokens = varint()?,
            (18, WireType::Varint) => r.output_tokens = varint()?,
            (19, WireType::Varint) => r.cached_input_tokens = varint()?,
            (22, WireType::Varint) => r.cost_picodollars = varint()?,
            (tag, WireType::LengthDelimited) if dimension_of(tag).is_some() => {
                let len = usize::try_from(varint()?).map_err(|e| e.to_string())?;
                let Some((value, rest)) = buf.split_at_checked(len) else {
                    return Err(format!("field {tag} runs past the record's end"));
                };
                r.dims[dimension_of(tag).expect("matched above")] = value;
                buf = rest;
            }
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(|e| e.to_string())?,
        }
    }
    Ok(r)
}

/// What makes two records share a delta: the hour and the dimension values
/// (the model as provider and model).
type DeltaKey<'a> = (i64, [&'a [u8]; 6]);

/// A dimension value as the state machine takes it: text, at most
/// [`MAX_VALUE_LEN`] bytes (a client names its model, and can name a long one).
fn value(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut end = text.len().min(MAX_VALUE_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn new_delta((hour_start_ms, dims): &DeltaKey<'_>) -> UsageDelta {
    // Provider/model as served. A request no provider served counts for no
    // model: the name it asked for is the client's to choose, and every new
    // one would be a counter in the replicated state for good.
    let model =
        if dims[PROVIDER].is_empty() { String::new() } else { value(&[dims[PROVIDER], b"/", dims[MODEL]].concat()) };
    UsageDelta {
        hour_start_ms: *hour_start_ms,
        key: value(dims[KEY]),
        consumer: value(dims[CONSUMER]),
        model,
        provider: value(dims[PROVIDER]),
        route: value(dims[ROUTE]),
        service: value(dims[SERVICE]),
        ..Default::default()
    }
}

/// Sums `records` (numbered above `after_seq`, in order) into one batch
/// starting at `after_seq + 1`, taking records until the next would need a
/// delta past [`MAX_DELTAS`]. A gap in the numbers (records deleted, or
/// never written) is covered by the batch and counts nothing. None when
/// there is nothing to send.
pub fn build_batch(node_id: u64, after_seq: u64, records: &[Frame]) -> Result<Option<Pending>, LedgerError> {
    let mut index: FxHashMap<DeltaKey<'_>, usize> = FxHashMap::default();
    let mut deltas: Vec<UsageDelta> = Vec::new();
    let mut last = None;
    let mut count = 0;
    for frame in records {
        let r = summed(&frame.payload)
            .map_err(|detail| LedgerError::Corrupt { key: format!("usage record {}", frame.seq), detail })?;
        let key = (r.at_ms.div_euclid(HOUR_MS) * HOUR_MS, r.dims);
        let slot = match index.get(&key) {
            Some(slot) => *slot,
            None if deltas.len() == MAX_DELTAS => break,
            None => {
                deltas.push(new_delta(&key));
                index.insert(key, deltas.len() - 1);
                deltas.len() - 1
            }
        };
        let delta = &mut deltas[slot];
        delta.requests += 1;
        delta.errors += u64::from(r.outcome == UsageOutcome::Error as i32);
        delta.input_tokens += r.input_tokens;
        delta.output_tokens += r.output_tokens;
        delta.cached_input_tokens += r.cached_input_tokens;
        delta.cost_picodollars = delta.cost_picodollars.saturating_add(r.cost_picodollars);
        last = Some(frame.seq);
        count += 1;
    }
    let Some(last) = last else { return Ok(None) };
    let batch = UsageBatch { node_id, first_seq: after_seq + 1, last_seq: last, deltas };
    Ok(Some(Pending { batch, records: count }))
}

/// Sends this node's journal to the cluster, batch by batch.
pub struct Flusher<F> {
    ledger: Arc<UsageLedger>,
    sink: F,
    max_records: usize,
    /// The cluster's watermark for this node as its last answer gave it.
    watermark: Option<u64>,
}

impl<F: Fold> Flusher<F> {
    pub fn new(ledger: Arc<UsageLedger>, sink: F) -> Flusher<F> {
        Flusher { ledger, sink, max_records: MAX_BATCH_RECORDS, watermark: None }
    }

    /// Fewer records per batch (tests).
    pub fn with_max_records(mut self, max_records: usize) -> Flusher<F> {
        self.max_records = max_records.max(1);
        self
    }

    /// Where the next batch starts: after the last answer's watermark; before
    /// any answer, after this node's copy of the watermark (a copy that lags
    /// costs one proposal the state machine turns down with the real one).
    pub fn after_seq(&self) -> u64 {
        self.watermark.unwrap_or_else(|| self.sink.known_watermark(self.ledger.node_id()))
    }

    /// Proposes batches until the journal is drained (or for a bounded
    /// number of rounds). Returns the records folded.
    pub async fn flush(&mut self) -> Result<u64, FlushError> {
        let mut folded = 0;
        for _ in 0..MAX_ROUNDS {
            let after = self.after_seq();
            self.number_after(after)?;
            let (read, pending) = self.read_batch(after).await?;
            let Some(pending) = pending else { return Ok(folded) };
            let sent_last = pending.batch.last_seq;
            let watermark = self.sink.fold(pending.batch).await?;
            self.watermark = Some(watermark);
            if watermark != sent_last {
                self.resume_after(after, watermark)?;
                continue;
            }
            folded += pending.records as u64;
            if pending.records == read && read < self.max_records {
                return Ok(folded);
            }
        }
        Ok(folded)
    }

    /// Reads the records after `after` and sums them, off the runtime's
    /// workers (both cost CPU in proportion to the records). Returns how many
    /// records were read, and the batch.
    async fn read_batch(&self, after: u64) -> Result<(usize, Option<Pending>), FlushError> {
        let (ledger, max) = (self.ledger.clone(), self.max_records);
        let built = at_low_priority(move || {
            let records = ledger.read_after(after, max)?;
            Ok::<_, LedgerError>((records.len(), build_batch(ledger.node_id(), after, &records)?))
        })
        .await?;
        Ok(built?)
    }

    /// The batch did not start right after the watermark (an earlier
    /// attempt was folded after all, or this node's copy of the state
    /// lagged): the next one starts after the watermark the answer named.
    fn resume_after(&self, sent_after: u64, watermark: u64) -> Result<(), FlushError> {
        tracing::info!(sent_from = sent_after + 1, watermark, "usage batch not folded; resuming after the watermark");
        self.number_after(watermark)
    }

    /// Numbers new records after `watermark` if the journal ends before it:
    /// the journal lost its tail (a power cut: Raft's log is fsynced, the
    /// journal is not) or was reset (a new data directory under a reused
    /// node id, `usage/` deleted). Records numbered at or below the
    /// watermark would never count, and retention would delete them as
    /// folded. Called before the node serves and before every flush.
    pub fn number_after(&self, watermark: u64) -> Result<(), FlushError> {
        let last = self.ledger.last_seq()?;
        if watermark > last && self.ledger.skip_to(watermark + 1)? {
            tracing::warn!(
                watermark,
                journal_last_seq = last,
                "the cluster has folded this node's records up to {watermark}, past the end of its journal: the \
                 journal was reset (a new data directory under a reused node id?); new records are numbered \
                 after {watermark}"
            );
        }
        Ok(())
    }
}

/// Runs `work` on a thread of its own under `SCHED_IDLE`: summing a
/// second's records is a burst of CPU (tens of milliseconds at 50,000
/// requests a second), and a node should spend its cores on requests first.
/// At normal priority, and even at nice 10, the thread held the core for a
/// scheduler slice whenever it ran and doubled the p99 of requests on a
/// saturated core (docs/benchmarks.md, "Usage ledger"); an idle-policy
/// thread is preempted as soon as a request's thread wakes. While every
/// core stays saturated, the cluster's counters fall behind and catch up
/// when load drops; the journal holds the records meanwhile, and limits and
/// budgets do not read the counters.
async fn at_low_priority<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, FlushError> {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("usage-flush".into())
        .spawn(move || {
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            let native = thread_priority::thread_native_id();
            if let Err(error) = thread_priority::set_thread_priority_and_policy(native, ThreadPriority::Min, idle) {
                // Only costs request latency while the flush runs.
                tracing::debug!(?error, "cannot run the usage flush at idle priority");
            }
            let _ = done.send(work());
        })
        .map_err(|e| FlushError::Task(format!("cannot start a thread: {e}")))?;
    result.await.map_err(|e| FlushError::Task(e.to_string()))
}

/// `[usage]` as the flush task uses it.
#[derive(Clone, Debug)]
pub struct FlushConfig {
    pub interval: Duration,
    pub retention: Duration,
}

/// Flushes every `interval`, or as soon as a batch's worth of records waits,
/// and deletes folded records past the retention every hour, until `stop`;
/// then tries once more, bounded, so that a node stopped for good leaves no
/// record uncounted.
pub async fn run<F: Fold + 'static>(mut flusher: Flusher<F>, config: FlushConfig, mut stop: watch::Receiver<bool>) {
    let ledger = flusher.ledger.clone();
    let mut failing = false;
    let mut pruned: Option<Instant> = None;
    loop {
        // After a failure, only the interval: a backlog must not spin proposals.
        let early = if failing { u64::MAX } else { flusher.after_seq() + flusher.max_records as u64 };
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            () = ledger.reached(early) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        match flusher.flush().await {
            Ok(_) if failing => {
                tracing::info!("usage flush to the cluster works again");
                failing = false;
            }
            Ok(_) => {}
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot flush usage to the cluster; retrying every usage.flush_interval_ms");
                }
                failing = true;
            }
        }
        if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            pruned = Some(Instant::now());
            prune(&ledger, config.retention, flusher.after_seq()).await;
        }
    }
    if let Ok(Err(error)) = tokio::time::timeout(LAST_FLUSH, flusher.flush()).await {
        tracing::info!(%error, "usage not flushed at shutdown; it is flushed at the next start");
    }
}

async fn prune(ledger: &Arc<UsageLedger>, retention: Duration, folded_seq: u64) {
    let cutoff = crate::clock::unix_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let ledger = ledger.clone();
    match tokio::task::spawn_blocking(move || ledger.prune(cutoff, folded_seq)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot delete old usage records"),
        Err(error) => tracing::warn!(%error, "deleting old usage records stopped"),
    }
}
