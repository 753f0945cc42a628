//! Quota leases: the only place the cluster hands out permission to admit.
//!
//! For each limit and value of its scope (a bucket), the state holds the
//! current window and what each node was granted in it. A lease command
//! asks for units for a node; apply grants at most what the window has
//! left, so the grants of a window never add up to more than the limit's
//! amount, whichever node asks, however often, and across leader changes
//! (the grants are replicated state, not the leader's memory).
//!
//! Windows are opened by the replicated clock: the time inside the command.
//! A bucket's window only moves forward: a command stamped with an earlier
//! time (a node whose clock lags) is granted units of the window already
//! open, never of one that closed, so clock skew cannot spend a window twice.
//! The grants of a window die with it: a node that dies holding units
//! strands them only until the window ends.
//!
//! A bucket's record outlives its window so that a lagging clock cannot
//! reopen it; a bucket nobody asks for again (a client address seen once, a
//! revoked key) is deleted [`KEEP_CLOSED_MS`] after its last window ended,
//! by a bounded sweep each lease command makes ([`sweep`]), so the state
//! does not grow with every bucket ever seen.

use std::collections::BTreeMap;

use tollgate_proto::config::v1::{Limit, Meta, NodeGrant, QuotaPeriod, QuotaWindow};
use tollgate_proto::limits::{quota_window_id, window_bounds};
use tollgate_proto::raft::v1::{LeaseAsk, LeaseGrant, LeaseGrants, LeaseRequest};

use super::{Change, Outcome};
use crate::error::ApplyError;
use crate::state::GatewayState;

/// Asks per command: a node batches the buckets it needs.
pub(crate) const MAX_ASKS: usize = 1024;
/// Bytes of a bucket (a key id, an IP, a model name).
pub(crate) const MAX_BUCKET_LEN: usize = 256;
/// Quota records a lease command looks at for collection: a few lease
/// commands per node per second sweep a million stale buckets in hours,
/// and no command does more than this much extra work.
pub(crate) const SWEEP_PER_COMMAND: usize = 16;
/// How long a bucket's record is kept after its window (and any window
/// leased ahead) ended: the clock skew between nodes this tolerates before a
/// node whose clock lags could be granted units of a window the others
/// consider closed.
pub(crate) const KEEP_CLOSED_MS: i64 = 10 * 60_000;

pub(crate) fn lease(state: &GatewayState, request: &LeaseRequest, now: i64, index: u64) -> Result<Outcome, ApplyError> {
    check(request)?;
    // Asks for one bucket in one command see each other's grants.
    let mut windows: BTreeMap<String, QuotaWindow> = BTreeMap::new();
    let mut grants = Vec::with_capacity(request.asks.len());
    for ask in &request.asks {
        let Some(limit) = state.limit(&ask.limit_id) else {
            grants.push(LeaseGrant {
                limit_id: ask.limit_id.clone(),
                bucket: ask.bucket.clone(),
                limit_missing: true,
                ..Default::default()
            });
            continue;
        };
        let id = quota_window_id(&ask.limit_id, &ask.bucket);
        let stored = windows.get(&id).cloned().or_else(|| state.quota_window(&id).map(|w| w.as_ref().clone()));
        let Some(mut window) = current_window(limit, stored, &ask.bucket, now) else {
            return Err(ApplyError::invalid("proposed_at_ms", format!("{now} is outside the calendar")));
        };
        give_back(&mut window, request.node_id, ask);
        let grant = if ask.next_window {
            grant_next(&mut window, limit, request.node_id, ask)
        } else {
            let units = grant_size(limit.amount, window.granted, ask);
            if units > 0 {
                *node_units(&mut window.grants, request.node_id) += units;
                window.granted += units;
                window.leases += 1;
            }
            LeaseGrant {
                units,
                window_start_ms: window.window_start_ms,
                window_end_ms: window.window_end_ms,
                granted: window.granted,
                ..Default::default()
            }
        };
        grants.push(LeaseGrant {
            limit_id: ask.limit_id.clone(),
            bucket: ask.bucket.clone(),
            amount: limit.amount,
            limit_missing: false,
            ..grant
        });
        windows.insert(id, window);
    }
    // From after the last bucket this command writes: its asks change with
    // the traffic, so successive commands look at different records.
    let swept = match windows.keys().next_back() {
        Some(last) => sweep(state, last, now, &windows),
        None => Vec::new(),
    };
    let changes = windows
        .into_iter()
        .map(|(id, mut window)| {
            let created = state.quota_window(&id).and_then(|w| w.meta.as_ref()).map_or(now, |m| m.created_at_ms);
            window.meta = Some(Meta { id, created_at_ms: created, updated_at_ms: now, revision: index });
            Change::Put(crate::entities::AnyEntity::QuotaWindow(std::sync::Arc::new(window)))
        })
        .chain(swept)
        .collect();
    Ok(Outcome { changes, entity: Some(prost::Message::encode_to_vec(&LeaseGrants { grants })) })
}

/// Deletes, of the [`SWEEP_PER_COMMAND`] records from `from` on (wrapping
/// around the table) other than the ones this command writes, those whose
/// last window ended [`KEEP_CLOSED_MS`] before `now`. Deterministic: it
/// depends on the state and the command only, like everything apply does.
fn sweep(state: &GatewayState, from: &str, now: i64, written: &BTreeMap<String, QuotaWindow>) -> Vec<Change> {
    let table = state.table::<QuotaWindow>();
    let mut ids = std::collections::BTreeSet::new();
    let closed = |w: &QuotaWindow| {
        let last_end = w.next.as_ref().map_or(w.window_end_ms, |n| n.window_end_ms.max(w.window_end_ms));
        last_end.saturating_add(KEEP_CLOSED_MS) <= now
    };
    let others = |w: &&std::sync::Arc<QuotaWindow>| !written.contains_key(crate::registry::Entity::id(w.as_ref()));
    for window in table.values_from(from).chain(table.values()).filter(others).take(SWEEP_PER_COMMAND) {
        if closed(window) {
            ids.insert(crate::registry::Entity::id(window.as_ref()).to_string());
        }
    }
    ids.into_iter().map(|id| Change::delete::<QuotaWindow>(&id)).collect()
}

fn check(request: &LeaseRequest) -> Result<(), ApplyError> {
    if request.node_id == 0 {
        return Err(ApplyError::invalid("node_id", "must name the node the lease is for"));
    }
    if request.asks.is_empty() || request.asks.len() > MAX_ASKS {
        return Err(ApplyError::invalid("asks", format!("must hold 1 to {MAX_ASKS} asks")));
    }
    for (i, ask) in request.asks.iter().enumerate() {
        if ask.bucket.len() > MAX_BUCKET_LEN {
            return Err(ApplyError::invalid(format!("asks[{i}].bucket"), format!("at most {MAX_BUCKET_LEN} bytes")));
        }
    }
    Ok(())
}

/// The window open for the bucket at `now`: the stored one if it is still
/// open or newer than `now`'s (a lagging clock), else a fresh one.
fn current_window(limit: &Limit, stored: Option<QuotaWindow>, bucket: &str, now: i64) -> Option<QuotaWindow> {
    let (start, end) = window_bounds(limit.window(), now)?;
    let fresh = |period: Option<QuotaPeriod>| {
        let period = period.unwrap_or(QuotaPeriod { window_start_ms: start, window_end_ms: end, ..Default::default() });
        QuotaWindow {
            limit_id: limit.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
            bucket: bucket.to_string(),
            window_start_ms: period.window_start_ms,
            window_end_ms: period.window_end_ms,
            granted: period.granted,
            grants: period.grants,
            leases: period.leases,
            ..Default::default()
        }
    };
    // A record of another window length (the limit's window was changed)
    // is not this limit's window any more: counting starts afresh.
    let fits = |from: i64, to: i64| window_bounds(limit.window(), from) == Some((from, to));
    match stored {
        Some(window) if window.window_start_ms >= start && fits(window.window_start_ms, window.window_end_ms) => {
            Some(window)
        }
        // The window leased ahead is now the open one.
        Some(window) => Some(fresh(window.next.filter(|n| n.window_start_ms == start && n.window_end_ms == end))),
        None => Some(fresh(None)),
    }
}

/// Grants units of the window after the open one, which it opens ahead.
fn grant_next(window: &mut QuotaWindow, limit: &Limit, node_id: u64, ask: &LeaseAsk) -> LeaseGrant {
    let Some((start, end)) = window_bounds(limit.window(), window.window_end_ms) else {
        return LeaseGrant::default();
    };
    let mut next = window.next.take().filter(|n| n.window_start_ms == start).unwrap_or(QuotaPeriod {
        window_start_ms: start,
        window_end_ms: end,
        ..Default::default()
    });
    let units = grant_size(limit.amount, next.granted, ask);
    if units > 0 {
        *node_units(&mut next.grants, node_id) += units;
        next.granted += units;
        next.leases += 1;
    }
    let grant =
        LeaseGrant { units, window_start_ms: start, window_end_ms: end, granted: next.granted, ..Default::default() };
    window.next = Some(next);
    grant
}

/// Takes back what the node says it will not spend, if it is of this window
/// and no more than the node holds.
fn give_back(window: &mut QuotaWindow, node_id: u64, ask: &LeaseAsk) {
    if ask.give_back == 0 || ask.give_back_window_start_ms != window.window_start_ms {
        return;
    }
    let held = node_units(&mut window.grants, node_id);
    let back = ask.give_back.min(*held);
    *held -= back;
    window.granted -= back;
    window.returned += back;
}

/// What to grant: what the node wants, but no more than half of what is
/// left (so that when a window runs low the rest is shared in shrinking
/// grants rather than taken by the first node to ask), and at least `need`
/// if that much is left, else nothing.
pub(crate) fn grant_size(amount: u64, granted: u64, ask: &LeaseAsk) -> u64 {
    let left = amount.saturating_sub(granted);
    let need = ask.need.max(1);
    if left < need || ask.want == 0 {
        return 0;
    }
    ask.want.min(left.div_ceil(2)).max(need).min(left)
}

fn node_units(grants: &mut Vec<NodeGrant>, node_id: u64) -> &mut u64 {
    let at = match grants.binary_search_by_key(&node_id, |g| g.node_id) {
        Ok(at) => at,
        Err(at) => {
            grants.insert(at, NodeGrant { node_id, units: 0 });
            at
        }
    };
    &mut grants[at].units
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tollgate_proto::config::v1::{LimitScope, LimitUnit, LimitWindow};
    use tollgate_proto::raft::v1::Command;
    use tollgate_proto::raft::v1::command::Op;

    use super::*;
    use crate::tests::meta;

    const T0: i64 = 1_700_000_000_000; // a whole second, not a whole minute

    fn limit_state(amount: u64, window: LimitWindow) -> GatewayState {
        let limit = Limit {
            meta: meta("l1"),
            name: "per-key".into(),
            unit: LimitUnit::Requests.into(),
            amount,
            window: window.into(),
            scope: LimitScope::ApiKey.into(),
            global: true,
            ..Default::default()
        };
        run(&GatewayState::default(), 1, T0, Op::CreateLimit(limit)).0
    }

    fn run(state: &GatewayState, index: u64, now: i64, op: Op) -> (GatewayState, Option<Vec<u8>>) {
        let cmd = Command { proposed_at_ms: now, actor: "test".into(), op: Some(op), ..Default::default() };
        let outcome = crate::apply::apply(state, &cmd, index).expect("applies");
        (state.with_command(&cmd, index).unwrap(), outcome.entity)
    }

    fn ask(want: u64, need: u64) -> LeaseAsk {
        LeaseAsk { limit_id: "l1".into(), bucket: "k1".into(), want, need, ..Default::default() }
    }

    /// Applies one lease command for `node` at `now` and returns its grant.
    fn lease_at(state: &mut GatewayState, index: &mut u64, node: u64, now: i64, ask: LeaseAsk) -> LeaseGrant {
        command_at(state, index, node, now, vec![ask]).into_iter().next().unwrap()
    }

    /// Applies one lease command of several asks and returns their grants, in order.
    fn command_at(
        state: &mut GatewayState,
        index: &mut u64,
        node: u64,
        now: i64,
        asks: Vec<LeaseAsk>,
    ) -> Vec<LeaseGrant> {
        *index += 1;
        let (next, entity) = run(state, *index, now, Op::Lease(LeaseRequest { node_id: node, asks }));
        *state = next;
        let grants: LeaseGrants = prost::Message::decode(entity.unwrap().as_slice()).unwrap();
        grants.grants
    }

    #[test]
    fn grants_stop_at_the_amount_and_shrink_as_the_window_runs_low() {
        let mut state = limit_state(100, LimitWindow::Second);
        let mut index = 1;
        let first = lease_at(&mut state, &mut index, 1, T0 + 10, ask(80, 1));
        assert_eq!(first.units, 50, "at most half of what is left");
        assert_eq!((first.window_start_ms, first.window_end_ms), (T0, T0 + 1_000));
        assert_eq!(lease_at(&mut state, &mut index, 2, T0 + 20, ask(80, 1)).units, 25);
        assert_eq!(lease_at(&mut state, &mut index, 3, T0 + 30, ask(5, 1)).units, 5);
        let mut total = 80;
        while total < 100 {
            let grant = lease_at(&mut state, &mut index, 1, T0 + 40, ask(100, 1));
            assert!(grant.units >= 1);
            total += grant.units;
        }
        assert_eq!(total, 100);
        let spent = lease_at(&mut state, &mut index, 2, T0 + 50, ask(1, 1));
        assert_eq!((spent.units, spent.granted, spent.amount), (0, 100, 100));
        let window = state.quota_window("l1/k1").unwrap();
        assert_eq!(window.grants.iter().map(|g| g.units).sum::<u64>(), 100);
    }

    #[test]
    fn a_reservation_gets_what_it_needs_or_nothing() {
        let mut state = limit_state(1_000, LimitWindow::Minute);
        let mut index = 1;
        assert_eq!(lease_at(&mut state, &mut index, 1, T0, ask(900, 900)).units, 900, "need wins over half");
        assert_eq!(lease_at(&mut state, &mut index, 2, T0, ask(200, 200)).units, 0, "100 left cannot hold 200");
        assert_eq!(lease_at(&mut state, &mut index, 2, T0, ask(50, 50)).units, 50);
    }

    #[test]
    fn the_window_rolls_with_the_commands_clock_and_never_goes_back() {
        let mut state = limit_state(10, LimitWindow::Second);
        let mut index = 1;
        assert_eq!(lease_at(&mut state, &mut index, 1, T0 + 500, ask(10, 10)).units, 10);
        // The next second opens a fresh window with the whole amount.
        let next = lease_at(&mut state, &mut index, 1, T0 + 1_200, ask(10, 10));
        assert_eq!((next.units, next.window_start_ms), (10, T0 + 1_000));
        // A node whose clock lags asks "in" the first second: it is given the
        // open window (spent), never the closed one again.
        let late = lease_at(&mut state, &mut index, 2, T0 + 900, ask(1, 1));
        assert_eq!((late.units, late.window_start_ms), (0, T0 + 1_000));
    }

    #[test]
    fn units_given_back_return_to_the_open_window_only() {
        let mut state = limit_state(10, LimitWindow::Minute);
        let mut index = 1;
        let first = lease_at(&mut state, &mut index, 1, T0, ask(10, 10));
        let start = first.window_start_ms;
        assert_eq!(first.units, 10);
        let back = LeaseAsk { give_back: 4, give_back_window_start_ms: start, ..ask(0, 0) };
        let after = lease_at(&mut state, &mut index, 1, T0 + 1, back);
        assert_eq!((after.units, after.granted), (0, 6));
        // More than the node holds is capped at what it holds.
        let greedy = LeaseAsk { give_back: 100, give_back_window_start_ms: start, ..ask(0, 0) };
        assert_eq!(lease_at(&mut state, &mut index, 2, T0 + 2, greedy).granted, 6, "node 2 held nothing");
        // A return for a window that closed changes nothing.
        let stale = LeaseAsk { give_back: 3, give_back_window_start_ms: start - 60_000, ..ask(0, 0) };
        assert_eq!(lease_at(&mut state, &mut index, 1, T0 + 3, stale).granted, 6);
        assert_eq!(lease_at(&mut state, &mut index, 2, T0 + 4, ask(4, 4)).units, 4);
    }

    /// A node's give-back and its ask for the same bucket can meet in one
    /// command (a request arrives as the node goes idle), either as one ask
    /// carrying both or as two asks: the units given back are free for any
    /// ask after the return, never granted twice, and the window's grants
    /// still add up to what it granted, within the amount.
    #[test]
    fn a_give_back_and_an_ask_for_the_same_bucket_in_one_command_never_over_grant() {
        let back =
            |start: i64, units: u64| LeaseAsk { give_back: units, give_back_window_start_ms: start, ..ask(0, 0) };
        let held_by = |state: &GatewayState, node: u64| {
            let window = state.quota_window("l1/k1").unwrap();
            assert_eq!(window.grants.iter().map(|g| g.units).sum::<u64>(), window.granted, "grants add up");
            assert!(window.granted <= 10);
            window.grants.iter().find(|g| g.node_id == node).map_or(0, |g| g.units)
        };
        for order in ["give back, then ask", "ask, then give back", "one ask carrying both"] {
            let mut state = limit_state(10, LimitWindow::Minute);
            let mut index = 1;
            let start = lease_at(&mut state, &mut index, 1, T0, ask(10, 10)).window_start_ms;
            let asks = match order {
                "give back, then ask" => vec![back(start, 4), ask(3, 3)],
                "ask, then give back" => vec![ask(3, 3), back(start, 4)],
                _ => vec![LeaseAsk { want: 3, need: 3, ..back(start, 4) }],
            };
            let grants = command_at(&mut state, &mut index, 1, T0 + 1, asks);
            let granted: u64 = grants.iter().map(|g| g.units).sum();
            let expected = if order == "ask, then give back" { 0 } else { 3 };
            assert_eq!(granted, expected, "{order}: the ask sees only what was returned before it");
            assert_eq!(held_by(&state, 1), 10 - 4 + expected, "{order}");
            // What is left is another node's to take, and no more.
            let rest = 10 - (10 - 4 + expected);
            assert_eq!(lease_at(&mut state, &mut index, 2, T0 + 2, ask(10, 1)).units, rest.div_ceil(2), "{order}");
            assert!(held_by(&state, 2) <= rest, "{order}");
        }
    }

    #[test]
    fn units_of_the_next_window_are_leased_ahead_and_count_when_it_opens() {
        let mut state = limit_state(10, LimitWindow::Second);
        let mut index = 1;
        assert_eq!(lease_at(&mut state, &mut index, 1, T0 + 100, ask(6, 6)).units, 6);
        let ahead = lease_at(&mut state, &mut index, 1, T0 + 950, LeaseAsk { next_window: true, ..ask(8, 8) });
        assert_eq!((ahead.units, ahead.window_start_ms, ahead.granted), (8, T0 + 1_000, 8));
        // The open window is untouched by it.
        assert_eq!(lease_at(&mut state, &mut index, 2, T0 + 960, ask(4, 4)).units, 4);
        // When the next window opens, what was leased ahead counts against it.
        let opened = lease_at(&mut state, &mut index, 2, T0 + 1_010, ask(5, 5));
        assert_eq!((opened.units, opened.window_start_ms, opened.granted), (0, T0 + 1_000, 8), "2 left, 5 needed");
        assert_eq!(lease_at(&mut state, &mut index, 2, T0 + 1_020, ask(2, 2)).units, 2);
        // A window leased ahead but skipped (no command in it) is dropped.
        lease_at(&mut state, &mut index, 1, T0 + 1_990, LeaseAsk { next_window: true, ..ask(3, 3) });
        let later = lease_at(&mut state, &mut index, 1, T0 + 5_000, ask(10, 10));
        assert_eq!((later.units, later.window_start_ms), (10, T0 + 5_000));
    }

    #[test]
    fn changing_a_limits_window_starts_its_counting_afresh() {
        let mut state = limit_state(10, LimitWindow::Day);
        let mut index = 1;
        assert_eq!(lease_at(&mut state, &mut index, 1, T0, ask(10, 10)).units, 10);
        let mut limit = state.limit("l1").unwrap().as_ref().clone();
        limit.window = LimitWindow::Hour.into();
        index += 1;
        state = run(&state, index, T0, Op::UpdateLimit(limit)).0;
        // The day's record is not an hour window: a fresh hour opens now.
        let hour = lease_at(&mut state, &mut index, 1, T0 + 1, ask(10, 10));
        assert_eq!((hour.units, hour.window_end_ms - hour.window_start_ms), (10, 3_600_000));
    }

    #[test]
    fn a_lease_for_a_missing_limit_says_so_and_changes_nothing() {
        let state = GatewayState::default();
        let (next, entity) = run(&state, 1, T0, Op::Lease(LeaseRequest { node_id: 1, asks: vec![ask(1, 1)] }));
        let grants: LeaseGrants = prost::Message::decode(entity.unwrap().as_slice()).unwrap();
        assert!(grants.grants[0].limit_missing);
        assert_eq!(next.quota_windows().count(), 0);
    }

    #[test]
    fn deleting_a_limit_deletes_its_windows() {
        let mut state = limit_state(10, LimitWindow::Minute);
        let mut index = 1;
        lease_at(&mut state, &mut index, 1, T0, ask(1, 1));
        let (state, _) = run(&state, 9, T0, Op::DeleteLimit("l1".into()));
        assert_eq!(state.quota_windows().count(), 0);
    }

    #[test]
    fn a_bucket_nobody_asks_for_is_collected_after_its_window_ended_and_only_then() {
        let mut state = limit_state(10, LimitWindow::Second);
        let mut index = 1;
        let bucket =
            |b: &str| LeaseAsk { limit_id: "l1".into(), bucket: b.into(), want: 1, need: 1, ..Default::default() };
        lease_at(&mut state, &mut index, 1, T0, bucket("10.0.0.1"));
        lease_at(&mut state, &mut index, 1, T0, bucket("10.0.0.2"));
        assert_eq!(state.quota_windows().count(), 2);
        // Within the grace after the window: kept (a lagging clock may still be inside it).
        lease_at(&mut state, &mut index, 1, T0 + KEEP_CLOSED_MS, bucket("10.0.0.3"));
        assert_eq!(state.quota_windows().count(), 3);
        // Past it: the next command's sweep deletes the bucket whose window
        // ended the grace ago, keeps the younger one, and renews the one it asks for.
        let later = T0 + 1_000 + KEEP_CLOSED_MS;
        lease_at(&mut state, &mut index, 1, later, bucket("10.0.0.1"));
        let left: Vec<String> = state.quota_windows().map(|w| w.bucket.clone()).collect();
        assert_eq!(left, ["10.0.0.1", "10.0.0.3"]);
        // A command looks at a bounded number of records.
        for i in 0..(3 * SWEEP_PER_COMMAND) {
            lease_at(&mut state, &mut index, 1, later, bucket(&format!("10.1.0.{i}")));
        }
        let much_later = later + 1_000 + KEEP_CLOSED_MS;
        let stale = |state: &GatewayState| state.quota_windows().filter(|w| w.window_end_ms <= much_later).count();
        let before = stale(&state);
        lease_at(&mut state, &mut index, 1, much_later, bucket("10.2.0.1"));
        assert_eq!(stale(&state), before - SWEEP_PER_COMMAND, "one command deletes at most its sweep");
    }

    #[test]
    fn a_busy_node_asking_for_the_same_buckets_still_sweeps_the_stale_ones() {
        let mut state = limit_state(1_000, LimitWindow::Second);
        let mut index = 1;
        let bucket = |b: String| LeaseAsk { limit_id: "l1".into(), bucket: b, want: 1, need: 1, ..Default::default() };
        for i in 0..40 {
            lease_at(&mut state, &mut index, 1, T0, bucket(format!("a-{i:02}")));
        }
        // Later, a node asks for the same 20 live buckets in every command.
        let later = T0 + 1_000 + KEEP_CLOSED_MS;
        let live: Vec<LeaseAsk> = (0..20).map(|i| bucket(format!("z-{i:02}"))).collect();
        for _ in 0..3 {
            index += 1;
            let batch = Op::Lease(LeaseRequest { node_id: 1, asks: live.clone() });
            state = run(&state, index, later, batch).0;
        }
        let left: Vec<String> = state.quota_windows().map(|w| w.bucket.clone()).collect();
        assert!(left.iter().all(|b| b.starts_with("z-")), "three commands sweep 48 others: {left:?}");
        assert_eq!(left.len(), 20);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Ask { node: u64, at: i64, want: u64, need: u64, ahead: bool },
        GiveBack { node: u64, at: i64, units: u64, of_window: i64 },
        Resize(u64),
        NewLeader,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..4, 0i64..3_000, 0u64..40, 0u64..10, any::<bool>())
                .prop_map(|(node, at, want, need, ahead)| Step::Ask { node, at, want, need, ahead }),
            (1u64..4, 0i64..3_000, 0u64..40, 0i64..3).prop_map(|(node, at, units, w)| Step::GiveBack {
                node,
                at,
                units,
                of_window: w * 1_000
            }),
            (1u64..60).prop_map(Step::Resize),
            Just(Step::NewLeader),
        ]
    }

    proptest! {
        /// Whatever nodes ask and give back, in any order and with any
        /// clocks, what each node may spend in a window (what it was
        /// granted minus what it gave back) never adds up to more than the
        /// amount in force when each grant was made.
        #[test]
        fn no_sequence_of_grants_and_returns_over_grants(steps in prop::collection::vec(step(), 1..80)) {
            let mut state = limit_state(30, LimitWindow::Second);
            let mut index = 1;
            // Per window: what nodes hold, by the answers they got.
            let mut held: BTreeMap<i64, BTreeMap<u64, u64>> = BTreeMap::new();
            let mut amount = 30;
            for step in steps {
                match step {
                    Step::Ask { node, at, want, need, ahead } => {
                        let asked = LeaseAsk { next_window: ahead, ..ask(want, need) };
                        let grant = lease_at(&mut state, &mut index, node, T0 + at, asked);
                        *held.entry(grant.window_start_ms).or_default().entry(node).or_default() += grant.units;
                        let total: u64 = held[&grant.window_start_ms].values().sum();
                        prop_assert_eq!(total, grant.granted, "the state counts what nodes were told");
                        prop_assert!(grant.units == 0 || grant.granted <= amount, "over-granted: {:?}", grant);
                    }
                    Step::GiveBack { node, at, units, of_window } => {
                        let window_start = T0 + of_window;
                        let back = LeaseAsk { give_back: units, give_back_window_start_ms: window_start, ..ask(0, 0) };
                        let answer = lease_at(&mut state, &mut index, node, T0 + at, back);
                        if answer.window_start_ms == window_start {
                            let mine = held.entry(window_start).or_default().entry(node).or_default();
                            *mine -= units.min(*mine);
                        }
                    }
                    Step::Resize(to) => {
                        amount = to;
                        let mut limit = state.limit("l1").unwrap().as_ref().clone();
                        limit.amount = to;
                        index += 1;
                        state = run(&state, index, T0, Op::UpdateLimit(limit)).0;
                    }
                    // The grants are replicated state: a new leader applies
                    // the next command to the same state. Simulate it by
                    // reloading the state from its encoded form.
                    Step::NewLeader => {
                        let engine = tollgate_storage::MemEngine::new();
                        let mut batch = tollgate_storage::Batch::default();
                        for (k, v) in state.encoded_entries() {
                            batch.put(tollgate_storage::Cf::State, &k, &v);
                        }
                        tollgate_storage::KvEngine::write(&engine, batch, tollgate_storage::Durability::Process).unwrap();
                        state = GatewayState::load(&engine, index).unwrap();
                    }
                }
            }
        }
    }
}
