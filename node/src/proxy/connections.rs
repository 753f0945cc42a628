//! The proxy's client connections, counted against `proxy.max_connections`
//! so that a flood of idle clients cannot take the descriptors the admin API,
//! the ops listener and Raft need (DESIGN §8). When the proxy is full, an
//! idle connection is closed to make room for the newcomer; only when none is
//! idle is the newcomer refused. Shutdown closes every connection gracefully,
//! then forcibly after the drain timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::ClientConn;
use crate::telemetry::metrics::Metrics;

/// How long a new connection waits for an evicted idle one to go before it
/// is refused. Closing an idle connection takes a scheduler tick; this only
/// runs out when the one chosen turned busy (or is an HTTP/2 connection
/// still finishing streams).
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// At most one "proxy is full" warning per this period, with counts.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How a connection is asked to close. Only ever goes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Close {
    Open = 0,
    /// HTTP/1: finish the request in progress, then close; HTTP/2: GOAWAY.
    Graceful = 1,
    /// Drop it now (the drain timeout ran out).
    Now = 2,
}

/// Per-connection state the tracker reads; lives in [`ClientConn`].
#[derive(Default)]
pub(crate) struct ConnState {
    /// Requests whose handler has not yet produced response headers.
    in_flight: AtomicU32,
    close: AtomicU8,
    /// Woken when `close` goes up; holds the wake-up if the connection's
    /// task has not started waiting yet.
    closed: Notify,
}

impl ConnState {
    pub(crate) fn close_requested(&self) -> Close {
        match self.close.load(Ordering::Acquire) {
            0 => Close::Open,
            1 => Close::Graceful,
            _ => Close::Now,
        }
    }

    /// Resolves when a close is requested (again).
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.closed.notified()
    }

    fn request_close(&self, how: Close) {
        if self.close.fetch_max(how as u8, Ordering::AcqRel) < how as u8 {
            self.closed.notify_one();
        }
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.close_requested() == Close::Open
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self)
    }
}

pub(crate) struct Busy<'a>(&'a ConnState);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps a connection busy while a response body is still streaming to it
/// (a download, server-sent events, an AI stream): such a connection is not
/// idle, and closing it "to make room" would free nothing until it ends.
pub(crate) struct Streaming(Arc<ClientConn>);

impl Streaming {
    pub(crate) fn new(conn: &Arc<ClientConn>) -> Streaming {
        conn.state.in_flight.fetch_add(1, Ordering::AcqRel);
        Streaming(conn.clone())
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All client connections of the proxy listeners (plain and TLS share one
/// budget, as they share the process's descriptors).
pub struct Connections {
    max: usize,
    /// By accept order, so eviction prefers the oldest.
    live: Mutex<BTreeMap<u64, Arc<ClientConn>>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Woken whenever a connection goes.
    changed: Notify,
    draining: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
    /// When the last "full" warning was logged, and what happened since.
    warned: Mutex<(Option<Instant>, u64, u64)>,
}

/// Holds one place in [`Connections`] until dropped (when the connection's
/// task ends, however it ends).
pub struct ConnGuard {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        {
            let mut live = self.connections.lock();
            live.remove(&self.id);
            // Set under the lock, so concurrent changes cannot leave a stale count.
            self.connections.metrics.proxy_connections.set(live.len() as i64);
        }
        self.connections.changed.notify_waiters();
    }
}

impl Connections {
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Connections {
        Connections {
            max: max.max(1),
            live: Mutex::new(BTreeMap::new()),
            next_id: Default::default(),
            changed: Notify::new(),
            draining: Default::default(),
            metrics,
            warned: Mutex::new((None, 0, 0)),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn open(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ClientConn>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a place for `conn` if one is free.
    pub fn try_admit(self: &Arc<Self>, conn: &Arc<ClientConn>) -> Option<ConnGuard> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut live = self.lock();
            if live.len() >= self.max {
                return None;
            }
            live.insert(id, conn.clone());
            self.metrics.proxy_connections.set(live.len() as i64);
        }
        // Accepted by the other listener just as this one drains: close it too.
        if self.draining.load(Ordering::Acquire) {
            conn.state.request_close(Close::Graceful);
        }
        Some(ConnGuard { connections: self.clone(), id })
    }

    /// Admits `conn` at the cap by closing an idle connection to make room,
    /// waiting (bounded) for it to go. `None`: refused, the caller closes it.
    pub async fn admit_evicting(self: &Arc<Self>, conn: &Arc<ClientConn>) -> Option<ConnGuard> {
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a close in between still wakes us.
            changed.as_mut().enable();
            if let Some(guard) = self.try_admit(conn) {
                return Some(guard);
            }
            if !self.evict_one() {
                self.full(false);
                return None;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => {
                    self.full(false);
                    return None;
                }
            }
        }
    }

    /// Asks one idle connection to close: one that never sent a request
    /// first (the kind a flood of idle clients opens), else the oldest idle
    /// keep-alive connection. False when every connection is busy.
    ///
    /// A scan is linear in the open connections, but only runs when the
    /// proxy is full, and stops at the first idle one.
    fn evict_one(&self) -> bool {
        let live = self.lock();
        let victim = live
            .values()
            .find(|c| c.state.idle() && !c.sent_a_request())
            .or_else(|| live.values().find(|c| c.state.idle()))
            .cloned();
        drop(live);
        let Some(victim) = victim else { return false };
        victim.state.request_close(Close::Graceful);
        self.metrics.proxy_connections_evicted.inc();
        self.full(true);
        true
    }

    /// Counts a connection refused (or an idle one evicted) at the cap, and
    /// logs a warning at most every [`WARN_EVERY`].
    fn full(&self, evicted: bool) {
        if !evicted {
            self.metrics.proxy_connections_refused.inc();
        }
        let mut warned = self.warned.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if evicted {
            warned.1 += 1;
        } else {
            warned.2 += 1;
        }
        if warned.0.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        let (evicted, refused) = (warned.1, warned.2);
        *warned = (Some(Instant::now()), 0, 0);
        drop(warned);
        tracing::warn!(
            max_connections = self.max,
            idle_closed = evicted,
            refused,
            "the proxy is at proxy.max_connections: closing idle connections to make room, refusing new ones \
             when none is idle; raise proxy.max_connections (and the open-file limit) or add nodes"
        );
    }

    /// Asks every connection to close (`Graceful`), or drops them (`Now`).
    pub(crate) fn close_all(&self, how: Close) {
        self.draining.store(true, Ordering::Release);
        for conn in self.lock().values() {
            conn.state.request_close(how);
        }
    }

    /// Resolves once no connection is open.
    pub async fn closed(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// Upstream requests in flight, capped at `proxy.max_connections` too: an
/// HTTP/2 client opens up to 200 streams per connection, each of which may
/// hold an upstream connection (for as long as the client withholds its
/// flow-control window), so the client cap alone does not bound the
/// upstream descriptors. Past the cap a request gets 503 `overloaded`, never
/// counted against a target.
pub struct UpstreamSlots {
    max: usize,
    used: AtomicUsize,
}

/// One upstream request in flight; held by its response body until it ends.
pub struct UpstreamSlot(Arc<UpstreamSlots>);

impl UpstreamSlots {
    pub fn new(max: usize) -> UpstreamSlots {
        UpstreamSlots { max: max.max(1), used: AtomicUsize::new(0) }
    }

    pub fn try_take(self: &Arc<Self>) -> Option<UpstreamSlot> {
        if self.used.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(UpstreamSlot(self.clone()))
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(port: u16) -> Arc<ClientConn> {
        Arc::new(ClientConn::new(([127, 0, 0, 1], port).into(), false))
    }

    #[tokio::test]
    async fn at_the_cap_an_idle_connection_makes_room_and_busy_ones_do_not() {
        let connections = Arc::new(Connections::new(2, Arc::new(Metrics::new())));
        let (a, b, c) = (conn(1), conn(2), conn(3));
        let guard_a = connections.try_admit(&a).unwrap();
        let guard_b = connections.try_admit(&b).unwrap();
        assert!(connections.try_admit(&c).is_none(), "full");

        // Both busy: nothing to evict, the newcomer is refused at once.
        let (busy_a, busy_b) = (a.state.busy(), b.state.busy());
        assert!(connections.admit_evicting(&c).await.is_none());
        assert_eq!(connections.metrics.proxy_connections_refused.get(), 1);
        drop(busy_b);

        // b is idle now: asked to close; its task ends and drops its guard.
        let admitting = {
            let connections = connections.clone();
            let c = c.clone();
            tokio::spawn(async move { connections.admit_evicting(&c).await })
        };
        tokio::time::timeout(Duration::from_secs(5), b.state.notified()).await.expect("b is asked to close");
        assert_eq!(b.state.close_requested(), Close::Graceful);
        assert_eq!(a.state.close_requested(), Close::Open, "the busy connection is left alone");
        drop(guard_b);
        let guard_c = admitting.await.unwrap().expect("room was made");
        assert_eq!(connections.open(), 2);
        assert_eq!(connections.metrics.proxy_connections_evicted.get(), 1);
        drop((busy_a, guard_a, guard_c));
        assert_eq!(connections.open(), 0);
    }

    #[tokio::test]
    async fn connections_that_never_sent_a_request_go_first() {
        let connections = Arc::new(Connections::new(2, Arc::new(Metrics::new())));
        let (old, new) = (conn(1), conn(2));
        let _g1 = connections.try_admit(&old).unwrap();
        let _g2 = connections.try_admit(&new).unwrap();
        old.request_arrived();
        assert!(connections.evict_one());
        assert_eq!(new.state.close_requested(), Close::Graceful);
        assert_eq!(old.state.close_requested(), Close::Open);
        assert!(connections.evict_one(), "then the oldest idle one");
        assert_eq!(old.state.close_requested(), Close::Graceful);
        assert!(!connections.evict_one(), "both are closing already");
    }

    #[tokio::test]
    async fn close_all_reaches_connections_admitted_while_draining() {
        let connections = Arc::new(Connections::new(4, Arc::new(Metrics::new())));
        let a = conn(1);
        let guard = connections.try_admit(&a).unwrap();
        connections.close_all(Close::Graceful);
        let late = conn(2);
        let late_guard = connections.try_admit(&late).unwrap();
        assert_eq!(late.state.close_requested(), Close::Graceful);
        connections.close_all(Close::Now);
        assert_eq!(a.state.close_requested(), Close::Now);
        drop((guard, late_guard));
        tokio::time::timeout(Duration::from_secs(5), connections.closed()).await.unwrap();
    }
}
