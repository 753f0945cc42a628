//! What a run reports: the error-rate gate (exit code 3), the configured target of a
//! ramped run in every report (live line, summary, Markdown, SVG) with the ramp drawn,
//! where report files went, the LLM panels of an SSE run's chart, and y axes with
//! headroom. Runs use mocks on 127.0.0.1 and are bounded by counts; nothing asserts timing.

use std::process::Command;
use std::time::Duration;

use tollgate_loadtest::mock::LatencyDist;
use tollgate_loadtest::mock::http::{MockHttp, MockHttpConfig};
use tollgate_loadtest::mock::llm::LlmMockConfig;
use tollgate_loadtest::mock::openai::MockOpenAi;
use tollgate_loadtest::report::svg::axis_max;
use tollgate_loadtest::report::{markdown, svg, terminal};
use tollgate_loadtest::runner::{live_target, progress_line, run};
use tollgate_loadtest::spec::LoadSpec;
use tollgate_loadtest::sse::SseFormat;
use tollgate_loadtest::stats::{Recorder, TimelinePoint};
use tollgate_loadtest::summary::{EXIT_ERROR_RATE, RunSummary};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-load");

fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn load(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(["--threads", "1"]).args(args).output().unwrap()
}

#[test]
fn a_run_where_every_request_fails_exits_3_and_says_why() {
    let url = format!("http://127.0.0.1:{}/", dead_port());
    let out = load(&["run", &url, "-n", "10", "-c", "2", "-q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(i32::from(EXIT_ERROR_RATE)), "{stderr}");
    assert!(stderr.contains("10 of 10 requests failed (100%), above --max-error-rate 1%"), "{stderr}");
    assert!(stderr.contains("connect: 10"), "the message names the cause: {stderr}");
    // The summary is still printed for the person reading the log.
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed         10"));

    // A gate that allows every failure passes; a nonsense gate is an error, not a pass.
    let out = load(&["run", &url, "-n", "10", "-c", "2", "-q", "--max-error-rate", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = load(&["run", &url, "-n", "1", "-q", "--max-error-rate", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-error-rate is a fraction"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_above_the_gate_fail_and_below_it_pass() {
    let mock = MockHttp::spawn(MockHttpConfig { status: 503, ..Default::default() }).await.unwrap();
    let spec = LoadSpec { targets: vec![mock.url()], requests: Some(20), connections: Some(2), ..Default::default() };
    let s = run(spec.to_run_config(None).await.unwrap()).await.unwrap();
    let why = s.check_error_rate(spec.max_error_rate().unwrap()).unwrap_err();
    assert!(why.contains("20 of 20 requests failed") && why.contains("HTTP 503: 20"), "{why}");
    assert!(s.check_error_rate(1.0).is_ok());
    // 1 failure in 200 is 0.5%: within the default 1%.
    let mixed = RunSummary { requests: 200, failed: 1, ..Default::default() };
    assert!(mixed.check_error_rate(0.01).is_ok());
    assert!(mixed.check_error_rate(0.001).is_err());
}

#[test]
fn the_cli_says_where_each_report_was_written() {
    use std::io::{BufRead, BufReader};
    let mut mock = Command::new(BIN)
        .args(["mock", "http", "--listen", "127.0.0.1:0", "--exit-after", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(mock.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["run", &format!("http://{}/", line.trim()), "-n", "50", "-c", "2", "-q"])
        .args(["--json", "r.json", "--markdown", "r.md", "--chart", "r.svg"])
        .output()
        .unwrap();
    let _ = mock.kill();
    let _ = mock.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = dir.path().canonicalize().unwrap();
    for (kind, file) in [("JSON report", "r.json"), ("Markdown report", "r.md"), ("SVG chart", "r.svg")] {
        let path = dir.join(file);
        assert!(path.exists());
        assert!(stdout.contains(&format!("{kind} written to {}", path.display())), "{kind}: {stdout}");
    }
}

/// `--rate 200 --ramp-up 2s -d 10s`: 50 + 150 requests during the ramp, then 200/s.
async fn ramped_summary() -> RunSummary {
    let spec = LoadSpec {
        targets: vec!["http://127.0.0.1:9/".into()],
        rate: Some(200.0),
        ramp_up: Some("2s".into()),
        duration: Some("10s".into()),
        ..Default::default()
    };
    let cfg = spec.to_run_config(None).await.unwrap();
    let per_second = [50, 150, 200, 200, 200, 200, 200, 200, 200, 200];
    let timeline = per_second
        .iter()
        .enumerate()
        .map(|(i, n)| TimelinePoint {
            second: i as u64,
            requests: *n,
            errors: 0,
            tokens: 0,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 4.0,
            ttft_p50_ms: None,
            ttft_p99_ms: None,
        })
        .collect();
    let mut s = RunSummary::new(&cfg, &Recorder::default(), Duration::from_secs(10), timeline);
    s.requests = 1800;
    s.achieved_rate = 180.0;
    s
}

fn parse_svg(text: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(text).expect("the chart is well-formed XML")
}

/// The y-axis labels of one panel, e.g. [0, 62.5, 125, 187.5, 250].
fn axis_labels(doc: &roxmltree::Document, panel: &str, unit: &str) -> Vec<f64> {
    let g = doc.descendants().find(|n| n.attribute("id") == Some(panel)).unwrap_or_else(|| panic!("no {panel} panel"));
    g.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text()?.strip_suffix(&format!(" {unit}"))?.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_ramped_run_reports_the_configured_target_everywhere_and_draws_the_ramp() {
    let s = ramped_summary().await;
    assert_eq!(s.target_rate, Some(200.0), "the configured rate, not the 180/s average");
    assert_eq!(s.scheduled_requests, Some(1800));

    let text = terminal::render(&s);
    assert!(text.contains("(target 200.0/s; 1800 of 1800 scheduled, 100.0%)"), "{text}");
    assert!(text.contains("schedule       0→200/s over 2s, 200/s for 8s"), "{text}");
    assert!(!text.contains("target 180"), "{text}");

    let md = markdown::render(&s);
    assert!(md.contains("| target rate | 200.0 req/s |"), "{md}");
    assert!(md.contains("| schedule | 0→200/s over 2s, 200/s for 8s |"), "{md}");

    let chart = svg::render(&s);
    assert!(chart.contains("target 200/s"), "title");
    let doc = parse_svg(&chart);
    let target = doc.descendants().find(|n| n.attribute("class") == Some("target")).expect("a target line");
    let ys: Vec<f64> =
        target.attribute("points").unwrap().split(' ').map(|p| p.split_once(',').unwrap().1.parse().unwrap()).collect();
    // SVG y grows downwards: the line starts at 0 (the bottom) and rises to 200, once.
    assert!(ys.len() >= 3, "{ys:?}");
    assert!(ys[0] > ys[1], "the target rises during the ramp: {ys:?}");
    assert!((ys[1] - ys[ys.len() - 1]).abs() < 1e-6, "then holds: {ys:?}");
    let top = axis_labels(&doc, "throughput", "/s").into_iter().fold(0.0, f64::max);
    assert!(top > 200.0, "the axis ends above the 200/s target, not at it: {top}");

    // The live line shows what the schedule planned for the second that just ended.
    let schedule = s.schedule.as_ref().unwrap();
    assert!((live_target(schedule, Duration::from_secs(1)) - 50.0).abs() < 1e-6);
    assert!((live_target(schedule, Duration::from_secs(2)) - 150.0).abs() < 1e-6);
    assert!((live_target(schedule, Duration::from_secs(5)) - 200.0).abs() < 1e-6);
    let line = progress_line(Duration::from_secs(5), Some(Duration::from_secs(10)), 900, 200, Some(200.0), 0, 3);
    assert!(line.contains("200 req/s (target 200)"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_ramped_run_sends_the_schedule_and_reports_the_configured_rate() {
    let mock = MockHttp::spawn(MockHttpConfig::default()).await.unwrap();
    let spec = LoadSpec {
        targets: vec![mock.url()],
        rate: Some(200.0),
        ramp_up: Some("1s".into()),
        duration: Some("2s".into()),
        connections: Some(8),
        ..Default::default()
    };
    let s = run(spec.to_run_config(None).await.unwrap()).await.unwrap();
    assert_eq!(s.target_rate, Some(200.0));
    assert_eq!((s.requests, s.scheduled_requests), (300, Some(300)), "100 during the ramp, 200 after");

    // With a request count instead of a duration, the run is not cut when the ramp ends.
    let spec = LoadSpec { duration: None, ramp_up: Some("200ms".into()), requests: Some(100), ..spec };
    let s = run(spec.to_run_config(None).await.unwrap()).await.unwrap();
    assert_eq!((s.requests, s.failed), (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_runs_chart_has_ttft_and_tokens_panels() {
    let mock = MockOpenAi::spawn(LlmMockConfig {
        tokens: 8,
        tokens_per_second: 4000.0,
        ttft: LatencyDist::Fixed(Duration::from_millis(5)),
        ..Default::default()
    })
    .await
    .unwrap();
    let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let spec = LoadSpec {
        targets: vec![format!("{}/v1/chat/completions", mock.url())],
        requests: Some(20),
        connections: Some(4),
        sse: Some(SseFormat::Openai),
        body: Some(body.into()),
        headers: vec!["Authorization: Bearer sk-test".into()],
        ..Default::default()
    };
    let s = run(spec.to_run_config(None).await.unwrap()).await.unwrap();
    assert_eq!((s.requests, s.failed), (20, 0), "{:?}", s.errors);
    assert!(s.timeline.iter().any(|p| p.ttft_p50_ms.is_some()), "per-second TTFT is recorded");
    assert_eq!(s.timeline.iter().map(|p| p.tokens).sum::<u64>(), 20 * 8);

    let chart = svg::render(&s);
    let doc = parse_svg(&chart);
    for panel in ["latency", "throughput", "ttft", "tokens"] {
        let g = doc.descendants().find(|n| n.attribute("id") == Some(panel)).unwrap_or_else(|| panic!("no {panel}"));
        assert!(g.descendants().any(|n| n.has_tag_name("polyline")), "{panel} has a series");
    }
    assert!(chart.contains("Time to first token per second") && chart.contains("Output tokens per second"));
    let ttft_top = axis_labels(&doc, "ttft", "ms").into_iter().fold(0.0, f64::max);
    assert!(ttft_top > s.timeline.iter().filter_map(|p| p.ttft_p99_ms).fold(0.0, f64::max));

    // A plain HTTP run has no LLM panels.
    let plain = RunSummary { llm: None, ..s };
    let plain_doc = svg::render(&plain);
    assert!(!plain_doc.contains(r#"id="ttft""#) && !plain_doc.contains(r#"id="tokens""#));
}

#[test]
fn axes_end_above_the_peak() {
    for peak in [1.0, 7.3, 10.0, 180.0, 200.0, 1000.0, 1500.0, 0.042] {
        let top = axis_max(peak);
        assert!(top > peak * 1.05 && top <= peak * 2.0, "peak {peak} -> axis {top}");
    }
    assert_eq!(axis_max(200.0), 250.0);
    assert_eq!(axis_max(0.0), 1.0);

    // A constant run that hits its target exactly: the peak is not drawn on the frame.
    let points: Vec<TimelinePoint> = (0..3)
        .map(|i| TimelinePoint {
            second: i,
            requests: 200,
            errors: 0,
            tokens: 0,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 4.0,
            max_ms: 5.0,
            ttft_p50_ms: None,
            ttft_p99_ms: None,
        })
        .collect();
    let s = RunSummary { elapsed_s: 3.0, target_rate: Some(200.0), timeline: points, ..Default::default() };
    let chart = svg::render(&s);
    let doc = parse_svg(&chart);
    assert!(axis_labels(&doc, "throughput", "/s").into_iter().fold(0.0, f64::max) > 200.0);
    assert!(axis_labels(&doc, "latency", "ms").into_iter().fold(0.0, f64::max) > 4.0);
}
