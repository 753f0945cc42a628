//! The floor for a hyper-based reverse proxy, as a reference row in
//! `loadtest/scenarios/bench-vs-nginx.sh`: HTTP/1.1 in, one dedicated
//! keep-alive upstream connection per client connection, no routing, no
//! headers added, no timeouts, no metrics. It shows how much of Tollgate's
//! cost per request is hyper and tokio themselves and how much is the gateway.
//!
//! Usage: `bare_proxy LISTEN UPSTREAM` (both `host:port`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_proxy LISTEN UPSTREAM");
    };
    // One thread, like nginx with `worker_processes 1`.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            client.set_nodelay(true)?;
            let upstream = TcpStream::connect(&upstream).await?;
            upstream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(upstream)).await?;
            tokio::spawn(connection);
            let sender = Arc::new(Mutex::new(sender));
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let sender = sender.clone();
                async move {
                    let response = match sender.lock().await.send_request(request).await {
                        Ok(response) => response.map(Either::Left),
                        Err(_) => {
                            let mut failed = Response::new(Either::Right(Empty::<Bytes>::new()));
                            *failed.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                            failed
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(client), service));
        }
    })
}
