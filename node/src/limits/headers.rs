//! The rate-limit response headers: `RateLimit` and `RateLimit-Policy` as
//! draft-ietf-httpapi-ratelimit-headers has them (structured-field lists:
//! `"name";q=100;w=60` and `"name";r=0;t=30`), the `X-RateLimit-Limit`,
//! `-Remaining` and `-Reset` (Unix seconds, as GitHub sends) that most
//! clients still read, and `Retry-After` on a refusal that a retry can get
//! past (`x-should-retry: false` on one that none can).

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Taken;
use crate::plumbing::LimitRefusal;

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// A budget past its soft threshold says so on every response.
pub const X_BUDGET_WARNING: HeaderName = HeaderName::from_static("x-tollgate-budget-warning");
/// Read by the OpenAI and Anthropic SDKs, which otherwise retry every 429.
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// The headers of a refusal: the limit's state and when to retry (429), or,
/// for a request no window can ever admit (400), the limit's policy alone
/// and that no retry helps. (Its state is not told: the request took and
/// asked nothing, so any caller could read the usage left on limits shared
/// with others, as often as it liked, by asking for too much.)
pub fn refused(refusal: &LimitRefusal, headers: &mut HeaderMap) {
    let state = State {
        policy: &refusal.policy,
        amount: refusal.amount,
        remaining: 0,
        window_secs: refusal.window_secs,
        reset_at_ms: refusal.reset_at_ms,
        now_ms: refusal.now_ms,
    };
    match refusal.retry_after_secs() {
        Some(secs) => {
            state.write(headers);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        None => {
            state.write_policy(headers);
            headers.remove(http::header::RETRY_AFTER);
            headers.insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
        }
    }
}

/// The headers of an admitted request, from its tightest limit's lease.
pub fn on_response(taken: &Taken, headers: &mut HeaderMap) {
    let Some((limit, view)) = taken.tightest() else { return };
    State {
        policy: &limit.name,
        amount: view.amount,
        remaining: view.remaining,
        window_secs: limit.window_secs(),
        reset_at_ms: view.window_end_ms,
        now_ms: crate::clock::unix_ms(),
    }
    .write(headers);
}

struct State<'a> {
    policy: &'a str,
    amount: u64,
    remaining: u64,
    window_secs: u64,
    reset_at_ms: i64,
    now_ms: i64,
}

impl State<'_> {
    fn write(&self, headers: &mut HeaderMap) {
        self.write_policy(headers);
        let reset_in = ((self.reset_at_ms - self.now_ms).max(0) as u64).div_ceil(1_000);
        let now = format!("\"{}\";r={};t={}", self.policy, self.remaining, reset_in);
        if let Ok(value) = HeaderValue::from_str(&now) {
            headers.insert(RATELIMIT, value);
        }
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from((self.reset_at_ms.max(0) as u64).div_ceil(1_000)));
    }

    /// What the limit is, without its state.
    fn write_policy(&self, headers: &mut HeaderMap) {
        // Limit names are [A-Za-z0-9._-]: valid inside a structured-field string.
        let policy = format!("\"{}\";q={};w={}", self.policy, self.amount, self.window_secs);
        if let Ok(value) = HeaderValue::from_str(&policy) {
            headers.insert(RATELIMIT_POLICY, value);
        }
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(self.amount));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plumbing::RefusalCause;

    #[test]
    fn a_refusal_names_its_policy_and_when_to_retry() {
        let refusal = LimitRefusal {
            policy: "per-key".into(),
            amount: 100,
            window_secs: 60,
            reset_at_ms: 1_700_000_060_000,
            now_ms: 1_700_000_030_500,
            budget: false,
            cause: RefusalCause::Spent,
            what: "100 requests per minute".into(),
            unit: "requests",
        };
        let mut headers = HeaderMap::new();
        refused(&refusal, &mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"per-key\";q=100;w=60");
        assert_eq!(headers["ratelimit"], "\"per-key\";r=0;t=30");
        assert_eq!(headers["retry-after"], "30");
        assert_eq!(headers["x-ratelimit-limit"], "100");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert_eq!(headers["x-ratelimit-reset"], "1700000060");
        assert!(headers.get(X_SHOULD_RETRY).is_none(), "the SDKs may retry, after Retry-After");
    }

    #[test]
    fn a_request_too_large_for_any_window_is_told_not_to_retry() {
        let refusal = LimitRefusal {
            policy: "output-per-key".into(),
            amount: 100,
            window_secs: 86_400,
            reset_at_ms: 1_700_000_060_000,
            now_ms: 1_700_000_030_500,
            budget: false,
            cause: RefusalCause::TooLarge { units: 1_024 },
            what: "100 output tokens per day".into(),
            unit: "output tokens",
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        refused(&refusal, &mut headers);
        assert!(headers.get(http::header::RETRY_AFTER).is_none(), "no wait admits it");
        assert_eq!(headers[X_SHOULD_RETRY], "false");
        assert_eq!(headers["ratelimit-policy"], "\"output-per-key\";q=100;w=86400");
        for state in ["ratelimit", "x-ratelimit-remaining", "x-ratelimit-reset"] {
            assert!(headers.get(state).is_none(), "{state}: what is left is not told to a request that took nothing");
        }
        assert_eq!(refusal.status(), http::StatusCode::BAD_REQUEST);
        let message = refusal.message();
        assert!(message.contains("needs up to 1024 output tokens"), "{message}");
        assert!(message.contains("\"output-per-key\" (100 output tokens per day)"), "{message}");
        assert!(message.contains("can never be admitted") && message.contains("fewer output tokens"), "{message}");
    }
}
