//! `tollgate-load` command line: a thin layer over the `tollgate_loadtest` library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use tollgate_loadtest::compare::{CompareConfig, CompareRound, run_compare};
use tollgate_loadtest::mock::http::{MockHttp, MockHttpBody, MockHttpConfig};
use tollgate_loadtest::mock::llm::LlmMockConfig;
use tollgate_loadtest::mock::{LatencyDist, MockHandle, tls_config_from_files};
use tollgate_loadtest::report::{ReportError, json, markdown, svg, terminal};
use tollgate_loadtest::runner::run;
use tollgate_loadtest::scenario::Scenario;
use tollgate_loadtest::schedule::parse_duration;
use tollgate_loadtest::spec::LoadSpec;
use tollgate_loadtest::summary::{EXIT_ERROR_RATE, RunSummary};

#[derive(Parser)]
#[command(
    name = "tollgate-load",
    version,
    about = "Load generator with LLM-aware metrics, reports, A/B comparisons and mock upstreams",
    after_help = "Exit codes: 0 success; 1 error (bad target, unreadable file, ...); 2 usage; \
                  3 the run completed but more requests failed than --max-error-rate allows (default 1%)."
)]
struct Cli {
    /// Tokio worker threads (default: one per core). Use 1 when pinning with taskset -c N.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run a load test against one or more URLs.
    Run {
        #[command(flatten)]
        spec: LoadSpec,
        /// No live progress line.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Run a scenario file.
    Scenario {
        #[command(subcommand)]
        cmd: ScenarioCmd,
    },
    /// Run A and B alternately for several rounds and report B/A ratios.
    Compare {
        /// Side A target URL(s), e.g. the upstream directly.
        #[arg(long = "a", value_name = "URL", required = true)]
        a: Vec<String>,
        /// Side B target URL(s), e.g. the same upstream through Tollgate.
        #[arg(long = "b", value_name = "URL", required = true)]
        b: Vec<String>,
        #[arg(long, default_value = "A")]
        label_a: String,
        #[arg(long, default_value = "B")]
        label_b: String,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[command(flatten)]
        spec: LoadSpec,
    },
    /// Start a mock upstream; prints its bound address on the first line of stdout.
    Mock {
        #[command(subcommand)]
        kind: MockCmd,
    },
}

// The CLI is parsed once; boxing the large variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ScenarioCmd {
    /// Run a scenario: its [compare] section if it has one, else its [run] section.
    Run {
        file: PathBuf,
        /// Overrides for the scenario's [run] settings (same flags as `run`).
        #[command(flatten)]
        overrides: LoadSpec,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Parse and validate a scenario without sending traffic.
    Check { file: PathBuf },
}

#[derive(Args, Clone)]
struct MockCommon {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Exit after this long (default: run until Ctrl-C).
    #[arg(long)]
    exit_after: Option<String>,
}

#[derive(Args, Clone)]
struct LlmArgs {
    #[command(flatten)]
    common: MockCommon,
    /// Time to first token: 0, 200ms, uniform:100ms..300ms, exp:200ms, normal:200ms,50ms.
    #[arg(long, default_value = "0")]
    ttft: LatencyDist,
    /// Output tokens per response (capped by the request's max tokens).
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Output pace in tokens/s (0 = all at once).
    #[arg(long, default_value_t = 0.0)]
    tokens_per_second: f64,
    /// Fraction of requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    fail_429: f64,
    /// Fraction of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    fail_500: f64,
    /// Fraction of streams cut half-way.
    #[arg(long, default_value_t = 0.0)]
    cut_stream: f64,
    /// Serve requests that carry no API key (and no anthropic-version) instead of answering
    /// with the provider's auth error.
    #[arg(long)]
    no_auth: bool,
    /// Accept only this key (repeatable; default: any non-empty key).
    #[arg(long = "accept-key", value_name = "KEY")]
    accept_keys: Vec<String>,
    /// Answer every request with this key 429 with retry-after (repeatable).
    #[arg(long = "rate-limited-key", value_name = "KEY")]
    rate_limited_keys: Vec<String>,
    /// Answer every request with this key STATUS, e.g. sk-broken=500 (repeatable).
    #[arg(long = "fail-status-key", value_name = "KEY=STATUS", value_parser = parse_key_status)]
    fail_status_keys: Vec<(String, u16)>,
    /// Seconds in retry-after on 429s.
    #[arg(long, default_value_t = 1)]
    retry_after: u32,
    /// Report no usage (an OpenAI-compatible server that never sends token counts).
    #[arg(long)]
    omit_usage: bool,
    /// Prompt tokens reported as read from the provider's prompt cache.
    #[arg(long, default_value_t = 0)]
    cached_tokens: u32,
    /// Embedding length when a request does not ask for one.
    #[arg(long, default_value_t = 8)]
    embedding_dimensions: usize,
    /// Azure OpenAI deployment and its model, e.g. prod-4o=gpt-4o (repeatable; default: any
    /// deployment, reported as its own model).
    #[arg(long = "azure-deployment", value_name = "DEPLOYMENT=MODEL", value_parser = parse_pair)]
    azure_deployments: Vec<(String, String)>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

fn parse_key_status(s: &str) -> Result<(String, u16), String> {
    let (key, status) = parse_pair(s)?;
    match status.parse::<u16>() {
        Ok(code) if (400..=599).contains(&code) => Ok((key, code)),
        _ => Err(format!("expected KEY=STATUS with a 4xx or 5xx status, got `{s}`")),
    }
}

#[derive(Subcommand)]
enum MockCmd {
    /// Generic HTTP upstream with fixed or echo responses.
    Http {
        #[command(flatten)]
        common: MockCommon,
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// Fixed response body.
        #[arg(long, conflicts_with_all = ["body_size", "echo"])]
        body: Option<String>,
        /// Response body of this many bytes.
        #[arg(long, conflicts_with = "echo")]
        body_size: Option<usize>,
        /// Echo the request body back.
        #[arg(long)]
        echo: bool,
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        /// Response latency: 0, 10ms, uniform:5ms..20ms, exp:10ms, normal:10ms,2ms.
        #[arg(long, default_value = "0")]
        latency: LatencyDist,
    },
    /// OpenAI chat completions and embeddings, plus the Azure OpenAI deployment paths.
    Openai(LlmArgs),
    /// Anthropic Messages (POST /v1/messages).
    Anthropic(LlmArgs),
    /// Gemini generateContent / streamGenerateContent / embedContent / batchEmbedContents.
    Gemini(LlmArgs),
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(Gate::Passed) => std::process::ExitCode::SUCCESS,
        Ok(Gate::Failed) => std::process::ExitCode::from(EXIT_ERROR_RATE),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether a run stayed within --max-error-rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Passed,
    Failed,
}

/// Prints the error-rate verdict of each summary to stderr.
fn gate<'a>(summaries: impl IntoIterator<Item = &'a RunSummary>, max: f64) -> Gate {
    let mut verdict = Gate::Passed;
    for s in summaries {
        if let Err(why) = s.check_error_rate(max) {
            eprintln!("error: {why}; exit code {EXIT_ERROR_RATE}");
            verdict = Gate::Failed;
        }
    }
    verdict
}

/// Writes a report and says where it went.
fn wrote(kind: &str, path: &Path, result: Result<(), ReportError>) -> Result<()> {
    result?;
    let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    println!("{kind} written to {}", shown.display());
    Ok(())
}

fn real_main() -> Result<Gate> {
    tollgate_loadtest::tls::install_provider();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build().context("cannot start the async runtime")?.block_on(dispatch(cli.cmd))
}

async fn dispatch(cmd: Cmd) -> Result<Gate> {
    match cmd {
        Cmd::Run { spec, quiet } => run_spec(&spec, None, quiet).await,
        Cmd::Scenario { cmd: ScenarioCmd::Run { file, overrides, quiet } } => {
            let sc = Scenario::load(&file)?;
            let base = sc.base_dir.clone();
            match sc.compare_specs() {
                Some((a, b, rounds)) => {
                    compare(a.overlay(&overrides), b.overlay(&overrides), rounds, base, quiet).await
                }
                None => run_spec(&sc.run_spec().overlay(&overrides), base.as_deref(), quiet).await,
            }
        }
        Cmd::Scenario { cmd: ScenarioCmd::Check { file } } => {
            let sc = Scenario::load(&file)?;
            let specs = match sc.compare_specs() {
                Some((a, b, _)) => vec![a, b],
                None => vec![sc.run_spec()],
            };
            for s in specs {
                s.to_run_config(sc.base_dir.as_deref()).await?.validate()?;
            }
            println!("{}: ok", file.display());
            Ok(Gate::Passed)
        }
        Cmd::Compare { a, b, label_a, label_b, rounds, spec } => {
            let side = |targets: Vec<String>, label: String| {
                spec.overlay(&LoadSpec { targets, label: Some(label), ..Default::default() })
            };
            compare(side(a, label_a), side(b, label_b), rounds, None, false).await
        }
        Cmd::Mock { kind } => mock(kind).await.map(|()| Gate::Passed),
    }
}

async fn run_spec(spec: &LoadSpec, base: Option<&Path>, quiet: bool) -> Result<Gate> {
    let max_error_rate = spec.max_error_rate()?;
    let mut cfg = spec.to_run_config(base).await?;
    cfg.progress = !quiet;
    let summary = run(cfg).await?;
    print!("{}", terminal::render(&summary));
    let paths = spec.report_paths();
    if let Some(p) = &paths.json {
        wrote("JSON report", p, json::write(p, &summary))?;
    }
    if let Some(p) = &paths.markdown {
        wrote("Markdown report", p, markdown::write(p, &summary))?;
    }
    if let Some(p) = &paths.chart {
        wrote("SVG chart", p, svg::write(p, &summary))?;
    }
    Ok(gate([&summary], max_error_rate))
}

async fn compare(a: LoadSpec, b: LoadSpec, rounds: u32, base: Option<PathBuf>, quiet: bool) -> Result<Gate> {
    let max_error_rate = a.max_error_rate()?.min(b.max_error_rate()?);
    let mut ca = a.to_run_config(base.as_deref()).await?;
    let mut cb = b.to_run_config(base.as_deref()).await?;
    ca.progress = !quiet;
    cb.progress = !quiet;
    let summary = run_compare(CompareConfig { a: ca, b: cb, rounds }, |r| {
        eprintln!(
            "round {}: A {:.1} req/s p99 {:.3}ms | B {:.1} req/s p99 {:.3}ms | B/A rate {:.3}",
            r.round,
            r.a.achieved_rate,
            r.a.latency.p99_ms,
            r.b.achieved_rate,
            r.b.latency.p99_ms,
            r.ratios.achieved_rate
        );
    })
    .await?;
    print!("{}", terminal::render_compare(&summary));
    let paths = a.report_paths();
    if let Some(p) = &paths.json {
        wrote("JSON report", p, json::write(p, &summary))?;
    }
    if let Some(p) = &paths.markdown {
        wrote("Markdown report", p, markdown::write_compare(p, &summary))?;
    }
    if paths.chart.is_some() {
        eprintln!("note: --chart is not produced for comparisons; use `run` per side for charts");
    }
    // The gate applies to each side over all its rounds.
    let side = |pick: fn(&CompareRound) -> &RunSummary| {
        let mut total = RunSummary::default();
        for r in &summary.rounds {
            let s = pick(r);
            total.label.clone_from(&s.label);
            total.requests += s.requests;
            total.failed += s.failed;
            for (k, v) in &s.status_codes {
                *total.status_codes.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &s.errors {
                *total.errors.entry(k.clone()).or_default() += v;
            }
        }
        total
    };
    Ok(gate(&[side(|r| &r.a), side(|r| &r.b)], max_error_rate))
}

fn tls_of(c: &MockCommon) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
    match (&c.tls_cert, &c.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(tls_config_from_files(cert, key)?)),
        _ => Ok(None),
    }
}

fn llm_config(a: &LlmArgs) -> Result<LlmMockConfig> {
    for (name, v) in [("--fail-429", a.fail_429), ("--fail-500", a.fail_500), ("--cut-stream", a.cut_stream)] {
        if !(0.0..=1.0).contains(&v) {
            bail!("{name} is a fraction between 0 and 1, got {v}");
        }
    }
    Ok(LlmMockConfig {
        listen: a.common.listen,
        tls: tls_of(&a.common)?,
        ttft: a.ttft.clone(),
        tokens: a.tokens,
        tokens_per_second: a.tokens_per_second,
        fail_429: a.fail_429,
        fail_500: a.fail_500,
        cut_stream: a.cut_stream,
        require_auth: !a.no_auth,
        accepted_keys: a.accept_keys.clone(),
        rate_limited_keys: a.rate_limited_keys.clone(),
        fail_status_keys: a.fail_status_keys.clone(),
        retry_after_secs: a.retry_after,
        omit_usage: a.omit_usage,
        cached_tokens: a.cached_tokens,
        embedding_dimensions: a.embedding_dimensions,
        azure_deployments: a.azure_deployments.clone(),
        // Nobody can read the log of a CLI mock; keeping it would only grow memory under load.
        request_log_limit: 0,
        answer_extra: None,
    })
}

async fn mock(kind: MockCmd) -> Result<()> {
    use tollgate_loadtest::mock::{anthropic::MockAnthropic, gemini::MockGemini, openai::MockOpenAi};
    let (handle, common): (MockHandle, MockCommon) = match kind {
        MockCmd::Http { common, status, body, body_size, echo, content_type, latency } => {
            let body = if echo {
                MockHttpBody::Echo
            } else if let Some(n) = body_size {
                MockHttpBody::Size(n)
            } else {
                MockHttpBody::Fixed(Bytes::from(body.unwrap_or_else(|| "ok\n".into())))
            };
            let cfg =
                MockHttpConfig { listen: common.listen, status, body, content_type, latency, tls: tls_of(&common)? };
            (MockHttp::spawn(cfg).await?, common)
        }
        MockCmd::Openai(a) => (MockOpenAi::spawn(llm_config(&a)?).await?, a.common),
        MockCmd::Anthropic(a) => (MockAnthropic::spawn(llm_config(&a)?).await?, a.common),
        MockCmd::Gemini(a) => (MockGemini::spawn(llm_config(&a)?).await?, a.common),
    };
    println!("{}", handle.local_addr());
    std::io::stdout().flush()?;
    eprintln!("mock listening on {} (Ctrl-C to stop)", handle.url());
    match common.exit_after.as_deref().map(parse_duration).transpose()? {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("mock served {} requests", handle.requests_served());
            handle.shutdown().await;
        }
        None => handle.wait_for_ctrl_c().await,
    }
    Ok(())
}
