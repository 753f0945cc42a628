//! The web console (admins) and the developer portal (consumers), on their
//! own listener (`[listen] console`, DESIGN §8): server-rendered HTML with
//! every asset compiled into the binary, readable without JavaScript.
//!
//! - `/portal/...`: a consumer signed in with one of its API keys finds
//!   published APIs, reads their reference, subscribes, manages its own keys
//!   and sees its own usage. Its changes are commands of the actor
//!   `consumer <id>`, which `apply` holds to self-service
//!   (`tollgate_raft`'s `apply/self_service.rs`).
//! - `/console/...`: an admin token's holder sees the cluster's state and
//!   acts through the admin API itself (`admin_api.rs`), so the roles, team
//!   ownership and audit trail of every RPC apply unchanged.
//!
//! The two have separate cookies, scoped by path, and separate session
//! tables: a portal session can never stand for an admin.

mod admin_api;
mod chart;
mod console;
mod error;
mod page;
mod portal_pages;
mod reference;
mod session;
mod sign_in;
mod usage;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tollgate_raft::RaftNode;

pub use error::PortalError;
/// An OpenAPI document (JSON or YAML) as a JSON value; None for none.
pub use reference::{parameters as openapi_parameters, parse as parse_openapi};

use crate::admin::access::Access;
use crate::proxy::ProxyContext;

/// What every page handler reads: the node's state, the admin API for the
/// console's changes, and the sessions of both sides.
pub struct Portal {
    pub(crate) raft: RaftNode,
    pub(crate) proxy: Arc<ProxyContext>,
    pub(crate) access: Arc<Access>,
    pub(crate) admin: admin_api::AdminApi,
    pub(crate) sessions: session::Sessions,
    pub(crate) throttles: session::Throttles,
}

pub type Shared = Arc<Portal>;

impl Portal {
    pub fn new(raft: RaftNode, proxy: Arc<ProxyContext>, bootstrap_token: &str, admin_addr: SocketAddr) -> Shared {
        let access = Access::new(bootstrap_token, raft.clone());
        Arc::new(Portal {
            raft,
            proxy,
            access,
            admin: admin_api::AdminApi::new(admin_addr),
            sessions: session::Sessions::new(),
            throttles: session::Throttles { writes: session::Throttle::new(), sign_ins: session::Throttle::new() },
        })
    }
}

pub fn router(portal: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/portal") }))
        .route("/assets/style.css", get(|| async { asset("text/css; charset=utf-8", page::STYLE) }))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", page::SCRIPT) }))
        .merge(portal_pages::routes())
        .merge(console::routes())
        .fallback(|| async { PortalError::NotFound("page").into_response() })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(portal)
}

/// An entity's id from its meta ("" for none).
fn id_of(meta: &Option<tollgate_proto::config::v1::Meta>) -> &str {
    meta.as_ref().map(|m| m.id.as_str()).unwrap_or_default()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")];
    (headers, body).into_response()
}

/// Every answer: no framing, no sniffing, no referrer to other sites (with
/// `no-referrer` a browser would send `Origin: null` on our own forms, and
/// the same-origin check would refuse them), scripts and styles
/// from this origin only, forms posting only here, and pages (which show a
/// person's own data) never stored by a cache.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// Serves the console and portal until `shutdown`.
pub async fn serve(listener: TcpListener, portal: Shared, shutdown: impl Future<Output = ()> + Send + 'static) {
    let app = router(portal);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(%error, "the console listener stopped");
    }
}
