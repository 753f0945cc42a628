//! An HTTP/1.0 upstream (`python3 -m http.server`, an old appliance) does not
//! make the gateway answer its HTTP/1.1 clients in HTTP/1.0 — which would close
//! every client connection after one response. Both the REST path and the AI
//! gateway are checked, with a raw keep-alive client on one connection.

mod common;

use std::net::SocketAddr;

use common::{Bearer, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_proto::admin::v1::ai_service_client::AiServiceClient;
use tollgate_proto::config::v1::{AuthMode, PathMatch, Provider, ProviderKind, Service, Target};
use tonic::transport::Channel;

/// Reads one request (head and Content-Length body) from a connection.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(format!("{head}{}", String::from_utf8_lossy(&body)))
}

/// The headers and body an HTTP/1.0 server answers a request (its head lower-cased, then its body) with.
type Answer = fn(&str) -> (Vec<(&'static str, String)>, String);

/// A server that speaks HTTP/1.0 only: one `200 OK` per connection, then it closes.
async fn http10_server(answer: Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let Some(request) = read_request(&mut stream).await else { return };
                let (headers, body) = answer(&request);
                let mut response = String::from("HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11\r\n");
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&body);
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Reads one response's body after its (lower-cased) head: Content-Length or chunked.
async fn read_body(stream: &mut TcpStream, head: &str) -> String {
    if let Some(length) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        let mut body = vec![0u8; length.trim().parse().unwrap()];
        stream.read_exact(&mut body).await.unwrap();
        return String::from_utf8(body).unwrap();
    }
    assert!(head.contains("transfer-encoding: chunked"), "a body of unknown length must be chunked: {head}");
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "connection closed mid-body");
            line.push(byte[0]);
        }
        let size = usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).unwrap();
        let mut chunk = vec![0u8; size + 2];
        stream.read_exact(&mut chunk).await.unwrap();
        if size == 0 {
            return String::from_utf8(body).unwrap();
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Sends a request on an open connection; the response head (lower-cased) and body.
async fn exchange(stream: &mut TcpStream, request: &str) -> (String, String) {
    let head = common::raw_head(stream, request).await;
    let body = read_body(stream, &head).await;
    (head, body)
}

fn assert_kept_alive(head: &str) {
    assert!(head.starts_with("http/1.1 200"), "an HTTP/1.1 client gets HTTP/1.1: {head}");
    assert!(!head.contains("connection: close"), "the client's connection stays open: {head}");
}

#[tokio::test]
async fn rest_responses_from_an_http10_upstream_are_http11_and_keep_the_connection() {
    // Like `python3 -m http.server`: a length for files, none for a close-delimited listing.
    let upstream = http10_server(|request| {
        let body = format!("served {}", request.lines().next().unwrap_or_default());
        if request.starts_with("get /file") {
            (vec![("Content-Type", "text/plain".into()), ("Content-Length", body.len().to_string())], body)
        } else {
            (vec![("Content-Type", "text/html".into())], body)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path()).await;
    let mut admin = common::admin_client(node.admin_addr, TOKEN).await;
    let target = Target { host: "127.0.0.1".into(), port: upstream.port().into(), weight: 1 };
    admin.create_service(Service { name: "files".into(), targets: vec![target], ..Default::default() }).await.unwrap();
    admin.create_route(common::route("files", "files", PathMatch::Prefix, "/", AuthMode::None)).await.unwrap();

    let mut client = TcpStream::connect(node.proxy_addr).await.unwrap();
    let (head, body) = exchange(&mut client, "GET /file.txt HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_kept_alive(&head);
    assert_eq!(body, "served get /file.txt http/1.1");
    // The same connection serves a second request, whose body has no length upstream.
    let (head, body) = exchange(&mut client, "GET /dir/ HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_kept_alive(&head);
    assert_eq!(body, "served get /dir/ http/1.1");
    let (head, _) = exchange(&mut client, "GET /file.txt HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_kept_alive(&head);
    node.shutdown().await;
}

#[tokio::test]
async fn ai_responses_from_an_http10_provider_are_http11_and_keep_the_connection() {
    let provider = http10_server(|request| {
        if request.contains("\"stream\":true") {
            let chunk = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}"#;
            let usage = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
            let body = format!("data: {chunk}\n\ndata: {usage}\n\ndata: [DONE]\n\n");
            (vec![("Content-Type", "text/event-stream".into())], body)
        } else {
            let body = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
            (vec![("Content-Type", "application/json".into()), ("Content-Length", body.len().to_string())], body.into())
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let node = common::start_node(dir.path()).await;
    let mut admin = common::admin_client(node.admin_addr, TOKEN).await;
    let (_, key) = common::consumer_with_key(&mut admin, "app").await;
    admin.create_route(common::ai_route()).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", node.admin_addr)).unwrap().connect().await.unwrap();
    let mut ai = AiServiceClient::with_interceptor(channel, Bearer(TOKEN.into()));
    ai.create_provider(Provider {
        name: "old".into(),
        kind: ProviderKind::OpenaiCompatible as i32,
        base_url: format!("http://{provider}/v1"),
        ..Default::default()
    })
    .await
    .unwrap();

    let post = |stream: bool| {
        let body = format!(r#"{{"model":"old/m","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#);
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut client = TcpStream::connect(node.proxy_addr).await.unwrap();
    let (head, body) = exchange(&mut client, &post(false)).await;
    assert_kept_alive(&head);
    assert!(body.contains("\"content\":\"Hi\""), "{body}");
    let (head, body) = exchange(&mut client, &post(true)).await;
    assert_kept_alive(&head);
    assert!(body.contains("\"content\":\"Hi\"") && body.ends_with("data: [DONE]\n\n"), "{body}");
    let (head, _) = exchange(&mut client, &post(false)).await;
    assert_kept_alive(&head);
    node.shutdown().await;
}
