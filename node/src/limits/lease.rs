//! One node's lease on one limit's quota for one bucket: units it may spend
//! in the current window without asking anyone. Admission is an atomic
//! decrement; everything else (asking for more, a new window, giving back)
//! happens off the request path, in `client.rs`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use tokio::sync::Notify;
use tollgate_proto::raft::v1::LeaseGrant;

/// `Lease::ask_state`'s bit for an ask queued or in flight.
const ASKING: u64 = 1;

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
    /// Bit 0: an ask for this lease is queued or in flight. The other bits:
    /// how many asks failed (no quorum, a timeout, the limit gone). One word,
    /// so that a request finding the lease empty learns in the same step
    /// which failures came before it looked: a waiter is refused by a later
    /// failure only, and never asks again for one it missed.
    ask_state: AtomicU64,
    /// The largest reservation waiting for a grant (the ask's `need`).
    need: AtomicU64,
    /// Units spent since this lease was created, for the rate estimate.
    spent: AtomicU64,
    /// Units of requests this lease refused because no grant came within
    /// their wait, for the rate estimate too: a node starved of units spends
    /// less than it is asked for, and sized by what it spent alone it would
    /// keep asking for too little while other nodes hold units. (Refusals of
    /// a spent window are not counted: the cluster had nothing left to ask
    /// for, and counting them would reward the clients that retry most.)
    turned_away: AtomicU64,
    /// `spent` and `turned_away` when the open window began here, for the
    /// window's own rate.
    spent_at_window_start: AtomicU64,
    turned_away_at_window_start: AtomicU64,
    pub(crate) last_used_ms: AtomicI64,
    sizing: Mutex<Sizing>,
    /// Units of the next window, leased ahead: (start, end, units). Its
    /// lock also serialises every change of window with every addition to
    /// the balance (grants, refunds, charges), so that units of one window
    /// never land in another's balance; admission itself takes no lock.
    next: Mutex<Option<(i64, i64, u64)>>,
    /// An ask for the next window is queued or in flight, or was answered.
    asking_next: AtomicBool,
    answered: Notify,
    /// Units leased to this node that became void unspent (a change of
    /// window, a grant that landed late, an ahead slot dropped or
    /// replaced) and that the client has not reported yet (`take_stranded`).
    stranded: AtomicU64,
}

/// The node's observed rate of units asked for (spent or refused), to
/// size the next ask.
#[derive(Default)]
struct Sizing {
    last_ask_ms: i64,
    spent_at_last_ask: u64,
    turned_away_at_last_ask: u64,
    /// Units asked for per second, smoothed.
    rate: f64,
    last_grant: u64,
}

/// What a request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Admitted; `ask` says the lease ran low and an ask should go out.
    Taken { ask: bool, window_start_ms: i64 },
    /// Nothing (or not enough) left here; `ask` says whether an ask should
    /// go out. `failed_asks` is the lease's count of failed asks when this
    /// request looked: a waiter is refused when it changes.
    Empty { ask: bool, failed_asks: u64 },
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
            ask_state: AtomicU64::new(0),
            need: AtomicU64::new(0),
            spent: AtomicU64::new(0),
            turned_away: AtomicU64::new(0),
            spent_at_window_start: AtomicU64::new(0),
            turned_away_at_window_start: AtomicU64::new(0),
            last_used_ms: AtomicI64::new(0),
            sizing: Mutex::new(Sizing::default()),
            next: Mutex::new(None),
            asking_next: AtomicBool::new(false),
            answered: Notify::new(),
            stranded: AtomicU64::new(0),
        }
    }

    /// Takes `units` if this node holds them for the window open at `now_ms`.
    /// `amount` is the limit's amount now: a window found spent under
    /// another amount (the limit was raised) is asked about again.
    pub fn try_take(&self, units: u64, amount: u64, now_ms: i64) -> Take {
        self.take_or_ask(units, amount, now_ms, None)
    }

    /// `try_take` for a request that found the lease empty when its count
    /// of failed asks was `failed_asks`: once that count has moved, the
    /// request's ask has failed, and it takes what the lease holds but asks
    /// no more (it comes back `Empty` with `ask: false` and the new count,
    /// to be refused).
    pub(crate) fn try_take_waiting(&self, units: u64, amount: u64, now_ms: i64, failed_asks: u64) -> Take {
        self.take_or_ask(units, amount, now_ms, Some(failed_asks))
    }

    fn take_or_ask(&self, units: u64, amount: u64, now_ms: i64, failed_asks: Option<u64>) -> Take {
        self.last_used_ms.store(now_ms, Ordering::Relaxed);
        // More than any balance can hold (a client's `max_tokens` of 2^63):
        // never admitted, and never cast to a negative take that would add
        // to the balance.
        let Ok(units) = i64::try_from(units) else { return Take::SpentOut };
        let end = self.window_end_ms.load(Ordering::Acquire);
        if now_ms >= end && !self.roll(now_ms) {
            return self.empty(units, failed_asks);
        }
        // Read before the balance: a window change stores the balance first,
        // so a unit taken across a change is tagged with the older window,
        // and a refund for it is dropped (never added to the newer one).
        let window_start_ms = self.window_start_ms.load(Ordering::Acquire);
        let mut balance = self.balance.load(Ordering::Acquire);
        loop {
            if balance < units {
                if self.is_spent_out(amount, (units - balance.max(0)) as u64, now_ms) {
                    return Take::SpentOut;
                }
                // What it holds counts: the ask needs only the rest.
                return self.empty(units - balance.max(0), failed_asks);
            }
            match self.balance.compare_exchange_weak(balance, balance - units, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => balance = now,
            }
        }
        self.spent.fetch_add(units as u64, Ordering::Relaxed);
        // Ask for more before running out: at half of the last grant.
        let low_water = self.sizing.lock().map_or(0, |s| s.last_grant / 2) as i64;
        let low = balance - units <= low_water && self.start_asking();
        Take::Taken { ask: self.start_asking_ahead(now_ms) || low, window_start_ms }
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
            Some((start, end, units)) if start <= now_ms && now_ms < end && start > self.window_start_ms() => {
                self.replace_balance(units as i64);
                self.mark_window_start();
                self.window_start_ms.store(start, Ordering::Release);
                self.window_end_ms.store(end, Ordering::Release);
                self.spent_out.store(false, Ordering::Release);
                *next = None;
                self.asking_next.store(false, Ordering::Release);
                true
            }
            _ => {
                // A slot for a window that passed unused is dropped (its
                // units stranded), so that the next window can be asked for
                // ahead again.
                if let Some((_, _, units)) = next.take_if(|(_, end, _)| *end <= now_ms) {
                    self.stranded.fetch_add(units, Ordering::Relaxed);
                    self.asking_next.store(false, Ordering::Release);
                }
                false
            }
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
    /// `need` is what this node lacks: spent means the cluster had less
    /// than that left at the last answer.
    fn is_spent_out(&self, amount: u64, need: u64, now_ms: i64) -> bool {
        const RECHECK_MS: i64 = 1_000;
        self.spent_out.load(Ordering::Acquire)
            && self.amount.load(Ordering::Acquire) == amount
            && need > amount.saturating_sub(self.cluster_granted.load(Ordering::Acquire))
            && now_ms - self.answered_at_ms.load(Ordering::Acquire) < RECHECK_MS
    }

    /// Marks the lease as asking; true if it was not already (the caller
    /// queues the ask).
    fn start_asking(&self) -> bool {
        self.ask_state.fetch_or(ASKING, Ordering::AcqRel) & ASKING == 0
    }

    /// A request lacking `need` units: it asks unless an ask is out, or,
    /// for a waiter (`seen` failed asks when it first looked), unless an ask
    /// failed since: the check and the mark are one step, so a waiter never
    /// queues an ask after its own failed.
    fn empty(&self, need: i64, seen: Option<u64>) -> Take {
        let marked = match seen {
            None => Ok(self.ask_state.fetch_or(ASKING, Ordering::AcqRel)),
            Some(seen) => self.ask_state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state >> 1 == seen).then_some(state | ASKING)
            }),
        };
        match marked {
            Ok(before) => {
                self.need.fetch_max(need.max(0) as u64, Ordering::AcqRel);
                Take::Empty { ask: before & ASKING == 0, failed_asks: before >> 1 }
            }
            Err(now) => Take::Empty { ask: false, failed_asks: now >> 1 },
        }
    }

    /// Notes a request this lease refused because no grant came within its
    /// wait, for the next ask's size. A request for more than the limit's
    /// whole amount could never be admitted, and is not counted.
    pub(crate) fn turn_away(&self, units: u64, amount: u64) {
        if units <= amount {
            self.turned_away.fetch_add(units, Ordering::Relaxed);
        }
    }

    /// The limit's amount per second, once an answer named the amount and
    /// the window.
    fn limit_rate(&self) -> Option<f64> {
        let window = self.window_len_ms();
        let amount = self.amount.load(Ordering::Relaxed);
        (window > 0 && amount > 0).then(|| amount as f64 * 1000.0 / window as f64)
    }

    /// Gives units back to the lease: a reservation that used less, or a
    /// request refused by another limit after this one admitted it. Units
    /// of a window that has closed are dropped.
    pub fn refund(&self, units: u64, window_start_ms: i64) {
        let _window = self.next.lock();
        if self.window_start_ms.load(Ordering::Acquire) == window_start_ms {
            self.add_to_balance(i64::try_from(units).unwrap_or(i64::MAX));
            self.spent.fetch_sub(units.min(self.spent.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }

    /// Takes more units than were reserved (a call that used more): the
    /// balance may go negative, and the next grants pay the debt.
    pub fn charge(&self, units: u64, window_start_ms: i64) {
        let _window = self.next.lock();
        if self.window_start_ms.load(Ordering::Acquire) == window_start_ms {
            // A provider's usage is not trusted to be small.
            self.add_to_balance(i64::try_from(units).map_or(i64::MIN, |units| -units));
            let _ = self.spent.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| Some(s.saturating_add(units)));
        }
    }

    /// Refunds and charges (not the request path): saturating, so that no
    /// amount wraps the balance around to its other sign.
    fn add_to_balance(&self, units: i64) {
        let _ = self.balance.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_add(units)));
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
    /// doubling while the node drains leases faster than it asks. The rate
    /// is of what the node was asked for: units spent, and units of requests
    /// it refused.
    pub(crate) fn ask_size(&self, now_ms: i64, horizon_ms: i64) -> (u64, u64) {
        let need = self.need.swap(0, Ordering::AcqRel).max(1);
        let spent = self.spent.load(Ordering::Relaxed);
        let turned_away = self.turned_away.load(Ordering::Relaxed);
        let Ok(mut sizing) = self.sizing.lock() else { return (need, need) };
        let elapsed = (now_ms - sizing.last_ask_ms).max(1);
        let spent_since = spent.saturating_sub(sizing.spent_at_last_ask);
        let refused_since = turned_away.saturating_sub(sizing.turned_away_at_last_ask);
        let per_second = |units: u64| units as f64 * 1000.0 / elapsed as f64;
        // Spent and refused, up to the limit's own rate (a node cannot be
        // asked for more than the whole cluster may admit; a burst spent in
        // a few milliseconds says little more, and the doubling below still
        // follows it); refusals not at all before an answer named the
        // limit's amount and window, without which there is no such bound.
        // (Capping only the refusals, so that spending counts whole, was
        // tried: in the slow-network cluster test it under-admitted more.)
        let observed = match self.limit_rate() {
            Some(cap) => per_second(spent_since.saturating_add(refused_since)).min(cap),
            None => per_second(spent_since),
        };
        sizing.rate = if sizing.last_ask_ms == 0 { observed } else { 0.5 * sizing.rate + 0.5 * observed };
        sizing.last_ask_ms = now_ms;
        sizing.spent_at_last_ask = spent;
        sizing.turned_away_at_last_ask = turned_away;
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
        self.ask_state.load(Ordering::Acquire) & ASKING != 0
    }

    /// What to ask ahead for the next window: the observed rate over the
    /// horizon (the rate estimate is left as it is), but no more than the
    /// open window's own rate gives. The smoothed rate follows the gaps
    /// between asks, and a node with bursty traffic (a few requests at
    /// once, then none) sees spikes in it; units leased ahead on a spike
    /// are held through the next window unspent while other nodes are
    /// refused.
    pub(crate) fn ahead_size(&self, now_ms: i64, horizon_ms: i64) -> u64 {
        let smoothed = self.sizing.lock().map_or(0.0, |s| s.rate);
        let rate = self.window_rate(now_ms).map_or(smoothed, |window| smoothed.min(window));
        ((rate * horizon_ms as f64 / 1000.0).ceil() as u64).max(1)
    }

    /// Units per second asked for (spent, or refused for want of a grant
    /// in time) in the open window so far, once the window has run long
    /// enough (100 ms) to say. Not capped here: `ahead_size` takes the
    /// smaller of this and the smoothed rate, which is. Only for windows of
    /// a minute or less: over an hour or a day, the average since the
    /// window opened says little of the next second (traffic ramps up; a
    /// node joins late).
    fn window_rate(&self, now_ms: i64) -> Option<f64> {
        let elapsed = now_ms - self.window_start_ms();
        if elapsed < 100 || !self.has_held() || self.window_len_ms() > 60_000 {
            return None;
        }
        // Saturating: a refund may take `spent` below its mark.
        let spent =
            self.spent.load(Ordering::Relaxed).saturating_sub(self.spent_at_window_start.load(Ordering::Relaxed));
        let refused = self
            .turned_away
            .load(Ordering::Relaxed)
            .saturating_sub(self.turned_away_at_window_start.load(Ordering::Relaxed));
        Some(spent.saturating_add(refused) as f64 * 1000.0 / elapsed as f64)
    }

    /// Marks where the open window's counts begin (a change of window).
    fn mark_window_start(&self) {
        self.spent_at_window_start.store(self.spent.load(Ordering::Relaxed), Ordering::Relaxed);
        self.turned_away_at_window_start.store(self.turned_away.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Applies the answer to an ask, and wakes the requests waiting for it.
    pub(crate) fn answer(&self, grant: &LeaseGrant) {
        self.apply_grant(grant, crate::clock::unix_ms());
        self.finish_asking();
    }

    fn apply_grant(&self, grant: &LeaseGrant, now_ms: i64) {
        let units = grant.units as i64;
        let Ok(mut next) = self.next.lock() else { return };
        let current = self.window_start_ms.load(Ordering::Acquire);
        if grant.window_end_ms <= now_ms || grant.window_start_ms < current {
            // A window that has closed (by this node's clock, or because
            // this node moved on): its units and its news are void.
            self.stranded.fetch_add(grant.units, Ordering::Relaxed);
            return;
        }
        if grant.window_start_ms > now_ms {
            // Units of a window still to come: kept until it opens (units
            // held for another window to come are void: one slot).
            *next = match *next {
                Some((start, end, held)) if start == grant.window_start_ms => Some((start, end, held + grant.units)),
                other => {
                    self.stranded.fetch_add(other.map_or(0, |(_, _, held)| held), Ordering::Relaxed);
                    Some((grant.window_start_ms, grant.window_end_ms, grant.units))
                }
            };
            return;
        }
        if grant.window_start_ms > current {
            // A new window: what was held (or owed) in the old one is void.
            let ahead = next.take_if(|n| n.0 == grant.window_start_ms);
            if let Some((_, _, passed)) = next.take_if(|n| n.0 < grant.window_start_ms) {
                self.stranded.fetch_add(passed, Ordering::Relaxed);
            }
            self.replace_balance(units + ahead.map_or(0, |n| n.2 as i64));
            self.mark_window_start();
            self.asking_next.store(false, Ordering::Release);
            self.window_start_ms.store(grant.window_start_ms, Ordering::Release);
            self.window_end_ms.store(grant.window_end_ms, Ordering::Release);
        } else {
            self.balance.fetch_add(units, Ordering::AcqRel);
        }
        self.amount.store(grant.amount, Ordering::Relaxed);
        self.cluster_granted.store(grant.granted, Ordering::Relaxed);
        // Nothing granted: what is left cannot hold what was needed (apply
        // grants at least the need whenever that much is left).
        self.spent_out.store(grant.units == 0, Ordering::Release);
        self.answered_at_ms.store(now_ms, Ordering::Release);
        if let Ok(mut sizing) = self.sizing.lock() {
            sizing.last_grant = grant.units;
        }
    }

    /// Starts a new window's balance: what the old one still held is void
    /// (stranded: leased and never spent); a debt it owed is forgiven.
    fn replace_balance(&self, balance: i64) {
        let left = self.balance.swap(balance, Ordering::AcqRel);
        if left > 0 {
            self.stranded.fetch_add(left as u64, Ordering::Relaxed);
        }
    }

    /// Units stranded since the last call, voided by a change of window.
    pub(crate) fn take_stranded(&self) -> u64 {
        self.stranded.swap(0, Ordering::AcqRel)
    }

    /// Empties a lease that is being dropped, its windows over: all it
    /// holds, leased ahead included, and what was stranded and not yet
    /// reported.
    pub(crate) fn strand_all(&self) -> u64 {
        // Under the lock that every change of window takes, so that a
        // request still holding the lease cannot roll the slot into the
        // balance between the two takes.
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let ahead = next.take().map_or(0, |(_, _, units)| units);
        ahead + self.balance.swap(0, Ordering::AcqRel).max(0) as u64 + self.take_stranded()
    }

    /// The end of the window units are leased ahead for, if any: until
    /// then the lease holds units that may still be spent.
    pub(crate) fn ahead_end_ms(&self) -> i64 {
        self.next.lock().unwrap_or_else(|p| p.into_inner()).map_or(0, |(_, end, _)| end)
    }

    /// No ask is pending any more: waiters are woken to look again.
    pub(crate) fn finish_asking(&self) {
        self.ask_state.fetch_and(!ASKING, Ordering::AcqRel);
        self.answered.notify_waiters();
    }

    /// The ask sent for this lease failed (no quorum, a timeout, the limit
    /// gone): waiters are woken to refuse (they see `failed_asks` change).
    /// The count goes up and the ask ends in one step, so that no request
    /// sees the lease idle without this failure counted.
    pub(crate) fn ask_failed(&self) {
        let _ = self.ask_state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| Some(((state >> 1) + 1) << 1));
        self.answered.notify_waiters();
    }

    /// How many asks for this lease have failed so far (requests learn it
    /// from `Take::Empty`, in the same step as the asking flag).
    #[cfg(test)]
    pub(crate) fn failed_asks(&self) -> u64 {
        self.ask_state.load(Ordering::Acquire) >> 1
    }

    #[cfg(test)]
    pub(crate) fn turned_away(&self) -> u64 {
        self.turned_away.load(Ordering::Relaxed)
    }

    /// Units held in the open window that this node gives up (it went idle):
    /// taken out of the balance so they cannot be spent after being returned.
    pub(crate) fn take_unspent(&self) -> (u64, i64) {
        let _window = self.next.lock();
        // A debt (negative balance) stays to be paid.
        let held = self.balance.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| (b > 0).then_some(0));
        (held.map_or(0, |b| b as u64), self.window_start_ms.load(Ordering::Acquire))
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

    /// An answer arriving at `now` on a virtual clock.
    fn answer_at(lease: &Lease, grant: &LeaseGrant, now: i64) {
        lease.apply_grant(grant, now);
        lease.finish_asking();
    }

    fn taken(take: Take) -> bool {
        matches!(take, Take::Taken { .. })
    }

    fn asks(take: Take) -> bool {
        matches!(take, Take::Taken { ask: true, .. } | Take::Empty { ask: true, .. })
    }

    #[test]
    fn units_left_in_a_window_are_stranded_when_the_lease_moves_past_it_and_not_before() {
        let lease = Lease::new("l".into(), "b".into());
        assert!(asks(lease.try_take(1, 10, 10)));
        answer_at(&lease, &grant(5, 0, 5), 10);
        assert!(taken(lease.try_take(1, 10, 100)), "4 left");
        // Units of the next window, leased ahead: the open window's 4 may
        // still be spent, so none is stranded yet.
        answer_at(&lease, &grant(3, 1_000, 8), 900);
        assert_eq!(lease.take_stranded(), 0, "leased ahead");
        assert!(taken(lease.try_take(1, 10, 950)), "3 left");
        // The next window opens (a request rolls the lease into it): the 3
        // left in the old one are void.
        assert!(taken(lease.try_take(1, 10, 1_000)), "2 left of the new window's 3");
        assert_eq!(lease.take_stranded(), 3);
        assert_eq!(lease.take_stranded(), 0, "reported once");
        // A grant of a newer open window voids what the old one held.
        answer_at(&lease, &grant(4, 2_000, 4), 2_000);
        assert_eq!(lease.take_stranded(), 2);
        // A debt is forgiven, not stranded.
        lease.charge(10, 2_000);
        answer_at(&lease, &grant(4, 3_000, 4), 3_000);
        assert_eq!(lease.take_stranded(), 0);
        // Units leased ahead for a window that passed unused are stranded
        // when the slot is dropped.
        answer_at(&lease, &grant(2, 4_000, 6), 3_950);
        assert!(!taken(lease.try_take(1, 10, 5_500)), "both windows are over");
        assert_eq!(lease.take_stranded(), 2);
        // A grant that lands after its window closed is void as it lands.
        answer_at(&lease, &grant(5, 4_000, 10), 5_500);
        assert_eq!(lease.take_stranded(), 5);
        // One slot ahead: units for another window to come replace it.
        answer_at(&lease, &grant(3, 6_000, 9), 5_990);
        answer_at(&lease, &grant(2, 7_000, 9), 5_995);
        assert_eq!((lease.take_stranded(), lease.ahead_end_ms()), (3, 8_000));
        // A lease forgotten after its windows strands all it held.
        assert_eq!(lease.strand_all(), 4 + 2, "the 4 left in the window of 3,000 and the 2 leased ahead");
        assert_eq!((lease.strand_all(), lease.ahead_end_ms()), (0, 0));
    }

    #[test]
    fn a_request_that_finds_the_lease_empty_counts_only_the_failures_before_it_looked() {
        let lease = Lease::new("l".into(), "b".into());
        assert_eq!(lease.try_take(1, 10, 10), Take::Empty { ask: true, failed_asks: 0 }, "asks");
        assert_eq!(lease.try_take(1, 10, 10), Take::Empty { ask: false, failed_asks: 0 }, "waits for that ask");
        lease.ask_failed();
        assert_eq!(lease.failed_asks(), 1);
        assert!(!lease.is_asking(), "the failed ask is over in the same step");
        // Both waiters saw 0: looking again, each finds the count moved (to
        // be refused) and asks no more.
        assert_eq!(lease.try_take_waiting(1, 10, 10, 0), Take::Empty { ask: false, failed_asks: 1 });
        assert!(!lease.is_asking(), "no ask queued for a waiter whose ask failed");
        // A request that looks after the failure asks anew, and that failure
        // (which it never waited for) does not refuse it.
        assert_eq!(lease.try_take(1, 10, 10), Take::Empty { ask: true, failed_asks: 1 });
        assert_eq!(lease.try_take_waiting(1, 10, 10, 1), Take::Empty { ask: false, failed_asks: 1 }, "waits");
        // An answer ends the ask and leaves the count alone; units there
        // admit even a waiter whose own ask failed.
        answer_at(&lease, &grant(3, 0, 3), 10);
        assert_eq!((lease.failed_asks(), lease.is_asking()), (1, false));
        assert!(taken(lease.try_take_waiting(1, 10, 10, 0)));
        assert!(taken(lease.try_take(1, 10, 10)));
        // A failure reported with no ask out still counts once.
        lease.ask_failed();
        assert_eq!((lease.failed_asks(), lease.is_asking()), (2, false));
    }

    #[test]
    fn a_lease_admits_what_it_was_granted_in_its_window_only() {
        let lease = Lease::new("l".into(), "b".into());
        assert_eq!(lease.try_take(1, 10, 10), Take::Empty { ask: true, failed_asks: 0 }, "never held: ask");
        assert_eq!(lease.try_take(1, 10, 10), Take::Empty { ask: false, failed_asks: 0 }, "already asking");
        answer_at(&lease, &grant(3, 0, 3), 10);
        assert_eq!(lease.try_take(1, 10, 10), Take::Taken { ask: false, window_start_ms: 0 });
        assert!(asks(lease.try_take(1, 10, 10)), "at the low-water mark it asks ahead of running out");
        assert!(taken(lease.try_take(1, 10, 10)) && !asks(lease.try_take(0, 10, 10)), "already asking");
        assert_eq!(lease.try_take(1, 10, 10), Take::Empty { ask: false, failed_asks: 0 });
        // The window closes: nothing left from it can be spent, and a late
        // grant of it is void.
        assert!(!taken(lease.try_take(1, 10, 1_000)));
        answer_at(&lease, &grant(2, 0, 5), 1_000);
        assert!(!taken(lease.try_take(1, 10, 1_001)));
        answer_at(&lease, &grant(4, 1_000, 4), 1_001);
        assert_eq!(lease.view().remaining, 10, "10 - 4 leased + 4 held");
        assert!(taken(lease.try_take(4, 10, 1_500)));
    }

    #[test]
    fn units_of_one_window_never_land_in_another() {
        let lease = Lease::new("l".into(), "b".into());
        answer_at(&lease, &grant(5, 0, 5), 10);
        let Take::Taken { window_start_ms, .. } = lease.try_take(5, 10, 20) else { panic!("admitted") };
        answer_at(&lease, &grant(1, 1_000, 1), 1_010);
        // A refund (a reservation that used less) of the closed window is dropped.
        lease.refund(5, window_start_ms);
        assert!(taken(lease.try_take(1, 10, 1_020)));
        assert!(!taken(lease.try_take(1, 10, 1_030)), "only the new window's unit was there");
        // An answer about an older window changes nothing (not even "spent").
        answer_at(&lease, &grant(0, 0, 10), 1_040);
        assert!(!lease.is_spent_out(10, 1, 1_040));
    }

    #[test]
    fn units_leased_ahead_are_spent_once_their_window_opens() {
        let lease = Lease::new("l".into(), "b".into());
        answer_at(&lease, &grant(5, 0, 5), 10);
        assert!(taken(lease.try_take(1, 10, 800)));
        // Near the end of the window it asks ahead, once.
        assert!(asks(lease.try_take(1, 10, 950)));
        assert!(lease.wants_ahead());
        answer_at(&lease, &grant(4, 1_000, 4), 960);
        assert!(!lease.wants_ahead(), "answered");
        assert!(taken(lease.try_take(1, 10, 990)), "the open window's units first");
        assert!(taken(lease.try_take(4, 10, 1_005)), "rolled to the units ahead");
        assert_eq!(lease.window_start_ms(), 1_000);
        // A slot for a window that passed unused is dropped: asking ahead resumes.
        answer_at(&lease, &grant(3, 3_000, 3), 2_500);
        assert!(!taken(lease.try_take(1, 10, 4_500)));
        assert!(asks(lease.try_take(1, 10, 4_501)) || lease.is_asking());
    }

    #[test]
    fn a_burst_does_not_lease_the_next_window_away() {
        let lease = Lease::new("l".into(), "b".into());
        // A limit of 1,000 a second: its rate does not bound what follows.
        answer_at(&lease, &LeaseGrant { amount: 1_000, ..grant(10, 0, 10) }, 0);
        assert!(taken(lease.try_take(1, 100, 480)));
        lease.ask_size(490, 250);
        // Four at once, then an ask 10 ms later: the smoothed rate spikes to ~200/s.
        for at in 495..499 {
            assert!(taken(lease.try_take(1, 100, at)));
        }
        lease.ask_size(500, 250);
        // Five in 950 ms is ~5/s: a quarter second of the next window is 2 units, not 50.
        assert!(lease.ahead_size(950, 250) <= 2, "{}", lease.ahead_size(950, 250));
    }

    /// Leases of a limit of 200 a second (what the whole cluster may
    /// admit), each granted 3 units at 10 ms and spending them at 20-22 ms.
    fn leases_that_spent_three_of_200<const N: usize>() -> [Lease; N] {
        let three_of_200 = LeaseGrant { amount: 200, ..grant(3, 0, 3) };
        std::array::from_fn(|_| {
            let lease = Lease::new("l".into(), "b".into());
            answer_at(&lease, &three_of_200, 10);
            lease.ask_size(10, 250);
            for at in 20..23 {
                assert!(taken(lease.try_take(1, 200, at)));
            }
            lease
        })
    }

    /// The cluster test `uneven_load_at_twice_the_limit…` once saw a window
    /// admit 87 of 100: the busy node, refused for want of units, measured
    /// its rate by what it could spend and kept asking for little while the
    /// quiet nodes held units they would not spend.
    #[test]
    fn a_node_refused_for_want_of_units_asks_for_what_it_was_asked_not_what_it_spent() {
        let [starved, fed, flooded] = leases_that_spent_three_of_200();
        // 30 more requests in the next quarter second, refused here: no
        // grant came within their wait.
        for _ in 0..30 {
            starved.turn_away(1, 200);
        }
        // One that could never be admitted is not counted; a flood is
        // counted only up to the limit's own rate.
        starved.turn_away(201, 200);
        for _ in 0..10_000 {
            flooded.turn_away(1, 200);
        }
        let (starved_asks, _) = starved.ask_size(260, 250);
        let (fed_asks, _) = fed.ask_size(260, 250);
        let (flooded_asks, _) = flooded.ask_size(260, 250);
        // 33 asked for in 250 ms is 132 a second (66 once smoothed with the
        // first ask's 0): a quarter second of that is 17 units. The node that
        // was asked for 3 and spent them asks for twice its spending, 6.
        assert_eq!(fed_asks, 6);
        assert_eq!(starved_asks, 17, "sized by what it was asked for, refusals included");
        // 200 a second at most (100 once smoothed): 25 units.
        assert_eq!(flooded_asks, 25, "no more than the limit's own rate");
    }

    /// The same for the next window, leased ahead: a node refused for want
    /// of units in the open window asks ahead for what it was asked, not
    /// only what it could spend (which would start every window short).
    #[test]
    fn a_node_refused_for_want_of_units_asks_ahead_for_what_it_was_asked() {
        let [starved, fed] = leases_that_spent_three_of_200();
        for _ in 0..60 {
            starved.turn_away(1, 200);
        }
        starved.ask_size(260, 250);
        fed.ask_size(260, 250);
        // The fed node spent 3 in 900 ms: a quarter second of that is 1 unit.
        assert_eq!(fed.ahead_size(900, 250), 1);
        // The starved one was asked for 63 in the window, 70 a second (its
        // smoothed rate, capped at the limit's 200, is 100): the smaller, for
        // a quarter second, is 18 units; by its spending alone it was 1.
        assert_eq!(starved.ahead_size(900, 250), 18, "refusals in the window count");
    }

    /// `units as i64` made a take of 2^64 - 1 units a take of -1: admitted,
    /// and one more unit in the balance each time.
    #[test]
    fn a_take_beyond_any_balance_is_refused_and_changes_nothing() {
        let lease = Lease::new("l".into(), "b".into());
        answer_at(&lease, &grant(5, 0, 5), 10);
        for units in [u64::MAX, 1 << 63] {
            assert_eq!(lease.try_take(units, 10, 20), Take::SpentOut);
        }
        assert_eq!(lease.view().remaining, 10, "5 held, 5 left in the cluster: unchanged");
        lease.charge(u64::MAX, 0);
        assert!(!taken(lease.try_take(1, 10, 20)), "a charge beyond any balance leaves a debt, not units");
        lease.refund(u64::MAX, 0);
        assert!(taken(lease.try_take(1, 10, 20)), "and a refund beyond it pays the debt without wrapping");
    }

    #[test]
    fn a_spent_window_refuses_without_asking_and_debts_are_paid_first() {
        let lease = Lease::new("l".into(), "b".into());
        answer_at(&lease, &grant(0, 0, 10), 5);
        assert_eq!(lease.try_take(1, 10, 5), Take::SpentOut);
        assert!(!matches!(lease.try_take(1, 20, 5), Take::SpentOut), "raised: ask again");
        let lease = Lease::new("l".into(), "b".into());
        answer_at(&lease, &grant(5, 0, 5), 5);
        lease.charge(7, 0);
        assert_eq!(lease.try_take(1, 10, 5), Take::Empty { ask: true, failed_asks: 0 }, "owes 2");
        assert_eq!(lease.take_unspent().0, 0, "a debt is not given back, nor forgiven");
        answer_at(&lease, &grant(3, 0, 8), 5);
        assert!(taken(lease.try_take(1, 10, 5)), "3 granted paid 2 of debt, 1 left");
    }
}
