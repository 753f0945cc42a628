//! **match**: runs first, for every request. Works out one effective
//! authority and one normalised path, which every later phase uses and the
//! upstream receives; cleans the request's headers before the gateway adds
//! any of its own; finds the route (404 when none); answers CORS preflights
//! (they carry no credentials, so they come before authentication); and
//! decides the path the upstream receives after strip or rewrite.

use std::borrow::Cow;
use std::sync::Arc;

use http::Response;
use http::header;
use http::uri::Uri;

use super::super::ProxyContext;
use super::super::authority::{self, Authority};
use super::super::cors::CompiledCors;
use super::super::headers;
use super::super::path;
use super::super::router::Matched;
use super::super::snapshot::{CompiledRoute, GatewaySnapshot};
use super::super::transform::Rewrite;
use super::super::upgrade;
use super::RequestCtx;
use crate::plumbing::{GatewayBody, GatewayError, empty};

/// What `match` decided: go on with the matched route, or answer now.
pub enum Routed<'s> {
    To(&'s Arc<CompiledRoute>),
    Respond(Response<GatewayBody>),
}

#[inline]
pub fn run<'s>(
    ctx: &ProxyContext,
    snapshot: &'s GatewaySnapshot,
    rctx: &mut RequestCtx,
    parts: &mut http::request::Parts,
) -> Result<Routed<'s>, GatewayError> {
    rctx.authority = authority::effective(parts.version, &parts.uri, &parts.headers, rctx.client.tls)?;
    normalize_path(&mut parts.uri, ctx.path_policy)?;
    // Before the gateway sets any header of its own, so that no Connection
    // token or `_` spelling can remove or forge one.
    let scan = headers::scan_request(&parts.headers);
    rctx.upgrade = if scan.hop_by_hop { upgrade::requested(parts) } else { None };
    rctx.sent = scan.sent;
    headers::sanitize_request(&mut parts.headers, scan);
    if parts.version == http::Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
    }
    // Routes see the path as the most lenient upstream would read it
    // (`/admin;x/y` is the /admin route's), see `path::routing_view`.
    let routing_path = path::routing_view(parts.uri.path());
    let matched =
        snapshot.router.find(&parts.method, rctx.authority.as_ref().map(Authority::host), &routing_path).ok_or_else(
            || GatewayError::NoRoute { method: parts.method.to_string(), path: parts.uri.path().to_string() },
        )?;
    let route = matched.route;
    // Known from here on, so that a cache hit is accounted to the service too.
    rctx.service = route.service_label.clone();
    rctx.route = Some(route.clone());

    if let Some(cors) = &route.cors {
        if CompiledCors::is_preflight(&parts.method, &parts.headers) {
            let (head, ()) = cors.preflight(&parts.headers).into_parts();
            return Ok(Routed::Respond(Response::from_parts(head, empty())));
        }
        rctx.origin = parts.headers.get(header::ORIGIN).cloned();
    }
    // The version a path names is the segment after the matched prefix,
    // which only the match knows.
    if let (Some(versions), Some(prefix)) = (route.versions.as_ref().filter(|v| v.by_path), matched.matched_prefix) {
        let start = if prefix == "/" { 0 } else { prefix.trim_end_matches('/').len() };
        if let Some((from, to)) = crate::proxy::versions::first_segment(&routing_path, start)
            && let Some(version) = versions.named(&routing_path[from..to])
        {
            rctx.version = Some(version);
            // A range of the path as received, for the successor's Link.
            rctx.version_segment = (parts.uri.path() == routing_path).then_some((from, to));
        }
    }
    // Decided here, where the match is known; the service backend sends it.
    if !route.backend.is_ai() {
        rctx.rewritten_path = upstream_path(route.route.strip_prefix, route.rewrite.as_ref(), &matched, &routing_path);
    }
    Ok(Routed::To(route))
}

/// Replaces the request's path with its normalised form, keeping the query;
/// the common path that needs no change is left alone, uncopied.
fn normalize_path(uri: &mut Uri, policy: path::PathPolicy) -> Result<(), GatewayError> {
    let normalized = match path::normalize(uri.path(), policy)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(normalized) => normalized,
    };
    let path_and_query =
        path::with_query(normalized, uri.query()).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    // The authority, if any, was read already; later phases need only the origin form.
    *uri = Uri::from(path_and_query);
    Ok(())
}

/// The path sent upstream when it differs from the one received: rewritten,
/// or with the matched prefix stripped. None means "as received". `path` is
/// the path the route matched (normalised, without `;parameters`).
fn upstream_path<T>(
    strip_prefix: bool,
    rewrite: Option<&Rewrite>,
    matched: &Matched<'_, T>,
    path: &str,
) -> Option<String> {
    let remainder = matched
        .matched_prefix
        .map(|prefix| if prefix == "/" { path } else { &path[prefix.trim_end_matches('/').len()..] });
    if let Some(rewrite) = rewrite {
        return Some(rewrite.render(remainder, |name| matched.param(path, name)));
    }
    match (strip_prefix, remainder) {
        (true, Some(rest)) => Some(strip(rest)),
        _ => None,
    }
}

fn strip(rest: &str) -> String {
    if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tollgate_proto::config::v1::{PathMatch, Route, RoutePath};

    use http::Method;

    use super::super::super::path::{self, EscapedSeparatorPolicy, PathPolicy, SlashPolicy};
    use super::super::super::router::Router;
    use super::super::super::transform::Rewrite;
    use super::*;

    #[test]
    fn strip_keeps_a_leading_slash() {
        assert_eq!(strip("/users"), "/users");
        assert_eq!(strip(""), "/");
        assert_eq!(strip("users"), "/users");
    }

    /// How the most lenient origin server reads a path: every escape decoded
    /// once, `\` taken for `/`, `;parameters` dropped (servlet containers),
    /// dot segments resolved and empty segments merged.
    fn as_a_lenient_upstream_reads_it(path: &str) -> String {
        let bytes = path.as_bytes();
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match (bytes[i], bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
                (b'%', Some(hi), Some(lo)) => {
                    decoded.push((hi * 16 + lo) as u8);
                    i += 3;
                }
                (b'\\', _, _) => {
                    decoded.push(b'/');
                    i += 1;
                }
                (b, _, _) => {
                    decoded.push(b);
                    i += 1;
                }
            }
        }
        let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
        let mut kept: Vec<&str> = Vec::new();
        let mut trailing_slash = false;
        for segment in decoded.split('/').skip(1) {
            let name = segment.split(';').next().unwrap_or("");
            trailing_slash = matches!(name, "" | "." | "..");
            match name {
                "" | "." => {}
                ".." => {
                    kept.pop();
                }
                name => kept.push(name),
            }
        }
        let slash = if trailing_slash && !kept.is_empty() { "/" } else { "" };
        format!("/{}{slash}", kept.join("/"))
    }

    fn route(name: &str, kind: PathMatch, path: &str, strip_prefix: bool, rewrite: &str) -> Route {
        Route {
            name: name.into(),
            paths: vec![RoutePath { kind: kind as i32, path: path.into() }],
            strip_prefix,
            rewrite_path: rewrite.into(),
            ..Default::default()
        }
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "pub",
            "admin",
            "s",
            "t",
            "x",
            "secret.txt",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            ".%2e",
            "",
            "%2f",
            "%2F..",
            "..%2f",
            "%5c",
            "\\",
            "..;",
            ";x",
            "a;b",
            "admin;x",
            "%41dmin",
            "%61dmin",
            "%00",
            "%",
            "%zz",
            "%7e",
            "%252e%252e",
            "..%5C..",
            "%2fadmin",
            "%C3%A9",
        ])
    }

    fn policy() -> impl Strategy<Value = PathPolicy> {
        (
            prop::sample::select(vec![SlashPolicy::Merge, SlashPolicy::Reject, SlashPolicy::Keep]),
            prop::sample::select(vec![
                EscapedSeparatorPolicy::Reject,
                EscapedSeparatorPolicy::Keep,
                EscapedSeparatorPolicy::Decode,
            ]),
        )
            .prop_map(|(slashes, escaped_separators)| PathPolicy { slashes, escaped_separators })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, max_global_rejects: 100_000, ..ProptestConfig::default() })]

        /// DESIGN §8: a request never leaves the route that authorized it.
        /// For any path, under every policy, whatever the upstream receives,
        /// read as leniently as any server reads it, is covered by the route
        /// that matched (and a template parameter stays one segment).
        #[test]
        fn the_upstream_receives_only_what_the_matched_route_covers(
            segments in prop::collection::vec(segment(), 0..8),
            policy in policy(),
        ) {
            let routes = [
                route("root", PathMatch::Prefix, "/", false, ""),
                route("pub", PathMatch::Prefix, "/pub", false, ""),
                route("admin", PathMatch::Prefix, "/admin", false, ""),
                route("stripped", PathMatch::Prefix, "/s", true, ""),
                route("item", PathMatch::Template, "/t/{id}", false, "/items/{id}"),
            ];
            let rewrites: Vec<Option<Rewrite>> = routes.iter().map(|r| Rewrite::compile(&r.rewrite_path)).collect();
            let router = Router::build(routes.iter().enumerate().map(|(i, r)| (r, i)));
            let raw = format!("/{}", segments.join("/"));
            // A refused path (400) never reaches a route; only the accepted ones count as cases.
            let normalized = path::normalize(&raw, policy);
            prop_assume!(normalized.is_ok());
            let normalized = normalized.unwrap();
            let routing = path::routing_view(&normalized);
            let matched = router.find(&Method::GET, None, &routing).expect("the root route matches every path");
            let index = *matched.route;
            let upstream = upstream_path(routes[index].strip_prefix, rewrites[index].as_ref(), &matched, &routing)
                .unwrap_or_else(|| normalized.to_string());
            let name = routes[index].name.as_str();
            match name {
                "stripped" => {
                    // The service behind /s sees the remainder; /s plus it is what it serves.
                    let seen = as_a_lenient_upstream_reads_it(&format!("/s{upstream}"));
                    let again = router.find(&Method::GET, None, &seen).map(|m| *m.route);
                    prop_assert_eq!(again, Some(index), "{} -> {} -> {}", raw, upstream, seen);
                }
                "item" => {
                    let seen = as_a_lenient_upstream_reads_it(&upstream);
                    prop_assert!(seen.starts_with("/items/"), "{} -> {}", raw, seen);
                    prop_assert_eq!(seen.matches('/').count(), 2, "{} -> {} -> {}", raw, upstream, seen);
                }
                _ => {
                    let seen = as_a_lenient_upstream_reads_it(&upstream);
                    let again = router.find(&Method::GET, None, &seen).map(|m| routes[*m.route].name.as_str());
                    prop_assert_eq!(again, Some(name), "{} -> {} -> {}", raw, upstream, seen);
                }
            }
        }
    }
}
