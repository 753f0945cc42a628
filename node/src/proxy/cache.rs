//! The response cache (DESIGN §2, phase "cache"): in memory, bounded by bytes
//! (moka, TinyLFU admission), one TTL per entry. Keyed by route, consumer,
//! method, authority, path, query and the route's vary headers. As a shared
//! cache (RFC 9111):
//! - a request's no-store skips the cache and no-cache skips the lookup;
//! - a response's no-store, no-cache, private, Set-Cookie or `Vary: *` keeps
//!   it out, and its s-maxage/max-age overrides the route's TTL;
//! - the request headers a response's `Vary` names become part of the stored
//!   variant's key (§4.1), so a response that varies on `Authorization` or
//!   `Accept-Language` is only served to requests that send the same values;
//! - a response to a request that carried `Authorization` to the upstream is
//!   stored only if it says `public`, `s-maxage` or `must-revalidate` (§3.5);
//! - a request with a `Cookie` neither reads nor fills the cache unless the
//!   route opts in, since cookies usually mean a session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
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

/// What a key holds: a response, or (under the primary key of a response
/// that had `Vary`) the names of the request headers that pick its variant.
#[derive(Clone)]
enum Stored {
    Response(Arc<CachedResponse>),
    Variants { names: Arc<[HeaderName]>, ttl: Duration },
}

impl Stored {
    fn ttl(&self) -> Duration {
        match self {
            Stored::Response(r) => r.ttl,
            Stored::Variants { ttl, .. } => *ttl,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Stored::Response(r) => {
                r.body.len() + r.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum::<usize>()
            }
            Stored::Variants { names, .. } => names.iter().map(|n| n.as_str().len() + 16).sum(),
        }
    }
}

struct PerEntryTtl;

impl Expiry<String, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, value: &Stored, _: Instant) -> Option<Duration> {
        Some(value.ttl())
    }
}

#[derive(Clone)]
pub struct ResponseCache {
    inner: Cache<String, Stored>,
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
            .weigher(|key: &String, value: &Stored| u32::try_from(key.len() + value.weight() + 128).unwrap_or(u32::MAX))
            .expire_after(PerEntryTtl)
            .build();
        ResponseCache { inner }
    }

    /// The stored response for this key and request, if any: when the
    /// stored response had `Vary`, only the variant whose request headers
    /// match this request's.
    pub fn lookup(&self, key: &str, request: &HeaderMap) -> Option<Arc<CachedResponse>> {
        match self.inner.get(key)? {
            Stored::Response(response) => Some(response),
            Stored::Variants { names, .. } => match self.inner.get(&variant_key(key, &names, request))? {
                Stored::Response(response) => Some(response),
                Stored::Variants { .. } => None,
            },
        }
    }

    /// Stores a response; `request` holds the headers the upstream received,
    /// which the response's `Vary` may name.
    pub fn store(&self, key: String, request: &HeaderMap, response: StoredParts, ttl: Duration) {
        let StoredParts { status, headers, body } = response;
        let names = vary_names(&headers);
        let entry = Stored::Response(Arc::new(CachedResponse { status, headers, body, stored: Instant::now(), ttl }));
        if names.is_empty() {
            self.inner.insert(key, entry);
            return;
        }
        let names: Arc<[HeaderName]> = names.into();
        self.inner.insert(variant_key(&key, &names, request), entry);
        self.inner.insert(key, Stored::Variants { names, ttl });
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }
}

/// A response on its way into the cache.
pub struct StoredParts {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The request headers a response's `Vary` names, lower case, sorted and
/// without repeats, so equal lists give equal keys.
fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "*")
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// The key of one variant: the primary key, then each named header's
/// values (`\u{1d}` and `\u{1e}` cannot occur in header values).
fn variant_key(key: &str, names: &[HeaderName], request: &HeaderMap) -> String {
    let mut k = String::with_capacity(key.len() + 64);
    k.push_str(key);
    k.push('\u{1d}');
    for name in names {
        // The names too: two Vary lists over the same values are different variants.
        k.push_str(name.as_str());
        k.push('\u{1e}');
        for value in request.get_all(name) {
            // Bytes, not text: two values that differ only in non-UTF-8 bytes stay apart.
            k.push_str(&hex::encode(value.as_bytes()));
            k.push('\u{1e}');
        }
        k.push('\u{1f}');
    }
    k
}

/// Whether a request sends the upstream a credential of its own: the
/// gateway removes the ones it checked, so any left are for the upstream,
/// and its answer may be private to that caller.
pub fn carries_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key(&super::headers::X_API_KEY)
}

/// `cookies_allowed` is the route's opt-in to caching requests with a Cookie.
pub fn request_policy(method: &Method, headers: &HeaderMap, cookies_allowed: bool) -> RequestPolicy {
    if method != Method::GET && method != Method::HEAD {
        return RequestPolicy::Bypass;
    }
    if !cookies_allowed && headers.contains_key(header::COOKIE) {
        return RequestPolicy::Bypass;
    }
    let mut policy = RequestPolicy::Normal;
    for directive in directives(headers) {
        // Directive names are case-insensitive (RFC 9111 §5.2).
        match directive.to_ascii_lowercase().as_str() {
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
/// `authorized` says the request carried a credential to the upstream
/// (see [`carries_credentials`]).
pub fn response_ttl(
    status: StatusCode,
    headers: &HeaderMap,
    route_ttl: Duration,
    authorized: bool,
) -> Option<Duration> {
    if status != StatusCode::OK {
        return None;
    }
    let varies_on_everything = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|name| name.trim() == "*"));
    if headers.contains_key(header::SET_COOKIE) || varies_on_everything {
        return None;
    }
    let (mut max_age, mut s_maxage) = (None, None);
    let mut shareable = false;
    for directive in directives(headers) {
        let directive = directive.to_ascii_lowercase();
        match directive.as_str() {
            "no-store" | "no-cache" | "private" => return None,
            "public" | "must-revalidate" => shareable = true,
            d => {
                if d.starts_with("no-cache=") || d.starts_with("private=") {
                    // The qualified forms still forbid storing the fields they
                    // name; not storing at all is the simple, safe reading.
                    return None;
                }
                shareable |= d.starts_with("s-maxage=");
                if let Some(v) = d.strip_prefix("s-maxage=") {
                    s_maxage = v.trim_matches('"').parse::<u64>().ok();
                } else if let Some(v) = d.strip_prefix("max-age=") {
                    max_age = v.trim_matches('"').parse::<u64>().ok();
                }
            }
        }
    }
    if authorized && !shareable {
        return None;
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
/// What a cached response is the answer to.
pub struct KeyOf<'a> {
    pub route_id: &'a str,
    pub consumer: Option<&'a str>,
    /// The API version the lifecycle phase chose: one selected by a header
    /// the route does not vary on must not share another version's entry.
    pub version: Option<&'a str>,
    pub method: &'a Method,
    pub host: Option<&'a str>,
    pub path_and_query: &'a str,
}

pub fn key(of: KeyOf<'_>, vary: &[http::HeaderName], headers: &HeaderMap) -> String {
    let KeyOf { route_id, consumer, version, method, host, path_and_query } = of;
    let mut k = String::with_capacity(64 + path_and_query.len());
    for part in
        [route_id, consumer.unwrap_or(""), version.unwrap_or(""), method.as_str(), host.unwrap_or(""), path_and_query]
    {
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
        let response_ttl = |status, headers: &HeaderMap, ttl| response_ttl(status, headers, ttl, false);
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
        assert_eq!(response_ttl(StatusCode::OK, &with("vary", "accept, *"), route), None);
        assert_eq!(response_ttl(StatusCode::OK, &with("cache-control", "private=\"x\""), route), None);
        assert_eq!(request_policy(&Method::GET, &with("cache-control", "no-store"), false), RequestPolicy::Bypass);
        assert_eq!(request_policy(&Method::GET, &with("cache-control", "no-cache"), false), RequestPolicy::Refresh);
        assert_eq!(request_policy(&Method::POST, &HeaderMap::new(), false), RequestPolicy::Bypass);
        assert_eq!(request_policy(&Method::GET, &with("cache-control", "No-Store"), false), RequestPolicy::Bypass);
    }

    #[test]
    fn responses_to_authorized_requests_are_stored_only_when_explicitly_shareable() {
        let route = Duration::from_secs(60);
        assert_eq!(response_ttl(StatusCode::OK, &HeaderMap::new(), route, true), None);
        assert_eq!(response_ttl(StatusCode::OK, &with("cache-control", "max-age=30"), route, true), None);
        for shareable in ["public", "Public, max-age=5", "s-maxage=5", "must-revalidate"] {
            assert!(
                response_ttl(StatusCode::OK, &with("cache-control", shareable), route, true).is_some(),
                "{shareable}"
            );
        }
    }

    #[test]
    fn cookies_bypass_the_cache_unless_the_route_opts_in() {
        let cookie = with("cookie", "session=abc");
        assert_eq!(request_policy(&Method::GET, &cookie, false), RequestPolicy::Bypass);
        assert_eq!(request_policy(&Method::GET, &cookie, true), RequestPolicy::Normal);
    }

    #[test]
    fn vary_picks_the_variant_by_the_named_request_headers() {
        let cache = ResponseCache::new(1 << 20);
        let ttl = Duration::from_secs(60);
        let alice = with("authorization", "Bearer alice-session");
        let response = |body: &'static str| StoredParts {
            status: StatusCode::OK,
            headers: with("vary", "Authorization, accept-language"),
            body: Bytes::from_static(body.as_bytes()),
        };
        cache.store("k".into(), &alice, response("alice's"), ttl);
        assert_eq!(cache.lookup("k", &alice).unwrap().body, "alice's");
        assert!(cache.lookup("k", &HeaderMap::new()).is_none(), "no header is another variant");
        assert!(cache.lookup("k", &with("authorization", "Bearer mallory")).is_none());
        cache.store("k".into(), &HeaderMap::new(), response("anyone's"), ttl);
        assert_eq!(cache.lookup("k", &HeaderMap::new()).unwrap().body, "anyone's");
        assert_eq!(cache.lookup("k", &alice).unwrap().body, "alice's", "both variants live side by side");

        let plain = StoredParts { status: StatusCode::OK, headers: HeaderMap::new(), body: Bytes::from_static(b"p") };
        cache.store("plain".into(), &alice, plain, ttl);
        assert!(cache.lookup("plain", &HeaderMap::new()).is_some());
    }

    #[test]
    fn vary_headers_split_the_key() {
        let vary = [http::HeaderName::from_static("accept-language")];
        let of = |version, path_and_query| KeyOf {
            route_id: "r",
            consumer: None,
            version,
            method: &Method::GET,
            host: Some("h"),
            path_and_query,
        };
        let a = key(of(None, "/p?q=1"), &vary, &with("accept-language", "en"));
        let b = key(of(None, "/p?q=1"), &vary, &with("accept-language", "de"));
        let c = key(of(None, "/p?q=2"), &vary, &with("accept-language", "en"));
        assert!(a != b && a != c);
        let v2 = key(of(Some("v2"), "/p?q=1"), &vary, &with("accept-language", "en"));
        assert_ne!(a, v2, "each API version has its own entries");
    }
}
