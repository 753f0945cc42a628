//! Whole `tollgate` processes: durability across SIGKILL, and a graceful
//! drain on SIGTERM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::StatusCode;
use tollgate_proto::admin::v1::ListRequest;
use tollgate_proto::config::v1::{AuthMode, Consumer, PathMatch, Route, RoutePath, Service, Target};

struct Proc {
    child: Child,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

async fn spawn(data_dir: &Path, log_path: &Path) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).unwrap();
    let _ = std::fs::remove_file(data_dir.join("endpoints.json"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--proxy-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"])
        .args(["--admin-token", TOKEN])
        .args(["--ops-listen", "127.0.0.1:0", "--console-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tollgate starts");
    match wait_for_endpoints(data_dir, &mut child).await {
        Ok(json) => Proc {
            proxy: json["proxy"].as_str().unwrap().parse().unwrap(),
            admin: json["admin"].as_str().unwrap().parse().unwrap(),
            child,
        },
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tollgate did not become ready ({why:?}); see {}", log_path.display());
        }
    }
}

impl Drop for Proc {
    /// A failed assertion must not leave a node running after the test.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data_and_log(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("data"), dir.join("node.log"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = data_and_log(dir.path());
    let upstream = Upstream::start("u").await;
    let mut node = spawn(&data, &log).await;
    let mut admin = admin_client(node.admin, TOKEN).await;
    admin
        .create_service(Service {
            name: "svc".into(),
            targets: vec![Target { host: "127.0.0.1".into(), port: upstream.addr.port().into(), weight: 1 }],
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .create_route(Route {
            name: "r".into(),
            service_id: "svc".into(),
            paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/".into() }],
            auth: AuthMode::None as i32,
            ..Default::default()
        })
        .await
        .unwrap();

    // A stream of writes; the process is killed while it is still running.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let acknowledged = acknowledged.clone();
        let mut admin = admin.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let name = format!("c-{i}");
                match admin.create_consumer(Consumer { name: name.clone(), ..Default::default() }).await {
                    Ok(_) => acknowledged.lock().unwrap().push(name),
                    Err(_) => return,
                }
            }
        })
    };
    while acknowledged.lock().unwrap().len() < 150 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.child.kill().unwrap(); // SIGKILL
    node.child.wait().unwrap();
    writer.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();

    let mut node = spawn(&data, &log).await;
    let mut admin = admin_client(node.admin, TOKEN).await;
    let present: std::collections::HashSet<String> = admin
        .list_consumers(ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .consumers
        .into_iter()
        .map(|c| c.name)
        .collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|n| !present.contains(*n)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {lost:?}", lost.len(), acknowledged.len());
    assert_eq!(
        get(node.proxy, "/after-restart", &[]).await.status,
        StatusCode::OK,
        "the data plane serves recovered state"
    );

    node.child.kill().unwrap();
    node.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    // An upstream that reports each arrival and answers a little later.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = listener.local_addr().unwrap().port();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let arrived_tx = arrived_tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let arrived_tx = arrived_tx.clone();
                    async move {
                        let _ = arrived_tx.send(());
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Ok::<_, Infallible>(http::Response::new(Full::new(bytes::Bytes::from_static(b"done"))))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let (data, log) = data_and_log(dir.path());
    let mut node = spawn(&data, &log).await;
    let mut admin = admin_client(node.admin, TOKEN).await;
    admin
        .create_service(Service {
            name: "slow".into(),
            targets: vec![Target { host: "127.0.0.1".into(), port: upstream_port.into(), weight: 1 }],
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .create_route(Route {
            name: "slow".into(),
            service_id: "slow".into(),
            paths: vec![RoutePath { kind: PathMatch::Prefix as i32, path: "/".into() }],
            auth: AuthMode::None as i32,
            ..Default::default()
        })
        .await
        .unwrap();

    let proxy = node.proxy;
    let in_flight = tokio::spawn(async move { get(proxy, "/work", &[]).await });
    arrived.recv().await.expect("request reached the upstream");
    let killed = Command::new("kill").args(["-TERM", &node.child.id().to_string()]).status().unwrap();
    assert!(killed.success());

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "the in-flight request completes");
    assert_eq!(&reply.body[..], b"done");
    let status = tokio::task::spawn_blocking(move || node.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "clean exit after draining: {status:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("draining"));
}

/// Plain `tollgate` (no subcommand) takes `serve`'s settings from the
/// environment: a container or unit sets TOLLGATE_* and runs just `tollgate`.
#[tokio::test]
async fn plain_tollgate_reads_its_listen_addresses_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .env("TOLLGATE_DATA_DIR", &data_dir)
        .env("TOLLGATE_PROXY_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_CLUSTER_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_OPS_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_CONSOLE_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tollgate starts");
    let started = wait_for_endpoints(&data_dir, &mut child).await;
    let _ = child.kill();
    let _ = child.wait();
    let json = started.expect("tollgate used TOLLGATE_DATA_DIR and wrote its endpoints there");
    assert_ne!(json["proxy"], "127.0.0.1:8080", "TOLLGATE_PROXY_LISTEN was ignored: {json}");
    assert_ne!(json["admin"], "127.0.0.1:9090", "TOLLGATE_ADMIN_LISTEN was ignored: {json}");
}
