//! Governance (DESIGN §7) against a running node: admin roles and team
//! ownership, the audit trail, API versions and their effect on live
//! requests, OpenAPI validation, publish policies and subscriptions.

mod common;

use std::net::SocketAddr;

use common::*;
use prost::Message;
use tollgate_proto::admin::v1::governance_service_client::GovernanceServiceClient;
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{
    AdminRole, ApiKey, AuditEntry, AuthMode, Limit, LimitScope, LimitUnit, LimitWindow, PathMatch, PublishPolicy,
    Service, SubscriptionMode, SubscriptionState, Target, Team, VersionState, Versioning,
};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Governance = GovernanceServiceClient<InterceptedService<Channel, Bearer>>;

async fn governance(addr: SocketAddr, token: &str) -> Governance {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    GovernanceServiceClient::with_interceptor(channel, Bearer(token.to_string()))
}

async fn put<M: Message + Default>(admin: &mut Admin, kind: &str, entity: &M) -> M {
    let request =
        PutEntityRequest { kind: kind.into(), entity: entity.encode_to_vec(), create: true, id_or_name: String::new() };
    M::decode(admin.put_entity(request).await.unwrap().into_inner().entity.as_slice()).unwrap()
}

fn id(meta: &Option<tollgate_proto::config::v1::Meta>) -> String {
    meta.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

async fn token(gov: &mut Governance, name: &str, role: AdminRole, team: &str) -> String {
    let request = CreateAdminTokenRequest { name: name.into(), role: role as i32, team: team.into(), ttl_seconds: 0 };
    let created = gov.create_admin_token(request).await.unwrap().into_inner();
    let token = created.token.unwrap();
    assert!(token.secret_sha256.is_empty(), "the hash is never returned");
    assert!(created.plaintext.starts_with("tgadm_"));
    created.plaintext
}

fn service(name: &str, team_id: &str, upstream: SocketAddr) -> Service {
    Service {
        name: name.into(),
        team_id: team_id.into(),
        targets: vec![Target { host: "127.0.0.1".into(), port: upstream.port().into(), weight: 1 }],
        ..Default::default()
    }
}

#[tokio::test]
async fn roles_and_teams_decide_who_changes_what_and_the_trail_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = Upstream::start("up").await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut root = governance(node.admin_addr, TOKEN).await;
    let payments = put(&mut admin, "team", &Team { name: "payments".into(), ..Default::default() }).await;
    let search = put(&mut admin, "team", &Team { name: "search".into(), ..Default::default() }).await;
    let (payments_id, search_id) = (id(&payments.meta), id(&search.meta));

    let pay_token = token(&mut root, "pay-ci", AdminRole::Operator, "payments").await;
    let search_token = token(&mut root, "search-ci", AdminRole::Operator, "search").await;
    let viewer_token = token(&mut root, "auditor", AdminRole::Viewer, "").await;
    let mut pay = admin_client(node.admin_addr, &pay_token).await;
    let mut other = admin_client(node.admin_addr, &search_token).await;
    let mut viewer = admin_client(node.admin_addr, &viewer_token).await;

    // An operator without a team is refused at creation.
    let no_team = CreateAdminTokenRequest { name: "x".into(), role: AdminRole::Operator as i32, ..Default::default() };
    assert_eq!(root.create_admin_token(no_team).await.unwrap_err().code(), Code::InvalidArgument);

    // Identity.
    let me = governance(node.admin_addr, &pay_token).await.who_am_i(WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (me.name.as_str(), me.role, me.team_id.as_str()),
        ("pay-ci", AdminRole::Operator as i32, payments_id.as_str())
    );

    // A viewer reads and changes nothing.
    viewer.list_services(ListRequest::default()).await.unwrap();
    let denied = viewer.create_service(service("v", "", upstream.addr)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("viewer"), "{}", denied.message());

    // An operator changes what its team owns, only.
    let orders = pay.create_service(service("orders", &payments_id, upstream.addr)).await.unwrap().into_inner();
    for (what, result) in [
        ("another team's", pay.create_service(service("s2", &search_id, upstream.addr)).await.map(|_| ())),
        ("no team's", pay.create_service(service("s3", "", upstream.addr)).await.map(|_| ())),
        ("update of another team's", other.update_service(orders.clone()).await.map(|_| ())),
        (
            "delete of another team's",
            other.delete_service(DeleteRequest { id_or_name: "orders".into() }).await.map(|_| ()),
        ),
        (
            "takeover of another team's",
            other.update_service(Service { team_id: search_id.clone(), ..orders.clone() }).await.map(|_| ()),
        ),
    ] {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    }
    // Cluster-wide settings are an admin's.
    let mut pay_ai = tollgate_proto::admin::v1::ai_service_client::AiServiceClient::with_interceptor(
        Channel::from_shared(format!("http://{}", node.admin_addr)).unwrap().connect().await.unwrap(),
        Bearer(pay_token.clone()),
    );
    let provider = tollgate_proto::config::v1::Provider { name: "p".into(), ..Default::default() };
    assert_eq!(pay_ai.create_provider(provider).await.unwrap_err().code(), Code::PermissionDenied);
    let mut pay_gov = governance(node.admin_addr, &pay_token).await;
    let escalate = CreateAdminTokenRequest { name: "me2".into(), role: AdminRole::Admin as i32, ..Default::default() };
    assert_eq!(pay_gov.create_admin_token(escalate).await.unwrap_err().code(), Code::PermissionDenied);
    let global = Limit {
        name: "all".into(),
        unit: LimitUnit::Requests.into(),
        amount: 5,
        window: LimitWindow::Minute.into(),
        scope: LimitScope::Route.into(),
        global: true,
        team_id: payments_id.clone(),
        ..Default::default()
    };
    let request = PutEntityRequest {
        kind: "limit".into(),
        entity: global.encode_to_vec(),
        create: true,
        id_or_name: String::new(),
    };
    assert_eq!(pay.put_entity(request).await.unwrap_err().code(), Code::PermissionDenied);

    // Its own consumers and their keys.
    let consumer = tollgate_proto::config::v1::Consumer {
        name: "shop".into(),
        team_id: payments_id.clone(),
        ..Default::default()
    };
    pay.create_consumer(consumer).await.unwrap();
    let key = pay
        .create_api_key(CreateApiKeyRequest { consumer: "shop".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let key_id = id(&key.api_key.unwrap().meta);
    let steal = UpdateApiKeyRequest { id: key_id.clone(), disabled: Some(true), ..Default::default() };
    assert_eq!(other.update_api_key(steal).await.unwrap_err().code(), Code::PermissionDenied);

    // A revoked token stops working at once.
    let revoked = root.revoke_admin_token(DeleteRequest { id_or_name: "search-ci".into() }).await.unwrap().into_inner();
    assert!(revoked.revoked);
    let status = other.list_services(ListRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // A made-up token of the right shape names no one.
    let forged = format!("tgadm_{}_{}", "0".repeat(16), "0".repeat(64));
    let mut forger = admin_client(node.admin_addr, &forged).await;
    assert_eq!(forger.list_services(ListRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);

    // The trail: every change, who made it and through which RPC; the
    // refusals too; no secret anywhere.
    let mut entries = Vec::new();
    eventually("the refusals are in the trail", async || {
        entries = root.list_audit(ListAuditRequest::default()).await.unwrap().into_inner().entries;
        entries.iter().filter(|e| e.denied).count() >= 8
    })
    .await;
    let created = entries.iter().find(|e| !e.denied && e.rpc == "CreateService").expect("the creation is recorded");
    assert_eq!(created.actor, "pay-ci");
    assert_eq!(created.actor_role, AdminRole::Operator as i32);
    assert_eq!(created.actor_team, payments_id);
    let change = &created.changes[0];
    assert_eq!((change.kind.as_str(), change.entity_name.as_str()), ("service", "orders"));
    assert!(change.before.is_none());
    let after = Service::decode(change.after.as_ref().unwrap().entity.as_slice()).unwrap();
    assert_eq!(after.targets, orders.targets);
    let viewer_refusal = entries.iter().find(|e| e.denied && e.actor == "auditor").expect("the viewer's attempt");
    assert_eq!(viewer_refusal.rpc, "CreateService");
    let takeover = entries.iter().find(|e| e.denied && e.actor == "search-ci" && e.rpc == "UpdateService");
    assert!(takeover.is_some_and(|e| e.reason.contains("payments")), "{takeover:?}");
    let key_entry = entries.iter().find(|e| e.rpc == "CreateApiKey" && !e.denied).unwrap();
    let key_image = ApiKey::decode(key_entry.changes[0].after.as_ref().unwrap().entity.as_slice()).unwrap();
    assert!(key_image.secret_sha256.is_empty(), "the key's hash is redacted");
    let token_entry = entries.iter().find(|e| e.rpc == "CreateAdminToken" && !e.denied).unwrap();
    assert_eq!(token_entry.actor, "bootstrap");
    let token_image = tollgate_proto::config::v1::AdminToken::decode(
        token_entry.changes[0].after.as_ref().unwrap().entity.as_slice(),
    )
    .unwrap();
    assert!(token_image.secret_sha256.is_empty(), "the token's hash is redacted");
    assert!(entries.windows(2).all(|w| w[0].at_ms >= w[1].at_ms), "newest first");

    // Filters.
    let by_actor = ListAuditRequest { actor: "pay-ci".into(), ..Default::default() };
    let mine = root.list_audit(by_actor).await.unwrap().into_inner().entries;
    assert!(!mine.is_empty() && mine.iter().all(|e| e.actor == "pay-ci"));
    let by_entity = ListAuditRequest { entity: "service/orders".into(), ..Default::default() };
    let of_orders = root.list_audit(by_entity).await.unwrap().into_inner().entries;
    assert!(of_orders.iter().all(|e| e.changes.iter().any(|c| c.entity_name == "orders")));
    assert!(of_orders.iter().any(|e| e.rpc == "CreateService"));
    // Viewers read the trail too.
    let mut viewer_gov = governance(node.admin_addr, &viewer_token).await;
    viewer_gov.list_audit(ListAuditRequest::default()).await.unwrap();
    node.shutdown().await;
}

/// A service with versions on `/orders`, keys for a consumer and a preview key.
struct Versioned {
    node: tollgate_node::Node,
    gov: Governance,
    key: String,
    preview: String,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

async fn versioned() -> Versioned {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = Upstream::start("orders").await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let versioning = Versioning { header: "api-version".into(), by_path: true, default_version: "v1".into() };
    let svc = Service { versioning: Some(versioning), ..service("orders", "", upstream.addr) };
    admin.create_service(svc).await.unwrap();
    admin.create_route(route("orders", "orders", PathMatch::Prefix, "/orders", AuthMode::ApiKey)).await.unwrap();
    let (_, key) = consumer_with_key(&mut admin, "shop").await;
    let preview = CreateApiKeyRequest { consumer: "shop".into(), preview: true, ..Default::default() };
    let preview = admin.create_api_key(preview).await.unwrap().into_inner().plaintext;
    let gov = governance(node.admin_addr, TOKEN).await;
    Versioned { node, gov, key, preview, _upstream: upstream, _dir: dir }
}

const OPENAPI: &str = "openapi: 3.0.3\ninfo: {title: Orders, version: '1'}\npaths:\n  /orders:\n    get:\n      responses:\n        '200': {description: the orders}\n";

async fn put_version(gov: &mut Governance, version: &str) -> tollgate_proto::config::v1::ApiVersion {
    let request = PutApiVersionRequest {
        service: "orders".into(),
        version: version.into(),
        openapi: OPENAPI.into(),
        ..Default::default()
    };
    gov.put_api_version(request).await.unwrap().into_inner()
}

async fn set_state(
    gov: &mut Governance,
    version: &str,
    state: VersionState,
    successor: &str,
    sunset: i64,
) -> Result<(), tonic::Status> {
    let request = SetApiVersionStateRequest {
        service: "orders".into(),
        version: version.into(),
        state: state as i32,
        successor: successor.into(),
        sunset_at_ms: sunset,
    };
    gov.set_api_version_state(request).await.map(|_| ())
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test]
async fn each_lifecycle_state_shows_on_live_requests() {
    let Versioned { node, mut gov, key, preview, _upstream, _dir } = versioned().await;
    let proxy = node.proxy_addr;
    let (key_auth, preview_auth) = (bearer(&key), bearer(&preview));

    // draft: not routable, except with a preview key.
    let draft = put_version(&mut gov, "v1").await;
    assert_eq!(draft.state, VersionState::Draft as i32);
    let reply = get(proxy, "/orders/list", &[("authorization", &key_auth)]).await;
    assert_eq!(reply.status, 404, "{:?}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "api_version_not_found");
    let reply = get(proxy, "/orders/list", &[("authorization", &preview_auth)]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);

    // published: served, no lifecycle headers.
    set_state(&mut gov, "v1", VersionState::Published, "", 0).await.unwrap();
    let reply = get(proxy, "/orders/list", &[("authorization", &key_auth)]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("deprecation").is_none());

    // By path (the segment goes upstream as it is), by header, by default.
    put_version(&mut gov, "v2").await;
    set_state(&mut gov, "v2", VersionState::Published, "", 0).await.unwrap();
    let reply = get(proxy, "/orders/v2/items", &[("authorization", &key_auth)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/orders/v2/items");
    let reply = get(proxy, "/orders/items", &[("authorization", &key_auth), ("api-version", "v2")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["headers"]["api-version"], "v2", "the header goes upstream");
    let reply = get(proxy, "/orders/items", &[("authorization", &key_auth), ("api-version", "v9")]).await;
    assert_eq!(reply.status, 404);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("v9"));

    // Transitions are checked: one step forward at a time.
    let skip = set_state(&mut gov, "v1", VersionState::Retired, "", 0).await.unwrap_err();
    assert_eq!(skip.code(), Code::FailedPrecondition, "{skip:?}");
    assert!(skip.message().contains("one step at a time"), "{}", skip.message());
    let unknown_successor = set_state(&mut gov, "v1", VersionState::Deprecated, "v7", 0).await.unwrap_err();
    assert_eq!(unknown_successor.code(), Code::InvalidArgument);

    // deprecated: served with Deprecation (RFC 9745), Sunset (RFC 8594) and Link.
    let sunset = 1_830_297_600_000; // 2028-01-01T00:00:00Z
    set_state(&mut gov, "v1", VersionState::Deprecated, "v2", sunset).await.unwrap();
    let reply = get(proxy, "/orders/v1/items?x=1", &[("authorization", &key_auth)]).await;
    assert_eq!(reply.status, 200);
    let header = |name: &str| reply.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    let deprecation = header("deprecation").expect("Deprecation header");
    let seconds: i64 = deprecation.strip_prefix('@').expect("an RFC 9651 date").parse().unwrap();
    assert!(seconds > 1_700_000_000, "{deprecation}");
    assert_eq!(header("sunset").as_deref(), Some("Sat, 01 Jan 2028 00:00:00 GMT"));
    assert_eq!(header("link").as_deref(), Some("</orders/v2/items>; rel=\"successor-version\""));
    let back = set_state(&mut gov, "v1", VersionState::Published, "", 0).await.unwrap_err();
    assert_eq!(back.code(), Code::FailedPrecondition);
    // The default version is v1: deprecated, named by nothing in the request.
    let reply = get(proxy, "/orders/items", &[("authorization", &key_auth)]).await;
    assert!(reply.headers.get("deprecation").is_some());
    assert!(reply.headers.get("link").unwrap().to_str().unwrap().contains("title=\"v2\""));

    // retired: 410 naming the successor, before anyone is authenticated.
    set_state(&mut gov, "v1", VersionState::Retired, "", 0).await.unwrap();
    for headers in [vec![("authorization", key_auth.as_str())], vec![]] {
        let reply = get(proxy, "/orders/v1/items", &headers).await;
        assert_eq!(reply.status, 410, "{:?}", reply.body);
        let body = reply.json();
        assert_eq!(body["error"]["code"], "api_version_retired");
        assert_eq!(body["error"]["successor"], "v2");
        assert_eq!(body["error"]["version"], "v1");
    }
    // A live version cannot be deleted; a retired one can.
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let versions = admin.list_entities(ListEntitiesRequest { kind: "api version".into(), stale: false }).await.unwrap();
    let versions: Vec<tollgate_proto::config::v1::ApiVersion> =
        versions.into_inner().entities.iter().map(|b| Message::decode(b.as_slice()).unwrap()).collect();
    let v2 = versions.iter().find(|v| v.version == "v2").unwrap();
    let refused =
        admin.delete_entity(DeleteEntityRequest { kind: "api version".into(), id_or_name: id(&v2.meta) }).await;
    assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
    node.shutdown().await;
}

#[tokio::test]
async fn a_draft_stays_hidden_from_keys_that_are_not_preview_keys_even_on_an_open_route() {
    let Versioned { node, mut gov, key, preview, _upstream, _dir } = versioned().await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    admin.create_route(route("open", "orders", PathMatch::Prefix, "/public", AuthMode::None)).await.unwrap();
    put_version(&mut gov, "v1").await;
    for auth in [None, Some(bearer(&key)), Some(bearer(&preview))] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let reply = get(node.proxy_addr, "/public/x", &headers).await;
        assert_eq!(reply.status, 404, "an open route checks no key, so no preview: {auth:?}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn invalid_openapi_documents_are_refused_with_the_validators_message() {
    let Versioned { node, mut gov, _upstream, _dir, .. } = versioned().await;
    for (document, expect) in [
        ("{\"openapi\": \"3.0.3\", \"paths\": {}}", "info"),
        (
            "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    get: {responses: {'200': {description: 1}}, parameters: [{name: q, in: cookiejar}]}\n",
            "paths",
        ),
        ("swagger: '2.0'\n", "openapi"),
        ("openapi: [", "neither JSON nor YAML"),
    ] {
        let request = PutApiVersionRequest {
            service: "orders".into(),
            version: "v1".into(),
            openapi: document.into(),
            ..Default::default()
        };
        let status = gov.put_api_version(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{document}: {status:?}");
        assert!(status.message().contains(expect), "{document}: {}", status.message());
    }
    put_version(&mut gov, "v1").await;
    node.shutdown().await;
}

#[tokio::test]
async fn publish_policies_refuse_with_every_rule_broken_now_and_on_later_changes() {
    let Versioned { node, mut gov, _upstream, _dir, .. } = versioned().await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    admin.create_route(route("open", "orders", PathMatch::Prefix, "/public", AuthMode::None)).await.unwrap();
    let strict = PublishPolicy {
        name: "strict".into(),
        require_auth: true,
        require_rate_limit: true,
        require_openapi: true,
        allowed_upstream_hosts: vec!["*.internal".into()],
        require_upstream_tls: true,
        ..Default::default()
    };
    let strict = put(&mut admin, "publish policy", &strict).await;
    let request = PutApiVersionRequest { service: "orders".into(), version: "v1".into(), ..Default::default() };
    gov.put_api_version(request).await.unwrap();
    let refused = set_state(&mut gov, "v1", VersionState::Published, "", 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let message = refused.message();
    for rule in [
        "authentication required",
        "rate limit required",
        "OpenAPI document required",
        "upstream hosts restricted",
        "upstream TLS required",
    ] {
        assert!(message.contains(rule), "{rule} missing from: {message}");
    }
    assert!(message.contains("route \"open\""), "{message}");

    // A policy that this service meets lets it publish…
    let mut lenient = strict.clone();
    lenient.allowed_upstream_hosts.clear();
    lenient.require_upstream_tls = false;
    lenient.require_rate_limit = false;
    let request = PutEntityRequest {
        kind: "publish policy".into(),
        entity: lenient.encode_to_vec(),
        create: false,
        id_or_name: "strict".into(),
    };
    admin.put_entity(request).await.unwrap();
    admin.delete_route(DeleteRequest { id_or_name: "open".into() }).await.unwrap();
    put_version(&mut gov, "v1").await;
    set_state(&mut gov, "v1", VersionState::Published, "", 0).await.unwrap();
    // …and holds it to the rules afterwards.
    let open = admin.create_route(route("open", "orders", PathMatch::Prefix, "/public", AuthMode::None)).await;
    let status = open.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("authentication required"));
    let strip = PutApiVersionRequest {
        service: "orders".into(),
        version: "v1".into(),
        openapi: String::new(),
        ..Default::default()
    };
    assert_eq!(gov.put_api_version(strip).await.unwrap_err().code(), Code::FailedPrecondition);
    node.shutdown().await;
}

#[tokio::test]
async fn a_key_works_only_while_its_consumers_subscription_is_approved() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = Upstream::start("up").await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut gov = governance(node.admin_addr, TOKEN).await;
    let svc = Service { subscription: SubscriptionMode::Approval as i32, ..service("billing", "", upstream.addr) };
    admin.create_service(svc).await.unwrap();
    admin.create_route(route("billing", "billing", PathMatch::Prefix, "/billing", AuthMode::ApiKey)).await.unwrap();
    let (_, key) = consumer_with_key(&mut admin, "shop").await;
    let auth = bearer(&key);
    let call = async || get(node.proxy_addr, "/billing/x", &[("authorization", &auth)]).await;

    let reply = call().await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["error"]["code"], "subscription_required");
    let sub = gov
        .subscribe(SubscribeRequest { consumer: "shop".into(), service: "billing".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sub.state, SubscriptionState::Pending as i32);
    assert_eq!(call().await.status, 403, "pending is not approved");
    let decide = |state: SubscriptionState| DecideSubscriptionRequest {
        id: id(&sub.meta),
        state: state as i32,
        reason: "ok".into(),
    };
    gov.decide_subscription(decide(SubscriptionState::Approved)).await.unwrap();
    let reply = call().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["headers"]["x-consumer-name"], "shop");
    gov.decide_subscription(decide(SubscriptionState::Revoked)).await.unwrap();
    assert_eq!(call().await.status, 403, "revoked at once");
    // Approving a revoked one straight away is not a step there is.
    let again = gov.decide_subscription(decide(SubscriptionState::Rejected)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    // Asking again starts over.
    let sub = gov
        .subscribe(SubscribeRequest { consumer: "shop".into(), service: "billing".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sub.state, SubscriptionState::Pending as i32);

    // An auto-approving service approves on subscription.
    let svc = Service { subscription: SubscriptionMode::AutoApprove as i32, ..service("search", "", upstream.addr) };
    admin.create_service(svc).await.unwrap();
    admin.create_route(route("search", "search", PathMatch::Prefix, "/search", AuthMode::ApiKey)).await.unwrap();
    assert_eq!(get(node.proxy_addr, "/search/x", &[("authorization", &auth)]).await.status, 403);
    let sub = gov
        .subscribe(SubscribeRequest { consumer: "shop".into(), service: "search".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sub.state, SubscriptionState::Approved as i32);
    assert_eq!(get(node.proxy_addr, "/search/x", &[("authorization", &auth)]).await.status, 200);

    // The trail names who decided.
    let entries = gov
        .list_audit(ListAuditRequest { entity: "subscription/".to_string() + &id(&sub.meta), ..Default::default() })
        .await;
    let entries: Vec<AuditEntry> = entries.unwrap().into_inner().entries;
    assert!(!entries.is_empty());
    node.shutdown().await;
}

#[tokio::test]
async fn teams_cannot_take_each_others_traffic_drafts_or_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = Upstream::start("up").await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut root = governance(node.admin_addr, TOKEN).await;
    let a = put(&mut admin, "team", &Team { name: "a".into(), ..Default::default() }).await;
    let b = put(&mut admin, "team", &Team { name: "b".into(), ..Default::default() }).await;
    let (a_id, b_id) = (id(&a.meta), id(&b.meta));
    let a_token = token(&mut root, "a-ci", AdminRole::Operator, "a").await;
    let b_token = token(&mut root, "b-ci", AdminRole::Operator, "b").await;
    let mut ops_a = admin_client(node.admin_addr, &a_token).await;
    let mut ops_b = admin_client(node.admin_addr, &b_token).await;
    let versioning = Versioning { default_version: "v1".into(), ..Default::default() };
    let svc_a = Service { versioning: Some(versioning), ..service("svc-a", &a_id, upstream.addr) };
    ops_a.create_service(svc_a).await.unwrap();
    ops_b.create_service(service("svc-b", &b_id, upstream.addr)).await.unwrap();
    let mut route_a = route("ra", "svc-a", PathMatch::Prefix, "/a", AuthMode::ApiKey);
    route_a.team_id = a_id.clone();
    ops_a.create_route(route_a).await.unwrap();

    // B may not add a route that could take A's requests, nor one to the AI gateway.
    let mut shadow = route("rb", "svc-b", PathMatch::Exact, "/a/login", AuthMode::None);
    shadow.team_id = b_id.clone();
    let status = ops_b.create_route(shadow.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("\"ra\""), "{}", status.message());
    // Nor one whose path only looks different: paths must be in normal form.
    shadow.paths[0].path = "/%61/login".into();
    assert_eq!(ops_b.create_route(shadow.clone()).await.unwrap_err().code(), Code::InvalidArgument);
    shadow.paths[0].path = "/b".into();
    ops_b.create_route(shadow).await.unwrap();
    // A route in the previous format (the backend in `service_id`) is
    // checked as it will be stored: to A's service, refused.
    let mut legacy = route("legacy", "", PathMatch::Prefix, "/legacy-b", AuthMode::None);
    legacy.team_id = b_id.clone();
    legacy.service_id = admin
        .get_service(GetRequest { id_or_name: "svc-a".into(), stale: false })
        .await
        .unwrap()
        .into_inner()
        .meta
        .unwrap()
        .id;
    assert_eq!(ops_b.create_route(legacy).await.unwrap_err().code(), Code::PermissionDenied);
    let mut ai = ai_route();
    ai.team_id = b_id.clone();
    assert_eq!(ops_b.create_route(ai).await.unwrap_err().code(), Code::PermissionDenied);

    // A version needs the service to say how requests pick one.
    let mut b_gov = governance(node.admin_addr, &b_token).await;
    let request = PutApiVersionRequest { service: "svc-b".into(), version: "v1".into(), ..Default::default() };
    assert_eq!(b_gov.put_api_version(request).await.unwrap_err().code(), Code::FailedPrecondition);

    // A draft of A's: A's preview key reaches it, B's does not.
    let mut a_gov = governance(node.admin_addr, &a_token).await;
    let request = PutApiVersionRequest { service: "svc-a".into(), version: "v1".into(), ..Default::default() };
    a_gov.put_api_version(request).await.unwrap();
    let preview_of = async |ops: &mut Admin, team: &str, name: &str| {
        let consumer =
            tollgate_proto::config::v1::Consumer { name: name.into(), team_id: team.into(), ..Default::default() };
        ops.create_consumer(consumer).await.unwrap();
        let key = CreateApiKeyRequest { consumer: name.into(), preview: true, ..Default::default() };
        bearer(&ops.create_api_key(key).await.unwrap().into_inner().plaintext)
    };
    let a_preview = preview_of(&mut ops_a, &a_id, "a-dev").await;
    let b_preview = preview_of(&mut ops_b, &b_id, "b-dev").await;
    assert_eq!(get(node.proxy_addr, "/a/x", &[("authorization", &a_preview)]).await.status, 200);
    assert_eq!(get(node.proxy_addr, "/a/x", &[("authorization", &b_preview)]).await.status, 404);
    assert_eq!(get(node.proxy_addr, "/a/x", &[]).await.status, 404, "not a 401 that tells a draft is there");
    let garbage = get(node.proxy_addr, "/a/x", &[("authorization", "Bearer tg_nonsense")]).await;
    assert_eq!(garbage.status, 404, "a bad key tells nothing either");
    // The version header is the gateway's to set: never a framing or credential header.
    let mut svc =
        admin.get_service(GetRequest { id_or_name: "svc-a".into(), stale: false }).await.unwrap().into_inner();
    svc.versioning =
        Some(Versioning { header: "content-length".into(), default_version: "v1".into(), ..Default::default() });
    assert_eq!(ops_a.update_service(svc).await.unwrap_err().code(), Code::InvalidArgument);

    // Subscriptions: B's consumer may ask A's auto-approving service, but
    // once revoked it asks a person again, and it cannot delete the record.
    let mut svc =
        admin.get_service(GetRequest { id_or_name: "svc-b".into(), stale: false }).await.unwrap().into_inner();
    svc.subscription = SubscriptionMode::AutoApprove as i32;
    ops_b.update_service(svc).await.unwrap();
    let mut a_consumer = governance(node.admin_addr, &a_token).await;
    let ask = SubscribeRequest { consumer: "a-dev".into(), service: "svc-b".into() };
    let sub = a_consumer.subscribe(ask.clone()).await.unwrap().into_inner();
    assert_eq!(sub.state, SubscriptionState::Approved as i32);
    let revoke = DecideSubscriptionRequest {
        id: id(&sub.meta),
        state: SubscriptionState::Revoked as i32,
        reason: "abuse".into(),
    };
    b_gov.decide_subscription(revoke).await.unwrap();
    let deleted =
        ops_a.delete_entity(DeleteEntityRequest { kind: "subscription".into(), id_or_name: id(&sub.meta) }).await;
    assert_eq!(deleted.unwrap_err().code(), Code::PermissionDenied);
    let again = a_consumer.subscribe(ask).await.unwrap().into_inner();
    assert_eq!(
        again.state,
        SubscriptionState::Pending as i32,
        "a revoked consumer is not approved again automatically"
    );
    let self_approve = DecideSubscriptionRequest {
        id: id(&sub.meta),
        state: SubscriptionState::Approved as i32,
        reason: String::new(),
    };
    assert_eq!(a_consumer.decide_subscription(self_approve).await.unwrap_err().code(), Code::PermissionDenied);

    // A token's name may not pose as the cluster's own actors.
    for name in ["bootstrap", "admin", "node-1"] {
        let request =
            CreateAdminTokenRequest { name: name.into(), role: AdminRole::Viewer as i32, ..Default::default() };
        assert_eq!(root.create_admin_token(request).await.unwrap_err().code(), Code::InvalidArgument, "{name}");
    }
    node.shutdown().await;
}

/// Every admin RPC, called by a viewer and by an operator over raw gRPC
/// (HTTP/2, an empty request): the access layer refuses exactly what the
/// role may not call, before the request is read.
#[tokio::test]
async fn every_rpc_is_refused_to_each_role_that_may_not_call_it() {
    use tollgate_node::admin::access::{Need, RULES};
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut root = governance(node.admin_addr, TOKEN).await;
    put(&mut admin, "team", &Team { name: "t".into(), ..Default::default() }).await;
    let viewer = token(&mut root, "v", AdminRole::Viewer, "").await;
    let operator = token(&mut root, "o", AdminRole::Operator, "t").await;
    let client = h2c_client();
    let call = async |rpc: &str, token: &str| {
        let request = http::Request::post(format!("http://{}/{rpc}", node.admin_addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(full(""))
            .unwrap();
        let reply = send(&client, request).await;
        let header = |name: &str| reply.headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (header("grpc-status"), header("grpc-message"))
    };
    let mut checked = 0;
    for (rpc, need) in RULES {
        for (role, token, allowed) in
            [("viewer", viewer.as_str(), *need == Need::Read), ("operator", operator.as_str(), *need != Need::Admin)]
        {
            let (status, message) = call(rpc, token).await;
            let refused_by_role = status == "7" && message.contains("needs");
            assert_eq!(refused_by_role, !allowed, "{role} on {rpc}: grpc-status {status} {message}");
            assert_ne!(status, "16", "{role} on {rpc}: the token is valid");
            checked += 1;
        }
    }
    assert_eq!(checked, RULES.len() * 2);
    // No token, or another's made-up token: refused before any rule.
    let (status, _) = call("tollgate.admin.v1.AdminService/ListServices", "tgadm_0_0").await;
    assert_eq!(status, "16");
    node.shutdown().await;
}
