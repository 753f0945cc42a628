//! The web console: what an admin token's holder sees of the cluster, and
//! the decisions it makes there (approving subscriptions, moving versions
//! through their lifecycle). Pages read this node's replicated state, as
//! `ctl ... --stale` would; changes are calls to the admin API with the
//! session's token (`admin_api.rs`), so a viewer is refused there as it
//! would be from the CLI, and the audit trail names the person.

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Redirect;
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;
use tollgate_proto::config::v1::{AdminRole, AuthMode, SubscriptionMode, SubscriptionState, VersionState};
use tollgate_raft::GatewayState;

use super::page::{self, badge, csrf_field, when};
use super::portal_pages::{span_switch, subscription_name, usage_charts};
use super::session::{AdminSession, Side};
use super::usage::Span;
use super::{PortalError, Shared, id_of};
use crate::admin::access::role_name;

pub fn routes() -> Router<Shared> {
    super::sign_in::routes(Side::Console)
        .route("/console", get(overview))
        .route("/console/services", get(services))
        .route("/console/services/{service}/versions/{version}/state", post(set_version_state))
        .route("/console/routes", get(routes_page))
        .route("/console/consumers", get(consumers))
        .route("/console/subscriptions", get(subscriptions))
        .route("/console/subscriptions/{id}/decide", post(decide))
        .route("/console/limits", get(limits))
        .route("/console/usage", get(usage))
        .route("/console/audit", get(audit))
        .route("/console/cluster", get(cluster))
}

fn shell(session: &AdminSession, current: &str, title: &str, body: Markup) -> Markup {
    let caller = &session.caller;
    let who = format!("{} ({})", caller.name, role_name(caller.role));
    page::page(Side::Console, current, title, &who, &session.session.csrf, body)
}

/// Names of teams, by id, for tables.
fn team(state: &GatewayState, id: &str) -> String {
    if id.is_empty() { "—".into() } else { state.team(id).map_or_else(|| id.to_string(), |t| t.name.clone()) }
}

async fn overview(State(portal): State<Shared>, session: AdminSession) -> Markup {
    let state = portal.raft.local_state();
    let status = portal.raft.status();
    let pending = state.subscriptions().filter(|s| s.state == SubscriptionState::Pending as i32).count();
    let by_service = super::usage::breakdown(&state, "service", "", Span::Days, crate::clock::unix_ms());
    let body = html! {
        div.grid {
            div.card { h2 { "Cluster" } p { "Node " (status.node_id) " is " (badge(&status.role_text())) } p.muted { "term " (status.current_term) ", applied " (status.applied_index) } }
            div.card { h2 { "Services" } p { (state.services().count()) " services, " (state.routes().count()) " routes" } }
            div.card { h2 { "Consumers" } p { (state.consumers().count()) " consumers, " (state.api_keys().count()) " keys" } }
            div.card { h2 { "Waiting" } p { a href="/console/subscriptions" { (pending) " subscriptions to decide" } } }
        }
        (usage_charts("service", "per service", &by_service))
    };
    shell(&session, "/console", "Overview", body)
}

async fn services(State(portal): State<Shared>, session: AdminSession) -> Markup {
    let state = portal.raft.local_state();
    let csrf = &session.session.csrf;
    let body = html! {
        @for service in state.services() {
            section.card id={ "service-" (service.name) } {
                h2 { (service.name) " " span.muted { (team(&state, &service.team_id)) } }
                p { (service.description) }
                p.muted { "Subscriptions: " (match SubscriptionMode::try_from(service.subscription).unwrap_or_default() {
                    SubscriptionMode::Unspecified => "not needed",
                    SubscriptionMode::AutoApprove => "approved automatically",
                    SubscriptionMode::Approval => "approved by the team",
                }) }
                table {
                    thead { tr { th { "Version" } th { "State" } th { "Successor" } th { "Sunset" } th { "OpenAPI" } th { "Next step" } } }
                    tbody {
                        @for v in state.api_versions().filter(|v| v.service_id == id_of(&service.meta)) {
                            @let current = VersionState::try_from(v.state).unwrap_or_default();
                            tr {
                                td { (v.version) }
                                td { (badge(tollgate_raft::version_state_name(current))) }
                                td { (v.successor) }
                                td { (when(v.sunset_at_ms)) }
                                td { @if v.openapi.is_empty() { "—" } @else { "yes" } }
                                td { (lifecycle_form(&service.name, &v.version, current, csrf)) }
                            }
                        }
                    }
                }
            }
        }
    };
    shell(&session, "/console/services", "Services", body)
}

/// The one transition a version may make next (apply allows one step).
fn lifecycle_form(service: &str, version: &str, current: VersionState, csrf: &str) -> Markup {
    let next = match current {
        VersionState::Draft => Some(("published", "Publish")),
        VersionState::Published => Some(("deprecated", "Deprecate")),
        VersionState::Deprecated => Some(("retired", "Retire")),
        VersionState::Retired | VersionState::Unspecified => None,
    };
    html! {
        @if let Some((state, label)) = next {
            form.inline method="post" action={ "/console/services/" (service) "/versions/" (version) "/state" } {
                (csrf_field(csrf))
                input type="hidden" name="state" value=(state);
                button.secondary type="submit" id={ "lifecycle-" (service) "-" (version) } { (label) }
            }
        }
    }
}

#[derive(Deserialize)]
struct StateForm {
    /// Missing is as wrong as mistyped: 403, not a parse error.
    #[serde(default)]
    csrf: String,
    state: String,
}

async fn set_version_state(
    State(portal): State<Shared>,
    session: AdminSession,
    Path((service, version)): Path<(String, String)>,
    Form(form): Form<StateForm>,
) -> Result<Redirect, PortalError> {
    session.session.check_csrf(&form.csrf)?;
    let state = match form.state.as_str() {
        "published" => VersionState::Published,
        "deprecated" => VersionState::Deprecated,
        "retired" => VersionState::Retired,
        other => return Err(PortalError::BadRequest(format!("{other:?} is not a state a version moves to"))),
    };
    portal.admin.set_version_state(&session.token, &service, &version, state).await?;
    Ok(Redirect::to("/console/services"))
}

async fn routes_page(State(portal): State<Shared>, session: AdminSession) -> Markup {
    let state = portal.raft.local_state();
    let body = html! {
        table {
            thead { tr { th { "Route" } th { "Hosts" } th { "Paths" } th { "Methods" } th { "Auth" } th { "Backend" } th { "Team" } } }
            tbody {
                @for r in state.routes() {
                    tr {
                        td { (r.name) }
                        td { @for h in &r.hosts { code { (h) } " " } }
                        td { @for p in &r.paths { code { (p.path) } " " } }
                        td { (r.methods.join(", ")) }
                        td { (match AuthMode::try_from(r.auth).unwrap_or_default() {
                            AuthMode::None => "none",
                            // Unset means what it always meant: an API key.
                            AuthMode::Unspecified | AuthMode::ApiKey => "API key",
                            AuthMode::Jwt => "JWT",
                            AuthMode::ApiKeyOrJwt => "API key or JWT",
                        }) }
                        td { @if r.is_ai_backend() { "AI gateway" } @else {
                            (r.backend_service_id().and_then(|s| state.service(s)).map(|s| s.name.clone()).unwrap_or_default())
                        } }
                        td { (team(&state, &r.team_id)) }
                    }
                }
            }
        }
    };
    shell(&session, "/console/routes", "Routes", body)
}

async fn consumers(State(portal): State<Shared>, session: AdminSession) -> Markup {
    let state = portal.raft.local_state();
    let body = html! {
        table {
            thead { tr { th { "Consumer" } th { "Team" } th { "Keys" } th { "Subscriptions" } } }
            tbody {
                @for c in state.consumers() {
                    tr {
                        td { (c.name) }
                        td { (team(&state, &c.team_id)) }
                        td {
                            @for k in state.api_keys().filter(|k| k.consumer_id == id_of(&c.meta)) {
                                code { (k.display_prefix) } " " (k.name)
                                @if k.disabled { " " (badge("revoked")) }
                                @if k.preview { " " (badge("preview")) }
                                br;
                            }
                        }
                        td {
                            @for s in state.subscriptions().filter(|s| s.consumer_id == id_of(&c.meta)) {
                                (state.service(&s.service_id).map(|s| s.name.clone()).unwrap_or_default()) " "
                                (badge(subscription_name(SubscriptionState::try_from(s.state).unwrap_or_default()))) br;
                            }
                        }
                    }
                }
            }
        }
    };
    shell(&session, "/console/consumers", "Consumers", body)
}

async fn subscriptions(State(portal): State<Shared>, session: AdminSession) -> Markup {
    let state = portal.raft.local_state();
    let csrf = &session.session.csrf;
    let mut all: Vec<_> = state.subscriptions().cloned().collect();
    // Those waiting for a decision first.
    all.sort_by_key(|s| s.state != SubscriptionState::Pending as i32);
    let can_decide = session.role() != AdminRole::Viewer;
    let body = html! {
        table id="subscriptions" {
            thead { tr { th { "Consumer" } th { "Service" } th { "State" } th { "Decided by" } th { "Reason" } th {} } }
            tbody {
                @for s in &all {
                    @let current = SubscriptionState::try_from(s.state).unwrap_or_default();
                    @let consumer = state.consumer(&s.consumer_id).map(|c| c.name.clone()).unwrap_or_default();
                    tr id={ "subscription-" (consumer) } {
                        td { (consumer) }
                        td { (state.service(&s.service_id).map(|s| s.name.clone()).unwrap_or_default()) }
                        td { (badge(subscription_name(current))) }
                        td { (s.decided_by) }
                        td { (s.reason) }
                        td { @if can_decide { (decision_forms(id_of(&s.meta), current, csrf)) } }
                    }
                }
            }
        }
    };
    shell(&session, "/console/subscriptions", "Subscriptions", body)
}

fn decision_forms(id: &str, current: SubscriptionState, csrf: &str) -> Markup {
    let action = format!("/console/subscriptions/{id}/decide");
    html! {
        @if current == SubscriptionState::Pending {
            form.inline method="post" action=(action) {
                (csrf_field(csrf)) input type="hidden" name="decision" value="approve";
                button type="submit" class="approve" { "Approve" }
            }
            " "
            form.inline method="post" action=(action) {
                (csrf_field(csrf)) input type="hidden" name="decision" value="reject";
                input type="text" name="reason" placeholder="reason" maxlength="500";
                button.danger type="submit" class="reject" { "Reject" }
            }
        }
        @if current == SubscriptionState::Approved {
            form.inline method="post" action=(action) data-confirm="Revoke this subscription? Its keys stop working for the service." {
                (csrf_field(csrf)) input type="hidden" name="decision" value="revoke";
                button.danger type="submit" class="revoke" { "Revoke" }
            }
        }
    }
}

#[derive(Deserialize)]
struct DecisionForm {
    /// Missing is as wrong as mistyped: 403, not a parse error.
    #[serde(default)]
    csrf: String,
    decision: String,
    #[serde(default)]
    reason: String,
}

async fn decide(
    State(portal): State<Shared>,
    session: AdminSession,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Result<Redirect, PortalError> {
    session.session.check_csrf(&form.csrf)?;
    let decision = match form.decision.as_str() {
        "approve" => SubscriptionState::Approved,
        "reject" => SubscriptionState::Rejected,
        "revoke" => SubscriptionState::Revoked,
        other => {
            return Err(PortalError::BadRequest(format!("{other:?} is not a decision: approve, reject or revoke")));
        }
    };
    if form.reason.len() > 500 {
        return Err(PortalError::BadRequest("a reason is at most 500 characters".into()));
    }
    portal.admin.decide_subscription(&session.token, &id, decision, form.reason.trim()).await?;
    Ok(Redirect::to("/console/subscriptions"))
}

async fn limits(State(portal): State<Shared>, session: AdminSession) -> Markup {
    let state = portal.raft.local_state();
    let now = crate::clock::unix_ms();
    let body = html! {
        p.muted { "Leased: the units nodes hold for the open window, an upper bound of what was admitted (units a node did not use return when the window closes)." }
        @for limit in state.limits() {
            section.card id={ "limit-" (limit.name) } {
                h2 { (limit.name) " " span.muted { (team(&state, &limit.team_id)) } }
                p { (limit.amount) " " (unit_name(limit.unit)) " per " (window_name(limit.window)) @if limit.global { " · global" } }
                table {
                    thead { tr { th { "Bucket" } th { "Window" } th { "Leased" } th { "Of the limit" } } }
                    tbody {
                        @for w in state.quota_windows().filter(|w| w.limit_id == id_of(&limit.meta) && w.window_end_ms > now) {
                            tr {
                                td { code { (if w.bucket.is_empty() { "—" } else { &w.bucket }) } }
                                td { (when(w.window_start_ms)) " – " (when(w.window_end_ms)) }
                                td { (w.granted) }
                                td { (percent(w.granted, limit.amount)) }
                            }
                        }
                    }
                }
            }
        }
    };
    shell(&session, "/console/limits", "Limits and budgets", body)
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 { "—".into() } else { format!("{:.0}%", part as f64 * 100.0 / whole as f64) }
}

fn unit_name(unit: i32) -> &'static str {
    use tollgate_proto::config::v1::LimitUnit;
    match LimitUnit::try_from(unit).unwrap_or_default() {
        LimitUnit::Requests => "requests",
        LimitUnit::InputTokens => "input tokens",
        LimitUnit::OutputTokens => "output tokens",
        LimitUnit::TotalTokens => "tokens",
        LimitUnit::CostMicros => "micro-dollars",
        LimitUnit::Unspecified => "units",
    }
}

fn window_name(window: i32) -> &'static str {
    use tollgate_proto::config::v1::LimitWindow;
    match LimitWindow::try_from(window).unwrap_or_default() {
        LimitWindow::Second => "second",
        LimitWindow::Minute => "minute",
        LimitWindow::Hour => "hour",
        LimitWindow::Day => "day",
        LimitWindow::Month => "month",
        LimitWindow::Unspecified => "window",
    }
}

#[derive(Deserialize)]
struct SpanQuery {
    #[serde(default)]
    span: Span,
}

async fn usage(State(portal): State<Shared>, session: AdminSession, Query(q): Query<SpanQuery>) -> Markup {
    let state = portal.raft.local_state();
    let now = crate::clock::unix_ms();
    let by_service = super::usage::breakdown(&state, "service", "", q.span, now);
    let by_model = super::usage::breakdown(&state, "model", "", q.span, now);
    let by_consumer = super::usage::breakdown(&state, "consumer", "", q.span, now);
    let body = html! {
        (span_switch("/console/usage", q.span))
        (usage_charts("service", "per service", &by_service))
        (usage_charts("model", "per model", &by_model))
        (usage_charts("consumer", "per consumer", &by_consumer))
    };
    shell(&session, "/console/usage", "Usage and cost", body)
}

async fn audit(State(portal): State<Shared>, session: AdminSession) -> Markup {
    let state = portal.raft.local_state();
    let body = html! {
        p.muted { "The newest 200 entries; " code { "tollgate ctl audit" } " filters and exports them." }
        table id="audit" {
            thead { tr { th { "When" } th { "Who" } th { "Role" } th { "Call" } th { "What" } } }
            tbody {
                @for e in state.audit_entries().rev().take(200) {
                    tr {
                        td { (when(e.at_ms)) }
                        td { (e.actor) }
                        td { (role_name(AdminRole::try_from(e.actor_role).unwrap_or_default())) }
                        td { code { (e.rpc) } }
                        td { @if e.denied { (badge("denied")) " " (e.reason) } @else { (e.summary) } }
                    }
                }
            }
        }
    };
    shell(&session, "/console/audit", "Audit trail", body)
}

async fn cluster(State(portal): State<Shared>, session: AdminSession) -> Markup {
    let members = portal.raft.cluster_status().await;
    let leader_last =
        members.iter().filter_map(|m| m.report.as_ref().ok()).map(|r| r.last_log_index).max().unwrap_or(0);
    let body = html! {
        table id="members" {
            thead { tr { th { "Node" } th { "Address" } th { "Voter" } th { "Role" } th { "Term" } th { "Last log" } th { "Committed" } th { "Applied" } th { "Serving" } th { "Lag" } } }
            tbody {
                @for m in &members {
                    tr {
                        td { (m.node_id) }
                        td { code { (m.addr) } }
                        td { @if m.voter { "yes" } @else { "learner" } }
                        @match &m.report {
                            Ok(r) => {
                                td { (badge(&r.role)) }
                                td { (r.current_term) }
                                td { (r.last_log_index) }
                                td { (r.committed_index) }
                                td { (r.applied_index) }
                                td { (r.data_plane_index) }
                                td { (leader_last.saturating_sub(r.applied_index)) }
                            }
                            Err(why) => { td colspan="7" { span.error { "unreachable: " (why) } } }
                        }
                    }
                }
            }
        }
    };
    shell(&session, "/console/cluster", "Cluster", body)
}
