//! A Raft node on real RocksDB: bootstrap, proposals, restart from disk,
//! and recovery from a snapshot after the log was purged.

use std::path::Path;
use std::time::Duration;

use tollgate_proto::config::v1::{Consumer, Meta};
use tollgate_proto::raft::v1::command::Op;
use tollgate_raft::pki::ClusterTls;
use tollgate_raft::{ApplyError, ClusterSetup, Command, ProposeError, RaftConfig, RaftNode};
use tollgate_storage::Engine;

fn consumer(id: &str, name: &str) -> Op {
    Op::CreateConsumer(Consumer {
        meta: Some(Meta { id: id.into(), ..Default::default() }),
        name: name.into(),
        ..Default::default()
    })
}

async fn start(dir: &Path, snapshot_after: u64) -> (RaftNode, Engine) {
    let engine = Engine::open(dir.join("db")).unwrap();
    let mut config = RaftConfig::new(1, dir.join("snapshots"));
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout_min = Duration::from_millis(150);
    config.election_timeout_max = Duration::from_millis(300);
    config.snapshot_after_logs = snapshot_after;
    config.logs_kept_after_snapshot = 0;
    let tls = match ClusterTls::load(&dir.join("tls")).unwrap() {
        Some(tls) => tls,
        None => {
            let tls = ClusterTls::create(1).unwrap();
            tls.save(&dir.join("tls")).unwrap();
            tls
        }
    };
    let cluster = ClusterSetup {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        tls,
        bootstrap: true,
        admin_addr: String::new(),
        proxy_addr: String::new(),
    };
    let node = RaftNode::start(engine.clone(), config, cluster).await.unwrap();
    node.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    (node, engine)
}

async fn stop(node: RaftNode, engine: Engine) {
    node.shutdown().await;
    drop(node);
    while engine.handle_count() > 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn proposals_apply_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (node, engine) = start(dir.path(), 10_000).await;
    let applied = node.propose(Command::new(consumer("c1", "acme"), 1, "test")).await.unwrap();
    assert!(applied.revision > 0);
    assert!(applied.entity.is_some());

    let rejected = node.propose(Command::new(consumer("c2", "acme"), 2, "test")).await.unwrap_err();
    assert!(matches!(rejected, ProposeError::Rejected(ApplyError::AlreadyExists { .. })), "{rejected}");

    let state = node.linearizable_state().await.unwrap();
    assert!(state.find_consumer("acme").is_some());
    assert!(state.applied_index() >= applied.revision);
    // A single voter is its own majority: never "leader (no quorum …)".
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(node.status().role_text(), "leader");
    stop(node, engine).await;

    let (node, engine) = start(dir.path(), 10_000).await;
    let state = node.linearizable_state().await.unwrap();
    assert_eq!(state.find_consumer("acme").unwrap().meta.as_ref().unwrap().id, "c1");
    assert!(state.consumer("c2").is_none());
    stop(node, engine).await;
}

#[tokio::test]
async fn restart_recovers_from_a_snapshot_after_log_purge() {
    let dir = tempfile::tempdir().unwrap();
    let (node, engine) = start(dir.path(), 20).await;
    for i in 0..60 {
        node.propose(Command::new(consumer(&format!("c{i}"), &format!("n{i}")), i, "test")).await.unwrap();
    }
    // Snapshots are built in the background; wait until one exists and the log was purged.
    node.raft()
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.snapshot.is_some() && m.purged.is_some(), "a snapshot is built and the log purged")
        .await
        .unwrap();
    stop(node, engine).await;
    assert!(std::fs::read_dir(dir.path().join("snapshots")).unwrap().count() >= 1);

    let (node, engine) = start(dir.path(), 20).await;
    let state = node.linearizable_state().await.unwrap();
    assert_eq!(state.consumers().count(), 60);
    stop(node, engine).await;
}

#[tokio::test]
async fn a_command_every_replica_would_reject_never_reaches_the_log() {
    use tollgate_proto::config::v1::{Provider, ProviderKind};
    use tollgate_storage::Cf;

    let dir = tempfile::tempdir().unwrap();
    let (node, engine) = start(dir.path(), 10_000).await;
    node.propose(Command::new(consumer("c1", "acme"), 1, "test")).await.unwrap();
    let before = node.status().last_log_index;

    let credentialed = Op::CreateProvider(Provider {
        meta: Some(Meta { id: "p1".into(), ..Default::default() }),
        name: "leaky".into(),
        kind: ProviderKind::OpenaiCompatible as i32,
        base_url: "https://admin:hunter2-password@llm.internal/v1".into(),
        ..Default::default()
    });
    let rejected = node.propose(Command::new(credentialed, 2, "test")).await.unwrap_err();
    assert!(matches!(&rejected, ProposeError::Rejected(ApplyError::InvalidArgument { .. })), "{rejected}");
    assert!(rejected.to_string().contains("not in the URL"), "{rejected}");
    // State-dependent rejections are confirmed on a linearizable view, then kept out too.
    let taken = node.propose(Command::new(consumer("c2", "acme"), 3, "test")).await.unwrap_err();
    assert!(matches!(taken, ProposeError::Rejected(ApplyError::AlreadyExists { .. })), "{taken}");
    let missing = node.propose(Command::new(Op::DeleteConsumer("ghost".into()), 4, "test")).await.unwrap_err();
    assert!(matches!(missing, ProposeError::Rejected(ApplyError::NotFound { .. })), "{missing}");

    assert_eq!(node.status().last_log_index, before, "nothing rejected was appended");
    let log = engine.scan_prefix(Cf::RaftLog, b"").unwrap();
    assert!(
        !log.iter().any(|(_, v)| v.windows(b"hunter2".len()).any(|w| w == b"hunter2")),
        "the password is nowhere in the Raft log"
    );
    stop(node, engine).await;
}
