//! The data plane's incremental update (`GatewaySnapshot::update`) serves
//! exactly what compiling the whole state would, after any sequence of
//! changes, including renames, deletes that cascade, and route changes.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use proptest::prelude::*;
use tollgate_proto::config::v1::{
    ApiKey, AuthMode, Consumer, Meta, PathMatch, Route, RoutePath, Service, ServiceBackend, Target, route,
};
use tollgate_proto::raft::v1::Command;
use tollgate_proto::raft::v1::command::Op;
use tollgate_raft::GatewayState;
use tollgate_raft::secrets::SecretBox;

use super::snapshot::{GatewaySnapshot, Shared, TimeoutDefaults};
use crate::plumbing::UpstreamClients;

const IDS: [&str; 4] = ["i1", "i2", "i3", "i4"];
const NAMES: [&str; 3] = ["a", "b", "c"];

fn meta(id: &str) -> Option<Meta> {
    Some(Meta { id: id.into(), ..Default::default() })
}

fn arb_op() -> impl Strategy<Value = Op> {
    let id = || prop::sample::select(IDS.to_vec()).prop_map(str::to_string);
    let name = || prop::sample::select(NAMES.to_vec()).prop_map(str::to_string);
    let consumer = (id(), name()).prop_map(|(id, name)| Consumer { meta: meta(&id), name, ..Default::default() });
    let key = (id(), id(), any::<bool>()).prop_map(|(id, consumer_id, disabled)| ApiKey {
        meta: meta(&id),
        consumer_id,
        secret_sha256: vec![7; 32],
        disabled,
        ..Default::default()
    });
    let service = (id(), name()).prop_map(|(id, name)| Service {
        meta: meta(&id),
        name,
        targets: vec![Target { host: "127.0.0.1".into(), port: 9, weight: 1 }],
        ..Default::default()
    });
    let route = (id(), name(), id()).prop_map(|(id, name, service_id)| Route {
        meta: meta(&id),
        paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: format!("/{name}") }],
        name,
        auth: AuthMode::ApiKey as i32,
        backend: Some(route::Backend::Service(ServiceBackend { service_id })),
        ..Default::default()
    });
    prop_oneof![
        3 => consumer.clone().prop_map(Op::CreateConsumer),
        3 => consumer.prop_map(Op::UpdateConsumer),
        2 => id().prop_map(Op::DeleteConsumer),
        3 => key.clone().prop_map(Op::CreateApiKey),
        2 => key.prop_map(Op::UpdateApiKey),
        2 => id().prop_map(Op::DeleteApiKey),
        1 => service.prop_map(Op::CreateService),
        1 => route.clone().prop_map(Op::CreateRoute),
        1 => route.prop_map(Op::UpdateRoute),
        1 => id().prop_map(Op::DeleteRoute),
    ]
}

fn small_journal() -> tollgate_journal::Options {
    tollgate_journal::Options { segment_bytes: 1 << 20, ..Default::default() }
}

fn shared() -> Shared {
    let dir = tempfile::tempdir().unwrap();
    let engine = tollgate_storage::Engine::open(dir.path()).unwrap();
    let ai = Arc::new(crate::ai::snapshot::AiShared {
        ledger: Arc::new(
            crate::usage::UsageLedger::open(&engine, &dir.path().join("usage"), 1, small_journal()).unwrap(),
        ),
        cooldowns: Default::default(),
        clients: crate::plumbing::ProviderClients::none(),
        catalog: tollgate_llm::catalog::Catalog::builtin(),
    });
    let defaults = TimeoutDefaults { connect: Duration::from_secs(1), request: Duration::from_secs(1) };
    let clients = UpstreamClients::new(Duration::from_secs(1));
    Shared::new(clients, defaults, Default::default(), 1 << 20, ai, SecretBox::from_key_material(b"test"))
}

/// Everything a request can observe of a snapshot, in a comparable form.
fn observed(s: &GatewaySnapshot) -> String {
    let mut keys: Vec<String> =
        s.api_keys.iter().map(|(id, k)| format!("{id}:{}:{}", k.consumer_id, k.disabled)).collect();
    let mut consumers: Vec<String> = s.consumers.iter().map(|(id, c)| format!("{id}:{}", c.name())).collect();
    let mut names: Vec<String> = s.consumer_ids_by_name.iter().map(|(n, id)| format!("{n}->{id}")).collect();
    let mut services: Vec<String> = s.services.iter().map(|(id, c)| format!("{id}:{}", c.name)).collect();
    let routes: Vec<Option<String>> = NAMES
        .iter()
        .map(|n| s.router.find(&Method::GET, None, &format!("/{n}/x")).map(|m| m.route.id.clone()))
        .collect();
    for list in [&mut keys, &mut consumers, &mut names, &mut services] {
        list.sort();
    }
    format!(
        "rev {} keys {keys:?} consumers {consumers:?} names {names:?} services {services:?} routes {routes:?}",
        s.revision
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn an_updated_snapshot_serves_what_a_full_compile_would(
        ops in prop::collection::vec(arb_op(), 1..40),
        batch in 1usize..6,
    ) {
        let shared = shared();
        let mut state = GatewayState::default();
        let mut served = GatewaySnapshot::compile(&state, &shared);
        let mut index = 0;
        for chunk in ops.chunks(batch) {
            // Several commands per update, as `watch` coalesces bursts.
            for op in chunk {
                index += 1;
                let cmd = Command { op: Some(op.clone()), proposed_at_ms: 1, ..Default::default() };
                if let Ok(next) = state.with_command(&cmd, index) {
                    state = next;
                }
            }
            let touched = state.changes_since(served.revision);
            prop_assert!(touched.is_some(), "the journal reaches back to the served revision");
            served = served.update(&state, touched.unwrap(), &shared);
            prop_assert_eq!(observed(&served), observed(&GatewaySnapshot::compile(&state, &shared)));
        }
    }
}
