//! Header rules every proxy must follow: drop hop-by-hop headers (RFC 9110
//! §7.6.1), record the client in X-Forwarded-*, and carry a request id.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The gateway's API-key header (besides `Authorization: Bearer`).
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the de-facto `proxy-connection`
/// and `keep-alive`). Transfer-Encoding is left to hyper, which re-frames the
/// body itself, but is never forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Whether a message carries any hop-by-hop header. Most carry none, so one
/// pass over the names decides, and only a message that has some pays for
/// removals.
pub fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(is_hop_by_hop)
}

/// Removes hop-by-hop headers, including any the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if has_hop_by_hop(headers) {
        strip_found_hop_by_hop(headers);
    }
}

/// The comma-separated tokens of every `Connection` header, trimmed.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// Headers a `Connection` token may never remove: the message's framing and
/// its authority. (Gateway-owned headers are set after the removal, so a
/// token naming one removes only the client's copy.)
fn is_protected_from_connection(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

/// `strip_hop_by_hop` for a message already known to carry some.
pub fn strip_found_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .filter(|name| !is_protected_from_connection(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Headers only the gateway may send upstream (DESIGN §8): identity and
/// forwarding facts an upstream trusts because the gateway set them.
/// `x-forwarded-for` is appended to and `-proto`/`-host` overwritten, so the
/// client's exact spellings of those three are handled where they are set.
fn is_gateway_owned(dashed_lower: &str) -> bool {
    dashed_lower.starts_with("x-consumer-")
        || dashed_lower == "x-anonymous-consumer"
        || dashed_lower.starts_with("x-forwarded-")
        || dashed_lower == "x-request-id"
        || dashed_lower == "traceparent"
        || is_never_forwarded(dashed_lower)
}

/// Client headers that upstream frameworks trust to override what the
/// gateway checked, so they never pass: `Forwarded` (RFC 7239; Spring and
/// Undertow prefer it to `X-Forwarded-*`) and `X-Real-IP` claim the client's
/// address, host and scheme; `X-Original-URL`/`X-Rewrite-URL` make Symfony and
/// IIS serve a path the gateway never routed; the method-override headers
/// turn a GET the route allowed into a DELETE it did not.
fn is_never_forwarded(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-real-ip"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
    )
}

/// A client header the gateway drops before anything else runs: another
/// consumer header than the two the gateway sets, an `x-forwarded-*` the
/// gateway does not set, or any spelling of a gateway-owned name with `_`
/// for `-` (CGI, WSGI, PHP and others map both to the same variable, so
/// `X_Consumer_Id` arrives as `HTTP_X_CONSUMER_ID`).
fn is_spoofed(name: &HeaderName) -> bool {
    let name = name.as_str();
    if name.contains('_') {
        return is_gateway_owned(&name.replace('_', "-"));
    }
    if let Some(rest) = name.strip_prefix("x-forwarded-") {
        return !matches!(rest, "for" | "proto" | "host");
    }
    (name.starts_with("x-consumer-") && name != "x-consumer-id" && name != "x-consumer-name")
        || is_never_forwarded(name)
}

/// What the first pass over a request's headers found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestScan {
    /// Some hop-by-hop header is present (a protocol upgrade needs one).
    pub hop_by_hop: bool,
    /// Some header is a forgery of a gateway-owned one.
    pub spoofed: bool,
    /// Which headers that later phases read, replace or remove the client sent.
    pub sent: Sent,
}

/// A set of the request headers the gateway reads or replaces later on:
/// credentials, identity and forwarding. A phase that would remove or look
/// up one the client did not send skips the map operation (each hashes the
/// name). A set flag only means "may be present": a phase that sets one of
/// these names itself marks it (see [`Sent::mark`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent(u8);

impl Sent {
    pub const AUTHORIZATION: Sent = Sent(1);
    pub const X_API_KEY: Sent = Sent(1 << 1);
    pub const X_CONSUMER_ID: Sent = Sent(1 << 2);
    pub const X_CONSUMER_NAME: Sent = Sent(1 << 3);
    pub const X_ANONYMOUS_CONSUMER: Sent = Sent(1 << 4);
    pub const X_FORWARDED_FOR: Sent = Sent(1 << 5);
    pub const X_FORWARDED_HOST: Sent = Sent(1 << 6);
    /// Every tracked header may be present: what a request holds before its
    /// headers were scanned, so that a path that skipped the scan removes
    /// and reads as if all were sent.
    pub const ALL: Sent = Sent((1 << 7) - 1);

    /// The flag of `name`, if it is one of the tracked headers.
    pub fn of(name: &HeaderName) -> Sent {
        if name == header::AUTHORIZATION {
            return Sent::AUTHORIZATION;
        }
        match name.as_str() {
            "x-api-key" => Sent::X_API_KEY,
            "x-consumer-id" => Sent::X_CONSUMER_ID,
            "x-consumer-name" => Sent::X_CONSUMER_NAME,
            "x-anonymous-consumer" => Sent::X_ANONYMOUS_CONSUMER,
            "x-forwarded-for" => Sent::X_FORWARDED_FOR,
            "x-forwarded-host" => Sent::X_FORWARDED_HOST,
            _ => Sent(0),
        }
    }

    /// Notes that a header named `name` may now be in the request.
    pub fn mark(&mut self, name: &HeaderName) {
        self.0 |= Sent::of(name).0;
    }

    pub fn contains(self, flag: Sent) -> bool {
        self.0 & flag.0 != 0
    }
}

/// One pass over the request's header names; nearly every request has
/// neither kind, and then nothing else is done.
pub fn scan_request(headers: &HeaderMap) -> RequestScan {
    let mut scan = RequestScan::default();
    for name in headers.keys() {
        scan.hop_by_hop |= is_hop_by_hop(name);
        scan.spoofed |= is_spoofed(name);
        scan.sent.mark(name);
    }
    scan
}

/// The request's first header phase, before the gateway sets any header of
/// its own: hop-by-hop headers and those `Connection` names go (RFC 9110
/// §7.6.1), and so do forgeries of gateway-owned headers. Whatever the client
/// sends, it cannot remove or forge what the gateway sets afterwards.
pub fn sanitize_request(headers: &mut HeaderMap, scan: RequestScan) {
    if scan.hop_by_hop {
        strip_found_hop_by_hop(headers);
    }
    if scan.spoofed {
        let forged: Vec<HeaderName> = headers.keys().filter(|n| is_spoofed(n)).cloned().collect();
        for name in forged {
            headers.remove(name);
        }
    }
}

/// HTTP/2 may split `Cookie` into one field per cookie; an HTTP/1.1 upstream
/// must get them joined with "; " (RFC 9113 §8.2.3), or servers that join
/// repeated fields with ", " (WSGI, CGI) read one garbled cookie.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// Records the client in X-Forwarded-For/-Proto/-Host. `client` is the
/// client's address already rendered as a header value (once per connection);
/// `sent` says whether the client sent X-Forwarded-For or -Host.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    original_host: Option<HeaderValue>,
    tls: bool,
    sent: Sent,
) {
    debug_assert!(sent.contains(Sent::X_FORWARDED_FOR) || !headers.contains_key(&X_FORWARDED_FOR));
    debug_assert!(sent.contains(Sent::X_FORWARDED_HOST) || !headers.contains_key(&X_FORWARDED_HOST));
    let chain = if sent.contains(Sent::X_FORWARDED_FOR) { headers.get(&X_FORWARDED_FOR) } else { None };
    let value = match chain.map(HeaderValue::as_bytes) {
        Some(existing) if !existing.is_empty() => {
            let mut chain = Vec::with_capacity(existing.len() + 2 + client.len());
            chain.extend_from_slice(existing);
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(client.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)).ok()
        }
        _ => Some(client.clone()),
    };
    if let Some(value) = value {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if tls { "https" } else { "http" }));
    // Only the gateway says which host the client asked for; without one
    // (HTTP/1.0 without Host) the client's own claim must not pass either.
    match original_host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None if sent.contains(Sent::X_FORWARDED_HOST) => {
            headers.remove(&X_FORWARDED_HOST);
        }
        None => {}
    }
}

/// The client's request id when it is a sane token, else a fresh random one
/// (128 bits, hex, like nginx's `$request_id`).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID)
        && !id.is_empty()
        && id.len() <= 128
        && id.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        return id.clone();
    }
    let random: [u8; 16] = rand::random();
    let mut hex = [0u8; 32];
    hex::encode_to_slice(random, &mut hex).expect("32 hex digits for 16 bytes");
    // Owned bytes clone by reference count: the id goes upstream and back.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex)).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn the_scan_notes_every_tracked_header_in_any_spelling_and_nothing_else() {
        let tracked = [
            ("Authorization", Sent::AUTHORIZATION),
            ("X-Api-Key", Sent::X_API_KEY),
            ("X-CONSUMER-ID", Sent::X_CONSUMER_ID),
            ("x-consumer-name", Sent::X_CONSUMER_NAME),
            ("X-Anonymous-Consumer", Sent::X_ANONYMOUS_CONSUMER),
            ("X-Forwarded-For", Sent::X_FORWARDED_FOR),
            ("x-Forwarded-HOST", Sent::X_FORWARDED_HOST),
        ];
        for (name, flag) in tracked {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("v"));
            h.insert("accept", HeaderValue::from_static("*/*"));
            let sent = scan_request(&h).sent;
            assert_eq!(sent, flag, "{name}");
            for (_, other) in tracked.iter().filter(|(_, f)| *f != flag) {
                assert!(!sent.contains(*other), "{name}");
            }
        }
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-consumer-role", HeaderValue::from_static("admin"));
        assert_eq!(scan_request(&h).sent, Sent::default());
        assert!(tracked.iter().all(|(_, flag)| Sent::ALL.contains(*flag)));
        let mut marked = Sent::default();
        marked.mark(&HeaderName::from_static("x-consumer-id"));
        assert!(marked.contains(Sent::X_CONSUMER_ID));
    }

    #[test]
    fn forwarded_for_appends_to_an_existing_chain() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let client = HeaderValue::from_static("127.0.0.1");
        let sent = scan_request(&h).sent;
        add_forwarded(&mut h, &client, Some(HeaderValue::from_static("api.example.com")), false, sent);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut fresh = HeaderMap::new();
        fresh.insert("x-forwarded-host", HeaderValue::from_static("forged.example"));
        let sent = scan_request(&fresh).sent;
        add_forwarded(&mut fresh, &client, None, true, sent);
        assert_eq!(fresh["x-forwarded-for"], "127.0.0.1");
        assert_eq!(fresh["x-forwarded-proto"], "https");
        assert!(!fresh.contains_key("x-forwarded-host"));
    }

    #[test]
    fn every_hop_by_hop_header_is_removed_and_end_to_end_ones_are_kept() {
        let mut h = HeaderMap::new();
        for name in
            ["te", "trailer", "transfer-encoding", "proxy-connection", "proxy-authorization", "proxy-authenticate"]
        {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
        }
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.append("x-many", HeaderValue::from_static("1"));
        h.append("x-many", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["content-type", "x-many"]);
        assert_eq!(h.get_all("x-many").iter().count(), 2);

        // Nothing to strip: the map is left exactly as it was.
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn forged_gateway_headers_and_their_underscore_spellings_are_dropped() {
        let mut h = HeaderMap::new();
        for name in [
            "x_consumer_id",
            "X_Consumer_Name",
            "x-consumer_id",
            "x_anonymous_consumer",
            "x-consumer-groups",
            "x-consumer-custom-id",
            "x_forwarded_for",
            "x_forwarded_host",
            "x-forwarded-prefix",
            "x-forwarded-port",
            "x_request_id",
            "forwarded",
            "x-real-ip",
            "x_real_ip",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "X-HTTP-Method",
            "x-method-override",
        ] {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("forged"));
        }
        for kept in ["x-consumer-id", "x-forwarded-for", "x_custom_thing", "accept", "x-forwarded-proto"] {
            h.insert(HeaderName::from_bytes(kept.as_bytes()).unwrap(), HeaderValue::from_static("kept"));
        }
        let scan = scan_request(&h);
        assert!(scan.spoofed && !scan.hop_by_hop);
        sanitize_request(&mut h, scan);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        // x-consumer-id stays here only because the authenticate phase always sets or removes it.
        assert_eq!(left, ["accept", "x-consumer-id", "x-forwarded-for", "x-forwarded-proto", "x_custom_thing"]);
    }

    #[test]
    fn http2_cookie_fields_are_joined_for_http11() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }

    #[test]
    fn connection_cannot_remove_framing_or_authority() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("host, content-length, x-hop"));
        h.insert("host", HeaderValue::from_static("a.example"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        let scan = scan_request(&h);
        sanitize_request(&mut h, scan);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("host") && h.contains_key("content-length"));
    }

    #[test]
    fn ordinary_requests_need_no_second_pass() {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        h.insert("user-agent", HeaderValue::from_static("curl"));
        let scan = scan_request(&h);
        assert!(!scan.hop_by_hop && !scan.spoofed, "{scan:?}");
        assert_eq!(scan.sent, Sent::X_FORWARDED_FOR);
    }

    #[test]
    fn request_id_is_kept_when_sane_and_generated_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let generated = request_id(&h);
        assert_eq!(generated.len(), 32);
        assert_ne!(generated, request_id(&h), "fresh ids are random");
    }
}
