//! Secrets stay sealed everywhere: provider header values are ciphertext in
//! the Raft log, snapshots and RocksDB and never come back from the admin
//! API, yet still reach the provider; a command that apply would reject (a
//! URL with a password in it) never reaches the log; and nothing under the
//! data directory is readable by another user.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{Bearer, TOKEN, admin_client, ai_route, consumer_with_key, full, http_client, send, test_config};
use http::{Request, StatusCode};
use prost::Message;
use serde_json::json;
use tollgate_loadtest::mock::llm::LlmMockConfig;
use tollgate_loadtest::mock::openai::MockOpenAi;
use tollgate_node::Node;
use tollgate_proto::admin::v1::ai_service_client::AiServiceClient;
use tollgate_proto::admin::v1::{GetNodeStatusRequest, GetRequest, ListRequest};
use tollgate_proto::config::v1::{
    AuthMode, Consumer, JwtAuth, PathMatch, Provider, ProviderCredential, ProviderHeader, ProviderKind, Route,
    RoutePath,
};
use tollgate_storage::{Cf, Engine};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Ai = AiServiceClient<InterceptedService<Channel, Bearer>>;

const HEADER_VALUE: &str = "hdr-secret-7f3a9c1e55d0";
const KEY_SECRET: &str = "sk-key-secret-0a1b2c3d4e";
const URL_PASSWORD: &str = "url-pw-91c2e8aa";

async fn ai_client(node: &Node) -> Ai {
    let channel = Channel::from_shared(format!("http://{}", node.admin_addr)).unwrap().connect().await.unwrap();
    AiServiceClient::with_interceptor(channel, Bearer(TOKEN.into()))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
            out.push(entry.path());
        }
    }
    out
}

/// Which of `needles` the stopped node's data holds: every record of every
/// column family as RocksDB returns it (decompressed), and the raw bytes of
/// every file (snapshots, WAL, keys), so neither compression nor a file
/// outside RocksDB can hide a plaintext.
fn plaintexts_at_rest(data_dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let engine = Engine::open(data_dir.join("db")).expect("the stopped node's database opens");
    for cf in Cf::ALL {
        for (key, value) in engine.scan_prefix(cf, b"").unwrap() {
            for needle in needles {
                if contains(&key, needle) || contains(&value, needle) {
                    found.push(format!("{needle} in column family {}", cf.name()));
                }
            }
        }
    }
    drop(engine);
    for path in files_under(data_dir).into_iter().filter(|p| p.is_file()) {
        let bytes = std::fs::read(&path).unwrap();
        for needle in needles {
            if contains(&bytes, needle) {
                found.push(format!("{needle} in {}", path.display()));
            }
        }
    }
    found
}

async fn chat(proxy: std::net::SocketAddr, key: &str) -> common::Reply {
    let body = json!({"model": "mock/gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let request = Request::post(format!("http://{proxy}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(full(Bytes::from(body.to_string())))
        .unwrap();
    send(&http_client(), request).await
}

#[tokio::test]
async fn provider_headers_are_sealed_at_rest_hidden_from_the_api_and_still_sent_upstream() {
    let mock = MockOpenAi::spawn(LlmMockConfig { tokens: 3, ..Default::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Build a snapshot (of the state family) early, so the check below covers one.
    config.raft.snapshot_after_logs = 3;
    let node = Node::start(config).await.expect("node starts");
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut ai = ai_client(&node).await;
    let (_, key) = consumer_with_key(&mut admin, "app").await;
    admin.create_route(ai_route()).await.unwrap();

    let created = ai
        .create_provider(Provider {
            name: "mock".into(),
            kind: ProviderKind::Openai as i32,
            base_url: format!("{}/v1", mock.url()),
            credentials: vec![ProviderCredential { id: "k1".into(), secret: KEY_SECRET.into(), ..Default::default() }],
            headers: vec![ProviderHeader {
                name: "X-Upstream-Auth".into(),
                value: HEADER_VALUE.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // (a) The API answers with the header's name and a hint, never its value.
    let listed = ai.list_providers(ListRequest::default()).await.unwrap().into_inner();
    let got = ai.get_provider(GetRequest { id_or_name: "mock".into(), stale: false }).await.unwrap().into_inner();
    for (what, bytes) in
        [("create", created.encode_to_vec()), ("list", listed.encode_to_vec()), ("get", got.encode_to_vec())]
    {
        assert!(!contains(&bytes, HEADER_VALUE), "{what} returned the header value");
        assert!(!contains(&bytes, KEY_SECRET), "{what} returned the key");
    }
    let header = &listed.providers[0].headers[0];
    assert_eq!((header.name.as_str(), header.hint.as_str()), ("x-upstream-auth", "…55d0"));
    assert!(header.value.is_empty() && header.sealed_value.is_empty());

    // (c) The data plane opens it and sends it.
    let reply = chat(node.proxy_addr, &key).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.header("x-upstream-auth"), Some(HEADER_VALUE));
    assert_eq!(seen.credential.as_deref(), Some(KEY_SECRET));

    // An update that does not resend the value (what `ctl provider update`
    // does after a get, which only sees hints) keeps it.
    let mut update = got.clone();
    update.request_timeout_ms = 30_000;
    let updated = ai.update_provider(update).await.unwrap().into_inner();
    assert_eq!(updated.headers[0].hint, "…55d0");
    assert!(!contains(&updated.encode_to_vec(), HEADER_VALUE));
    assert_eq!(chat(node.proxy_addr, &key).await.status, StatusCode::OK);
    assert_eq!(mock.last_request().unwrap().header("x-upstream-auth"), Some(HEADER_VALUE), "kept by the update");

    // A header sent by name with no value and no current value is refused, not stored empty.
    let mut unknown = got.clone();
    unknown.headers.push(ProviderHeader { name: "x-new".into(), ..Default::default() });
    let error = ai.update_provider(unknown).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");

    let data_dir = node.data_dir.clone();
    node.shutdown().await;
    // (b) Only ciphertext at rest: the log, the state, snapshots, every file.
    assert!(data_dir.join("snapshots").read_dir().is_ok_and(|mut d| d.next().is_some()), "a snapshot was built");
    let found = plaintexts_at_rest(&data_dir, &[HEADER_VALUE, KEY_SECRET]);
    assert!(found.is_empty(), "plaintext secrets at rest: {found:?}");
}

#[tokio::test]
async fn a_credentialed_url_is_refused_before_it_reaches_the_raft_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(test_config(dir.path())).await.expect("node starts");
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut ai = ai_client(&node).await;
    let index = |status: tollgate_proto::admin::v1::NodeStatus| status.last_log_index;
    let before = index(admin.get_node_status(GetNodeStatusRequest {}).await.unwrap().into_inner());

    let error = ai
        .create_provider(Provider {
            name: "leaky".into(),
            kind: ProviderKind::OpenaiCompatible as i32,
            base_url: format!("https://admin:{URL_PASSWORD}@llm.internal/v1"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(
        error.message().contains("put credentials in the provider's key or headers, not in the URL"),
        "the refusal says what to do: {}",
        error.message()
    );

    // The same for a route's JWKS URL, and for any rule apply enforces.
    let error = admin
        .create_route(Route {
            name: "jwt".into(),
            paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/".into() }],
            auth: AuthMode::Jwt as i32,
            ai_gateway: true,
            jwt: Some(JwtAuth {
                algorithms: vec!["RS256".into()],
                jwks_url: format!("https://idp:{URL_PASSWORD}@idp.example.com/jwks"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("jwt.jwks_url"), "{}", error.message());
    let error = admin.create_consumer(Consumer { name: "has space".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");

    let after = index(admin.get_node_status(GetNodeStatusRequest {}).await.unwrap().into_inner());
    assert_eq!(after, before, "no rejected command was appended to the log");

    let data_dir = node.data_dir.clone();
    node.shutdown().await;
    let found = plaintexts_at_rest(&data_dir, &[URL_PASSWORD]);
    assert!(found.is_empty(), "the refused URL's password is at rest: {found:?}");
}

#[cfg(unix)]
#[tokio::test]
async fn nothing_under_the_data_dir_is_readable_by_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;

    let dir = tempfile::tempdir().unwrap();
    // A directory an earlier version (or a careless copy) left open.
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("left-over"), b"x").unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data_dir.join("left-over"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut config = test_config(&data_dir);
    config.admin.token = None; // so the node writes its admin-token file
    config.raft.snapshot_after_logs = 2;
    let node = Node::start(config).await.expect("node starts");
    let mut admin = admin_client(node.admin_addr, &node.admin_token).await;
    for name in ["a", "b", "c", "d"] {
        admin.create_consumer(Consumer { name: name.into(), ..Default::default() }).await.unwrap();
    }
    node.shutdown().await;

    let files = files_under(&data_dir);
    for expected in ["admin-token", "tls/ca.key", "tls/node.key", "db/CURRENT", "snapshots"] {
        assert!(files.contains(&data_dir.join(expected)), "{expected} exists: {files:?}");
    }
    let open: Vec<String> = std::iter::once(data_dir.clone())
        .chain(files)
        .filter(|p| mode(p) & 0o077 != 0)
        .map(|p| format!("{} {:o}", p.display(), mode(&p)))
        .collect();
    assert!(open.is_empty(), "readable by group or others: {open:?}");
    assert_eq!(mode(&data_dir), 0o700);
}
