//! The web console and developer portal over plain HTTP (the browser flow
//! is `browser.rs`): who may reach which side, CSRF, self-service and its
//! limits, the reference rendered from OpenAPI, and pages that never show
//! a secret.

mod common;

use std::net::SocketAddr;

use common::web::{Api, Governance, Web, csrf_of, governance, text};
use common::*;
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{AdminRole, SubscriptionMode, SubscriptionState};

/// Operations, parameters, a request body with an example, and a schema
/// whose description tries to inject markup.
const OPENAPI: &str = r#"openapi: 3.0.3
info: {title: Orders API, version: '1', description: Orders of the shop}
paths:
  /orders/{id}:
    get:
      summary: Fetch one order
      parameters:
        - {name: id, in: path, required: true, schema: {type: string}, description: the order id}
        - {name: expand, in: query, schema: {type: boolean}}
      responses:
        '200':
          description: the order
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Order'}
              example: {id: o-1, total: 12.5}
  /orders:
    post:
      summary: Place an order
      requestBody:
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Order'}
      responses:
        '201': {description: placed}
components:
  schemas:
    Order:
      type: object
      description: "<script>alert(1)</script> an order"
      required: [id]
      properties:
        id: {type: string}
        total: {type: number, format: double}
"#;

struct Shop {
    node: tollgate_node::Node,
    admin: Admin,
    gov: Governance,
    key: String,
    other_key: String,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

/// `orders`, published with an OpenAPI document and subscriptions that need
/// approval; `internal`, a draft only; consumers `shop` and `other` with a key each.
async fn shop() -> Shop {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = Upstream::start("orders").await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut gov = governance(node.admin_addr, TOKEN).await;
    for (name, path, publish) in [("orders", "/orders", true), ("internal", "/internal", false)] {
        let api =
            Api { name, path, upstream: upstream.addr, mode: SubscriptionMode::Approval, openapi: OPENAPI, publish };
        api.create(&mut admin, &mut gov).await;
    }
    let (_, key) = consumer_with_key(&mut admin, "shop").await;
    let (_, other_key) = consumer_with_key(&mut admin, "other").await;
    Shop { node, admin, gov, key, other_key, _upstream: upstream, _dir: dir }
}

async fn admin_token(gov: &mut Governance, name: &str, role: AdminRole) -> String {
    let request = CreateAdminTokenRequest { name: name.into(), role: role as i32, ..Default::default() };
    gov.create_admin_token(request).await.unwrap().into_inner().plaintext
}

async fn portal_signed_in(addr: SocketAddr, key: &str) -> Web {
    let mut web = Web::new(addr);
    let reply = web.post("/portal/signin", &[("secret", key)]).await;
    assert_eq!(reply.status, 303, "{}", text(&reply));
    assert_eq!(reply.headers["location"], "/portal");
    web
}

async fn console_signed_in(addr: SocketAddr, token: &str) -> Web {
    let mut web = Web::new(addr);
    let reply = web.post("/console/signin", &[("secret", token)]).await;
    assert_eq!(reply.status, 303, "{}", text(&reply));
    web
}

fn subscription_of(state: &[tollgate_proto::config::v1::Subscription], consumer: &str) -> Option<SubscriptionState> {
    state.iter().find(|s| s.consumer_id == consumer).map(|s| SubscriptionState::try_from(s.state).unwrap())
}

async fn subscriptions(admin: &mut Admin) -> Vec<tollgate_proto::config::v1::Subscription> {
    use prost::Message;
    let listed = admin
        .list_entities(ListEntitiesRequest { kind: "subscription".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    listed.entities.iter().map(|e| tollgate_proto::config::v1::Subscription::decode(e.as_slice()).unwrap()).collect()
}

#[tokio::test]
async fn a_consumer_reaches_only_the_portal_and_an_admin_only_the_console() {
    let Shop { node, key, _upstream, _dir, .. } = shop().await;
    let console = node.console_addr;

    // Signed out, every page sends to its side's sign-in.
    let mut anonymous = Web::new(console);
    for (path, to) in
        [("/portal", "/portal/signin"), ("/portal/keys", "/portal/signin"), ("/console", "/console/signin")]
    {
        let reply = anonymous.get(path).await;
        assert_eq!((reply.status.as_u16(), reply.headers["location"].to_str().unwrap()), (303, to), "{path}");
    }

    // A key opens the portal, and its cookie is scoped to it.
    let mut web = Web::new(console);
    let reply = web.post("/portal/signin", &[("secret", &key)]).await;
    let cookie = reply.headers["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/portal"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let (catalog, _) = web.page("/portal").await;
    assert!(catalog.contains("orders"), "{catalog}");
    assert!(!catalog.contains("internal"), "a service with only a draft is not in the catalog");
    // ...and not the console: the portal session stands for no admin.
    let reply = web.get("/console").await;
    assert_eq!((reply.status.as_u16(), reply.headers["location"].to_str().unwrap()), (303, "/console/signin"));
    for path in ["/console/subscriptions", "/console/audit", "/console/cluster"] {
        assert_eq!(web.get(path).await.status, 303, "{path}");
    }
    // A consumer's key is no admin token, nor the reverse.
    let reply = Web::new(console).post("/console/signin", &[("secret", &key)]).await;
    assert_eq!(reply.status, 401);
    let reply = Web::new(console).post("/portal/signin", &[("secret", TOKEN)]).await;
    assert_eq!(reply.status, 401);
    // A made-up key.
    let forged = format!("tg_{}_{}", "0".repeat(16), "a".repeat(64));
    assert_eq!(Web::new(console).post("/portal/signin", &[("secret", &forged)]).await.status, 401);
    node.shutdown().await;
}

#[tokio::test]
async fn a_viewer_sees_the_console_but_cannot_approve() {
    let Shop { node, mut admin, mut gov, key, _upstream, _dir, .. } = shop().await;
    let console = node.console_addr;
    let mut portal = portal_signed_in(console, &key).await;
    let (_, csrf) = portal.page("/portal/apis/orders").await;
    assert_eq!(portal.post("/portal/apis/orders/subscribe", &[("csrf", &csrf)]).await.status, 303);
    let shop_id = admin.get_consumer(GetRequest { id_or_name: "shop".into(), stale: false }).await.unwrap();
    let shop_id = shop_id.into_inner().meta.unwrap().id;
    let subs = subscriptions(&mut admin).await;
    assert_eq!(subscription_of(&subs, &shop_id), Some(SubscriptionState::Pending));
    let sub_id = subs[0].meta.as_ref().unwrap().id.clone();

    let viewer = admin_token(&mut gov, "auditor", AdminRole::Viewer).await;
    let mut web = console_signed_in(console, &viewer).await;
    let (page, csrf) = web.page("/console/subscriptions").await;
    assert!(page.contains("shop") && page.contains("pending"), "{page}");
    assert!(!page.contains("Approve"), "a viewer is offered no decision");
    // Sent anyway, the admin API refuses it, and the subscription stays pending.
    let path = format!("/console/subscriptions/{sub_id}/decide");
    let reply = web.post(&path, &[("csrf", &csrf), ("decision", "approve")]).await;
    assert_eq!(reply.status, 403, "{}", text(&reply));
    assert!(text(&reply).contains("viewer"), "{}", text(&reply));
    assert_eq!(subscription_of(&subscriptions(&mut admin).await, &shop_id), Some(SubscriptionState::Pending));
    // Every page of the console reads for a viewer.
    for path in ["", "/services", "/routes", "/consumers", "/limits", "/usage", "/audit", "/cluster"] {
        web.page(&format!("/console{path}")).await;
    }
    // The refusal is in the audit trail, under the viewer's name.
    eventually("the refusal reaches the trail", async || {
        let entries = gov
            .list_audit(ListAuditRequest { actor: "auditor".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .entries;
        entries.iter().any(|e| e.denied && e.rpc == "DecideSubscription")
    })
    .await;

    // An admin approves from the console; the trail names the admin's token.
    let approver = admin_token(&mut gov, "approver", AdminRole::Admin).await;
    let mut web = console_signed_in(console, &approver).await;
    let (_, csrf) = web.page("/console/subscriptions").await;
    let reply = web.post(&path, &[("csrf", &csrf), ("decision", "approve")]).await;
    assert_eq!(reply.status, 303, "{}", text(&reply));
    assert_eq!(subscription_of(&subscriptions(&mut admin).await, &shop_id), Some(SubscriptionState::Approved));
    let trail = gov.list_audit(ListAuditRequest { actor: "approver".into(), ..Default::default() }).await.unwrap();
    assert!(trail.into_inner().entries.iter().any(|e| e.rpc == "DecideSubscription" && !e.denied));
    let reply = get(node.proxy_addr, "/orders/x", &[("authorization", &format!("Bearer {key}"))]).await;
    assert_eq!(reply.status, 200, "the approved key works through the proxy");
    node.shutdown().await;
}

#[tokio::test]
async fn forms_without_the_sessions_csrf_token_or_from_another_site_change_nothing() {
    let Shop { node, mut admin, key, _upstream, _dir, .. } = shop().await;
    let console = node.console_addr;
    let mut web = portal_signed_in(console, &key).await;
    let (_, csrf) = web.page("/portal/keys").await;
    let keys_before = admin.list_api_keys(ListApiKeysRequest::default()).await.unwrap().into_inner().api_keys.len();

    let wrong = "0".repeat(64);
    for form in [vec![("name", "x")], vec![("csrf", wrong.as_str()), ("name", "x")], vec![("csrf", ""), ("name", "x")]]
    {
        let reply = web.post("/portal/keys", &form).await;
        assert_eq!(reply.status, 403, "{form:?}: {}", text(&reply));
    }
    // The right token from another origin, or a cross-site fetch.
    let form = [("csrf", csrf.as_str()), ("name", "x")];
    let reply = web.post_with("/portal/keys", &form, &[("origin", "http://evil.example")]).await;
    assert_eq!(reply.status, 403);
    let reply = web.post_with("/portal/keys", &form, &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(reply.status, 403);
    let reply = web.post("/portal/apis/orders/subscribe", &[("csrf", &wrong)]).await;
    assert_eq!(reply.status, 403);
    // Another session's token does not do either.
    let mut second = portal_signed_in(console, &key).await;
    let (_, second_csrf) = second.page("/portal/keys").await;
    assert_ne!(second_csrf, csrf);
    assert_eq!(web.post("/portal/keys", &[("csrf", &second_csrf), ("name", "x")]).await.status, 403);
    let keys_after = admin.list_api_keys(ListApiKeysRequest::default()).await.unwrap().into_inner().api_keys.len();
    assert_eq!(keys_before, keys_after, "no refused form made a key");
    assert!(subscriptions(&mut admin).await.is_empty(), "no refused form subscribed");

    // The console too, sign-out included.
    let mut console_web = console_signed_in(console, TOKEN).await;
    let (_, console_csrf) = console_web.page("/console").await;
    let reply = console_web.post("/console/signout", &[("csrf", &wrong)]).await;
    assert_eq!(reply.status, 403);
    assert_eq!(console_web.get("/console").await.status, 200, "still signed in");
    let reply = console_web.post("/console/signout", &[("csrf", &console_csrf)]).await;
    assert_eq!(reply.status, 303);
    assert_eq!(console_web.get("/console").await.status, 303, "signed out");
    node.shutdown().await;
}

#[tokio::test]
async fn a_consumer_manages_its_own_keys_and_no_one_elses() {
    let Shop { node, mut admin, key, other_key, _upstream, _dir, .. } = shop().await;
    let console = node.console_addr;
    let mut web = portal_signed_in(console, &key).await;
    let (_, csrf) = web.page("/portal/keys").await;
    let reply = web.post("/portal/keys", &[("csrf", &csrf), ("name", "ci")]).await;
    assert_eq!(reply.status, 200, "{}", text(&reply));
    let page = text(&reply);
    let start = page.find("id=\"new-key\">").unwrap() + "id=\"new-key\">".len();
    let plaintext = page[start..start + page[start..].find('<').unwrap()].to_string();
    assert!(plaintext.starts_with("tg_"), "{plaintext}");
    assert_eq!(reply.headers["cache-control"], "no-store");
    // Shown once: the list never shows it again.
    let (list, _) = web.page("/portal/keys").await;
    assert!(!list.contains(&plaintext));
    assert!(list.contains("ci"));

    // The new key signs in and is the same consumer's.
    let mut with_new = portal_signed_in(console, &plaintext).await;
    let (new_list, new_csrf) = with_new.page("/portal/keys").await;
    assert!(new_list.contains("(this session)"));

    // Another consumer's key cannot be deleted by id.
    let other_id = other_key.split('_').nth(1).unwrap();
    let reply = web.post(&format!("/portal/keys/{other_id}/delete"), &[("csrf", &csrf)]).await;
    assert_eq!(reply.status, 403, "{}", text(&reply));
    assert!(admin.get_api_key(GetRequest { id_or_name: other_id.into(), stale: false }).await.is_ok());

    // Deleting the key of a session ends that session at its next request.
    let new_id = plaintext.split('_').nth(1).unwrap();
    let reply = web.post(&format!("/portal/keys/{new_id}/delete"), &[("csrf", &csrf)]).await;
    assert_eq!(reply.status, 303);
    assert_eq!(with_new.get("/portal/keys").await.status, 303);
    let _ = new_csrf;
    let reply = get(node.proxy_addr, "/orders/x", &[("authorization", &format!("Bearer {plaintext}"))]).await;
    assert_eq!(reply.status, 401, "a deleted key opens nothing");

    // Drafts are not offered, even by name.
    assert_eq!(web.get("/portal/apis/internal").await.status, 404);
    assert_eq!(web.get("/portal/apis/internal/versions/v1").await.status, 404);
    assert_eq!(web.post("/portal/apis/internal/subscribe", &[("csrf", &csrf)]).await.status, 404);
    node.shutdown().await;
}

#[tokio::test]
async fn the_reference_renders_the_openapi_document_and_escapes_it() {
    let Shop { node, key, _upstream, _dir, .. } = shop().await;
    let mut web = portal_signed_in(node.console_addr, &key).await;
    let (page, _) = web.page("/portal/apis/orders/versions/v1").await;
    for expected in [
        "Orders API",
        "/orders/{id}",
        "Fetch one order",
        "Place an order",
        "the order id",
        "expand",
        "boolean",
        "href=\"#schema-Order\"",
        "id=\"schema-Order\"",
        "double",
        "&quot;total&quot;: 12.5",
    ] {
        assert!(page.contains(expected), "{expected:?} missing from the reference: {page}");
    }
    assert!(!page.contains("<script>alert"), "a document's text is escaped");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    node.shutdown().await;
}

#[tokio::test]
async fn no_page_shows_a_secret() {
    let Shop { node, mut gov, key, _upstream, _dir, .. } = shop().await;
    let console = node.console_addr;
    let operator_like = admin_token(&mut gov, "watcher", AdminRole::Viewer).await;
    let mut web = console_signed_in(console, TOKEN).await;
    let mut pages = String::new();
    for path in ["", "/services", "/routes", "/consumers", "/subscriptions", "/limits", "/usage", "/audit", "/cluster"]
    {
        pages += &web.page(&format!("/console{path}")).await.0;
    }
    let mut portal = portal_signed_in(console, &key).await;
    for path in ["/portal", "/portal/apis/orders", "/portal/keys", "/portal/usage"] {
        pages += &portal.page(path).await.0;
    }
    let secret_of = |token: &str| token.rsplit('_').next().unwrap().to_string();
    for secret in [TOKEN.to_string(), secret_of(&key), secret_of(&operator_like)] {
        assert!(!pages.contains(&secret), "a page shows a secret");
    }
    // Nor a stored hash of one.
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(secret_of(&key).as_bytes()));
    assert!(!pages.contains(&hash));
    assert!(csrf_of(&pages).is_some());
    node.shutdown().await;
}

#[tokio::test]
async fn a_consumer_cancels_its_subscription_and_its_changes_are_throttled() {
    let Shop { node, mut admin, key, _upstream, _dir, .. } = shop().await;
    let shop_id = admin.get_consumer(GetRequest { id_or_name: "shop".into(), stale: false }).await.unwrap();
    let shop_id = shop_id.into_inner().meta.unwrap().id;
    let mut web = portal_signed_in(node.console_addr, &key).await;
    let (_, csrf) = web.page("/portal/apis/orders").await;
    assert_eq!(web.post("/portal/apis/orders/subscribe", &[("csrf", &csrf)]).await.status, 303);
    let (page, _) = web.page("/portal/apis/orders").await;
    assert!(page.contains("id=\"cancel\""), "a pending subscription can be cancelled");
    assert_eq!(web.post("/portal/apis/orders/cancel", &[("csrf", &csrf)]).await.status, 303);
    assert_eq!(subscription_of(&subscriptions(&mut admin).await, &shop_id), Some(SubscriptionState::Revoked));
    // Asking again goes to a person; thirty changes a minute, then 429.
    let mut statuses = Vec::new();
    for i in 0..32 {
        let path = if i % 2 == 0 { "/portal/apis/orders/subscribe" } else { "/portal/apis/orders/cancel" };
        statuses.push(web.post(path, &[("csrf", &csrf)]).await.status.as_u16());
    }
    // Two changes before the loop, 28 in it: the 31st is refused.
    assert!(statuses[..28].iter().all(|s| *s == 303), "{statuses:?}");
    assert_eq!(statuses[28], 429, "{statuses:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let forged = format!("tg_{}_{}", "0".repeat(16), "a".repeat(64));
    let mut statuses = Vec::new();
    for _ in 0..22 {
        statuses.push(Web::new(node.console_addr).post("/portal/signin", &[("secret", &forged)]).await.status.as_u16());
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses[21], 429);
    // A good token from the same address waits too: the throttle does not tell which is which.
    let reply = Web::new(node.console_addr).post("/console/signin", &[("secret", TOKEN)]).await;
    assert_eq!(reply.status, 429);
    node.shutdown().await;
}
