//! Route matching (DESIGN §2, phase "match").
//!
//! Every (route, host pattern, path) combination becomes one entry with a
//! precomputed specificity; entries are sorted once per state change, so a
//! request takes the first entry that matches. Specificity, most significant
//! first: exact host > wildcard host (longer suffix first) > any host; exact
//! path > template > prefix; longer path; route restricted to methods > any
//! method; then the route's priority; then its name, so the order is total.

use std::cmp::Reverse;

use http::Method;
use tollgate_proto::config::v1::{PathMatch, Route};

/// Generic over what a match yields, so the proxy can attach its compiled
/// per-route policies while the tests use plain routes.
#[derive(Debug)]
pub struct Router<T> {
    entries: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    route: T,
    host: HostPattern,
    path: PathPattern,
    methods: Vec<Method>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// Stored as ".example.com" for "*.example.com".
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    Exact(String),
    Template(Vec<Segment>),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// The outcome of matching: which route, and what the prefix matched (for strip-prefix).
#[derive(Debug, Clone)]
pub struct Matched<'a, T> {
    pub route: &'a T,
    pub matched_prefix: Option<&'a str>,
    template: Option<&'a [Segment]>,
}

impl<T> Matched<'_, T> {
    /// The value of template parameter `name` in `path` (the path that matched).
    pub fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        let segments = self.template?;
        let i = segments.iter().position(|s| matches!(s, Segment::Param(p) if p == name))?;
        path.split('/').nth(i + 1)
    }
}

impl HostPattern {
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(h) => (2, h.len()),
            HostPattern::Suffix(s) => (1, s.len()),
            HostPattern::Any => (0, 0),
        }
    }

    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Exact(h), Some(host)) => h == host,
            (HostPattern::Suffix(s), Some(host)) => host.len() > s.len() && host.ends_with(s.as_str()),
            _ => false,
        }
    }
}

impl PathPattern {
    fn rank(&self) -> (u8, usize) {
        match self {
            PathPattern::Exact(p) => (3, p.len()),
            PathPattern::Template(segs) => (2, segs.len()),
            PathPattern::Prefix(p) => (1, p.len()),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            // One trailing slash is the same resource to many frameworks
            // (Spring before 6, Express by default), so it is this route's
            // too: no catch-all route may take `/billing/` past `/billing`.
            PathPattern::Exact(p) => {
                p == path || (!p.ends_with('/') && path.strip_suffix('/').is_some_and(|bare| bare == p))
            }
            PathPattern::Prefix(p) => {
                // "/api" matches "/api" and "/api/x", never "/apix".
                path.starts_with(p.as_str())
                    && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathPattern::Template(segments) => {
                let mut parts = path.split('/').skip(1);
                for segment in segments {
                    match (segment, parts.next()) {
                        (Segment::Literal(l), Some(part)) if l == part => {}
                        // A parameter is one plain segment: never a dot segment
                        // nor an encoded separator a rewrite could turn into one.
                        (Segment::Param(_), Some(part)) if super::path::is_safe_param(part) => {}
                        _ => return false,
                    }
                }
                // As for exact paths, one trailing slash still matches.
                matches!((parts.next(), parts.next()), (None, _) | (Some(""), None))
            }
        }
    }
}

impl<T: Clone> Router<T> {
    pub fn build<'a>(routes: impl IntoIterator<Item = (&'a Route, T)>) -> Router<T> {
        let mut entries = Vec::new();
        let mut names = Vec::new();
        for (route, payload) in routes {
            let hosts: Vec<HostPattern> = if route.hosts.is_empty() {
                vec![HostPattern::Any]
            } else {
                route
                    .hosts
                    .iter()
                    .map(|h| match h.strip_prefix('*') {
                        Some(suffix) => HostPattern::Suffix(suffix.to_string()),
                        None => HostPattern::Exact(h.clone()),
                    })
                    .collect()
            };
            let methods: Vec<Method> = route.methods.iter().filter_map(|m| m.parse().ok()).collect();
            for host in &hosts {
                for p in &route.paths {
                    // Configured paths are compared with normalised request
                    // paths, so they are normalised the same way.
                    let configured = super::path::normalize(&p.path, Default::default())
                        .map_or_else(|_| p.path.clone(), |c| c.into_owned());
                    let path = match PathMatch::try_from(p.kind) {
                        Ok(PathMatch::Exact) => PathPattern::Exact(configured),
                        Ok(PathMatch::Template) => PathPattern::Template(
                            p.path
                                .split('/')
                                .skip(1)
                                .map(|s| {
                                    if s.starts_with('{') {
                                        Segment::Param(s.trim_matches(|c| c == '{' || c == '}').to_string())
                                    } else {
                                        // Normalised as request paths are (`%c3` is `%C3`, `%41` is `A`).
                                        let literal = super::path::normalize(&format!("/{s}"), Default::default())
                                            .map_or_else(|_| s.to_string(), |n| n.trim_start_matches('/').to_string());
                                        Segment::Literal(literal)
                                    }
                                })
                                .collect(),
                        ),
                        _ => PathPattern::Prefix(configured),
                    };
                    names.push((route.priority, route.name.clone()));
                    entries.push((
                        names.len() - 1,
                        Entry { route: payload.clone(), host: host.clone(), path, methods: methods.clone() },
                    ));
                }
            }
        }
        entries.sort_by_key(|(n, e)| {
            (
                Reverse(e.host.rank()),
                Reverse(e.path.rank()),
                Reverse(!e.methods.is_empty()),
                Reverse(names[*n].0),
                names[*n].1.clone(),
            )
        });
        Router { entries: entries.into_iter().map(|(_, e)| e).collect() }
    }

    /// `host` must already be lower-cased and stripped of its port, and
    /// `path` normalised (`super::path::normalize`).
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<Matched<'_, T>> {
        self.entries
            .iter()
            .find(|e| {
                e.host.matches(host) && (e.methods.is_empty() || e.methods.contains(method)) && e.path.matches(path)
            })
            .map(|e| Matched {
                route: &e.route,
                matched_prefix: match &e.path {
                    PathPattern::Prefix(p) => Some(p.as_str()),
                    _ => None,
                },
                template: match &e.path {
                    PathPattern::Template(segments) => Some(segments.as_slice()),
                    _ => None,
                },
            })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tollgate_proto::config::v1::RoutePath;

    use super::*;

    fn route(name: &str, hosts: &[&str], methods: &[&str], paths: &[(PathMatch, &str)], priority: i32) -> Arc<Route> {
        Arc::new(Route {
            name: name.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|(k, p)| RoutePath { kind: *k as i32, path: p.to_string() }).collect(),
            priority,
            ..Default::default()
        })
    }

    fn build(routes: &[Arc<Route>]) -> Router<Arc<Route>> {
        Router::build(routes.iter().map(|r| (r.as_ref(), r.clone())))
    }

    fn find<'a>(router: &'a Router<Arc<Route>>, method: &str, host: Option<&str>, path: &str) -> Option<&'a str> {
        router.find(&method.parse().unwrap(), host, path).map(|m| m.route.name.as_str())
    }

    #[test]
    fn most_specific_path_wins_then_priority() {
        let routes = [
            route("root", &[], &[], &[(PathMatch::Prefix, "/")], 100),
            route("api", &[], &[], &[(PathMatch::Prefix, "/api")], 0),
            route("api-v1", &[], &[], &[(PathMatch::Prefix, "/api/v1")], 0),
            route("user", &[], &[], &[(PathMatch::Template, "/api/v1/users/{id}")], 0),
            route("me", &[], &[], &[(PathMatch::Exact, "/api/v1/users/me")], 0),
            route("hi", &[], &[], &[(PathMatch::Prefix, "/tie")], 5),
            route("lo", &[], &[], &[(PathMatch::Prefix, "/tie")], 1),
        ];
        let router = build(&routes);
        assert_eq!(find(&router, "GET", None, "/anything"), Some("root"));
        assert_eq!(find(&router, "GET", None, "/api"), Some("api"));
        assert_eq!(find(&router, "GET", None, "/apix"), Some("root"), "prefix stops at segment boundary");
        assert_eq!(find(&router, "GET", None, "/api/v1/orders"), Some("api-v1"));
        assert_eq!(find(&router, "GET", None, "/api/v1/users/42"), Some("user"));
        assert_eq!(find(&router, "GET", None, "/api/v1/users/me"), Some("me"));
        assert_eq!(find(&router, "GET", None, "/api/v1/users/42/x"), Some("api-v1"));
        assert_eq!(find(&router, "GET", None, "/api/v1/users/42/"), Some("user"), "a trailing slash stays");
        assert_eq!(find(&router, "GET", None, "/api/v1/users/me/"), Some("me"));
        let m = router.find(&Method::GET, None, "/api/v1/users/42").unwrap();
        assert_eq!(m.param("/api/v1/users/42", "id"), Some("42"));
        assert_eq!(m.param("/api/v1/users/42", "nope"), None);
        assert_eq!(find(&router, "GET", None, "/tie/x"), Some("hi"));
    }

    #[test]
    fn hosts_and_methods_narrow_the_match() {
        let routes = [
            route("any", &[], &[], &[(PathMatch::Prefix, "/")], 0),
            route("wild", &["*.example.com"], &[], &[(PathMatch::Prefix, "/")], 0),
            route("exact", &["api.example.com"], &[], &[(PathMatch::Prefix, "/")], 0),
            route("post-only", &[], &["POST"], &[(PathMatch::Prefix, "/")], 0),
        ];
        let router = build(&routes);
        assert_eq!(find(&router, "GET", Some("api.example.com"), "/"), Some("exact"));
        assert_eq!(find(&router, "GET", Some("www.example.com"), "/"), Some("wild"));
        assert_eq!(find(&router, "GET", Some("example.com"), "/"), Some("any"), "wildcard needs a subdomain");
        assert_eq!(find(&router, "POST", Some("other.org"), "/"), Some("post-only"));
        assert_eq!(find(&router, "GET", Some("other.org"), "/"), Some("any"));
    }

    #[test]
    fn no_match_is_none() {
        let routes = [route("api", &["a.com"], &["GET"], &[(PathMatch::Exact, "/x")], 0)];
        let router = build(&routes);
        assert_eq!(find(&router, "GET", Some("a.com"), "/y"), None);
        assert_eq!(find(&router, "PUT", Some("a.com"), "/x"), None);
        assert_eq!(find(&router, "GET", Some("b.com"), "/x"), None);
        assert_eq!(find(&router, "GET", None, "/x"), None);
    }
}
