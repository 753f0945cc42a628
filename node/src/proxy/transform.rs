//! Request and response transforms: path rewrite and header add/set/remove,
//! compiled to header names and values once per state change.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use tollgate_proto::config::v1::HeaderTransform;

#[derive(Debug, Default)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Names and values were validated by `apply`; anything else is skipped.
    /// Framing, connection and Host headers are the proxy's own: admission
    /// refuses them, and one an earlier version stored is not sent.
    pub fn compile(t: Option<&HeaderTransform>) -> Option<HeaderOps> {
        let t = t?;
        let managed = |name: &str| {
            let managed = tollgate_raft::is_framing_header(name);
            if managed {
                tracing::warn!(header = %name, "a route's header transform names a header the proxy manages; not applied");
            }
            managed
        };
        let pair = |p: &tollgate_proto::config::v1::HeaderPair| {
            if managed(&p.name) {
                return None;
            }
            Some((HeaderName::from_bytes(p.name.as_bytes()).ok()?, HeaderValue::from_str(&p.value).ok()?))
        };
        let ops = HeaderOps {
            remove: t
                .remove
                .iter()
                .filter(|n| !managed(n))
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: t.set.iter().filter_map(pair).collect(),
            add: t.add.iter().filter_map(pair).collect(),
        };
        (!(ops.remove.is_empty() && ops.set.is_empty() && ops.add.is_empty())).then_some(ops)
    }

    /// Remove, then set, then add, so a route can replace a header by removing and adding it.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A path rewrite, split into literal text and template parameters.
#[derive(Debug)]
pub struct Rewrite {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Literal(String),
    Param(String),
}

impl Rewrite {
    pub fn compile(template: &str) -> Option<Rewrite> {
        if template.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            let Some(end) = rest[start..].find('}') else { break };
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            parts.push(Part::Param(rest[start + 1..start + end].to_string()));
            rest = &rest[start + end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Some(Rewrite { parts })
    }

    /// The new path. For a prefix route, `remainder` is what followed the
    /// matched prefix and is appended; `param` looks template parameters up.
    pub fn render<'a>(&self, remainder: Option<&str>, param: impl Fn(&str) -> Option<&'a str>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Param(name) => out.push_str(param(name).unwrap_or("")),
            }
        }
        if let Some(rest) = remainder.filter(|r| !r.is_empty()) {
            if out.ends_with('/') && rest.starts_with('/') {
                out.push_str(&rest[1..]);
            } else {
                if !out.ends_with('/') && !rest.starts_with('/') {
                    out.push('/');
                }
                out.push_str(rest);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::config::v1::HeaderPair;

    use super::*;

    #[test]
    fn header_ops_remove_then_set_then_add() {
        let pair = |n: &str, v: &str| HeaderPair { name: n.into(), value: v.into() };
        let t = HeaderTransform {
            add: vec![pair("x-tag", "b")],
            set: vec![pair("x-env", "prod")],
            remove: vec!["x-secret".into()],
        };
        let ops = HeaderOps::compile(Some(&t)).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert("x-env", HeaderValue::from_static("dev"));
        h.insert("x-tag", HeaderValue::from_static("a"));
        ops.apply(&mut h);
        assert!(!h.contains_key("x-secret"));
        assert_eq!(h["x-env"], "prod");
        assert_eq!(h.get_all("x-tag").iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn stored_transforms_of_headers_the_proxy_manages_are_not_applied() {
        let pair = |n: &str, v: &str| HeaderPair { name: n.into(), value: v.into() };
        let t = HeaderTransform {
            add: vec![pair("trailer", "x"), pair("x-tag", "b")],
            set: vec![pair("keep-alive", "timeout=1"), pair("proxy-connection", "close")],
            remove: vec!["Trailer".into(), "x-old".into()],
        };
        let ops = HeaderOps::compile(Some(&t)).unwrap();
        let mut h = HeaderMap::new();
        h.insert("trailer", HeaderValue::from_static("x-checksum"));
        h.insert("x-old", HeaderValue::from_static("1"));
        ops.apply(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["trailer", "x-tag"], "the managed header is neither set nor removed by the route");
        let only_managed = HeaderTransform { set: vec![pair("keep-alive", "timeout=1")], ..Default::default() };
        assert!(HeaderOps::compile(Some(&only_managed)).is_none());
    }

    #[test]
    fn rewrite_renders_params_and_keeps_the_remainder() {
        let r = Rewrite::compile("/v2/people/{id}").unwrap();
        assert_eq!(r.render(None, |n| (n == "id").then_some("42")), "/v2/people/42");
        let r = Rewrite::compile("/internal").unwrap();
        assert_eq!(r.render(Some("/orders/7"), |_| None), "/internal/orders/7");
        let r = Rewrite::compile("/").unwrap();
        assert_eq!(r.render(Some("/orders"), |_| None), "/orders");
    }
}
