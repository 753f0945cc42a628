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

async fn ask(limiter: &Limiter, node_id: u64, propose: &ProposeLease, wanted: Vec<Arc<Lease>>, returns: Vec<LeaseAsk>) {
    let now = crate::clock::unix_ms();
    let mut asks: Vec<LeaseAsk> = Vec::with_capacity(wanted.len());
    // Which leases this command asks units of the open window for.
    let mut asked = vec![false; wanted.len()];
    for (lease, asked) in wanted.iter().zip(&mut asked) {
        let ask = |want, need, next_window| LeaseAsk {
            limit_id: lease.limit_id.to_string(),
            bucket: lease.bucket.to_string(),
            want,
            need,
            next_window,
            ..Default::default()
        };
        if lease.wants_ahead() {
            asks.push(ask(lease.ahead_size(now, horizon_ms(lease)), 1, true));
        }
        if lease.is_asking() {
            let (want, need) = lease.ask_size(now, horizon_ms(lease));
            asks.push(ask(want, need, false));
            *asked = true;
        }
    }
    asks.extend(returns);
    let mut done = vec![false; wanted.len()];
    for chunk_start in (0..asks.len()).step_by(MAX_ASKS_PER_COMMAND) {
        let end = (chunk_start + MAX_ASKS_PER_COMMAND).min(asks.len());
        let request = LeaseRequest { node_id, asks: asks[chunk_start..end].to_vec() };
        limiter.metrics.lease_asks.inc();
        let timeout = Duration::from_millis(limiter.config.ask_timeout_ms);
        let answer = match tokio::time::timeout(timeout, propose(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} ms", limiter.config.ask_timeout_ms)),
        };
        match answer {
            Ok(grants) => answered(limiter, &wanted, grants, &mut done),
            Err(error) => {
                limiter.metrics.lease_ask_failures.inc();
                tracing::warn!(%error, "a quota lease command failed; requests beyond what this node holds are refused");
            }
        }
    }
    // Whatever was not answered (a failure, a missing limit) stops asking;
    // the waiters of an ask that failed wake to refuse. An answered lease
    // is left alone: a request may already have asked again since.
    for ((lease, answered), asked) in wanted.iter().zip(&done).zip(&asked) {
        match (answered, asked) {
            (true, _) => {}
            (false, true) => lease.ask_failed(),
            (false, false) => lease.finish_asking(),
        }
    }
}

const MAX_ASKS_PER_COMMAND: usize = 1024;

fn answered(limiter: &Limiter, wanted: &[Arc<Lease>], grants: LeaseGrants, done: &mut [bool]) {
    for grant in grants.grants {
        let Some(at) = wanted.iter().position(|l| *l.limit_id == *grant.limit_id && *l.bucket == *grant.bucket) else {
            continue;
        };
        let lease = &wanted[at];
        if grant.limit_missing {
            continue;
        }
        done[at] = true;
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
