//! Property tests of `apply` through the real state machine on RocksDB:
//! invariants hold after any command sequence, a rejected command changes
//! nothing, and replaying the same log gives byte-identical state.

use std::collections::HashSet;
use std::io;

use futures::stream;
use openraft::EntryPayload;
use openraft::alias::EntryOf;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use proptest::prelude::*;
use tollgate_proto::config::v1::{
    AliasTarget, ApiKey, AuthMode, Consumer, Meta, ModelAlias, ModelPrice, PathMatch, Provider, ProviderCredential,
    ProviderKind, Route, RoutePath, Service, Target,
};
use tollgate_proto::raft::v1::command::Op;
use tollgate_storage::{Cf, Engine};

use crate::state::GatewayState;
use crate::state_machine::StateMachine;
use crate::types::{Command, TypeConfig};

const IDS: [&str; 4] = ["i1", "i2", "i3", "i4"];
const NAMES: [&str; 5] = ["a", "b", "c", "d", "not valid"];

fn meta(id: &str) -> Option<Meta> {
    Some(Meta { id: id.to_string(), ..Default::default() })
}

fn arb_op() -> impl Strategy<Value = Op> {
    let id = || prop::sample::select(IDS.to_vec()).prop_map(str::to_string);
    let name = || prop::sample::select(NAMES.to_vec()).prop_map(str::to_string);
    let service = (id(), name(), any::<bool>()).prop_map(|(id, name, has_target)| Service {
        meta: meta(&id),
        name,
        targets: if has_target { vec![Target { host: "127.0.0.1".into(), port: 8000, weight: 1 }] } else { vec![] },
        ..Default::default()
    });
    let route = (id(), name(), id(), any::<bool>()).prop_map(|(id, name, service_id, good_path)| Route {
        meta: meta(&id),
        name,
        service_id,
        paths: vec![RoutePath {
            kind: PathMatch::Prefix as i32,
            path: if good_path { "/api".into() } else { "api".into() },
        }],
        auth: AuthMode::ApiKey as i32,
        ..Default::default()
    });
    let consumer = (id(), name()).prop_map(|(id, name)| Consumer { meta: meta(&id), name, ..Default::default() });
    let key = (id(), id(), any::<bool>(), any::<bool>()).prop_map(|(id, consumer_id, good_hash, disabled)| ApiKey {
        meta: meta(&id),
        consumer_id,
        secret_sha256: if good_hash { vec![7; 32] } else { vec![7; 3] },
        disabled,
        ..Default::default()
    });
    let provider = (id(), name(), any::<bool>(), any::<bool>()).prop_map(|(id, name, sealed, plaintext)| Provider {
        meta: meta(&id),
        name,
        kind: ProviderKind::Openai as i32,
        base_url: "https://api.openai.com/v1".into(),
        credentials: vec![ProviderCredential {
            id: "k1".into(),
            sealed_secret: if sealed { vec![1; 40] } else { vec![] },
            secret: if plaintext { "sk-live".into() } else { String::new() },
            ..Default::default()
        }],
        ..Default::default()
    });
    let alias = (id(), name(), id()).prop_map(|(id, name, provider_id)| ModelAlias {
        meta: meta(&id),
        name,
        targets: vec![AliasTarget { provider_id, model: "gpt-4o".into(), weight: 1, priority: 0 }],
        ..Default::default()
    });
    let price =
        (id(), prop::sample::select(vec!["openai/gpt-4o", "openai/gpt-4o-mini", "no-namespace"]), 0u64..10_000_000)
            .prop_map(|(id, name, input)| ModelPrice {
                meta: meta(&id),
                name: name.to_string(),
                input_micros_per_mtok: input,
                ..Default::default()
            });
    let price_name = prop::sample::select(vec!["i1", "i2", "openai/gpt-4o"]).prop_map(str::to_string);
    prop_oneof![
        provider.clone().prop_map(Op::CreateProvider),
        provider.prop_map(Op::UpdateProvider),
        id().prop_map(Op::DeleteProvider),
        alias.clone().prop_map(Op::CreateModelAlias),
        alias.prop_map(Op::UpdateModelAlias),
        id().prop_map(Op::DeleteModelAlias),
        price.prop_map(Op::PutModelPrice),
        price_name.prop_map(Op::DeleteModelPrice),
        service.clone().prop_map(Op::CreateService),
        service.prop_map(Op::UpdateService),
        id().prop_map(Op::DeleteService),
        route.clone().prop_map(Op::CreateRoute),
        route.prop_map(Op::UpdateRoute),
        id().prop_map(Op::DeleteRoute),
        consumer.clone().prop_map(Op::CreateConsumer),
        consumer.prop_map(Op::UpdateConsumer),
        id().prop_map(Op::DeleteConsumer),
        key.clone().prop_map(Op::CreateApiKey),
        key.prop_map(Op::UpdateApiKey),
        id().prop_map(Op::DeleteApiKey),
    ]
}

fn entry(index: u64, op: Op) -> EntryOf<TypeConfig> {
    EntryOf::<TypeConfig>::new_normal(
        openraft::testing::log_id::<TypeConfig>(1, 1, index),
        Command::new(op, 1_700_000_000_000 + index as i64, "test"),
    )
}

async fn apply_batch(sm: &mut StateMachine, entries: Vec<EntryOf<TypeConfig>>) {
    let items: Vec<io::Result<_>> = entries.into_iter().map(|e| Ok((e, None))).collect();
    sm.apply(stream::iter(items)).await.expect("storage works");
}

fn disk_state(engine: &Engine) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine.scan_prefix(Cf::State, b"").unwrap()
}

fn check_invariants(state: &GatewayState) {
    for route in state.routes() {
        assert!(
            route.backend_service_id().is_some_and(|s| state.service(s).is_some()),
            "route {} points at a missing service",
            route.name
        );
    }
    for key in state.api_keys() {
        assert!(state.consumer(&key.consumer_id).is_some(), "a key outlived its consumer");
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

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_command_sequence_keeps_invariants_and_replays_identically(
        ops in prop::collection::vec(arb_op(), 1..60),
        batch in 1usize..8,
    ) {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(dir.path().join("a")).unwrap();
            let (mut sm, states) = StateMachine::open(engine.clone(), dir.path().join("snap-a")).unwrap();
            let entries: Vec<_> = ops.iter().cloned().enumerate().map(|(i, op)| entry(i as u64 + 1, op)).collect();

            // One entry at a time: check invariants and no-op rejections step by step.
            for e in entries.clone() {
                let before = disk_state(&engine);
                let expected = crate::apply::apply(&states.borrow(), &match &e.payload {
                    EntryPayload::Normal(c) => c.0.clone(),
                    _ => unreachable!(),
                }, e.index());
                apply_batch(&mut sm, vec![e]).await;
                let state = states.borrow().clone();
                check_invariants(&state);
                let after = disk_state(&engine);
                prop_assert_eq!(&state.encoded_entries(), &after, "memory and disk agree");
                if expected.is_err() {
                    prop_assert_eq!(before, after, "a rejected command changed state");
                }
            }

            // The same log, in batches of another size, into a fresh store.
            let engine_b = Engine::open(dir.path().join("b")).unwrap();
            let (mut sm_b, _) = StateMachine::open(engine_b.clone(), dir.path().join("snap-b")).unwrap();
            for chunk in entries.chunks(batch) {
                apply_batch(&mut sm_b, chunk.to_vec()).await;
            }
            prop_assert_eq!(disk_state(&engine), disk_state(&engine_b), "replay is byte-identical");

            // Reloading from disk gives the same in-memory state.
            drop(sm);
            let (_reopened, reloaded) = StateMachine::open(engine.clone(), dir.path().join("snap-a")).unwrap();
            prop_assert_eq!(reloaded.borrow().encoded_entries(), disk_state(&engine));
            prop_assert_eq!(reloaded.borrow().applied_index(), entries.len() as u64);
            Ok(())
        })?;
    }
}

#[test]
fn snapshot_round_trip_restores_identical_state() {
    run(async {
        use openraft::RaftSnapshotBuilder;
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("a")).unwrap();
        let (mut sm, _) = StateMachine::open(engine.clone(), dir.path().join("snap-a")).unwrap();
        let svc = Service {
            meta: meta("s1"),
            name: "orders".into(),
            targets: vec![Target { host: "127.0.0.1".into(), port: 9, weight: 1 }],
            ..Default::default()
        };
        let consumer = Consumer { meta: meta("c1"), name: "acme".into(), ..Default::default() };
        apply_batch(&mut sm, vec![entry(1, Op::CreateService(svc)), entry(2, Op::CreateConsumer(consumer))]).await;

        let mut builder = sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.unwrap().index, 2);

        let engine_b = Engine::open(dir.path().join("b")).unwrap();
        let (mut sm_b, states_b) = StateMachine::open(engine_b.clone(), dir.path().join("snap-b")).unwrap();
        // Something stale that the snapshot must replace.
        let stale = Consumer { meta: meta("old"), name: "stale".into(), ..Default::default() };
        apply_batch(&mut sm_b, vec![entry(1, Op::CreateConsumer(stale))]).await;
        sm_b.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();

        assert_eq!(disk_state(&engine), disk_state(&engine_b));
        assert_eq!(states_b.borrow().applied_index(), 2);
        assert!(states_b.borrow().find_consumer("stale").is_none());
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
