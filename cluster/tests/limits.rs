//! Cluster-wide rate limits through quota leases (issue 14, DESIGN §5), on
//! three real `tollgate` processes: whichever nodes the traffic goes to,
//! whatever dies or is cut off, a window never admits more than the limit,
//! and under steady over-demand it admits nearly all of it.
//!
//! Admissions are attributed to windows by the `X-RateLimit-Reset` each
//! admitted response carries: the end of the window its unit was leased
//! in, as the replicated state opened it.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{open_route, upstream};
use tokio::sync::Mutex;
use tollgate_cluster::harness::{Cluster, ClusterOptions};
use tollgate_proto::admin::v1::{GetNodeStatusRequest, PutEntityRequest};
use tollgate_proto::config::v1::{AuthMode, Limit, LimitScope, LimitUnit, LimitWindow, PathMatch, Route, RoutePath};

/// Per second: the test runs several whole windows in a few seconds.
const LIMIT: u64 = 100;

/// (node, status, window end in Unix seconds for admitted requests).
type Outcomes = Arc<Mutex<Vec<(u64, u16, Option<u64>)>>>;

/// A 3-node cluster with an open route limited to `LIMIT` requests per
/// second for the whole route, on every node's data plane.
async fn limited_cluster(dir: &std::path::Path) -> Cluster {
    limited_cluster_beating_every(dir, ClusterOptions::new(3, dir).heartbeat_ms).await
}

/// As `limited_cluster`, with Raft heartbeats every `heartbeat_ms` and
/// election timeouts of 6 to 12 heartbeats (the harness's own 600 to
/// 1,200 ms at its 100). (A heartbeat interval is also
/// openraft's timeout for each replication call: it must exceed the round
/// trip between nodes.)
async fn limited_cluster_beating_every(dir: &std::path::Path, heartbeat_ms: u64) -> Cluster {
    // What these tests measure is the lease protocol's accuracy, not how fast
    // a commit is on two cores shared with the rest of the test suite: a
    // request waits up to 50 ms (not the default 5) for a grant in flight,
    // so a slow commit does not turn into refusals below the 95 % floor.
    // Admitted responses name their window (X-RateLimit-Reset): on here.
    let extra_config = "[limits]\nlease_wait_ms = 50\nadmitted_headers = true\n".into();
    let options = ClusterOptions {
        extra_config,
        heartbeat_ms,
        election_timeout_min_ms: heartbeat_ms * 6,
        election_timeout_max_ms: heartbeat_ms * 12,
        ..ClusterOptions::new(3, dir)
    };
    let cluster = Cluster::up(options).await.expect("a 3-node cluster starts");
    let route_id = open_route(&cluster, upstream().await).await;
    let mut admin = cluster.admin(1).await.unwrap();
    let limit = Limit {
        name: "route-rps".into(),
        unit: LimitUnit::Requests.into(),
        amount: LIMIT,
        window: LimitWindow::Second.into(),
        scope: LimitScope::Route.into(),
        route_ids: vec![route_id],
        ..Default::default()
    };
    let request = PutEntityRequest {
        kind: "limit".into(),
        entity: prost::Message::encode_to_vec(&limit),
        create: true,
        id_or_name: String::new(),
    };
    let stored = admin.put_entity(request).await.unwrap().into_inner();
    let stored: Limit = prost::Message::decode(stored.entity.as_slice()).unwrap();
    let revision = stored.meta.unwrap().revision;
    for node in cluster.nodes() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut admin = cluster.admin(node.id).await.unwrap();
            let status = admin.get_node_status(GetNodeStatusRequest {}).await.unwrap().into_inner();
            if status.data_plane_index >= revision {
                break;
            }
            assert!(Instant::now() < deadline, "node {} never served the limit", node.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cluster
}

/// Sends `rate` requests per second to `proxy` until `until`, from four
/// keep-alive connections, recording each outcome.
fn offer(node: u64, proxy: SocketAddr, rate: u32, until: Instant, outcomes: Outcomes) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let outcomes = outcomes.clone();
                tokio::spawn(async move {
                    use http_body_util::{BodyExt, Empty};
                    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                        .build_http::<Empty<bytes::Bytes>>();
                    let mut tick = tokio::time::interval(Duration::from_secs_f64(4.0 / f64::from(rate)));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    while Instant::now() < until {
                        tick.tick().await;
                        let uri = format!("http://{proxy}/x").parse().unwrap();
                        let outcome = match tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await {
                            Ok(Ok(response)) => {
                                let status = response.status().as_u16();
                                let reset = response
                                    .headers()
                                    .get("x-ratelimit-reset")
                                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                                let _ = response.into_body().collect().await;
                                (node, status, reset.filter(|_| status == 200))
                            }
                            // No answer: the request got no response and is not counted.
                            _ => continue,
                        };
                        outcomes.lock().await.push(outcome);
                    }
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
    })
}

/// Admitted requests per window (by the window's end second).
async fn admitted_per_window(outcomes: &Outcomes) -> BTreeMap<u64, u64> {
    let mut per_window = BTreeMap::new();
    for (_, status, reset) in outcomes.lock().await.iter() {
        if *status == 200 {
            *per_window.entry(reset.expect("an admitted response names its window")).or_default() += 1;
        }
    }
    per_window
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn assert_never_over(per_window: &BTreeMap<u64, u64>) {
    for (end, admitted) in per_window {
        assert!(*admitted <= LIMIT, "the window ending at {end} admitted {admitted} > {LIMIT}: {per_window:?}");
    }
}

/// 2 x LIMIT per second, 70/20/10 across the nodes, with every round trip
/// between nodes `delay` longer: no window admits more than the limit, and
/// every window the load covered whole admits at least `floor` of it.
async fn uneven_load_at_twice_the_limit(delay: Duration, heartbeat_ms: u64, floor: u64) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = limited_cluster_beating_every(dir.path(), heartbeat_ms).await;
    cluster.delay_links(delay);
    let shares = [(1, 140), (2, 40), (3, 20)];
    // The same load for two seconds first, not measured: the nodes have
    // just started (their first seconds share the cores with start-up
    // work), and each sizes its asks by the rate it has seen.
    let warm_up = Instant::now() + Duration::from_secs(2);
    let discarded: Outcomes = Default::default();
    let load: Vec<_> = shares
        .iter()
        .map(|(id, rate)| offer(*id, cluster.node(*id).proxy, *rate, warm_up, discarded.clone()))
        .collect();
    for task in load {
        task.await.unwrap();
    }
    let outcomes: Outcomes = Default::default();
    let started = unix_secs();
    let until = Instant::now() + Duration::from_secs(5);
    let ended = started + 5;
    let load: Vec<_> =
        shares.iter().map(|(id, rate)| offer(*id, cluster.node(*id).proxy, *rate, until, outcomes.clone())).collect();
    for task in load {
        task.await.unwrap();
    }
    let per_window = admitted_per_window(&outcomes).await;
    assert_never_over(&per_window);
    // Windows the load covered whole: ending after the first full second
    // and no later than the second the load stopped in began.
    let whole: Vec<_> = per_window.iter().filter(|(end, _)| **end >= started + 2 && **end < ended).collect();
    let mut statuses: BTreeMap<(u64, u16), u64> = BTreeMap::new();
    for (node, status, _) in outcomes.lock().await.iter() {
        *statuses.entry((*node, *status)).or_default() += 1;
    }
    println!("delay {delay:?}: admitted per window: {per_window:?}; (node, status): count {statuses:?}");
    assert!(whole.len() >= 2, "at least two whole windows: {per_window:?} ({started}..{ended}); {statuses:?}");
    for (end, admitted) in whole {
        assert!(
            *admitted * 100 >= LIMIT * floor,
            "the window ending at {end} admitted only {admitted}: {per_window:?}; (node, status): count {statuses:?}"
        );
    }
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_load_at_twice_the_limit_admits_at_most_the_limit_and_nearly_all_of_it() {
    uneven_load_at_twice_the_limit(Duration::ZERO, 100, 95).await;
}

/// The same with 80 ms more on every round trip between nodes (with
/// 150 ms more, this harness's cluster, heartbeat 100 ms, lost its
/// followers): a grant takes a few round trips, and a busy node that sized
/// its asks by what it could spend, not by what it was asked for, kept its
/// asks small while its requests were refused. The lowest whole window of
/// five runs of release builds was 94, 85, 96, 96 and 94 before asks counted
/// those refusals, and 97 to 99 after (docs/benchmarks.md); debug builds
/// after, as CI runs them, went as low as 93. The floor is 90: a guard
/// against the old sizing that catches its worst runs, not every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_load_over_a_slow_network_still_admits_nearly_all_of_the_limit() {
    uneven_load_at_twice_the_limit(Duration::from_millis(80), 100, 90).await;
}

/// 150 ms more on every round trip: past the default heartbeat (100 ms),
/// which is also openraft's timeout for each replication call, so the
/// cluster needs its heartbeats raised (here to 400 ms, as README says).
/// A follower's grant then takes two of those round trips or more, and a
/// one-second window admits less of its limit. Before lease asks stopped
/// waiting for the asking node to apply them (up to a heartbeat more), the
/// whole windows of four such runs were 25 to 81 of 100 (three of the four
/// went below 50); of six runs after, 57 to 99 (docs/benchmarks.md). The
/// floor of 50 is a weak guard: with nextest's retries it catches the old
/// behaviour about half the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_load_over_a_very_slow_network_with_raised_heartbeats_still_admits_most_of_the_limit() {
    uneven_load_at_twice_the_limit(Duration::from_millis(150), 400, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_and_a_killed_leader_never_let_a_window_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = limited_cluster(dir.path()).await;
    let outcomes: Outcomes = Default::default();
    let until = Instant::now() + Duration::from_secs(8);
    let load: Vec<_> = [(1, 80), (2, 80), (3, 80)]
        .iter()
        .map(|(id, rate)| offer(*id, cluster.node(*id).proxy, *rate, until, outcomes.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let leader = cluster.leader().await.unwrap();
    let follower = cluster.nodes().iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    cluster.kill(follower).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.start(follower).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let leader = cluster.leader().await.unwrap();
    cluster.kill(leader).await.unwrap();
    for task in load {
        task.await.unwrap();
    }
    let per_window = admitted_per_window(&outcomes).await;
    assert_never_over(&per_window);
    assert!(per_window.values().sum::<u64>() > 0, "something was admitted");
    println!("admitted per window: {per_window:?}");
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_admits_nothing_beyond_the_leases_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = limited_cluster(dir.path()).await;
    let outcomes: Outcomes = Default::default();
    let leader = cluster.leader().await.unwrap();
    let cut = cluster.nodes().iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    let until = Instant::now() + Duration::from_secs(6);
    let load: Vec<_> = cluster.nodes().iter().map(|n| offer(n.id, n.proxy, 60, until, outcomes.clone())).collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let others: Vec<u64> = cluster.nodes().iter().map(|n| n.id).filter(|id| *id != cut).collect();
    cluster.partition(vec![vec![cut], others]);
    let cut_at = unix_secs();
    for task in load {
        task.await.unwrap();
    }
    cluster.heal();
    let outcomes_now = outcomes.lock().await.clone();
    // Windows that opened after the partition (and after the one it may
    // have leased ahead for): the cut-off node could get no lease for them,
    // so it admitted none of their units.
    let after: Vec<_> = outcomes_now
        .iter()
        .filter(|(node, status, reset)| *node == cut && *status == 200 && reset.is_some_and(|end| end > cut_at + 2))
        .collect();
    assert!(after.is_empty(), "node {cut} admitted in windows opened after it was cut off: {after:?}");
    let majority_after = outcomes_now
        .iter()
        .filter(|(node, status, reset)| *node != cut && *status == 200 && reset.is_some_and(|end| end > cut_at + 2))
        .count();
    assert!(majority_after > 0, "the majority kept admitting");
    assert_never_over(&admitted_per_window(&outcomes).await);
    cluster.down().await;
}

/// A budget spent through the nodes in turn stops spending on every node:
/// the money granted across the cluster never exceeds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_spent_through_one_node_stops_spending_on_every_node() {
    use tollgate_loadtest::mock::llm::LlmMockConfig;
    use tollgate_proto::admin::v1::CreateApiKeyRequest;
    use tollgate_proto::admin::v1::ai_service_client::AiServiceClient;
    use tollgate_proto::config::v1::{Consumer, ModelPrice, Provider, ProviderCredential, ProviderKind};

    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::up(ClusterOptions::new(3, dir.path())).await.expect("a 3-node cluster starts");
    let mock = tollgate_loadtest::mock::openai::MockOpenAi::spawn(LlmMockConfig { tokens: 50, ..Default::default() })
        .await
        .unwrap();
    let mut admin = cluster.admin(1).await.unwrap();
    let consumer = admin.create_consumer(Consumer { name: "acme".into(), ..Default::default() }).await.unwrap();
    let consumer_id = consumer.into_inner().meta.unwrap().id;
    let key = admin
        .create_api_key(CreateApiKeyRequest { consumer: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    let route = Route {
        name: "llm".into(),
        paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/v1".into() }],
        auth: AuthMode::ApiKey as i32,
        ai_gateway: true,
        ..Default::default()
    };
    admin.create_route(route).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", cluster.node(1).admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = cluster.options().admin_token.clone();
    let mut ai = AiServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(request)
    });
    let credentials = vec![ProviderCredential { id: "k1".into(), secret: "sk-k1".into(), ..Default::default() }];
    let provider = Provider {
        name: "openai".into(),
        kind: ProviderKind::Openai as i32,
        base_url: format!("{}/v1", mock.url()),
        credentials,
        ..Default::default()
    };
    ai.create_provider(provider).await.unwrap();
    // 10 micro-dollars a token either way.
    let price = ModelPrice {
        name: "openai/gpt-4o-mini".into(),
        mode: "chat".into(),
        input_micros_per_mtok: 10_000_000,
        output_micros_per_mtok: 10_000_000,
        ..Default::default()
    };
    ai.put_model_price(price).await.unwrap();
    const BUDGET_MICROS: u64 = 10_000;
    let budget = Limit {
        name: "acme-daily".into(),
        unit: LimitUnit::CostMicros.into(),
        amount: BUDGET_MICROS,
        window: LimitWindow::Day.into(),
        scope: LimitScope::Consumer.into(),
        consumer_ids: vec![consumer_id],
        ..Default::default()
    };
    let request = PutEntityRequest {
        kind: "limit".into(),
        entity: prost::Message::encode_to_vec(&budget),
        create: true,
        id_or_name: String::new(),
    };
    let stored = admin.put_entity(request).await.unwrap().into_inner();
    let revision = prost::Message::decode(stored.entity.as_slice()).map(|l: Limit| l.meta.unwrap().revision).unwrap();
    for node in cluster.nodes() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster
            .admin(node.id)
            .await
            .unwrap()
            .get_node_status(GetNodeStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .data_plane_index
            < revision
        {
            assert!(Instant::now() < deadline, "node {} never served the budget", node.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Spend through the nodes in turn until every node refuses.
    let mut spent_micros = 0;
    let mut refusals_in_a_row = 0;
    let mut calls = 0;
    while refusals_in_a_row < 3 {
        calls += 1;
        assert!(calls < 200, "the budget never stopped spending ({spent_micros} micro-dollars)");
        let node = cluster.node((calls % 3 + 1) as u64);
        let (status, body) = chat(node.proxy, &key).await;
        match status {
            200 => {
                refusals_in_a_row = 0;
                spent_micros += body["usage"]["total_tokens"].as_u64().unwrap() * 10;
            }
            // No grant in time (a busy machine): not a verdict on the budget.
            429 if body["error"]["message"].as_str().is_some_and(|m| m.contains("could not be checked")) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            429 => {
                refusals_in_a_row += 1;
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("acme-daily") && message.contains("resets at"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(spent_micros <= BUDGET_MICROS, "spent {spent_micros} of {BUDGET_MICROS}");
    // Each call reserves its prompt plus max_tokens (60) and is reconciled
    // to its 50 output tokens: spending stops only once what is left cannot
    // hold one more reservation (and leases stranded on the other nodes).
    assert!(spent_micros * 10 >= BUDGET_MICROS * 7, "only {spent_micros} of {BUDGET_MICROS} spent");
    cluster.down().await;
}

async fn chat(proxy: SocketAddr, key: &str) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let body = serde_json::json!({"model": "openai/gpt-4o-mini", "max_tokens": 60, "messages": [{"role": "user", "content": "Say something about foxes."}]});
    let request = http::Request::post(format!("http://{proxy}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.expect("the proxy answers");
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}
