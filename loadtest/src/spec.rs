//! `LoadSpec`: the one description of a run, filled from CLI flags or a scenario file, and
//! turned into a validated `RunConfig`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};
use serde::{Deserialize, Serialize};

use crate::client::ClientOptions;
use crate::runner::{RequestSpec, RunConfig};
use crate::schedule::{Phase, Schedule, ScheduleError, parse_duration};
use crate::sse::SseFormat;
use crate::target::{Target, TargetError};
use crate::template::{Template, TemplateError};
use crate::tls::{TlsError, client_config};

/// Used when neither a duration, a request count nor phases bound the run.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECTIONS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid header `{0}`: write it as 'Name: value'")]
    Header(String),
    #[error("invalid method `{0}`: use an HTTP method such as GET or POST")]
    Method(String),
    #[error("cannot read {path}: {source}; check the path (scenario paths are relative to the scenario file)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0} contains no API keys; put one key per line")]
    NoKeys(PathBuf),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("--max-error-rate is a fraction between 0 and 1 (0.01 = 1%), got {0}")]
    ErrorRate(f64),
}

/// How to generate load. Every field is optional so scenario sections can be layered.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadSpec {
    /// Target URLs (http:// or https://); connections are spread over them round-robin.
    #[arg(value_name = "URL")]
    pub targets: Vec<String>,
    /// Name of this run in reports.
    #[arg(long)]
    pub label: Option<String>,
    /// Open-loop constant arrival rate in requests/s (latency counted from the scheduled send
    /// time, free of coordinated omission). Without it the run is closed-loop.
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// Connections (closed loop: concurrent requests; open loop: the maximum in flight).
    #[arg(short = 'c', long)]
    pub connections: Option<usize>,
    /// Run length, e.g. 30s or 2m (default 10s when nothing else bounds the run).
    #[arg(short = 'd', long)]
    pub duration: Option<String>,
    /// Stop after this many requests.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// With --rate: ramp linearly from 0 to the rate over this long first.
    #[arg(long)]
    pub ramp_up: Option<String>,
    /// Open-loop schedule phase, repeatable: RATE@DUR (step) or FROM..TO@DUR (ramp).
    #[arg(long = "phase", value_name = "PHASE")]
    pub phases: Vec<String>,
    /// Use HTTP/2 (h2c prior knowledge over http://, ALPN over https://).
    #[arg(long)]
    pub http2: bool,
    /// Open a new connection for every request.
    #[arg(long)]
    pub no_keepalive: bool,
    /// HTTP method (default GET, or POST when a body is given).
    #[arg(short = 'm', long)]
    pub method: Option<String>,
    /// Request header 'Name: value', repeatable; values may use {{seq}}, {{uuid}}, {{random:1-100}}, {{key}}.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Request body (template).
    #[arg(long)]
    pub body: Option<String>,
    /// Request body read from a file (template).
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// File with one API key per line, used round-robin as {{key}}.
    #[arg(long)]
    pub api_keys_file: Option<PathBuf>,
    /// Header carrying the key when no header uses {{key}} (default 'Authorization: Bearer {{key}}').
    #[arg(long)]
    pub key_header: Option<String>,
    /// Parse responses as LLM SSE streams and report TTFT, inter-token latency and tokens/s.
    #[arg(long, value_enum)]
    pub sse: Option<SseFormat>,
    /// Per-request timeout (default 30s).
    #[arg(long)]
    pub timeout: Option<String>,
    /// PEM file with CA certificates to trust for https targets.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Accept any server certificate (test setups only).
    #[arg(long)]
    pub insecure: bool,
    /// Allow targets that are not on loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// Write a JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a Markdown report here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Write an SVG chart of latency percentiles and throughput over time here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Exit with code 3 when more than this fraction of requests fails (HTTP 4xx/5xx,
    /// transport errors, incomplete streams) [default: 0.01, i.e. 1%; 1 allows any error rate].
    /// A run in which no request completed always exits 3.
    #[arg(long, value_name = "FRACTION")]
    pub max_error_rate: Option<f64>,
}

/// Where reports go.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportPaths {
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub chart: Option<PathBuf>,
}

fn resolve_path(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    }
}

fn read(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.to_path_buf(), source })
}

impl LoadSpec {
    /// `over` wins field by field; lists replace rather than append; flags are OR-ed.
    pub fn overlay(&self, over: &LoadSpec) -> LoadSpec {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            b.clone().or_else(|| a.clone())
        }
        fn list(a: &[String], b: &[String]) -> Vec<String> {
            if b.is_empty() { a.to_vec() } else { b.to_vec() }
        }
        LoadSpec {
            targets: list(&self.targets, &over.targets),
            label: pick(&self.label, &over.label),
            rate: pick(&self.rate, &over.rate),
            connections: pick(&self.connections, &over.connections),
            duration: pick(&self.duration, &over.duration),
            requests: pick(&self.requests, &over.requests),
            ramp_up: pick(&self.ramp_up, &over.ramp_up),
            phases: list(&self.phases, &over.phases),
            http2: self.http2 || over.http2,
            no_keepalive: self.no_keepalive || over.no_keepalive,
            method: pick(&self.method, &over.method),
            headers: list(&self.headers, &over.headers),
            body: pick(&self.body, &over.body),
            body_file: pick(&self.body_file, &over.body_file),
            api_keys_file: pick(&self.api_keys_file, &over.api_keys_file),
            key_header: pick(&self.key_header, &over.key_header),
            sse: pick(&self.sse, &over.sse),
            timeout: pick(&self.timeout, &over.timeout),
            cacert: pick(&self.cacert, &over.cacert),
            insecure: self.insecure || over.insecure,
            allow_remote: self.allow_remote || over.allow_remote,
            json: pick(&self.json, &over.json),
            markdown: pick(&self.markdown, &over.markdown),
            chart: pick(&self.chart, &over.chart),
            max_error_rate: pick(&self.max_error_rate, &over.max_error_rate),
        }
    }

    /// The error-rate gate: `--max-error-rate`, default 1%.
    pub fn max_error_rate(&self) -> Result<f64, SpecError> {
        match self.max_error_rate {
            None => Ok(crate::summary::DEFAULT_MAX_ERROR_RATE),
            Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
            Some(r) => Err(SpecError::ErrorRate(r)),
        }
    }

    pub fn report_paths(&self) -> ReportPaths {
        ReportPaths { json: self.json.clone(), markdown: self.markdown.clone(), chart: self.chart.clone() }
    }

    /// The open-loop schedule, if any.
    pub fn schedule(&self) -> Result<Option<Schedule>, SpecError> {
        let duration = self.duration.as_deref().map(parse_duration).transpose()?;
        if !self.phases.is_empty() {
            if self.rate.is_some() || self.ramp_up.is_some() {
                return Err(SpecError::Conflict("use either --phase or --rate/--ramp-up, not both"));
            }
            let phases = self.phases.iter().map(|p| Phase::parse(p)).collect::<Result<Vec<_>, _>>()?;
            return Ok(Some(Schedule { phases, then: None }));
        }
        let Some(rate) = self.rate else {
            if self.ramp_up.is_some() {
                return Err(SpecError::Conflict("--ramp-up needs --rate"));
            }
            return Ok(None);
        };
        if !rate.is_finite() || rate <= 0.0 {
            return Err(ScheduleError::BadRate(rate).into());
        }
        let mut phases = Vec::new();
        let mut rest = duration;
        if let Some(r) = self.ramp_up.as_deref().map(parse_duration).transpose()? {
            phases.push(Phase::ramp(0.0, rate, r));
            rest = rest.map(|d| d.saturating_sub(r));
        }
        Ok(Some(match (rest, self.requests) {
            (Some(d), _) => {
                phases.push(Phase::constant(rate, d));
                Schedule { phases, then: None }
            }
            (None, Some(_)) => Schedule { phases, then: Some(rate) },
            (None, None) => {
                let d = DEFAULT_DURATION.saturating_sub(phases.iter().map(|p| p.duration).sum());
                phases.push(Phase::constant(rate, d));
                Schedule { phases, then: None }
            }
        }))
    }

    /// Resolves targets and files into a runnable config. Relative input files are taken
    /// from `base_dir` (the scenario's folder) when given.
    pub async fn to_run_config(&self, base_dir: Option<&Path>) -> Result<RunConfig, SpecError> {
        self.max_error_rate()?;
        let schedule = self.schedule()?;
        let mut duration = self.duration.as_deref().map(parse_duration).transpose()?;
        if duration.is_none() && self.requests.is_none() && schedule.is_none() {
            duration = Some(DEFAULT_DURATION);
        }
        let mut targets = Vec::new();
        for url in &self.targets {
            targets.push(Target::resolve(url, self.allow_remote).await?);
        }
        let mut headers = Vec::new();
        for h in &self.headers {
            headers.push(parse_header(h)?);
        }
        let body_text = match (&self.body, &self.body_file) {
            (Some(_), Some(_)) => {
                return Err(SpecError::Conflict("use either --body or --body-file, not both"));
            }
            (Some(b), None) => Some(b.clone()),
            (None, Some(f)) => Some(read(&resolve_path(base_dir, f))?),
            (None, None) => None,
        };
        let body = body_text.as_deref().map(Template::parse).transpose()?;
        let keys = match &self.api_keys_file {
            None => Vec::new(),
            Some(f) => {
                let path = resolve_path(base_dir, f);
                let keys: Vec<String> = read(&path)?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string)
                    .collect();
                if keys.is_empty() {
                    return Err(SpecError::NoKeys(path));
                }
                keys
            }
        };
        if !keys.is_empty() && !headers.iter().any(|(_, t)| t.uses_key()) {
            headers.push(parse_header(self.key_header.as_deref().unwrap_or("Authorization: Bearer {{key}}"))?);
        }
        let has_body = body.is_some();
        if let Some(text) = &body_text {
            let looks_json = matches!(text.trim_start().chars().next(), Some('{' | '['));
            if looks_json && !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE) {
                headers.push((http::header::CONTENT_TYPE, Template::parse("application/json")?));
            }
        }
        let method = match &self.method {
            Some(m) => Method::from_bytes(m.to_uppercase().as_bytes()).map_err(|_| SpecError::Method(m.clone()))?,
            None if has_body => Method::POST,
            None => Method::GET,
        };
        let needs_tls = targets.iter().any(|t| t.tls);
        let tls = if needs_tls {
            Some(client_config(
                self.cacert.as_ref().map(|p| resolve_path(base_dir, p)).as_deref(),
                self.insecure,
                self.http2,
            )?)
        } else {
            None
        };
        let timeout = self.timeout.as_deref().map(parse_duration).transpose()?.unwrap_or(Duration::from_secs(30));
        Ok(RunConfig {
            label: self.label.clone().unwrap_or_else(|| "run".to_string()),
            targets,
            request: RequestSpec { method, headers, body, keys },
            connections: self.connections.unwrap_or(DEFAULT_CONNECTIONS),
            schedule,
            duration,
            requests: self.requests,
            keepalive: !self.no_keepalive,
            client: ClientOptions { http2: self.http2, tls, connect_timeout: timeout.min(Duration::from_secs(10)) },
            sse: self.sse,
            timeout,
            progress: false,
        })
    }
}

fn parse_header(h: &str) -> Result<(HeaderName, Template), SpecError> {
    let (name, value) = h.split_once(':').ok_or_else(|| SpecError::Header(h.to_string()))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| SpecError::Header(h.to_string()))?;
    Ok((name, Template::parse(value.trim())?))
}
