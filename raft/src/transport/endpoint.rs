//! The QUIC endpoint a node uses both to serve peers and to call them: one
//! UDP socket, one cached connection per peer, one stream per RPC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use tokio::io::AsyncReadExt;

use super::tls::{self, TlsSetupError};
use super::wire::{self, PeerRequest, PeerResponse, WireError};
use crate::pki::{ClusterTls, PEER_SERVER_NAME};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen for peers on {addr}: {source}. Choose another --cluster-listen port")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot resolve peer address {0:?}")]
    Resolve(String),
    #[error("cannot reach peer {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("peer {addr} did not answer within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    #[error("peer {addr}: {source}")]
    Wire { addr: String, source: WireError },
    #[error("reading the snapshot file failed: {0}")]
    Snapshot(std::io::Error),
}

/// Why a [`Transport::call_once`] got no answer, and whether the peer may
/// have acted on the request.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request was not (fully) sent: the peer cannot have acted on it.
    #[error(transparent)]
    NotSent(TransportError),
    /// Sent, and the answer failed or did not come in time: the peer may have acted on it.
    #[error(transparent)]
    NoAnswer(TransportError),
    /// Sent, and not answered when the caller stopped waiting (the leader
    /// changed): the peer may have acted on it.
    #[error("peer {addr} had not answered when the leader changed")]
    Abandoned { addr: String },
}

impl CallError {
    pub fn may_have_acted(&self) -> bool {
        !matches!(self, CallError::NotSent(_))
    }
}

/// A sent request still waiting for its answer. Dropped unanswered (given up
/// on, or its caller cancelled), it resets the stream: a finished stream is
/// otherwise retransmitted until the peer has it, which for a dead peer is
/// wasted traffic until the connection times out.
struct Unanswered {
    send: quinn::SendStream,
    answered: bool,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.send.reset(0u32.into());
        }
    }
}

/// A connection, or one being established. Establishing runs in its own task
/// and is shared, so an RPC that times out (heartbeats allow ~100 ms) does not
/// abort a QUIC handshake that the next RPC can use.
type Connecting = Shared<BoxFuture<'static, Result<quinn::Connection, String>>>;

pub struct Transport {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    connections: Mutex<HashMap<String, Connecting>>,
}

impl Transport {
    pub fn bind(listen: SocketAddr, tls: &ClusterTls) -> Result<Transport, TransportError> {
        let server = tls::server_config(tls)?;
        let mut endpoint =
            quinn::Endpoint::server(server, listen).map_err(|source| TransportError::Bind { addr: listen, source })?;
        let client = tls::client_config(tls)?;
        endpoint.set_default_client_config(client.clone());
        Ok(Transport { endpoint, client, connections: Mutex::new(HashMap::new()) })
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    async fn connection(&self, addr: &str) -> Result<quinn::Connection, TransportError> {
        let connecting = {
            let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            let usable = |c: &Connecting| match c.peek() {
                None => true,
                Some(Ok(conn)) => conn.close_reason().is_none(),
                Some(Err(_)) => false,
            };
            match connections.get(addr) {
                Some(c) if usable(c) => c.clone(),
                _ => {
                    let c = self.connect(addr.to_string());
                    connections.insert(addr.to_string(), c.clone());
                    c
                }
            }
        };
        connecting.await.map_err(|reason| TransportError::Unreachable { addr: addr.to_string(), reason })
    }

    fn connect(&self, addr: String) -> Connecting {
        let endpoint = self.endpoint.clone();
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            let target = resolve(&addr).await.map_err(|e| e.to_string())?;
            let connecting = endpoint.connect_with(client, target, PEER_SERVER_NAME).map_err(|e| e.to_string())?;
            connecting.await.map_err(|e| e.to_string())
        });
        async move { task.await.unwrap_or_else(|e| Err(e.to_string())) }.boxed().shared()
    }

    fn forget(&self, addr: &str) {
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
    }

    /// A new bidirectional stream to `addr`; a broken cached connection is
    /// dropped so the next call dials again.
    async fn open_stream(&self, addr: &str) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let conn = self.connection(addr).await?;
        conn.open_bi().await.map_err(|e| {
            self.forget(addr);
            TransportError::Unreachable { addr: addr.to_string(), reason: e.to_string() }
        })
    }

    /// One request, one response, bounded by `timeout`.
    pub async fn call(
        &self,
        addr: &str,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let attempt = async {
            let (mut send, mut recv) = self.open_stream(addr).await?;
            let wire = |source| TransportError::Wire { addr: addr.to_string(), source };
            wire::write_frame(&mut send, request).await.map_err(wire)?;
            let _ = send.finish();
            wire::read_frame(&mut recv).await.map_err(wire)
        };
        self.bounded(addr, timeout, attempt).await
    }

    /// One request that must not take effect twice (a forwarded write), so a
    /// caller that gets no answer must know whether it was sent at all. Waits
    /// for the answer until `timeout` or until `abandon` completes; a request
    /// given up on is withdrawn (its stream reset, so QUIC stops
    /// retransmitting it to a peer that may be gone).
    pub async fn call_once(
        &self,
        addr: &str,
        request: &PeerRequest,
        timeout: Duration,
        abandon: impl std::future::Future<Output = ()>,
    ) -> Result<PeerResponse, CallError> {
        let expiry = tokio::time::sleep(timeout);
        tokio::pin!(expiry, abandon);
        let wire = |source| TransportError::Wire { addr: addr.to_string(), source };
        let send_request = async {
            let (mut send, recv) = self.open_stream(addr).await?;
            wire::write_frame(&mut send, request).await.map_err(wire)?;
            let _ = send.finish();
            Ok((send, recv))
        };
        let timed_out = || TransportError::Timeout { addr: addr.to_string(), timeout_ms: timeout.as_millis() as u64 };
        // Until the whole frame is written, the peer cannot decode (or act on) any of it.
        let (send, mut recv) = tokio::select! {
            sent = send_request => sent.map_err(CallError::NotSent)?,
            () = &mut expiry => return Err(CallError::NotSent(timed_out())),
            () = &mut abandon => return Err(CallError::NotSent(TransportError::Unreachable {
                addr: addr.to_string(),
                reason: "the leader changed before the request was sent".into(),
            })),
        };
        let mut pending = Unanswered { send, answered: false };
        tokio::select! {
            answer = wire::read_frame(&mut recv) => {
                pending.answered = true;
                answer.map_err(|e| CallError::NoAnswer(wire(e)))
            }
            () = &mut expiry => Err(CallError::NoAnswer(timed_out())),
            () = &mut abandon => Err(CallError::Abandoned { addr: addr.to_string() }),
        }
    }

    /// Streams a snapshot file after its header; the file is never read whole into memory.
    pub async fn send_snapshot(
        &self,
        addr: &str,
        header: &PeerRequest,
        mut file: tokio::fs::File,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let attempt = async {
            let (mut send, mut recv) = self.open_stream(addr).await?;
            let wire = |source| TransportError::Wire { addr: addr.to_string(), source };
            wire::write_frame(&mut send, header).await.map_err(wire)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).await.map_err(TransportError::Snapshot)?;
                if n == 0 {
                    break;
                }
                send.write_all(&buf[..n]).await.map_err(|e| wire(WireError::Stream(e.to_string())))?;
            }
            let _ = send.finish();
            wire::read_frame(&mut recv).await.map_err(wire)
        };
        self.bounded(addr, timeout, attempt).await
    }

    async fn bounded<T>(
        &self,
        addr: &str,
        timeout: Duration,
        attempt: impl std::future::Future<Output = Result<T, TransportError>>,
    ) -> Result<T, TransportError> {
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { addr: addr.to_string(), timeout_ms: timeout.as_millis() as u64 }),
        }
    }

    /// Stops serving and calling peers.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node shutting down");
    }
}

pub async fn resolve(addr: &str) -> Result<SocketAddr, TransportError> {
    if let Ok(parsed) = addr.parse() {
        return Ok(parsed);
    }
    tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| TransportError::Resolve(addr.to_string()))
}

/// Asks a member of an existing cluster to admit this node; returns the
/// cluster TLS material it hands out.
pub async fn join(peer: &str, token: &str, node_id: u64, advertise: &str) -> Result<crate::pki::ClusterTls, JoinError> {
    let parsed = JoinToken::parse(token).ok_or(JoinError::MalformedToken)?;
    let config = tls::join_client_config(&parsed.ca_fingerprint).map_err(JoinError::Tls)?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
        .map_err(|e| JoinError::Failed(format!("cannot open a UDP socket: {e}")))?;
    endpoint.set_default_client_config(config);
    let target = resolve(peer).await.map_err(|e| JoinError::Failed(e.to_string()))?;
    let attempt = async {
        let conn = endpoint
            .connect(target, PEER_SERVER_NAME)
            .map_err(|e| JoinError::Failed(e.to_string()))?
            .await
            .map_err(|e| JoinError::Failed(format!("cannot reach {peer}: {e}")))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| JoinError::Failed(e.to_string()))?;
        let request = wire::JoinRequest { token: token.to_string(), node_id, addr: advertise.to_string() };
        wire::write_frame(&mut send, &request).await.map_err(|e| JoinError::Failed(e.to_string()))?;
        let _ = send.finish();
        let response: wire::JoinResponse =
            wire::read_frame(&mut recv).await.map_err(|e| JoinError::Failed(e.to_string()))?;
        conn.close(0u32.into(), b"joined");
        match response {
            wire::JoinResponse::Accepted(tls) => Ok(tls),
            wire::JoinResponse::Refused(reason) => Err(JoinError::Refused(reason)),
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .unwrap_or_else(|_| Err(JoinError::Failed(format!("{peer} did not answer the join request within 30 s"))));
    endpoint.wait_idle().await;
    result
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the join token is malformed; create one with `tollgate ctl cluster token` on a cluster member")]
    MalformedToken,
    #[error("join refused: {0}")]
    Refused(String),
    #[error("join failed: {0}")]
    Failed(String),
    #[error(transparent)]
    Tls(TlsSetupError),
}

/// `tgjoin_<id>_<secret>_<ca sha256>`: the id finds the replicated record,
/// the secret proves possession, the fingerprint lets the joiner trust the
/// cluster before it has any certificate.
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_fingerprint: String,
}

impl JoinToken {
    pub fn format(id: &str, secret: &str, ca_fingerprint: &str) -> String {
        format!("tgjoin_{id}_{secret}_{ca_fingerprint}")
    }

    pub fn parse(token: &str) -> Option<JoinToken> {
        let rest = token.strip_prefix("tgjoin_")?;
        let mut parts = rest.split('_');
        let (id, secret, ca) = (parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        (parts.next().is_none() && hex(id, 16) && hex(secret, 64) && hex(ca, 64)).then(|| JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_fingerprint: ca.to_string(),
        })
    }
}
