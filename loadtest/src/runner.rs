//! Drives a run: spawns one worker per connection, each pulling tickets from the shared
//! dispatcher, and folds the workers' recorders into a `RunSummary`.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use crate::client::{ClientOptions, Conn};
use crate::schedule::{Dispatcher, Schedule, Ticket, charged_latency};
use crate::sse::{SseFormat, StreamTracker};
use crate::stats::{Live, Outcome, Recorder, Timeline};
use crate::summary::RunSummary;
use crate::target::Target;
use crate::template::{Template, Vars};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no target URL given; pass at least one, e.g. http://127.0.0.1:8080/")]
    NoTargets,
    #[error("connections must be at least 1")]
    NoConnections,
    #[error("the run is unbounded; give a duration, a request count, or schedule phases")]
    Unbounded,
    #[error("header value for `{0}` is not valid HTTP; remove control characters")]
    BadHeader(String),
}

/// What each request looks like.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub headers: Vec<(HeaderName, Template)>,
    pub body: Option<Template>,
    /// Pool of API keys; request `seq` uses `keys[seq % len]` through `{{key}}`.
    pub keys: Vec<String>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec { method: Method::GET, headers: Vec::new(), body: None, keys: Vec::new() }
    }
}

#[derive(Clone)]
pub struct RunConfig {
    pub label: String,
    pub targets: Vec<Target>,
    pub request: RequestSpec,
    pub connections: usize,
    /// Open-loop arrival schedule; None means closed loop (each connection sends back to back).
    pub schedule: Option<Schedule>,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub keepalive: bool,
    pub client: ClientOptions,
    pub sse: Option<SseFormat>,
    pub timeout: Duration,
    pub progress: bool,
}

impl RunConfig {
    pub fn validate(&self) -> Result<(), RunError> {
        if self.targets.is_empty() {
            return Err(RunError::NoTargets);
        }
        if self.connections == 0 {
            return Err(RunError::NoConnections);
        }
        let bounded_schedule = self.schedule.as_ref().is_some_and(|s| s.total_requests().is_some());
        if self.duration.is_none() && self.requests.is_none() && !bounded_schedule {
            return Err(RunError::Unbounded);
        }
        Ok(())
    }
}

/// How early a request may go out to avoid a timer wake-up.
const SEND_SLACK: Duration = Duration::from_millis(1);

/// Sends the request for one ticket. `origin` is the instant latency is measured from.
pub trait Sender {
    fn send(&mut self, ticket: &Ticket, origin: Instant) -> impl Future<Output = Outcome> + Send;
}

/// Everything workers share.
pub struct RunContext {
    pub dispatcher: Dispatcher,
    pub start: Instant,
    pub timeline: Timeline,
    pub live: Live,
}

/// The worker loop. It uses tokio's clock so tests can drive it with paused (virtual) time.
pub async fn drive<S: Sender>(sender: &mut S, ctx: &RunContext, rec: &mut Recorder) {
    loop {
        let now = Instant::now();
        let Some(ticket) = ctx.dispatcher.next(now - ctx.start) else {
            break;
        };
        let scheduled_at = ticket.scheduled.map(|offset| ctx.start + offset);
        if let Some(at) = scheduled_at {
            // tokio timers tick in whole milliseconds and wake late, so waiting for every slot
            // would cap each connection near 1000 req/s; send up to SEND_SLACK early instead.
            if at > now + SEND_SLACK {
                tokio::time::sleep_until(at - SEND_SLACK).await;
            }
        }
        let sent = Instant::now();
        // Early sends are timed from the actual send, late ones from the schedule.
        let origin = scheduled_at.map_or(sent, |at| at.min(sent));
        ctx.live.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = sender.send(&ticket, origin).await;
        ctx.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        let done = Instant::now();
        let latency = charged_latency(Some(origin - ctx.start), sent - ctx.start, done - ctx.start);
        rec.record(&outcome, latency, sent - origin, done - ctx.start, &ctx.timeline, &ctx.live);
    }
    rec.flush(&ctx.timeline);
}

/// Pre-rendered parts of the request so the common static case allocates nothing new.
struct Prepared {
    method: Method,
    uri: http::Uri,
    static_headers: HeaderMap,
    dynamic_headers: Vec<(HeaderName, Template)>,
    static_body: Bytes,
    dynamic_body: Option<Template>,
}

impl Prepared {
    fn new(cfg: &RunConfig, target: &Target) -> Result<Self, RunError> {
        let uri: http::Uri = if cfg.client.http2 {
            target.url.parse().map_err(|_| RunError::BadHeader(":path".into()))?
        } else {
            target.path_and_query.parse().map_err(|_| RunError::BadHeader(":path".into()))?
        };
        let mut static_headers = HeaderMap::new();
        let mut dynamic_headers = Vec::new();
        if !cfg.client.http2 {
            let host = HeaderValue::from_str(&target.authority).map_err(|_| RunError::BadHeader("host".into()))?;
            static_headers.insert(HOST, host);
            if !cfg.keepalive {
                static_headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        for (name, t) in &cfg.request.headers {
            match t.as_static() {
                Some(v) => {
                    let v = HeaderValue::from_str(&v).map_err(|_| RunError::BadHeader(name.to_string()))?;
                    static_headers.append(name.clone(), v);
                }
                None => dynamic_headers.push((name.clone(), t.clone())),
            }
        }
        let (static_body, dynamic_body) = match &cfg.request.body {
            None => (Bytes::new(), None),
            Some(t) => match t.as_static() {
                Some(s) => (Bytes::from(s), None),
                None => (Bytes::new(), Some(t.clone())),
            },
        };
        Ok(Prepared {
            method: cfg.request.method.clone(),
            uri,
            static_headers,
            dynamic_headers,
            static_body,
            dynamic_body,
        })
    }

    fn build(&self, vars: &Vars<'_>, rng: &mut impl rand::Rng) -> Request<Full<Bytes>> {
        let body = match &self.dynamic_body {
            Some(t) => Bytes::from(t.render_string(vars, rng)),
            None => self.static_body.clone(),
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.static_headers.clone();
        for (name, t) in &self.dynamic_headers {
            if let Ok(v) = HeaderValue::from_str(&t.render_string(vars, rng)) {
                req.headers_mut().append(name.clone(), v);
            }
        }
        req
    }
}

/// Real HTTP sender: owns one connection and reconnects when it is lost (or per request
/// without keep-alive).
struct HttpSender {
    worker: usize,
    target: Target,
    prepared: Prepared,
    keys: Arc<Vec<String>>,
    client: ClientOptions,
    keepalive: bool,
    sse: Option<SseFormat>,
    timeout: Duration,
    conn: Option<Conn>,
    rng: rand::rngs::StdRng,
}

fn classify(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        "incomplete_message"
    } else if e.is_closed() || e.is_canceled() {
        "connection_closed"
    } else if e.is_parse() || e.is_parse_status() {
        "parse"
    } else if e.is_body_write_aborted() {
        "body_write"
    } else {
        "http"
    }
    .to_string()
}

impl HttpSender {
    async fn exchange(&mut self, ticket: &Ticket, origin: Instant) -> Outcome {
        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            match Conn::connect(&self.target, &self.client).await {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    return Outcome { error: Some(e.class().to_string()), ..Default::default() };
                }
            }
        }
        let key = if self.keys.is_empty() { "" } else { &self.keys[(ticket.seq % self.keys.len() as u64) as usize] };
        let vars = Vars { seq: ticket.seq, worker: self.worker, key };
        let req = self.prepared.build(&vars, &mut self.rng);
        let conn = self.conn.as_mut().expect("connected above");
        let resp = match conn.send(req).await {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Outcome { error: Some(classify(&e)), ..Default::default() };
            }
        };
        let status = resp.status().as_u16();
        let mut tracker = match self.sse {
            Some(f) if resp.status().is_success() => Some(StreamTracker::new(f)),
            _ => None,
        };
        let mut body = resp.into_body();
        let mut outcome = Outcome { status: Some(status), ..Default::default() };
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        outcome.bytes += data.len() as u64;
                        if let Some(t) = tracker.as_mut() {
                            t.feed(data, origin.elapsed());
                        }
                    }
                }
                Some(Err(e)) => {
                    self.conn = None;
                    outcome.error = Some(if tracker.is_some() { "stream_incomplete".into() } else { classify(&e) });
                    break;
                }
            }
        }
        if let Some(t) = tracker {
            let summary = t.finish();
            if outcome.error.is_none() {
                if let Some(e) = &summary.error {
                    outcome.error = Some(format!("stream_error:{e}"));
                } else if !summary.complete {
                    outcome.error = Some("stream_incomplete".into());
                }
            }
            outcome.stream = Some(summary);
        }
        outcome
    }
}

impl Sender for HttpSender {
    async fn send(&mut self, ticket: &Ticket, origin: Instant) -> Outcome {
        let timeout = self.timeout;
        let outcome = match tokio::time::timeout(timeout, self.exchange(ticket, origin)).await {
            Ok(o) => o,
            Err(_) => {
                self.conn = None;
                Outcome { error: Some("timeout".into()), ..Default::default() }
            }
        };
        if !self.keepalive {
            self.conn = None;
        }
        outcome
    }
}

/// The open-loop target of the second that ends at `elapsed`: what the schedule planned
/// to send in it, so a ramp shows as a rising target rather than as its average.
pub fn live_target(schedule: &Schedule, elapsed: Duration) -> f64 {
    let from = elapsed.saturating_sub(Duration::from_secs(1));
    let span = (elapsed - from).as_secs_f64();
    if span <= 0.0 { schedule.rate_at(elapsed) } else { schedule.arrivals_between(from, elapsed) / span }
}

/// The live progress line: `[   5.0s/10s] 900 done, 200 req/s (target 200), 0 errors, 3 in flight`.
pub fn progress_line(
    elapsed: Duration,
    total: Option<Duration>,
    done: u64,
    rate: u64,
    target: Option<f64>,
    errors: u64,
    in_flight: u64,
) -> String {
    let elapsed = elapsed.as_secs_f64();
    let target = target.map(|r| format!(" (target {r:.0})")).unwrap_or_default();
    let of = total.map(|t| format!("/{:.0}s", t.as_secs_f64())).unwrap_or_default();
    format!("[{elapsed:6.1}s{of}] {done} done, {rate} req/s{target}, {errors} errors, {in_flight} in flight")
}

fn spawn_progress(
    ctx: Arc<RunContext>,
    schedule: Option<Schedule>,
    total: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tick.tick().await;
            let (done, errors, in_flight) = ctx.live.snapshot();
            let elapsed = ctx.start.elapsed();
            let rate = done - last;
            last = done;
            let target = schedule.as_ref().map(|s| live_target(s, elapsed));
            let line = progress_line(elapsed, total, done, rate, target, errors, in_flight);
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
    })
}

/// Runs a load test to completion (or until Ctrl-C) and summarises it.
pub async fn run(cfg: RunConfig) -> Result<RunSummary, RunError> {
    cfg.validate()?;
    for t in &cfg.targets {
        Prepared::new(&cfg, t)?;
    }
    // A schedule with an endless tail (`--rate R --ramp-up D -n N`) is bounded by `-n`,
    // not by the end of its phases.
    let deadline = cfg.duration.or_else(|| {
        cfg.schedule.as_ref().filter(|s| s.then.is_none()).map(Schedule::duration).filter(|d| !d.is_zero())
    });
    let ctx = Arc::new(RunContext {
        dispatcher: Dispatcher::new(cfg.schedule.clone(), cfg.requests, deadline),
        start: Instant::now(),
        timeline: Timeline::default(),
        live: Live::default(),
    });
    let keys = Arc::new(cfg.request.keys.clone());
    let mut workers = Vec::with_capacity(cfg.connections);
    for id in 0..cfg.connections {
        let ti = id % cfg.targets.len();
        let p = Prepared::new(&cfg, &cfg.targets[ti])?;
        let mut sender = HttpSender {
            worker: id,
            target: cfg.targets[ti].clone(),
            prepared: p,
            keys: keys.clone(),
            client: cfg.client.clone(),
            keepalive: cfg.keepalive,
            sse: cfg.sse,
            timeout: cfg.timeout,
            conn: None,
            rng: rand::SeedableRng::from_rng(&mut rand::rng()),
        };
        let ctx = ctx.clone();
        workers.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            drive(&mut sender, &ctx, &mut rec).await;
            rec
        }));
    }
    let progress = cfg.progress.then(|| spawn_progress(ctx.clone(), cfg.schedule.clone(), deadline));
    let stopper = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                ctx.dispatcher.stop();
            }
        })
    };
    let mut total = Recorder::default();
    for w in workers {
        if let Ok(rec) = w.await {
            total.merge(&rec);
        }
    }
    let elapsed = ctx.start.elapsed();
    stopper.abort();
    if let Some(p) = progress {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    Ok(RunSummary::new(&cfg, &total, elapsed, ctx.timeline.points()))
}
