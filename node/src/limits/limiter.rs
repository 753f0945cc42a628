//! This node's leases and the admission of a request across every limit
//! that applies to it. The request path only takes units from leases it
//! holds; asking for more is the background task of `client.rs`, which a
//! request at most waits for, briefly (`limits.lease_wait_ms`).

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tollgate_proto::config::v1::{Limit, LimitUnit};

use super::compiled::Bucketed;
use super::lease::{Lease, LeaseView, Take};
use crate::plumbing::{LimitRefusal, RefusalCause};
use crate::telemetry::limit_metrics::{LimitCounters, LimitMetrics};

pub struct Limiter {
    /// By limit id, then bucket: a lookup takes no allocation.
    leases: RwLock<HashMap<Arc<str>, LimitLeases>>,
    asks: mpsc::UnboundedSender<Arc<Lease>>,
    pub(crate) config: crate::config::Limits,
    pub(crate) metrics: LimitMetrics,
}

struct LimitLeases {
    counters: Arc<LimitCounters>,
    by_bucket: HashMap<Box<str>, Arc<Lease>>,
}

/// Units taken for one request, to give back if it is refused by a later
/// limit, or to reconcile once its real usage is known.
#[derive(Default)]
pub struct Taken {
    pub(crate) parts: Vec<TakenPart>,
}

pub(crate) struct TakenPart {
    pub(crate) lease: Arc<Lease>,
    pub(crate) limit: Arc<Limit>,
    pub(crate) units: u64,
    pub(crate) window_start_ms: i64,
}

impl Taken {
    /// Returns every unit taken (the request was refused after all).
    pub fn give_back(self) {
        for part in self.parts {
            part.lease.refund(part.units, part.window_start_ms);
        }
    }

    /// Every limit taken from, with its lease's view.
    pub fn views(&self) -> impl Iterator<Item = (&Limit, LeaseView)> {
        self.parts.iter().map(|p| (p.limit.as_ref(), p.lease.view()))
    }

    /// Reconciles each part with the units actually used (`actual` says how
    /// many, or None to keep what was taken): the difference is refunded
    /// to, or charged on, the lease of the window the units came from.
    pub fn settle(self, actual: impl Fn(&Limit) -> Option<u64>) {
        for part in self.parts {
            let Some(used) = actual(&part.limit) else { continue };
            if used < part.units {
                part.lease.refund(part.units - used, part.window_start_ms);
            } else if used > part.units {
                part.lease.charge(used - part.units, part.window_start_ms);
            }
        }
    }

    /// The lease views for response headers: the limit with the least left,
    /// relative to its amount, speaks for all of them. The reset is the end
    /// of the window the request's units were taken from (the lease may
    /// have moved on to the next window since).
    pub fn tightest(&self) -> Option<(&Limit, LeaseView)> {
        self.parts
            .iter()
            .map(|p| {
                let mut view = p.lease.view();
                if let Some((_, end)) = tollgate_proto::limits::window_bounds(p.limit.window(), p.window_start_ms) {
                    view.window_end_ms = end;
                }
                (p.limit.as_ref(), view)
            })
            .min_by_key(|(_, view)| view.remaining.saturating_mul(1_000) / view.amount.max(1))
    }
}

impl Limiter {
    /// The limiter and the receiving end of its asks, for `client::run`.
    pub fn new(
        config: crate::config::Limits,
        metrics: LimitMetrics,
    ) -> (Arc<Limiter>, mpsc::UnboundedReceiver<Arc<Lease>>) {
        let (asks, receiver) = mpsc::unbounded_channel();
        let limiter = Limiter { leases: RwLock::new(HashMap::new()), asks, config, metrics };
        (Arc::new(limiter), receiver)
    }

    /// Takes `units_of(limit)` from this node's lease of every limit in
    /// `limits`, waiting briefly for a grant where the lease is empty; all
    /// or nothing. A limit for which `units_of` says 0 is not consulted.
    pub async fn admit(
        &self,
        limits: &[Bucketed],
        units_of: impl Fn(&Limit) -> u64,
    ) -> Result<Taken, Box<LimitRefusal>> {
        self.admit_waiting(limits, units_of, self.config.lease_wait_ms).await
    }

    /// As `admit`, for a call that may wait `first_lease_wait_ms` for a
    /// grant even on a lease it held before: an AI call lasts seconds, and
    /// its reservation (hundreds of tokens) often needs a grant of its own.
    pub async fn admit_patiently(
        &self,
        limits: &[Bucketed],
        units_of: impl Fn(&Limit) -> u64,
    ) -> Result<Taken, Box<LimitRefusal>> {
        self.admit_waiting(limits, units_of, self.config.first_lease_wait_ms).await
    }

    async fn admit_waiting(
        &self,
        limits: &[Bucketed],
        units_of: impl Fn(&Limit) -> u64,
        refill_wait_ms: u64,
    ) -> Result<Taken, Box<LimitRefusal>> {
        // More than a whole window holds (an AI call's `max_tokens` is the
        // client's to set): no grant could ever admit it, so it is refused,
        // saying so, before any limit is taken from or asked.
        for bucketed in limits {
            let units = units_of(&bucketed.limit);
            if units > bucketed.limit.amount {
                // No lease for its bucket (one per client address, say): the
                // refusal tells the policy, not the window's state.
                self.metrics.too_large_of(&bucketed.limit.name).inc();
                let unheld = LeaseView { amount: bucketed.limit.amount, remaining: 0, window_end_ms: 0 };
                return Err(Box::new(refusal(&bucketed.limit, unheld, RefusalCause::TooLarge { units })));
            }
        }
        let mut taken = Taken { parts: Vec::with_capacity(limits.len()) };
        for bucketed in limits {
            let units = units_of(&bucketed.limit);
            if units == 0 {
                continue;
            }
            let (lease, counters) = self.lease(&bucketed.limit, &bucketed.bucket);
            match self.take(&lease, units, bucketed.limit.amount, refill_wait_ms).await {
                Ok(window_start_ms) => {
                    counters.admitted.inc();
                    taken.parts.push(TakenPart { lease, limit: bucketed.limit.clone(), units, window_start_ms });
                }
                Err(cause) => {
                    counters.refused.inc();
                    if cause == RefusalCause::NotInTime {
                        lease.turn_away(units, bucketed.limit.amount);
                    }
                    taken.give_back();
                    return Err(Box::new(refusal(&bucketed.limit, lease.view(), cause)));
                }
            }
        }
        Ok(taken)
    }

    /// Takes `units` from `lease`, asking for more and waiting for the
    /// answer (bounded) when it is empty; the window the units are of.
    async fn take(
        &self,
        lease: &Arc<Lease>,
        units: u64,
        amount: u64,
        refill_wait_ms: u64,
    ) -> Result<i64, RefusalCause> {
        // The failures counted when this request found the lease empty, read
        // in the same step: only an ask that fails after that refuses it.
        let failed_before = match self.decide(lease, lease.try_take(units, amount, crate::clock::unix_ms())) {
            Decision::Done(decided) => return decided,
            Decision::Wait { failed_asks } => failed_asks,
        };
        let wait = if lease.has_held() { refill_wait_ms } else { self.config.first_lease_wait_ms };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
        loop {
            // Registered before the balance is looked at again, so an answer
            // that lands in between wakes this request.
            let mut answered = pin!(lease.answered());
            answered.as_mut().enable();
            let now = crate::clock::unix_ms();
            match self.decide(lease, lease.try_take_waiting(units, amount, now, failed_before)) {
                Decision::Done(decided) => return decided,
                // The ask this request waits for failed (no quorum, the limit
                // deleted meanwhile): refused now, not asked again and again
                // (each a Raft command) until the wait ends.
                Decision::Wait { failed_asks } if failed_asks != failed_before => return Err(RefusalCause::NotInTime),
                Decision::Wait { .. } => {}
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return Err(RefusalCause::NotInTime);
            }
        }
    }

    /// What a take decided, queuing an ask if it says so.
    fn decide(&self, lease: &Arc<Lease>, take: Take) -> Decision {
        match take {
            Take::Taken { ask, window_start_ms } => {
                if ask {
                    self.queue(lease);
                }
                Decision::Done(Ok(window_start_ms))
            }
            Take::SpentOut => Decision::Done(Err(RefusalCause::Spent)),
            Take::Empty { ask, failed_asks } => {
                if ask {
                    self.queue(lease);
                }
                Decision::Wait { failed_asks }
            }
        }
    }

    fn queue(&self, lease: &Arc<Lease>) {
        // The client task is gone only at shutdown; the request then waits out its bound.
        let _ = self.asks.send(lease.clone());
    }

    /// The lease of `bucket` and its limit's counters (shared, not copied:
    /// this runs on every request).
    pub(crate) fn lease(&self, limit: &Limit, bucket: &str) -> (Arc<Lease>, Arc<LimitCounters>) {
        let limit_id = limit.id();
        if let Ok(leases) = self.leases.read()
            && let Some(of_limit) = leases.get(limit_id)
            && let Some(lease) = of_limit.by_bucket.get(bucket)
        {
            return (lease.clone(), of_limit.counters.clone());
        }
        let mut leases = self.leases.write().unwrap_or_else(|p| p.into_inner());
        let of_limit = leases.entry(Arc::from(limit_id)).or_insert_with(|| LimitLeases {
            counters: Arc::new(self.metrics.of(&limit.name)),
            by_bucket: HashMap::new(),
        });
        let lease = of_limit
            .by_bucket
            .entry(Box::from(bucket))
            .or_insert_with(|| Arc::new(Lease::new(Arc::from(limit_id), Box::from(bucket))))
            .clone();
        (lease, of_limit.counters.clone())
    }

    pub fn counters_of(&self, limit: &Limit) -> Option<Arc<LimitCounters>> {
        self.counters(limit.id())
    }

    pub(crate) fn counters(&self, limit_id: &str) -> Option<Arc<LimitCounters>> {
        self.leases.read().ok()?.get(limit_id).map(|l| l.counters.clone())
    }

    /// Every lease, for the client's periodic give-back and clean-up.
    pub(crate) fn all_leases(&self) -> Vec<Arc<Lease>> {
        let Ok(leases) = self.leases.read() else { return Vec::new() };
        leases.values().flat_map(|l| l.by_bucket.values().cloned()).collect()
    }

    /// Forgets leases whose windows ended before `before_ms` and that no
    /// request used since: a bucket per client address would otherwise grow
    /// the map without bound.
    pub(crate) fn forget_stale(&self, before_ms: i64) {
        let mut leases = self.leases.write().unwrap_or_else(|p| p.into_inner());
        for of_limit in leases.values_mut() {
            of_limit.by_bucket.retain(|_, lease| {
                // Kept while a window it holds units of (the open one, or
                // the next, leased ahead) is not long over.
                // (The slot's lock is taken last, and only for a lease the
                // atomics would let go: this runs under the map's write lock.)
                let kept = lease.window_end_ms() >= before_ms
                    || lease.last_used_ms.load(std::sync::atomic::Ordering::Relaxed) >= before_ms
                    || lease.ahead_end_ms() >= before_ms;
                if !kept {
                    // Its windows are long over: what it still holds was never spent.
                    of_limit.counters.stranded_units.inc_by(lease.strand_all());
                }
                kept
            });
        }
        leases.retain(|_, l| !l.by_bucket.is_empty());
    }
}

/// What a refused request is told: which limit, and when to retry.
fn refusal(limit: &Limit, view: LeaseView, cause: RefusalCause) -> LimitRefusal {
    let now = crate::clock::unix_ms();
    let reset_at_ms = if view.window_end_ms > now {
        view.window_end_ms
    } else {
        // Never held a lease (no quorum, or the grant did not come in
        // time): the window as this node's clock has it.
        tollgate_proto::limits::window_bounds(limit.window(), now).map_or(now + 1_000, |(_, end)| end)
    };
    LimitRefusal {
        policy: limit.name.clone(),
        amount: limit.amount,
        window_secs: limit.window_secs(),
        reset_at_ms,
        now_ms: now,
        budget: limit.unit() == LimitUnit::CostMicros,
        cause,
        what: format!("{} {} per {}", limit.amount, limit.unit_text(), limit.window_text()),
        unit: limit.unit_text(),
    }
}

/// What one look at a lease decided.
enum Decision {
    /// Admitted in the window that started then, or refused.
    Done(Result<i64, RefusalCause>),
    /// Wait for a grant; `failed_asks` is the lease's count of failed asks
    /// when the request looked.
    Wait { failed_asks: u64 },
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tollgate_proto::config::v1::{Limit, LimitWindow, Meta};

    use super::*;

    /// A cluster-wide limit named by its id.
    fn global_limit(id: &str, amount: u64, window: LimitWindow) -> Arc<Limit> {
        Arc::new(Limit {
            meta: Some(Meta { id: id.into(), ..Default::default() }),
            name: id.into(),
            amount,
            window: window as i32,
            global: true,
            ..Default::default()
        })
    }

    /// A request waiting for its first grant is refused when the ask fails
    /// (no quorum, the limit deleted meanwhile), and does not ask again:
    /// each ask is a Raft command, and the wait may last seconds. (An ask
    /// failing between a waiter's check and its next look cannot be staged
    /// on this runtime; the lease's own test pins that look,
    /// `try_take_waiting`.)
    #[tokio::test(start_paused = true)]
    async fn a_failed_ask_refuses_its_waiters_without_asking_again() {
        let config = crate::config::Limits { first_lease_wait_ms: 60_000, ..Default::default() };
        let (limiter, mut asks) = Limiter::new(config, LimitMetrics::default());
        let limit = Limit {
            meta: Some(Meta { id: "limit-1".into(), ..Default::default() }),
            name: "per-second".into(),
            amount: 10,
            window: LimitWindow::Second as i32,
            global: true,
            ..Default::default()
        };
        let limits = [Bucketed { limit: Arc::new(limit), bucket: "".into() }];
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.admit(&limits, |_| 1).await.map(|_| ()).map_err(|refusal| refusal.cause) }
        });
        let lease = asks.recv().await.expect("the first request asks for a lease");
        let failed_at = tokio::time::Instant::now();
        lease.ask_failed();
        assert_eq!(waiting.await.unwrap(), Err(RefusalCause::NotInTime), "refused as not in time, not as spent");
        // The clock is paused: it moves only if the request sat out its wait.
        assert_eq!(failed_at.elapsed(), Duration::ZERO, "refused at once, not at the end of its wait");
        assert!(asks.try_recv().is_err(), "the failed ask was not sent again for the same request");
    }

    /// A request for more units than the limit's whole amount is refused
    /// at once, without an ask, and takes nothing from the lease.
    #[tokio::test(start_paused = true)]
    async fn a_request_beyond_the_limits_amount_is_refused_without_asking() {
        use tollgate_proto::raft::v1::LeaseGrant;
        let (limiter, mut asks) = Limiter::new(Default::default(), LimitMetrics::default());
        let limit = global_limit("tokens", 100, LimitWindow::Day);
        let now = crate::clock::unix_ms();
        let (lease, _) = limiter.lease(&limit, "");
        lease.answer(&LeaseGrant {
            limit_id: "tokens".into(),
            units: 100,
            amount: 100,
            granted: 100,
            window_start_ms: now - 1_000,
            window_end_ms: now + 60_000,
            ..Default::default()
        });
        let limits = [Bucketed { limit, bucket: "".into() }];
        for units in [101, 1 << 63, u64::MAX] {
            let refusal = limiter.admit(&limits, |_| units).await.map(|_| ()).unwrap_err();
            assert_eq!(refusal.cause, RefusalCause::TooLarge { units }, "{refusal:?}");
            assert_eq!(refusal.retry_after_secs(), None, "no retry can admit it");
        }
        assert!(asks.try_recv().is_err(), "nothing asked for");
        assert_eq!(lease.view().remaining, 100, "nothing taken");
        // Nor from a limit checked before the one it is too large for.
        let small = global_limit("small", 10, LimitWindow::Day);
        let both = [limits[0].clone(), Bucketed { limit: small, bucket: "".into() }];
        let refusal = limiter.admit(&both, |_| 50).await.map(|_| ()).unwrap_err();
        assert_eq!((refusal.policy.as_str(), refusal.cause), ("small", RefusalCause::TooLarge { units: 50 }));
        assert_eq!(lease.view().remaining, 100, "the first limit was not taken from either");
        assert!(asks.try_recv().is_err(), "and nothing asked for");
        assert!(limiter.admit(&limits, |_| 100).await.is_ok(), "the whole amount still fits");
    }

    /// A request refused because no grant came within its wait counts
    /// toward the size of the refusing lease's next ask; one refused by a
    /// spent window does not (the cluster had nothing left to ask for), nor
    /// does a lease that admitted it before another refused it.
    #[tokio::test(start_paused = true)]
    async fn only_a_wait_that_ran_out_counts_toward_the_refusing_leases_next_ask() {
        use tollgate_proto::raft::v1::LeaseGrant;
        let config = crate::config::Limits { lease_wait_ms: 10, ..Default::default() };
        let (limiter, _asks) = Limiter::new(config, LimitMetrics::default());
        let limit = |id: &str| global_limit(id, 10, LimitWindow::Minute);
        let (roomy, spent) = (limit("roomy"), limit("spent"));
        let now = crate::clock::unix_ms();
        let grant = |id: &str, units: u64| LeaseGrant {
            limit_id: id.into(),
            units,
            amount: 10,
            granted: 10,
            window_start_ms: now - 1_000,
            window_end_ms: now + 60_000,
            ..Default::default()
        };
        let (roomy_lease, _) = limiter.lease(&roomy, "");
        roomy_lease.answer(&grant("roomy", 10));
        let (spent_lease, _) = limiter.lease(&spent, "");
        spent_lease.answer(&grant("spent", 0));
        let both = [Bucketed { limit: roomy.clone(), bucket: "".into() }, Bucketed { limit: spent, bucket: "".into() }];
        let refusal = limiter.admit(&both, |_| 3).await.map(|_| ()).unwrap_err();
        assert_eq!(refusal.cause, RefusalCause::Spent, "{refusal:?}");
        assert_eq!(spent_lease.turned_away(), 0, "the window is spent: nothing to ask for");
        assert_eq!(roomy_lease.turned_away(), 0, "the lease that admitted it gets its units back instead");

        // A wait that runs out: nobody answers the ask (the clock is paused,
        // so the wait passes as soon as nothing else can run).
        let waited = limit("waited");
        let alone = [Bucketed { limit: waited.clone(), bucket: "".into() }];
        let refusal = limiter.admit(&alone, |_| 2).await.map(|_| ()).unwrap_err();
        assert_eq!(refusal.cause, RefusalCause::NotInTime);
        assert_eq!(limiter.lease(&waited, "").0.turned_away(), 2);
    }
}
