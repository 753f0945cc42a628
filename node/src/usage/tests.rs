//! The ledger and the flush, on a journal in a temporary directory; the
//! flush folds into a `GatewayState` through the state machine's own
//! `apply`, with answers lost on purpose.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tollgate_journal::{Frame, JournalError, Options};
use tollgate_proto::config::v1::{UsageOutcome, UsageRecord};
use tollgate_proto::raft::v1::command::Op;
use tollgate_proto::raft::v1::{Command, UsageBatch};
use tollgate_raft::{GatewayState, ProposeError, usage_counter_id};
use tollgate_storage::{Cf, Durability, Engine};

use super::flush::{FlushError, Flusher, MAX_DELTAS, build_batch};
use super::ledger::utc_day;
use super::*;

fn options() -> Options {
    Options { segment_bytes: 1 << 20, ..Options::default() }
}

/// A ledger in `dir`, moving in what `dir/db` (RocksDB) holds of an older layout.
fn open_with(dir: &std::path::Path, node_id: u64, options: Options) -> UsageLedger {
    let engine = Engine::open(dir.join("db")).unwrap();
    UsageLedger::open(&engine, &dir.join("usage"), node_id, options).unwrap()
}

fn open(dir: &std::path::Path, node_id: u64) -> UsageLedger {
    open_with(dir, node_id, options())
}

const DAY1: i64 = 1_764_201_600_000; // 2025-11-27T00:00:00Z
const HOUR: i64 = 3_600_000;

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
        kind: "ai".into(),
        ..Default::default()
    }
}

fn rest(at_ms: i64, route: &str, status: u32) -> UsageRecord {
    let outcome = if status >= 500 { UsageOutcome::Error } else { UsageOutcome::Ok };
    UsageRecord {
        at_ms,
        route: route.into(),
        service: "orders".into(),
        http_status: status,
        outcome: outcome as i32,
        kind: "rest".into(),
        ..Default::default()
    }
}

#[test]
fn records_survive_reopen_and_group_by_key_model_and_day() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ledger = open(dir.path(), 7);
        assert_eq!(ledger.append(&record(DAY1 + 10, "k1", "gpt-4o", 10, 5, 100)).unwrap(), 1);
        assert_eq!(ledger.append(&record(DAY1 + 20, "k1", "gpt-4o", 1, 1, 1)).unwrap(), 2);
    }
    let ledger = open(dir.path(), 7);
    assert_eq!(ledger.append(&record(DAY1 + 86_400_000, "k2", "gpt-4o-mini", 3, 4, 7)).unwrap(), 3, "seq continues");
    ledger.record(&record(DAY1 + 30, "k3", "recorded", 1, 1, 1));
    let all = ledger.records(0, i64::MAX).unwrap();
    assert_eq!(all.len(), 4, "a record is readable once `record` returns");
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
    assert_eq!(ledger.records(DAY1 + 20, i64::MAX).unwrap().len(), 3);
    ledger.close();
    assert!(matches!(ledger.records(0, i64::MAX), Err(LedgerError::Journal(JournalError::Closed))));
    assert!(matches!(ledger.report(0, 1, &["colour".into()]), Err(LedgerError::UnknownGroup(_))));
}

#[test]
fn a_time_window_is_half_open_and_holds_requests_that_ended_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path(), 1);
    let now = crate::clock::unix_ms();
    // Journaled now, when they ended; listed by when they started.
    for started in [now - 60_000, now - 30_000, now - 10_000] {
        ledger.append(&rest(started, "r", 200)).unwrap();
    }
    let window = ledger.records(now - 60_000, now - 10_000).unwrap();
    assert_eq!(window.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn a_record_too_large_for_a_frame_is_kept_with_its_long_fields_cut() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path(), 1);
    let huge = "m".repeat(40_000);
    let r = UsageRecord {
        requested_model: huge.clone(),
        error: format!("every target of {huge} failed"),
        ..rest(DAY1, "r", 400)
    };
    ledger.record(&r);
    assert_eq!(ledger.append(&r).unwrap(), 2, "never refused for size");
    let kept = ledger.records(0, i64::MAX).unwrap();
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|k| k.requested_model.len() == 1024 && k.error.len() == 1024 && k.route == "r"));
}

#[test]
fn utc_days_match_the_calendar() {
    assert_eq!(utc_day(0), "1970-01-01");
    assert_eq!(utc_day(951_782_400_000), "2000-02-29");
    assert_eq!(utc_day(1_798_675_199_999), "2026-12-30");
    assert_eq!(utc_day(1_798_761_599_999), "2026-12-31");
}

#[test]
fn a_request_record_reads_back_as_a_usage_record() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path(), 4);
    let usage = RequestUsage {
        at_ms: DAY1 + 5,
        request_id: "r-1",
        route: "orders",
        service: "orders-svc",
        consumer_id: "c1",
        api_key_id: "k1",
        outcome: UsageOutcome::Ok as i32,
        http_status: 201,
        duration_ms: 3,
        attempts: 1,
        kind: "rest",
    };
    ledger.record_request(&usage, DAY1 + 7);
    let read = ledger.records(0, i64::MAX).unwrap();
    assert_eq!(read.len(), 1);
    let r = &read[0];
    assert_eq!((r.node_id, r.seq, r.at_ms, r.http_status), (4, 1, DAY1 + 5, 201));
    assert_eq!(
        (r.request_id.as_str(), r.route.as_str(), r.service.as_str(), r.consumer_id.as_str(), r.api_key_id.as_str()),
        ("r-1", "orders", "orders-svc", "c1", "k1")
    );
}

#[test]
fn records_of_the_previous_layout_move_in_sequence_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("db")).unwrap();
    // Keyed by the request's start: seq 2 started before seq 1 and sorts first.
    for (seq, at_ms) in [(1u64, DAY1 + 50), (2, DAY1 + 10), (3, DAY1 + 60)] {
        let mut key = b"usage/r/".to_vec();
        key.extend_from_slice(&(at_ms as u64).to_be_bytes());
        key.extend_from_slice(&seq.to_be_bytes());
        let r = UsageRecord { node_id: 3, seq, ..rest(at_ms, "old", 200) };
        engine.put(Cf::Local, &key, &prost::Message::encode_to_vec(&r), Durability::Process).unwrap();
    }
    engine.put(Cf::Local, b"usage/seq", &4u64.to_be_bytes(), Durability::Process).unwrap();
    let ledger = UsageLedger::open(&engine, &dir.path().join("usage"), 3, options()).unwrap();
    let read = ledger.read_after(0, 10).unwrap();
    assert_eq!(read.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(engine.scan_prefix(Cf::Local, b"usage/r/").unwrap().is_empty(), "moved, not copied");
    assert_eq!(ledger.append(&rest(DAY1, "new", 200)).unwrap(), 4, "numbering goes on");
    let listed = ledger.records(0, i64::MAX).unwrap();
    assert_eq!(listed.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 2, 1, 3], "listed by start time");
}

#[test]
fn a_batch_sums_records_per_hour_and_dimension_and_stops_at_the_delta_limit() {
    let at = |seq, r: UsageRecord| Frame {
        seq,
        written_ms: DAY1,
        payload: bytes::Bytes::from(prost::Message::encode_to_vec(&r)),
    };
    let records = vec![
        at(4, record(DAY1 + 1, "k1", "gpt-4o", 10, 2, 7)),
        at(5, record(DAY1 + 2, "k1", "gpt-4o", 1, 1, 1)),
        at(6, record(DAY1 + HOUR, "k1", "gpt-4o", 1, 1, 1)),
        at(7, rest(DAY1 + 3, "orders", 503)),
        at(
            9,
            UsageRecord { requested_model: "x".repeat(300), model: "m".repeat(300), ..record(DAY1, "k9", "", 0, 0, 0) },
        ),
        at(10, UsageRecord { requested_model: "anything-a-client-names".into(), ..rest(DAY1, "r", 404) }),
    ];
    let pending = build_batch(2, 3, &records).unwrap().unwrap();
    let b = &pending.batch;
    assert_eq!((b.node_id, b.first_seq, b.last_seq, pending.records), (2, 4, 10, 6), "a gap (8) is covered");
    assert_eq!(b.deltas.len(), 5);
    let unserved = b.deltas.iter().find(|d| d.route == "r").unwrap();
    assert_eq!(unserved.model, "", "a model no provider served is the client's word: no counter");
    let gpt = b.deltas.iter().find(|d| d.hour_start_ms == DAY1 && d.model == "openai/gpt-4o").unwrap();
    assert_eq!((gpt.requests, gpt.input_tokens, gpt.output_tokens, gpt.cost_picodollars), (2, 11, 3, 8));
    let failed = b.deltas.iter().find(|d| d.route == "orders").unwrap();
    assert_eq!((failed.requests, failed.errors, failed.service.as_str()), (1, 1, "orders"));
    assert!(b.deltas.iter().all(|d| d.model.len() <= 256), "a long model name is cut to fit");
    assert!(build_batch(2, 3, &[]).unwrap().is_none());

    let many: Vec<_> =
        (1..=MAX_DELTAS as u64 + 10).map(|i| at(i, record(DAY1, &format!("k{i}"), "m", 1, 1, 1))).collect();
    let pending = build_batch(2, 0, &many).unwrap().unwrap();
    assert_eq!(pending.batch.deltas.len(), MAX_DELTAS);
    assert_eq!((pending.batch.last_seq, pending.records), (MAX_DELTAS as u64, MAX_DELTAS), "the rest waits");
}

/// The state machine in memory, answering as a Raft node would, with
/// faults on request.
struct FakeCluster {
    state: Mutex<(GatewayState, u64)>,
    /// Apply the next batch but lose the answer (a leader change after commit).
    lose_next_answer: AtomicBool,
    /// Refuse the next batch before it reaches the log (no leader).
    refuse_next: AtomicBool,
    /// What `known_watermark` says, when set: a node whose state lags.
    stale_watermark: Mutex<Option<u64>>,
    proposals: AtomicUsize,
}

impl FakeCluster {
    fn new() -> FakeCluster {
        FakeCluster {
            state: Mutex::new((GatewayState::default(), 0)),
            lose_next_answer: AtomicBool::new(false),
            refuse_next: AtomicBool::new(false),
            stale_watermark: Mutex::new(None),
            proposals: AtomicUsize::new(0),
        }
    }

    fn watermark(&self, node_id: u64) -> u64 {
        let state = self.state.lock().unwrap();
        state.0.usage_watermark(&node_id.to_string()).map_or(0, |w| w.last_seq)
    }

    fn requests(&self) -> u64 {
        let state = self.state.lock().unwrap();
        state.0.usage_counters().filter(|c| c.period == "day" && c.dimension == "all").map(|c| c.requests).sum()
    }
}

impl flush::Fold for &FakeCluster {
    fn known_watermark(&self, node_id: u64) -> u64 {
        self.stale_watermark.lock().unwrap().unwrap_or_else(|| self.watermark(node_id))
    }

    async fn fold(&self, batch: UsageBatch) -> Result<u64, FlushError> {
        self.proposals.fetch_add(1, Ordering::Relaxed);
        let unavailable = || tollgate_raft::RaftNodeError::Unavailable("no leader".into());
        if self.refuse_next.swap(false, Ordering::Relaxed) {
            return Err(ProposeError::Node(unavailable()).into());
        }
        let node_id = batch.node_id;
        let command =
            Command { proposed_at_ms: DAY1, actor: "test".into(), op: Some(Op::Usage(batch)), ..Default::default() };
        {
            let mut state = self.state.lock().unwrap();
            let index = state.1 + 1;
            let next = state.0.with_command(&command, index).map_err(ProposeError::from)?;
            *state = (next, index);
        }
        if self.lose_next_answer.swap(false, Ordering::Relaxed) {
            return Err(ProposeError::Node(unavailable()).into());
        }
        Ok(self.watermark(node_id))
    }
}

#[tokio::test]
async fn every_record_counts_once_through_lost_answers_lagging_state_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = FakeCluster::new();
    let ledger = Arc::new(open(dir.path(), 5));
    for i in 0..10 {
        ledger.append(&rest(DAY1 + i, "r", 200)).unwrap();
    }
    let mut flusher = Flusher::new(ledger.clone(), &cluster).with_max_records(4);
    // The first batch (1..=4) is folded but its answer lost.
    cluster.lose_next_answer.store(true, Ordering::Relaxed);
    assert!(flusher.flush().await.is_err());
    drop(flusher);
    assert_eq!((cluster.watermark(5), cluster.requests()), (4, 4));
    // This node's state lags: the flush sends 1..=4 again, learns the
    // watermark from the answer, and resumes after it.
    *cluster.stale_watermark.lock().unwrap() = Some(0);
    let mut flusher = Flusher::new(ledger.clone(), &cluster).with_max_records(3);
    assert_eq!(flusher.flush().await.unwrap(), 6, "1..=3 was not folded again; 5..=10 were");
    assert_eq!((cluster.watermark(5), cluster.requests()), (10, 10));

    // No leader: nothing changes, and the records wait.
    for i in 0..3 {
        ledger.append(&rest(DAY1 + i, "r", 500)).unwrap();
    }
    cluster.refuse_next.store(true, Ordering::Relaxed);
    assert!(matches!(flusher.flush().await, Err(FlushError::Propose(_))));
    assert_eq!(cluster.requests(), 10);

    // A restart with this node's state still lagging: one proposal the
    // state machine turns down, answering with the watermark to resume after.
    drop(flusher);
    ledger.close();
    drop(ledger);
    let ledger = Arc::new(open(dir.path(), 5));
    let before = cluster.proposals.load(Ordering::Relaxed);
    let mut flusher = Flusher::new(ledger.clone(), &cluster);
    assert_eq!(flusher.flush().await.unwrap(), 3);
    assert_eq!(cluster.proposals.load(Ordering::Relaxed), before + 2);
    assert_eq!((cluster.watermark(5), cluster.requests()), (13, 13));
    let errors = {
        let state = cluster.state.lock().unwrap();
        state.0.usage_counter(&usage_counter_id("day", DAY1, "route", "r")).unwrap().errors
    };
    assert_eq!(errors, 3, "5xx answers count as errors");
    assert_eq!(flusher.flush().await.unwrap(), 0, "drained");
}

#[tokio::test]
async fn a_reset_journal_numbers_its_records_after_the_watermark() {
    let cluster = FakeCluster::new();
    let first = tempfile::tempdir().unwrap();
    let ledger = Arc::new(open(first.path(), 9));
    for i in 0..5 {
        ledger.append(&rest(DAY1 + i, "r", 200)).unwrap();
    }
    Flusher::new(ledger.clone(), &cluster).flush().await.unwrap();
    // The node comes back with an empty data directory and the same id.
    let second = tempfile::tempdir().unwrap();
    let ledger = Arc::new(open(second.path(), 9));
    ledger.append(&rest(DAY1, "r", 200)).unwrap();
    let mut flusher = Flusher::new(ledger.clone(), &cluster);
    *cluster.stale_watermark.lock().unwrap() = Some(0);
    flusher.flush().await.unwrap();
    assert_eq!(ledger.append(&rest(DAY1, "r", 200)).unwrap(), 6, "numbered after the watermark");
    flusher.flush().await.unwrap();
    assert_eq!(
        (cluster.watermark(9), cluster.requests()),
        (6, 6),
        "the record journaled before the reset was seen is lost"
    );
}

#[tokio::test]
async fn retention_deletes_records_only_once_old_and_folded() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = FakeCluster::new();
    // A segment per record, so retention can delete any one of them.
    let ledger = Arc::new(open_with(dir.path(), 1, Options { rotate_after_ms: 0, ..options() }));
    let before = crate::clock::unix_ms() - 1;
    let later = before + 86_400_000;
    for _ in 0..2 {
        ledger.append(&rest(DAY1, "folded", 200)).unwrap();
    }
    assert_eq!(ledger.prune(later, 0).unwrap(), 0, "not folded yet: kept");
    let mut flusher = Flusher::new(ledger.clone(), &cluster);
    flusher.flush().await.unwrap();
    ledger.append(&rest(DAY1, "waiting", 200)).unwrap();
    assert_eq!(ledger.prune(before, flusher.after_seq()).unwrap(), 0, "written after the cutoff: kept");
    assert_eq!(ledger.records(0, i64::MAX).unwrap().len(), 3);
    assert_eq!(ledger.prune(later, flusher.after_seq()).unwrap(), 2);
    let left = ledger.records(0, i64::MAX).unwrap();
    assert_eq!(left.iter().map(|r| r.route.as_str()).collect::<Vec<_>>(), ["waiting"]);
    assert_eq!(cluster.requests(), 2, "counters are kept");
}

#[test]
fn listing_filters_by_key_consumer_route_model_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path(), 1);
    ledger.append(&UsageRecord { consumer_id: "c1".into(), ..rest(DAY1 + 1, "orders", 429) }).unwrap();
    ledger.append(&rest(DAY1 + 2, "orders", 200)).unwrap();
    ledger.append(&record(DAY1 + 3, "k1", "gpt-4o", 1, 1, 1)).unwrap();
    let list = |f: RecordFilter| {
        ledger.list(&RecordFilter { to_ms: i64::MAX, ..f }, 10).unwrap().0.iter().map(|r| r.seq).collect::<Vec<_>>()
    };
    assert_eq!(list(RecordFilter { status: 429, ..Default::default() }), [1]);
    assert_eq!(list(RecordFilter { consumer: "c1".into(), ..Default::default() }), [1]);
    assert_eq!(list(RecordFilter { route: "orders".into(), ..Default::default() }), [1, 2]);
    assert_eq!(list(RecordFilter { key: "k1".into(), ..Default::default() }), [3]);
    assert_eq!(list(RecordFilter { model: "openai/gpt-4o".into(), ..Default::default() }), [3]);
    assert_eq!(list(RecordFilter { model: "gpt-4o".into(), ..Default::default() }), [3]);
    assert_eq!(list(RecordFilter { from_ms: DAY1 + 2, ..Default::default() }), [2, 3]);
    let (first, more) = ledger.list(&RecordFilter { to_ms: i64::MAX, ..Default::default() }, 2).unwrap();
    assert_eq!((first.len(), more), (2, true));
}
