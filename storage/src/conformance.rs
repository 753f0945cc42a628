//! The contract of [`KvEngine`], written once and run against every engine:
//! an in-memory engine is only worth testing with if it behaves as RocksDB
//! does wherever the state machine can tell.

use crate::{Batch, Cf, Durability, Engine, KvEngine, MemEngine};

fn keys<E: KvEngine>(engine: &E, cf: Cf, prefix: &[u8]) -> Vec<Vec<u8>> {
    engine.scan_prefix(cf, prefix).unwrap().into_iter().map(|(k, _)| k).collect()
}

fn fill<E: KvEngine>(engine: &E, cf: Cf, keys: &[&str]) {
    let mut batch = Batch::default();
    for key in keys {
        batch.put(cf, key.as_bytes(), key.as_bytes());
    }
    engine.write(batch, Durability::Process).unwrap();
}

fn owned(keys: &[&str]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.as_bytes().to_vec()).collect()
}

fn a_batch_writes_every_family_at_once<E: KvEngine>(engine: &E) {
    let mut batch = Batch::default();
    batch.put(Cf::State, b"svc/1", b"a");
    batch.put(Cf::RaftMeta, b"applied", b"7");
    batch.delete(Cf::Local, b"absent");
    assert_eq!(batch.len(), 3);
    engine.write(batch, Durability::Machine).unwrap();
    assert_eq!(engine.get(Cf::State, b"svc/1").unwrap().as_deref(), Some(&b"a"[..]));
    assert_eq!(engine.get(Cf::RaftMeta, b"applied").unwrap().as_deref(), Some(&b"7"[..]));
    assert_eq!(engine.get(Cf::Local, b"svc/1").unwrap(), None, "families are separate");
    assert_eq!(engine.get(Cf::RaftLog, b"applied").unwrap(), None, "families are separate");
}

fn a_batch_applies_its_operations_in_order<E: KvEngine>(engine: &E) {
    fill(engine, Cf::State, &["a", "b", "c"]);
    let mut batch = Batch::default();
    batch.put(Cf::State, b"x", b"1");
    batch.delete(Cf::State, b"x");
    batch.delete(Cf::State, b"y");
    batch.put(Cf::State, b"y", b"2");
    // A put after a range delete in the same batch survives it: snapshot
    // install clears the family and refills it in one batch.
    batch.delete_range(Cf::State, b"a", b"z");
    batch.put(Cf::State, b"b", b"again");
    engine.write(batch, Durability::Process).unwrap();
    assert_eq!(keys(engine, Cf::State, b""), owned(&["b"]));
    assert_eq!(engine.get(Cf::State, b"b").unwrap().as_deref(), Some(&b"again"[..]));
}

fn an_overwrite_keeps_the_last_value<E: KvEngine>(engine: &E) {
    engine.put(Cf::Local, b"k", b"first", Durability::Process).unwrap();
    engine.put(Cf::Local, b"k", b"second", Durability::Machine).unwrap();
    assert_eq!(engine.get(Cf::Local, b"k").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(engine.scan_prefix(Cf::Local, b"").unwrap().len(), 1);
}

fn a_delete_removes_one_key_and_tolerates_absence<E: KvEngine>(engine: &E) {
    fill(engine, Cf::State, &["k1", "k2"]);
    let mut batch = Batch::default();
    batch.delete(Cf::State, b"k1");
    batch.delete(Cf::State, b"never-written");
    engine.write(batch, Durability::Process).unwrap();
    assert_eq!(engine.get(Cf::State, b"k1").unwrap(), None);
    assert_eq!(keys(engine, Cf::State, b""), owned(&["k2"]));
}

fn a_range_delete_is_half_open<E: KvEngine>(engine: &E) {
    fill(engine, Cf::State, &["a/1", "a/2", "a/3", "b/1"]);
    fill(engine, Cf::Local, &["a/2"]);
    let mut batch = Batch::default();
    batch.delete_range(Cf::State, b"a/1", b"a/3");
    engine.write(batch, Durability::Process).unwrap();
    assert_eq!(keys(engine, Cf::State, b""), owned(&["a/3", "b/1"]));
    assert_eq!(keys(engine, Cf::Local, b""), owned(&["a/2"]), "only the named family");

    // An empty or reversed range deletes nothing.
    let mut batch = Batch::default();
    batch.delete_range(Cf::State, b"a/3", b"a/3");
    batch.delete_range(Cf::State, b"b/9", b"a/0");
    engine.write(batch, Durability::Process).unwrap();
    assert_eq!(keys(engine, Cf::State, b""), owned(&["a/3", "b/1"]));

    // The whole-family range snapshot install uses.
    let mut batch = Batch::default();
    batch.delete_range(Cf::State, &[0x00], &[0xff]);
    engine.write(batch, Durability::Process).unwrap();
    assert!(keys(engine, Cf::State, b"").is_empty());
}

fn a_prefix_scan_stays_inside_its_prefix<E: KvEngine>(engine: &E) {
    fill(engine, Cf::State, &["a", "a/", "a/1", "a/2", "a0", "b/1"]);
    let mut batch = Batch::default();
    batch.put(Cf::State, &[b'c', 0xff], b"v");
    batch.put(Cf::State, &[b'c', 0xff, 0x00], b"v");
    batch.put(Cf::State, b"d", b"v");
    engine.write(batch, Durability::Process).unwrap();
    assert_eq!(keys(engine, Cf::State, b"a/"), owned(&["a/", "a/1", "a/2"]));
    assert_eq!(keys(engine, Cf::State, b"a/3"), Vec::<Vec<u8>>::new());
    assert_eq!(keys(engine, Cf::State, &[b'c', 0xff]), vec![vec![b'c', 0xff], vec![b'c', 0xff, 0x00]]);
    assert_eq!(keys(engine, Cf::State, b"").len(), 9, "the empty prefix is the whole family");
}

fn a_visit_starts_at_its_key_and_stops_when_asked<E: KvEngine>(engine: &E) {
    fill(engine, Cf::RaftLog, &["1", "2", "3", "4"]);
    let mut seen = Vec::new();
    engine
        .for_each_from(Cf::RaftLog, b"15", &mut |k, _| {
            seen.push(k.to_vec());
            seen.len() < 2
        })
        .unwrap();
    assert_eq!(seen, owned(&["2", "3"]));
}

fn a_visit_sees_the_data_as_it_started<E: KvEngine>(engine: &E) {
    fill(engine, Cf::State, &["k1", "k2", "k3"]);
    let mut seen = Vec::new();
    engine
        .for_each_from(Cf::State, b"", &mut |k, _| {
            // Writing while visiting neither blocks nor shows up in the visit.
            engine.put(Cf::State, b"k0", b"new", Durability::Process).unwrap();
            engine.put(Cf::State, b"k9", b"new", Durability::Process).unwrap();
            seen.push(k.to_vec());
            true
        })
        .unwrap();
    assert_eq!(seen, owned(&["k1", "k2", "k3"]));
    assert_eq!(keys(engine, Cf::State, b"").len(), 5);
}

fn last_is_the_greatest_key_of_its_family<E: KvEngine>(engine: &E) {
    assert_eq!(engine.last(Cf::RaftLog).unwrap(), None);
    fill(engine, Cf::RaftLog, &["b", "c", "a"]);
    fill(engine, Cf::RaftMeta, &["z"]);
    assert_eq!(engine.last(Cf::RaftLog).unwrap(), Some((b"c".to_vec(), b"c".to_vec())));
}

fn clones_share_one_store<E: KvEngine>(engine: &E) {
    let other = engine.clone();
    other.put(Cf::Local, b"k", b"v", Durability::Process).unwrap();
    assert_eq!(engine.get(Cf::Local, b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

/// One test per case and engine, so a failure names both.
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod rocks {
            $(
                #[test]
                fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$case(&super::Engine::open(dir.path()).unwrap());
                }
            )+
        }
        mod mem {
            $(
                #[test]
                fn $case() {
                    super::$case(&super::MemEngine::new());
                }
            )+
        }
    };
}

conformance!(
    a_batch_writes_every_family_at_once,
    a_batch_applies_its_operations_in_order,
    an_overwrite_keeps_the_last_value,
    a_delete_removes_one_key_and_tolerates_absence,
    a_range_delete_is_half_open,
    a_prefix_scan_stays_inside_its_prefix,
    a_visit_starts_at_its_key_and_stops_when_asked,
    a_visit_sees_the_data_as_it_started,
    last_is_the_greatest_key_of_its_family,
    clones_share_one_store,
);
