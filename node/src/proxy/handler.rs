//! The request path, as the fixed phases of DESIGN §2 over one snapshot taken
//! at the start of the request. (Phases for lifecycle, limits and caching
//! slot in between as they are built.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tollgate_proto::config::v1::{AuthMode, Consumer};

use super::error::ProxyError;
use super::headers::{self, X_REQUEST_ID};
use super::snapshot::{CompiledService, GatewaySnapshot};
use super::{ProxyBody, ProxyContext};
use crate::apikey;

static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
static X_CONSUMER_ID: http::HeaderName = http::HeaderName::from_static("x-consumer-id");
static X_CONSUMER_NAME: http::HeaderName = http::HeaderName::from_static("x-consumer-name");

/// Per-request facts the phases hand to each other and to the access log.
struct RequestCtx {
    request_id: String,
    client: SocketAddr,
    route: Option<String>,
    consumer: Option<String>,
    upstream: Option<String>,
}

pub async fn handle(
    ctx: Arc<ProxyContext>,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let started = Instant::now();
    let snapshot = ctx.snapshot.load_full();
    let mut rctx = RequestCtx {
        request_id: headers::request_id(request.headers()),
        client,
        route: None,
        consumer: None,
        upstream: None,
    };
    let method = request.method().clone();
    let path = request.uri().path().to_string();

    let result = proxy(&ctx, &snapshot, &mut rctx, request).await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(request_id = %rctx.request_id, %error, "request failed");
            }
            error.into_response(&rctx.request_id)
        }
    };
    if let Ok(id) = HeaderValue::from_str(&rctx.request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
    log_access(&rctx, &method, &path, response.status(), started);
    Ok(response)
}

async fn proxy(
    ctx: &ProxyContext,
    snapshot: &GatewaySnapshot,
    rctx: &mut RequestCtx,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();

    // match
    let host = request_host(&parts);
    let matched = snapshot
        .router
        .find(&parts.method, host.as_deref(), parts.uri.path())
        .ok_or_else(|| ProxyError::NoRoute { method: parts.method.to_string(), path: parts.uri.path().to_string() })?;
    let route = matched.route;
    rctx.route = Some(route.name.clone());

    // authenticate
    if route.auth != AuthMode::None as i32 {
        let consumer = authenticate(snapshot, &parts.headers)?;
        rctx.consumer = Some(consumer.name.clone());
        let consumer_id = consumer.meta.as_ref().map(|m| m.id.as_str()).unwrap_or_default();
        parts.headers.insert(X_CONSUMER_ID.clone(), HeaderValue::from_str(consumer_id).map_err(bad_header)?);
        parts.headers.insert(X_CONSUMER_NAME.clone(), HeaderValue::from_str(&consumer.name).map_err(bad_header)?);
    }
    // Credentials are for the gateway; never pass them on.
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(&X_API_KEY);

    // body limit: refuse early when the length is declared, cut off otherwise.
    let limit = ctx.max_body_bytes;
    if declared_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }

    // upstream
    let service = snapshot
        .services
        .get(&route.service_id)
        .ok_or_else(|| ProxyError::NoTarget { service: route.service_id.clone() })?;
    let target = service.balancer.pick().ok_or_else(|| ProxyError::NoTarget { service: service.name.clone() })?;
    let authority = format!("{}:{}", target.host, target.port);
    rctx.upstream = Some(authority.clone());

    let path = upstream_path(parts.uri.path(), matched.matched_prefix.filter(|_| route.strip_prefix));
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(PathAndQuery::try_from(path_and_query).map_err(|e| ProxyError::BadRequest(e.to_string()))?)
        .build()
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    // The upstream connection is always HTTP/1.1, whatever the client spoke.
    parts.version = http::Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, rctx.client.ip(), host.as_deref());
    parts.headers.insert(X_REQUEST_ID.clone(), HeaderValue::from_str(&rctx.request_id).map_err(bad_header)?);
    // hyper sets Host from the upstream URI.
    parts.headers.remove(header::HOST);

    let body = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed_unsync();
    let upstream_request = Request::from_parts(parts, body);
    let response = send(service, &authority, upstream_request, limit).await?;

    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.map_err(|e| Box::new(e) as super::upstream::BoxError).boxed_unsync()))
}

async fn send(
    service: &CompiledService,
    authority: &str,
    request: Request<super::upstream::UpstreamBody>,
    limit: u64,
) -> Result<Response<Incoming>, ProxyError> {
    match tokio::time::timeout(service.request_timeout, service.client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(classify(&error, authority, limit, service)),
        Err(_elapsed) => Err(ProxyError::UpstreamTimeout {
            target: authority.to_string(),
            timeout_ms: service.request_timeout.as_millis() as u64,
        }),
    }
}

/// Walks the error's causes: an oversized body is the client's fault (413),
/// a timed-out connect is a timeout (504), anything else is a bad gateway.
fn classify(
    error: &hyper_util::client::legacy::Error,
    authority: &str,
    limit: u64,
    service: &CompiledService,
) -> ProxyError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut reason = error.to_string();
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return ProxyError::BodyTooLarge { limit };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return ProxyError::UpstreamTimeout {
                target: authority.to_string(),
                timeout_ms: service.request_timeout.as_millis() as u64,
            };
        }
        reason = e.to_string();
        cause = e.source();
    }
    ProxyError::UpstreamUnavailable { target: authority.to_string(), reason }
}

fn authenticate<'s>(snapshot: &'s GatewaySnapshot, headers: &http::HeaderMap) -> Result<&'s Consumer, ProxyError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .or_else(|| headers.get(&X_API_KEY).and_then(|v| v.to_str().ok()))
        .ok_or(ProxyError::Unauthorized(
            "this route requires an API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
        ))?;
    let invalid = ProxyError::Unauthorized("the API key is invalid, disabled or expired");
    let presented = apikey::parse(presented.trim()).ok_or(ProxyError::Unauthorized("the API key is malformed"))?;
    let key = snapshot.api_keys.get(presented.id).ok_or(invalid)?;
    if !presented.matches(&key.secret_sha256) || key.disabled {
        return Err(ProxyError::Unauthorized("the API key is invalid, disabled or expired"));
    }
    if key.expires_at_ms > 0 && now_ms() >= key.expires_at_ms {
        return Err(ProxyError::Unauthorized("the API key is invalid, disabled or expired"));
    }
    snapshot
        .consumers
        .get(&key.consumer_id)
        .map(|c| c.as_ref())
        .ok_or(ProxyError::Unauthorized("the API key is invalid, disabled or expired"))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn bad_header(e: http::header::InvalidHeaderValue) -> ProxyError {
    ProxyError::BadRequest(e.to_string())
}

/// Host from the URI (HTTP/2 :authority, absolute-form) or the Host header,
/// lower-cased and without a port.
fn request_host(parts: &http::request::Parts) -> Option<String> {
    let raw = parts.uri.host().map(str::to_string).or_else(|| {
        let value = parts.headers.get(header::HOST)?.to_str().ok()?;
        let host = if value.starts_with('[') {
            value.split_inclusive(']').next().unwrap_or(value)
        } else {
            value.split(':').next().unwrap_or(value)
        };
        Some(host.to_string())
    })?;
    Some(raw.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The path sent upstream: with the matched prefix removed when the route strips it.
fn upstream_path(path: &str, strip: Option<&str>) -> String {
    match strip {
        Some(prefix) if prefix != "/" => {
            let rest = &path[prefix.trim_end_matches('/').len()..];
            if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") }
        }
        _ => path.to_string(),
    }
}

fn log_access(rctx: &RequestCtx, method: &http::Method, path: &str, status: http::StatusCode, started: Instant) {
    tracing::info!(
        target: "access",
        request_id = %rctx.request_id,
        client = %rctx.client.ip(),
        %method,
        path,
        status = status.as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        route = rctx.route.as_deref().unwrap_or("-"),
        consumer = rctx.consumer.as_deref().unwrap_or("-"),
        upstream = rctx.upstream.as_deref().unwrap_or("-"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        assert_eq!(upstream_path("/api/users", Some("/api")), "/users");
        assert_eq!(upstream_path("/api", Some("/api")), "/");
        assert_eq!(upstream_path("/api/users", Some("/api/")), "/users");
        assert_eq!(upstream_path("/x", Some("/")), "/x");
        assert_eq!(upstream_path("/api/users", None), "/api/users");
    }
}
