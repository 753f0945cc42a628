//! Multi-process fault tests (DESIGN §4, §9): real `tollgate` processes,
//! real RocksDB, peer traffic through relays the harness controls. Every test
//! is bounded and stops its cluster by itself.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::upstream;
use tokio::sync::Mutex;
use tollgate_cluster::harness::{Admin, Cluster, ClusterOptions};
use tollgate_cluster::history::{Event, History, Op, Outcome};
use tollgate_proto::admin::v1::{GetNodeStatusRequest, GetRequest, ListRequest};
use tollgate_proto::config::v1::{AuthMode, Consumer, PathMatch, Route, RoutePath, Service, Target};

async fn up(dir: &std::path::Path, tune: impl FnOnce(&mut ClusterOptions)) -> Cluster {
    let mut options = ClusterOptions::new(3, dir);
    tune(&mut options);
    Cluster::up(options).await.expect("a 3-node cluster starts")
}

async fn write(cluster: &Cluster, node: u64, name: &str) -> Result<u64, String> {
    let mut admin = cluster.admin(node).await.map_err(|e| e.to_string())?;
    admin
        .create_consumer(Consumer { name: name.into(), ..Default::default() })
        .await
        .map(|r| r.into_inner().meta.map_or(0, |m| m.revision))
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

async fn names(cluster: &Cluster, node: u64, stale: bool) -> Result<BTreeSet<String>, String> {
    let mut admin = cluster.admin(node).await.map_err(|e| e.to_string())?;
    admin
        .list_consumers(ListRequest { stale })
        .await
        .map(|r| r.into_inner().consumers.into_iter().map(|c| c.name).collect())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

async fn http_get(proxy: std::net::SocketAddr, path: &str) -> u16 {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let response = client.get(format!("http://{proxy}{path}").parse().unwrap()).await.expect("proxy answers");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

async fn open_route(cluster: &Cluster, via: u64, upstream: std::net::SocketAddr) -> u64 {
    let mut admin = cluster.admin(via).await.unwrap();
    admin
        .create_service(Service {
            name: "svc".into(),
            targets: vec![Target { host: "127.0.0.1".into(), port: upstream.port().into(), weight: 1 }],
            ..Default::default()
        })
        .await
        .unwrap();
    let route = admin
        .create_route(Route {
            name: "open".into(),
            service_id: "svc".into(),
            paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/".into() }],
            auth: AuthMode::None as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    route.meta.unwrap().revision
}

async fn wait_data_plane(cluster: &Cluster, node: u64, revision: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut admin = cluster.admin(node).await.unwrap();
        let status = admin.get_node_status(GetNodeStatusRequest {}).await.unwrap().into_inner();
        if status.data_plane_index >= revision {
            return;
        }
        assert!(Instant::now() < deadline, "node {node} data plane stuck at {} < {revision}", status.data_plane_index);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn follower_of(cluster: &Cluster, leader: u64) -> u64 {
    cluster.nodes().iter().map(|n| n.id).find(|id| *id != leader).unwrap()
}

/// Every node's role as it reports it, once `isolated` (a leader cut off
/// from the others) says it has no quorum; its lease must run out first.
async fn leader_roles(cluster: &Cluster, isolated: u64) -> Vec<(u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut roles = Vec::new();
        for node in cluster.nodes() {
            roles.push((node.id, cluster.node_status(node.id).await.unwrap().role));
        }
        if roles.iter().any(|(id, role)| *id == isolated && role.starts_with("leader (no quorum since ")) {
            return roles;
        }
        assert!(Instant::now() < deadline, "node {isolated} never reported its lost quorum: {roles:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A minority's error is a sentence naming the members it cannot reach,
/// not openraft's debug text.
fn assert_names_members(error: &str, unreachable: &[u64]) {
    for id in unreachable {
        assert!(error.contains(&format!("node {id} (")), "the error names node {id}: {error}");
    }
    assert!(!error.contains("BasicNode") && !error.contains("voters:"), "no debug text: {error}");
}

/// One write's outcome, timed.
struct Timed {
    name: String,
    invoked: Instant,
    completed: Instant,
    result: Result<(), String>,
}

/// Writes unique consumers through `node`, one after the other, until `stop`.
fn write_through(mut admin: Admin, node: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Timed>> {
    tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (name, invoked) = (format!("via-{node}-{i}"), Instant::now());
            let result = admin
                .create_consumer(Consumer { name: name.clone(), ..Default::default() })
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
            outcomes.push(Timed { name, invoked, completed: Instant::now(), result });
        }
        outcomes
    })
}

/// Clients that write unique names and read the whole set, rotating to the
/// next node whenever one fails, recording everything in a history.
struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    history: Arc<Mutex<History>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    fn start(cluster: Arc<Mutex<Cluster>>, writers: usize, prefix: &str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let history = Arc::new(Mutex::new(History::default()));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (cluster, stop, acked, history) = (cluster.clone(), stop.clone(), acked.clone(), history.clone());
            let prefix = format!("{prefix}-w{w}");
            tasks.push(tokio::spawn(async move {
                let mut node = w as u64 % 3 + 1;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let element = format!("{prefix}-{i}");
                    i += 1;
                    let invoked = Instant::now();
                    let result = {
                        let c = cluster.lock().await;
                        let admin = c.admin(node).await;
                        drop(c);
                        match admin {
                            Ok(mut admin) => admin
                                .create_consumer(Consumer { name: element.clone(), ..Default::default() })
                                .await
                                .map(|_| ())
                                .map_err(|_| ()),
                            Err(_) => Err(()),
                        }
                    };
                    let outcome = if result.is_ok() { Outcome::Ok } else { Outcome::Unknown };
                    if result.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        node = node % 3 + 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    history.lock().await.record(Event {
                        client: prefix.clone(),
                        invoked,
                        completed: Instant::now(),
                        op: Op::Write { element, outcome },
                    });
                }
            }));
        }
        {
            let (cluster, stop, history) = (cluster.clone(), stop.clone(), history.clone());
            tasks.push(tokio::spawn(async move {
                let mut node = 1;
                while !stop.load(Ordering::Relaxed) {
                    let invoked = Instant::now();
                    let seen = {
                        let c = cluster.lock().await;
                        let admin = c.admin(node).await;
                        drop(c);
                        match admin {
                            Ok(mut admin) => admin
                                .list_consumers(ListRequest { stale: false })
                                .await
                                .ok()
                                .map(|r| r.into_inner().consumers.into_iter().map(|c| c.name).collect()),
                            Err(_) => None,
                        }
                    };
                    let completed = Instant::now();
                    node = node % 3 + 1;
                    history.lock().await.record(Event {
                        client: "reader".into(),
                        invoked,
                        completed,
                        op: Op::Read { seen },
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        Workload { stop, acked, history, tasks }
    }

    async fn wait_acked(&self, at_least: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acked.load(Ordering::Relaxed) < at_least {
            assert!(Instant::now() < deadline, "only {} writes acknowledged", self.acked.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        Arc::try_unwrap(self.history).expect("workers finished").into_inner()
    }
}

async fn agreed_final_state(cluster: &Cluster) -> BTreeSet<String> {
    let mut states = Vec::new();
    for node in cluster.nodes() {
        states.push(names(cluster, node.id, false).await.expect("linearizable read after recovery"));
    }
    for (i, s) in states.iter().enumerate().skip(1) {
        assert_eq!(s, &states[0], "node {} differs from node 1", i + 1);
    }
    states.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_follower_reaches_every_node_and_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = up(dir.path(), |_| {}).await;
    let leader = cluster.leader().await.unwrap();
    let follower = follower_of(&cluster, leader);
    let upstream = upstream().await;

    let revision = open_route(&cluster, follower, upstream).await;
    for node in cluster.nodes() {
        wait_data_plane(&cluster, node.id, revision).await;
        assert_eq!(http_get(node.proxy, "/hello").await, 200, "node {} serves the new route", node.id);
        let mut admin = cluster.admin(node.id).await.unwrap();
        let route = admin.get_route(GetRequest { id_or_name: "open".into(), stale: false }).await.unwrap().into_inner();
        assert_eq!(route.meta.unwrap().revision, revision);
    }
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Arc::new(Mutex::new(up(dir.path(), |_| {}).await));
    let workload = Workload::start(cluster.clone(), 2, "kill");
    workload.wait_acked(40, Duration::from_secs(60)).await;

    let old_leader = cluster.lock().await.leader().await.unwrap();
    cluster.lock().await.kill(old_leader).await.unwrap();
    let before = workload.acked.load(Ordering::Relaxed);
    workload.wait_acked(before + 40, Duration::from_secs(60)).await;
    let new_leader = cluster.lock().await.leader().await.unwrap();
    assert_ne!(new_leader, old_leader, "a new leader took over");
    let history = workload.finish().await;

    let mut cluster = Arc::try_unwrap(cluster).ok().expect("workload done").into_inner();
    cluster.start(old_leader).await.unwrap();
    cluster.wait_healthy(Duration::from_secs(60)).await.unwrap();
    let final_state = agreed_final_state(&cluster).await;
    let violations = history.check(&final_state);
    assert!(violations.is_empty(), "history violations: {violations:?}");
    assert!(history.acknowledged() >= 80 && history.reads() > 0);
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = up(dir.path(), |o| {
        o.snapshot_after_logs = 100;
        o.logs_kept_after_snapshot = 10;
    })
    .await;
    let leader = cluster.leader().await.unwrap();
    let follower = follower_of(&cluster, leader);
    cluster.stop(follower).await.unwrap();

    let writes = 600;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut admin = cluster.admin(leader).await.unwrap();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= writes {
                    return;
                }
                admin.create_consumer(Consumer { name: format!("bulk-{i}"), ..Default::default() }).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let leader_status = cluster.node_status(leader).await.unwrap();

    cluster.start(follower).await.unwrap();
    cluster.wait_healthy(Duration::from_secs(90)).await.unwrap();
    let on_follower = names(&cluster, follower, true).await.unwrap();
    let on_leader = names(&cluster, leader, true).await.unwrap();
    assert_eq!(on_follower.len(), writes);
    assert_eq!(on_follower, on_leader, "identical state");

    // The leader purged the log long before: the follower must have installed a snapshot.
    let snapshots: Vec<u64> = std::fs::read_dir(cluster.node(follower).data_dir.join("snapshots"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.split('-').next()?.parse().ok())
        .collect();
    assert!(
        snapshots.iter().any(|i| *i >= 100),
        "follower has no snapshot covering the purged log: {snapshots:?} (leader at {})",
        leader_status.applied_index
    );
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_commits_nothing_and_the_majority_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = up(dir.path(), |o| o.write_timeout_ms = 3_000).await;
    let upstream = upstream().await;
    let old_leader = cluster.leader().await.unwrap();
    let revision = open_route(&cluster, old_leader, upstream).await;
    for node in cluster.nodes() {
        wait_data_plane(&cluster, node.id, revision).await;
    }
    let majority: Vec<u64> = cluster.nodes().iter().map(|n| n.id).filter(|id| *id != old_leader).collect();
    let cluster = Arc::new(Mutex::new(cluster));
    let workload = Workload::start(cluster.clone(), 2, "part");
    workload.wait_acked(10, Duration::from_secs(60)).await;

    cluster.lock().await.partition(vec![vec![old_leader], majority.clone()]);
    // The majority elects a leader and keeps committing.
    let before = workload.acked.load(Ordering::Relaxed);
    workload.wait_acked(before + 30, Duration::from_secs(60)).await;
    let majority_term = cluster.lock().await.node_status(majority[0]).await.unwrap().current_term;
    {
        let c = cluster.lock().await;
        let roles = leader_roles(&c, old_leader).await;
        println!("roles during the partition: {roles:?}");
        assert_eq!(roles.iter().filter(|(_, role)| role == "leader").count(), 1, "one leader: {roles:?}");
        let err = write(&c, old_leader, "minority-write").await.unwrap_err();
        println!("a write on the minority: {err}");
        assert!(err.starts_with("Unavailable"), "minority write must fail clearly: {err}");
        assert_names_members(&err, &majority);
        let err = names(&c, old_leader, false).await.unwrap_err();
        println!("a linearizable read on the minority: {err}");
        assert!(err.starts_with("Unavailable"), "linearizable read on the minority must fail: {err}");
        assert_names_members(&err, &majority);
        assert!(names(&c, old_leader, true).await.is_ok(), "stale reads keep working");
        assert_eq!(
            http_get(c.node(old_leader).proxy, "/still-serving").await,
            200,
            "the minority data plane keeps serving"
        );
        let status = c.node_status(majority[0]).await.unwrap();
        assert!(status.leader_id.is_some_and(|l| l != old_leader), "majority has its own leader: {status:?}");
    }
    let history = workload.finish().await;
    let cluster = Arc::try_unwrap(cluster).ok().expect("workload done").into_inner();
    cluster.heal();
    cluster.wait_healthy(Duration::from_secs(60)).await.unwrap();
    // Pre-vote: the old leader rejoins without an election.
    for node in cluster.nodes() {
        let term = cluster.node_status(node.id).await.unwrap().current_term;
        assert_eq!(term, majority_term, "node {} after the heal", node.id);
    }
    let final_state = agreed_final_state(&cluster).await;
    assert!(!final_state.contains("minority-write"), "the minority committed nothing");
    let violations = history.check(&final_state);
    assert!(violations.is_empty(), "history violations: {violations:?}");
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_restarting_every_node_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = up(dir.path(), |_| {}).await;
    let mut expected = BTreeSet::new();
    for i in 0..30 {
        let node = i % 3 + 1;
        write(&cluster, node, &format!("persist-{i}")).await.unwrap();
        expected.insert(format!("persist-{i}"));
    }
    for id in 1..=3 {
        cluster.stop(id).await.unwrap();
    }
    for id in 1..=3 {
        cluster.start(id).await.unwrap();
    }
    cluster.wait_healthy(Duration::from_secs(60)).await.unwrap();
    assert_eq!(agreed_final_state(&cluster).await, expected);
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_without_a_valid_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = up(dir.path(), |o| o.write_timeout_ms = 3_000).await;
    let seed = cluster.node(1).advertise().to_string();
    let mut clusters = cluster.cluster_client(1).await.unwrap();
    let good = clusters
        .create_join_token(tollgate_proto::admin::v1::CreateJoinTokenRequest { ttl_seconds: 60 })
        .await
        .unwrap()
        .into_inner()
        .token;
    // Same id and CA pin, wrong secret.
    let mut parts: Vec<String> = good.split('_').map(String::from).collect();
    parts[2] = "0".repeat(64);
    let forged = parts.join("_");

    for (token, expect) in [("tgjoin_nonsense", "malformed"), (forged.as_str(), "secret is wrong")] {
        let data = dir.path().join(format!("intruder-{}", expect.len()));
        let output = std::process::Command::new(&cluster.options().binary)
            .args(["serve", "--node-id", "9", "--proxy-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--ops-listen", "127.0.0.1:0", "--console-listen", "127.0.0.1:0"])
            .args(["--cluster-listen", "127.0.0.1:0", "--join", &seed, "--join-token", token])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{stderr}");
        assert!(!data.join("tls").join("ca.pem").exists(), "no certificate was handed out");
    }
    let status = cluster.cluster_status(1).await.unwrap();
    assert_eq!(status.members.len(), 3, "nobody was added");
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_catches_up_when_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = up(dir.path(), |o| o.write_timeout_ms = 3_000).await;
    let old_leader = cluster.leader().await.unwrap();
    write(&cluster, old_leader, "before-pause").await.unwrap();

    cluster.pause(old_leader).unwrap(); // SIGSTOP: sockets stay open, nothing answers
    let survivor = follower_of(&cluster, old_leader);
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        let status = cluster.node_status(survivor).await.unwrap();
        if let Some(l) = status.leader_id.filter(|l| *l != old_leader) {
            break l;
        }
        assert!(Instant::now() < deadline, "no new leader while node {old_leader} is frozen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for i in 0..10 {
        write(&cluster, new_leader, &format!("during-pause-{i}")).await.unwrap();
    }

    cluster.resume(old_leader).unwrap();
    cluster.wait_healthy(Duration::from_secs(60)).await.unwrap();
    let on_old = names(&cluster, old_leader, false).await.unwrap();
    assert!(on_old.contains("before-pause") && (0..10).all(|i| on_old.contains(&format!("during-pause-{i}"))));
    assert_eq!(agreed_final_state(&cluster).await, on_old);
    cluster.down().await;
}

/// Writes sent to the followers while the leader is SIGKILLed wait for the
/// new leader instead of their whole timeout: the followers forward them to
/// whoever leads. Prints how long writes stalled against how long the
/// election took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_followers_ride_through_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = up(dir.path(), |_| {}).await;
    let old_leader = cluster.leader().await.unwrap();
    let followers: Vec<u64> = cluster.nodes().iter().map(|n| n.id).filter(|id| *id != old_leader).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for id in &followers {
        writers.push((*id, write_through(cluster.admin(*id).await.unwrap(), *id, stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed = Instant::now();
    cluster.kill(old_leader).await.unwrap();
    let (new_leader, elected) = loop {
        let status = cluster.node_status(followers[0]).await.unwrap();
        if let Some(l) = status.leader_id.filter(|l| *l != old_leader) {
            break (l, killed.elapsed());
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "no new leader after the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    println!("killed leader {old_leader}; node {new_leader} leads {elected:?} after the kill (as seen by polling)");
    let mut acknowledged = BTreeSet::new();
    for (node, writer) in writers {
        let outcomes = writer.await.unwrap();
        acknowledged.extend(outcomes.iter().filter(|t| t.result.is_ok()).map(|t| t.name.clone()));
        let failed: Vec<&Timed> = outcomes.iter().filter(|t| t.result.is_err()).collect();
        // The window: the longest stretch without a successful write, across the kill.
        let successes: Vec<Instant> = outcomes.iter().filter(|t| t.result.is_ok()).map(|t| t.completed).collect();
        let window = successes.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        let slowest = outcomes.iter().map(|t| t.completed - t.invoked).max().unwrap_or_default();
        println!(
            "writes through node {node}: {} sent, {} failed; no write completed for {window:?} (the election \
             took {elected:?}); the slowest write took {slowest:?}",
            outcomes.len(),
            failed.len()
        );
        for t in &failed {
            println!(
                "  failed after {:?} (sent {:?} after the kill): {}",
                t.completed - t.invoked,
                t.invoked.saturating_duration_since(killed),
                t.result.as_ref().unwrap_err()
            );
            assert!(t.result.as_ref().unwrap_err().starts_with("Unavailable"), "a clear failure");
        }
        assert!(
            outcomes.iter().any(|t| t.result.is_ok() && t.invoked > killed + elected),
            "writes through node {node} succeed again under the new leader"
        );
    }
    let stored = names(&cluster, new_leader, false).await.unwrap();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    cluster.down().await;
}

/// A follower cut off from the others keeps its term (pre-vote: it asks
/// before it campaigns), so healing the partition deposes nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_leaves_the_term_and_the_leader_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = up(dir.path(), |_| {}).await;
    let leader = cluster.leader().await.unwrap();
    let isolated = follower_of(&cluster, leader);
    let others: Vec<u64> = cluster.nodes().iter().map(|n| n.id).filter(|id| *id != isolated).collect();
    let term = cluster.node_status(leader).await.unwrap().current_term;

    cluster.partition(vec![vec![isolated], others]);
    // Several election timeouts (at most 1.2 s each): without pre-vote the
    // isolated node would raise its term at every one.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let isolated_term = cluster.node_status(isolated).await.unwrap().current_term;
    cluster.heal();
    cluster.wait_healthy(Duration::from_secs(60)).await.unwrap();

    println!("term {term} before the partition; node {isolated} at term {isolated_term} while cut off");
    assert_eq!(isolated_term, term, "the isolated node did not raise its term");
    assert_eq!(cluster.leader().await.unwrap(), leader, "the healthy leader was not deposed");
    for node in cluster.nodes() {
        assert_eq!(cluster.node_status(node.id).await.unwrap().current_term, term, "node {}", node.id);
    }
    write(&cluster, isolated, "after-heal").await.unwrap();
    cluster.down().await;
}
