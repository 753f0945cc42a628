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
use tollgate_proto::raft::v1::{LeaseAsk, LeaseGrants, LeaseRequest};

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
    // Per lease: an ask of its was answered; its open-window ask was sent.
    let mut answered = vec![false; wanted.len()];
    let mut asked = vec![false; wanted.len()];
    for command in commands(&wanted, returns) {
        let kinds: Vec<AskFor> = command.iter().map(|(_, kind)| *kind).collect();
        for kind in &kinds {
            if let AskFor::Open(i) = kind {
                asked[*i] = true;
            }
        }
        let request = LeaseRequest { node_id, asks: command.into_iter().map(|(ask, _)| ask).collect() };
        limiter.metrics.lease_asks.inc();
        let timeout = Duration::from_millis(limiter.config.ask_timeout_ms);
        let answer = match tokio::time::timeout(timeout, propose(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} ms", limiter.config.ask_timeout_ms)),
        };
        match answer {
            Ok(grants) => apply_grants(limiter, &wanted, &kinds, grants, &mut answered),
            Err(error) => {
                limiter.metrics.lease_ask_failures.inc();
                tracing::warn!(%error, "a quota lease command failed; requests beyond what this node holds are refused");
            }
        }
    }
    // Whatever was not answered (a failure, a missing limit) stops asking;
    // the waiters of an ask that failed wake to refuse. An answered lease
    // is left alone: a request may already have asked again since.
    for ((lease, answered), asked) in wanted.iter().zip(answered).zip(asked) {
        match (answered, asked) {
            (true, _) => {}
            (false, true) => lease.ask_failed(),
            (false, false) => lease.finish_asking(),
        }
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

/// Applies a command's grants, one per ask and in the asks' order (as
/// `apply` answers), to the leases they are for.
fn apply_grants(
    limiter: &Limiter,
    wanted: &[Arc<Lease>],
    kinds: &[AskFor],
    grants: LeaseGrants,
    answered: &mut [bool],
) {
    if grants.grants.len() != kinds.len() {
        tracing::warn!(
            asks = kinds.len(),
            grants = grants.grants.len(),
            "a lease command answered another number of asks than it had; the rest count as failed"
        );
    }
    for (grant, kind) in grants.grants.into_iter().zip(kinds) {
        let (AskFor::Open(at) | AskFor::Ahead(at)) = *kind else { continue };
        if grant.limit_missing {
            continue;
        }
        let lease = &wanted[at];
        answered[at] = true;
        if let Some(counters) = limiter.counters(&grant.limit_id) {
            counters.granted_units.inc_by(grant.units);
            let stranded = lease.strands_on(&grant);
            if stranded > 0 {
                counters.stranded_units.inc_by(stranded);
            }
        }
        lease.answer(&grant);
    }
}

/// How far ahead a lease is sized: a quarter of its window, between 100 ms
/// and 1 s of the node's observed rate.
fn horizon_ms(lease: &Lease) -> i64 {
    let window = lease.window_len_ms();
    if window <= 0 { 250 } else { (window / 4).clamp(100, 1_000) }
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

    use tollgate_proto::raft::v1::LeaseGrant;

    use super::*;
    use crate::limits::lease::Take;
    use crate::telemetry::limit_metrics::LimitMetrics;

    /// A lease a request found empty, so that it asks for units.
    fn asking_lease() -> Arc<Lease> {
        let lease = Arc::new(Lease::new(Arc::from("limit-1"), Box::from("")));
        assert_eq!(lease.try_take(1, 10, crate::clock::unix_ms()), Take::Empty { ask: true });
        lease
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

        let now = crate::clock::unix_ms();
        let granting = answering(LeaseGrant {
            units: 5,
            amount: 10,
            granted: 5,
            window_start_ms: now - 100,
            window_end_ms: now + 60_000,
            ..Default::default()
        });
        let lease = asking_lease();
        ask(&limiter, 1, &granting, vec![lease.clone()], Vec::new()).await;
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
}
