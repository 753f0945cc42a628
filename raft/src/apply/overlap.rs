//! Whether two routes could match the same request, for the rule that an
//! operator's route may not overlap another team's (it could take requests
//! meant for it: the router picks the most specific match). Conservative:
//! what might overlap counts as overlapping, so that no request can change
//! hands between teams without an admin.

use tollgate_proto::config::v1::{PathMatch, Route, RoutePath};

pub(crate) fn routes_overlap(a: &Route, b: &Route) -> bool {
    methods_overlap(&a.methods, &b.methods)
        && lists_overlap(&a.hosts, &b.hosts, |x, y| hosts_overlap(x, y))
        && lists_overlap(&a.paths, &b.paths, paths_overlap)
}

/// An empty list matches everything.
fn lists_overlap<T>(a: &[T], b: &[T], overlap: impl Fn(&T, &T) -> bool) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|x| b.iter().any(|y| overlap(x, y)))
}

fn methods_overlap(a: &[String], b: &[String]) -> bool {
    lists_overlap(a, b, |x, y| x.eq_ignore_ascii_case(y))
}

fn hosts_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    match (a.strip_prefix("*."), b.strip_prefix("*.")) {
        (None, None) => a == b,
        (Some(suffix), None) => b.ends_with(&format!(".{suffix}")),
        (None, Some(suffix)) => a.ends_with(&format!(".{suffix}")),
        (Some(x), Some(y)) => x == y || x.ends_with(&format!(".{y}")) || y.ends_with(&format!(".{x}")),
    }
}

/// A path's literal start, and whether it matches only itself.
fn stem(path: &RoutePath) -> (&str, bool) {
    match PathMatch::try_from(path.kind).unwrap_or(PathMatch::Prefix) {
        PathMatch::Exact => (path.path.as_str(), true),
        PathMatch::Template => (path.path.split('{').next().unwrap_or(""), false),
        PathMatch::Prefix | PathMatch::Unspecified => (path.path.as_str(), false),
    }
}

fn paths_overlap(a: &RoutePath, b: &RoutePath) -> bool {
    let ((a, a_exact), (b, b_exact)) = (stem(a), stem(b));
    // An exact path also matches itself with a trailing slash.
    let trimmed = |p: &str, exact: bool| if exact { p.trim_end_matches('/').to_string() } else { p.to_string() };
    let (a, b) = (trimmed(a, a_exact), trimmed(b, b_exact));
    match (a_exact, b_exact) {
        (true, true) => a == b,
        (true, false) => a.starts_with(&b) || b.starts_with(&a),
        (false, true) => b.starts_with(&a) || a.starts_with(&b),
        (false, false) => a.starts_with(&b) || b.starts_with(&a),
    }
}

/// Whether a configured path is already what the router normalises it to
/// (no escapes, no empty, `.` or `..` segments), so that comparing the
/// strings compares what they match.
pub(crate) fn is_normal(path: &str) -> bool {
    !path.contains('%')
        && !path.contains("//")
        && !path.contains('\\')
        && path.split('/').skip(1).all(|segment| segment != "." && segment != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hosts: &[&str], methods: &[&str], paths: &[(PathMatch, &str)]) -> Route {
        Route {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            paths: paths.iter().map(|(k, p)| RoutePath { kind: *k as i32, path: p.to_string() }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn routes_that_could_take_each_others_requests_overlap() {
        use PathMatch::{Exact, Prefix, Template};
        let catch_all = route(&[], &[], &[(Prefix, "/")]);
        let login = route(&[], &[], &[(Exact, "/login")]);
        assert!(routes_overlap(&catch_all, &login), "the more specific route takes /login");
        let orders = route(&["api.example.com"], &[], &[(Prefix, "/orders")]);
        let users = route(&["api.example.com"], &[], &[(Template, "/users/{id}")]);
        assert!(!routes_overlap(&orders, &users));
        let wild = route(&["*.example.com"], &[], &[(Prefix, "/orders/v2")]);
        assert!(routes_overlap(&orders, &wild));
        let elsewhere = route(&["other.test"], &[], &[(Prefix, "/orders")]);
        assert!(!routes_overlap(&orders, &elsewhere));
        let get = route(&[], &["GET"], &[(Prefix, "/a")]);
        let post = route(&[], &["POST"], &[(Prefix, "/a")]);
        assert!(!routes_overlap(&get, &post));
        assert!(routes_overlap(&get, &route(&[], &[], &[(Prefix, "/a/b")])));
        let billing = route(&[], &[], &[(Exact, "/billing")]);
        assert!(routes_overlap(&billing, &route(&[], &[], &[(Exact, "/billing/")])));
        assert!(routes_overlap(&billing, &route(&[], &[], &[(Prefix, "/billing/")])));
    }

    #[test]
    fn only_paths_in_normal_form_can_be_compared_as_strings() {
        for path in ["/", "/api/payments", "/users/{id}", "/a.b/c"] {
            assert!(is_normal(path), "{path}");
        }
        for path in ["/%61pi", "/z/../api", "//api", "/a/./b", "/a/..", "/a\\b"] {
            assert!(!is_normal(path), "{path}");
        }
    }
}
