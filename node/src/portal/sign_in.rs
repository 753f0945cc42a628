//! Signing in and out, the same way on both sides: the portal takes one of
//! the consumer's API keys, the console an admin token. What is typed is
//! checked against the replicated state and never stored beyond this
//! node's memory.

use axum::Form;
use axum::Router;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{CsrfForm, Side, Who, consumer_of_key, same_origin};
use super::{PortalError, Shared, page};

#[derive(Deserialize)]
struct Credential {
    #[serde(default)]
    secret: String,
}

pub fn routes(side: Side) -> Router<Shared> {
    Router::new()
        .route(
            side.sign_in(),
            get(move || async move { form(side, None) })
                .post(move |state, client, headers, credential| sign_in(side, state, client, headers, credential)),
        )
        .route(
            &format!("{}/signout", side.path()),
            post(move |state, headers, csrf| sign_out(side, state, headers, csrf)),
        )
}

fn form(side: Side, error: Option<&str>) -> Markup {
    let (title, intro, label) = match side {
        Side::Portal => ("Developer portal", "Sign in with one of your API keys.", "API key"),
        Side::Console => {
            ("Tollgate console", "Sign in with an admin token (tollgate ctl admin token create).", "Admin token")
        }
    };
    page::bare(
        "Sign in",
        html! {
            h1 { (title) }
            p { (intro) }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form method="post" action=(side.sign_in()) {
                label { (label) " " input type="password" name="secret" id="secret" autocomplete="off" required; }
                " " button type="submit" id="signin" { "Sign in" }
            }
        },
    )
}

/// Who `secret` makes the person on `side`, if anyone.
fn identify(portal: &Shared, side: Side, secret: &str) -> Option<Who> {
    let secret = secret.trim();
    match side {
        Side::Portal => consumer_of_key(&portal.raft.local_state(), secret)
            .map(|(consumer_id, key_id)| Who::Consumer { consumer_id, key_id }),
        Side::Console => portal.access.caller_of(secret, "console").ok().map(|_| Who::Admin { token: secret.into() }),
    }
}

/// Failed sign-ins one client address may make a minute on this node.
const FAILURES_PER_MINUTE: u32 = 20;

async fn sign_in(
    side: Side,
    State(portal): State<Shared>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<Credential>,
) -> Response {
    if let Err(error) = same_origin(&Method::POST, &headers) {
        return error.into_response();
    }
    let client = client.ip().to_string();
    if !portal.throttles.sign_ins.admit_check(&client, FAILURES_PER_MINUTE) {
        let message = "too many failed sign-ins from this address: wait a minute";
        return (StatusCode::TOO_MANY_REQUESTS, self::form(side, Some(message))).into_response();
    }
    let Some(who) = identify(&portal, side, &form.secret) else {
        portal.throttles.sign_ins.admit(&client, FAILURES_PER_MINUTE);
        let what = match side {
            Side::Portal => "That key is not valid: it may be mistyped, disabled, expired or deleted.",
            Side::Console => "That admin token is not valid: it may be mistyped, revoked or expired.",
        };
        return (StatusCode::UNAUTHORIZED, self::form(side, Some(what))).into_response();
    };
    let cookie = portal.sessions.start(side, who);
    ([(header::SET_COOKIE, cookie)], Redirect::to(side.path())).into_response()
}

async fn sign_out(
    side: Side,
    State(portal): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    same_origin(&Method::POST, &headers)?;
    let session = portal.sessions.of(side, &headers).ok_or(PortalError::SignIn(side.sign_in()))?;
    session.check_csrf(&form.csrf)?;
    let cookie = portal.sessions.end(side, &headers);
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(side.sign_in())).into_response())
}
