//! CORS: the gateway answers preflights itself (they carry no credentials, so
//! they come before authentication) and decorates actual responses. Header
//! values are built once per state change.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use tollgate_proto::config::v1::Cors;

pub struct CompiledCors {
    any_origin: bool,
    origins: Vec<String>,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

impl CompiledCors {
    pub fn compile(cors: &Cors, route_methods: &[String]) -> CompiledCors {
        let methods = if !cors.allow_methods.is_empty() {
            cors.allow_methods.join(", ")
        } else if !route_methods.is_empty() {
            route_methods.join(", ")
        } else {
            "GET, HEAD, POST".to_string()
        };
        let join = |v: &[String]| (!v.is_empty()).then(|| HeaderValue::from_str(&v.join(", ")).ok()).flatten();
        CompiledCors {
            any_origin: cors.allow_origins.iter().any(|o| o == "*"),
            origins: cors.allow_origins.clone(),
            allow_methods: HeaderValue::from_str(&methods).unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            allow_headers: join(&cors.allow_headers),
            expose_headers: join(&cors.expose_headers),
            max_age: (cors.max_age_s > 0).then(|| HeaderValue::from(cors.max_age_s)),
            credentials: cors.allow_credentials,
        }
    }

    fn allowed_origin<'a>(&self, origin: &'a HeaderValue) -> Option<&'a HeaderValue> {
        let o = origin.to_str().ok()?;
        (self.any_origin || self.origins.iter().any(|a| a == o)).then_some(origin)
    }

    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: 204 with the policy, or 403 for an origin not on the list.
    pub fn preflight(&self, headers: &HeaderMap) -> Response<()> {
        let mut response = Response::new(());
        let Some(origin) = headers.get(header::ORIGIN).and_then(|o| self.allowed_origin(o)).cloned() else {
            *response.status_mut() = StatusCode::FORBIDDEN;
            return response;
        };
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        self.origin_headers(h, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        match &self.allow_headers {
            Some(v) => {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            // No list configured: allow what the browser asks for.
            None => {
                if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
                }
            }
        }
        if let Some(v) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        response
    }

    /// Adds CORS headers to an actual response for an allowed origin.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        let Some(origin) = origin.and_then(|o| self.allowed_origin(o)).cloned() else { return };
        self.origin_headers(response, origin);
        if let Some(v) = &self.expose_headers {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }

    fn origin_headers(&self, h: &mut HeaderMap, origin: HeaderValue) {
        if self.any_origin && !self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preflight_headers(origin: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static(origin));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("PUT"));
        h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_static("x-custom"));
        h
    }

    #[test]
    fn listed_origins_get_the_policy_and_others_are_refused() {
        let cors = Cors {
            allow_origins: vec!["https://app.example.com".into()],
            allow_methods: vec!["GET".into(), "PUT".into()],
            max_age_s: 600,
            allow_credentials: true,
            ..Default::default()
        };
        let c = CompiledCors::compile(&cors, &[]);
        let ok = c.preflight(&preflight_headers("https://app.example.com"));
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(ok.headers()["access-control-allow-methods"], "GET, PUT");
        assert_eq!(ok.headers()["access-control-allow-headers"], "x-custom");
        assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
        assert_eq!(ok.headers()["access-control-max-age"], "600");
        assert_eq!(c.preflight(&preflight_headers("https://evil.example")).status(), StatusCode::FORBIDDEN);
        let mut actual = HeaderMap::new();
        c.decorate(Some(&HeaderValue::from_static("https://evil.example")), &mut actual);
        assert!(actual.is_empty());
    }
}
