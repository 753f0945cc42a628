//! A streamed AI answer: provider SSE bytes in, the caller's format out
//! (OpenAI chunks, Anthropic events or Gemini responses), with usage
//! accounted exactly once — when the stream completes, when it breaks, or
//! when the client goes away (the body is dropped).
//!
//! A stream that did not complete is billed for what it delivered: the
//! provider's input count when it gave one, and for the output the larger of
//! the provider's running count and the tokenizer's count of the output
//! decoded so far, marked estimated (a provider's output count is
//! final only at the end of its stream; see `StreamDecoder::usage_is_final`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use crate::plumbing::UpstreamResponseBody;
use bytes::Bytes;
use http_body::{Body, Frame};
use tollgate_llm::anthropic_ingress::MessagesStreamEncoder;
use tollgate_llm::error::{AdapterError, ErrorKind, ProviderError, anthropic_error_event};
use tollgate_llm::gemini_ingress::{self, GenerateContentStreamEncoder};
use tollgate_llm::passthrough::ChatStreamScanner;
use tollgate_llm::provider::StreamDecoder;
use tollgate_llm::tokens;
use tollgate_llm::types::{ChatChunk, Usage};
use tollgate_proto::config::v1::UsageOutcome;

use super::account::{Accounting, Served};
use crate::plumbing::BoxError;

/// The caller's stream format.
pub enum Encoder {
    OpenAi {
        include_usage: bool,
    },
    Anthropic(Box<MessagesStreamEncoder>),
    Gemini(Box<GenerateContentStreamEncoder>),
    /// The provider already speaks the caller's format: its bytes go out
    /// unchanged and are decoded only for accounting.
    Passthrough(Passthrough),
}

/// The format of a passed-through stream, for an error the gateway adds to it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// OpenAI's chat stream from an OpenAI-wire provider: its events go out
    /// as they came, read only by a scan for what billing needs.
    OpenAi,
    Anthropic,
    /// Gemini's `alt=sse` stream.
    GeminiSse,
}

/// Where a stream's billing facts (usage, finish reason, output so far) come from.
enum Reader {
    /// The provider's stream decoded into canonical chunks.
    Decode(Box<dyn StreamDecoder>),
    /// An OpenAI stream passed through: scanned, never decoded in full.
    Scan(Box<ChatStreamScanner>),
}

impl Reader {
    fn usage(&self) -> Option<Usage> {
        match self {
            Reader::Decode(decoder) => decoder.usage(),
            Reader::Scan(scanner) => scanner.usage(),
        }
    }

    fn usage_is_final(&self) -> bool {
        match self {
            Reader::Decode(decoder) => decoder.usage_is_final(),
            Reader::Scan(scanner) => scanner.usage_is_final(),
        }
    }

    fn finish_reason(&self) -> Option<String> {
        match self {
            Reader::Decode(decoder) => decoder.finish_reason(),
            Reader::Scan(scanner) => scanner.finish_reason(),
        }
    }

    fn output_text(&self) -> &str {
        match self {
            Reader::Decode(decoder) => decoder.output_text(),
            Reader::Scan(scanner) => scanner.output_text(),
        }
    }
}

pub struct AiStream {
    upstream: UpstreamResponseBody,
    reader: Reader,
    encoder: Encoder,
    pending: VecDeque<Bytes>,
    account: Accounting,
    /// id/model/created of the last chunk, for the usage chunk we add at the end.
    last: Option<ChatChunk>,
    ended: bool,
    idle: IdleTimer,
}

/// The longest silence allowed from the provider mid-stream. Hearing from the
/// provider only notes the time; the timer is moved when it fires early, so a
/// stream of many small events does not reschedule a timer for each of them.
pub(crate) struct IdleTimer {
    limit: Duration,
    last_heard: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimer {
    pub(crate) fn new(limit: Duration) -> IdleTimer {
        let now = tokio::time::Instant::now();
        IdleTimer { limit, last_heard: now, timer: Box::pin(tokio::time::sleep_until(now + limit)) }
    }

    pub(crate) fn heard(&mut self) {
        self.last_heard = tokio::time::Instant::now();
    }

    /// True once `limit` has passed since the provider was last heard from;
    /// otherwise the timer is armed for when it would have.
    pub(crate) fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_heard + self.limit;
            if deadline <= tokio::time::Instant::now() {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

fn sse_data(json: &str) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

impl AiStream {
    pub fn new(
        upstream: UpstreamResponseBody,
        decoder: Box<dyn StreamDecoder>,
        encoder: Encoder,
        account: Accounting,
        idle_timeout: Duration,
    ) -> AiStream {
        AiStream::with_reader(upstream, Reader::Decode(decoder), encoder, account, idle_timeout)
    }

    /// An OpenAI chat stream from a provider that speaks OpenAI's format: its
    /// events are forwarded byte for byte as they arrive, and scanned for billing.
    pub fn openai_passthrough(
        upstream: UpstreamResponseBody,
        scanner: ChatStreamScanner,
        account: Accounting,
        idle_timeout: Duration,
    ) -> AiStream {
        let reader = Reader::Scan(Box::new(scanner));
        AiStream::with_reader(upstream, reader, Encoder::Passthrough(Passthrough::OpenAi), account, idle_timeout)
    }

    fn with_reader(
        upstream: UpstreamResponseBody,
        reader: Reader,
        encoder: Encoder,
        account: Accounting,
        idle_timeout: Duration,
    ) -> AiStream {
        let idle = IdleTimer::new(idle_timeout);
        AiStream { upstream, reader, encoder, pending: VecDeque::new(), account, last: None, ended: false, idle }
    }

    fn emit(&mut self, chunks: Vec<ChatChunk>) {
        for mut chunk in chunks {
            let has_output = chunk
                .choices
                .iter()
                .any(|c| c.delta.content.as_deref().is_some_and(|t| !t.is_empty()) || c.delta.tool_calls.is_some());
            if has_output {
                self.account.first_token();
            }
            // Usage-only chunks are the gateway's to send (once, at the end,
            // and only when the caller asked), whatever the provider did.
            if chunk.choices.is_empty() {
                continue;
            }
            match &mut self.encoder {
                Encoder::OpenAi { .. } => {
                    chunk.usage = None;
                    match serde_json::to_string(&chunk) {
                        Ok(json) => self.pending.push_back(sse_data(&json)),
                        Err(error) => tracing::error!(%error, "cannot encode a chat chunk"),
                    }
                }
                Encoder::Anthropic(encoder) => self.pending.extend(encoder.encode(&chunk)),
                Encoder::Gemini(encoder) => self.pending.extend(encoder.encode(&chunk)),
                Encoder::Passthrough(_) => {}
            }
            chunk.choices.clear();
            self.last = Some(chunk);
        }
    }

    /// Everything decoded from one upstream read, as one frame: a provider
    /// that sends many tokens per packet costs one write, not one per token.
    fn take_pending(&mut self) -> Bytes {
        if self.pending.len() == 1 {
            return self.pending.pop_front().unwrap_or_default();
        }
        let mut out = bytes::BytesMut::with_capacity(self.pending.iter().map(Bytes::len).sum());
        for part in self.pending.drain(..) {
            out.extend_from_slice(&part);
        }
        out.freeze()
    }

    fn billed_usage(&self) -> (Usage, bool) {
        billed_usage(
            self.reader.usage(),
            self.reader.usage_is_final(),
            || self.account.prompt_estimate(),
            self.reader.output_text(),
        )
    }

    fn complete(&mut self) {
        self.ended = true;
        let (usage, usage_is_estimate) = self.billed_usage();
        let finish_reason = self.reader.finish_reason();
        match &mut self.encoder {
            Encoder::OpenAi { include_usage } => {
                if *include_usage {
                    let mut chunk = self.last.clone().unwrap_or_else(|| ChatChunk::new("chatcmpl-tollgate", 0, ""));
                    chunk.choices.clear();
                    chunk.usage = Some(usage.clone());
                    if let Ok(json) = serde_json::to_string(&chunk) {
                        self.pending.push_back(sse_data(&json));
                    }
                }
                self.pending.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            Encoder::Anthropic(encoder) => {
                self.pending.extend(encoder.finish(Some(&usage), finish_reason.as_deref()));
            }
            Encoder::Gemini(encoder) => {
                self.pending.extend(encoder.finish(Some(&usage), finish_reason.as_deref()));
            }
            Encoder::Passthrough(Passthrough::OpenAi) => {
                if let Reader::Scan(scanner) = &self.reader {
                    self.pending.push_back(scanner.closing(&usage));
                }
            }
            Encoder::Passthrough(_) => {}
        }
        let output_text = self.reader.output_text().to_string();
        self.account.finish(Served {
            outcome: UsageOutcome::Ok,
            http_status: 200,
            usage: Some(usage),
            usage_is_estimate,
            output_text: &output_text,
            finish_reason,
            error: None,
        });
    }

    /// One read of the provider's body: decoded and re-encoded, or (an
    /// OpenAI passthrough) its whole events forwarded as they are.
    fn on_data(&mut self, data: Bytes) {
        let decoded = match &mut self.reader {
            Reader::Scan(scanner) => {
                let had_output = scanner.has_output();
                let fed = scanner.feed(data, &mut self.pending);
                if !had_output && scanner.has_output() {
                    self.account.first_token();
                }
                fed.map(|()| Vec::new())
            }
            Reader::Decode(decoder) => {
                if matches!(self.encoder, Encoder::Passthrough(_)) {
                    self.pending.push_back(data.clone());
                }
                decoder.feed(&data)
            }
        };
        match decoded {
            Ok(chunks) => self.emit(chunks),
            Err(error) => self.fail(error),
        }
    }

    /// The provider's body ended (or broke): what was left in the reader goes out.
    fn on_end(&mut self) -> Result<(), AdapterError> {
        let decoded = match &mut self.reader {
            Reader::Scan(scanner) => scanner.finish(&mut self.pending).map(|()| Vec::new()),
            Reader::Decode(decoder) => decoder.finish(),
        };
        decoded.map(|chunks| self.emit(chunks))
    }

    fn fail(&mut self, error: AdapterError) {
        self.ended = true;
        let (kind, message) = match &error {
            AdapterError::UpstreamStream { error, .. } => (error.kind, error.message.clone()),
            other => (ErrorKind::Server, other.to_string()),
        };
        match &mut self.encoder {
            Encoder::OpenAi { .. } | Encoder::Passthrough(Passthrough::OpenAi) => {
                let body = serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": "stream_interrupted"}});
                self.pending.push_back(sse_data(&body.to_string()));
            }
            Encoder::Anthropic(_) | Encoder::Passthrough(Passthrough::Anthropic) => {
                self.pending.push_back(anthropic_error_event(kind, &message))
            }
            Encoder::Gemini(encoder) => self.pending.push_back(encoder.error(kind, &message)),
            Encoder::Passthrough(Passthrough::GeminiSse) => {
                self.pending.push_back(gemini_ingress::sse_error_event(kind, &message))
            }
        }
        let output_text = self.reader.output_text().to_string();
        let (usage, usage_is_estimate) = self.billed_usage();
        self.account.finish(Served {
            outcome: UsageOutcome::Error,
            http_status: 200,
            usage: Some(usage),
            usage_is_estimate,
            output_text: &output_text,
            finish_reason: self.reader.finish_reason(),
            error: Some(error.to_string()),
        });
    }
}

impl Body for AiStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.take_pending()))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Pending => {
                    if this.idle.timed_out(cx) {
                        let silent = this.idle.limit.as_millis() as u64;
                        this.fail(AdapterError::UpstreamStream {
                            provider: "provider",
                            error: ProviderError {
                                status: 504,
                                kind: ErrorKind::Timeout,
                                message: format!("the provider sent nothing for {silent} ms mid-stream"),
                                retry_after: None,
                            },
                        });
                        continue;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle.heard();
                    if let Ok(data) = frame.into_data() {
                        this.on_data(data);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "provider stream broke");
                    let err = match this.on_end() {
                        Ok(()) => AdapterError::BadUpstreamPayload { provider: "provider", detail: error.to_string() },
                        Err(e) => e,
                    };
                    this.fail(err);
                }
                Poll::Ready(None) => match this.on_end() {
                    Ok(()) => this.complete(),
                    Err(error) => this.fail(error),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending.is_empty()
    }
}

impl Drop for AiStream {
    fn drop(&mut self) {
        if !self.account.is_done() {
            // The client went away mid-stream: bill what was produced.
            let output_text = self.reader.output_text().to_string();
            let (usage, usage_is_estimate) = self.billed_usage();
            self.account.finish(Served {
                outcome: UsageOutcome::Cancelled,
                http_status: 499,
                usage: Some(usage),
                usage_is_estimate,
                output_text: &output_text,
                finish_reason: self.reader.finish_reason(),
                error: Some("the client closed the connection before the answer was complete".into()),
            });
        }
    }
}

/// What to bill: the provider's counts once it reported its final ones;
/// otherwise (no usage at all, or a stream cut, cancelled or broken before the
/// final counts) the provider's input count if it gave one, and for the output
/// the larger of the provider's running count and the tokenizer's count of the
/// output decoded so far — estimated. The running count matters: Gemini's
/// includes thinking tokens, which never appear in the visible text.
/// (Anthropic's running count is a placeholder 1 until its last event; the
/// larger of the two is then the tokenizer's.)
pub(crate) fn billed_usage(
    reported: Option<Usage>,
    usage_is_final: bool,
    prompt_estimate: impl FnOnce() -> u64,
    output_text: &str,
) -> (Usage, bool) {
    if usage_is_final && let Some(usage) = reported {
        return (usage, false);
    }
    let (input, cached) = match reported.as_ref().filter(|u| u.prompt_tokens > 0) {
        Some(u) => (u.prompt_tokens, u.prompt_tokens_details.as_ref().map(|d| d.cached_tokens)),
        None => (prompt_estimate(), None),
    };
    let running = reported.map_or(0, |u| u.completion_tokens);
    let output = running.max(tokens::count_tokens(output_text));
    (Usage::new(input, output, cached), true)
}
