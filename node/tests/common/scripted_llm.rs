//! An OpenAI-format model for tests: it answers with scripted contents, as
//! a chat completion or its stream, and keeps what it was sent.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

/// An OpenAI-format provider answering with the scripted contents in turn
/// (the last one again when they run out), and keeping what it was sent.
pub struct ScriptedModel {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl ScriptedModel {
    pub async fn start(contents: &[&str]) -> ScriptedModel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<String>>> =
            Arc::new(Mutex::new(contents.iter().map(|c| c.to_string()).collect()));
        let (seen_in, script_in) = (seen.clone(), script.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (seen, script) = (seen_in.clone(), script_in.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (seen, script) = (seen.clone(), script.clone());
                        async move {
                            let body: Value =
                                serde_json::from_slice(&request.into_body().collect().await.unwrap().to_bytes())
                                    .unwrap();
                            let content = {
                                let mut script = script.lock().unwrap();
                                if script.len() > 1 { script.pop_front().unwrap() } else { script[0].clone() }
                            };
                            let stream = body["stream"] == true;
                            seen.lock().unwrap().push(body);
                            Ok::<_, Infallible>(answer(&content, stream))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ScriptedModel { addr, seen }
    }

    pub fn requests(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

/// A chat completion (or its stream, in three pieces) saying `content`.
fn answer(content: &str, stream: bool) -> Response<Full<Bytes>> {
    let usage = json!({"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30});
    if !stream {
        let body = json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage});
        return Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
    }
    let third = content.len() / 3;
    let mut sse = String::new();
    for piece in [&content[..third], &content[third..2 * third], &content[2 * third..]] {
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m1",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        sse += &format!("data: {chunk}\n\n");
    }
    let last = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m1",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let tail = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m1", "choices": [], "usage": usage});
    sse += &format!("data: {last}\n\ndata: {tail}\n\ndata: [DONE]\n\n");
    Response::builder().header("content-type", "text/event-stream").body(Full::new(Bytes::from(sse))).unwrap()
}

/// The AI admin API of the node at `admin`.
pub async fn ai_admin(
    admin: SocketAddr,
) -> tollgate_proto::admin::v1::ai_service_client::AiServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, super::Bearer>,
> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{admin}")).unwrap();
    tollgate_proto::admin::v1::ai_service_client::AiServiceClient::with_interceptor(
        channel.connect().await.unwrap(),
        super::Bearer(super::TOKEN.into()),
    )
}

impl ScriptedModel {
    /// Registers this model as the OpenAI-compatible provider `mock` of the
    /// node at `admin` (its models are then `mock/<name>`).
    pub async fn register(&self, admin: SocketAddr) {
        use tollgate_proto::config::v1::{Provider, ProviderCredential, ProviderKind};
        let provider = Provider {
            name: "mock".into(),
            kind: ProviderKind::OpenaiCompatible as i32,
            base_url: format!("http://{}/v1", self.addr),
            credentials: vec![ProviderCredential { id: "k1".into(), secret: "sk-mock".into(), ..Default::default() }],
            ..Default::default()
        };
        ai_admin(admin).await.create_provider(provider).await.unwrap();
    }
}
