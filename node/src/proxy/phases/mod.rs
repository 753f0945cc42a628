//! The request path's phases, in the order they run (DESIGN §2). Each is a
//! plain function in its own file, over the snapshot taken at the start of
//! the request and the per-request [`RequestCtx`]; it returns
//! [`Step::Continue`], a response of its own ([`Step::Respond`]), or a
//! [`GatewayError`] that the route's backend renders for its caller.
//!
//! | phase | when it runs | what it may decide |
//! |---|---|---|
//! | [`route_match`] | first, for every request | one authority, one normalised path, the route, the upstream path; 404; CORS preflight |
//! | [`lifecycle`] | once a route matched | the API version's lifecycle (draft, deprecated, retired) |
//! | [`authenticate`] | after lifecycle | the caller (key, JWT, or none); 401 |
//! | [`authorize`] | after authenticate | IP filter, body size; 403, 413 |
//! | [`limit`] | after authorize | rate limits, token limits, budgets; 429 |
//! | [`cache`] | after limit, before the backend | a stored response (HIT) |
//! | [`backend`] | last before account | the route's backend: a REST service or the AI gateway |
//! | [`account`] | once, for every request, whatever happened before | metrics, access log, trace span, usage record |
//!
//! Adding a phase: see `docs/architecture.md`, "How to add a phase".

pub mod account;
pub mod authenticate;
pub mod authorize;
pub mod backend;
pub mod cache;
pub mod lifecycle;
pub mod limit;
pub mod route_match;

use std::sync::Arc;

use http::Response;
use http::header::HeaderValue;
use tollgate_proto::config::v1::ApiKey;

use super::ClientConn;
use super::authority::Authority;
use super::connections::UpstreamSlot;
use super::snapshot::{CompiledConsumer, CompiledRoute};
use crate::plumbing::{GatewayBody, GatewayError};
use crate::telemetry::tracing::TraceCtx;

/// What a phase decided.
pub enum Step {
    /// Go on to the next phase.
    Continue,
    /// Answer with this response; later phases (but `account`) do not run.
    Respond(Response<GatewayBody>),
}

/// A phase's result: go on, answer, or fail (rendered by the route's backend).
pub type PhaseResult = Result<Step, GatewayError>;

/// The phases, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Match,
    Lifecycle,
    Authenticate,
    Authorize,
    Limit,
    Cache,
    Backend,
    Account,
}

impl Phase {
    pub const ORDER: [Phase; 8] = [
        Phase::Match,
        Phase::Lifecycle,
        Phase::Authenticate,
        Phase::Authorize,
        Phase::Limit,
        Phase::Cache,
        Phase::Backend,
        Phase::Account,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Match => "match",
            Phase::Lifecycle => "lifecycle",
            Phase::Authenticate => "authenticate",
            Phase::Authorize => "authorize",
            Phase::Limit => "limit",
            Phase::Cache => "cache",
            Phase::Backend => "backend",
            Phase::Account => "account",
        }
    }
}

/// The phases a request went through, in the order it entered them: the
/// access log lists them (and names the last one, where a refused request
/// was refused), and tests check the order. Four bits per phase in one
/// word, so recording costs a shift and an or.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhasesRun(u32);

// Four bits per phase: a ninth phase needs a wider word.
const _: () = assert!(Phase::ORDER.len() <= 8);

impl PhasesRun {
    #[inline]
    pub fn enter(&mut self, phase: Phase) {
        debug_assert!(self.iter().all(|p| (p as u8) < (phase as u8)), "{phase:?} entered out of order");
        // Phase::ORDER has 8 phases: 8 × 4 bits fit the word.
        self.0 = (self.0 << 4) | (phase as u32 + 1);
    }

    /// The phases entered, first to last.
    pub fn iter(self) -> impl Iterator<Item = Phase> {
        // Every code is non-zero, so the used nibbles are the significant ones.
        let entered = (u32::BITS - self.0.leading_zeros()).div_ceil(4);
        (0..entered).rev().map(move |i| Phase::ORDER[((self.0 >> (i * 4)) & 0xf) as usize - 1])
    }

    /// The last phase entered before `account`.
    pub fn last(self) -> Option<Phase> {
        self.iter().filter(|p| *p != Phase::Account).last()
    }

    /// The names of the phases entered, in the order entered.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Phase::name).collect()
    }
}

/// Per-request facts the phases hand to each other and to `account`.
pub struct RequestCtx {
    /// Validated as visible ASCII, so it is also a `&str` (see `id`).
    pub request_id: HeaderValue,
    pub client: Arc<ClientConn>,
    pub phases: PhasesRun,
    /// From `route_match`: the effective authority, if the request named one.
    pub authority: Option<Authority>,
    /// From `route_match`: the protocol a WebSocket upgrade asks for.
    pub upgrade: Option<HeaderValue>,
    /// From `route_match`: which of the headers later phases read, replace
    /// or remove may be in the request (a phase that sets one marks it).
    pub sent: super::headers::Sent,
    /// From `route_match`: the path the upstream receives when strip or
    /// rewrite changed it (None: the normalised path as received).
    pub rewritten_path: Option<String>,
    pub route: Option<Arc<CompiledRoute>>,
    /// The service's metrics label, once the route's backend is a known service.
    pub service: Option<Arc<str>>,
    pub consumer: Option<Arc<CompiledConsumer>>,
    /// The API key the caller authenticated with, if that is how it did.
    pub api_key: Option<Arc<ApiKey>>,
    pub upstream: Option<Arc<str>>,
    pub origin: Option<HeaderValue>,
    pub cache: Option<&'static str>,
    pub attempts: u32,
    pub trace: Option<TraceCtx>,
    /// Taken before the upstream is called; its response body holds it.
    pub upstream_slot: Option<UpstreamSlot>,
    /// From `limit`: the quota units this request took, for the response's
    /// RateLimit headers.
    pub limits: Option<crate::limits::Taken>,
    /// From `limit`, on AI routes: the token limits, budgets and
    /// model-scoped limits the AI backend reserves from.
    pub ai_limits: Vec<crate::limits::Bucketed>,
    /// Whether the backend journaled the request's usage itself (the AI
    /// gateway does); else `account` does.
    pub recorded: bool,
    /// From `route_match` (a version named in the path, with its byte range
    /// in the path) and `lifecycle` (the version served).
    pub version: Option<Arc<crate::proxy::versions::CompiledVersion>>,
    pub version_segment: Option<(usize, usize)>,
    /// From `lifecycle`: the headers of a deprecated version's responses.
    pub deprecation: Vec<(http::HeaderName, HeaderValue)>,
}

impl RequestCtx {
    #[inline]
    pub fn new(request_id: HeaderValue, client: Arc<ClientConn>, trace: Option<TraceCtx>) -> RequestCtx {
        RequestCtx {
            request_id,
            client,
            phases: PhasesRun::default(),
            authority: None,
            upgrade: None,
            sent: super::headers::Sent::ALL,
            rewritten_path: None,
            route: None,
            service: None,
            consumer: None,
            api_key: None,
            upstream: None,
            origin: None,
            cache: None,
            attempts: 0,
            trace,
            upstream_slot: None,
            limits: None,
            ai_limits: Vec::new(),
            recorded: false,
            version: None,
            version_segment: None,
            deprecation: Vec::new(),
        }
    }

    pub fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_runs_between_match_and_authenticate_and_limit_between_authorize_and_cache() {
        let at = |phase| Phase::ORDER.iter().position(|p| *p == phase).unwrap();
        assert_eq!(at(Phase::Match), 0);
        assert_eq!(at(Phase::Lifecycle), at(Phase::Match) + 1);
        assert_eq!(at(Phase::Authenticate), at(Phase::Lifecycle) + 1);
        assert_eq!(at(Phase::Limit), at(Phase::Authorize) + 1);
        assert_eq!(at(Phase::Cache), at(Phase::Limit) + 1);
        assert_eq!(*Phase::ORDER.last().unwrap(), Phase::Account);
    }

    #[test]
    fn the_last_phase_is_where_a_request_stopped_and_account_is_never_it() {
        let mut run = PhasesRun::default();
        assert_eq!(run.last(), None);
        for phase in [Phase::Match, Phase::Lifecycle, Phase::Authenticate] {
            run.enter(phase);
        }
        run.enter(Phase::Account);
        assert_eq!(run.last(), Some(Phase::Authenticate));
        assert_eq!(run.names(), ["match", "lifecycle", "authenticate", "account"]);
    }

    #[test]
    fn phases_are_listed_in_the_order_entered() {
        let mut run = PhasesRun::default();
        for phase in Phase::ORDER {
            run.enter(phase);
        }
        assert_eq!(run.iter().collect::<Vec<_>>(), Phase::ORDER);
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn entering_a_phase_out_of_order_is_caught_in_debug_builds() {
        let mut run = PhasesRun::default();
        run.enter(Phase::Cache);
        run.enter(Phase::Authenticate);
    }
}
