//! **authenticate**: runs after `lifecycle`. Who is calling: an API key
//! (`Authorization: Bearer`, `x-api-key`, and on AI routes Google's
//! `x-goog-api-key` or `?key=`), a JWT, or nobody on an open route (401
//! otherwise). Then the identity headers the upstream trusts are set from
//! what was checked, on every route, so no client can pose as a consumer,
//! and the credentials the gateway checked are removed.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use tollgate_proto::config::v1::{ApiKey, AuthMode};

use super::super::headers::{Sent, X_API_KEY};
use super::super::snapshot::{CompiledConsumer, CompiledRoute, GatewaySnapshot};
use super::{PhaseResult, RequestCtx, Step};
use crate::apikey;
use crate::plumbing::GatewayError;

static X_CONSUMER_ID: http::HeaderName = http::HeaderName::from_static("x-consumer-id");
static X_CONSUMER_NAME: http::HeaderName = http::HeaderName::from_static("x-consumer-name");
static X_ANONYMOUS_CONSUMER: http::HeaderName = http::HeaderName::from_static("x-anonymous-consumer");

#[inline]
pub fn run(
    snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    route: &CompiledRoute,
    parts: &mut http::request::Parts,
) -> PhaseResult {
    let caller = authenticate(snapshot, route, &parts.headers, rctx.sent, parts.uri.query()).map_err(|error| {
        // A bad credential on a draft gets the answer of a version that does
        // not exist: a 401 would tell that the draft is there.
        match rctx.version.as_ref().filter(|v| v.is_draft()) {
            Some(draft) => GatewayError::VersionNotFound(format!("API version {:?} does not exist", draft.name)),
            None => error,
        }
    })?;
    static TRUE: HeaderValue = HeaderValue::from_static("true");
    let consumer = caller.as_ref().map(|c| c.consumer);
    for (name, flag, value) in [
        (&X_CONSUMER_ID, Sent::X_CONSUMER_ID, consumer.and_then(|c| c.id_header.as_ref())),
        (&X_CONSUMER_NAME, Sent::X_CONSUMER_NAME, consumer.and_then(|c| c.name_header.as_ref())),
        (&X_ANONYMOUS_CONSUMER, Sent::X_ANONYMOUS_CONSUMER, consumer.filter(|c| c.anonymous).map(|_| &TRUE)),
    ] {
        match value {
            Some(value) => {
                parts.headers.insert(name.clone(), value.clone());
            }
            // Whatever the client sent under this name must not reach the upstream.
            None if rctx.sent.contains(flag) => {
                parts.headers.remove(name);
            }
            // A phase that set this name without marking it would let it through.
            None => debug_assert!(!parts.headers.contains_key(name), "{name} present but not marked sent"),
        }
    }
    rctx.consumer = consumer.cloned();
    rctx.api_key = caller.and_then(|c| c.key).cloned();
    // Credentials the gateway checked are for the gateway; never pass them
    // on. An open route checked none, so its upstream may do its own auth.
    // The MCP backend forwards nothing upstream: it presents them again to
    // this gateway for each tool call, as the caller's own.
    let mcp = matches!(route.backend, super::super::snapshot::RouteBackend::Mcp { .. });
    if consumer.is_some() && !mcp {
        if rctx.sent.contains(Sent::AUTHORIZATION) {
            parts.headers.remove(header::AUTHORIZATION);
        }
        if rctx.sent.contains(Sent::X_API_KEY) {
            parts.headers.remove(&X_API_KEY);
        }
        debug_assert!(!parts.headers.contains_key(header::AUTHORIZATION) && !parts.headers.contains_key(&X_API_KEY));
    }
    Ok(Step::Continue)
}

/// Who a request authenticated as: the consumer, and the API key when that
/// is how it did (the AI gateway checks which models the key may use).
struct Caller<'s> {
    consumer: &'s Arc<CompiledConsumer>,
    key: Option<&'s Arc<ApiKey>>,
}

impl<'s> From<&'s Arc<CompiledConsumer>> for Caller<'s> {
    fn from(consumer: &'s Arc<CompiledConsumer>) -> Caller<'s> {
        Caller { consumer, key: None }
    }
}

/// The caller, or None on an open route.
fn authenticate<'s>(
    snapshot: &'s GatewaySnapshot,
    route: &CompiledRoute,
    headers: &http::HeaderMap,
    sent: Sent,
    query: Option<&str>,
) -> Result<Option<Caller<'s>>, GatewayError> {
    let mode = AuthMode::try_from(route.route.auth).unwrap_or(AuthMode::ApiKey);
    let bearer = sent
        .contains(Sent::AUTHORIZATION)
        .then(|| headers.get(header::AUTHORIZATION))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let looks_like_jwt = |t: &str| t.bytes().filter(|b| *b == b'.').count() == 2;
    match mode {
        AuthMode::None => Ok(None),
        AuthMode::Jwt => authenticate_jwt(snapshot, route, bearer).map(|c| Some(c.into())),
        AuthMode::ApiKeyOrJwt if bearer.is_some_and(looks_like_jwt) => {
            authenticate_jwt(snapshot, route, bearer).map(|c| Some(c.into()))
        }
        AuthMode::ApiKeyOrJwt | AuthMode::ApiKey | AuthMode::Unspecified => {
            let api_key_header = || sent.contains(Sent::X_API_KEY).then(|| headers.get(&X_API_KEY)).flatten();
            let presented = bearer.or_else(|| api_key_header().and_then(|v| v.to_str().ok()));
            // Google's SDKs send `x-goog-api-key` or `?key=`: accepted on AI routes only.
            let presented = presented.or_else(|| {
                route.backend.is_ai().then(|| tollgate_llm::gemini_ingress::presented_key(headers, query)).flatten()
            });
            authenticate_key(snapshot, presented).map(Some)
        }
    }
}

/// A JWT without a matching consumer still authenticates, as anonymous,
/// unless the route requires a consumer; the request then carries
/// `X-Anonymous-Consumer: true` (as Kong sends it) and no `X-Consumer-*`.
fn authenticate_jwt<'s>(
    snapshot: &'s GatewaySnapshot,
    route: &CompiledRoute,
    bearer: Option<&str>,
) -> Result<&'s Arc<CompiledConsumer>, GatewayError> {
    static ANONYMOUS: std::sync::OnceLock<Arc<CompiledConsumer>> = std::sync::OnceLock::new();
    let verifier = route.jwt.as_ref().ok_or(GatewayError::Unauthorized("this route has no JWT settings"))?;
    let token =
        bearer.ok_or(GatewayError::Unauthorized("this route requires a JWT: send `Authorization: Bearer <jwt>`"))?;
    let verified = verifier.verify(token)?;
    match verified.subject.as_deref().and_then(|s| snapshot.consumer_by_id_or_name(s)) {
        Some(consumer) => Ok(consumer),
        None if verifier.require_consumer => Err(GatewayError::Unauthorized("the JWT does not name a known consumer")),
        None => Ok(ANONYMOUS.get_or_init(|| Arc::new(CompiledConsumer::anonymous()))),
    }
}

fn authenticate_key<'s>(snapshot: &'s GatewaySnapshot, presented: Option<&str>) -> Result<Caller<'s>, GatewayError> {
    let presented = presented.ok_or(GatewayError::Unauthorized(
        "this route requires an API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
    ))?;
    let invalid = GatewayError::Unauthorized("the API key is invalid, disabled or expired");
    let presented = apikey::parse(presented.trim()).ok_or(GatewayError::Unauthorized("the API key is malformed"))?;
    let key = snapshot.api_keys.get(presented.id).ok_or(invalid)?;
    if !presented.matches(&key.secret_sha256) || key.disabled {
        return Err(GatewayError::Unauthorized("the API key is invalid, disabled or expired"));
    }
    if key.expires_at_ms > 0 && crate::clock::unix_ms() >= key.expires_at_ms {
        return Err(GatewayError::Unauthorized("the API key is invalid, disabled or expired"));
    }
    snapshot
        .consumers
        .get(key.consumer_id.as_str())
        .map(|c| Caller { consumer: c, key: Some(key) })
        .ok_or(GatewayError::Unauthorized("the API key is invalid, disabled or expired"))
}
