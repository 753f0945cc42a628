//! Property tests of `apply` through the state machine: invariants hold after
//! any command sequence over every registered entity, a rejected command
//! changes nothing, the change journal names exactly what changed, and
//! replaying the same log gives byte-identical state. Thousands of sequences
//! run on `MemEngine`; a smaller run on RocksDB shows the real engine agrees.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::stream;
use openraft::EntryPayload;
use openraft::alias::EntryOf;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::Message;
use tollgate_proto::config::v1 as pb_config;
use tollgate_proto::config::v1::route::Backend;
use tollgate_proto::config::v1::{
    AiBackend, AuthMode, Consumer, Meta, PathMatch, Route, RoutePath, Service, ServiceBackend, Target,
};
use tollgate_proto::raft::v1 as pb;
use tollgate_proto::raft::v1::command::Op;
use tollgate_storage::{Batch, Cf, Durability, Engine, KeyValue, KvEngine, MemEngine};

use crate::apply::Change;
use crate::entities::{AnyEntity, EntityKind};
use crate::error::RaftNodeError;
use crate::keys;
use crate::state::GatewayState;
use crate::state_machine::StateMachine;
use crate::types::{Command, TypeConfig};

/// `proposed_at_ms` of the command at log index 0; entry `i` is `i` ms later.
pub(crate) const COMMAND_TIME_MS: i64 = 1_700_000_000_000;
const IDS: [&str; 4] = ["i1", "i2", "i3", "i4"];
const NAMES: [&str; 5] = ["a", "b", "c", "d", "not valid"];

/// Few ids and names, so that arbitrary commands refer to each other and collide.
pub(crate) fn arbitrary_id() -> impl Strategy<Value = String> {
    prop::sample::select(IDS.to_vec()).prop_map(str::to_string)
}

pub(crate) fn arbitrary_name() -> impl Strategy<Value = String> {
    prop::sample::select(NAMES.to_vec()).prop_map(str::to_string)
}

/// Lease and usage commands, valid and not, over the same few ids, so they
/// meet the limits the entity ops create and delete.
pub(crate) fn arbitrary_system_op() -> BoxedStrategy<Op> {
    let ask = (arbitrary_id(), prop::sample::select(vec!["", "k1", "10.0.0.1"]), 0u64..20, 0u64..5, 0u64..5).prop_map(
        |(limit_id, bucket, want, need, give_back)| pb::LeaseAsk {
            limit_id,
            bucket: bucket.to_string(),
            want,
            need,
            give_back,
            give_back_window_start_ms: COMMAND_TIME_MS / 1_000 * 1_000,
            next_window: want % 2 == 1,
        },
    );
    let lease = (0u64..3, prop::collection::vec(ask, 0..3))
        .prop_map(|(node_id, asks)| Op::Lease(pb::LeaseRequest { node_id, asks }));
    let delta = (prop::sample::select(vec!["", "k1", "k2"]), 0u64..5).prop_map(|(key, requests)| pb::UsageDelta {
        hour_start_ms: COMMAND_TIME_MS,
        key: key.to_string(),
        requests,
        ..Default::default()
    });
    let usage = (0u64..3, 0u64..4, 0u64..3, prop::collection::vec(delta, 0..3)).prop_map(
        |(node_id, first_seq, more, deltas)| {
            Op::Usage(pb::UsageBatch { node_id, first_seq, last_seq: first_seq + more, deltas })
        },
    );
    let denied = (0u64..3).prop_map(|n| {
        Op::RecordDenied(pb_config::AuditEntry {
            actor: format!("t{n}"),
            rpc: "CreateService".into(),
            ..Default::default()
        })
    });
    let prune = (0i64..3).prop_map(|n| Op::PruneAudit(COMMAND_TIME_MS + n * 40));
    prop_oneof![lease, usage, denied, prune].boxed()
}

pub(crate) fn meta(id: &str) -> Option<Meta> {
    Some(Meta { id: id.to_string(), ..Default::default() })
}

fn entry(index: u64, op: Op) -> EntryOf<TypeConfig> {
    EntryOf::<TypeConfig>::new_normal(
        openraft::testing::log_id::<TypeConfig>(1, 1, index),
        Command::new(op, COMMAND_TIME_MS + index as i64, "test"),
    )
}

async fn apply_batch<E: KvEngine>(sm: &mut StateMachine<E>, entries: Vec<EntryOf<TypeConfig>>) {
    let items: Vec<io::Result<_>> = entries.into_iter().map(|e| Ok((e, None))).collect();
    sm.apply(stream::iter(items)).await.expect("storage works");
}

fn disk_state<E: KvEngine>(engine: &E) -> Vec<KeyValue> {
    engine.scan_prefix(Cf::State, b"").unwrap()
}

fn check_invariants(state: &GatewayState) {
    for route in state.routes() {
        match route.backend_service_id() {
            Some(s) => assert!(state.service(s).is_some(), "route {} points at a missing service", route.name),
            None => assert!(route.is_ai_backend(), "route {} has no backend", route.name),
        }
        // The legacy fields mirror the backend, for nodes of the previous version.
        assert_eq!(route.backend_service_id().unwrap_or_default(), route.service_id, "route {}", route.name);
        assert_eq!(route.is_ai_backend(), route.ai_gateway, "route {}", route.name);
    }
    for key in state.api_keys() {
        assert!(state.consumer(&key.consumer_id).is_some(), "a key outlived its consumer");
    }
    for limit in state.limits() {
        for (kind, ids) in [
            (EntityKind::Route, &limit.route_ids),
            (EntityKind::Service, &limit.service_ids),
            (EntityKind::Consumer, &limit.consumer_ids),
            (EntityKind::ApiKey, &limit.api_key_ids),
        ] {
            for id in ids {
                assert!(state.entity(kind, id).is_some(), "limit {} is attached to a missing {kind} {id}", limit.name);
            }
        }
    }
    for window in state.quota_windows() {
        assert!(state.limit(&window.limit_id).is_some(), "a quota window outlived its limit");
        assert_eq!(window.granted, window.grants.iter().map(|g| g.units).sum::<u64>(), "grants add up");
        assert!(window.grants.windows(2).all(|g| g[0].node_id < g[1].node_id), "grants sorted by node");
        if let Some(next) = &window.next {
            assert_eq!(next.granted, next.grants.iter().map(|g| g.units).sum::<u64>(), "grants ahead add up");
            assert_eq!(next.window_start_ms, window.window_end_ms, "leased ahead for the window after the open one");
        }
    }
    for alias in state.model_aliases() {
        for t in &alias.targets {
            assert!(state.provider(&t.provider_id).is_some(), "alias {} points at a missing provider", alias.name);
        }
    }
    for provider in state.providers() {
        assert!(
            provider.credentials.iter().all(|c| c.secret.is_empty() && !c.sealed_secret.is_empty()),
            "a plaintext or unsealed provider secret was stored"
        );
    }
    for token in state.join_tokens() {
        assert_eq!(token.secret_sha256.len(), 32, "a join token without a digest was stored");
    }
    check_governance(state);
    let unique = |names: Vec<&str>| names.iter().collect::<HashSet<_>>().len() == names.len();
    assert!(unique(state.providers().map(|p| p.name.as_str()).collect()), "duplicate provider names");
    assert!(unique(state.model_aliases().map(|a| a.name.as_str()).collect()), "duplicate alias names");
    assert!(unique(state.model_prices().map(|p| p.name.as_str()).collect()), "duplicate price names");
    assert!(unique(state.services().map(|s| s.name.as_str()).collect()), "duplicate service names");
    assert!(unique(state.routes().map(|r| r.name.as_str()).collect()), "duplicate route names");
    assert!(unique(state.consumers().map(|c| c.name.as_str()).collect()), "duplicate consumer names");
    for name in state.services().map(|s| s.name.as_str()).chain(state.consumers().map(|c| c.name.as_str())) {
        assert!(crate::validate::name("name", name).is_ok(), "invalid name {name:?} was stored");
    }
}

/// Versions, subscriptions and teams refer to what exists, and the audit
/// trail holds no secret.
fn check_governance(state: &GatewayState) {
    let mut versions = HashSet::new();
    for v in state.api_versions() {
        assert!(state.service(&v.service_id).is_some(), "version {} outlived its service", v.version);
        assert!(versions.insert((&v.service_id, &v.version)), "version {} twice", v.version);
    }
    let mut pairs = HashSet::new();
    for s in state.subscriptions() {
        assert!(state.service(&s.service_id).is_some(), "a subscription outlived its service");
        assert!(state.consumer(&s.consumer_id).is_some(), "a subscription outlived its consumer");
        assert!(pairs.insert((&s.service_id, &s.consumer_id)), "two subscriptions of one consumer to one service");
    }
    let teams = state.services().map(|s| &s.team_id).chain(state.consumers().map(|c| &c.team_id));
    for team in teams.chain(state.routes().map(|r| &r.team_id)).chain(state.limits().map(|l| &l.team_id)) {
        assert!(team.is_empty() || state.team(team).is_some(), "an owner team {team} is missing");
    }
    for entry in state.audit_entries() {
        for image in entry.changes.iter().flat_map(|c| c.before.iter().chain(c.after.iter())) {
            let secret_free = match image.type_name.as_str() {
                "tollgate.config.v1.ApiKey" => {
                    pb_config::ApiKey::decode(image.entity.as_slice()).unwrap().secret_sha256.is_empty()
                }
                "tollgate.config.v1.JoinToken" => {
                    pb_config::JoinToken::decode(image.entity.as_slice()).unwrap().secret_sha256.is_empty()
                }
                "tollgate.config.v1.AdminToken" => {
                    pb_config::AdminToken::decode(image.entity.as_slice()).unwrap().secret_sha256.is_empty()
                }
                "tollgate.config.v1.Provider" => pb_config::Provider::decode(image.entity.as_slice())
                    .unwrap()
                    .credentials
                    .iter()
                    .all(|c| c.sealed_secret.is_empty() && c.secret.is_empty()),
                _ => true,
            };
            assert!(secret_free, "the audit trail holds a secret of a {}", image.type_name);
        }
    }
}

/// The `state` keys whose value differs between two encodings.
fn changed_keys(before: &[KeyValue], after: &[KeyValue]) -> BTreeSet<Vec<u8>> {
    let before: BTreeMap<_, _> = before.iter().map(|(k, v)| (k, v)).collect();
    let after: BTreeMap<_, _> = after.iter().map(|(k, v)| (k, v)).collect();
    before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).map(|k| k.to_vec()).collect()
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Applies `ops` one entry at a time on the engine `open("a")` gives,
/// checking each step, then in batches of `batch` on `open("b")`, and
/// compares; then reloads "a" from its engine.
async fn check_sequence<E: KvEngine>(open: impl Fn(&str) -> E, ops: &[Op], batch: usize) -> Result<(), TestCaseError> {
    // No snapshot is built here, so the directory is never used.
    let no_snapshots = PathBuf::new();
    let engine = open("a");
    let (mut sm, states) = StateMachine::open(engine.clone(), no_snapshots.clone()).unwrap();
    let entries: Vec<_> = ops.iter().cloned().enumerate().map(|(i, op)| entry(i as u64 + 1, op)).collect();

    // One entry at a time: check invariants, the journal and no-op rejections step by step.
    let mut before_entries = Vec::new();
    for e in entries.clone() {
        let before = states.borrow().clone();
        let EntryPayload::Normal(command) = &e.payload else { unreachable!("only commands are generated") };
        let expected = crate::apply::apply(&before, &command.0, e.index());
        apply_batch(&mut sm, vec![e]).await;
        let after = states.borrow().clone();
        check_invariants(&after);
        let after_entries = after.encoded_entries();
        prop_assert_eq!(&after_entries, &disk_state(&engine), "memory and disk agree");
        let touched: BTreeSet<Vec<u8>> = after
            .changes_since(before.applied_index())
            .expect("the journal reaches back one command")
            .map(|t| keys::entity_key(t.kind, &t.id))
            .collect();
        prop_assert_eq!(touched, changed_keys(&before_entries, &after_entries), "the journal names what changed");
        if expected.is_err() {
            prop_assert_eq!(&before_entries, &after_entries, "a rejected command changed state");
        }
        before_entries = after_entries;
    }

    // The same log, in batches of another size, into a fresh store.
    let engine_b = open("b");
    let (mut sm_b, _) = StateMachine::open(engine_b.clone(), no_snapshots.clone()).unwrap();
    for chunk in entries.chunks(batch) {
        apply_batch(&mut sm_b, chunk.to_vec()).await;
    }
    prop_assert_eq!(disk_state(&engine), disk_state(&engine_b), "replay is byte-identical");

    // Reloading from the engine gives the same in-memory state, and a
    // journal that starts at the applied index.
    drop(sm);
    let (_reopened, reloaded) = StateMachine::open(engine.clone(), no_snapshots).unwrap();
    let reloaded = reloaded.borrow().clone();
    let applied = entries.len() as u64;
    prop_assert_eq!(reloaded.encoded_entries(), disk_state(&engine));
    prop_assert_eq!(reloaded.applied_index(), applied);
    prop_assert_eq!(reloaded.changes_since(applied).map(Iterator::count), Some(0));
    prop_assert!(reloaded.changes_since(applied - 1).is_none());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn any_command_sequence_keeps_invariants_and_replays_identically(
        ops in prop::collection::vec(crate::entities::arbitrary_op(), 1..60),
        batch in 1usize..8,
    ) {
        let engines: BTreeMap<&str, MemEngine> = [("a", MemEngine::new()), ("b", MemEngine::new())].into();
        run(check_sequence(|name| engines[name].clone(), &ops, batch))?;
    }
}

proptest! {
    // Each case opens two RocksDB databases: enough cases to show the real
    // engine gives what the in-memory one does.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn rocksdb_gives_the_same_results(
        ops in prop::collection::vec(crate::entities::arbitrary_op(), 1..60),
        batch in 1usize..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let engines: BTreeMap<&str, Engine> =
            ["a", "b"].map(|name| (name, Engine::open(dir.path().join(name)).unwrap())).into();
        run(check_sequence(|name| engines[name].clone(), &ops, batch))?;
    }
}

#[test]
fn entity_keys_keep_the_stored_format() {
    // Data directories and snapshots of earlier versions hold these keys, and
    // forwarded-write rejections carry a kind by its position: new kinds go
    // after these, and no prefix may start another.
    let stored: [&[u8]; 8] = [b"svc/", b"rte/", b"con/", b"key/", b"jtk/", b"prv/", b"als/", b"prc/"];
    let prefixes: Vec<&[u8]> = EntityKind::ALL.iter().map(|k| k.key_prefix()).collect();
    assert_eq!(prefixes[..stored.len()], stored);
    for (i, a) in prefixes.iter().enumerate() {
        for b in &prefixes[i + 1..] {
            assert!(!a.starts_with(b) && !b.starts_with(a), "{a:?} and {b:?} overlap");
        }
    }
    assert_eq!(postcard::to_allocvec(&EntityKind::ModelPrice).unwrap(), [7]);
}

fn orders_service() -> Service {
    Service {
        meta: meta("s1"),
        name: "orders".into(),
        targets: vec![Target { host: "127.0.0.1".into(), port: 9, weight: 1 }],
        ..Default::default()
    }
}

fn route(id: &str, name: &str) -> Route {
    Route {
        meta: meta(id),
        name: name.into(),
        paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: format!("/{name}") }],
        auth: AuthMode::ApiKey as i32,
        ..Default::default()
    }
}

/// The previous version wrote a route's backend in `ai_gateway` / `service_id`.
fn legacy_routes() -> [Route; 2] {
    [Route { ai_gateway: true, ..route("r1", "chat") }, Route { service_id: "s1".into(), ..route("r2", "orders") }]
}

fn current_routes() -> [Route; 2] {
    [
        Route { backend: Some(Backend::Ai(AiBackend {})), ..route("r1", "chat") },
        Route { backend: Some(Backend::Service(ServiceBackend { service_id: "s1".into() })), ..route("r2", "orders") },
    ]
}

#[test]
fn log_entries_of_the_previous_route_format_apply_in_the_current_form() {
    run(async {
        // The log holds commands as protobuf bytes: decode the previous
        // version's bytes, as a follower replaying an old log does.
        let legacy_entry = |index: u64, route: Route| {
            let bytes = pb::Command {
                proposed_at_ms: COMMAND_TIME_MS + index as i64,
                actor: "test".into(),
                op: Some(Op::CreateRoute(route)),
                ..Default::default()
            }
            .encode_to_vec();
            let command = pb::Command::decode(bytes.as_slice()).unwrap();
            EntryOf::<TypeConfig>::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), Command(command))
        };
        let [ai, svc] = legacy_routes();
        let (mut old_log, old) = StateMachine::open(MemEngine::new(), PathBuf::new()).unwrap();
        apply_batch(
            &mut old_log,
            vec![entry(1, Op::CreateService(orders_service())), legacy_entry(2, ai), legacy_entry(3, svc)],
        )
        .await;

        let [ai, svc] = current_routes();
        let (mut new_log, new) = StateMachine::open(MemEngine::new(), PathBuf::new()).unwrap();
        apply_batch(
            &mut new_log,
            vec![
                entry(1, Op::CreateService(orders_service())),
                entry(2, Op::CreateRoute(ai)),
                entry(3, Op::CreateRoute(svc)),
            ],
        )
        .await;

        let old = old.borrow().clone();
        let chat = old.find_route("chat").expect("the AI route was created");
        assert!(chat.is_ai_backend() && chat.ai_gateway);
        let orders = old.find_route("orders").expect("the service route was created");
        assert_eq!(orders.backend_service_id(), Some("s1"));
        assert_eq!(orders.service_id, "s1", "the mirror a node of the previous version reads");
        // Byte-identical to the same routes written in the current form, so
        // the data plane serves them identically.
        assert_eq!(old.encoded_entries(), new.borrow().encoded_entries());
    });
}

#[test]
fn state_records_of_the_previous_route_format_load_in_the_current_form() {
    let engine = MemEngine::new();
    let mut batch = Batch::default();
    batch.put(Cf::State, b"svc/s1", &orders_service().encode_to_vec());
    for r in legacy_routes() {
        batch.put(Cf::State, &keys::entity_key(EntityKind::Route, &r.meta.as_ref().unwrap().id), &r.encode_to_vec());
    }
    engine.write(batch, Durability::Process).unwrap();

    let state = GatewayState::load(&engine, 3).unwrap();
    assert!(state.find_route("chat").unwrap().is_ai_backend());
    assert_eq!(state.find_route("orders").unwrap().backend_service_id(), Some("s1"));
    let current: Vec<_> = current_routes()
        .into_iter()
        .map(|mut r| {
            r.adopt_legacy_backend().unwrap();
            (keys::entity_key(EntityKind::Route, &r.meta.as_ref().unwrap().id), r.encode_to_vec())
        })
        .collect();
    assert_eq!(state.encoded_entries()[..2], current[..], "held and snapshotted in the current form");

    // A stored route naming both backends was never valid: the data is corrupt.
    let both = Route { ai_gateway: true, service_id: "s1".into(), ..route("r3", "both") };
    engine.put(Cf::State, b"rte/r3", &both.encode_to_vec(), Durability::Process).unwrap();
    let error = GatewayState::load(&engine, 3).unwrap_err();
    assert!(matches!(error, RaftNodeError::Corrupt { what: "route", .. }), "{error}");
}

#[test]
fn a_copy_of_a_large_state_shares_it_and_a_put_copies_only_a_path() {
    let mut state = GatewayState::default();
    for i in 0..100_000u64 {
        let service = Service { meta: meta(&format!("s{i:06}")), name: format!("svc-{i}"), ..Default::default() };
        state.commit(&Change::Put(AnyEntity::Service(Arc::new(service))), i + 1);
    }
    state.set_applied_index(100_000);

    let mut copy = state.clone();
    assert!(copy.tables().ptr_eq(state.tables()), "a clone shares every table");
    assert!(copy.journal().touches().ptr_eq(state.journal().touches()), "and the journal");

    let added = Service { meta: meta("new"), name: "new".into(), ..Default::default() };
    copy.commit(&Change::Put(AnyEntity::Service(Arc::new(added))), 100_001);
    copy.set_applied_index(100_001);
    assert!(copy.find_service("new").is_some() && state.find_service("new").is_none());
    assert!(copy.table::<Route>().ptr_eq(state.table::<Route>()), "untouched tables stay shared");
    // An entity whose map node was copied is referenced from both maps; the
    // others only from the shared nodes. A put copies one root-to-leaf path.
    let services = state.table::<Service>().by_id();
    let copied = services.values().filter(|s| Arc::strong_count(s) > 1).count();
    assert!(copied < services.len() / 100, "{copied} of {} services were copied", services.len());
    let news: Vec<_> = copy.changes_since(100_000).unwrap().map(|t| (t.kind, t.id.to_string())).collect();
    assert_eq!(news, [(EntityKind::Service, "new".to_string())]);
}

#[test]
fn snapshot_round_trip_restores_identical_state() {
    run(async {
        use openraft::RaftSnapshotBuilder;
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("a")).unwrap();
        let (mut sm, _) = StateMachine::open(engine.clone(), dir.path().join("snap-a")).unwrap();
        let consumer = Consumer { meta: meta("c1"), name: "acme".into(), ..Default::default() };
        apply_batch(
            &mut sm,
            vec![entry(1, Op::CreateService(orders_service())), entry(2, Op::CreateConsumer(consumer))],
        )
        .await;

        let mut builder = sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.unwrap().index, 2);

        let engine_b = Engine::open(dir.path().join("b")).unwrap();
        let (mut sm_b, states_b) = StateMachine::open(engine_b.clone(), dir.path().join("snap-b")).unwrap();
        // Something stale that the snapshot must replace.
        let stale = Consumer { meta: meta("old"), name: "stale".into(), ..Default::default() };
        apply_batch(&mut sm_b, vec![entry(1, Op::CreateConsumer(stale))]).await;
        // The consumer and the audit entry of its creation.
        assert_eq!(states_b.borrow().changes_since(0).map(Iterator::count), Some(2));
        sm_b.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();

        assert_eq!(disk_state(&engine), disk_state(&engine_b));
        let installed = states_b.borrow().clone();
        assert_eq!(installed.applied_index(), 2);
        assert!(installed.find_consumer("stale").is_none());
        // The journal starts over at the snapshot: a reader from before rebuilds.
        assert_eq!(installed.changes_since(2).map(Iterator::count), Some(0));
        assert!(installed.changes_since(1).is_none());
        let current = sm_b.get_current_snapshot().await.unwrap().expect("installed snapshot is kept");
        assert_eq!(current.meta, snapshot.meta);
    });
}

#[test]
fn corrupt_snapshot_is_refused_and_state_is_kept() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("a")).unwrap();
        let (mut sm, states) = StateMachine::open(engine.clone(), dir.path().join("snap")).unwrap();
        let consumer = Consumer { meta: meta("c1"), name: "acme".into(), ..Default::default() };
        apply_batch(&mut sm, vec![entry(1, Op::CreateConsumer(consumer))]).await;
        let before = disk_state(&engine);

        let bogus = dir.path().join("bogus");
        std::fs::write(&bogus, b"definitely not a snapshot").unwrap();
        let meta = openraft::alias::SnapshotMetaOf::<TypeConfig>::default();
        let err = sm.install_snapshot(&meta, std::fs::File::open(&bogus).unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("snapshot"), "{err}");
        assert_eq!(disk_state(&engine), before);
        assert!(states.borrow().find_consumer("acme").is_some());
    });
}

fn as_actor(op: Op, actor: &str, role: pb_config::AdminRole, team: &str) -> pb::Command {
    pb::Command {
        proposed_at_ms: COMMAND_TIME_MS,
        actor: actor.into(),
        actor_role: role as i32,
        actor_team: team.into(),
        rpc: "Test".into(),
        op: Some(op),
    }
}

/// A state with teams t1 and t2, and service s1 of t1.
fn two_teams() -> GatewayState {
    let mut state = GatewayState::default();
    let mut index = 0;
    let mut run = |state: &mut GatewayState, op: Op| {
        index += 1;
        *state = state.with_command(&Command::new(op, COMMAND_TIME_MS, "test").0, index).unwrap();
    };
    for team in ["t1", "t2"] {
        run(&mut state, Op::CreateTeam(pb_config::Team { meta: meta(team), name: team.into(), ..Default::default() }));
    }
    run(&mut state, Op::CreateService(Service { team_id: "t1".into(), ..orders_service() }));
    state
}

#[test]
fn an_operator_changes_only_what_its_team_owns_checked_where_the_command_applies() {
    use pb_config::AdminRole::{Admin, Operator, Viewer};
    let mut state = two_teams();
    // Operators are tokens: their role and team come from the token's record.
    for (name, role, team) in [("op1", Operator, "t1"), ("op2", Operator, "t2"), ("v", Viewer, "")] {
        let token = pb_config::AdminToken {
            meta: meta(name),
            name: name.into(),
            role: role as i32,
            team_id: team.into(),
            secret_sha256: vec![1; 32],
            ..Default::default()
        };
        state = state.with_command(&Command::new(Op::CreateAdminToken(token), COMMAND_TIME_MS, "test").0, 5).unwrap();
    }
    let update =
        |team: &str| Op::UpdateService(Service { team_id: team.into(), description: "x".into(), ..orders_service() });
    let denied = |cmd: pb::Command| match crate::apply::apply(&state, &cmd, 10) {
        Err(crate::ApplyError::PermissionDenied(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(crate::apply::apply(&state, &as_actor(update("t1"), "op1", Operator, "t1"), 10).is_ok());
    let m = denied(as_actor(update("t1"), "op2", Operator, "t2"));
    assert!(m.contains("op2") && m.contains("t1"), "{m}");
    denied(as_actor(update("t2"), "op1", Operator, "t1")); // giving it away
    denied(as_actor(update("t1"), "v", Viewer, ""));
    denied(as_actor(Op::DeleteService("s1".into()), "op2", Operator, "t2"));
    denied(as_actor(
        Op::CreateTeam(pb_config::Team { meta: meta("t3"), name: "t3".into(), ..Default::default() }),
        "op1",
        Operator,
        "t1",
    ));
    assert!(crate::apply::apply(&state, &as_actor(update("t2"), "bootstrap", Admin, ""), 10).is_ok());
    // A role claimed for a name no token has is not believed.
    let ghost = crate::apply::apply(&state, &as_actor(update("t2"), "ghost", Admin, ""), 10);
    assert!(matches!(ghost, Err(crate::ApplyError::PermissionDenied(m)) if m.contains("no longer exists")));
    // A route is its team's, and may lead only to its team's services.
    let route_to = |team: &str| Op::CreateRoute(Route { team_id: team.into(), ..route("r1", "r") });
    let mut to_s1 = route_to("t2");
    if let Op::CreateRoute(r) = &mut to_s1 {
        r.set_service_backend("s1".into());
    }
    denied(as_actor(to_s1, "op2", Operator, "t2"));
}

#[test]
fn every_admin_change_is_audited_with_its_actor_and_a_refused_bundle_changes_nothing() {
    use pb_config::AdminRole::Operator;
    let mut state = two_teams();
    let token = pb_config::AdminToken {
        meta: meta("op1"),
        name: "op1".into(),
        role: Operator as i32,
        team_id: "t1".into(),
        secret_sha256: vec![1; 32],
        ..Default::default()
    };
    state = state.with_command(&Command::new(Op::CreateAdminToken(token), COMMAND_TIME_MS, "test").0, 5).unwrap();
    let cmd = as_actor(
        Op::UpdateService(Service { team_id: "t1".into(), description: "x".into(), ..orders_service() }),
        "op1",
        Operator,
        "t1",
    );
    let outcome = crate::apply::apply(&state, &cmd, 10).unwrap();
    let Some(Change::Put(AnyEntity::AuditEntry(entry))) = outcome.changes.last() else { panic!("no audit entry") };
    assert_eq!((entry.actor.as_str(), entry.actor_team.as_str(), entry.rpc.as_str()), ("op1", "t1", "Test"));
    assert_eq!(entry.meta.as_ref().unwrap().id, "00000000000000000010");
    let change = &entry.changes[0];
    assert!(change.before.is_some() && change.after.is_some());
    // The cluster's own records are not admin changes.
    let denied = pb_config::AuditEntry { actor: "x".into(), ..Default::default() };
    let record = Command::new(Op::RecordDenied(denied), COMMAND_TIME_MS, "node 1");
    let outcome = crate::apply::apply(&state, &record.0, 11).unwrap();
    assert_eq!(outcome.changes.len(), 1, "the refusal's own entry only");
    let prune = Command::new(Op::PruneAudit(COMMAND_TIME_MS + 1), COMMAND_TIME_MS, "node 1");
    let outcome = crate::apply::apply(&state, &prune.0, 11).unwrap();
    assert!(!outcome.changes.iter().any(|c| matches!(c, Change::Put(AnyEntity::AuditEntry(_)))));

    // A bundle whose second operation fails applies nothing.
    let bundle = pb::ConfigBundle {
        ops: vec![
            pb::Command {
                op: Some(Op::CreateConsumer(pb_config::Consumer {
                    meta: meta("c1"),
                    name: "c".into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
            pb::Command { op: Some(Op::DeleteService("nope".into())), ..Default::default() },
        ],
    };
    let refused =
        crate::apply::apply(&state, &Command::new(Op::ApplyConfig(bundle.clone()), COMMAND_TIME_MS, "t").0, 12);
    assert!(
        matches!(&refused, Err(crate::ApplyError::InvalidArgument { reason, .. }) if reason.contains("operation 2")),
        "{refused:?}"
    );
    // Nested bundles and the cluster's own records are not configuration.
    let nested =
        pb::ConfigBundle { ops: vec![pb::Command { op: Some(Op::ApplyConfig(bundle)), ..Default::default() }] };
    assert!(crate::apply::apply(&state, &Command::new(Op::ApplyConfig(nested), COMMAND_TIME_MS, "t").0, 13).is_err());
    // An operator cannot apply a whole configuration.
    let small = pb::ConfigBundle { ops: vec![] };
    let as_operator = as_actor(Op::ApplyConfig(small), "op1", Operator, "t1");
    assert!(matches!(crate::apply::apply(&state, &as_operator, 14), Err(crate::ApplyError::PermissionDenied(_))));
}

/// Service s1 with a published version and subscriptions that need approval,
/// s2 with a draft only, consumers c1 and c2 with a key each.
fn self_service_state(mode: pb_config::SubscriptionMode) -> GatewayState {
    use pb_config::{ApiKey, ApiVersion, Consumer, VersionState, Versioning};
    let mut state = GatewayState::default();
    let mut index = 0;
    let mut run = |state: &mut GatewayState, op: Op| {
        index += 1;
        *state = state.with_command(&Command::new(op, COMMAND_TIME_MS, "test").0, index).unwrap();
    };
    let versioning = Some(Versioning { default_version: "v1".into(), ..Default::default() });
    for (id, name, published) in [("s1", "orders", true), ("s2", "internal", false)] {
        let service = Service {
            meta: meta(id),
            name: name.into(),
            versioning: versioning.clone(),
            subscription: mode as i32,
            ..orders_service()
        };
        run(&mut state, Op::CreateService(service));
        let version = ApiVersion {
            meta: meta(&format!("{id}v1")),
            service_id: id.into(),
            version: "v1".into(),
            state: VersionState::Draft as i32,
            ..Default::default()
        };
        run(&mut state, Op::CreateApiVersion(version.clone()));
        if published {
            run(&mut state, Op::UpdateApiVersion(ApiVersion { state: VersionState::Published as i32, ..version }));
        }
    }
    for consumer in ["c1", "c2"] {
        run(
            &mut state,
            Op::CreateConsumer(Consumer { meta: meta(consumer), name: consumer.into(), ..Default::default() }),
        );
        let key = ApiKey {
            meta: meta(&format!("k{consumer}")),
            consumer_id: consumer.into(),
            secret_sha256: vec![1; 32],
            allowed_models: vec!["fast".into()],
            ..Default::default()
        };
        run(&mut state, Op::CreateApiKey(key));
    }
    state
}

#[test]
fn a_consumer_in_the_portal_may_subscribe_itself_and_manage_its_own_keys_only() {
    use pb_config::AdminRole::Consumer;
    use pb_config::{ApiKey, SubscriptionMode, SubscriptionState};
    let state = self_service_state(SubscriptionMode::Approval);
    let me = crate::consumer_actor("c1");
    let apply = |state: &GatewayState, op: Op| crate::apply::apply(state, &as_actor(op, &me, Consumer, ""), 20);
    let denied = |state: &GatewayState, op: Op| match apply(state, op) {
        Err(crate::ApplyError::PermissionDenied(m) | crate::ApplyError::FailedPrecondition(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let subscription =
        |service: &str, consumer: &str, state: SubscriptionState, decided_by: &str| pb_config::Subscription {
            meta: meta(&format!("sub-{service}-{consumer}")),
            service_id: service.into(),
            consumer_id: consumer.into(),
            state: state as i32,
            decided_by: decided_by.into(),
            reason: String::new(),
        };

    // Asking: pending only, for itself, to a published API.
    let pending = subscription("s1", "c1", SubscriptionState::Pending, "");
    assert!(apply(&state, Op::CreateSubscription(pending.clone())).is_ok());
    denied(&state, Op::CreateSubscription(subscription("s1", "c1", SubscriptionState::Approved, &me)));
    denied(&state, Op::CreateSubscription(subscription("s1", "c2", SubscriptionState::Pending, "")));
    let m = denied(&state, Op::CreateSubscription(subscription("s2", "c1", SubscriptionState::Pending, "")));
    assert!(m.contains("catalog"), "{m}");
    // Where the service approves automatically, it may be approved at once.
    let auto = self_service_state(SubscriptionMode::AutoApprove);
    let approved = subscription("s1", "c1", SubscriptionState::Approved, &me);
    assert!(crate::apply::apply(&auto, &as_actor(Op::CreateSubscription(approved), &me, Consumer, ""), 20).is_ok());

    // Deciding is the service team's: not approving itself, nor deleting a decision.
    let state = state.with_command(&as_actor(Op::CreateSubscription(pending.clone()), &me, Consumer, ""), 21).unwrap();
    denied(&state, Op::UpdateSubscription(subscription("s1", "c1", SubscriptionState::Approved, &me)));
    denied(&state, Op::DeleteSubscription("sub-s1-c1".into()));
    // ...but it may cancel, and ask again after.
    let cancelled = subscription("s1", "c1", SubscriptionState::Revoked, &me);
    let state = state.with_command(&as_actor(Op::UpdateSubscription(cancelled), &me, Consumer, ""), 22).unwrap();
    assert!(apply(&state, Op::UpdateSubscription(pending.clone())).is_ok());

    // Keys: its own, no preview, no model beyond what its keys reach.
    let key = |id: &str, consumer: &str, models: &[&str]| ApiKey {
        meta: meta(id),
        consumer_id: consumer.into(),
        secret_sha256: vec![2; 32],
        allowed_models: models.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    };
    assert!(apply(&state, Op::CreateApiKey(key("n1", "c1", &["fast"]))).is_ok());
    denied(&state, Op::CreateApiKey(key("n1", "c2", &["fast"])));
    denied(&state, Op::CreateApiKey(ApiKey { preview: true, ..key("n1", "c1", &["fast"]) }));
    denied(&state, Op::CreateApiKey(key("n1", "c1", &[])));
    denied(&state, Op::CreateApiKey(key("n1", "c1", &["fast", "gpt-*"])));
    assert!(apply(&state, Op::DeleteApiKey("kc1".into())).is_ok());
    denied(&state, Op::DeleteApiKey("kc2".into()));
    denied(&state, Op::UpdateApiKey(key("kc1", "c1", &["*"])));
    // A limit bound to its keys would not hold a new one.
    let limit = pb_config::Limit {
        meta: meta("l1"),
        name: "per-key".into(),
        unit: pb_config::LimitUnit::Requests as i32,
        amount: 10,
        window: pb_config::LimitWindow::Minute as i32,
        scope: pb_config::LimitScope::ApiKey as i32,
        api_key_ids: vec!["kc1".into()],
        ..Default::default()
    };
    let limited = state.with_command(&Command::new(Op::CreateLimit(limit), COMMAND_TIME_MS, "test").0, 23).unwrap();
    let m = denied(&limited, Op::CreateApiKey(key("n1", "c1", &["fast"])));
    assert!(m.contains("per-key"), "{m}");

    // Nothing else, and no consumer that does not exist.
    denied(&state, Op::UpdateService(orders_service()));
    denied(
        &state,
        Op::CreateConsumer(pb_config::Consumer { meta: meta("c3"), name: "c3".into(), ..Default::default() }),
    );
    let ghost = crate::consumer_actor("nobody");
    let cmd = as_actor(Op::CreateApiKey(key("n1", "nobody", &[])), &ghost, Consumer, "");
    assert!(matches!(crate::apply::apply(&state, &cmd, 20), Err(crate::ApplyError::PermissionDenied(_))));
    // No admin token may take the consumer role.
    let token = pb_config::AdminToken {
        meta: meta("t"),
        name: "t".into(),
        role: Consumer as i32,
        secret_sha256: vec![1; 32],
        ..Default::default()
    };
    assert!(
        crate::apply::apply(&state, &Command::new(Op::CreateAdminToken(token), COMMAND_TIME_MS, "test").0, 20).is_err()
    );
}

#[test]
fn a_self_service_key_is_no_new_quota_and_outlives_none_of_its_consumers_keys() {
    use pb_config::AdminRole::Consumer;
    use pb_config::{ApiKey, Limit, LimitScope, LimitUnit, LimitWindow, SubscriptionMode};
    let state = self_service_state(SubscriptionMode::Approval);
    let me = crate::consumer_actor("c1");
    let create = |state: &GatewayState, key: ApiKey| {
        crate::apply::apply(state, &as_actor(Op::CreateApiKey(key), &me, Consumer, ""), 30)
    };
    let key = |expires_at_ms: i64| ApiKey {
        meta: meta("n1"),
        consumer_id: "c1".into(),
        secret_sha256: vec![3; 32],
        allowed_models: vec!["fast".into()],
        expires_at_ms,
        ..Default::default()
    };
    let with = |state: &GatewayState, op: Op, index: u64| {
        state.with_command(&Command::new(op, COMMAND_TIME_MS, "test").0, index).unwrap()
    };
    // A per-key limit on a route (or global) would give each new key a quota of its own.
    let per_key = Limit {
        meta: meta("l2"),
        name: "each-key".into(),
        unit: LimitUnit::Requests as i32,
        amount: 10,
        window: LimitWindow::Minute as i32,
        scope: LimitScope::ApiKey as i32,
        global: true,
        ..Default::default()
    };
    let limited = with(&state, Op::CreateLimit(per_key), 40);
    assert!(
        matches!(create(&limited, key(0)), Err(crate::ApplyError::FailedPrecondition(m)) if m.contains("each-key"))
    );
    // No usable key to start from: the team issues the next one.
    let disabled = ApiKey { disabled: true, ..state.api_key("kc1").unwrap().as_ref().clone() };
    let without = with(&state, Op::UpdateApiKey(disabled), 41);
    assert!(matches!(create(&without, key(0)), Err(crate::ApplyError::PermissionDenied(_))));
    // Keys that expire: a new one may not outlive the longest-lived.
    let expiring = ApiKey { expires_at_ms: COMMAND_TIME_MS + 1000, ..state.api_key("kc1").unwrap().as_ref().clone() };
    let expiring = with(&state, Op::UpdateApiKey(expiring), 42);
    assert!(create(&expiring, key(0)).is_err(), "never expiring");
    assert!(create(&expiring, key(COMMAND_TIME_MS + 2000)).is_err());
    assert!(create(&expiring, key(COMMAND_TIME_MS + 1000)).is_ok());
}
