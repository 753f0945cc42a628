//! Retries: which requests may be repeated, and a budget so retries cannot
//! multiply load on a failing upstream (the retry storm). The budget works
//! like Finagle's and linkerd's: every request deposits a fraction of a token,
//! every retry withdraws a whole one, and the balance is capped.

use std::sync::atomic::{AtomicI64, Ordering};

use http::Method;

/// Tokens are stored in thousandths so a 20 % deposit is an integer.
const UNIT: i64 = 1000;
/// Retries allowed before any request has deposited: lets a quiet service retry.
const INITIAL_TOKENS: i64 = 10 * UNIT;
const MAX_TOKENS: i64 = 100 * UNIT;

/// The largest request body held in memory so that a failed attempt can be
/// retried with it; Envoy's default retry buffer is the same size.
pub const RETRY_BUFFER_BYTES: u64 = 64 * 1024;

/// Whether a request may be sent again: an idempotent method, and no body or
/// one short enough to hold (its declared length, `body_len`).
pub fn replayable(method: &Method, bodiless: bool, body_len: Option<u64>) -> bool {
    idempotent(method) && (bodiless || body_len.is_some_and(|n| n <= RETRY_BUFFER_BYTES))
}

/// Only methods RFC 9110 defines as idempotent. POST and PATCH are never
/// retried: the upstream may have acted on the first attempt.
pub fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

#[derive(Debug)]
pub struct RetryBudget {
    tokens: AtomicI64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { tokens: AtomicI64::new(INITIAL_TOKENS) }
    }
}

impl RetryBudget {
    /// Called once per original request.
    pub fn deposit(&self, percent: u32) {
        let add = i64::from(percent) * UNIT / 100;
        let now = self.tokens.fetch_add(add, Ordering::Relaxed) + add;
        if now > MAX_TOKENS {
            self.tokens.fetch_sub(now - MAX_TOKENS, Ordering::Relaxed);
        }
    }

    /// Takes one retry's worth if the budget has it.
    pub fn withdraw(&self) -> bool {
        let mut current = self.tokens.load(Ordering::Relaxed);
        loop {
            if current < UNIT {
                return false;
            }
            match self.tokens.compare_exchange_weak(current, current - UNIT, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_and_patch_are_never_retried() {
        assert!(idempotent(&Method::GET));
        assert!(idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST));
        assert!(!idempotent(&Method::PATCH));
    }

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let budget = RetryBudget::default();
        let mut retries = 0;
        while budget.withdraw() {
            retries += 1;
        }
        assert_eq!(retries, 10, "initial allowance");
        for _ in 0..100 {
            budget.deposit(20);
        }
        let mut more = 0;
        while budget.withdraw() {
            more += 1;
        }
        assert_eq!(more, 20, "20 % of 100 requests");
    }
}
