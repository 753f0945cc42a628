//! What the multi-process tests share. Each test binary uses part of it.
#![allow(dead_code)]

use tollgate_cluster::harness::Cluster;
use tollgate_proto::config::v1::{AuthMode, PathMatch, Route, RoutePath, Service, Target};

/// A tiny HTTP upstream answering "ok" to everything.
pub async fn upstream() -> std::net::SocketAddr {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from_static(b"ok"))))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// A service `svc` to `upstream` and a route `open` for every path, no
/// authentication; returns the route's id.
pub async fn open_route(cluster: &Cluster, upstream: std::net::SocketAddr) -> String {
    let mut admin = cluster.admin(1).await.unwrap();
    let target = Target { host: "127.0.0.1".into(), port: upstream.port().into(), weight: 1 };
    admin.create_service(Service { name: "svc".into(), targets: vec![target], ..Default::default() }).await.unwrap();
    let route = Route {
        name: "open".into(),
        service_id: "svc".into(),
        paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/".into() }],
        auth: AuthMode::None as i32,
        ..Default::default()
    };
    admin.create_route(route).await.unwrap().into_inner().meta.unwrap().id
}
