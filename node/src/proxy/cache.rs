//! The response cache (DESIGN §2, phase "cache"): in memory, bounded by bytes
//! (moka, TinyLFU admission), one TTL per entry. Keyed by route, consumer,
//! method, host, path, query and the route's vary headers. Cache-Control is
//! honoured both ways: a request's no-store skips the cache and no-cache skips
//! the lookup; a response's no-store, no-cache, private, Set-Cookie or Vary: *
//! keeps it out, and its s-maxage/max-age overrides the route's TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use moka::Expiry;
use moka::sync::Cache;

pub struct CachedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    stored: Instant,
    ttl: Duration,
}

impl CachedResponse {
    pub fn age_secs(&self) -> u64 {
        self.stored.elapsed().as_secs()
    }
}

struct PerEntryTtl;

impl Expiry<String, Arc<CachedResponse>> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, value: &Arc<CachedResponse>, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

#[derive(Clone)]
pub struct ResponseCache {
    inner: Cache<String, Arc<CachedResponse>>,
}

/// What the request's own Cache-Control allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPolicy {
    /// Look up, and store on a miss.
    Normal,
    /// Skip the lookup but store the fresh answer (no-cache, max-age=0).
    Refresh,
    /// Neither read nor write (no-store, or a method that is not cacheable).
    Bypass,
}

impl ResponseCache {
    pub fn new(max_bytes: u64) -> ResponseCache {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &Arc<CachedResponse>| {
                let headers: usize = value.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
                u32::try_from(key.len() + value.body.len() + headers + 128).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        ResponseCache { inner }
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedResponse>> {
        self.inner.get(key)
    }

    pub fn put(&self, key: String, status: StatusCode, headers: HeaderMap, body: Bytes, ttl: Duration) {
        self.inner.insert(key, Arc::new(CachedResponse { status, headers, body, stored: Instant::now(), ttl }));
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }
}

pub fn request_policy(method: &Method, headers: &HeaderMap) -> RequestPolicy {
    if method != Method::GET && method != Method::HEAD {
        return RequestPolicy::Bypass;
    }
    let mut policy = RequestPolicy::Normal;
    for directive in directives(headers) {
        match directive {
            "no-store" => return RequestPolicy::Bypass,
            "no-cache" | "max-age=0" => policy = RequestPolicy::Refresh,
            _ => {}
        }
    }
    if headers.get(header::PRAGMA).is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache")) {
        policy = RequestPolicy::Refresh;
    }
    policy
}

/// How long a response may be stored, or None if it must not be.
pub fn response_ttl(status: StatusCode, headers: &HeaderMap, route_ttl: Duration) -> Option<Duration> {
    if status != StatusCode::OK {
        return None;
    }
    if headers.contains_key(header::SET_COOKIE) || headers.get(header::VARY).is_some_and(|v| v.as_bytes() == b"*") {
        return None;
    }
    let (mut max_age, mut s_maxage) = (None, None);
    for directive in directives(headers) {
        match directive {
            "no-store" | "no-cache" | "private" => return None,
            d => {
                if let Some(v) = d.strip_prefix("s-maxage=") {
                    s_maxage = v.trim_matches('"').parse::<u64>().ok();
                } else if let Some(v) = d.strip_prefix("max-age=") {
                    max_age = v.trim_matches('"').parse::<u64>().ok();
                }
            }
        }
    }
    match s_maxage.or(max_age) {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
        None => Some(route_ttl),
    }
}

fn directives(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The cache key; `\u{1f}` separates parts so no part can imitate another.
pub fn key(
    route_id: &str,
    consumer: Option<&str>,
    method: &Method,
    host: Option<&str>,
    path_and_query: &str,
    vary: &[http::HeaderName],
    headers: &HeaderMap,
) -> String {
    let mut k = String::with_capacity(64 + path_and_query.len());
    for part in [route_id, consumer.unwrap_or(""), method.as_str(), host.unwrap_or(""), path_and_query] {
        k.push_str(part);
        k.push('\u{1f}');
    }
    for name in vary {
        for value in headers.get_all(name) {
            k.push_str(value.to_str().unwrap_or(""));
            k.push('\u{1e}');
        }
        k.push('\u{1f}');
    }
    k
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn cache_control_decides_storage_and_lifetime() {
        let route = Duration::from_secs(60);
        assert_eq!(response_ttl(StatusCode::OK, &HeaderMap::new(), route), Some(route));
        assert_eq!(
            response_ttl(StatusCode::OK, &with("cache-control", "public, max-age=5"), route),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            response_ttl(StatusCode::OK, &with("cache-control", "max-age=5, s-maxage=9"), route),
            Some(Duration::from_secs(9))
        );
        assert_eq!(response_ttl(StatusCode::OK, &with("cache-control", "no-store"), route), None);
        assert_eq!(response_ttl(StatusCode::OK, &with("cache-control", "private"), route), None);
        assert_eq!(response_ttl(StatusCode::OK, &with("set-cookie", "a=b"), route), None);
        assert_eq!(response_ttl(StatusCode::NOT_FOUND, &HeaderMap::new(), route), None);
        assert_eq!(request_policy(&Method::GET, &with("cache-control", "no-store")), RequestPolicy::Bypass);
        assert_eq!(request_policy(&Method::GET, &with("cache-control", "no-cache")), RequestPolicy::Refresh);
        assert_eq!(request_policy(&Method::POST, &HeaderMap::new()), RequestPolicy::Bypass);
    }

    #[test]
    fn vary_headers_split_the_key() {
        let vary = [http::HeaderName::from_static("accept-language")];
        let a = key("r", None, &Method::GET, Some("h"), "/p?q=1", &vary, &with("accept-language", "en"));
        let b = key("r", None, &Method::GET, Some("h"), "/p?q=1", &vary, &with("accept-language", "de"));
        let c = key("r", None, &Method::GET, Some("h"), "/p?q=2", &vary, &with("accept-language", "en"));
        assert!(a != b && a != c);
    }
}
