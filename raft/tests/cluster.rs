//! Three in-process Raft nodes over real QUIC on loopback: join with a token,
//! promotion, writes and linearizable reads on any node, and refusal of
//! peers that are not part of the cluster.

use std::path::Path;
use std::time::Duration;

use tollgate_proto::config::v1::{Consumer, Meta};
use tollgate_proto::raft::v1::command::Op;
use tollgate_raft::pki::ClusterTls;
use tollgate_raft::transport::{self, MembershipOp};
use tollgate_raft::{ClusterSetup, Command, RaftConfig, RaftNode};
use tollgate_storage::Engine;

fn config(id: u64, dir: &Path) -> RaftConfig {
    let mut config = RaftConfig::new(id, dir.join("snapshots"));
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout_min = Duration::from_millis(300);
    config.election_timeout_max = Duration::from_millis(600);
    config
}

async fn start(id: u64, dir: &Path, tls: ClusterTls, bootstrap: bool) -> RaftNode {
    let engine = Engine::open(dir.join("db")).unwrap();
    let setup = ClusterSetup {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        tls,
        bootstrap,
        admin_addr: String::new(),
        proxy_addr: String::new(),
    };
    RaftNode::start(engine, config(id, dir), setup).await.unwrap()
}

fn consumer(id: &str) -> Command {
    Command::new(
        Op::CreateConsumer(Consumer {
            meta: Some(Meta { id: id.into(), ..Default::default() }),
            name: id.into(),
            ..Default::default()
        }),
        1,
        "test",
    )
}

/// Node 1 bootstraps; nodes 2 and 3 join with a token and are promoted.
async fn three_nodes(dirs: &[tempfile::TempDir]) -> (Vec<RaftNode>, String) {
    let first_tls = ClusterTls::create(1).unwrap();
    let n1 = start(1, dirs[0].path(), first_tls.clone(), true).await;
    n1.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let token = n1.create_join_token(Duration::from_secs(600), "test").await.unwrap();
    let seed = n1.peer_listen_addr().unwrap().to_string();

    let mut nodes = vec![n1.clone()];
    for id in [2u64, 3] {
        // The joiner binds first so it can tell the cluster where to reach it.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let tls = transport::join(&seed, &token, id, &addr.to_string()).await.unwrap();
        assert_eq!(tls.ca_fingerprint(), first_tls.ca_fingerprint());
        let engine = Engine::open(dirs[id as usize - 1].path().join("db")).unwrap();
        let setup = ClusterSetup {
            listen: addr,
            advertise: None,
            tls,
            bootstrap: false,
            admin_addr: String::new(),
            proxy_addr: String::new(),
        };
        let node = RaftNode::start(engine, config(id, dirs[id as usize - 1].path()), setup).await.unwrap();
        n1.change_membership(MembershipOp::Promote { node_id: id }).await.unwrap();
        nodes.push(node);
    }
    // A joiner is added before it listens, so the leader reaches it only at
    // its next handshake retry; wait until everyone has caught up.
    let committed = n1.status().committed_index;
    for node in &nodes {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while node.status().applied_index < committed {
            assert!(std::time::Instant::now() < deadline, "node {} is not catching up", node.node_id());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (nodes, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_replicate_and_serve_writes_from_any_member() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (nodes, token) = three_nodes(&dirs).await;
    let n1 = nodes[0].clone();
    let seed = n1.peer_listen_addr().unwrap().to_string();
    let status = n1.cluster_status().await;
    assert_eq!(status.iter().filter(|m| m.voter).count(), 3, "{status:?}");
    assert!(status.iter().all(|m| m.report.is_ok()), "{status:?}");

    // A write on each node (followers forward to the leader) is readable on every node.
    for (i, node) in nodes.iter().enumerate() {
        let applied = node.propose(consumer(&format!("c{i}"))).await.unwrap();
        assert!(node.local_state().applied_index() >= applied.revision, "the writer has applied its own write");
        for reader in &nodes {
            let state = reader.linearizable_state().await.unwrap();
            assert!(
                state.consumer(&format!("c{i}")).is_some(),
                "write on node {} not visible on node {}",
                i + 1,
                reader.node_id()
            );
        }
    }

    // A second join with the same id at another address is refused.
    let err = transport::join(&seed, &token, 2, "127.0.0.1:1").await.unwrap_err();
    assert!(err.to_string().contains("already a member"), "{err}");
    // A token with a wrong secret is refused.
    let forged = {
        let parsed = transport::JoinToken::parse(&token).unwrap();
        transport::JoinToken::format(&parsed.id, &"0".repeat(64), &parsed.ca_fingerprint)
    };
    let err = transport::join(&seed, &forged, 9, "127.0.0.1:1").await.unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");
    // A token for another cluster does not even pass TLS: the CA pin fails.
    let other = ClusterTls::create(1).unwrap();
    let parsed = transport::JoinToken::parse(&token).unwrap();
    let foreign = transport::JoinToken::format(&parsed.id, &parsed.secret, &other.ca_fingerprint());
    assert!(transport::join(&seed, &foreign, 9, "127.0.0.1:1").await.is_err());

    // A revoked token (revoked through another member) admits nobody.
    nodes[2].revoke_join_token(&token, "test").await.unwrap();
    let err = transport::join(&seed, &token, 9, "127.0.0.1:1").await.unwrap_err();
    assert!(err.to_string().contains("unknown or was revoked"), "{err}");

    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_ca_is_refused() {
    use tollgate_raft::transport::Transport;
    use tollgate_raft::transport::wire::{PeerRequest, PeerResponse};

    let dir = tempfile::tempdir().unwrap();
    let cluster_tls = ClusterTls::create(1).unwrap();
    let n1 = start(1, dir.path(), cluster_tls.clone(), true).await;
    n1.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let target = n1.peer_listen_addr().unwrap().to_string();

    // A member's certificate (same CA) is accepted...
    let member = Transport::bind("127.0.0.1:0".parse().unwrap(), &cluster_tls.for_joiner(5).unwrap()).unwrap();
    let answer = member.call(&target, &PeerRequest::Status, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(answer, PeerResponse::Status(ref s) if s.node_id == 1), "{answer:?}");

    // ...one from another CA is not: the handshake fails, nothing is served.
    let stranger = Transport::bind("127.0.0.1:0".parse().unwrap(), &ClusterTls::create(1).unwrap()).unwrap();
    let err = stranger.call(&target, &PeerRequest::Status, Duration::from_secs(5)).await.unwrap_err();
    assert!(err.to_string().contains("cannot reach") || err.to_string().contains("did not answer"), "{err}");
    assert_eq!(n1.status().leader_id, Some(1), "the refused peer disturbed nothing");

    member.close();
    stranger.close();
    n1.shutdown().await;
}

/// A request that could not be sent before the caller gave up (here: the
/// peer never completes the handshake, like a dead leader) cannot have been
/// acted on, so it may go to the next leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_sent_cannot_have_been_acted_on() {
    use tollgate_raft::transport::wire::PeerRequest;
    use tollgate_raft::transport::{CallError, Transport};

    let tls = ClusterTls::create(1).unwrap();
    // Bound, never accepting: the handshake never completes.
    let silent = Transport::bind("127.0.0.1:0".parse().unwrap(), &tls.for_joiner(5).unwrap()).unwrap();
    let caller = Transport::bind("127.0.0.1:0".parse().unwrap(), &tls.for_joiner(6).unwrap()).unwrap();
    let target = silent.local_addr().unwrap().to_string();
    let leader_changed = tokio::time::sleep(Duration::from_millis(300));
    let err =
        caller.call_once(&target, &PeerRequest::Status, Duration::from_secs(10), leader_changed).await.unwrap_err();
    assert!(matches!(err, CallError::NotSent(_)), "{err:?}");
    assert!(!err.may_have_acted(), "{err}");
    silent.close();
    caller.close();
}

/// A peer that received the request and never answered may have acted on
/// it: the caller is told so, and must not send it elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_peer_received_and_never_answered_may_have_acted() {
    use tollgate_raft::transport::wire::{self, PeerRequest};
    use tollgate_raft::transport::{CallError, Transport};

    let tls = ClusterTls::create(1).unwrap();
    let mute = Transport::bind("127.0.0.1:0".parse().unwrap(), &tls.for_joiner(5).unwrap()).unwrap();
    let caller = Transport::bind("127.0.0.1:0".parse().unwrap(), &tls.for_joiner(6).unwrap()).unwrap();
    let target = mute.local_addr().unwrap().to_string();
    let endpoint = mute.endpoint().clone();
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (send, mut recv) = conn.accept_bi().await.unwrap();
        let request: PeerRequest = wire::read_frame(&mut recv).await.unwrap();
        let _ = read_tx.send(());
        // Holds the stream and never answers, like a leader killed mid-write.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop((request, send, recv, conn));
    });
    // "The leader changed" only after the peer has read the request.
    let leader_changed = async {
        let _ = read_rx.await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let err =
        caller.call_once(&target, &PeerRequest::Status, Duration::from_secs(10), leader_changed).await.unwrap_err();
    assert!(matches!(err, CallError::Abandoned { .. }), "{err:?}");
    assert!(err.may_have_acted(), "{err}");
    server.abort();
    mute.close();
    caller.close();
}

/// Writes sent to the followers while the leader stops reach the new
/// leader, and none is applied twice: a write the old leader took without
/// answering is looked up once the new leader has committed, and sent again
/// only if it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_followers_survive_the_leader_stopping() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (nodes, _) = three_nodes(&dirs).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for follower in [nodes[1].clone(), nodes[2].clone()] {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let result = follower.propose(consumer(&format!("n{}-{i}", follower.node_id()))).await;
                outcomes.push((started.elapsed(), result.map(|_| ()).map_err(|e| e.to_string())));
                i += 1;
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[0].shutdown().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while nodes[1].status().leader_id.is_none_or(|l| l == 1) {
        assert!(std::time::Instant::now() < deadline, "no new leader: {:?}", nodes[1].status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Writes keep landing under the new leader.
    let marker = nodes[1].local_state().applied_index();
    while nodes[1].local_state().applied_index() < marker + 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let outcomes = writer.await.unwrap();
        let failures: Vec<&String> = outcomes.iter().filter_map(|(_, o)| o.as_ref().err()).collect();
        let slowest = outcomes.iter().map(|(took, _)| *took).max().unwrap_or_default();
        println!(
            "{} writes through a follower, {} failed, the slowest took {slowest:?} (it spanned the election): {failures:?}",
            outcomes.len(),
            failures.len()
        );
        // A write applied twice would fail with "already exists".
        assert!(failures.is_empty(), "every write succeeded, once: {failures:?}");
    }
    for node in &nodes[1..] {
        node.shutdown().await;
    }
}

/// A join (or an admin add-learner) at an address a member already uses —
/// the leader's own above all — is refused before it is proposed: a learner
/// at the leader's address made openraft's leader follow itself and panic,
/// at every restart. The leader keeps serving writes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_reusing_a_members_address_is_refused() {
    use tollgate_raft::RaftNodeError;

    let dir = tempfile::tempdir().unwrap();
    let n1 = start(1, dir.path(), ClusterTls::create(1).unwrap(), true).await;
    n1.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let token = n1.create_join_token(Duration::from_secs(600), "test").await.unwrap();
    let seed = n1.peer_listen_addr().unwrap().to_string();
    let leader_addr = n1.advertise_addr().to_string();

    // The leader's own address, as a join and as an admin add-learner.
    let err = transport::join(&seed, &token, 2, &leader_addr).await.unwrap_err();
    assert!(err.to_string().contains(&format!("node 1 already uses address {leader_addr}")), "{err}");
    assert!(err.to_string().contains("--cluster-listen/--cluster-advertise"), "{err}");
    let err = n1.change_membership(MembershipOp::AddLearner { node_id: 2, addr: seed.clone() }).await.unwrap_err();
    assert!(matches!(err, RaftNodeError::InvalidMembership(_)), "{err:?}");
    assert_eq!(n1.cluster_status().await.len(), 1, "nothing was added");

    // The leader is unharmed and keeps serving writes.
    n1.propose(consumer("after-refusal")).await.unwrap();
    assert_eq!(n1.status().leader_id, Some(1));

    // A learner's address is taken too; the same node re-joining at its own address is fine.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr2 = probe.local_addr().unwrap().to_string();
    drop(probe);
    transport::join(&seed, &token, 2, &addr2).await.unwrap();
    transport::join(&seed, &token, 2, &addr2).await.unwrap();
    let err = transport::join(&seed, &token, 3, &addr2).await.unwrap_err();
    assert!(err.to_string().contains(&format!("node 2 already uses address {addr2}")), "{err}");
    let err = n1.change_membership(MembershipOp::AddLearner { node_id: 3, addr: addr2.clone() }).await.unwrap_err();
    assert!(matches!(err, RaftNodeError::InvalidMembership(_)), "{err:?}");
    // And one id cannot move to another address without being removed first.
    let err = transport::join(&seed, &token, 2, "127.0.0.1:1").await.unwrap_err();
    assert!(err.to_string().contains("already a member"), "{err}");

    let members = n1.cluster_status().await;
    assert_eq!(members.iter().map(|m| m.node_id).collect::<Vec<_>>(), vec![1, 2], "{members:?}");
    n1.propose(consumer("after-learner")).await.unwrap();
    assert!(n1.linearizable_state().await.unwrap().consumer("after-learner").is_some());
    n1.shutdown().await;
}

/// Should a member ever be listed at this node's address (a cluster that
/// took such a join before the check above), Raft traffic from this node to
/// itself is refused rather than panicking openraft, so the leader keeps
/// leading and the bad member can be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_traffic_from_a_node_to_itself_is_refused() {
    use openraft::raft::AppendEntriesRequest;
    use tollgate_raft::TypeConfig;
    use tollgate_raft::transport::Transport;
    use tollgate_raft::transport::wire::{PeerRequest, PeerResponse};

    let dir = tempfile::tempdir().unwrap();
    let cluster_tls = ClusterTls::create(1).unwrap();
    let n1 = start(1, dir.path(), cluster_tls.clone(), true).await;
    n1.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let target = n1.peer_listen_addr().unwrap().to_string();

    let term = n1.status().current_term;
    let member = Transport::bind("127.0.0.1:0".parse().unwrap(), &cluster_tls.for_joiner(5).unwrap()).unwrap();
    let own = PeerRequest::AppendEntries(AppendEntriesRequest::<TypeConfig> {
        vote: openraft::alias::VoteOf::<TypeConfig>::new_committed(term, 1),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    });
    let answer = member.call(&target, &own, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(answer, PeerResponse::Refused(ref why) if why.contains("its own Raft traffic")), "{answer:?}");

    n1.propose(consumer("still-leading")).await.unwrap();
    assert_eq!(n1.status().leader_id, Some(1));
    member.close();
    n1.shutdown().await;
}
