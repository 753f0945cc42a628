//! The REST service backend: sends the request to one of the service's
//! targets, chosen by its balancer, with retries within a budget, passive
//! health, circuit breaking and timeouts; hands a `101 Switching Protocols`
//! over to a WebSocket tunnel. Called by the `backend` phase for routes
//! whose backend is a service.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tollgate_proto::config::v1::HashOn;

use super::circuit::Admit;
use super::client_body::{ClientBody, ClientBodyError};
use super::connections::{Streaming, UpstreamSlot};
use super::headers::{self, X_REQUEST_ID};
use super::health::InFlight;
use super::lb::hash_key;
use super::phases::RequestCtx;
use super::retry;
use super::snapshot::{CompiledRoute, CompiledService, GatewaySnapshot};
use super::upgrade;
use super::{ClientConn, ProxyContext};
use crate::plumbing::{BoxError, GatewayBody, GatewayError, PoolError, Upstream, UpstreamResponseBody, empty, full};
use crate::telemetry::tracing::TRACEPARENT;

/// Forwards the request to `service_id`'s targets.
#[inline]
pub async fn serve(
    ctx: &ProxyContext,
    snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    route: &CompiledRoute,
    service_id: &str,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Result<Response<GatewayBody>, GatewayError> {
    let service =
        snapshot.services.get(service_id).ok_or_else(|| GatewayError::NoTarget { service: service_id.to_string() })?;
    // A protocol upgrade (WebSocket): its client side, handed over by hyper
    // once the 101 has been written.
    let client_upgrade = rctx.upgrade.as_ref().and_then(|_| parts.extensions.remove::<OnUpgrade>());
    // A tunnel outlives the HTTP connection it came from (whose place in
    // `proxy.max_connections` goes when hyper hands the socket over), so it
    // takes a place of its own, held until it closes.
    let tunnel_place = match &client_upgrade {
        // At the cap, an idle connection is closed to make room, as for a new client.
        Some(_) => Some(ctx.connections.admit_evicting(&rctx.client).await.ok_or(GatewayError::Overloaded)?),
        None => None,
    };

    let client = route
        .upstream
        .as_ref()
        .or(service.upstream.as_ref())
        .ok_or_else(|| GatewayError::UpstreamTlsMisconfigured { service: service.name.clone() })?;

    let path_and_query = match rctx.rewritten_path.take() {
        Some(path) => {
            super::path::with_query(path, parts.uri.query()).map_err(|e| GatewayError::BadRequest(e.to_string()))?
        }
        // Unchanged: the parsed original is shared, not rebuilt.
        None => parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let client_version = parts.version;
    upstream_request_head(rctx, route, &mut parts);

    rctx.upstream_slot = Some(ctx.upstream_slots.try_take().ok_or(GatewayError::Overloaded)?);
    let upgrade = rctx.upgrade.is_some();
    let exchange = Exchange { service, route, client, limit: ctx.max_body_bytes };
    let response = exchange.forward(rctx, parts, body, path_and_query, upgrade).await?;

    let (mut head, body) = response.into_parts();
    // The client's connection keeps its own version (an HTTP/1.0 upstream must not make hyper close it).
    head.version = http::Version::HTTP_11;
    let switched = head.status == StatusCode::SWITCHING_PROTOCOLS;
    // Read before the hop-by-hop headers go: a 101's protocol, a 426's offer.
    let protocol = if switched { head.headers.get(header::UPGRADE).cloned() } else { None };
    let required = upgrade::required(&head, client_version);
    headers::strip_hop_by_hop(&mut head.headers);
    if let Some(offer) = required {
        upgrade::restore(&mut head.headers, offer);
    }
    if switched {
        let target = rctx.upstream.clone().unwrap_or_else(|| Arc::from(""));
        let (Some(client_side), Some(upstream_side), Some(protocol)) =
            (client_upgrade, head.extensions.remove::<OnUpgrade>(), protocol.filter(upgrade::is_websocket))
        else {
            return Err(GatewayError::UpstreamUnavailable {
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
    Ok(Response::from_parts(head, body))
}

/// The request head as the upstream receives it: HTTP/1.1, the upgrade it
/// asked for, the gateway's forwarding headers, the route's header changes.
fn upstream_request_head(rctx: &RequestCtx, route: &CompiledRoute, parts: &mut http::request::Parts) {
    // The upstream connection is always HTTP/1.1, whatever the client spoke.
    parts.version = http::Version::HTTP_11;
    if let Some(protocol) = &rctx.upgrade {
        upgrade::restore(&mut parts.headers, protocol.clone());
    }
    // The upstream's Host names the target (set for each attempt, once the
    // balancer chose it; admission keeps routes' header changes off it); the
    // client's authority travels in X-Forwarded-Host, validated and
    // canonical, as Envoy and Traefik send it.
    let forwarded_host = rctx.authority.as_ref().map(|a| a.header_value().clone());
    headers::add_forwarded(&mut parts.headers, &rctx.client.forwarded_for, forwarded_host, rctx.client.tls, rctx.sent);
    parts.headers.insert(X_REQUEST_ID.clone(), rctx.request_id.clone());
    if let Some(trace) = &rctx.trace {
        parts.headers.insert(TRACEPARENT.clone(), trace.header());
    }
    if let Some(ops) = &route.request_headers {
        ops.apply(&mut parts.headers);
    }
}

/// One request's way to a service: what `forward` needs besides the request.
#[derive(Clone, Copy)]
struct Exchange<'a> {
    service: &'a CompiledService,
    route: &'a CompiledRoute,
    client: &'a Upstream,
    limit: u64,
}

impl Exchange<'_> {
    /// Sends the request to a target chosen by the balancer, retrying idempotent
    /// requests on another target within the service's retry budget, and feeding
    /// outcomes to passive health checks and the circuit breaker.
    ///
    /// A retry sends the request again whole, so an idempotent request's body
    /// (a PUT's, say) is read into memory first when its declared length is at
    /// most [`retry::RETRY_BUFFER_BYTES`], as Envoy's retry buffer does. Longer or
    /// unsized bodies stream to one target and are not retried.
    async fn forward(
        &self,
        rctx: &mut RequestCtx,
        parts: http::request::Parts,
        body: Incoming,
        path_and_query: PathAndQuery,
        upgrade: bool,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        let Exchange { service, route, client, limit } = *self;
        let admission =
            service.circuit.as_ref().map(|(circuit, threshold, open_ms)| circuit.admission(*open_ms, *threshold));
        if admission.as_ref().is_some_and(|a| a.admit == Admit::No) {
            service.metrics.circuit_rejections.inc();
            return Err(GatewayError::CircuitOpen { service: service.name.clone() });
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
                Err(_) => return Err(GatewayError::BodyTimeout { timeout_ms: timeout.as_millis() as u64 }),
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
                .ok_or_else(|| GatewayError::NoTarget { service: service.name.clone() })?;
            tried[n] = index;
            rctx.attempts += 1;
            let target = &service.targets[index];
            rctx.upstream = Some(target.authority.clone());
            // Origin form: the pool names the target itself.
            let uri = Uri::from(path_and_query.clone());
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
            let mut request = match first.take() {
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
            // Replaces the client's Host (one insert; the pool adds none then).
            request.headers_mut().insert(header::HOST, target.host.clone());
            let in_flight = InFlight::new(&target.state);
            let sent =
                tokio::time::timeout(timeout, client.request(&target.authority, &target.host, request, upgrade)).await;
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
                    Err(GatewayError::BodyTimeout { timeout_ms: timeout.as_millis() as u64 })
                }
                Err(_elapsed) => Err(GatewayError::UpstreamTimeout {
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
        let body = ResponseBody::new(
            body,
            in_flight,
            route.idle_timeout,
            rctx.upstream.clone().unwrap_or_else(|| Arc::from("")),
        )
        .streaming_to(&rctx.client, rctx.upstream_slot.take());
        Ok(Response::from_parts(head, body.boxed_unsync()))
    }
}

/// Reads a (small, declared-length) request body whole, for retries.
async fn read_whole(body: Incoming, limit: u64) -> Result<Bytes, GatewayError> {
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(GatewayError::BodyTooLarge { limit }),
        Err(e) => Err(GatewayError::BadRequest(format!("the request body could not be read: {e}"))),
    }
}

fn balance_key(service: &CompiledService, rctx: &RequestCtx, headers: &http::HeaderMap) -> u64 {
    match service.hash_on {
        // Host hashes the request's validated, canonical authority (the one
        // routes matched: `A.example`, `a.example:80` and an absolute-form
        // URI's host are one key), not the raw header the client wrote.
        HashOn::Header if service.hash_header.as_ref() == Some(&http::header::HOST) => {
            rctx.authority.as_ref().map_or_else(|| client_ip_key(rctx), |a| hash_key(a.as_str().as_bytes()))
        }
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
) -> GatewayError {
    let target = authority.to_string();
    let mut connecting = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut reason = error.to_string();
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return GatewayError::BodyTooLarge { limit };
        }
        if let Some(ClientBodyError(client)) = e.downcast_ref::<ClientBodyError>() {
            return GatewayError::ClientBody { reason: client.to_string() };
        }
        match e.downcast_ref::<PoolError>() {
            // The TLS handshake shares the connect's deadline (see the pool).
            Some(PoolError::ConnectTimeout { ms, .. } | PoolError::TlsTimeout { ms, .. }) => {
                return GatewayError::UpstreamConnectTimeout { target, timeout_ms: *ms };
            }
            // The OS may give up connecting (ETIMEDOUT) before our timeout
            // does, during the TCP connect or the TLS handshake.
            Some(PoolError::Connect { .. } | PoolError::Tls { .. }) => connecting = true,
            _ => {}
        }
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return if connecting {
                GatewayError::UpstreamConnectTimeout { target, timeout_ms: timeouts.connect.as_millis() as u64 }
            } else {
                GatewayError::UpstreamTimeout { target, timeout_ms: timeouts.request.as_millis() as u64 }
            };
        }
        reason = e.to_string();
        cause = e.source();
    }
    GatewayError::UpstreamUnavailable { target, reason }
}

#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    request: Duration,
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
    use super::*;

    #[test]
    fn a_tls_handshake_past_the_connect_deadline_is_a_connect_timeout() {
        let timeouts = Timeouts { connect: Duration::from_secs(3), request: Duration::from_secs(30) };
        let error: BoxError = Box::new(PoolError::TlsTimeout { authority: "10.0.0.5:443".into(), ms: 3000 });
        match classify(error.as_ref(), "10.0.0.5:443", 1024, timeouts) {
            GatewayError::UpstreamConnectTimeout { target, timeout_ms } => {
                assert_eq!((target.as_str(), timeout_ms), ("10.0.0.5:443", 3000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tls_handshake_the_os_timed_out_is_a_connect_timeout_not_a_request_timeout() {
        let timeouts = Timeouts { connect: Duration::from_secs(3), request: Duration::from_secs(30) };
        let source = std::io::Error::from(std::io::ErrorKind::TimedOut);
        let error: BoxError = Box::new(PoolError::Tls { authority: "10.0.0.5:443".into(), source });
        match classify(error.as_ref(), "10.0.0.5:443", 1024, timeouts) {
            GatewayError::UpstreamConnectTimeout { timeout_ms, .. } => assert_eq!(timeout_ms, 3000),
            other => panic!("{other:?}"),
        }
    }
}
