//! The request path, as the fixed phases of DESIGN §2 over one snapshot taken
//! at the start of the request: match → (CORS preflight) → authenticate →
//! authorize → cache → upstream → account. Lifecycle and limits slot in
//! between as they are built. Each phase is a plain function; `proxy` reads
//! top to bottom in phase order, and `handle` always runs `account`.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tollgate_llm::gemini_ingress;
use tollgate_proto::config::v1::{ApiKey, AuthMode, HashOn};

use super::authority::{self, Authority};
use super::cache::{self, RequestPolicy};
use super::circuit::Admit;
use super::client_body::{ClientBody, ClientBodyError};
use super::connections::{Streaming, UpstreamSlot};
use super::cors::CompiledCors;
use super::error::ProxyError;
use super::headers::{self, X_API_KEY, X_REQUEST_ID};
use super::health::InFlight;
use super::lb::hash_key;
use super::path;
use super::pool::PoolError;
use super::retry;
use super::snapshot::{CompiledConsumer, CompiledRoute, CompiledService, GatewaySnapshot};
use super::upgrade;
use super::upstream::{BoxError, Upstream, UpstreamResponseBody};
use super::{ClientConn, ProxyBody, ProxyContext};
use crate::apikey;
use crate::telemetry::tracing::{TRACEPARENT, TraceCtx};

static X_CONSUMER_ID: http::HeaderName = http::HeaderName::from_static("x-consumer-id");
static X_CONSUMER_NAME: http::HeaderName = http::HeaderName::from_static("x-consumer-name");
static X_ANONYMOUS_CONSUMER: http::HeaderName = http::HeaderName::from_static("x-anonymous-consumer");
static X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

/// Per-request facts the phases hand to each other and to `account`.
struct RequestCtx {
    /// Validated as visible ASCII, so it is also a `&str` (see `id`).
    request_id: HeaderValue,
    client: Arc<ClientConn>,
    route: Option<Arc<CompiledRoute>>,
    service: Option<Arc<str>>,
    consumer: Option<Arc<CompiledConsumer>>,
    upstream: Option<Arc<str>>,
    origin: Option<HeaderValue>,
    cache: Option<&'static str>,
    attempts: u32,
    trace: Option<TraceCtx>,
    /// Taken before the upstream is called; its response body holds it.
    upstream_slot: Option<UpstreamSlot>,
}

impl RequestCtx {
    fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }
}

pub async fn handle(
    ctx: Arc<ProxyContext>,
    client: Arc<ClientConn>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let started = Instant::now();
    client.request_arrived();
    let snapshot = ctx.snapshot.load_full();
    let mut rctx = RequestCtx {
        request_id: headers::request_id(request.headers()),
        client,
        route: None,
        service: None,
        consumer: None,
        upstream: None,
        origin: None,
        cache: None,
        attempts: 0,
        trace: crate::telemetry::tracing::enabled().then(|| TraceCtx::start(request.headers())),
        upstream_slot: None,
    };
    let method = request.method().clone();
    let path = ctx.access_log.enabled().then(|| request.uri().path().to_string());
    let ai_format = crate::ai::gateway::Ingress::of_path(request.uri().path());

    let result = proxy(&ctx, &snapshot, &mut rctx, request).await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(request_id = rctx.id(), %error, "request failed");
            }
            match &rctx.route {
                // AI clients (OpenAI and Anthropic SDKs) parse errors in their own format.
                Some(route) if route.route.is_ai_backend() => {
                    crate::ai::gateway::gateway_error(&error, rctx.id(), ai_format)
                }
                _ => error.into_response(rctx.id()),
            }
        }
    };
    if let Some(route) = &rctx.route
        && let Some(cors) = &route.cors
    {
        cors.decorate(rctx.origin.as_ref(), response.headers_mut());
    }
    response.headers_mut().insert(X_REQUEST_ID.clone(), rctx.request_id.clone());
    account(&ctx, rctx, &method, path.as_deref(), response.status(), started);
    Ok(response)
}

async fn proxy(
    ctx: &ProxyContext,
    snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();

    // match: one authority and one normalised path, which every later phase
    // uses and the upstream receives.
    let authority = authority::effective(parts.version, &parts.uri, &parts.headers, rctx.client.tls)?;
    normalize_path(&mut parts.uri, ctx.path_policy)?;
    // Before the gateway sets any header of its own, so that no Connection
    // token or `_` spelling can remove or forge one.
    let scan = headers::scan_request(&parts.headers);
    let upgrade = if scan.hop_by_hop { upgrade::requested(&parts) } else { None };
    headers::sanitize_request(&mut parts.headers, scan);
    if parts.version == http::Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
    }
    // Routes see the path as the most lenient upstream would read it
    // (`/admin;x/y` is the /admin route's), see `path::routing_view`.
    let routing_path = path::routing_view(parts.uri.path());
    let matched = snapshot
        .router
        .find(&parts.method, authority.as_ref().map(Authority::host), &routing_path)
        .ok_or_else(|| ProxyError::NoRoute { method: parts.method.to_string(), path: parts.uri.path().to_string() })?;
    let route = matched.route.clone();
    rctx.route = Some(route.clone());

    // CORS preflights carry no credentials, so they are answered before authentication.
    if let Some(cors) = &route.cors {
        if CompiledCors::is_preflight(&parts.method, &parts.headers) {
            let (head, ()) = cors.preflight(&parts.headers).into_parts();
            return Ok(Response::from_parts(head, empty()));
        }
        rctx.origin = parts.headers.get(header::ORIGIN).cloned();
    }

    // authenticate
    let caller = authenticate(snapshot, &route, &parts.headers, parts.uri.query())?;
    let ai_key = caller.as_ref().and_then(|c| c.key).filter(|_| route.route.is_ai_backend()).cloned();
    let ai_consumer = caller
        .as_ref()
        .filter(|_| route.route.is_ai_backend())
        .map(|c| (c.consumer.id().to_string(), c.consumer.name().to_string()));
    // Set or removed on every route, open ones too, so that no client can
    // pose as a consumer to an upstream that trusts these headers.
    static TRUE: HeaderValue = HeaderValue::from_static("true");
    let consumer = caller.as_ref().map(|c| c.consumer);
    for (name, value) in [
        (&X_CONSUMER_ID, consumer.and_then(|c| c.id_header.as_ref())),
        (&X_CONSUMER_NAME, consumer.and_then(|c| c.name_header.as_ref())),
        (&X_ANONYMOUS_CONSUMER, consumer.filter(|c| c.anonymous).map(|_| &TRUE)),
    ] {
        match value {
            Some(value) => parts.headers.insert(name.clone(), value.clone()),
            None => parts.headers.remove(name),
        };
    }
    rctx.consumer = consumer.cloned();
    // Credentials the gateway checked are for the gateway; never pass them
    // on. An open route checked none, so its upstream may do its own auth.
    if consumer.is_some() {
        parts.headers.remove(header::AUTHORIZATION);
        parts.headers.remove(&X_API_KEY);
    }

    // authorize
    if let Some(filter) = &route.ip
        && !filter.permits(rctx.client.addr.ip())
    {
        return Err(ProxyError::Forbidden("your IP address is not allowed on this route"));
    }

    // body limit: refuse early when the length is declared, cut off otherwise.
    let limit = ctx.max_body_bytes;
    if declared_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }

    // The AI gateway answers itself, in the caller's API format.
    if route.route.is_ai_backend() {
        let (consumer_id, consumer_name) = ai_consumer.unwrap_or_default();
        let call = crate::ai::gateway::AiCall {
            request_id: rctx.id().to_string(),
            route: route.route.name.clone(),
            consumer_id,
            consumer_name,
            api_key: ai_key,
            // The request's own span; the AI gateway opens its client span under it.
            trace: rctx.trace.clone(),
            max_body_bytes: limit,
            // As for a REST body held for retries (see `forward`).
            body_timeout: route.request_timeout.unwrap_or(ctx.shared.defaults.request),
            anthropic_beta: parts.headers.get("anthropic-beta").cloned(),
        };
        let slot = ctx.upstream_slots.try_take().ok_or(ProxyError::Overloaded)?;
        let served =
            crate::ai::gateway::serve(&ctx.shared.ai, &snapshot.ai, &ctx.shared.metrics, call, parts, body).await;
        rctx.upstream = served.provider.map(Arc::from);
        rctx.attempts = served.attempts;
        return Ok(keep_busy_while_streaming(served.response, &rctx.client, slot));
    }

    // A protocol upgrade (WebSocket): its client side, handed over by hyper
    // once the 101 has been written.
    let client_upgrade = upgrade.as_ref().and_then(|_| parts.extensions.remove::<OnUpgrade>());
    // A tunnel outlives the HTTP connection it came from (whose place in
    // `proxy.max_connections` goes when hyper hands the socket over), so it
    // takes a place of its own, held until it closes.
    let tunnel_place = match &client_upgrade {
        // At the cap, an idle connection is closed to make room, as for a new client.
        Some(_) => Some(ctx.connections.admit_evicting(&rctx.client).await.ok_or(ProxyError::Overloaded)?),
        None => None,
    };

    // The service is known from here on, so a cache hit is accounted to it too.
    let service_id = route.route.backend_service_id().unwrap_or_default();
    let service =
        snapshot.services.get(service_id).ok_or_else(|| ProxyError::NoTarget { service: service_id.to_string() })?;
    rctx.service = Some(service.label.clone());

    // cache
    let mut to_store = None;
    if let Some(settings) = route.cache.as_ref().filter(|_| upgrade.is_none()) {
        let policy = cache::request_policy(&parts.method, &parts.headers, settings.allow_cookies);
        if policy != RequestPolicy::Bypass {
            let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let key = cache::key(
                &route.id,
                rctx.consumer.as_deref().map(CompiledConsumer::id),
                &parts.method,
                authority.as_ref().map(Authority::as_str),
                pq,
                &settings.vary,
                &parts.headers,
            );
            if policy == RequestPolicy::Normal
                && let Some(hit) = ctx.shared.cache.lookup(&key, &parts.headers)
            {
                route.metrics.hit.inc();
                rctx.cache = Some("HIT");
                return Ok(cached_response(&hit, parts.method == Method::HEAD));
            }
            route.metrics.miss.inc();
            // The headers a response's Vary may name, as this lookup saw them.
            to_store = Some(CacheMiss { key, request_headers: parts.headers.clone() });
        }
        rctx.cache = Some("MISS");
    }

    // upstream
    let client = route
        .upstream
        .as_ref()
        .or(service.upstream.as_ref())
        .ok_or_else(|| ProxyError::UpstreamTlsMisconfigured { service: service.name.clone() })?;

    let path_and_query = match upstream_path(route.route.strip_prefix, route.rewrite.as_ref(), &matched, &routing_path)
    {
        Some(path) => {
            let path_and_query = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(path_and_query).map_err(|e| ProxyError::BadRequest(e.to_string()))?
        }
        // Unchanged: the parsed original is shared, not rebuilt.
        None => parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    // The upstream connection is always HTTP/1.1, whatever the client spoke.
    parts.version = http::Version::HTTP_11;
    if let Some(protocol) = &upgrade {
        upgrade::restore(&mut parts.headers, protocol.clone());
    }
    // The upstream's Host names the target (set by the pool); the client's
    // authority travels in X-Forwarded-Host, validated and canonical, as
    // Envoy and Traefik send it.
    parts.headers.remove(header::HOST);
    let forwarded_host = authority.as_ref().map(|a| a.header_value().clone());
    headers::add_forwarded(&mut parts.headers, &rctx.client.forwarded_for, forwarded_host, rctx.client.tls);
    parts.headers.insert(X_REQUEST_ID.clone(), rctx.request_id.clone());
    if let Some(trace) = &rctx.trace {
        parts.headers.insert(TRACEPARENT.clone(), trace.header());
    }
    if let Some(ops) = &route.request_headers {
        ops.apply(&mut parts.headers);
    }

    rctx.upstream_slot = Some(ctx.upstream_slots.try_take().ok_or(ProxyError::Overloaded)?);
    let response =
        forward(service, &route, client, rctx, parts, body, path_and_query, limit, upgrade.is_some()).await?;

    let (mut head, body) = response.into_parts();
    // The client's connection keeps its own version (an HTTP/1.0 upstream must not make hyper close it).
    head.version = http::Version::HTTP_11;
    let switched = head.status == StatusCode::SWITCHING_PROTOCOLS;
    let protocol = head.headers.get(header::UPGRADE).cloned();
    headers::strip_hop_by_hop(&mut head.headers);
    if switched {
        let target = rctx.upstream.clone().unwrap_or_else(|| Arc::from(""));
        let (Some(client_side), Some(upstream_side), Some(protocol)) =
            (client_upgrade, head.extensions.remove::<OnUpgrade>(), protocol.filter(upgrade::is_websocket))
        else {
            return Err(ProxyError::UpstreamUnavailable {
                target: target.to_string(),
                reason: "it switched to a protocol the client did not ask for".into(),
            });
        };
        upgrade::restore(&mut head.headers, protocol);
        // Never idle forever: the route's idle timeout, else the client one
        // (as nginx's proxy_read_timeout bounds a WebSocket).
        let idle = route.idle_timeout.unwrap_or(ctx.client_idle_timeout);
        let hold = (tunnel_place, Streaming::new(&rctx.client));
        upgrade::tunnel(client_side, upstream_side, target, idle, rctx.client.clone(), hold);
    }
    if let Some(ops) = &route.response_headers {
        ops.apply(&mut head.headers);
    }
    if let Some(x_cache) = rctx.cache {
        head.headers.insert(X_CACHE.clone(), HeaderValue::from_static(x_cache));
    }
    if let (Some(miss), Some(settings)) = (to_store, &route.cache)
        // A response to a request that took Authorization to the upstream
        // is stored only if it says it may be shared (RFC 9111 §3.5).
        && let Some(ttl) = cache::response_ttl(
            head.status,
            &head.headers,
            settings.ttl,
            cache::carries_credentials(&miss.request_headers),
        )
        && declared_length(&head.headers).is_some_and(|len| len <= settings.max_body_bytes)
    {
        // Small and cacheable: read it whole, store it, answer from memory.
        // hyper enforces the declared Content-Length, checked against the limit above.
        let bytes = body
            .collect()
            .await
            .map_err(|e| ProxyError::UpstreamUnavailable {
                target: rctx.upstream.as_deref().unwrap_or_default().to_string(),
                reason: e.to_string(),
            })?
            .to_bytes();
        let mut stored = head.headers.clone();
        stored.remove(&X_CACHE);
        let parts = cache::StoredParts { status: head.status, headers: stored, body: bytes.clone() };
        ctx.shared.cache.store(miss.key, &miss.request_headers, parts, ttl);
        return Ok(Response::from_parts(head, full(bytes)));
    }
    Ok(Response::from_parts(head, body))
}

/// Sends the request to a target chosen by the balancer, retrying idempotent
/// requests on another target within the service's retry budget, and feeding
/// outcomes to passive health checks and the circuit breaker.
///
/// A retry sends the request again whole, so an idempotent request's body
/// (a PUT's, say) is read into memory first when its declared length is at
/// most [`retry::RETRY_BUFFER_BYTES`], as Envoy's retry buffer does. Longer or
/// unsized bodies stream to one target and are not retried.
#[allow(clippy::too_many_arguments)]
async fn forward(
    service: &CompiledService,
    route: &CompiledRoute,
    client: &Upstream,
    rctx: &mut RequestCtx,
    parts: http::request::Parts,
    body: Incoming,
    path_and_query: PathAndQuery,
    limit: u64,
    upgrade: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let admission =
        service.circuit.as_ref().map(|(circuit, threshold, open_ms)| circuit.admission(*open_ms, *threshold));
    if admission.as_ref().is_some_and(|a| a.admit == Admit::No) {
        service.metrics.circuit_rejections.inc();
        return Err(ProxyError::CircuitOpen { service: service.name.clone() });
    }
    let timeout = route.request_timeout.unwrap_or(service.request_timeout);
    let replayable = retry::replayable(&parts.method, body.is_end_stream(), body.size_hint().exact());
    let retry = service.retry.as_ref().filter(|_| replayable);
    if let Some(r) = retry {
        service.budget.deposit(r.budget_percent);
    }
    // With retries on, the body is held whole so that every attempt can send it.
    let (mut streaming, held) = match retry {
        // Held to the request timeout, so a client trickling its body cannot hold the request forever.
        Some(_) if !body.is_end_stream() => match tokio::time::timeout(timeout, read_whole(body, limit)).await {
            Ok(read) => (None, read?),
            Err(_) => return Err(ProxyError::BodyTimeout { timeout_ms: timeout.as_millis() as u64 }),
        },
        Some(_) => (None, Bytes::new()),
        None => (Some(body), Bytes::new()),
    };
    // Kept only when a retry may need to rebuild the request.
    let replay = retry.map(|_| (parts.method.clone(), parts.headers.clone()));
    let key = if service.balancer.needs_key() { balance_key(service, rctx, &parts.headers) } else { 0 };
    let max_attempts = 1 + retry.map_or(0, |r| r.attempts) as usize;
    let mut tried = [usize::MAX; 11];
    // Set when the client's body streams upstream (no retries).
    let mut client_body = None;
    let mut first = Some(parts);
    let mut outcome;
    loop {
        let n = rctx.attempts as usize;
        let index = service
            .balancer
            .select(&service.targets, key, &tried[..n])
            .ok_or_else(|| ProxyError::NoTarget { service: service.name.clone() })?;
        tried[n] = index;
        rctx.attempts += 1;
        let target = &service.targets[index];
        rctx.upstream = Some(target.authority.clone());
        let uri = if client.sends_origin_form() {
            Uri::from(path_and_query.clone())
        } else {
            Uri::builder()
                .scheme(service.scheme)
                .authority(&*target.authority)
                .path_and_query(path_and_query.clone())
                .build()
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?
        };
        let body = match streaming.take() {
            // A bodiless request (most GETs) needs no limit, nor a boxed body.
            Some(body) if body.is_end_stream() => empty(),
            // The client's body errors are marked as the client's, so that a
            // bad chunk or a client that goes away is not the upstream's fault.
            Some(body) => {
                let (marked, progress) = ClientBody::new(body);
                client_body = Some(progress);
                Limited::new(marked, usize::try_from(limit).unwrap_or(usize::MAX)).boxed_unsync()
            }
            None if held.is_empty() => empty(),
            None => full(held.clone()),
        };
        let request = match first.take() {
            Some(mut parts) => {
                parts.uri = uri;
                Request::from_parts(parts, body)
            }
            None => {
                let (method, headers) = replay.as_ref().expect("retries keep a copy of the request");
                let mut request = Request::new(body);
                *request.method_mut() = method.clone();
                *request.uri_mut() = uri;
                *request.headers_mut() = headers.clone();
                request
            }
        };
        let in_flight = InFlight::new(&target.state);
        let sent = tokio::time::timeout(timeout, client.request(target, request, upgrade)).await;
        outcome = match sent {
            Ok(Ok(response)) => Ok((response, in_flight)),
            Ok(Err(error)) => {
                let connect = match route.route.connect_timeout_ms {
                    0 => service.connect_timeout,
                    ms => Duration::from_millis(ms.into()),
                };
                let timeouts = Timeouts { request: timeout, connect };
                Err(classify(error.as_ref(), &target.authority, limit, timeouts))
            }
            // The client still owed body bytes: its stall, not the upstream's.
            Err(_elapsed) if client_body.as_ref().is_some_and(|p| !p.complete()) => {
                Err(ProxyError::BodyTimeout { timeout_ms: timeout.as_millis() as u64 })
            }
            Err(_elapsed) => Err(ProxyError::UpstreamTimeout {
                target: target.authority.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        };
        // A failure the client caused says nothing about the target: it is
        // not recorded against its health or the circuit, and not retried.
        outcome = match outcome {
            Err(error) if error.is_client_fault() => return Err(error),
            other => other,
        };
        let failed = match &outcome {
            Ok((response, _)) => response.status().is_server_error(),
            Err(_) => true,
        };
        target.state.record(!failed, service.eject);
        let retryable = match &outcome {
            Ok((response, _)) => {
                let status = response.status().as_u16();
                if retry.is_some_and(|r| r.on_statuses.is_empty()) {
                    matches!(status, 502..=504)
                } else {
                    retry.is_some_and(|r| r.on_statuses.contains(&status))
                }
            }
            Err(_) => true,
        };
        if failed
            && retryable
            && retry.is_some()
            && (rctx.attempts as usize) < max_attempts
            && service.budget.withdraw()
        {
            service.metrics.retries.inc();
            continue;
        }
        break;
    }
    if let Some(admission) = admission {
        admission.record(matches!(&outcome, Ok((r, _)) if !r.status().is_server_error()));
    }
    let (response, in_flight) = outcome?;
    let (head, body) = response.into_parts();
    let body =
        ResponseBody::new(body, in_flight, route.idle_timeout, rctx.upstream.clone().unwrap_or_else(|| Arc::from("")))
            .streaming_to(&rctx.client, rctx.upstream_slot.take());
    Ok(Response::from_parts(head, body.boxed_unsync()))
}

/// An AI answer (often a stream) keeps its connection busy until it ends.
/// Its upstream slot is held as long.
fn keep_busy_while_streaming(
    response: Response<ProxyBody>,
    client: &Arc<ClientConn>,
    slot: UpstreamSlot,
) -> Response<ProxyBody> {
    if response.body().is_end_stream() {
        return response;
    }
    let hold = (Streaming::new(client), slot);
    response.map(|body| StreamingBody { inner: body, _hold: hold }.boxed_unsync())
}

/// A body that keeps its connection busy until it is dropped; everything
/// else (frames, end of stream, length) is the inner body's, so a sized
/// answer keeps its Content-Length.
struct StreamingBody {
    inner: ProxyBody,
    _hold: (Streaming, UpstreamSlot),
}

impl Body for StreamingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a (small, declared-length) request body whole, for retries.
async fn read_whole(body: Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ProxyError::BodyTooLarge { limit }),
        Err(e) => Err(ProxyError::BadRequest(format!("the request body could not be read: {e}"))),
    }
}

fn balance_key(service: &CompiledService, rctx: &RequestCtx, headers: &http::HeaderMap) -> u64 {
    match service.hash_on {
        HashOn::Header => service
            .hash_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .map_or_else(|| client_ip_key(rctx), |v| hash_key(v.as_bytes())),
        HashOn::Consumer => {
            rctx.consumer.as_deref().map_or_else(|| client_ip_key(rctx), |c| hash_key(c.id().as_bytes()))
        }
        HashOn::ClientIp | HashOn::Unspecified => client_ip_key(rctx),
    }
}

fn client_ip_key(rctx: &RequestCtx) -> u64 {
    match rctx.client.addr.ip() {
        std::net::IpAddr::V4(v4) => hash_key(&v4.octets()),
        std::net::IpAddr::V6(v6) => hash_key(&v6.octets()),
    }
}

/// Walks the error's causes: an oversized body is the client's fault (413),
/// a timed-out connect or exchange is a timeout (504, as nginx answers),
/// anything else is a bad gateway.
fn classify(
    error: &(dyn std::error::Error + Send + Sync + 'static),
    authority: &str,
    limit: u64,
    timeouts: Timeouts,
) -> ProxyError {
    let target = authority.to_string();
    let mut connecting = error.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|e| e.is_connect());
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut reason = error.to_string();
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return ProxyError::BodyTooLarge { limit };
        }
        if let Some(ClientBodyError(client)) = e.downcast_ref::<ClientBodyError>() {
            return ProxyError::ClientBody { reason: client.to_string() };
        }
        match e.downcast_ref::<PoolError>() {
            Some(PoolError::ConnectTimeout { ms, .. }) => {
                return ProxyError::UpstreamConnectTimeout { target, timeout_ms: *ms };
            }
            // The OS may give up connecting (ETIMEDOUT) before our timeout does.
            Some(PoolError::Connect { .. }) => connecting = true,
            _ => {}
        }
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return if connecting {
                ProxyError::UpstreamConnectTimeout { target, timeout_ms: timeouts.connect.as_millis() as u64 }
            } else {
                ProxyError::UpstreamTimeout { target, timeout_ms: timeouts.request.as_millis() as u64 }
            };
        }
        reason = e.to_string();
        cause = e.source();
    }
    ProxyError::UpstreamUnavailable { target, reason }
}

#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    request: Duration,
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

/// The authenticate phase: the caller, or None on an open route.
fn authenticate<'s>(
    snapshot: &'s GatewaySnapshot,
    route: &CompiledRoute,
    headers: &http::HeaderMap,
    query: Option<&str>,
) -> Result<Option<Caller<'s>>, ProxyError> {
    let mode = AuthMode::try_from(route.route.auth).unwrap_or(AuthMode::ApiKey);
    let bearer = headers
        .get(header::AUTHORIZATION)
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
            let presented = bearer.or_else(|| headers.get(&X_API_KEY).and_then(|v| v.to_str().ok()));
            // Google's SDKs send `x-goog-api-key` or `?key=`: accepted on AI routes only.
            let presented = presented.or_else(|| {
                route.route.is_ai_backend().then(|| gemini_ingress::presented_key(headers, query)).flatten()
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
) -> Result<&'s Arc<CompiledConsumer>, ProxyError> {
    static ANONYMOUS: std::sync::OnceLock<Arc<CompiledConsumer>> = std::sync::OnceLock::new();
    let verifier = route.jwt.as_ref().ok_or(ProxyError::Unauthorized("this route has no JWT settings"))?;
    let token =
        bearer.ok_or(ProxyError::Unauthorized("this route requires a JWT: send `Authorization: Bearer <jwt>`"))?;
    let verified = verifier.verify(token)?;
    match verified.subject.as_deref().and_then(|s| snapshot.consumer_by_id_or_name(s)) {
        Some(consumer) => Ok(consumer),
        None if verifier.require_consumer => Err(ProxyError::Unauthorized("the JWT does not name a known consumer")),
        None => Ok(ANONYMOUS.get_or_init(|| Arc::new(CompiledConsumer::anonymous()))),
    }
}

fn authenticate_key<'s>(snapshot: &'s GatewaySnapshot, presented: Option<&str>) -> Result<Caller<'s>, ProxyError> {
    let presented = presented.ok_or(ProxyError::Unauthorized(
        "this route requires an API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
    ))?;
    let invalid = ProxyError::Unauthorized("the API key is invalid, disabled or expired");
    let presented = apikey::parse(presented.trim()).ok_or(ProxyError::Unauthorized("the API key is malformed"))?;
    let key = snapshot.api_keys.get(presented.id).ok_or(invalid)?;
    if !presented.matches(&key.secret_sha256) || key.disabled {
        return Err(ProxyError::Unauthorized("the API key is invalid, disabled or expired"));
    }
    if key.expires_at_ms > 0 && crate::clock::unix_ms() >= key.expires_at_ms {
        return Err(ProxyError::Unauthorized("the API key is invalid, disabled or expired"));
    }
    snapshot
        .consumers
        .get(&key.consumer_id)
        .map(|c| Caller { consumer: c, key: Some(key) })
        .ok_or(ProxyError::Unauthorized("the API key is invalid, disabled or expired"))
}

fn cached_response(hit: &cache::CachedResponse, head_only: bool) -> Response<ProxyBody> {
    let body = if head_only { empty() } else { full(hit.body.clone()) };
    let mut response = Response::new(body);
    *response.status_mut() = hit.status;
    *response.headers_mut() = hit.headers.clone();
    response.headers_mut().insert(X_CACHE.clone(), HeaderValue::from_static("HIT"));
    response.headers_mut().insert(header::AGE, HeaderValue::from(hit.age_secs()));
    response
}

/// The account phase: metrics, the access log line, the trace span. Always runs.
fn account(
    ctx: &ProxyContext,
    rctx: RequestCtx,
    method: &Method,
    path: Option<&str>,
    status: StatusCode,
    started: Instant,
) {
    let elapsed = started.elapsed();
    match &rctx.route {
        Some(route) => route.metrics.record(&ctx.shared.metrics, status.as_u16(), elapsed),
        None => ctx.shared.metrics.unrouted(status.as_u16()),
    }
    let route_name = rctx.route.as_ref().map(|r| r.route.name.as_str());
    if let Some(path) = path {
        let line = serde_json::json!({
            "ts_ms": crate::clock::unix_ms(),
            "request_id": rctx.id(),
            "client": rctx.client.addr.ip().to_string(),
            "method": method.as_str(),
            "path": path,
            "status": status.as_u16(),
            "latency_us": elapsed.as_micros() as u64,
            "route": route_name,
            "service": rctx.service,
            "consumer": rctx.consumer.as_deref().map(CompiledConsumer::name),
            "upstream": rctx.upstream,
            "attempts": rctx.attempts,
            "cache": rctx.cache,
            "trace_id": rctx.trace.as_ref().map(|t| t.trace_id.to_string()),
        });
        ctx.access_log.write(line.to_string());
    }
    if let Some(trace) = rctx.trace {
        let mut attributes = vec![
            opentelemetry::KeyValue::new("http.request.method", method.to_string()),
            opentelemetry::KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        ];
        if let Some(route) = route_name {
            attributes.push(opentelemetry::KeyValue::new("http.route", route.to_string()));
        }
        if let Some(upstream) = rctx.upstream {
            attributes.push(opentelemetry::KeyValue::new("server.address", upstream.to_string()));
        }
        trace.finish("proxy", status.as_u16(), attributes);
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// A cache miss that may be stored once the response is in.
struct CacheMiss {
    key: String,
    request_headers: http::HeaderMap,
}

/// Replaces the request's path with its normalised form, keeping the query;
/// the common path that needs no change is left alone, uncopied.
fn normalize_path(uri: &mut Uri, policy: path::PathPolicy) -> Result<(), ProxyError> {
    let normalized = match path::normalize(uri.path(), policy)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(normalized) => normalized,
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    // The authority, if any, was read already; later phases need only the origin form.
    *uri = Uri::from(PathAndQuery::try_from(path_and_query).map_err(|e| ProxyError::BadRequest(e.to_string()))?);
    Ok(())
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The path sent upstream when it differs from the one received: rewritten,
/// or with the matched prefix stripped. None means "as received". `path` is
/// the path the route matched (normalised, without `;parameters`).
fn upstream_path<T>(
    strip_prefix: bool,
    rewrite: Option<&super::transform::Rewrite>,
    matched: &super::router::Matched<'_, T>,
    path: &str,
) -> Option<String> {
    let remainder = matched
        .matched_prefix
        .map(|prefix| if prefix == "/" { path } else { &path[prefix.trim_end_matches('/').len()..] });
    if let Some(rewrite) = rewrite {
        return Some(rewrite.render(remainder, |name| matched.param(path, name)));
    }
    match (strip_prefix, remainder) {
        (true, Some(rest)) => Some(strip(rest)),
        _ => None,
    }
}

fn strip(rest: &str) -> String {
    if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") }
}

/// The upstream's response body on its way to the client: keeps the target's
/// in-flight count until the body ends, and enforces the route's idle timeout
/// (the longest wait for the next chunk).
struct ResponseBody {
    inner: UpstreamResponseBody,
    _in_flight: InFlight,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    target: Arc<str>,
    _streaming: Option<(Streaming, Option<UpstreamSlot>)>,
}

impl ResponseBody {
    fn new(inner: UpstreamResponseBody, in_flight: InFlight, idle: Option<Duration>, target: Arc<str>) -> ResponseBody {
        let idle = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
        ResponseBody { inner, _in_flight: in_flight, idle, target, _streaming: None }
    }

    /// Keeps the client's connection busy, and the upstream slot taken,
    /// until this body ends.
    fn streaming_to(mut self, client: &Arc<ClientConn>, slot: Option<UpstreamSlot>) -> ResponseBody {
        if !self.inner.is_end_stream() {
            self._streaming = Some((Streaming::new(client), slot));
        }
        self
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream {target} sent nothing for {idle_ms} ms (the route's idle timeout)")]
struct IdleTimeout {
    target: String,
    idle_ms: u64,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some((d, sleep)) = &mut this.idle {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if let Some((d, sleep)) = &mut this.idle
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    let error = IdleTimeout { target: this.target.to_string(), idle_ms: d.as_millis() as u64 };
                    this.idle = None;
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tollgate_proto::config::v1::{PathMatch, Route, RoutePath};

    use super::super::path::{EscapedSeparatorPolicy, PathPolicy, SlashPolicy};
    use super::super::router::Router;
    use super::super::transform::Rewrite;
    use super::*;

    #[test]
    fn strip_keeps_a_leading_slash() {
        assert_eq!(strip("/users"), "/users");
        assert_eq!(strip(""), "/");
        assert_eq!(strip("users"), "/users");
    }

    /// How the most lenient origin server reads a path: every escape decoded
    /// once, `\` taken for `/`, `;parameters` dropped (servlet containers),
    /// dot segments resolved and empty segments merged.
    fn as_a_lenient_upstream_reads_it(path: &str) -> String {
        let bytes = path.as_bytes();
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match (bytes[i], bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
                (b'%', Some(hi), Some(lo)) => {
                    decoded.push((hi * 16 + lo) as u8);
                    i += 3;
                }
                (b'\\', _, _) => {
                    decoded.push(b'/');
                    i += 1;
                }
                (b, _, _) => {
                    decoded.push(b);
                    i += 1;
                }
            }
        }
        let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
        let mut kept: Vec<&str> = Vec::new();
        let mut trailing_slash = false;
        for segment in decoded.split('/').skip(1) {
            let name = segment.split(';').next().unwrap_or("");
            trailing_slash = matches!(name, "" | "." | "..");
            match name {
                "" | "." => {}
                ".." => {
                    kept.pop();
                }
                name => kept.push(name),
            }
        }
        let slash = if trailing_slash && !kept.is_empty() { "/" } else { "" };
        format!("/{}{slash}", kept.join("/"))
    }

    fn route(name: &str, kind: PathMatch, path: &str, strip_prefix: bool, rewrite: &str) -> Route {
        Route {
            name: name.into(),
            paths: vec![RoutePath { kind: kind as i32, path: path.into() }],
            strip_prefix,
            rewrite_path: rewrite.into(),
            ..Default::default()
        }
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "pub",
            "admin",
            "s",
            "t",
            "x",
            "secret.txt",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            ".%2e",
            "",
            "%2f",
            "%2F..",
            "..%2f",
            "%5c",
            "\\",
            "..;",
            ";x",
            "a;b",
            "admin;x",
            "%41dmin",
            "%61dmin",
            "%00",
            "%",
            "%zz",
            "%7e",
            "%252e%252e",
            "..%5C..",
            "%2fadmin",
            "%C3%A9",
        ])
    }

    fn policy() -> impl Strategy<Value = PathPolicy> {
        (
            prop::sample::select(vec![SlashPolicy::Merge, SlashPolicy::Reject, SlashPolicy::Keep]),
            prop::sample::select(vec![
                EscapedSeparatorPolicy::Reject,
                EscapedSeparatorPolicy::Keep,
                EscapedSeparatorPolicy::Decode,
            ]),
        )
            .prop_map(|(slashes, escaped_separators)| PathPolicy { slashes, escaped_separators })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, max_global_rejects: 100_000, ..ProptestConfig::default() })]

        /// DESIGN §8: a request never leaves the route that authorized it.
        /// For any path, under every policy, whatever the upstream receives,
        /// read as leniently as any server reads it, is covered by the route
        /// that matched (and a template parameter stays one segment).
        #[test]
        fn the_upstream_receives_only_what_the_matched_route_covers(
            segments in prop::collection::vec(segment(), 0..8),
            policy in policy(),
        ) {
            let routes = [
                route("root", PathMatch::Prefix, "/", false, ""),
                route("pub", PathMatch::Prefix, "/pub", false, ""),
                route("admin", PathMatch::Prefix, "/admin", false, ""),
                route("stripped", PathMatch::Prefix, "/s", true, ""),
                route("item", PathMatch::Template, "/t/{id}", false, "/items/{id}"),
            ];
            let rewrites: Vec<Option<Rewrite>> = routes.iter().map(|r| Rewrite::compile(&r.rewrite_path)).collect();
            let router = Router::build(routes.iter().enumerate().map(|(i, r)| (r, i)));
            let raw = format!("/{}", segments.join("/"));
            // A refused path (400) never reaches a route; only the accepted ones count as cases.
            let normalized = path::normalize(&raw, policy);
            prop_assume!(normalized.is_ok());
            let normalized = normalized.unwrap();
            let routing = path::routing_view(&normalized);
            let matched = router.find(&Method::GET, None, &routing).expect("the root route matches every path");
            let index = *matched.route;
            let upstream = upstream_path(routes[index].strip_prefix, rewrites[index].as_ref(), &matched, &routing)
                .unwrap_or_else(|| normalized.to_string());
            let name = routes[index].name.as_str();
            match name {
                "stripped" => {
                    // The service behind /s sees the remainder; /s plus it is what it serves.
                    let seen = as_a_lenient_upstream_reads_it(&format!("/s{upstream}"));
                    let again = router.find(&Method::GET, None, &seen).map(|m| *m.route);
                    prop_assert_eq!(again, Some(index), "{} -> {} -> {}", raw, upstream, seen);
                }
                "item" => {
                    let seen = as_a_lenient_upstream_reads_it(&upstream);
                    prop_assert!(seen.starts_with("/items/"), "{} -> {}", raw, seen);
                    prop_assert_eq!(seen.matches('/').count(), 2, "{} -> {} -> {}", raw, upstream, seen);
                }
                _ => {
                    let seen = as_a_lenient_upstream_reads_it(&upstream);
                    let again = router.find(&Method::GET, None, &seen).map(|m| routes[*m.route].name.as_str());
                    prop_assert_eq!(again, Some(name), "{} -> {} -> {}", raw, upstream, seen);
                }
            }
        }
    }
}
