//! A service's API versions as the data plane reads them (DESIGN §7): how a
//! request names a version (path segment, header, default), and what each
//! lifecycle state means for it, compiled once per routing rebuild.
//!
//! - draft: not routable; only a key marked `preview` reaches it (checked
//!   in `authorize`, once the key is known), anyone else gets the 404 of a
//!   version that does not exist.
//! - deprecated: served, with `Deprecation` (RFC 9745), `Sunset` (RFC 8594)
//!   and `Link: <…>; rel="successor-version"` (RFC 5829) on the response.
//! - retired: 410, with a JSON body naming the successor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use tollgate_proto::config::v1::{ApiVersion, VersionState, Versioning};

pub struct CompiledVersions {
    /// The request header that names a version, if any.
    pub header: Option<HeaderName>,
    /// Whether the first path segment after the route's prefix may name one.
    pub by_path: bool,
    /// Served when the request names none; None: the request must name one.
    pub default: Option<Arc<CompiledVersion>>,
    pub by_name: HashMap<String, Arc<CompiledVersion>>,
}

pub struct CompiledVersion {
    pub name: String,
    /// The name as the version header's value sent upstream.
    pub header_value: Option<HeaderValue>,
    pub state: VersionState,
    pub successor: Option<String>,
    /// `Deprecation: @<seconds>` for a deprecated version.
    pub deprecation: Option<HeaderValue>,
    /// `Sunset: <HTTP-date>` when the version says when it ends.
    pub sunset: Option<HeaderValue>,
}

/// Why a request reached no version it may use.
#[derive(Debug)]
pub enum VersionRefusal {
    /// Named a version that does not exist (or is a draft), or named none
    /// where there is no default.
    NotFound(String),
    Retired {
        version: String,
        successor: Option<String>,
    },
    /// The version header was sent more than once: which one an upstream
    /// would read is its own choice, so the gateway picks none.
    Ambiguous(String),
}

impl CompiledVersions {
    /// The service's versions, or None when it has no versioning (every
    /// request is served as before versions existed).
    pub fn compile(versioning: Option<&Versioning>, versions: &[&ApiVersion]) -> Option<Arc<CompiledVersions>> {
        let versioning = versioning?;
        let by_name: HashMap<String, Arc<CompiledVersion>> =
            versions.iter().map(|v| (v.version.clone(), Arc::new(CompiledVersion::compile(v)))).collect();
        Some(Arc::new(CompiledVersions {
            header: Some(versioning.header.as_str())
                .filter(|h| !h.is_empty())
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            by_path: versioning.by_path,
            default: by_name.get(&versioning.default_version).cloned(),
            by_name,
        }))
    }

    /// The version a request asks for: the path segment (already looked up
    /// by `route_match`), else the header, else the default.
    pub fn select(
        &self,
        from_path: Option<Arc<CompiledVersion>>,
        headers: &http::HeaderMap,
    ) -> Result<Arc<CompiledVersion>, VersionRefusal> {
        if let Some(version) = from_path {
            return Ok(version);
        }
        if let Some(name) = &self.header
            && let Some(value) = headers.get(name)
        {
            if headers.get_all(name).iter().nth(1).is_some() {
                return Err(VersionRefusal::Ambiguous(format!("send the {name} header once")));
            }
            let wanted = value.to_str().unwrap_or("").trim();
            return self.by_name.get(wanted).cloned().ok_or_else(|| self.unknown(wanted));
        }
        self.default.clone().ok_or_else(|| {
            VersionRefusal::NotFound(match &self.header {
                Some(header) => format!("name the API version in the {header} header{}", self.path_hint()),
                None => "name the API version in the path".to_string(),
            })
        })
    }

    /// A version named by `segment`, if it is one of the service's.
    pub fn named(&self, segment: &str) -> Option<Arc<CompiledVersion>> {
        self.by_name.get(segment).cloned()
    }

    fn unknown(&self, wanted: &str) -> VersionRefusal {
        let shown: String = wanted.chars().take(64).filter(|c| !c.is_control()).collect();
        VersionRefusal::NotFound(format!("API version {shown:?} does not exist"))
    }

    fn path_hint(&self) -> &'static str {
        if self.by_path { " or in the path" } else { "" }
    }
}

impl CompiledVersion {
    fn compile(v: &ApiVersion) -> CompiledVersion {
        let state = VersionState::try_from(v.state).unwrap_or(VersionState::Unspecified);
        let deprecated = state == VersionState::Deprecated;
        CompiledVersion {
            name: v.version.clone(),
            header_value: HeaderValue::from_str(&v.version).ok(),
            state,
            successor: Some(v.successor.clone()).filter(|s| !s.is_empty()),
            deprecation: deprecated.then(|| structured_date(v.deprecated_at_ms)),
            sunset: (deprecated && v.sunset_at_ms > 0).then(|| http_date(v.sunset_at_ms)).flatten(),
        }
    }

    /// Whether requests are refused, and how.
    pub fn refusal(&self) -> Option<VersionRefusal> {
        match self.state {
            VersionState::Retired => {
                Some(VersionRefusal::Retired { version: self.name.clone(), successor: self.successor.clone() })
            }
            VersionState::Unspecified => {
                Some(VersionRefusal::NotFound(format!("API version {:?} does not exist", self.name)))
            }
            VersionState::Draft | VersionState::Published | VersionState::Deprecated => None,
        }
    }

    pub fn is_draft(&self) -> bool {
        self.state == VersionState::Draft
    }

    /// The headers of a deprecated version's responses; `path` is the
    /// request's, with `segment` the byte range of the version in it when
    /// the path named it.
    pub fn deprecation_headers(&self, path: &str, segment: Option<(usize, usize)>) -> Vec<(HeaderName, HeaderValue)> {
        let Some(deprecation) = &self.deprecation else { return Vec::new() };
        let mut headers = vec![(HeaderName::from_static("deprecation"), deprecation.clone())];
        if let Some(sunset) = &self.sunset {
            headers.push((HeaderName::from_static("sunset"), sunset.clone()));
        }
        // The path is the client's: one that could close the <…> or quote
        // gets no Link rather than a header it could shape.
        if let Some(successor) = self.successor.as_ref().filter(|_| !path.contains(['<', '>', '"'])) {
            let link = match segment {
                Some((start, end)) => {
                    format!("<{}{successor}{}>; rel=\"successor-version\"", &path[..start], &path[end..])
                }
                None => format!("<{path}>; rel=\"successor-version\"; title=\"{successor}\""),
            };
            if let Ok(value) = HeaderValue::from_str(&link) {
                headers.push((http::header::LINK, value));
            }
        }
        headers
    }
}

/// RFC 9651 Date, as RFC 9745's `Deprecation` wants it: `@<unix seconds>`.
fn structured_date(ms: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("@{}", ms.div_euclid(1000))).expect("digits are a valid header value")
}

/// An IMF-fixdate, as RFC 8594's `Sunset` wants it.
fn http_date(ms: i64) -> Option<HeaderValue> {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).ok()?);
    HeaderValue::from_str(&httpdate::fmt_http_date(time)).ok()
}

/// The first segment of `remainder` (the path after the route's prefix) as
/// a byte range of `path`, given where `remainder` starts in it.
pub fn first_segment(path: &str, remainder_start: usize) -> Option<(usize, usize)> {
    let rest = path.get(remainder_start..)?;
    let skip = usize::from(rest.starts_with('/'));
    let start = remainder_start + skip;
    let len = path[start..].find('/').unwrap_or(path.len() - start);
    (len > 0).then_some((start, start + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_segment_is_the_first_after_the_prefix() {
        assert_eq!(first_segment("/orders/v2/items", 7), Some((8, 10)));
        assert_eq!(first_segment("/v2", 0), Some((1, 3)));
        assert_eq!(first_segment("/orders", 7), None);
        assert_eq!(first_segment("/orders/", 7), None);
    }

    #[test]
    fn deprecated_versions_carry_rfc_headers() {
        let v = ApiVersion {
            version: "v1".into(),
            state: VersionState::Deprecated as i32,
            successor: "v2".into(),
            deprecated_at_ms: 1_688_169_599_000,
            sunset_at_ms: 1_735_689_599_000,
            ..Default::default()
        };
        let compiled = CompiledVersion::compile(&v);
        let headers = compiled.deprecation_headers("/orders/v1/items", Some((8, 10)));
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.to_str().unwrap().to_string());
        assert_eq!(get("deprecation").as_deref(), Some("@1688169599"));
        assert_eq!(get("sunset").as_deref(), Some("Tue, 31 Dec 2024 23:59:59 GMT"));
        assert_eq!(get("link").as_deref(), Some("</orders/v2/items>; rel=\"successor-version\""));
        let by_header = compiled.deprecation_headers("/orders/items", None);
        assert!(
            by_header
                .iter()
                .any(|(k, v)| k == "link" && v == "</orders/items>; rel=\"successor-version\"; title=\"v2\"")
        );
    }
}
