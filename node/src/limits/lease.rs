//! One node's lease on one limit's quota for one bucket: units it may spend
//! in the current window without asking anyone. Admission is an atomic
//! decrement; everything else (asking for more, a new window, giving back)
//! happens off the request path, in `client.rs`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use tokio::sync::Notify;
use tollgate_proto::raft::v1::LeaseGrant;

/// Units held past their window are void; a lease never held any has
/// `window_end_ms == 0`.
pub struct Lease {
    pub limit_id: std::sync::Arc<str>,
    pub bucket: Box<str>,
    /// Units this node may still spend in the window. Negative while a
    /// reconciled reservation owes more than was reserved: the next grants
    /// pay it first.
    balance: AtomicI64,
    window_start_ms: AtomicI64,
    window_end_ms: AtomicI64,
    /// From the last answer: the limit's amount and what the cluster had
    /// leased in the window by then (for the RateLimit headers).
    amount: AtomicU64,
    cluster_granted: AtomicU64,
    /// The last answer granted nothing: the window is spent (as far as this
    /// node can tell) until it ends.
    spent_out: AtomicBool,
    answered_at_ms: AtomicI64,
    /// An ask for this lease is queued or in flight.
    asking: AtomicBool,
    /// The largest reservation waiting for a grant (the ask's `need`).
    need: AtomicU64,
    /// Units spent since this lease was created, for the rate estimate.
    spent: AtomicU64,
    pub(crate) last_used_ms: AtomicI64,
    sizing: Mutex<Sizing>,
    /// Units of the next window, leased ahead: (start, end, units).
    next: Mutex<Option<(i64, i64, u64)>>,
    /// An ask for the next window is queued or in flight, or was answered.
    asking_next: AtomicBool,
    answered: Notify,
}

/// The node's observed rate, to size the next ask.
#[derive(Default)]
struct Sizing {
    last_ask_ms: i64,
    spent_at_last_ask: u64,
    /// Units per second, smoothed.
    rate: f64,
    last_grant: u64,
}

/// What a request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Admitted; `ask` says the lease ran low and an ask should go out.
    Taken { ask: bool },
    /// Nothing (or not enough) left here; `ask` says whether an ask should go out.
    Empty { ask: bool },
    /// The cluster has nothing left in this window: refuse without waiting.
    SpentOut,
}

/// A view of the lease for response headers.
#[derive(Debug, Clone, Copy)]
pub struct LeaseView {
    pub amount: u64,
    /// Units the cluster can still admit in the window, as far as this node knows.
    pub remaining: u64,
    pub window_end_ms: i64,
}

impl Lease {
    pub fn new(limit_id: std::sync::Arc<str>, bucket: Box<str>) -> Lease {
        Lease {
            limit_id,
            bucket,
            balance: AtomicI64::new(0),
            // Any first grant is of a newer window.
            window_start_ms: AtomicI64::new(i64::MIN),
            window_end_ms: AtomicI64::new(0),
            amount: AtomicU64::new(0),
            cluster_granted: AtomicU64::new(0),
            spent_out: AtomicBool::new(false),
            answered_at_ms: AtomicI64::new(0),
            asking: AtomicBool::new(false),
            need: AtomicU64::new(0),
            spent: AtomicU64::new(0),
            last_used_ms: AtomicI64::new(0),
            sizing: Mutex::new(Sizing::default()),
            next: Mutex::new(None),
            asking_next: AtomicBool::new(false),
            answered: Notify::new(),
        }
    }

    /// Takes `units` if this node holds them for the window open at `now_ms`.
    /// `amount` is the limit's amount now: a window found spent under
    /// another amount (the limit was raised) is asked about again.
    pub fn try_take(&self, units: u64, amount: u64, now_ms: i64) -> Take {
        self.last_used_ms.store(now_ms, Ordering::Relaxed);
        let units = units as i64;
        let end = self.window_end_ms.load(Ordering::Acquire);
        if now_ms >= end && !self.roll(now_ms) {
            return Take::Empty { ask: self.start_asking(units) };
        }
        let mut balance = self.balance.load(Ordering::Acquire);
        loop {
            if balance < units {
                if self.is_spent_out(amount, now_ms) {
                    return Take::SpentOut;
                }
                // What it holds counts: the ask needs only the rest.
                return Take::Empty { ask: self.start_asking(units - balance.max(0)) };
            }
            match self.balance.compare_exchange_weak(balance, balance - units, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => balance = now,
            }
        }
        self.spent.fetch_add(units as u64, Ordering::Relaxed);
        // Ask for more before running out: at half of the last grant.
        let low_water = self.sizing.lock().map_or(0, |s| s.last_grant / 2) as i64;
        let low = balance - units <= low_water && self.start_asking(0);
        Take::Taken { ask: self.start_asking_ahead(now_ms) || low }
    }

    /// Near the end of the window, asks once for units of the next one, so
    /// that the window's roll finds them here instead of every request
    /// waiting for a grant at once.
    fn start_asking_ahead(&self, now_ms: i64) -> bool {
        let end = self.window_end_ms.load(Ordering::Acquire);
        let lead = (self.window_len_ms() / 10).clamp(50, 1_000);
        now_ms >= end - lead && !self.asking_next.swap(true, Ordering::AcqRel)
    }

    /// Moves to the units leased ahead once their window has opened; false
    /// when there are none for `now_ms`.
    fn roll(&self, now_ms: i64) -> bool {
        let Ok(mut next) = self.next.lock() else { return false };
        if self.window_end_ms.load(Ordering::Acquire) > now_ms {
            return true; // another request rolled it
        }
        match *next {
            Some((start, end, units)) if start <= now_ms && now_ms < end => {
                self.balance.store(units as i64, Ordering::Release);
                self.window_start_ms.store(start, Ordering::Release);
                self.window_end_ms.store(end, Ordering::Release);
                self.spent_out.store(false, Ordering::Release);
                *next = None;
                self.asking_next.store(false, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// Whether the client should ask for the next window (and not only
    /// for the open one) for this lease.
    pub(crate) fn wants_ahead(&self) -> bool {
        self.asking_next.load(Ordering::Acquire) && self.next.lock().is_ok_and(|n| n.is_none())
    }

    /// The last answer said the window is spent, for this amount, recently
    /// enough: in a long window, units other nodes give back are worth
    /// asking for again once a second.
    fn is_spent_out(&self, amount: u64, now_ms: i64) -> bool {
        const RECHECK_MS: i64 = 1_000;
        self.spent_out.load(Ordering::Acquire)
            && self.amount.load(Ordering::Acquire) == amount
            && now_ms - self.answered_at_ms.load(Ordering::Acquire) < RECHECK_MS
    }

    /// Marks the lease as asking; true if it was not already (the caller
    /// queues the ask).
    fn start_asking(&self, need: i64) -> bool {
        self.need.fetch_max(need.max(0) as u64, Ordering::AcqRel);
        !self.asking.swap(true, Ordering::AcqRel)
    }

    /// Gives units back to the lease: a reservation that used less, or a
    /// request refused by another limit after this one admitted it. Units
    /// of a window that has closed are dropped.
    pub fn refund(&self, units: u64, window_start_ms: i64) {
        if self.window_start_ms.load(Ordering::Acquire) == window_start_ms {
            self.balance.fetch_add(units as i64, Ordering::AcqRel);
            self.spent.fetch_sub(units.min(self.spent.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }

    /// Takes more units than were reserved (a call that used more): the
    /// balance may go negative, and the next grants pay the debt.
    pub fn charge(&self, units: u64, window_start_ms: i64) {
        if self.window_start_ms.load(Ordering::Acquire) == window_start_ms {
            self.balance.fetch_sub(units as i64, Ordering::AcqRel);
            self.spent.fetch_add(units, Ordering::Relaxed);
        }
    }

    pub fn window_start_ms(&self) -> i64 {
        self.window_start_ms.load(Ordering::Acquire)
    }

    pub fn view(&self) -> LeaseView {
        let amount = self.amount.load(Ordering::Relaxed);
        let granted = self.cluster_granted.load(Ordering::Relaxed);
        let own = self.balance.load(Ordering::Relaxed).max(0) as u64;
        LeaseView {
            amount,
            remaining: amount.saturating_sub(granted).saturating_add(own).min(amount),
            window_end_ms: self.window_end_ms.load(Ordering::Relaxed),
        }
    }

    /// What to ask for: the reservation waiting, or what the node is likely
    /// to spend over `horizon_ms` at its observed rate, whichever is more;
    /// doubling while the node drains leases faster than it asks.
    pub(crate) fn ask_size(&self, now_ms: i64, horizon_ms: i64) -> (u64, u64) {
        let need = self.need.swap(0, Ordering::AcqRel).max(1);
        let spent = self.spent.load(Ordering::Relaxed);
        let Ok(mut sizing) = self.sizing.lock() else { return (need, need) };
        let elapsed = (now_ms - sizing.last_ask_ms).max(1);
        let spent_since = spent.saturating_sub(sizing.spent_at_last_ask);
        let observed = spent_since as f64 * 1000.0 / elapsed as f64;
        sizing.rate = if sizing.last_ask_ms == 0 { observed } else { 0.5 * sizing.rate + 0.5 * observed };
        sizing.last_ask_ms = now_ms;
        sizing.spent_at_last_ask = spent;
        let by_rate = (sizing.rate * horizon_ms as f64 / 1000.0).ceil() as u64;
        let mut want = by_rate.max(spent_since.saturating_mul(2));
        // Near the end of the window, no more than the node can spend before
        // it closes: units still held then are stranded (leased, never spent).
        let end = self.window_end_ms.load(Ordering::Acquire);
        if self.has_held() && end > now_ms {
            let spendable = (sizing.rate * (end - now_ms) as f64 / 1000.0).ceil() as u64 + 1;
            want = want.min(spendable);
        }
        (want.max(need).max(1), need)
    }

    pub(crate) fn is_asking(&self) -> bool {
        self.asking.load(Ordering::Acquire)
    }

    /// What to ask ahead for the next window: the observed rate over the
    /// horizon (the rate estimate is left as it is).
    pub(crate) fn ahead_size(&self, horizon_ms: i64) -> u64 {
        let rate = self.sizing.lock().map_or(0.0, |s| s.rate);
        ((rate * horizon_ms as f64 / 1000.0).ceil() as u64).max(1)
    }

    /// Applies the answer to an ask, and wakes the requests waiting for it.
    pub(crate) fn answer(&self, grant: &LeaseGrant) {
        let units = grant.units as i64;
        if grant.window_start_ms > crate::clock::unix_ms() {
            // Units of a window still to come: kept until it opens.
            if let Ok(mut next) = self.next.lock() {
                *next = match *next {
                    Some((start, end, held)) if start == grant.window_start_ms => {
                        Some((start, end, held + grant.units))
                    }
                    _ => Some((grant.window_start_ms, grant.window_end_ms, grant.units)),
                };
            }
            self.answered.notify_waiters();
            return;
        }
        if grant.window_start_ms > self.window_start_ms.load(Ordering::Acquire) {
            // A new window: what was held (or owed) in the old one is void,
            // and the next one is yet to be asked for.
            let ahead = self.next.lock().ok().and_then(|mut n| n.take_if(|n| n.0 == grant.window_start_ms));
            self.balance.store(units + ahead.map_or(0, |n| n.2 as i64), Ordering::Release);
            self.asking_next.store(false, Ordering::Release);
            self.window_start_ms.store(grant.window_start_ms, Ordering::Release);
            self.window_end_ms.store(grant.window_end_ms, Ordering::Release);
        } else if grant.window_start_ms == self.window_start_ms.load(Ordering::Acquire) {
            self.balance.fetch_add(units, Ordering::AcqRel);
        }
        self.amount.store(grant.amount, Ordering::Relaxed);
        self.cluster_granted.store(grant.granted, Ordering::Relaxed);
        self.spent_out.store(grant.units == 0 && grant.granted >= grant.amount, Ordering::Release);
        self.answered_at_ms.store(crate::clock::unix_ms(), Ordering::Release);
        if let Ok(mut sizing) = self.sizing.lock() {
            sizing.last_grant = grant.units;
        }
        self.finish_asking();
    }

    /// Units this lease holds that `grant`, of a later window, makes void:
    /// leased and never spent (the cost of leasing, bounded by one grant).
    pub(crate) fn strands_on(&self, grant: &LeaseGrant) -> u64 {
        if grant.window_start_ms > self.window_start_ms.load(Ordering::Acquire) {
            self.balance.load(Ordering::Acquire).max(0) as u64
        } else {
            0
        }
    }

    /// The ask failed (no quorum, a timeout): waiters are woken to refuse.
    pub(crate) fn finish_asking(&self) {
        self.asking.store(false, Ordering::Release);
        self.answered.notify_waiters();
    }

    /// Units held in the open window that this node gives up (it went idle):
    /// taken out of the balance so they cannot be spent after being returned.
    pub(crate) fn take_unspent(&self) -> (u64, i64) {
        let units = self.balance.swap(0, Ordering::AcqRel).max(0) as u64;
        (units, self.window_start_ms.load(Ordering::Acquire))
    }

    pub(crate) fn window_end_ms(&self) -> i64 {
        self.window_end_ms.load(Ordering::Acquire)
    }

    /// A future that completes at the next answer; made before the caller
    /// checks the balance again, so an answer in between is not missed.
    pub fn answered(&self) -> tokio::sync::futures::Notified<'_> {
        self.answered.notified()
    }

    /// The length of the lease's window; 0 before its first grant.
    pub(crate) fn window_len_ms(&self) -> i64 {
        if !self.has_held() {
            return 0;
        }
        self.window_end_ms.load(Ordering::Acquire).saturating_sub(self.window_start_ms.load(Ordering::Acquire))
    }

    pub fn has_held(&self) -> bool {
        self.window_end_ms.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(units: u64, start: i64, granted: u64) -> LeaseGrant {
        LeaseGrant {
            units,
            window_start_ms: start,
            window_end_ms: start + 1_000,
            amount: 10,
            granted,
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_admits_what_it_was_granted_in_its_window_only() {
        let lease = Lease::new("l".into(), "b".into());
        assert_eq!(lease.try_take(1, 10, 10), Take::Empty { ask: true }, "never held: ask");
        assert_eq!(lease.try_take(1, 10, 10), Take::Empty { ask: false }, "already asking");
        lease.answer(&grant(3, 0, 3));
        assert_eq!(lease.try_take(1, 10, 10), Take::Taken { ask: false });
        assert_eq!(lease.try_take(1, 10, 10), Take::Taken { ask: true }, "at the low-water mark it asks ahead");
        assert_eq!(lease.try_take(1, 10, 10), Take::Taken { ask: false }, "already asking");
        assert_eq!(lease.try_take(1, 10, 10), Take::Empty { ask: false });
        // The window closes: nothing left from it can be spent.
        lease.answer(&grant(2, 0, 5));
        assert_eq!(lease.try_take(1, 10, 1_000), Take::Empty { ask: true });
        lease.answer(&grant(4, 1_000, 4));
        assert_eq!(lease.view().remaining, 10, "10 - 4 leased + 4 held");
        assert!(matches!(lease.try_take(4, 10, 1_500), Take::Taken { .. }));
    }

    #[test]
    fn units_leased_ahead_are_spent_once_their_window_opens() {
        // Windows in the future of the real clock, as a grant ahead is.
        let base = (crate::clock::unix_ms() / 1_000 + 60) * 1_000;
        let lease = Lease::new("l".into(), "b".into());
        lease.answer(&grant(0, 0, 0));
        lease.answer(&grant(4, base, 0));
        assert_eq!(lease.try_take(1, 10, base - 10), Take::Empty { ask: true }, "not open yet");
        assert!(matches!(lease.try_take(4, 10, base + 5), Take::Taken { .. }), "rolled to the units ahead");
        assert_eq!(lease.window_start_ms(), base);
        assert!(matches!(lease.try_take(1, 10, base + 6), Take::Empty { .. }));
        // Near the end of the window it asks ahead, once.
        let lease = Lease::new("l".into(), "b".into());
        lease.answer(&grant(5, 0, 5));
        assert_eq!(lease.try_take(1, 10, 800), Take::Taken { ask: false });
        assert_eq!(lease.try_take(1, 10, 950), Take::Taken { ask: true });
        assert!(lease.wants_ahead());
        assert!(matches!(lease.try_take(1, 10, 960), Take::Taken { .. }));
    }

    #[test]
    fn a_spent_window_refuses_without_asking_and_debts_are_paid_first() {
        let lease = Lease::new("l".into(), "b".into());
        lease.answer(&grant(0, 0, 10));
        assert_eq!(lease.try_take(1, 10, 5), Take::SpentOut);
        let lease = Lease::new("l".into(), "b".into());
        lease.answer(&grant(5, 0, 5));
        lease.charge(7, 0);
        assert_eq!(lease.try_take(1, 10, 5), Take::Empty { ask: true }, "owes 2");
        lease.answer(&grant(3, 0, 8));
        assert!(matches!(lease.try_take(1, 10, 5), Take::Taken { .. }), "3 granted paid 2 of debt, 1 left");
        lease.refund(2, -1_000);
        assert_eq!(lease.try_take(1, 10, 5), Take::Empty { ask: false }, "a refund of a closed window is dropped");
    }
}
