//! Input rules: those every replica checks inside `apply` (pure functions
//! of the command, so deterministic by construction), and the admission
//! and data-plane helpers beside them (header names, URLs, ports), which
//! never run in `apply`.

use std::collections::HashSet;

use tollgate_proto::config::v1::{AuthMode, PathMatch, RoutePath, Target};

use crate::error::ApplyError;

pub(crate) const MAX_NAME_LEN: usize = 64;
/// Headers that frame the message, manage its connection or name its
/// host: the gateway's own to write on what it forwards, never a
/// configured header's. Checked at admission and by the data plane, never
/// in apply (a longer list must not change how a committed entry applies).
pub(crate) const FRAMING_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// Whether `name` (any case) frames the message, manages its connection
/// or names its host (`FRAMING_HEADERS`).
pub fn is_framing_header(name: &str) -> bool {
    FRAMING_HEADERS.iter().any(|framing| framing.eq_ignore_ascii_case(name))
}

const MAX_HOST_LEN: usize = 253;
const MAX_URL_LEN: usize = 2048;
const MAX_PATH_LEN: usize = 1024;
const MAX_TARGETS: usize = 256;
const MAX_ROUTE_HOSTS: usize = 64;
const MAX_ROUTE_PATHS: usize = 64;
const MAX_WEIGHT: u32 = 10_000;

const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

pub(crate) fn name(field: &str, value: &str) -> Result<(), ApplyError> {
    if value.is_empty() {
        return Err(ApplyError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ApplyError::invalid(field, format!("must be at most {MAX_NAME_LEN} characters")));
    }
    let first_ok = value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok {
        return Err(ApplyError::invalid(
            field,
            format!("{value:?} must start with a letter or digit and contain only letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

pub(crate) fn id(field: &str, value: &str) -> Result<(), ApplyError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(ApplyError::invalid(field, format!("must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(ApplyError::invalid(field, "must contain only a-z, 0-9 and '-'"));
    }
    Ok(())
}

/// A DNS name or an IP literal, lower case, as an upstream or route host.
pub(crate) fn hostname(field: &str, host: &str) -> Result<(), ApplyError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return Err(ApplyError::invalid(field, format!("host must be 1 to {MAX_HOST_LEN} characters")));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(ApplyError::invalid(
                field,
                format!("{host:?} is not a valid host name (lower-case letters, digits, '-' and '.')"),
            ));
        }
    }
    Ok(())
}

/// An absolute http(s) URL that names a host and carries no credentials.
/// User info (`user:password@`) would sit in plain text in the Raft log,
/// snapshots, RocksDB and every admin answer, where keys and headers are
/// sealed; `instead` tells the operator where credentials belong.
pub(crate) fn http_url(field: &str, url: &str, instead: &str) -> Result<(), ApplyError> {
    if url.len() > MAX_URL_LEN {
        return Err(ApplyError::invalid(field, format!("must be at most {MAX_URL_LEN} characters")));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApplyError::invalid(field, "must not contain spaces or control characters"));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| ApplyError::invalid(field, "must start with http:// or https://"))?;
    // The authority ends at the first '/', '?' or '#' (RFC 3986 §3.2); some
    // clients also end it at '\\', so that counts too.
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(credentials_in_url(field, instead));
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(ApplyError::invalid(field, "must name a host, e.g. https://api.example.com"));
    }
    // A port that is not 1..=65535 would be read as no port at all by
    // HTTP clients, which would then call the scheme's default one.
    if let Some(port) = written_port(authority)
        && port_number(port.as_bytes()).is_none()
    {
        return Err(ApplyError::invalid(field, format!("port {port:?} must be a number from 1 to 65535")));
    }
    Ok(())
}

/// The port a URL's authority (`host:port`, `[v6]:port`, after any user
/// information) writes, as written; None when it writes none.
pub fn written_port(authority: &str) -> Option<&str> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, after)| after);
    match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').and_then(|(_, after)| after.strip_prefix(':')),
        None => host_port.rsplit_once(':').map(|(_, port)| port),
    }
}

/// A written port's number: decimal digits only (no sign, no space; leading
/// zeros allowed, as RFC 3986's `*DIGIT`), from 1 to 65535. Anything else
/// is not a port; a client library would read it as none and call the
/// scheme's default port instead.
pub fn port_number(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() {
        return None;
    }
    let mut port: u32 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        port = port * 10 + u32::from(digit - b'0');
        if port > u32::from(u16::MAX) {
            return None;
        }
    }
    u16::try_from(port).ok().filter(|&p| p != 0)
}

/// The refusal of a URL with user info, saying where credentials go instead.
pub(crate) fn credentials_in_url(field: &str, instead: &str) -> ApplyError {
    ApplyError::invalid(field, format!("must not carry credentials (user:password@host); {instead}, not in the URL"))
}

pub(crate) fn targets(targets: &[Target]) -> Result<(), ApplyError> {
    if targets.is_empty() {
        return Err(ApplyError::invalid("targets", "a service needs at least one upstream target (host:port)"));
    }
    if targets.len() > MAX_TARGETS {
        return Err(ApplyError::invalid("targets", format!("at most {MAX_TARGETS} targets")));
    }
    for (i, t) in targets.iter().enumerate() {
        hostname(&format!("targets[{i}].host"), &t.host)?;
        if t.port == 0 || t.port > u32::from(u16::MAX) {
            return Err(ApplyError::invalid(format!("targets[{i}].port"), "must be 1..=65535"));
        }
        if t.weight > MAX_WEIGHT {
            return Err(ApplyError::invalid(format!("targets[{i}].weight"), format!("must be at most {MAX_WEIGHT}")));
        }
    }
    Ok(())
}

pub(crate) fn route_hosts(hosts: &[String]) -> Result<(), ApplyError> {
    if hosts.len() > MAX_ROUTE_HOSTS {
        return Err(ApplyError::invalid("hosts", format!("at most {MAX_ROUTE_HOSTS} hosts")));
    }
    for (i, host) in hosts.iter().enumerate() {
        let bare = host.strip_prefix("*.").unwrap_or(host);
        hostname(&format!("hosts[{i}]"), bare)?;
        if bare.parse::<std::net::IpAddr>().is_ok() && bare.len() != host.len() {
            return Err(ApplyError::invalid(format!("hosts[{i}]"), "a wildcard cannot prefix an IP address"));
        }
    }
    Ok(())
}

pub(crate) fn methods(methods: &[String]) -> Result<(), ApplyError> {
    for (i, m) in methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            return Err(ApplyError::invalid(
                format!("methods[{i}]"),
                format!("{m:?} is not one of {}", METHODS.join(", ")),
            ));
        }
    }
    Ok(())
}

pub(crate) fn route_paths(paths: &[RoutePath]) -> Result<(), ApplyError> {
    if paths.is_empty() {
        return Err(ApplyError::invalid("paths", "a route needs at least one path, e.g. prefix \"/\""));
    }
    if paths.len() > MAX_ROUTE_PATHS {
        return Err(ApplyError::invalid("paths", format!("at most {MAX_ROUTE_PATHS} paths")));
    }
    for (i, p) in paths.iter().enumerate() {
        let field = format!("paths[{i}]");
        if !p.path.starts_with('/') {
            return Err(ApplyError::invalid(field, format!("{:?} must start with '/'", p.path)));
        }
        if p.path.len() > MAX_PATH_LEN {
            return Err(ApplyError::invalid(field, format!("must be at most {MAX_PATH_LEN} bytes")));
        }
        if p.path.chars().any(|c| c.is_ascii_control() || c == ' ' || c == '?' || c == '#') {
            return Err(ApplyError::invalid(field, "must not contain spaces, control characters, '?' or '#'"));
        }
        match PathMatch::try_from(p.kind) {
            Ok(PathMatch::Prefix | PathMatch::Exact) => {
                if p.path.contains('{') || p.path.contains('}') {
                    return Err(ApplyError::invalid(field, "'{' and '}' are only allowed in template paths"));
                }
            }
            Ok(PathMatch::Template) => template(&field, &p.path)?,
            _ => return Err(ApplyError::invalid(field, "kind must be prefix, exact or template")),
        }
    }
    Ok(())
}

fn template(field: &str, path: &str) -> Result<(), ApplyError> {
    let mut seen = HashSet::new();
    for segment in path.split('/').skip(1) {
        if segment.contains('{') || segment.contains('}') {
            let param = segment
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .ok_or_else(|| {
                    ApplyError::invalid(field, format!("segment {segment:?} must be a literal or a whole {{param}}"))
                })?;
            if !seen.insert(param) {
                return Err(ApplyError::invalid(field, format!("parameter {param:?} appears twice")));
            }
        }
    }
    Ok(())
}

pub(crate) fn auth(mode: i32) -> Result<(), ApplyError> {
    match AuthMode::try_from(mode) {
        Ok(AuthMode::None | AuthMode::ApiKey | AuthMode::Jwt | AuthMode::ApiKeyOrJwt) => Ok(()),
        _ => Err(ApplyError::invalid("auth", "must be none, api-key, jwt or api-key-or-jwt")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_alphabet() {
        assert!(name("name", "orders-v2.internal_1").is_ok());
        for bad in ["", "-lead", "has space", "ünï", &"x".repeat(65)] {
            assert!(name("name", bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn a_port_is_decimal_digits_from_1_to_65535() {
        for (written, port) in [("80", Some(80)), ("65535", Some(65535)), ("000443", Some(443)), ("1", Some(1))] {
            assert_eq!(port_number(written.as_bytes()), port, "{written:?}");
        }
        for bad in ["", "0", "00", "65536", "99999999999999999999", "+80", "-1", " 80", "8 0", "８０", "0x50"] {
            assert_eq!(port_number(bad.as_bytes()), None, "{bad:?} is not a port");
        }
        assert_eq!(written_port("api.example.com:8443"), Some("8443"));
        assert_eq!(written_port("api.example.com"), None);
        assert_eq!(written_port("[::1]:80"), Some("80"));
        assert_eq!(written_port("[::1]"), None, "the colons of an IPv6 address are not a port");
        assert_eq!(written_port("user:secret@[::1]"), None, "nor is the colon of user information");
        assert_eq!(written_port("user:secret@host:81"), Some("81"));
        assert_eq!(written_port("host:"), Some(""), "an empty port is written, and not a port");
    }

    #[test]
    fn urls_need_a_host_and_never_carry_credentials() {
        let check = |url: &str| http_url("base_url", url, "put credentials in the provider's key or headers");
        assert!(check("https://api.openai.com/v1").is_ok());
        assert!(check("http://127.0.0.1:11434/v1").is_ok());
        assert!(check("https://host/path@with-at-in-path").is_ok(), "an @ after the host is part of the path");
        for bad in ["ftp://x", "https://", "https:///v1", "https://:443/", "https://a b", "api.openai.com"] {
            assert!(check(bad).is_err(), "{bad:?} should be rejected");
        }
        for credentialed in
            ["https://user:password@api.example.com/v1", "http://token@host", "https://u:p@host?x", "https://u@h\\x"]
        {
            let error = check(credentialed).unwrap_err().to_string();
            assert!(error.contains("must not carry credentials"), "{credentialed:?}: {error}");
            assert!(error.contains("put credentials in the provider's key or headers, not in the URL"), "{error}");
        }
    }

    #[test]
    fn hosts_reject_malformed_names_and_accept_ips_and_wildcards() {
        assert!(route_hosts(&["api.example.com".into(), "*.example.com".into(), "10.0.0.1".into()]).is_ok());
        for bad in ["exa mple.com", "Example.com", "a..b", "-a.com", "*.10.0.0.1", "*."] {
            assert!(route_hosts(&[bad.to_string()]).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn templates_need_whole_segment_params() {
        let path = |kind: PathMatch, p: &str| RoutePath { kind: kind as i32, path: p.into() };
        assert!(route_paths(&[path(PathMatch::Template, "/users/{id}/orders/{order_id}")]).is_ok());
        assert!(route_paths(&[path(PathMatch::Template, "/users/x{id}")]).is_err());
        assert!(route_paths(&[path(PathMatch::Template, "/a/{id}/{id}")]).is_err());
        assert!(route_paths(&[path(PathMatch::Prefix, "/a/{id}")]).is_err());
        assert!(route_paths(&[path(PathMatch::Unspecified, "/a")]).is_err());
        assert!(route_paths(&[path(PathMatch::Prefix, "no-slash")]).is_err());
        assert!(route_paths(&[]).is_err());
    }
}
