use std::path::Path;

use proptest::prelude::*;

use super::*;

fn small() -> Options {
    Options { segment_bytes: MIN_SEGMENT_BYTES, rotate_after_ms: 3_600_000 }
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize + i) as u8).collect()
}

fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(|f| f.seq).collect()
}

fn segment_count(dir: &Path) -> usize {
    segment::list(dir).unwrap().len()
}

#[test]
fn records_are_numbered_from_one_and_numbering_goes_on_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small()).unwrap();
    assert_eq!(journal.last_seq(), 0);
    for seq in 1..=3 {
        assert_eq!(journal.append(1_000, &payload(seq, 40)).unwrap(), seq);
    }
    drop(journal);
    let journal = Journal::open(dir.path(), small()).unwrap();
    assert_eq!(journal.last_seq(), 3);
    assert_eq!(journal.append(1_000, b"four").unwrap(), 4);
    let frames = journal.read_after(0, 100).unwrap();
    assert_eq!(seqs(&frames), [1, 2, 3, 4]);
    assert_eq!(&frames[1].payload[..], &payload(2, 40)[..]);
    assert_eq!(&frames[3].payload[..], b"four");
}

#[test]
fn the_clock_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small()).unwrap();
    journal.append(5_000, b"a").unwrap();
    journal.append(4_000, b"b").unwrap();
    let written: Vec<i64> = journal.read_after(0, 10).unwrap().iter().map(|f| f.written_ms).collect();
    assert_eq!(written, [5_000, 5_000]);
    // A clock that jumped far ahead and came back: the journal follows it
    // back rather than stay in the future (rotation and retention go by it).
    journal.append(5_000 + 3_600_000, b"c").unwrap();
    journal.append(6_000, b"d").unwrap();
    let last = journal.read_after(3, 1).unwrap();
    assert_eq!(last[0].written_ms, 6_000);
}

#[test]
fn a_record_torn_by_a_kill_is_dropped_and_its_number_reused() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small()).unwrap();
    for seq in 1..=3 {
        journal.append(1_000, &payload(seq, 100)).unwrap();
    }
    drop(journal);
    // What a kill in the middle of copying record 3 leaves: its first bytes.
    let path = segment::path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let third = 2 * frame::frame_len(100);
    bytes[third + 60..third + frame::frame_len(100)].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let journal = Journal::open(dir.path(), small()).unwrap();
    assert_eq!(journal.last_seq(), 2);
    assert_eq!(journal.append(1_000, b"short").unwrap(), 3);
    let frames = journal.read_after(0, 10).unwrap();
    assert_eq!(seqs(&frames), [1, 2, 3]);
    assert_eq!(&frames[2].payload[..], b"short");
    drop(journal);
    // The torn record's tail was zeroed: nothing after the new record 3.
    let journal = Journal::open(dir.path(), small()).unwrap();
    assert_eq!(journal.last_seq(), 3);
}

#[test]
fn segments_rotate_when_full_and_when_old_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: MIN_SEGMENT_BYTES, rotate_after_ms: 60_000 };
    let journal = Journal::open(dir.path(), options.clone()).unwrap();
    let big = payload(0, 60_000);
    let mut now = 0;
    for _ in 0..40 {
        journal.append(now, &big).unwrap();
    }
    assert_eq!(segment_count(dir.path()), 3, "1 MiB segments hold 17 records of 60 kB");
    now += 60_000;
    journal.append(now, b"an hour later").unwrap();
    assert_eq!(segment_count(dir.path()), 4, "a segment as old as rotate_after_ms is closed");
    let finished = segment::list(dir.path()).unwrap();
    let trimmed = std::fs::metadata(&finished[0].path).unwrap().len();
    assert_eq!(trimmed, 17 * frame::frame_len(60_000) as u64, "a finished segment is trimmed to its records");

    assert_eq!(seqs(&journal.read_after(15, 5).unwrap()), [16, 17, 18, 19, 20]);
    // The cursor: the next read starts where that one stopped.
    assert_eq!(seqs(&journal.read_after(20, 100).unwrap()), (21..=41).collect::<Vec<_>>());
    assert_eq!(seqs(&journal.read_after(3, 2).unwrap()), [4, 5], "a read elsewhere ignores the cursor");
    drop(journal);
    let journal = Journal::open(dir.path(), options).unwrap();
    assert_eq!(journal.last_seq(), 41);
    assert_eq!(journal.append(now, b"x").unwrap(), 42);
}

#[test]
fn skip_to_leaves_a_gap_that_reads_step_over() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small()).unwrap();
    journal.append(1, b"a").unwrap();
    assert!(journal.skip_to(100).unwrap());
    assert!(!journal.skip_to(50).unwrap(), "numbering never goes back");
    assert_eq!(journal.last_seq(), 99);
    assert_eq!(journal.append(2, b"b").unwrap(), 100);
    assert_eq!(seqs(&journal.read_after(0, 10).unwrap()), [1, 100]);
    assert_eq!(seqs(&journal.read_after(1, 10).unwrap()), [100]);
    drop(journal);
    assert_eq!(Journal::open(dir.path(), small()).unwrap().last_seq(), 100);
}

#[test]
fn scan_starts_at_the_segment_that_may_hold_the_time_and_prune_deletes_only_old_done_segments() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: MIN_SEGMENT_BYTES, rotate_after_ms: 1_000 };
    let journal = Journal::open(dir.path(), options).unwrap();
    for at in [0, 500, 1_000, 1_500, 2_000, 2_500] {
        journal.append(at, format!("at {at}").as_bytes()).unwrap();
    }
    assert_eq!(segment_count(dir.path()), 3);
    let mut seen = Vec::new();
    journal
        .scan(1_500, |f| {
            seen.push(f.written_ms);
            true
        })
        .unwrap();
    assert_eq!(seen, [1_500, 2_000, 2_500]);

    assert_eq!(journal.prune(1_000, 1).unwrap(), 0, "record 2 is not done yet");
    assert_eq!(journal.prune(999, 6).unwrap(), 0, "the next segment started at 1000: segment 1 may hold 999");
    assert_eq!(journal.prune(1_001, 6).unwrap(), 1);
    assert_eq!(journal.prune(i64::MAX, 6).unwrap(), 1, "the segment being written stays");
    assert_eq!(segment_count(dir.path()), 1);
    assert_eq!(seqs(&journal.read_after(0, 10).unwrap()), [5, 6]);
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small()).unwrap();
    let refused = Journal::open(dir.path(), small()).err().expect("locked");
    assert!(matches!(refused, JournalError::Locked(_)), "{refused}");
    assert!(refused.to_string().contains("in use by another process"));
    drop(journal);
    Journal::open(dir.path(), small()).unwrap();
}

#[test]
fn records_over_the_limit_and_a_closed_journal_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small()).unwrap();
    assert!(matches!(journal.append(0, &vec![0; MAX_PAYLOAD + 1]), Err(JournalError::TooLarge(_))));
    journal.append(0, b"ok").unwrap();
    journal.close().unwrap();
    assert!(matches!(journal.append(0, b"late"), Err(JournalError::Closed)));
    assert!(matches!(
        Journal::open(dir.path(), Options { segment_bytes: 4096, ..small() }),
        Err(JournalError::SegmentTooSmall(4096))
    ));
}

/// The promise itself: a child process appends and reports each number
/// once `append` returned; it is SIGKILLed mid-stream; every number it
/// reported is in the journal.
#[test]
fn every_append_that_returned_survives_a_sigkill() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "tests::child_appends_until_killed", "--nocapture", "--test-threads=1"])
        .env("TOLLGATE_JOURNAL_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reported = 0u64;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(seq) = line.strip_prefix("appended ") {
            reported = seq.parse().unwrap();
            if reported >= 20_000 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reported >= 20_000, "the child stopped early");

    let journal = Journal::open(dir.path(), small()).unwrap();
    assert!(journal.last_seq() >= reported, "appended {reported}, journal has {}", journal.last_seq());
    let mut expected = 1;
    let mut after = 0;
    loop {
        let frames = journal.read_after(after, 10_000).unwrap();
        let Some(last) = frames.last() else { break };
        for frame in &frames {
            assert_eq!(frame.seq, expected);
            assert_eq!(&frame.payload[..], &payload(frame.seq, 100)[..]);
            expected += 1;
        }
        after = last.seq;
    }
    assert_eq!(expected - 1, journal.last_seq());
}

/// Runs only as the child of the test above.
#[test]
fn child_appends_until_killed() {
    let Some(dir) = std::env::var_os("TOLLGATE_JOURNAL_CHILD_DIR") else { return };
    let journal = Journal::open(Path::new(&dir), small()).unwrap();
    for seq in 1.. {
        assert_eq!(journal.append(seq as i64, &payload(seq, 100)).unwrap(), seq);
        println!("appended {seq}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Appends of any size, reopens and skips in any order: reads from any
    /// point return exactly the records numbered after it.
    #[test]
    fn reads_return_exactly_what_was_appended(
        steps in prop::collection::vec((0usize..3_000, 0u8..20), 1..300),
        from in 0u64..400,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let options = Options { segment_bytes: MIN_SEGMENT_BYTES, rotate_after_ms: 50 };
        let mut journal = Journal::open(dir.path(), options.clone()).unwrap();
        let mut expected: Vec<(u64, Vec<u8>)> = Vec::new();
        for (at, (len, action)) in steps.into_iter().enumerate() {
            match action {
                0 => {
                    drop(journal);
                    journal = Journal::open(dir.path(), options.clone()).unwrap();
                }
                1 => {
                    let next = journal.last_seq() + 1 + len as u64 % 5;
                    journal.skip_to(next).unwrap();
                }
                _ => {
                    let body = payload(at as u64, len);
                    let seq = journal.append(at as i64, &body).unwrap();
                    expected.push((seq, body));
                }
            }
        }
        let mut got = Vec::new();
        let mut after = from;
        loop {
            let frames = journal.read_after(after, 7).unwrap();
            let Some(last) = frames.last() else { break };
            after = last.seq;
            got.extend(frames.into_iter().map(|f| (f.seq, f.payload.to_vec())));
        }
        let want: Vec<_> = expected.into_iter().filter(|(seq, _)| *seq > from).collect();
        prop_assert_eq!(got, want);
    }
}

/// Resident kB of this process's mapping of `file` (0 when not mapped).
#[cfg(target_os = "linux")]
fn resident_kb_of(file: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut in_file = false;
    let mut total = 0;
    for line in smaps.lines() {
        if line.split_whitespace().next().is_some_and(|range| range.contains('-') && !range.ends_with(':')) {
            in_file = line.ends_with(file.to_str().unwrap());
        } else if in_file && let Some(kb) = line.strip_prefix("Rss:") {
            total += kb.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap();
        }
    }
    total
}

#[cfg(target_os = "linux")]
#[test]
fn the_mapping_of_the_active_segment_stays_small_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: 16 << 20, rotate_after_ms: 3_600_000 };
    let journal = Journal::open(dir.path(), options.clone()).unwrap();
    let file = segment::path(dir.path(), 1);
    // Opening checks the whole (zero) tail without faulting it in.
    assert!(resident_kb_of(&file) <= 64, "fresh: {} kB", resident_kb_of(&file));
    let record = payload(0, 1_000);
    for _ in 0..8_000 {
        journal.append(1_000, &record).unwrap();
    }
    // About 8 MB written; at most one release step (1 MiB) and a page stay mapped.
    assert!(resident_kb_of(&file) <= 1_100, "after 8 MB: {} kB", resident_kb_of(&file));
    let frames = journal.read_after(0, 10_000).unwrap();
    assert_eq!(frames.len(), 8_000, "released pages still read back");
    drop(journal);
    let journal = Journal::open(dir.path(), options).unwrap();
    assert_eq!(journal.last_seq(), 8_000, "and are recovered after a reopen");
    assert!(resident_kb_of(&file) <= 1_100, "reopened: {} kB", resident_kb_of(&file));
}
