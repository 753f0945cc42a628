//! W3C trace context on the request path, and OTLP export of one server span
//! per request when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `telemetry.otlp_endpoint`)
//! is set. Without an exporter the incoming `traceparent` passes through untouched.

use std::sync::OnceLock;
use std::time::SystemTime;

use http::HeaderValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use rand::RngCore;

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

static TRACER: OnceLock<(SdkTracerProvider, SdkTracer)> = OnceLock::new();

thread_local! {
    static NEXT_IDS: std::cell::Cell<Option<(TraceId, SpanId)>> = const { std::cell::Cell::new(None) };
}

/// Gives the SDK the ids this request already uses, else random ones.
#[derive(Debug)]
struct PresetIds(RandomIdGenerator);

impl IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS.with(|ids| ids.get()).map_or_else(|| self.0.new_trace_id(), |(t, _)| t)
    }
    fn new_span_id(&self) -> SpanId {
        NEXT_IDS.with(|ids| ids.get()).map_or_else(|| self.0.new_span_id(), |(_, s)| s)
    }
}

/// Installs the OTLP/gRPC exporter once per process. Returns false if the
/// endpoint is unusable (the error is logged and tracing stays off).
pub fn init_otlp(endpoint: &str) -> bool {
    if TRACER.get().is_some() {
        return true;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
    {
        Ok(e) => e,
        Err(error) => {
            tracing::error!(%error, endpoint, "cannot set up the OTLP exporter; tracing is off");
            return false;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("tollgate").build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(PresetIds(RandomIdGenerator::default()))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("tollgate");
    let _ = TRACER.set((provider, tracer));
    true
}

pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Flushes spans still buffered; called on shutdown.
pub fn shutdown() {
    if let Some((provider, _)) = TRACER.get() {
        let _ = provider.force_flush();
    }
}

/// This request's place in a trace.
#[derive(Clone)]
pub struct TraceCtx {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    parent: Option<SpanId>,
    flags: TraceFlags,
    started: SystemTime,
}

impl TraceCtx {
    /// Continues the caller's trace, or starts one.
    pub fn start(headers: &http::HeaderMap) -> TraceCtx {
        let mut rng = rand::rng();
        let span_id = SpanId::from_bytes(rng.next_u64().to_be_bytes());
        if let Some((trace_id, parent, flags)) = headers.get(&TRACEPARENT).and_then(parse) {
            return TraceCtx { trace_id, span_id, parent: Some(parent), flags, started: SystemTime::now() };
        }
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        TraceCtx {
            trace_id: TraceId::from_bytes(id),
            span_id,
            parent: None,
            flags: TraceFlags::SAMPLED,
            started: SystemTime::now(),
        }
    }

    /// The `traceparent` for the upstream request: our span is its parent.
    pub fn header(&self) -> HeaderValue {
        let value = format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags.to_u8());
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
    }

    /// A span inside this one (same trace, this span as parent), e.g. the
    /// GenAI client span of an AI request.
    pub fn child(&self) -> TraceCtx {
        TraceCtx {
            trace_id: self.trace_id,
            span_id: SpanId::from_bytes(rand::rng().next_u64().to_be_bytes()),
            parent: Some(self.span_id),
            flags: self.flags,
            started: SystemTime::now(),
        }
    }

    pub fn finish(self, name: &str, status: u16, attributes: Vec<KeyValue>) {
        self.end(name, SpanKind::Server, status >= 500, &format!("HTTP {status}"), attributes);
    }

    /// Ends a client span (a call this node made), e.g. to an AI provider.
    pub fn finish_client(self, name: &str, error: Option<&str>, attributes: Vec<KeyValue>) {
        self.end(name, SpanKind::Client, error.is_some(), error.unwrap_or(""), attributes);
    }

    fn end(self, name: &str, kind: SpanKind, failed: bool, why: &str, attributes: Vec<KeyValue>) {
        let Some((_, tracer)) = TRACER.get() else { return };
        let parent = match self.parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                self.trace_id,
                p,
                self.flags,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let builder = tracer
            .span_builder(name.to_string())
            .with_kind(kind)
            .with_start_time(self.started)
            .with_attributes(attributes);
        // The ids were chosen at the start of the request (the upstream already
        // saw our span id); the id generator hands them to the SDK.
        NEXT_IDS.with(|ids| ids.set(Some((self.trace_id, self.span_id))));
        let mut span = tracer.build_with_context(builder, &parent);
        NEXT_IDS.with(|ids| ids.set(None));
        if failed {
            opentelemetry::trace::Span::set_status(&mut span, Status::error(why.to_string()));
        }
        opentelemetry::trace::Span::end(&mut span);
    }
}

fn parse(value: &HeaderValue) -> Option<(TraceId, SpanId, TraceFlags)> {
    let s = value.to_str().ok()?;
    let mut parts = s.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    Some((trace_id, span_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_traceparent_with_a_new_span() {
        let mut h = http::HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let t = TraceCtx::start(&h);
        let out = t.header();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!out.contains("00f067aa0ba902b7"), "the upstream's parent is our span");
        assert!(out.ends_with("-01"));
        h.insert(&TRACEPARENT, HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
        assert_ne!(TraceCtx::start(&h).trace_id, TraceId::INVALID, "an invalid parent starts a new trace");
    }
}
