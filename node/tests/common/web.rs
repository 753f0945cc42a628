//! A minimal browser for the console and portal tests that need no real
//! one: keeps cookies, posts forms, finds a page's CSRF token.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;

use super::{Reply, full, http_client, send};

pub struct Web {
    base: String,
    host: String,
    cookies: Vec<(String, String)>,
}

impl Web {
    pub fn new(addr: SocketAddr) -> Web {
        Web { base: format!("http://{addr}"), host: addr.to_string(), cookies: Vec::new() }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn keep_cookies(&mut self, reply: &Reply) {
        for value in reply.headers.get_all(http::header::SET_COOKIE) {
            let text = value.to_str().unwrap();
            let (pair, _) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name);
            if !value.is_empty() {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let request = Request::get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .body(full(Bytes::new()))
            .unwrap();
        let reply = send(&http_client(), request).await;
        self.keep_cookies(&reply);
        reply
    }

    /// Posts a form as a browser on this site would (same Origin).
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        let origin = format!("http://{}", self.host);
        self.post_with(path, form, &[("origin", &origin)]).await
    }

    pub async fn post_with(&mut self, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Reply {
        let body = form.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&");
        let mut builder = Request::post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let reply = send(&http_client(), builder.body(full(body)).unwrap()).await;
        self.keep_cookies(&reply);
        reply
    }

    /// Reads `path` and returns its body and its CSRF token.
    pub async fn page(&mut self, path: &str) -> (String, String) {
        let reply = self.get(path).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", String::from_utf8_lossy(&reply.body));
        let html = String::from_utf8(reply.body.to_vec()).unwrap();
        let csrf = csrf_of(&html).unwrap_or_default();
        (html, csrf)
    }
}

pub fn csrf_of(html: &str) -> Option<String> {
    let start = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_string())
}

pub fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub type Governance = tollgate_proto::admin::v1::governance_service_client::GovernanceServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, super::Bearer>,
>;

pub async fn governance(addr: SocketAddr, token: &str) -> Governance {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    tollgate_proto::admin::v1::governance_service_client::GovernanceServiceClient::with_interceptor(
        channel,
        super::Bearer(token.to_string()),
    )
}

/// Service `name` on the path prefix `path` behind API keys, to `upstream`,
/// taking subscriptions as `mode`, with version v1 described by `openapi`:
/// published when `publish`, else a draft.
pub struct Api<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub upstream: SocketAddr,
    pub mode: tollgate_proto::config::v1::SubscriptionMode,
    pub openapi: &'a str,
    pub publish: bool,
}

impl Api<'_> {
    pub async fn create(&self, admin: &mut super::Admin, gov: &mut Governance) {
        use tollgate_proto::admin::v1::{PutApiVersionRequest, SetApiVersionStateRequest};
        use tollgate_proto::config::v1::{AuthMode, PathMatch, Service, Target, VersionState, Versioning};
        let service = Service {
            name: self.name.into(),
            description: format!("The {} API", self.name),
            targets: vec![Target { host: "127.0.0.1".into(), port: self.upstream.port().into(), weight: 1 }],
            versioning: Some(Versioning { default_version: "v1".into(), ..Default::default() }),
            subscription: self.mode as i32,
            ..Default::default()
        };
        admin.create_service(service).await.unwrap();
        admin
            .create_route(super::route(self.name, self.name, PathMatch::Prefix, self.path, AuthMode::ApiKey))
            .await
            .unwrap();
        let version = PutApiVersionRequest {
            service: self.name.into(),
            version: "v1".into(),
            openapi: self.openapi.into(),
            ..Default::default()
        };
        gov.put_api_version(version).await.unwrap();
        if self.publish {
            let publish = SetApiVersionStateRequest {
                service: self.name.into(),
                version: "v1".into(),
                state: VersionState::Published as i32,
                ..Default::default()
            };
            gov.set_api_version_state(publish).await.unwrap();
        }
    }
}
