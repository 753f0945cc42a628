//! Sessions of the console and the portal: a random id in an HttpOnly,
//! SameSite=Strict cookie scoped to its side's path, the session itself in
//! this node's memory (signing out ends it here and now), and a CSRF token
//! per session that every form carries.
//!
//! A session names its identity, never its powers: each request checks
//! again that the admin token or API key it was signed in with is still
//! valid, so a revocation ends the session at its next click.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use rand::RngCore;
use subtle::ConstantTimeEq;
use tollgate_proto::config::v1::AdminRole;

use super::{PortalError, Shared};
use crate::admin::access::Caller;

/// How long a session lives without a request, and at most.
const IDLE: Duration = Duration::from_secs(30 * 60);
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions one node keeps per side; the oldest go first beyond it.
const MAX_SESSIONS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Portal,
    Console,
}

impl Side {
    fn cookie(self) -> &'static str {
        match self {
            Side::Portal => "tg_portal",
            Side::Console => "tg_console",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Side::Portal => "/portal",
            Side::Console => "/console",
        }
    }

    pub fn sign_in(self) -> &'static str {
        match self {
            Side::Portal => "/portal/signin",
            Side::Console => "/console/signin",
        }
    }
}

/// Who a session stands for.
#[derive(Clone)]
pub enum Who {
    /// A consumer, signed in with one of its keys (the key's id).
    Consumer { consumer_id: String, key_id: String },
    /// The holder of an admin token; the text stays in memory only, for
    /// the admin API calls the console makes on its behalf.
    Admin { token: Arc<str> },
}

pub struct Session {
    pub csrf: String,
    pub who: Who,
}

pub struct Sessions {
    portal: moka::sync::Cache<String, Arc<Session>>,
    console: moka::sync::Cache<String, Arc<Session>>,
}

impl Sessions {
    pub fn new() -> Sessions {
        let table = || {
            moka::sync::Cache::builder().max_capacity(MAX_SESSIONS).time_to_idle(IDLE).time_to_live(LIFETIME).build()
        };
        Sessions { portal: table(), console: table() }
    }

    fn table(&self, side: Side) -> &moka::sync::Cache<String, Arc<Session>> {
        match side {
            Side::Portal => &self.portal,
            Side::Console => &self.console,
        }
    }

    /// Starts a session; the answer's `Set-Cookie`.
    pub fn start(&self, side: Side, who: Who) -> HeaderValue {
        let id = random_token();
        self.table(side).insert(id.clone(), Arc::new(Session { csrf: random_token(), who }));
        let cookie = format!(
            "{}={id}; Path={}; HttpOnly; SameSite=Strict; Max-Age={}",
            side.cookie(),
            side.path(),
            LIFETIME.as_secs()
        );
        HeaderValue::from_str(&cookie).expect("a cookie of hex digits is a valid header")
    }

    /// Ends the session of `headers`, if any; the answer's `Set-Cookie`.
    pub fn end(&self, side: Side, headers: &HeaderMap) -> HeaderValue {
        if let Some(id) = cookie(headers, side.cookie()) {
            self.table(side).invalidate(id);
        }
        let cookie = format!("{}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0", side.cookie(), side.path());
        HeaderValue::from_str(&cookie).expect("a fixed cookie is a valid header")
    }

    /// The session of `headers` on `side`, if it has one.
    pub fn of(&self, side: Side, headers: &HeaderMap) -> Option<Arc<Session>> {
        self.find(side, headers).map(|(_, session)| session)
    }

    fn find(&self, side: Side, headers: &HeaderMap) -> Option<(String, Arc<Session>)> {
        let id = cookie(headers, side.cookie())?;
        self.table(side).get(id).map(|s| (id.to_string(), s))
    }

    fn forget(&self, side: Side, id: &str) {
        self.table(side).invalidate(id);
    }
}

/// Counts per key (a consumer, a client address) in the current minute.
pub struct Throttle {
    counts: moka::sync::Cache<String, Arc<std::sync::atomic::AtomicU32>>,
}

impl Throttle {
    pub fn new() -> Throttle {
        let counts =
            moka::sync::Cache::builder().max_capacity(MAX_SESSIONS).time_to_live(Duration::from_secs(60)).build();
        Throttle { counts }
    }

    /// Whether `key` is still under `max` this minute, counting nothing.
    pub fn admit_check(&self, key: &str, max: u32) -> bool {
        self.counts.get(key).is_none_or(|count| count.load(std::sync::atomic::Ordering::Relaxed) < max)
    }

    /// Counts one more for `key`; false once it is past `max` this minute.
    pub fn admit(&self, key: &str, max: u32) -> bool {
        let count = self.counts.get_with(key.to_string(), Default::default);
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < max
    }
}

/// The portal's and console's throttles: changes per consumer, and failed
/// sign-ins per client address.
pub struct Throttles {
    pub writes: Throttle,
    pub sign_ins: Throttle,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Refuses a state-changing request that another site made the browser
/// send: SameSite=Strict already keeps the cookie off it; this also refuses
/// it when the browser says where it came from.
pub fn same_origin(method: &Method, headers: &HeaderMap) -> Result<(), PortalError> {
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(site, Some("cross-site" | "same-site")) {
        return Err(PortalError::Csrf);
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()), host) {
        (None, _) => Ok(()),
        (Some(origin), Some(host))
            if origin.strip_prefix("http://").or(origin.strip_prefix("https://")) == Some(host) =>
        {
            Ok(())
        }
        _ => Err(PortalError::Csrf),
    }
}

impl Session {
    /// A form's CSRF token must be this session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), PortalError> {
        if presented.as_bytes().ct_eq(self.csrf.as_bytes()).into() { Ok(()) } else { Err(PortalError::Csrf) }
    }
}

/// A form that carries only its CSRF token.
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    /// Missing is as wrong as mistyped: 403, not a parse error.
    #[serde(default)]
    pub csrf: String,
}

/// A signed-in consumer: its session, and the consumer it stands for.
pub struct ConsumerSession {
    pub session: Arc<Session>,
    pub consumer_id: String,
}

/// A signed-in admin: its session, and the admin identity its token has now.
pub struct AdminSession {
    pub session: Arc<Session>,
    pub token: Arc<str>,
    pub caller: Caller,
}

impl AdminSession {
    pub fn role(&self) -> AdminRole {
        self.caller.role
    }
}

impl FromRequestParts<Shared> for ConsumerSession {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, portal: &Shared) -> Result<Self, PortalError> {
        same_origin(&parts.method, &parts.headers)?;
        let side = Side::Portal;
        let (id, session) = portal.sessions.find(side, &parts.headers).ok_or(PortalError::SignIn(side.sign_in()))?;
        let Who::Consumer { consumer_id, key_id } = &session.who else {
            return Err(PortalError::SignIn(side.sign_in()));
        };
        if !key_still_valid(&portal.raft.local_state(), consumer_id, key_id) {
            portal.sessions.forget(side, &id);
            return Err(PortalError::SignIn(side.sign_in()));
        }
        let consumer_id = consumer_id.clone();
        Ok(ConsumerSession { session, consumer_id })
    }
}

impl FromRequestParts<Shared> for AdminSession {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, portal: &Shared) -> Result<Self, PortalError> {
        same_origin(&parts.method, &parts.headers)?;
        let side = Side::Console;
        let (id, session) = portal.sessions.find(side, &parts.headers).ok_or(PortalError::SignIn(side.sign_in()))?;
        let Who::Admin { token } = &session.who else {
            return Err(PortalError::SignIn(side.sign_in()));
        };
        let Ok(caller) = portal.access.caller_of(token, "console") else {
            portal.sessions.forget(side, &id);
            return Err(PortalError::SignIn(side.sign_in()));
        };
        let token = token.clone();
        Ok(AdminSession { session, token, caller })
    }
}

/// The key a consumer signed in with still opens the gateway to it.
pub fn key_still_valid(state: &tollgate_raft::GatewayState, consumer_id: &str, key_id: &str) -> bool {
    let now = crate::clock::unix_ms();
    state
        .api_key(key_id)
        .is_some_and(|k| k.consumer_id == consumer_id && !k.disabled && (k.expires_at_ms == 0 || k.expires_at_ms > now))
        && state.consumer(consumer_id).is_some()
}

/// The consumer a presented key belongs to, if it is valid now.
pub fn consumer_of_key(state: &tollgate_raft::GatewayState, presented: &str) -> Option<(String, String)> {
    let parsed = crate::apikey::parse(presented.trim())?;
    let key = state.api_key(parsed.id)?;
    if !parsed.matches(&key.secret_sha256) || !key_still_valid(state, &key.consumer_id, parsed.id) {
        return None;
    }
    Some((key.consumer_id.clone(), parsed.id.to_string()))
}
