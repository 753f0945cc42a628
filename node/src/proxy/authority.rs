//! One effective authority per request (RFC 9112 §3.2, RFC 9113 §8.3.1),
//! validated once in the match phase and then used for routing, the cache key
//! and `X-Forwarded-Host`, so no two parts of the gateway can disagree about
//! which host a request is for.
//!
//! - HTTP/1.1 needs exactly one `Host`; a missing or repeated one is a 400.
//!   HTTP/1.0 may omit it.
//! - An absolute-form target (`GET http://a.example/x`) names the authority
//!   and the `Host` field is ignored, as RFC 9112 §3.2.2 tells a proxy to do.
//! - Over HTTP/2, `:authority` wins; a `Host` that names a different
//!   authority makes the request malformed (RFC 9113 §8.3.1).
//! - An authority is a host and an optional numeric port, nothing else: no
//!   user info (`victim:x@attacker`), no path, no stray characters. Host
//!   names are lower-cased and lose a trailing dot; a port that is the
//!   scheme's default is dropped, so `a.example:80` and `a.example` are one
//!   cache entry and one `X-Forwarded-Host`.

use std::net::Ipv6Addr;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Uri, Version};

/// A validated authority in canonical form (`host`, `host:port`, `[v6]:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// The canonical form; also the `X-Forwarded-Host` value.
    value: HeaderValue,
    /// Where the host (without IPv6 brackets) sits in `value`.
    host: (usize, usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    #[error("the request has more than one Host header; send exactly one")]
    DuplicateHost,
    #[error("the Host header and the request's authority name different hosts; send one authority")]
    Conflicting,
    #[error("the authority {0:?} is not a host and an optional numeric port")]
    Invalid(String),
}

impl Authority {
    /// The host, lower case, without brackets or port: what routes match.
    pub fn host(&self) -> &str {
        &self.as_str()[self.host.0..self.host.1]
    }

    pub fn as_str(&self) -> &str {
        // Built only from validated ASCII.
        self.value.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }
}

/// The request's effective authority: None only where HTTP allows a request
/// without one (HTTP/1.0, or HTTP/2 without `:authority` or `Host`).
pub fn effective(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    tls: bool,
) -> Result<Option<Authority>, AuthorityError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_field = hosts.next();
    if hosts.next().is_some() {
        return Err(AuthorityError::DuplicateHost);
    }
    let default_port = if tls { 443 } else { 80 };
    if let Some(target) = uri.authority() {
        let authority = parse(target.as_str().as_bytes(), default_port, None)?;
        match version {
            // The absolute form's authority replaces Host (RFC 9112 §3.2.2),
            // but HTTP/1.1 still requires the field to be sent.
            Version::HTTP_11 if host_field.is_none() => return Err(AuthorityError::MissingHost),
            Version::HTTP_2 | Version::HTTP_3 => {
                if let Some(field) = host_field
                    && parse(field.as_bytes(), default_port, None)? != authority
                {
                    return Err(AuthorityError::Conflicting);
                }
            }
            _ => {}
        }
        return Ok(Some(authority));
    }
    match host_field {
        Some(field) => parse(field.as_bytes(), default_port, Some(field)).map(Some),
        None if version == Version::HTTP_11 => Err(AuthorityError::MissingHost),
        None => Ok(None),
    }
}

/// Parses and canonicalises `host[:port]`. `original` is the header the
/// bytes came from, reused (no copy) when it is already canonical.
pub fn parse(raw: &[u8], default_port: u16, original: Option<&HeaderValue>) -> Result<Authority, AuthorityError> {
    // Nearly every Host is canonical already: take it as it is, uncopied.
    if let Some(original) = original
        && let Some(host_len) = canonical_len(raw, default_port)
    {
        return Ok(Authority { value: original.clone(), host: (0, host_len) });
    }
    let invalid = || AuthorityError::Invalid(String::from_utf8_lossy(raw).chars().take(100).collect());
    let (host, port, bracketed) = if raw.first() == Some(&b'[') {
        let close = raw.iter().position(|&b| b == b']').ok_or_else(invalid)?;
        let inside = std::str::from_utf8(&raw[1..close]).map_err(|_| invalid())?;
        // Zone ids and IPvFuture are not for a public listener.
        let address: Ipv6Addr = inside.parse().map_err(|_| invalid())?;
        let port = match &raw[close + 1..] {
            [] => None,
            [b':', digits @ ..] => parse_port(digits).ok_or_else(invalid)?,
            _ => return Err(invalid()),
        };
        (address.to_string(), port, true)
    } else {
        let (name, port) = match raw.iter().position(|&b| b == b':') {
            Some(colon) => (&raw[..colon], parse_port(&raw[colon + 1..]).ok_or_else(invalid)?),
            None => (raw, None),
        };
        (canonical_name(name).ok_or_else(invalid)?, port, false)
    };
    let port = port.filter(|&p| p != default_port);
    let mut value = String::with_capacity(host.len() + 8);
    if bracketed {
        value.push('[');
    }
    let start = value.len();
    value.push_str(&host);
    let end = value.len();
    if bracketed {
        value.push(']');
    }
    if let Some(port) = port {
        value.push(':');
        value.push_str(&port.to_string());
    }
    let value = match original {
        Some(original) if original.as_bytes() == value.as_bytes() => original.clone(),
        _ => HeaderValue::from_str(&value).map_err(|_| invalid())?,
    };
    Ok(Authority { value, host: (start, end) })
}

/// The host's length when `raw` is already in canonical form: a lower-case
/// name or IPv4 address (no trailing dot) and, if any, a port without leading
/// zeros that is not the default. None sends it the long way.
fn canonical_len(raw: &[u8], default_port: u16) -> Option<usize> {
    let (name, port) = match raw.iter().position(|&b| b == b':') {
        Some(colon) => (&raw[..colon], Some(&raw[colon + 1..])),
        None => (raw, None),
    };
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let mut label = 0;
    for &b in name {
        if b == b'.' {
            if label == 0 {
                return None;
            }
            label = 0;
        } else if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' {
            label += 1;
            if label > 63 {
                return None;
            }
        } else {
            return None;
        }
    }
    if label == 0 {
        return None;
    }
    if let Some(digits) = port {
        if digits.first().is_none_or(|&d| d == b'0') {
            return None;
        }
        if parse_port(digits)?? == default_port {
            return None;
        }
    }
    Some(name.len())
}

/// `*DIGIT` (RFC 3986 §3.2.3): empty means no port; 1 to 65535, in at most
/// five digits (a Host of `x:000080` is refused, not read as port 80).
fn parse_port(digits: &[u8]) -> Option<Option<u16>> {
    match digits.len() {
        0 => Some(None),
        1..=5 => tollgate_raft::port_number(digits).map(Some),
        _ => None,
    }
}

/// A DNS name or IPv4 address: dot-separated labels of letters, digits, '-'
/// and '_' (found in real internal names), lower-cased, without a trailing dot.
fn canonical_name(name: &[u8]) -> Option<String> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        if !label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
    }
    String::from_utf8(name.to_ascii_lowercase()).ok()
}

impl From<AuthorityError> for crate::plumbing::GatewayError {
    fn from(error: AuthorityError) -> Self {
        crate::plumbing::GatewayError::InvalidAuthority(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn canon(raw: &str) -> Result<String, AuthorityError> {
        parse(raw.as_bytes(), 80, None).map(|a| a.as_str().to_string())
    }

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for host in hosts {
            h.append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        h
    }

    #[test]
    fn hosts_are_canonical() {
        assert_eq!(canon("Victim.Example").unwrap(), "victim.example");
        assert_eq!(canon("victim.example.").unwrap(), "victim.example");
        assert_eq!(canon("victim.example:80").unwrap(), "victim.example");
        assert_eq!(canon("victim.example:").unwrap(), "victim.example");
        assert_eq!(canon("victim.example:1337").unwrap(), "victim.example:1337");
        assert_eq!(canon("127.0.0.1:8080").unwrap(), "127.0.0.1:8080");
        assert_eq!(canon("[::1]:8080").unwrap(), "[::1]:8080");
        assert_eq!(canon("[0:0::1]").unwrap(), "[::1]");
        let a = parse(b"[::1]:81", 80, None).unwrap();
        assert_eq!(a.host(), "::1");
        assert_eq!(parse(b"API.example:443", 443, None).unwrap().host(), "api.example");
    }

    #[test]
    fn anything_but_host_and_port_is_refused() {
        for bad in [
            "victim.example:x@attacker.example",
            "user@victim.example",
            "victim.example:99999",
            "victim.example:0",
            "victim.example:80:80",
            "victim.example/path",
            "victim example",
            "",
            ".",
            "a..b",
            "[::1",
            "[::1]x",
            "[not-v6]",
            "victim.example:+80",
            "vict\u{ef}m.example",
        ] {
            assert!(canon(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_port_is_at_most_five_digits_leading_zeros_included() {
        assert_eq!(canon("victim.example:00080").unwrap(), "victim.example");
        assert_eq!(canon("victim.example:08080").unwrap(), "victim.example:8080");
        assert!(canon("victim.example:000080").is_err(), "six digits are not read as port 80");
    }

    #[test]
    fn one_host_header_on_http11() {
        let uri: Uri = "/x".parse().unwrap();
        assert_eq!(effective(Version::HTTP_11, &uri, &headers(&[]), false), Err(AuthorityError::MissingHost));
        assert_eq!(
            effective(Version::HTTP_11, &uri, &headers(&["a.example", "b.example"]), false),
            Err(AuthorityError::DuplicateHost)
        );
        assert_eq!(effective(Version::HTTP_10, &uri, &headers(&[]), false), Ok(None));
        let a = effective(Version::HTTP_11, &uri, &headers(&["A.example:80"]), false).unwrap().unwrap();
        assert_eq!(a.as_str(), "a.example");
    }

    #[test]
    fn absolute_form_wins_over_host_and_http2_must_agree() {
        let uri: Uri = "http://a.example/t/x".parse().unwrap();
        let a = effective(Version::HTTP_11, &uri, &headers(&["b.example"]), false).unwrap().unwrap();
        assert_eq!(a.host(), "a.example");
        assert_eq!(effective(Version::HTTP_11, &uri, &headers(&[]), false), Err(AuthorityError::MissingHost));
        assert_eq!(effective(Version::HTTP_2, &uri, &headers(&["b.example"]), false), Err(AuthorityError::Conflicting));
        assert!(effective(Version::HTTP_2, &uri, &headers(&["a.example:80"]), false).unwrap().is_some());
        let with_user: Uri = "http://u:p@a.example/x".parse().unwrap();
        assert!(effective(Version::HTTP_11, &with_user, &headers(&["a.example"]), false).is_err());
    }

    #[test]
    fn a_canonical_header_is_reused_not_copied() {
        let field = HeaderValue::from_static("a.example:8080");
        let a = parse(field.as_bytes(), 80, Some(&field)).unwrap();
        assert_eq!(a.header_value().as_bytes().as_ptr(), field.as_bytes().as_ptr());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever the bytes, parsing never panics, and what it accepts is
        /// canonical: only host characters and a numeric port, lower case,
        /// and parsing it again gives it back unchanged.
        #[test]
        fn accepted_authorities_are_canonical(raw in proptest::collection::vec(prop_oneof![
            Just(b'a'), Just(b'Z'), Just(b'0'), Just(b'9'), Just(b'.'), Just(b':'), Just(b'-'), Just(b'_'),
            Just(b'@'), Just(b'['), Just(b']'), Just(b'/'), Just(b'%'), Just(b' '), Just(b'x'), any::<u8>(),
        ], 0..40)) {
            // The uncopied fast path and the long way agree.
            let header = HeaderValue::from_bytes(&raw).ok();
            let fast = header.as_ref().map(|h| parse(&raw, 80, Some(h)).map(|a| (a.as_str().to_string(), a.host().to_string())));
            let slow = parse(&raw, 80, None).map(|a| (a.as_str().to_string(), a.host().to_string()));
            if let Some(fast) = fast {
                prop_assert_eq!(fast, slow);
            }
            if let Ok(a) = parse(&raw, 80, None) {
                let s = a.as_str();
                prop_assert!(!s.contains(['@', '/', '%', ' ']));
                prop_assert!(!a.host().bytes().any(|b| b.is_ascii_uppercase()));
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:[]".contains(&b)));
                let again = parse(s.as_bytes(), 80, None).expect("canonical form parses");
                prop_assert_eq!(again.as_str(), s);
            }
        }
    }
}
