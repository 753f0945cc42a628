//! An append-only journal of numbered records that survives a killed process
//! without a system call per record.
//!
//! Records go into segment files mapped into memory (`MAP_SHARED`): an append
//! copies the record into the mapping, that is into the kernel's page cache,
//! which the kernel writes to disk whether or not the process is still alive.
//! So once `append` returns, a SIGKILL (or a panic, or an OOM kill) cannot lose
//! the record, the same promise as a RocksDB write with its WAL and no fsync,
//! for the cost of a `memcpy` under a mutex instead of a write through
//! RocksDB's write path (which cost the usage ledger a sixth of the gateway's
//! throughput, docs/benchmarks.md). A machine that loses power may lose what
//! the kernel had not yet written back (by default up to 30 s); `close` and
//! `sync` write back everything.
//!
//! Records are numbered 1, 2, 3… without gaps except where the owner asks
//! for one ([`Journal::skip_to`]); each carries the journal's clock when it
//! was written, which never goes back, so segments are in time order too and
//! retention deletes whole segments. Layout: `frame` (one record's bytes) and
//! `segment` (the files).

#![deny(unsafe_code)]

mod frame;
mod segment;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use frame::{End, Parsed};
pub use frame::{Frame, MAX_PAYLOAD};
use segment::{DirLock, Mapped, Reader, SegmentFile};

/// How far ahead of the wall clock the journal's clock may stay: it never
/// goes back, except after a jump forward of more than this (a clock set
/// wrong, then corrected), which would otherwise stop rotation and
/// retention until real time caught up.
const MAX_CLOCK_LEAD_MS: i64 = 5 * 60_000;
/// After a segment could not be started for age, appends go on in the old
/// one and the next try is this much later.
const ROTATION_RETRY_MS: i64 = 10_000;

/// Reads are made this many bytes at a time; a frame never spans more.
const READ_CHUNK: u64 = 1 << 20;
const _: () = assert!(READ_CHUNK as usize >= frame::HEADER + MAX_PAYLOAD + 8);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}; check that the directory is writable and the disk has room")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {0} is in use by another process; stop it, or give this node a data directory of its own")]
    Locked(PathBuf),
    #[error("a record of {0} bytes is over the journal's limit of {MAX_PAYLOAD} bytes")]
    TooLarge(usize),
    #[error("segment_bytes {0} is too small; use at least {min} bytes", min = MIN_SEGMENT_BYTES)]
    SegmentTooSmall(u64),
    #[error("the journal is closed (the node is shutting down)")]
    Closed,
}

const MIN_SEGMENT_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug)]
pub struct Options {
    /// A segment's size on disk while it is written (reserved up front).
    pub segment_bytes: u64,
    /// A segment holds records written within this long of its first, so
    /// retention can delete old records segment by segment.
    pub rotate_after_ms: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options { segment_bytes: 32 << 20, rotate_after_ms: 3_600_000 }
    }
}

/// The segment being appended to.
struct Active {
    segment: Mapped,
    /// Bytes of `segment` its records take.
    end: usize,
    next_seq: u64,
    /// The journal's clock: the latest `written_ms`.
    clock_ms: i64,
    /// When this segment's first record was written (None: it has none).
    first_written_ms: Option<i64>,
    /// After a failed rotation for age: when to try again (the segment
    /// still has room, so appends go on meanwhile).
    retry_rotation_ms: i64,
}

/// Where the last `read_after` stopped, so the next starts there rather
/// than at the start of its segment.
#[derive(Clone, Copy)]
struct Cursor {
    segment: u64,
    offset: u64,
    next_seq: u64,
}

pub struct Journal {
    dir: PathBuf,
    options: Options,
    active: Mutex<Option<Active>>,
    last_seq: AtomicU64,
    /// Set by `close`: reads refuse too, without the appenders' lock.
    closed: std::sync::atomic::AtomicBool,
    cursor: Mutex<Option<Cursor>>,
    _lock: DirLock,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Journal {
    /// Opens the journal in `dir` (created 0700 if missing), finding where
    /// its last segment's records end: a record torn by a killed process is
    /// overwritten by the next append.
    pub fn open(dir: &Path, options: Options) -> Result<Journal, JournalError> {
        if options.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(JournalError::SegmentTooSmall(options.segment_bytes));
        }
        let io = |source| JournalError::Io { path: dir.to_path_buf(), source };
        {
            use std::os::unix::fs::DirBuilderExt;
            use std::os::unix::fs::PermissionsExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
            // An existing directory keeps its mode through `create`.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let dir_lock = match segment::lock_dir(dir) {
            Ok(held) => held,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(JournalError::Locked(dir.into())),
            Err(e) => return Err(io(e)),
        };
        let segments = segment::list(dir).map_err(io)?;
        let (first_seq, path) = match segments.last() {
            Some(last) => (last.first_seq, last.path.clone()),
            None => (1, segment::path(dir, 1)),
        };
        let mut mapped = Mapped::open(path, options.segment_bytes).map_err(io)?;
        let (end, next_seq, last_written) = recover(&mut mapped, first_seq).map_err(io)?;
        // A segment with no record yet: the clock goes on from the one before.
        let clock_ms = match (last_written, segments.len()) {
            (Some(ms), _) => ms,
            (None, n) if n >= 2 => last_written_ms(&segments[n - 2]).map_err(io)?.unwrap_or(0),
            (None, _) => 0,
        };
        let first_written_ms = if end == 0 { None } else { first_written_ms(&mapped.map) };
        let active = Active { segment: mapped, end, next_seq, clock_ms, first_written_ms, retry_rotation_ms: 0 };
        Ok(Journal {
            dir: dir.to_path_buf(),
            options,
            last_seq: AtomicU64::new(next_seq - 1),
            active: Mutex::new(Some(active)),
            closed: std::sync::atomic::AtomicBool::new(false),
            cursor: Mutex::new(None),
            _lock: dir_lock,
        })
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io { path: self.dir.clone(), source }
    }

    /// Appends `payload`, written at `now_ms` (or the journal's clock, if it
    /// is later), and returns its number. Once this returns, a killed
    /// process does not lose the record.
    pub fn append(&self, now_ms: i64, payload: &[u8]) -> Result<u64, JournalError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(JournalError::TooLarge(payload.len()));
        }
        let need = frame::frame_len(payload.len());
        let mut guard = lock(&self.active);
        let active = guard.as_mut().ok_or(JournalError::Closed)?;
        let written_ms = if active.clock_ms > now_ms.saturating_add(MAX_CLOCK_LEAD_MS) {
            now_ms
        } else {
            now_ms.max(active.clock_ms)
        };
        let full = active.end + need > active.segment.map.len();
        let old = active.first_written_ms.is_some_and(|first| {
            written_ms.saturating_sub(first) >= self.options.rotate_after_ms && written_ms >= active.retry_rotation_ms
        });
        if full || old {
            let next = active.next_seq;
            match self.rotate(active, next) {
                Ok(()) => {}
                Err(error) if !full => {
                    // Room is left: keep appending here, try again later.
                    tracing::warn!(%error, "cannot start a new journal segment; appending to the current one");
                    active.retry_rotation_ms = written_ms.saturating_add(ROTATION_RETRY_MS);
                }
                Err(error) => return Err(error),
            }
        }
        let seq = active.next_seq;
        frame::write(&mut active.segment.map[active.end..active.end + need], seq, written_ms, payload);
        active.end += need;
        active.segment.release_written(active.end);
        active.next_seq = seq + 1;
        active.clock_ms = written_ms;
        active.first_written_ms.get_or_insert(written_ms);
        self.last_seq.store(seq, Ordering::Release);
        Ok(seq)
    }

    /// Starts a new segment whose first record is numbered `first_seq`.
    /// The new file is made before the old one is let go, so a failure
    /// leaves the journal as it was.
    fn rotate(&self, active: &mut Active, first_seq: u64) -> Result<(), JournalError> {
        let path = segment::path(&self.dir, first_seq);
        let next = match Mapped::open(path.clone(), self.options.segment_bytes) {
            Ok(next) => next,
            Err(error) => {
                // A file left half made (a full disk) would be read as the
                // next segment and, after a restart, appended to with numbers
                // the current one already used.
                let _ = std::fs::remove_file(&path);
                return Err(self.io(error));
            }
        };
        let done = std::mem::replace(&mut active.segment, next);
        let used = std::mem::take(&mut active.end);
        active.next_seq = first_seq;
        active.first_written_ms = None;
        if let Err(error) = done.trim(used) {
            // Only costs the disk space the segment had reserved.
            tracing::warn!(%error, path = %self.dir.display(), "cannot trim a finished journal segment");
        }
        Ok(())
    }

    /// The number of the last record appended (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Numbers the next record `next_seq` if that is further on than it
    /// would be (the owner knows records up to `next_seq - 1` are counted
    /// elsewhere). Returns whether the numbering moved.
    pub fn skip_to(&self, next_seq: u64) -> Result<bool, JournalError> {
        let mut guard = lock(&self.active);
        let active = guard.as_mut().ok_or(JournalError::Closed)?;
        if next_seq <= active.next_seq {
            return Ok(false);
        }
        self.rotate(active, next_seq)?;
        self.last_seq.store(next_seq - 1, Ordering::Release);
        Ok(true)
    }

    /// The segments a reader may look at, and the last record it may read:
    /// the number published after the record was copied (never one being
    /// copied), so reads do not take the appenders' lock.
    fn readable(&self) -> Result<(Vec<SegmentFile>, u64), JournalError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(JournalError::Closed);
        }
        let last = self.last_seq.load(Ordering::Acquire);
        let segments = segment::list(&self.dir).map_err(|e| self.io(e))?;
        Ok((segments.into_iter().filter(|s| s.first_seq <= last.saturating_add(1)).collect(), last))
    }

    /// Up to `max` records numbered above `after_seq`, in order.
    pub fn read_after(&self, after_seq: u64, max: usize) -> Result<Vec<Frame>, JournalError> {
        let (segments, last) = self.readable()?;
        let want = after_seq.saturating_add(1);
        let cursor = lock(&self.cursor).filter(|c| c.next_seq == want);
        let start = match cursor {
            Some(c) => segments.iter().position(|s| s.first_seq == c.segment),
            None => None,
        };
        let (start, mut from) = match (start, cursor) {
            (Some(index), Some(c)) => (index, Some((c.offset, c.next_seq))),
            _ => (segments.iter().rposition(|s| s.first_seq <= want).unwrap_or(0), None),
        };
        let mut out = Vec::new();
        for segment in segments.iter().skip(start) {
            let (offset, expected) = from.take().unwrap_or((0, segment.first_seq));
            let stopped = visit(segment, offset, expected, last, |frame| {
                if frame.seq >= want {
                    out.push(frame);
                }
                out.len() < max
            })
            .map_err(|e| self.io(e))?;
            *lock(&self.cursor) = Some(Cursor { segment: segment.first_seq, offset: stopped.0, next_seq: stopped.1 });
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Visits records written at or after `from_written_ms`, in order, until
    /// `keep_going` returns false. Segments whose records all came before
    /// (the next segment started before `from_written_ms`) are not read.
    pub fn scan(&self, from_written_ms: i64, mut keep_going: impl FnMut(Frame) -> bool) -> Result<(), JournalError> {
        let (segments, last) = self.readable()?;
        let mut skip = 0;
        for (index, next) in segments.iter().enumerate().skip(1) {
            match last_written_bound(next).map_err(|e| self.io(e))? {
                Some(started) if started < from_written_ms => skip = index,
                _ => break,
            }
        }
        for segment in segments.iter().skip(skip) {
            let mut more = true;
            visit(segment, 0, segment.first_seq, last, |frame| {
                if frame.written_ms >= from_written_ms {
                    more = keep_going(frame);
                }
                more
            })
            .map_err(|e| self.io(e))?;
            if !more {
                break;
            }
        }
        Ok(())
    }

    /// Deletes segments whose records were all written before
    /// `written_before_ms` and are all numbered at most `done_seq` (the
    /// owner has them elsewhere). The segment being appended to stays.
    /// Returns how many segments went.
    pub fn prune(&self, written_before_ms: i64, done_seq: u64) -> Result<usize, JournalError> {
        let (segments, _) = self.readable()?;
        let mut deleted = 0;
        for pair in segments.windows(2) {
            let (segment, next) = (&pair[0], &pair[1]);
            let all_done = next.first_seq.saturating_sub(1) <= done_seq;
            let all_old = last_written_bound(next).map_err(|e| self.io(e))?.is_some_and(|t| t < written_before_ms);
            if !(all_done && all_old) {
                break;
            }
            std::fs::remove_file(&segment.path).map_err(|e| self.io(e))?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Writes everything appended back to disk.
    pub fn sync(&self) -> Result<(), JournalError> {
        let guard = lock(&self.active);
        let active = guard.as_ref().ok_or(JournalError::Closed)?;
        active.segment.sync().map_err(|e| self.io(e))
    }

    /// Writes everything back and stops taking records.
    pub fn close(&self) -> Result<(), JournalError> {
        self.closed.store(true, Ordering::Release);
        let Some(active) = lock(&self.active).take() else { return Ok(()) };
        active.segment.sync().map_err(|e| self.io(e))
    }
}

/// Finds the end of the records in a mapped segment: the offset after the
/// last valid one, the next number, and the last record's clock. Zeroes
/// everything past that end (what a killed process left of a record, or
/// frames a power cut wrote back out of order), so that no stale byte ever
/// follows a record appended later.
fn recover(mapped: &mut Mapped, first_seq: u64) -> std::io::Result<(usize, u64, Option<i64>)> {
    let (mut end, mut next_seq, mut last_written) = (0, first_seq, None);
    while let Ok(Parsed { written_ms, frame_len, .. }) = frame::parse(&mapped.map[end..], next_seq) {
        end += frame_len;
        next_seq += 1;
        last_written = Some(written_ms);
    }
    // A torn record (a killed process) leaves bytes after the last whole one.
    if !mapped.is_zero_from(end)? {
        mapped.zero_from(end);
    }
    mapped.release_written(end);
    Ok((end, next_seq, last_written))
}

fn first_written_ms(map: &[u8]) -> Option<i64> {
    frame::parse(map, u64::from_le_bytes(map.get(8..16)?.try_into().ok()?)).ok().map(|p| p.written_ms)
}

/// When `segment`'s first record was written: every record of the segments
/// before it was written at or before then. None if it has no record.
fn last_written_bound(segment: &SegmentFile) -> std::io::Result<Option<i64>> {
    let mut first = None;
    // The first frame only: its header, and a payload of at most MAX_PAYLOAD.
    let first_frame = (frame::HEADER + MAX_PAYLOAD + 8) as u64;
    visit_bytes(segment, 0, segment.first_seq, u64::MAX, first_frame, |frame| {
        first = Some(frame.written_ms);
        false
    })?;
    Ok(first)
}

/// The clock of a finished segment's last record.
fn last_written_ms(segment: &SegmentFile) -> std::io::Result<Option<i64>> {
    let mut last = None;
    visit(segment, 0, segment.first_seq, u64::MAX, |frame| {
        last = Some(frame.written_ms);
        true
    })?;
    Ok(last)
}

/// Reads `segment`'s records from `offset` (where record `expected` starts)
/// up to record `last`, a chunk at a time, handing each to `keep_going`
/// until it returns false or the records end. Returns where it stopped: the
/// offset and number of the next record.
fn visit(
    segment: &SegmentFile,
    offset: u64,
    expected: u64,
    last: u64,
    keep_going: impl FnMut(Frame) -> bool,
) -> std::io::Result<(u64, u64)> {
    visit_bytes(segment, offset, expected, last, READ_CHUNK, keep_going)
}

/// [`visit`], reading `chunk` bytes at a time.
fn visit_bytes(
    segment: &SegmentFile,
    mut offset: u64,
    mut expected: u64,
    last: u64,
    chunk_bytes: u64,
    mut keep_going: impl FnMut(Frame) -> bool,
) -> std::io::Result<(u64, u64)> {
    let Some(reader) = Reader::open(&segment.path)? else { return Ok((offset, expected)) };
    loop {
        let chunk = reader.read(offset, offset.saturating_add(chunk_bytes))?;
        let mut at = 0;
        let end = loop {
            match frame::parse(&chunk[at..], expected) {
                Ok(parsed) if parsed.seq > last => break End::Invalid,
                Ok(parsed) => {
                    let frame = parsed.frame(&chunk.slice(at..));
                    at += parsed.frame_len;
                    expected += 1;
                    if !keep_going(frame) {
                        return Ok((offset + at as u64, expected));
                    }
                }
                Err(end) => break end,
            }
        };
        offset += at as u64;
        // A short chunk that held no whole frame is the end of what may be read.
        if end == End::Invalid || at == 0 {
            return Ok((offset, expected));
        }
    }
}

#[cfg(test)]
mod tests;
