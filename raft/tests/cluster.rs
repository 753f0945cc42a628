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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_replicate_and_serve_writes_from_any_member() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
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
