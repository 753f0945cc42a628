//! The client's request body on its way upstream, marked so that a failure
//! it causes is told apart from the upstream's (issue 11 §5): an error while
//! reading it (bad chunked framing, a body cut short, a client gone) comes out
//! as [`ClientBodyError`], and [`Progress`] says whether it was read to the
//! end, so a timeout while the client still owes body bytes is the client's
//! stall, not the upstream's slowness.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::plumbing::BoxError;

/// Reading the client's request body failed while it streamed upstream.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body failed: {0}")]
pub struct ClientBodyError(pub hyper::Error);

/// Whether the client's body has been read to its end.
#[derive(Clone, Default)]
pub struct Progress(Arc<AtomicBool>);

impl Progress {
    pub fn complete(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The client's body, with its errors marked and its end recorded.
pub struct ClientBody {
    inner: Incoming,
    progress: Progress,
}

impl ClientBody {
    pub fn new(inner: Incoming) -> (ClientBody, Progress) {
        let progress = Progress::default();
        (ClientBody { inner, progress: progress.clone() }, progress)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.progress.0.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.progress.0.store(true, Ordering::Release),
            _ => {}
        }
        polled.map(|frame| frame.map(|result| result.map_err(|e| -> BoxError { Box::new(ClientBodyError(e)) })))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
