//! Target selection. A balancer is built once per state change from the
//! service's targets; `select` yields the first choice, and a retry asks again
//! with the targets already tried excluded. Unavailable targets (probed
//! unhealthy or ejected) are skipped; if every target is unavailable the
//! balancer still answers, because sending to a possibly-recovered target
//! beats failing every request (the "panic mode" of Envoy and Kong).

mod consistent_hash;
mod least_conn;
mod round_robin;

use std::sync::Arc;

use tollgate_proto::config::v1::{LbPolicy, Target};

use super::health::TargetState;

pub use consistent_hash::hash_key;

/// A target as the request path sees it.
pub struct CompiledTarget {
    /// `host:port`, shared with the request context and the pooled body.
    pub authority: Arc<str>,
    /// The `Host` header sent to this target, rendered once per snapshot.
    pub host: http::HeaderValue,
    pub state: Arc<TargetState>,
}

impl CompiledTarget {
    /// `host` is the `Host` header's value: the authority without the
    /// scheme's default port, as browsers and hyper-util's client send it.
    pub fn new(authority: &str, host: &str, state: Arc<TargetState>) -> CompiledTarget {
        // An authority that is not a valid header value cannot be connected to
        // either; an empty Host header then fails the request upstream.
        let host = http::HeaderValue::from_str(host).unwrap_or_else(|_| http::HeaderValue::from_static(""));
        CompiledTarget { authority: Arc::from(authority), host, state }
    }
}

pub enum Balancer {
    RoundRobin(round_robin::RoundRobin),
    LeastConn(least_conn::LeastConn),
    ConsistentHash(consistent_hash::Ring),
}

impl Balancer {
    pub fn new(policy: i32, targets: &[Target]) -> Balancer {
        match LbPolicy::try_from(policy).unwrap_or(LbPolicy::Unspecified) {
            LbPolicy::LeastConnections => Balancer::LeastConn(least_conn::LeastConn::new(targets)),
            LbPolicy::ConsistentHash => Balancer::ConsistentHash(consistent_hash::Ring::new(targets)),
            LbPolicy::RoundRobin | LbPolicy::Unspecified => Balancer::RoundRobin(round_robin::RoundRobin::new(targets)),
        }
    }

    /// Index of the target to use. `key` is the hash for consistent hashing;
    /// `tried` holds targets already used by this request.
    pub fn select(&self, targets: &[CompiledTarget], key: u64, tried: &[usize]) -> Option<usize> {
        if targets.is_empty() {
            return None;
        }
        let usable = |i: usize| !tried.contains(&i) && targets[i].state.available();
        let chosen = match self {
            Balancer::RoundRobin(rr) => rr.pick(targets.len(), usable),
            Balancer::LeastConn(lc) => lc.pick(targets, usable),
            Balancer::ConsistentHash(ring) => ring.pick(key, usable),
        };
        // Panic mode: nothing usable, so prefer an untried target, then any.
        chosen.or_else(|| (0..targets.len()).find(|i| !tried.contains(i)))
    }

    pub fn needs_key(&self) -> bool {
        matches!(self, Balancer::ConsistentHash(_))
    }
}
