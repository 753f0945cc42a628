//! The lease client: one task per node that turns the leases running low
//! into lease commands. Asks that arrive while a command is in flight go
//! into the next one, so a node proposes at most one lease command at a
//! time, for every bucket it needs: a few per second at steady state
//! however many requests it serves. Once a second it also gives back what
//! it holds of long windows and no longer uses, and forgets stale leases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tollgate_proto::raft::v1::{LeaseAsk, LeaseGrant, LeaseGrants, LeaseRequest};

use super::lease::Lease;
use super::limiter::Limiter;

/// Proposes a lease command and returns its answer (the Raft node, in
/// production; the state machine alone, in tests).
pub type ProposeLease = Arc<dyn Fn(LeaseRequest) -> BoxFuture<'static, Result<LeaseGrants, String>> + Send + Sync>;

/// Windows shorter than this are not worth giving back: they end soon.
const GIVE_BACK_MIN_WINDOW_MS: i64 = 60_000;

pub async fn run(
    limiter: Arc<Limiter>,
    mut asks: mpsc::UnboundedReceiver<Arc<Lease>>,
    node_id: u64,
    propose: ProposeLease,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut wanted: Vec<Arc<Lease>> = Vec::new();
        let mut returns: Vec<LeaseAsk> = Vec::new();
        tokio::select! {
            lease = asks.recv() => match lease {
                Some(lease) => wanted.push(lease),
                None => return,
            },
            _ = tick.tick() => {
                returns = give_backs(&limiter);
                let now = crate::clock::unix_ms();
                limiter.forget_stale(now - 2 * limiter.config.idle_return_ms as i64);
                report_stranded(&limiter);
            }
        }
        while let Ok(lease) = asks.try_recv() {
            wanted.push(lease);
        }
        if wanted.is_empty() && returns.is_empty() {
            continue;
        }
        ask(&limiter, node_id, &propose, dedup(wanted), returns).await;
    }
}

/// One lease per bucket, even if several requests queued it.
fn dedup(mut leases: Vec<Arc<Lease>>) -> Vec<Arc<Lease>> {
    let mut seen = HashMap::new();
    leases.retain(|lease| seen.insert(Arc::as_ptr(lease), ()).is_none());
    leases
}

/// Which lease an ask in a lease command is for, and what it asks.
#[derive(Clone, Copy)]
enum AskFor {
    /// Units of the open window for `wanted[i]`: the ask requests wait for.
    Open(usize),
    /// Units of the next window for `wanted[i]`.
    Ahead(usize),
    /// Units given back; its grant says nothing a lease needs.
    GiveBack,
}

async fn ask(limiter: &Limiter, node_id: u64, propose: &ProposeLease, wanted: Vec<Arc<Lease>>, returns: Vec<LeaseAsk>) {
    // Leases some command asks for; each is in exactly one.
    let mut sent = vec![false; wanted.len()];
    for command in commands(&wanted, returns) {
        let kinds: Vec<AskFor> = command.iter().map(|(_, kind)| *kind).collect();
        for kind in &kinds {
            if let AskFor::Open(i) | AskFor::Ahead(i) = kind {
                sent[*i] = true;
            }
        }
        let request = LeaseRequest { node_id, asks: command.into_iter().map(|(ask, _)| ask).collect() };
        limiter.metrics.lease_asks.inc();
        let timeout = Duration::from_millis(limiter.config.ask_timeout_ms);
        let answer = match tokio::time::timeout(timeout, propose(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} ms", limiter.config.ask_timeout_ms)),
        };
        // `apply` answers one grant per ask, in order; any other answer is
        // not one this client can read, and counts as a failure.
        let grants = answer.and_then(|grants| match grants.grants.len() == kinds.len() {
            true => Ok(grants.grants),
            false => Err(format!("{} grants answered {} asks", grants.grants.len(), kinds.len())),
        });
        let grants = grants
            .inspect_err(|error| {
                limiter.metrics.lease_ask_failures.inc();
                tracing::warn!(%error, "a quota lease command failed; requests beyond what this node holds are refused");
            })
            .ok();
        settle(limiter, &wanted, &kinds, grants);
    }
    // Queued, but with nothing to ask by now (an earlier command answered
    // them): their waiters look again.
    for (lease, sent) in wanted.iter().zip(sent) {
        if !sent {
            lease.finish_asking();
        }
    }
}

/// Settles the leases of one command, whose grants are `grants` (None: the
/// command failed). A lease an ask of which was granted takes the grant,
/// and is left alone after (a request may already have asked again); one
/// whose open-window ask got nothing (a failure, a missing limit) refuses
/// its waiters; one that asked only ahead just stops asking.
fn settle(limiter: &Limiter, wanted: &[Arc<Lease>], kinds: &[AskFor], grants: Option<Vec<LeaseGrant>>) {
    // (lease, answered, asked for the open window), a lease's asks being adjacent.
    let mut settled: Vec<(usize, bool, bool)> = Vec::new();
    for (n, kind) in kinds.iter().enumerate() {
        let (at, open) = match *kind {
            AskFor::Open(at) => (at, true),
            AskFor::Ahead(at) => (at, false),
            AskFor::GiveBack => continue,
        };
        let grant = grants.as_ref().and_then(|g| g.get(n)).filter(|g| !g.limit_missing);
        if let Some(grant) = grant {
            take_grant(limiter, &wanted[at], grant);
        }
        match settled.last_mut().filter(|(lease, ..)| *lease == at) {
            Some((_, answered, asked)) => {
                *answered |= grant.is_some();
                *asked |= open;
            }
            None => settled.push((at, grant.is_some(), open)),
        }
    }
    for (at, answered, open) in settled {
        match (answered, open) {
            (true, _) => {}
            (false, true) => wanted[at].ask_failed(),
            (false, false) => wanted[at].finish_asking(),
        }
    }
}

fn take_grant(limiter: &Limiter, lease: &Lease, grant: &LeaseGrant) {
    lease.answer(grant);
    if let Some(counters) = limiter.counters(&grant.limit_id) {
        counters.granted_units.inc_by(grant.units);
        // A grant of a newer open window voids what the old one held.
        counters.stranded_units.inc_by(lease.take_stranded());
    }
}

/// The lease commands for `wanted` and `returns`: each lease's asks (the
/// open window's and the next's) in one command, so that they are answered
/// or fail together, and at most `MAX_ASKS_PER_COMMAND` asks in each.
fn commands(wanted: &[Arc<Lease>], returns: Vec<LeaseAsk>) -> Vec<Vec<(LeaseAsk, AskFor)>> {
    let now = crate::clock::unix_ms();
    let mut commands: Vec<Vec<(LeaseAsk, AskFor)>> = vec![Vec::new()];
    let mut add = |asks: Vec<(LeaseAsk, AskFor)>| {
        if commands.last().is_some_and(|c| c.len() + asks.len() > MAX_ASKS_PER_COMMAND) {
            commands.push(Vec::new());
        }
        if let Some(command) = commands.last_mut() {
            command.extend(asks);
        }
    };
    for (i, lease) in wanted.iter().enumerate() {
        let ask = |want, need, next_window| LeaseAsk {
            limit_id: lease.limit_id.to_string(),
            bucket: lease.bucket.to_string(),
            want,
            need,
            next_window,
            ..Default::default()
        };
        let mut asks = Vec::with_capacity(2);
        if lease.wants_ahead() {
            asks.push((ask(lease.ahead_size(now, horizon_ms(lease)), 1, true), AskFor::Ahead(i)));
        }
        if lease.is_asking() {
            let (want, need) = lease.ask_size(now, horizon_ms(lease));
            asks.push((ask(want, need, false), AskFor::Open(i)));
        }
        add(asks);
    }
    for give_back in returns {
        add(vec![(give_back, AskFor::GiveBack)]);
    }
    commands.retain(|c| !c.is_empty());
    commands
}

const MAX_ASKS_PER_COMMAND: usize = 1024;

/// How far ahead a lease is sized: a quarter of its window, between 100 ms
/// and 1 s of the node's observed rate.
fn horizon_ms(lease: &Lease) -> i64 {
    let window = lease.window_len_ms();
    if window <= 0 { 250 } else { (window / 4).clamp(100, 1_000) }
}

/// Counts the units that requests' window rolls voided (a roll runs on the
/// request path, which leaves the counting to this tick).
fn report_stranded(limiter: &Limiter) {
    for lease in limiter.all_leases() {
        let stranded = lease.take_stranded();
        if stranded > 0
            && let Some(counters) = limiter.counters(&lease.limit_id)
        {
            counters.stranded_units.inc_by(stranded);
        }
    }
}

/// The units of long windows that leases unused for `idle_return_ms` hold:
/// taken out of the leases (so they cannot be spent) and given back.
fn give_backs(limiter: &Limiter) -> Vec<LeaseAsk> {
    let now = crate::clock::unix_ms();
    let idle_since = now - limiter.config.idle_return_ms as i64;
    let mut returns = Vec::new();
    for lease in limiter.all_leases() {
        let long = lease.window_len_ms() >= GIVE_BACK_MIN_WINDOW_MS;
        let idle = lease.last_used_ms.load(std::sync::atomic::Ordering::Relaxed) < idle_since;
        if !long || !idle || lease.window_end_ms() <= now {
            continue;
        }
        let (units, window_start_ms) = lease.take_unspent();
        if units == 0 {
            continue;
        }
        if let Some(counters) = limiter.counters(&lease.limit_id) {
            counters.returned_units.inc_by(units);
        }
        returns.push(LeaseAsk {
            limit_id: lease.limit_id.to_string(),
            bucket: lease.bucket.to_string(),
            give_back: units,
            give_back_window_start_ms: window_start_ms,
            ..Default::default()
        });
    }
    returns
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::limits::lease::Take;
    use crate::telemetry::limit_metrics::LimitMetrics;

    /// A lease a request found empty, so that it asks for units.
    fn asking_lease() -> Arc<Lease> {
        let lease = Arc::new(Lease::new(Arc::from("limit-1"), Box::from("")));
        assert_eq!(lease.try_take(1, 10, crate::clock::unix_ms()), Take::Empty { ask: true, failed_asks: 0 });
        lease
    }

    /// `units` of a window that opened `started_ms_ago` and ends in a minute.
    fn open_window_grant(units: u64, amount: u64, started_ms_ago: i64) -> LeaseGrant {
        let now = crate::clock::unix_ms();
        LeaseGrant {
            units,
            amount,
            granted: units,
            window_start_ms: now - started_ms_ago,
            window_end_ms: now + 60_000,
            ..Default::default()
        }
    }

    /// Answers every ask of a command with `grant` (its limit and bucket filled in).
    fn answering(grant: LeaseGrant) -> ProposeLease {
        Arc::new(move |request: LeaseRequest| {
            let grants = request
                .asks
                .iter()
                .map(|a| LeaseGrant { limit_id: a.limit_id.clone(), bucket: a.bucket.clone(), ..grant.clone() })
                .collect();
            Box::pin(async move { Ok(LeaseGrants { grants }) })
        })
    }

    #[tokio::test]
    async fn only_a_sent_open_window_ask_that_got_no_grant_counts_as_failed() {
        let (limiter, _asks) = Limiter::new(Default::default(), LimitMetrics::default());

        let lease = asking_lease();
        let failing: ProposeLease = Arc::new(|_| Box::pin(async { Err("no quorum".to_string()) }));
        ask(&limiter, 1, &failing, vec![lease.clone()], Vec::new()).await;
        assert_eq!(lease.failed_asks(), 1, "the command failed");
        assert!(!lease.is_asking());

        let lease = asking_lease();
        let missing = answering(LeaseGrant { limit_missing: true, ..Default::default() });
        ask(&limiter, 1, &missing, vec![lease.clone()], Vec::new()).await;
        assert_eq!(lease.failed_asks(), 1, "the limit is gone");

        let lease = asking_lease();
        ask(&limiter, 1, &answering(open_window_grant(5, 10, 100)), vec![lease.clone()], Vec::new()).await;
        assert_eq!(lease.failed_asks(), 0, "answered");
        assert!(matches!(lease.try_take(1, 10, crate::clock::unix_ms()), Take::Taken { .. }), "with units");

        // Queued, but with nothing to ask by the time the client looks (an
        // earlier command answered it): nothing is sent, nothing fails.
        let lease = Arc::new(Lease::new(Arc::from("limit-1"), Box::from("")));
        let sent = Arc::new(AtomicUsize::new(0));
        let counting: ProposeLease = {
            let sent = sent.clone();
            Arc::new(move |request: LeaseRequest| {
                sent.fetch_add(request.asks.len(), Ordering::SeqCst);
                Box::pin(async { Ok(LeaseGrants::default()) })
            })
        };
        ask(&limiter, 1, &counting, vec![lease.clone()], Vec::new()).await;
        assert_eq!(sent.load(Ordering::SeqCst), 0);
        assert_eq!(lease.failed_asks(), 0);
    }

    /// A lease with units, near the end of its window, so that the next
    /// take asks ahead for the next window, and for nothing else; and the
    /// time the grant was made at (what the test's takes count from: the
    /// clock may have moved on since).
    async fn asking_ahead_only(limiter: &Limiter) -> (Arc<Lease>, i64) {
        let lease = asking_lease();
        let grant = open_window_grant(50, 100, 900);
        let (start, granted_at) = (grant.window_start_ms, grant.window_start_ms + 900);
        ask(limiter, 1, &answering(grant), vec![lease.clone()], Vec::new()).await;
        // 60 s left of a 60.9 s window: the lead to ask ahead is 1 s, so a
        // take 59.5 s after the grant would ask ahead; take as if then.
        assert_eq!(lease.try_take(1, 100, granted_at + 59_500), Take::Taken { ask: true, window_start_ms: start });
        assert!(lease.wants_ahead() && !lease.is_asking());
        (lease, granted_at)
    }

    #[tokio::test]
    async fn a_failed_ask_ahead_refuses_no_one() {
        let (limiter, _asks) = Limiter::new(Default::default(), LimitMetrics::default());
        let (lease, _) = asking_ahead_only(&limiter).await;
        let failing: ProposeLease = Arc::new(|_| Box::pin(async { Err("no quorum".to_string()) }));
        ask(&limiter, 1, &failing, vec![lease.clone()], Vec::new()).await;
        assert_eq!(lease.failed_asks(), 0, "nobody waits for the next window's units");
    }

    /// Units are counted as stranded when they become void, at the grant
    /// that replaces their window or at the tick after a request rolled
    /// into the next one, and a lease is forgotten only once every window
    /// it holds units of is long over.
    #[tokio::test]
    async fn stranded_units_reach_the_metric_when_they_are_voided() {
        use tollgate_proto::config::v1::{Limit, LimitWindow, Meta};
        let (limiter, _asks) = Limiter::new(Default::default(), LimitMetrics::default());
        let limit = Limit {
            meta: Some(Meta { id: "limit-1".into(), ..Default::default() }),
            name: "per-minute".into(),
            amount: 100,
            window: LimitWindow::Minute as i32,
            global: true,
            ..Default::default()
        };
        let (lease, counters) = limiter.lease(&limit, "");
        let now = crate::clock::unix_ms();
        let grant = |units: u64, start: i64, end: i64| LeaseGrant {
            limit_id: "limit-1".into(),
            units,
            amount: 100,
            granted: units,
            window_start_ms: start,
            window_end_ms: end,
            ..Default::default()
        };
        take_grant(&limiter, &lease, &grant(5, now - 2_000, now + 60_000));
        assert_eq!(counters.stranded_units.get(), 0);
        take_grant(&limiter, &lease, &grant(3, now - 1_000, now + 60_000));
        assert_eq!(counters.stranded_units.get(), 5, "a newer open window voids the 5 held");
        take_grant(&limiter, &lease, &grant(2, now + 60_000, now + 120_000));
        assert_eq!(counters.stranded_units.get(), 5, "leased ahead: the open window may still spend its 3");
        assert!(matches!(lease.try_take(1, 100, now + 60_000), Take::Taken { .. }), "rolls into the 2");
        report_stranded(&limiter);
        assert_eq!(counters.stranded_units.get(), 8, "the 3 left behind, at the tick");
        take_grant(&limiter, &lease, &grant(4, now + 120_000, now + 180_000));
        limiter.forget_stale(now + 130_000);
        assert_eq!(limiter.all_leases().len(), 1, "kept: its units leased ahead may still be spent");
        assert_eq!(counters.stranded_units.get(), 8);
        limiter.forget_stale(now + 180_001);
        assert!(limiter.all_leases().is_empty());
        assert_eq!(counters.stranded_units.get(), 8 + 1 + 4, "forgotten: the 1 it held and the 4 leased ahead");
    }

    /// A lease's two asks (the next window's and the open one's) go in one
    /// command, so that they are answered or fail together: at the size
    /// limit, the pair starts the next command rather than being split.
    #[tokio::test]
    async fn a_leases_two_asks_are_never_split_across_commands() {
        let (limiter, _asks) = Limiter::new(Default::default(), LimitMetrics::default());
        let (both, granted_at) = asking_ahead_only(&limiter).await;
        assert!(matches!(both.try_take(1_000, 100, granted_at + 59_500), Take::Empty { ask: true, .. }));
        assert!(both.wants_ahead() && both.is_asking());
        let mut wanted: Vec<Arc<Lease>> = (1..MAX_ASKS_PER_COMMAND).map(|_| asking_lease()).collect();
        wanted.push(both);
        let give_back = LeaseAsk { limit_id: "limit-1".into(), give_back: 3, ..Default::default() };
        let commands = commands(&wanted, vec![give_back]);
        let kinds: Vec<Vec<String>> = commands
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(_, kind)| match kind {
                        AskFor::Open(i) => format!("open {i}"),
                        AskFor::Ahead(i) => format!("ahead {i}"),
                        AskFor::GiveBack => "give back".to_string(),
                    })
                    .collect()
            })
            .collect();
        let last = MAX_ASKS_PER_COMMAND - 1;
        assert_eq!(kinds.len(), 2, "two commands");
        assert_eq!(kinds[0].len(), MAX_ASKS_PER_COMMAND - 1, "the first holds every single ask");
        assert_eq!(kinds[1], [format!("ahead {last}"), format!("open {last}"), "give back".to_string()]);
    }

    #[tokio::test]
    async fn an_answer_that_does_not_match_its_asks_counts_as_failed() {
        let (limiter, _asks) = Limiter::new(Default::default(), LimitMetrics::default());
        let lease = asking_lease();
        let grant = open_window_grant(5, 10, 100);
        let doubled: ProposeLease = Arc::new(move |request: LeaseRequest| {
            let one = LeaseGrant { limit_id: request.asks[0].limit_id.clone(), ..grant.clone() };
            Box::pin(async move { Ok(LeaseGrants { grants: vec![one.clone(), one] }) })
        });
        ask(&limiter, 1, &doubled, vec![lease.clone()], Vec::new()).await;
        assert_eq!(lease.failed_asks(), 1, "two grants for one ask: not read as an answer");
        assert_eq!(
            lease.try_take(1, 10, crate::clock::unix_ms()),
            Take::Empty { ask: true, failed_asks: 1 },
            "and no units taken from it"
        );
    }
}
