//! One normalisation of the request path, done once in the match phase, so
//! that the path a route is matched against is the path its upstream receives
//! (DESIGN §2, §8: "a request never leaves the route that authorized it").
//!
//! What it does, as Envoy's `normalize_path` + `merge_slashes` +
//! `path_with_escaped_slashes_action` and nginx's URI parser do:
//! - percent-escapes of unreserved characters (RFC 3986 §2.3) are decoded,
//!   so `%2e%2E` is `..` and `%41` is `A`; every other escape is kept, with
//!   upper-case hex (§6.2.2.1); a malformed escape (`%zz`, `%4`) is refused;
//! - dot segments are removed (§5.2.4), so `/pub/../admin` is `/admin`;
//! - `//` is merged, refused or kept ([`SlashPolicy`]);
//! - an encoded `/` or `\` (`%2F`, `%5C`) is refused, kept or decoded
//!   ([`EscapedSeparatorPolicy`]); a raw `\` is refused unless decoding is on
//!   (some servers treat it as `/`); an encoded NUL is always refused, as
//!   nginx does;
//! - a dot segment carrying `;` parameters (`..;`), which Tomcat and Jetty
//!   resolve as `..`, is refused.
//!
//! The query is not touched. Most paths need none of this: one scan finds
//! nothing to do and the path is used as it arrived.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// What to do with an empty segment (`//`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlashPolicy {
    /// Merge into one `/`, as nginx's `merge_slashes on` (its default) does.
    #[default]
    Merge,
    /// Answer 400.
    Reject,
    /// Leave the empty segment in place.
    Keep,
}

/// What to do with `%2F` and `%5C` (and a raw `\`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSeparatorPolicy {
    /// Answer 400: what Envoy recommends for a proxy in front of servers that
    /// decode them (`REJECT_REQUEST`).
    #[default]
    Reject,
    /// Forward them still encoded, as data inside a segment. A segment they
    /// would split into a dot segment is still refused, and a template
    /// parameter never matches one.
    Keep,
    /// Decode both (and a raw `\`) to `/` before dot segments are removed
    /// (Envoy's `UNESCAPE_AND_FORWARD`).
    Decode,
}

/// The configured policies for the proxy listener (`[proxy]` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathPolicy {
    pub slashes: SlashPolicy,
    pub escaped_separators: EscapedSeparatorPolicy,
}

/// Why a path was refused; each message says what the client should send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request path has a malformed percent-escape; '%' must be followed by two hex digits")]
    BadEscape,
    #[error("the request path contains an encoded NUL (%00), which is never allowed")]
    EncodedNul,
    #[error("the request path contains an encoded '/' or '\\' (%2F, %5C); send the separator unencoded")]
    EncodedSeparator,
    #[error("the request path contains a '\\'; use '/' to separate segments")]
    Backslash,
    #[error("the request path contains an empty segment ('//'), which this gateway refuses")]
    EmptySegment,
    #[error("the request path contains a dot segment with parameters ('..;' or '.;'), which this gateway refuses")]
    DotSegmentWithParams,
}

/// The path every later phase uses, or why the request is refused.
pub fn normalize(path: &str, policy: PathPolicy) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        // `OPTIONS *` (RFC 9112 §3.2.4): no path to normalise, and no route matches it.
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, policy.escaped_separators)?;
    let resolved = resolve(&decoded, policy)?;
    Ok(if resolved == path { Cow::Borrowed(path) } else { Cow::Owned(resolved) })
}

/// Whether the path may change: an escape, a backslash, a `//` or a segment
/// that starts with a dot. False for nearly every real request.
fn needs_work(path: &[u8]) -> bool {
    let mut previous = 0u8;
    for &b in path {
        if b == b'%' || b == b'\\' || (previous == b'/' && (b == b'/' || b == b'.')) {
            return true;
        }
        previous = b;
    }
    false
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the escapes of unreserved characters (and of separators when
/// asked to), upper-cases the rest, and applies the backslash rule.
fn decode(path: &str, separators: EscapedSeparatorPolicy) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) =
                    (bytes.get(i + 1).copied().and_then(hex_value), bytes.get(i + 2).copied().and_then(hex_value))
                else {
                    return Err(PathError::BadEscape);
                };
                let value = hi << 4 | lo;
                match value {
                    0 => return Err(PathError::EncodedNul),
                    b'/' | b'\\' => match separators {
                        EscapedSeparatorPolicy::Reject => return Err(PathError::EncodedSeparator),
                        EscapedSeparatorPolicy::Decode => out.push('/'),
                        EscapedSeparatorPolicy::Keep => push_escape(&mut out, hi, lo),
                    },
                    v if is_unreserved(v) => out.push(char::from(v)),
                    _ => push_escape(&mut out, hi, lo),
                }
                i += 3;
            }
            b'\\' => {
                if separators != EscapedSeparatorPolicy::Decode {
                    return Err(PathError::Backslash);
                }
                out.push('/');
                i += 1;
            }
            _ => {
                // Everything else is ASCII already (hyper accepts only visible
                // ASCII in a request target); copy runs of it at once.
                let run = bytes[i..].iter().position(|c| matches!(c, b'%' | b'\\')).unwrap_or(bytes.len() - i);
                out.push_str(&path[i..i + run]);
                i += run;
            }
        }
    }
    Ok(out)
}

/// Appends `%XY` with upper-case hex digits (RFC 3986 §6.2.2.1).
fn push_escape(out: &mut String, hi: u8, lo: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(hi)]));
    out.push(char::from(HEX[usize::from(lo)]));
}

/// Removes dot segments (RFC 3986 §5.2.4) and applies the `//` policy.
/// `path` starts with '/'.
fn resolve(path: &str, policy: PathPolicy) -> Result<String, PathError> {
    let parts: Vec<&str> = path[1..].split('/').collect();
    let mut kept: Vec<&str> = Vec::with_capacity(parts.len());
    let mut trailing_slash = false;
    for (i, &segment) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                kept.pop();
                trailing_slash = true;
            }
            "" if last => trailing_slash = true,
            "" => match policy.slashes {
                SlashPolicy::Merge => {}
                SlashPolicy::Reject => return Err(PathError::EmptySegment),
                SlashPolicy::Keep => kept.push(""),
            },
            _ => {
                check_segment(segment)?;
                kept.push(segment);
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Refuses segments that some server would still read as a dot segment:
/// `..;x` (Tomcat, Jetty) and, with separators kept encoded, `..%2F`. (An
/// encoded separator at either end is left to `routing_view`.)
fn check_segment(segment: &str) -> Result<(), PathError> {
    let is_dots = |s: &str| s == "." || s == "..";
    if let Some((head, _)) = segment.split_once(';')
        && is_dots(head)
    {
        return Err(PathError::DotSegmentWithParams);
    }
    if segment.contains('%') {
        let upper = segment.to_ascii_uppercase();
        if upper.contains("%2F") || upper.contains("%5C") {
            let mut pieces = upper.split("%2F").flat_map(|p| p.split("%5C"));
            if pieces.any(|p| is_dots(p.split(';').next().unwrap_or(p))) {
                return Err(PathError::EncodedSeparator);
            }
        }
    }
    Ok(())
}

/// `path` with the request's `query` appended, as the request target the
/// upstream receives (an already-normalised or rewritten path).
pub fn with_query(path: String, query: Option<&str>) -> Result<http::uri::PathAndQuery, http::uri::InvalidUri> {
    let path_and_query = match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    http::uri::PathAndQuery::try_from(path_and_query)
}

/// The path as routes see it: segment names without `;parameters` (servlet
/// containers drop them, so `/admin;x/y` is read as `/admin/y`), separators
/// kept encoded under `EscapedSeparatorPolicy::Keep` counted as separators,
/// and empty segments kept under `SlashPolicy::Keep` merged. However an
/// upstream reads the forwarded path, the route chosen covers it. Borrowed
/// (nothing to do) for nearly every path.
pub fn routing_view(path: &str) -> Cow<'_, str> {
    // One pass decides; nearly every path has none of these.
    let bytes = path.as_bytes();
    let mut encoded_separator = false;
    let mut changes = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b';' => changes = true,
            b'/' if bytes.get(i + 1) == Some(&b'/') => changes = true,
            b'%' if matches!(bytes.get(i + 1..i + 3), Some(b"2F" | b"5C")) => encoded_separator = true,
            _ => {}
        }
    }
    if !changes && !encoded_separator {
        return Cow::Borrowed(path);
    }
    let decoded = if encoded_separator { path.replace("%2F", "/").replace("%5C", "/") } else { path.to_string() };
    let pieces: Vec<&str> = decoded.split('/').map(|s| s.split_once(';').map_or(s, |(name, _)| name)).collect();
    let mut out = String::with_capacity(decoded.len());
    for piece in pieces.iter().filter(|p| !p.is_empty()) {
        out.push('/');
        out.push_str(piece);
    }
    if out.is_empty() || pieces.last().is_some_and(|p| p.is_empty()) {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Whether a template parameter's value is safe to put in a rewritten path:
/// one whole segment, never a dot segment nor an encoded separator or NUL.
pub fn is_safe_param(value: &str) -> bool {
    if value.is_empty() || value == "." || value == ".." || value.contains(['/', '\\']) {
        return false;
    }
    let bytes = value.as_bytes();
    !bytes.windows(3).any(|w| {
        w[0] == b'%'
            && matches!((w[1], w[2].to_ascii_uppercase()), (b'2', b'F') | (b'5', b'C') | (b'0', b'0') | (b'2', b'E'))
    })
}

impl From<PathError> for crate::plumbing::GatewayError {
    fn from(error: PathError) -> Self {
        crate::plumbing::GatewayError::InvalidPath(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, PathPolicy::default()).map(Cow::into_owned)
    }

    fn norm_with(path: &str, slashes: SlashPolicy, escaped: EscapedSeparatorPolicy) -> Result<String, PathError> {
        normalize(path, PathPolicy { slashes, escaped_separators: escaped }).map(Cow::into_owned)
    }

    #[test]
    fn ordinary_paths_are_borrowed_unchanged() {
        for path in ["/", "/pub/a.txt", "/v1/chat/completions", "/a-b_c~d/e.f", "/.well-known/x"] {
            let out = normalize(path, PathPolicy::default()).unwrap();
            assert_eq!(out, path);
            assert!(matches!(out, Cow::Borrowed(_)), "{path} should not be copied");
        }
    }

    #[test]
    fn dot_segments_are_removed_as_rfc3986_says() {
        // RFC 3986 §5.2.4's own examples, and the cases of the issue.
        assert_eq!(norm("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(norm("/mid/content=5/../6").unwrap(), "/mid/6");
        assert_eq!(norm("/pub/../admin/secret.txt").unwrap(), "/admin/secret.txt");
        assert_eq!(norm("/pub/%2e%2e/admin/secret.txt").unwrap(), "/admin/secret.txt");
        assert_eq!(norm("/pub/%2E%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/pub/.%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/.").unwrap(), "/");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("/a/...").unwrap(), "/a/...", "three dots are a name");
        assert_eq!(norm("/a/.b").unwrap(), "/a/.b");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(norm("/%41%62c").unwrap(), "/Abc");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/a%7e").unwrap(), "/a~");
        assert_eq!(norm("/x%3f").unwrap(), "/x%3F", "an encoded '?' stays data");
    }

    #[test]
    fn malformed_escapes_nul_and_separators_are_refused_by_default() {
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%4"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%00b"), Err(PathError::EncodedNul));
        assert_eq!(norm("/t/..%2f..%2fadmin%2fsecret.txt"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/t/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/t/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/pub\\..\\admin"), Err(PathError::Backslash));
        assert_eq!(norm("pub"), Err(PathError::NotAbsolute));
        assert_eq!(norm("/pub/..;/admin"), Err(PathError::DotSegmentWithParams));
        assert_eq!(norm("/pub/.;x/admin"), Err(PathError::DotSegmentWithParams));
        assert_eq!(norm("/pub/a;b/c").unwrap(), "/pub/a;b/c", "parameters on a name are data");
    }

    #[test]
    fn slash_policies() {
        assert_eq!(norm("//pub//a//").unwrap(), "/pub/a/");
        assert_eq!(
            norm_with("/a//b", SlashPolicy::Reject, EscapedSeparatorPolicy::Reject),
            Err(PathError::EmptySegment)
        );
        assert_eq!(norm_with("/a/", SlashPolicy::Reject, EscapedSeparatorPolicy::Reject).unwrap(), "/a/");
        assert_eq!(norm_with("/a//b", SlashPolicy::Keep, EscapedSeparatorPolicy::Reject).unwrap(), "/a//b");
    }

    #[test]
    fn separator_policies() {
        let keep = |p| norm_with(p, SlashPolicy::Merge, EscapedSeparatorPolicy::Keep);
        let decode = |p| norm_with(p, SlashPolicy::Merge, EscapedSeparatorPolicy::Decode);
        assert_eq!(keep("/files/a%2fb").unwrap(), "/files/a%2Fb");
        assert_eq!(keep("/t/..%2f..%2fadmin"), Err(PathError::EncodedSeparator), "still a dot segment upstream");
        assert_eq!(keep("/t/x%5C..").unwrap_err(), PathError::EncodedSeparator);
        assert_eq!(keep("/t/\\"), Err(PathError::Backslash));
        assert_eq!(decode("/t/..%2f..%2fadmin%2fsecret.txt").unwrap(), "/admin/secret.txt");
        assert_eq!(decode("/pub\\..\\admin").unwrap(), "/admin");
        assert_eq!(decode("/a%00"), Err(PathError::EncodedNul), "NUL is refused under every policy");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for path in ["/pub/../admin/", "/%7Ea/./b//c/..", "/caf%c3%a9/%2e/x"] {
            let once = norm(path).unwrap();
            assert_eq!(norm(&once).unwrap(), once);
        }
    }

    #[test]
    fn routes_see_parameters_dropped_and_kept_separators_as_separators() {
        assert_eq!(routing_view("/admin;x/secret.txt"), "/admin/secret.txt");
        assert_eq!(routing_view("/a;v=1/b;c/"), "/a/b/");
        assert_eq!(routing_view("/admin%2Fx"), "/admin/x");
        assert_eq!(routing_view("//admin//x"), "/admin/x");
        assert_eq!(routing_view("/;x"), "/");
        assert!(matches!(routing_view("/plain/path%20x"), Cow::Borrowed(_)));
    }

    #[test]
    fn template_parameters_are_single_plain_segments() {
        assert!(is_safe_param("42"));
        assert!(is_safe_param("caf%C3%A9"));
        for bad in ["", ".", "..", "a/b", "a\\b", "..%2f..%2fadmin", "a%2Fb", "a%5cb", "%2e%2e", "a%00"] {
            assert!(!is_safe_param(bad), "{bad}");
        }
    }
}
