//! Bounds shared by the client-facing listeners (proxy and ops, DESIGN §8
//! "every wait is bounded and every resource capped"): the process's
//! file-descriptor budget, and a send timeout that cuts off a client which
//! stops reading its response.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Descriptors the proxy never takes, at the least: the admin API, the ops
/// listener (itself capped by `ops.max_connections`), Raft's QUIC socket,
/// RocksDB's open SST and WAL files, the access log, JWKS and health-check
/// connections all need some, and they must keep working when the proxy is
/// full (DESIGN §8).
pub const MIN_FD_RESERVE: u64 = 256;

/// The smallest derived `proxy.max_connections`, for tiny descriptor limits.
const MIN_PROXY_CONNECTIONS: u64 = 16;

/// Used when the soft limit is "unlimited" (which Linux does not allow for
/// RLIMIT_NOFILE, but other systems may report).
const UNLIMITED_FALLBACK: u64 = 1 << 20;

/// The descriptor budget of this process after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft RLIMIT_NOFILE in force.
    pub limit: u64,
}

impl FdBudget {
    /// Descriptors kept back from the proxy: max(256, 10 % of the limit).
    pub fn reserve(self) -> u64 {
        MIN_FD_RESERVE.max(self.limit / 10)
    }

    /// `proxy.max_connections` when it is not configured: half of what the
    /// reserve leaves, because every client connection with a request in
    /// flight can hold an upstream connection as well.
    pub fn default_max_connections(self) -> usize {
        let spare = self.limit.saturating_sub(self.reserve()) / 2;
        usize::try_from(spare.max(MIN_PROXY_CONNECTIONS)).unwrap_or(usize::MAX)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the budget in
/// force. Many systems start services with a soft limit of 1024 while
/// allowing far more: a gateway holding one descriptor per client and one
/// per upstream connection runs out long before its memory does.
pub fn raise_nofile_limit() -> FdBudget {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let Some(soft) = now.current else {
        return FdBudget { limit: UNLIMITED_FALLBACK };
    };
    // Linux refuses an infinite RLIMIT_NOFILE; fs.nr_open is the real ceiling.
    let hard = now.maximum.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(UNLIMITED_FALLBACK)
    });
    if hard <= soft {
        return FdBudget { limit: soft };
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: now.maximum }) {
        Ok(()) => {
            tracing::debug!(from = soft, to = hard, "raised the open-file limit (RLIMIT_NOFILE) to the hard limit");
            FdBudget { limit: hard }
        }
        Err(error) => {
            tracing::warn!(
                %error,
                soft,
                hard,
                "cannot raise the open-file limit; proxy.max_connections is sized from the soft limit \
                 (raise it with `ulimit -n` or LimitNOFILE= in the service unit)"
            );
            FdBudget { limit: soft }
        }
    }
}

/// Why a connection was cut by [`SendTimeout`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the client accepted no response data for {timeout_ms} ms; closed the connection (a client must keep reading its response)"
)]
pub struct SendTimedOut {
    pub timeout_ms: u64,
}

/// A client stream whose writes fail with `TimedOut` once one has made no
/// progress for `timeout`. A client that stops reading fills the socket's
/// buffers; hyper then stops polling the response body, and without this the
/// connection, its task, and (on the proxy) the upstream connection behind
/// the body would be held for as long as the client likes. Reads are not
/// bounded here: the header-read and idle timeouts cover them.
///
/// The timer is only touched when a write is blocked, so a client that
/// keeps up costs nothing extra per write.
pub struct SendTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Allocated on the first stall, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// A write is blocked and `timer` runs for it.
    stalled: bool,
    /// Taken when the timeout fires, so a connection is counted once.
    timeouts: Option<Counter>,
}

impl<T> SendTimeout<T> {
    /// `timeouts` counts connections cut by this timeout.
    pub fn new(inner: T, timeout: Duration, timeouts: Counter) -> SendTimeout<T> {
        SendTimeout { inner, timeout, timer: None, stalled: false, timeouts: Some(timeouts) }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn timed_out(&self) -> io::Error {
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        io::Error::new(io::ErrorKind::TimedOut, SendTimedOut { timeout_ms })
    }

    /// Passes a write's outcome through, starting the timer when it is
    /// blocked and failing it when the timer has run out.
    fn progress<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = false;
            return polled;
        }
        if !self.stalled {
            self.stalled = true;
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let timer = self.timer.as_mut().expect("armed above");
        ready!(timer.as_mut().poll(cx));
        if let Some(counter) = self.timeouts.take() {
            counter.inc();
        }
        Poll::Ready(Err(self.timed_out()))
    }

    /// Once cut, a connection stays cut, even if the client starts reading again.
    fn cut(&self) -> bool {
        self.timeouts.is_none()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.cut() {
            return Poll::Ready(Err(self.timed_out()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut() {
            return Poll::Ready(Err(self.timed_out()));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut() {
            return Poll::Ready(Err(self.timed_out()));
        }
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn the_reserve_is_at_least_256_and_then_a_tenth() {
        assert_eq!(FdBudget { limit: 1024 }.reserve(), 256);
        assert_eq!(FdBudget { limit: 1024 }.default_max_connections(), 384);
        assert_eq!(FdBudget { limit: 1 << 20 }.reserve(), (1 << 20) / 10);
        assert_eq!(FdBudget { limit: 100 }.default_max_connections(), 16);
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
        let budget = raise_nofile_limit();
        assert!(budget.limit >= before.min(UNLIMITED_FALLBACK));
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_write_fails_after_the_timeout_and_a_moving_one_does_not() {
        // A 64-byte pipe the reader drains only when told to.
        let (client, mut server) = tokio::io::duplex(64);
        let counter = Counter::default();
        let mut writer = SendTimeout::new(client, Duration::from_secs(5), counter.clone());
        // Progress keeps it alive however long it takes in total.
        for _ in 0..10 {
            writer.write_all(&[0; 64]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(4)).await;
            let mut buf = [0; 64];
            server.read_exact(&mut buf).await.unwrap();
        }
        writer.write_all(&[0; 64]).await.unwrap();
        let error = writer.write_all(&[0; 64]).await.unwrap_err();
        // The reader wakes up too late: the connection stays cut.
        let mut buf = [0; 64];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("5000 ms"), "{error}");
        assert_eq!(counter.get(), 1);
        assert!(writer.write_all(&[0; 1]).await.is_err(), "once cut, stays cut");
        assert_eq!(counter.get(), 1, "counted once per connection");
    }
}
