//! The ledger's front: requests queue their records and wait, before their
//! response is handed back, until their record is in the journal.
//!
//! Group commit on the request path: the first waiter that finds no write
//! under way becomes the writer. It yields once, so that every request
//! ready to run queues its record first, then writes all that is queued as
//! one RocksDB batch and wakes the others. Fifty requests in flight cost one
//! write between them, and no thread hand-off: handing each record to a
//! writer thread and waiting for its answer cost two extra context switches
//! per request and a quarter of a one-core gateway's throughput
//! (docs/benchmarks.md, "Usage ledger").
//!
//! The request path never waits for RocksDB itself: its writes are made with
//! `no_slowdown`, and a write RocksDB would stall (compaction behind) is left
//! to the ledger's thread, which may wait. The thread also writes records
//! nobody waits for (a stream whose client went away) within [`TICK`], and
//! serves [`UsageLedger::flush`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tollgate_proto::admin::v1::UsageRow;
use tollgate_proto::config::v1::{UsageOutcome, UsageRecord};
use tollgate_storage::Engine;

use super::LedgerError;
use super::journal::{Journal, Position, RecordFilter};

/// How long a response waits for its record at most. A write takes
/// microseconds; only a stalled disk gets near this, and then the response
/// goes out rather than hang (its record is written when the disk recovers,
/// or lost if the process dies first).
const JOURNAL_WAIT: Duration = Duration::from_secs(5);

/// How often the ledger's thread writes what is queued with nobody waiting.
pub const TICK: Duration = Duration::from_millis(50);

/// A queued record's place: the number of records queued up to and
/// including it. 0 is a record that was not queued (the ledger is closed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticket(u64);

#[derive(Default)]
struct Queue {
    records: Vec<UsageRecord>,
    /// Records queued since the ledger opened: the last ticket handed out.
    queued: u64,
    closed: bool,
}

/// What the ledger's thread is asked to do.
#[derive(Default)]
struct Wake {
    requested: bool,
    closing: bool,
}

struct Shared {
    /// None once closed: the database is released.
    journal: ArcSwapOption<Journal>,
    queue: Mutex<Queue>,
    /// Records written (or lost to a failed write), in ticket order: writes
    /// take the queue whole and one writer at a time.
    done: AtomicU64,
    /// Records whose requests the watchdog let go without them (the disk
    /// stalled past [`JOURNAL_WAIT`]).
    released: AtomicU64,
    written: Notify,
    /// Tells `flush` (a blocking caller) that `done` moved.
    done_changed: (Mutex<()>, Condvar),
    /// Held by whoever writes: a request's task, or the ledger's thread.
    writing: AtomicBool,
    /// A write would have stalled: requests leave writing to the thread
    /// until it has written.
    stalled: AtomicBool,
    wake: (Mutex<Wake>, Condvar),
    /// The flush wants waking once the journal's last seq reaches this.
    wake_flush_at: AtomicU64,
    flush_wanted: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn wake_thread(&self, closing: bool) {
        let mut wake = lock(&self.wake.0);
        wake.requested = true;
        wake.closing |= closing;
        self.wake.1.notify_one();
    }

    /// Writes everything queued, as the holder of `writing`. A write that
    /// would stall (only when `!may_stall`) puts the records back in front
    /// and leaves them to the thread.
    fn write_queued(&self, may_stall: bool) {
        let mut records = std::mem::take(&mut lock(&self.queue).records);
        let Some(journal) = self.journal.load_full().filter(|_| !records.is_empty()) else { return };
        let count = records.len() as u64;
        match journal.write(&mut records, may_stall) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let mut queue = lock(&self.queue);
                records.append(&mut queue.records);
                queue.records = records;
                self.stalled.store(true, Ordering::Release);
                drop(queue);
                self.wake_thread(false);
                return;
            }
            Err(error) => tracing::error!(%error, count, "cannot journal usage records; they are lost"),
        }
        self.done.fetch_add(count, Ordering::Release);
        self.written.notify_waiters();
        let _guard = lock(&self.done_changed.0);
        self.done_changed.1.notify_all();
        if journal.last_seq() >= self.wake_flush_at.load(Ordering::Relaxed) {
            self.flush_wanted.notify_one();
        }
    }

    fn is_done(&self, ticket: Ticket) -> bool {
        self.done.load(Ordering::Acquire) >= ticket.0 || self.released.load(Ordering::Acquire) >= ticket.0
    }

    fn release(&self) {
        self.writing.store(false, Ordering::Release);
        // Records queued during the write wait for a writer: wake them.
        self.written.notify_waiters();
    }

    /// No timer per request: the watchdog bounds the wait.
    async fn wait(&self, ticket: Ticket) {
        loop {
            if self.is_done(ticket) {
                return;
            }
            let notified = self.written.notified();
            tokio::pin!(notified);
            // Registered before the checks, so a write or a release in
            // between still wakes this request.
            notified.as_mut().enable();
            if self.is_done(ticket) {
                return;
            }
            if !self.stalled.load(Ordering::Acquire)
                && self.writing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                let _held = Held(self);
                // Every request ready to run queues its record before the write.
                tokio::task::yield_now().await;
                self.write_queued(false);
                continue;
            }
            notified.await;
        }
    }
}

/// Lets requests go when no write has completed for [`JOURNAL_WAIT`] while
/// records wait (a stalled disk): their responses go out, their records are
/// written when the disk recovers. A thread of its own, as the ledger's
/// thread may be the one stuck in the write.
fn run_watchdog(shared: std::sync::Weak<Shared>) {
    let mut progress = (0, std::time::Instant::now());
    loop {
        std::thread::sleep(JOURNAL_WAIT / 10);
        let Some(shared) = shared.upgrade().filter(|s| s.journal.load().is_some()) else { return };
        let done = shared.done.load(Ordering::Acquire);
        let queued = lock(&shared.queue).queued;
        if done >= queued || done != progress.0 {
            progress = (done, std::time::Instant::now());
        } else if progress.1.elapsed() >= JOURNAL_WAIT && shared.released.load(Ordering::Acquire) < queued {
            tracing::warn!(
                waiting = queued - done,
                "usage records not journaled for {} s (is the disk stalled?); answering without them",
                JOURNAL_WAIT.as_secs()
            );
            shared.released.store(queued, Ordering::Release);
            shared.written.notify_waiters();
        }
    }
}

/// The right to write, released however the holder's task ends (a client
/// that goes away drops it mid-yield).
struct Held<'a>(&'a Shared);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The ledger's thread: writes what nobody waits for, what would have
/// stalled the request path, and what `flush` asks for.
fn run_thread(shared: Arc<Shared>) {
    loop {
        let closing = {
            let mut wake = lock(&shared.wake.0);
            if !wake.requested {
                wake = shared.wake.1.wait_timeout(wake, TICK).unwrap_or_else(|p| p.into_inner()).0;
            }
            wake.requested = false;
            wake.closing
        };
        if !lock(&shared.queue).records.is_empty() {
            // A request's task holds it for one write at most.
            while shared.writing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
                std::thread::sleep(Duration::from_micros(50));
            }
            shared.write_queued(true);
            shared.stalled.store(false, Ordering::Release);
            shared.release();
        }
        if closing && lock(&shared.queue).records.is_empty() {
            return;
        }
    }
}

pub struct UsageLedger {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    node_id: u64,
}

impl UsageLedger {
    pub fn open(engine: Engine, node_id: u64) -> Result<UsageLedger, LedgerError> {
        let shared = Arc::new(Shared {
            journal: ArcSwapOption::from_pointee(Journal::open(engine, node_id)?),
            queue: Mutex::default(),
            done: AtomicU64::new(0),
            released: AtomicU64::new(0),
            written: Notify::new(),
            done_changed: (Mutex::new(()), Condvar::new()),
            writing: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            wake: (Mutex::default(), Condvar::new()),
            wake_flush_at: AtomicU64::new(u64::MAX),
            flush_wanted: Notify::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("usage-ledger".into())
                .spawn(move || run_thread(shared))
                .map_err(|e| LedgerError::Closed(format!("cannot start the ledger's thread: {e}")))?
        };
        let watched = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("usage-watchdog".into())
            .spawn(move || run_watchdog(watched))
            .map_err(|e| LedgerError::Closed(format!("cannot start the ledger's watchdog: {e}")))?;
        Ok(UsageLedger { shared, thread: Mutex::new(Some(thread)), node_id })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    fn journal(&self) -> Result<Arc<Journal>, LedgerError> {
        self.shared.journal.load_full().ok_or_else(|| LedgerError::Closed("the node is shutting down".into()))
    }

    /// Queues a record; never touches the disk. Await
    /// [`UsageLedger::journaled`] with the ticket before answering.
    pub fn record(&self, record: UsageRecord) -> Ticket {
        let mut queue = lock(&self.shared.queue);
        if queue.closed {
            tracing::warn!("usage ledger closed; a record arrived too late and is lost");
            return Ticket(0);
        }
        queue.records.push(record);
        queue.queued += 1;
        Ticket(queue.queued)
    }

    /// Resolves once the ticket's record (and every one queued before it)
    /// is in the journal, or after a few seconds when the disk stalls.
    pub async fn journaled(&self, ticket: Ticket) {
        self.shared.wait(ticket).await;
    }

    /// [`UsageLedger::journaled`] as a future that owns what it needs, for a
    /// response body that outlives the request's call.
    pub fn journaled_owned(&self, ticket: Ticket) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move { shared.wait(ticket).await }
    }

    /// Blocks until every record queued before this call is on disk (or
    /// lost to a failed write).
    pub fn flush(&self) {
        let shared = &self.shared;
        let target = lock(&shared.queue).queued;
        shared.wake_thread(false);
        let mut guard = lock(&shared.done_changed.0);
        while shared.done.load(Ordering::Acquire) < target {
            guard = shared.done_changed.1.wait_timeout(guard, TICK).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Writes what is queued, stops the thread and releases the database.
    pub fn close(&self) {
        let shared = &self.shared;
        lock(&shared.queue).closed = true;
        shared.wake_thread(true);
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
        // Nobody may wait for a writer that is gone.
        shared.done.store(u64::MAX, Ordering::Release);
        shared.written.notify_waiters();
        shared.journal.store(None);
    }

    /// Stamps the record with this node's id and the next sequence number
    /// and journals it at once, bypassing the queue. Returns the sequence number.
    pub fn append(&self, record: UsageRecord) -> Result<u64, LedgerError> {
        let written = self.journal()?.write(&mut [record], true)?;
        Ok(written.expect("a write that may stall is never refused"))
    }

    /// The sequence number of the last record journaled (0: none yet).
    pub fn last_seq(&self) -> Result<u64, LedgerError> {
        Ok(self.journal()?.last_seq())
    }

    /// Completes once the journal's last sequence number reaches `seq`
    /// (checked after each write), or at once if it already has.
    pub(super) async fn reached(&self, seq: u64) {
        let notified = self.shared.flush_wanted.notified();
        self.shared.wake_flush_at.store(seq, Ordering::Relaxed);
        if self.journal().map_or(true, |j| j.last_seq() >= seq) {
            return;
        }
        notified.await;
    }

    pub(super) fn read_after(&self, after_seq: u64, max: usize) -> Result<Vec<(Position, bytes::Bytes)>, LedgerError> {
        self.journal()?.read_after(after_seq, max)
    }

    pub(super) fn folded(&self) -> Option<Position> {
        self.journal().ok()?.folded()
    }

    pub(super) fn set_folded(&self, position: Position) -> Result<(), LedgerError> {
        self.journal()?.set_folded(position)
    }

    pub(super) fn skip_to(&self, next_seq: u64) -> Result<bool, LedgerError> {
        self.journal()?.skip_to(next_seq)
    }

    /// Deletes records journaled before `cutoff_ms` that the cluster folded.
    pub fn prune(&self, cutoff_ms: i64) -> Result<(), LedgerError> {
        self.journal()?.prune(cutoff_ms)
    }

    /// Records with `from_ms <= at_ms < to_ms`, oldest first.
    pub fn records(&self, from_ms: i64, to_ms: i64) -> Result<Vec<UsageRecord>, LedgerError> {
        let filter = RecordFilter { from_ms, to_ms, ..Default::default() };
        Ok(self.list(&filter, usize::MAX)?.0)
    }

    /// Records matching `filter`, oldest first, at most `limit`, and whether
    /// more matched. Records still queued are written first.
    pub fn list(&self, filter: &RecordFilter, limit: usize) -> Result<(Vec<UsageRecord>, bool), LedgerError> {
        self.flush();
        self.journal()?.list(filter, limit)
    }

    /// Sums records in `[from_ms, to_ms)` by the named dimensions.
    pub fn report(&self, from_ms: i64, to_ms: i64, group_by: &[String]) -> Result<Vec<UsageRow>, LedgerError> {
        if let Some(unknown) = group_by.iter().find(|g| !REPORT_GROUPS.contains(&g.as_str())) {
            return Err(LedgerError::UnknownGroup(unknown.clone()));
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
