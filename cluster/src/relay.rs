//! UDP relays that carry all peer traffic of a local cluster, so the harness
//! can cut it without root: each node advertises its relay's address, and the
//! relay drops datagrams between nodes that are in different partition groups,
//! or holds every datagram it forwards to its node for a set delay (a slow
//! network between the nodes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// Who may talk to whom. Shared by every relay of a cluster.
#[derive(Debug, Default)]
pub struct Partitions {
    /// Real peer socket of each node, to tell who sent a datagram.
    nodes: RwLock<HashMap<SocketAddr, u64>>,
    /// When set, only nodes in the same group can exchange datagrams.
    groups: RwLock<Option<Vec<Vec<u64>>>>,
    /// How long each datagram to a node is held, in microseconds.
    delay_us: AtomicU64,
}

impl Partitions {
    pub fn register(&self, node_id: u64, peer_addr: SocketAddr) {
        self.nodes.write().unwrap_or_else(|p| p.into_inner()).insert(peer_addr, node_id);
    }

    pub fn partition(&self, groups: Vec<Vec<u64>>) {
        *self.groups.write().unwrap_or_else(|p| p.into_inner()) = Some(groups);
    }

    pub fn heal(&self) {
        *self.groups.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn current(&self) -> Option<Vec<Vec<u64>>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Holds every datagram to a node for `delay` (at most a minute) before
    /// it is delivered, in the order datagrams came: each round trip between
    /// nodes (a Raft append and its answer) takes `delay` longer. Answers
    /// are not held. A partition made while datagrams are held drops them.
    pub fn set_delay(&self, delay: Duration) {
        let delay = delay.min(Duration::from_secs(60));
        self.delay_us.store(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// Datagrams from sockets that belong to no node (e.g. a joining node's
    /// temporary socket) are never blocked.
    fn blocked(&self, from: SocketAddr, to_node: u64) -> bool {
        let Some(from_node) = self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(&from).copied() else {
            return false;
        };
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        let Some(groups) = groups.as_ref() else { return false };
        let group_of = |n: u64| groups.iter().position(|g| g.contains(&n));
        group_of(from_node) != group_of(to_node)
    }
}

/// Forwards datagrams for one node: everything sent to `addr()` reaches the
/// node's real socket, and its answers go back to the sender.
pub struct Relay {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// Datagrams held (counted before they are queued, and until sent or dropped).
    pending: Arc<AtomicU64>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    pub async fn start(node_id: u64, target: SocketAddr, partitions: Arc<Partitions>) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let pending = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(node_id, front, target, partitions, pending.clone()));
        Ok(Relay { addr, task, pending })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many datagrams to the node are held now.
    pub fn held(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }
}

async fn run(
    node_id: u64,
    front: Arc<UdpSocket>,
    target: SocketAddr,
    partitions: Arc<Partitions>,
    pending: Arc<AtomicU64>,
) {
    // One back socket per sender, so the node's answers can be routed back.
    let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    // The relay's helper tasks (the held datagrams' and each back socket's
    // answers) end with it: a JoinSet aborts them when the relay's task is
    // aborted and drops it, and their sockets close.
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    // Held datagrams, in the order they came, and how many are still held:
    // while any are, new ones queue behind them even if the delay is gone,
    // so that none overtakes another. Each is due no earlier than the one
    // before unless the delay shrank, and then it waits for that one.
    let (held, mut due) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>, Arc<UdpSocket>, SocketAddr)>();
    tasks.spawn({
        let (pending, partitions) = (pending.clone(), partitions.clone());
        async move {
            while let Some((at, datagram, back, sender)) = due.recv().await {
                tokio::time::sleep_until(at).await;
                if !partitions.blocked(sender, node_id) {
                    let _ = back.send(&datagram).await;
                }
                pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    });
    loop {
        // Errors here are ICMP reports about earlier datagrams; a relay keeps going.
        let Ok((n, sender)) = front.recv_from(&mut buf).await else { continue };
        if partitions.blocked(sender, node_id) {
            continue;
        }
        let back = match backs.get(&sender) {
            Some(back) => back.clone(),
            None => {
                let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                if back.connect(target).await.is_err() {
                    continue;
                }
                let back = Arc::new(back);
                tasks.spawn(return_path(node_id, back.clone(), front.clone(), sender, partitions.clone()));
                backs.insert(sender, back.clone());
                back
            }
        };
        match partitions.delay() {
            delay if delay.is_zero() && pending.load(Ordering::Acquire) == 0 => {
                let _ = back.send(&buf[..n]).await;
            }
            delay => {
                pending.fetch_add(1, Ordering::AcqRel);
                if held.send((tokio::time::Instant::now() + delay, buf[..n].to_vec(), back, sender)).is_err() {
                    pending.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }
}

async fn return_path(
    node_id: u64,
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    sender: SocketAddr,
    partitions: Arc<Partitions>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        // A connected UDP socket reports "connection refused" when the node was
        // not listening yet (or was restarted); the path must survive that.
        let Ok(n) = back.recv(&mut buf).await else { continue };
        // The same rule in the other direction: the reply is from `node_id` to the sender.
        if partitions.blocked(sender, node_id) {
            continue;
        }
        let _ = front.send_to(&buf[..n], sender).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node 1's socket behind its relay, and node 2's socket sending to it.
    async fn node_and_peer() -> (Arc<Partitions>, UdpSocket, UdpSocket, Relay) {
        let partitions = Arc::new(Partitions::default());
        let node = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        partitions.register(1, node.local_addr().unwrap());
        partitions.register(2, peer.local_addr().unwrap());
        let relay = Relay::start(1, node.local_addr().unwrap(), partitions.clone()).await.unwrap();
        (partitions, node, peer, relay)
    }

    /// Held datagrams all arrive, in the order they were sent (a QUIC
    /// connection would take reordering for loss).
    #[tokio::test]
    async fn a_delayed_link_delivers_everything_in_order() {
        let (partitions, node, peer, relay) = node_and_peer().await;
        partitions.set_delay(Duration::from_millis(20));
        for i in 0..20u8 {
            peer.send_to(&[i], relay.addr()).await.unwrap();
        }
        let mut buf = [0u8; 16];
        for i in 0..20u8 {
            let (n, _) = node.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &[i]);
        }
        // Answers are not held, and the link can be made fast again.
        partitions.set_delay(Duration::ZERO);
        peer.send_to(b"fast", relay.addr()).await.unwrap();
        let (n, via) = node.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"fast");
        node.send_to(b"back", via).await.unwrap();
        let (n, _) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"back");
    }

    /// Waits (a few seconds at most) until the relay holds `count` datagrams.
    async fn until_held(relay: &Relay, count: u64) {
        for _ in 0..500 {
            if relay.held() == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the relay holds {} datagrams, not {count}", relay.held());
    }

    /// A link made fast while datagrams are held: what comes next still
    /// waits behind them, so nothing is reordered. (Held for 2 s, so that a
    /// stalled test on busy cores still finds them held.)
    #[tokio::test]
    async fn a_link_made_fast_while_datagrams_are_held_keeps_their_order() {
        let (partitions, node, peer, relay) = node_and_peer().await;
        partitions.set_delay(Duration::from_secs(2));
        peer.send_to(b"first", relay.addr()).await.unwrap();
        peer.send_to(b"second", relay.addr()).await.unwrap();
        let outsider = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        outsider.send_to(b"marker", relay.addr()).await.unwrap();
        until_held(&relay, 3).await;
        partitions.set_delay(Duration::ZERO);
        peer.send_to(b"third", relay.addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (n, _) = node.recv_from(&mut buf).await.unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(seen, ["first", "second", "marker", "third"]);
    }

    /// A partition made while a datagram is held drops it when it falls due.
    #[tokio::test]
    async fn a_partition_drops_datagrams_held_before_it() {
        let (partitions, node, peer, relay) = node_and_peer().await;
        partitions.set_delay(Duration::from_secs(2));
        peer.send_to(b"held", relay.addr()).await.unwrap();
        // Queued behind "held", from a socket outside any group: never blocked.
        let outsider = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        outsider.send_to(b"marker", relay.addr()).await.unwrap();
        until_held(&relay, 2).await;
        partitions.partition(vec![vec![1], vec![2]]);
        let mut buf = [0u8; 16];
        let (n, _) = node.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"marker", "the held datagram was dropped at the partition");
    }

    /// A dropped relay's helper tasks end with it: the back socket that
    /// carried a peer's traffic closes, so its port can be bound again.
    #[tokio::test]
    async fn a_dropped_relay_closes_its_back_sockets() {
        let (_partitions, node, peer, relay) = node_and_peer().await;
        peer.send_to(b"ping", relay.addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let (_, via) = node.recv_from(&mut buf).await.unwrap();
        drop(relay);
        // Aborted tasks are dropped when the runtime next gets to them.
        for _ in 0..500 {
            if UdpSocket::bind(via).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the relay's back socket {via} is still open after the relay was dropped");
    }

    #[tokio::test]
    async fn relays_forward_both_ways_until_partitioned() {
        let (partitions, node, peer, relay) = node_and_peer().await;

        let mut buf = [0u8; 16];
        peer.send_to(b"ping", relay.addr()).await.unwrap();
        let (n, via) = node.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        node.send_to(b"pong", via).await.unwrap();
        let (n, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], relay.addr()));

        partitions.partition(vec![vec![1], vec![2]]);
        peer.send_to(b"lost", relay.addr()).await.unwrap();
        // The relay handles datagrams in arrival order: once a marker from a
        // socket outside any group arrives, "lost" has been dealt with.
        let outsider = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        outsider.send_to(b"marker", relay.addr()).await.unwrap();
        let (n, _) = node.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"marker", "the datagram sent across the partition was dropped");
        partitions.heal();
        peer.send_to(b"again", relay.addr()).await.unwrap();
        let (n, _) = node.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"again", "traffic flows again after heal");
    }
}
