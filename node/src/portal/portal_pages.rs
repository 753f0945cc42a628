//! The developer portal: a consumer, signed in with one of its keys, finds
//! published APIs, reads their reference, subscribes, manages its own keys
//! and sees its own usage. Reads come from this node's replicated state;
//! changes are commands of the actor `consumer <id>`, which `apply` holds
//! to self-service.

use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Redirect;
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;
use tollgate_proto::config::v1::{
    AdminRole, ApiKey, ApiVersion, Meta, Service, SubscriptionMode, SubscriptionState, VersionState,
};
use tollgate_proto::raft::v1::command::Op;
use tollgate_raft::{Applied, Command, GatewayState};

use super::page::{self, badge, csrf_field, when};
use super::session::CsrfForm;
use super::session::{ConsumerSession, Side, Who};
use super::usage::{Breakdown, Span};
use super::{PortalError, Shared, chart, id_of, reference};

pub fn routes() -> Router<Shared> {
    super::sign_in::routes(Side::Portal)
        .route("/portal", get(catalog))
        .route("/portal/apis/{service}", get(api_page))
        .route("/portal/apis/{service}/versions/{version}", get(version_page))
        .route("/portal/apis/{service}/subscribe", post(|s, c, p, f| subscription(Ask::Subscribe, s, c, p, f)))
        .route("/portal/apis/{service}/cancel", post(|s, c, p, f| subscription(Ask::Cancel, s, c, p, f)))
        .route("/portal/keys", get(keys_page).post(create_key))
        .route("/portal/keys/{id}/delete", post(delete_key))
        .route("/portal/usage", get(usage_page))
}

fn shell(portal: &Shared, session: &ConsumerSession, current: &str, title: &str, body: Markup) -> Markup {
    let state = portal.raft.local_state();
    let who = state.consumer(&session.consumer_id).map(|c| c.name.clone()).unwrap_or_default();
    page::page(Side::Portal, current, title, &who, &session.session.csrf, body)
}

/// Services in the catalog: those with a live (published or deprecated) version.
fn catalog_services(state: &GatewayState) -> Vec<(Arc<Service>, Vec<Arc<ApiVersion>>)> {
    state
        .services()
        .filter_map(|service| {
            let id = service.meta.as_ref().map(|m| m.id.as_str()).unwrap_or_default();
            let live: Vec<Arc<ApiVersion>> = state
                .api_versions()
                .filter(|v| {
                    v.service_id == id
                        && tollgate_raft::version_is_live(VersionState::try_from(v.state).unwrap_or_default())
                })
                .cloned()
                .collect();
            (!live.is_empty()).then(|| (service.clone(), live))
        })
        .collect()
}

fn find_in_catalog(state: &GatewayState, name: &str) -> Result<(Arc<Service>, Vec<Arc<ApiVersion>>), PortalError> {
    catalog_services(state).into_iter().find(|(s, _)| s.name == name).ok_or(PortalError::NotFound("API"))
}

fn subscription_state(state: &GatewayState, consumer_id: &str, service_id: &str) -> Option<SubscriptionState> {
    state
        .subscriptions()
        .find(|s| s.consumer_id == consumer_id && s.service_id == service_id)
        .map(|s| SubscriptionState::try_from(s.state).unwrap_or_default())
}

pub fn subscription_name(state: SubscriptionState) -> &'static str {
    match state {
        SubscriptionState::Pending => "pending",
        SubscriptionState::Approved => "approved",
        SubscriptionState::Rejected => "rejected",
        SubscriptionState::Revoked => "revoked",
        SubscriptionState::Unspecified => "none",
    }
}

#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    q: String,
}

async fn catalog(State(portal): State<Shared>, session: ConsumerSession, Query(search): Query<Search>) -> Markup {
    let state = portal.raft.local_state();
    let needle = search.q.trim().to_lowercase();
    let found: Vec<_> = catalog_services(&state)
        .into_iter()
        .filter(|(s, versions)| {
            needle.is_empty()
                || s.name.to_lowercase().contains(&needle)
                || s.description.to_lowercase().contains(&needle)
                || versions.iter().any(|v| v.description.to_lowercase().contains(&needle))
        })
        .collect();
    let body = html! {
        form method="get" action="/portal" role="search" {
            input type="search" name="q" value=(search.q) placeholder="Search APIs" aria-label="Search APIs";
            " " button type="submit" { "Search" }
        }
        @if found.is_empty() { p.muted { "No published API matches." } }
        div.grid {
            @for (service, versions) in &found {
                @let sub = subscription_state(&state, &session.consumer_id, id_of(&service.meta));
                article.card.api {
                    h2 { a href={ "/portal/apis/" (service.name) } { (service.name) } }
                    p { (service.description) }
                    p.muted {
                        @for v in versions { (badge(tollgate_raft::version_state_name(VersionState::try_from(v.state).unwrap_or_default()))) " " (v.version) " " }
                    }
                    @if let Some(sub) = sub { p { "Subscription: " (badge(subscription_name(sub))) } }
                }
            }
        }
    };
    shell(&portal, &session, "/portal", "APIs", body)
}

async fn api_page(
    State(portal): State<Shared>,
    session: ConsumerSession,
    Path(name): Path<String>,
) -> Result<Markup, PortalError> {
    let state = portal.raft.local_state();
    let (service, versions) = find_in_catalog(&state, &name)?;
    let service_id = id_of(&service.meta);
    let mode = SubscriptionMode::try_from(service.subscription).unwrap_or_default();
    let sub = subscription_state(&state, &session.consumer_id, service_id);
    let routes: Vec<_> = state.routes().filter(|r| r.backend_service_id() == Some(service_id)).cloned().collect();
    let body = html! {
        p { (service.description) }
        h2 { "Versions" }
        table {
            thead { tr { th { "Version" } th { "State" } th { "Sunset" } th { "Description" } } }
            tbody {
                @for v in &versions {
                    tr {
                        td { a href={ "/portal/apis/" (service.name) "/versions/" (v.version) } { (v.version) } }
                        td { (badge(tollgate_raft::version_state_name(VersionState::try_from(v.state).unwrap_or_default()))) }
                        td { (when(v.sunset_at_ms)) }
                        td { (v.description) }
                    }
                }
            }
        }
        h2 { "How to call it" }
        (how_to_call(&service, &routes))
        h2 { "Subscription" }
        (subscription_box(&service, mode, sub, &session.session.csrf))
    };
    Ok(shell(&portal, &session, "/portal", &service.name, body))
}

fn how_to_call(service: &Service, routes: &[Arc<tollgate_proto::config::v1::Route>]) -> Markup {
    let versioning = service.versioning.as_ref();
    html! {
        ul {
            @for route in routes {
                li {
                    @if route.methods.is_empty() { "any method" } @else { (route.methods.join(", ")) }
                    " "
                    @for p in &route.paths { code { (p.path) } " " }
                    @if !route.hosts.is_empty() { " on " @for h in &route.hosts { code { (h) } " " } }
                }
            }
        }
        p.muted {
            "Send your key as " code { "Authorization: Bearer <key>" } " or " code { "x-api-key: <key>" } "."
            @if let Some(v) = versioning {
                @if v.by_path { " Name the version as the first path segment after the route's path." }
                @if !v.header.is_empty() { " Or name it in the " code { (v.header) } " header." }
                @if !v.default_version.is_empty() { " Without one you get " code { (v.default_version) } "." }
            }
        }
    }
}

fn subscription_box(service: &Service, mode: SubscriptionMode, sub: Option<SubscriptionState>, csrf: &str) -> Markup {
    let can_ask = !matches!(sub, Some(SubscriptionState::Pending | SubscriptionState::Approved));
    html! {
        @match mode {
            SubscriptionMode::Unspecified => { p { "This API takes no subscriptions: any of your keys may call it." } }
            _ => {
                p id="subscription-state" { "Your subscription: " (badge(subscription_name(sub.unwrap_or_default()))) }
                @if mode == SubscriptionMode::Approval { p.muted { "The API's team approves each subscription." } }
                @if can_ask {
                    form method="post" action={ "/portal/apis/" (service.name) "/subscribe" } {
                        (csrf_field(csrf))
                        button type="submit" id="subscribe" { "Subscribe" }
                    }
                } @else {
                    form method="post" action={ "/portal/apis/" (service.name) "/cancel" } data-confirm="End this subscription? Your keys stop working for this API." {
                        (csrf_field(csrf))
                        button.danger type="submit" id="cancel" { "Cancel subscription" }
                    }
                }
            }
        }
    }
}

async fn version_page(
    State(portal): State<Shared>,
    session: ConsumerSession,
    Path((name, version)): Path<(String, String)>,
) -> Result<Markup, PortalError> {
    let state = portal.raft.local_state();
    let (service, versions) = find_in_catalog(&state, &name)?;
    let v = versions.iter().find(|v| v.version == version).ok_or(PortalError::NotFound("version"))?;
    let document = reference::parse(&v.openapi).or_else(|| generated_document(&state, &service, &v.version));
    let body = html! {
        p { a href={ "/portal/apis/" (service.name) } { "← " (service.name) } }
        @if VersionState::try_from(v.state) == Ok(VersionState::Deprecated) {
            p.error { "Deprecated" @if v.sunset_at_ms > 0 { ": it stops working at " (when(v.sunset_at_ms)) } "." }
        }
        @match &document {
            Some(document) => { (reference::render(document)) }
            None => { p.muted { "This version has no OpenAPI document." } }
        }
    };
    Ok(shell(&portal, &session, "/portal", &format!("{} {}", service.name, v.version), body))
}

/// A prompt API's document, generated from its spec, for a version that
/// has none of its own.
fn generated_document(state: &GatewayState, service: &Service, version: &str) -> Option<serde_json::Value> {
    let prompt = service.prompt.as_ref()?;
    let path = state
        .routes()
        .find(|r| r.backend_service_id() == Some(id_of(&service.meta)))
        .and_then(|r| r.paths.first().map(|p| p.path.clone()))
        .unwrap_or_default();
    Some(crate::ai::prompt_doc::openapi(&service.name, &service.description, version, &path, prompt))
}

/// How long a subscription change waits for every member to serve it.
const SPREAD_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Portal changes one consumer may make a minute on this node: each is a
/// Raft write and an audit entry.
const WRITES_PER_MINUTE: u32 = 30;

/// Proposes `op` as the signed-in consumer and returns once this node
/// serves it.
async fn propose_as(portal: &Shared, consumer_id: &str, rpc: &str, op: Op) -> Result<Applied, PortalError> {
    if !portal.throttles.writes.admit(consumer_id, WRITES_PER_MINUTE) {
        return Err(PortalError::TooMany(format!("at most {WRITES_PER_MINUTE} changes a minute: wait a moment")));
    }
    let mut command = Command::new(op, crate::clock::unix_ms(), tollgate_raft::consumer_actor(consumer_id));
    command.0.actor_role = AdminRole::Consumer as i32;
    command.0.rpc = format!("portal/{rpc}");
    let applied = portal.raft.propose(command).await.map_err(PortalError::from_propose)?;
    portal.proxy.wait_served(applied.revision).await;
    Ok(applied)
}

/// What a consumer asks of its subscription to an API.
#[derive(Clone, Copy)]
enum Ask {
    Subscribe,
    Cancel,
}

/// Subscribes or cancels; returns once every member that answers serves
/// the change, as the admin API's subscription calls do.
async fn subscription(
    ask: Ask,
    State(portal): State<Shared>,
    session: ConsumerSession,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, PortalError> {
    session.session.check_csrf(&form.csrf)?;
    let state = portal.raft.local_state();
    let (service, _) = find_in_catalog(&state, &name)?;
    let (service_id, me) = (id_of(&service.meta), session.consumer_id.as_str());
    let actor = tollgate_raft::consumer_actor(me);
    let change = match ask {
        Ask::Subscribe => crate::admin::governance::subscription_request(&state, me, service_id, &actor).ok(),
        Ask::Cancel => cancellation(&state, me, service_id, actor),
    };
    if let Some(op) = change {
        let rpc = match ask {
            Ask::Subscribe => "Subscribe",
            Ask::Cancel => "CancelSubscription",
        };
        let applied = propose_as(&portal, me, rpc, op).await?;
        crate::admin::propose::wait_members_served(&portal.raft, applied.revision, SPREAD_WITHIN).await;
    }
    Ok(Redirect::to(&format!("/portal/apis/{}", service.name)))
}

/// The change that ends the consumer's pending or approved subscription.
fn cancellation(state: &GatewayState, consumer_id: &str, service_id: &str, actor: String) -> Option<Op> {
    let live = [SubscriptionState::Pending as i32, SubscriptionState::Approved as i32];
    let existing = state
        .subscriptions()
        .find(|s| s.consumer_id == consumer_id && s.service_id == service_id && live.contains(&s.state))?;
    Some(Op::UpdateSubscription(tollgate_proto::config::v1::Subscription {
        state: SubscriptionState::Revoked as i32,
        decided_by: actor,
        ..existing.as_ref().clone()
    }))
}

fn own_keys(state: &GatewayState, consumer_id: &str) -> Vec<Arc<ApiKey>> {
    state.api_keys().filter(|k| k.consumer_id == consumer_id).cloned().collect()
}

async fn keys_page(State(portal): State<Shared>, session: ConsumerSession) -> Markup {
    let body = keys_body(&portal, &session, None);
    shell(&portal, &session, "/portal/keys", "Keys", body)
}

fn keys_body(portal: &Shared, session: &ConsumerSession, created: Option<&str>) -> Markup {
    let state = portal.raft.local_state();
    let keys = own_keys(&state, &session.consumer_id);
    let csrf = &session.session.csrf;
    let signed_in_with = match &session.session.who {
        Who::Consumer { key_id, .. } => key_id.as_str(),
        Who::Admin { .. } => "",
    };
    html! {
        @if let Some(plaintext) = created {
            div.notice role="status" {
                p { strong { "Your new key. " } "Copy it now: it is shown this once and cannot be shown again." }
                p.secret id="new-key" { (plaintext) }
                button.secondary type="button" data-copy="new-key" { "Copy" }
            }
        }
        table id="keys" {
            thead { tr { th { "Name" } th { "Key" } th { "Created" } th { "Expires" } th { "State" } th {} } }
            tbody {
                @for key in &keys {
                    tr {
                        td { (key.name) }
                        td { code { (key.display_prefix) } @if id_of(&key.meta) == signed_in_with { " " span.muted { "(this session)" } } }
                        td { (when(key.meta.as_ref().map_or(0, |m| m.created_at_ms))) }
                        td { (when(key.expires_at_ms)) }
                        td { @if key.disabled { (badge("revoked")) } @else { (badge("approved")) } }
                        td {
                            form.inline method="post" action={ "/portal/keys/" (id_of(&key.meta)) "/delete" } data-confirm="Delete this key? Calls made with it will fail." {
                                (csrf_field(csrf))
                                button.danger type="submit" { "Delete" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New key" }
        form method="post" action="/portal/keys" {
            (csrf_field(csrf))
            label { "Name " input type="text" name="name" id="key-name" maxlength="64" placeholder="e.g. ci"; }
            " " button type="submit" id="create-key" { "Create key" }
        }
    }
}

#[derive(Deserialize)]
struct NewKeyForm {
    /// Missing is as wrong as mistyped: 403, not a parse error.
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

async fn create_key(
    State(portal): State<Shared>,
    session: ConsumerSession,
    Form(form): Form<NewKeyForm>,
) -> Result<Markup, PortalError> {
    session.session.check_csrf(&form.csrf)?;
    if form.name.len() > 64 {
        return Err(PortalError::BadRequest("a key's name is at most 64 characters".into()));
    }
    // The new key reaches what the key of this session reaches, and lives
    // as long as the consumer's longest-lived key (apply holds it to that).
    let state = portal.raft.local_state();
    let Who::Consumer { key_id, .. } = &session.session.who else {
        return Err(PortalError::SignIn(Side::Portal.sign_in()));
    };
    let Some(session_key) = state.api_key(key_id).filter(|k| !k.disabled) else {
        return Err(PortalError::SignIn(Side::Portal.sign_in()));
    };
    let usable: Vec<_> = own_keys(&state, &session.consumer_id).into_iter().filter(|k| !k.disabled).collect();
    let expires_at_ms = if usable.iter().any(|k| k.expires_at_ms == 0) {
        0
    } else {
        usable.iter().map(|k| k.expires_at_ms).max().unwrap_or(0)
    };
    let key = crate::apikey::generate();
    let record = ApiKey {
        meta: Some(Meta { id: key.id.clone(), ..Default::default() }),
        consumer_id: session.consumer_id.clone(),
        name: form.name.trim().to_string(),
        secret_sha256: key.secret_sha256,
        display_prefix: key.display_prefix,
        allowed_models: session_key.allowed_models.clone(),
        expires_at_ms,
        ..Default::default()
    };
    propose_as(&portal, &session.consumer_id, "CreateApiKey", Op::CreateApiKey(record)).await?;
    let body = keys_body(&portal, &session, Some(&key.plaintext));
    Ok(shell(&portal, &session, "/portal/keys", "Keys", body))
}

async fn delete_key(
    State(portal): State<Shared>,
    session: ConsumerSession,
    Path(key_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Redirect, PortalError> {
    session.session.check_csrf(&form.csrf)?;
    propose_as(&portal, &session.consumer_id, "DeleteApiKey", Op::DeleteApiKey(key_id)).await?;
    Ok(Redirect::to("/portal/keys"))
}

#[derive(Deserialize)]
struct SpanQuery {
    #[serde(default)]
    span: Span,
}

async fn usage_page(State(portal): State<Shared>, session: ConsumerSession, Query(q): Query<SpanQuery>) -> Markup {
    let state = portal.raft.local_state();
    let now = crate::clock::unix_ms();
    let prefix = format!("{}/", session.consumer_id);
    let by_api = super::usage::breakdown(&state, "consumer_service", &prefix, q.span, now);
    let by_model = super::usage::breakdown(&state, "consumer_model", &prefix, q.span, now);
    let body = html! {
        (span_switch("/portal/usage", q.span))
        (usage_charts("api", "per API", &by_api))
        (usage_charts("model", "per model", &by_model))
    };
    shell(&portal, &session, "/portal/usage", "Usage", body)
}

pub fn span_switch(path: &str, span: Span) -> Markup {
    html! {
        p {
            @if span == Span::Days { strong { "30 days" } } @else { a href={ (path) "?span=days" } { "30 days" } }
            " · "
            @if span == Span::Hours { strong { "48 hours" } } @else { a href={ (path) "?span=hours" } { "48 hours" } }
        }
    }
}

/// Requests and cost charts of a breakdown, and its totals.
pub fn usage_charts(id: &str, what: &str, data: &Breakdown) -> Markup {
    html! {
        h2 { "Requests and cost " (what) }
        (chart::stacked(&format!("requests-{id}"), &format!("Requests {what}"), data, |s| &s.requests, |v| v.to_string()))
        (chart::stacked(&format!("cost-{id}"), &format!("Cost {what}"), data, |s| &s.cost_picodollars, page::dollars))
        table {
            thead { tr { th { "Name" } th { "Requests" } th { "Errors" } th { "Tokens" } th { "Cost" } } }
            tbody {
                @for s in &data.series {
                    tr {
                        td { (s.name) }
                        td { (super::usage::Series::total(&s.requests)) }
                        td { (super::usage::Series::total(&s.errors)) }
                        td { (super::usage::Series::total(&s.tokens)) }
                        td { (page::dollars(super::usage::Series::total(&s.cost_picodollars))) }
                    }
                }
            }
        }
    }
}
