//! Header rules every proxy must follow: drop hop-by-hop headers (RFC 9110
//! §7.6.1), record the client in X-Forwarded-*, and carry a request id.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
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
/// removals (or, for a request, for looking for an upgrade).
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

/// `strip_hop_by_hop` for a message already known to carry some.
pub fn strip_found_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> =
        connection_tokens(headers).filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok()).collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Records the client in X-Forwarded-For/-Proto/-Host. `client` is the
/// client's address already rendered as a header value (once per connection).
pub fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, original_host: Option<HeaderValue>, tls: bool) {
    let value = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
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
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
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
    fn forwarded_for_appends_to_an_existing_chain() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let client = HeaderValue::from_static("127.0.0.1");
        add_forwarded(&mut h, &client, Some(HeaderValue::from_static("api.example.com")), false);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut fresh = HeaderMap::new();
        add_forwarded(&mut fresh, &client, None, true);
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
