//! End-to-end runs against the mocks on 127.0.0.1 (ports picked at run time). Every run is
//! bounded by a request count or a short duration; assertions are on counts, not timings.

use std::time::Duration;

use tollgate_loadtest::compare::{CompareConfig, CompareSummary, run_compare};
use tollgate_loadtest::mock::anthropic::MockAnthropic;
use tollgate_loadtest::mock::gemini::MockGemini;
use tollgate_loadtest::mock::http::{MockHttp, MockHttpBody, MockHttpConfig};
use tollgate_loadtest::mock::llm::LlmMockConfig;
use tollgate_loadtest::mock::openai::MockOpenAi;
use tollgate_loadtest::mock::{LatencyDist, tls_config_from_pem};
use tollgate_loadtest::report::{json, markdown, svg};
use tollgate_loadtest::runner::run;
use tollgate_loadtest::spec::LoadSpec;
use tollgate_loadtest::sse::SseFormat;
use tollgate_loadtest::summary::RunSummary;

fn spec(url: String) -> LoadSpec {
    LoadSpec { targets: vec![url], connections: Some(4), timeout: Some("10s".into()), ..Default::default() }
}

async fn run_spec(s: &LoadSpec) -> RunSummary {
    run(s.to_run_config(None).await.unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_run_completes_the_requested_count() {
    let mock = MockHttp::spawn(MockHttpConfig::default()).await.unwrap();
    let s = run_spec(&LoadSpec { requests: Some(500), ..spec(format!("{}/ping", mock.url())) }).await;
    assert_eq!(s.requests, 500);
    assert_eq!(s.failed, 0);
    assert_eq!(s.status_codes.get("200"), Some(&500));
    assert_eq!(s.latency.count, 500);
    assert_eq!(s.bytes_received, 500 * 3);
    assert_eq!(mock.requests_served(), 500);
    assert_eq!(s.timeline.iter().map(|p| p.requests).sum::<u64>(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_http2_run_sends_the_scheduled_count() {
    let mock = MockHttp::spawn(MockHttpConfig::default()).await.unwrap();
    // 200/s for 1s = exactly 200 scheduled requests, multiplexed over HTTP/2 (h2c).
    let s =
        run_spec(&LoadSpec { rate: Some(200.0), duration: Some("1s".into()), http2: true, ..spec(mock.url()) }).await;
    assert_eq!(s.requests, 200);
    assert_eq!(s.failed, 0);
    assert_eq!(s.mode, "open");
    assert_eq!(s.target_rate, Some(200.0));
    assert_eq!(mock.requests_served(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keepalive_and_templates_and_key_pool_reach_the_server() {
    let mock = MockHttp::spawn(MockHttpConfig { body: MockHttpBody::Echo, ..Default::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys"), "a\nb\n").unwrap();
    let s = LoadSpec {
        requests: Some(40),
        no_keepalive: true,
        body: Some("seq={{seq}} key={{key}}".into()),
        api_keys_file: Some("keys".into()),
        ..spec(mock.url())
    };
    let summary = run(s.to_run_config(Some(dir.path())).await.unwrap()).await.unwrap();
    assert_eq!(summary.requests, 40);
    assert_eq!(summary.failed, 0);
    // Echoed bodies are "seq=N key=a|b": sum of lengths is deterministic.
    let expected: u64 = (0..40u64).map(|i| format!("seq={i} key=a").len() as u64).sum();
    assert_eq!(summary.bytes_received, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_connection_errors_are_broken_down() {
    let mock = MockHttp::spawn(MockHttpConfig { status: 503, ..Default::default() }).await.unwrap();
    let s = run_spec(&LoadSpec { requests: Some(20), ..spec(mock.url()) }).await;
    assert_eq!((s.requests, s.failed), (20, 20));
    assert_eq!(s.status_codes.get("503"), Some(&20));

    // A port nobody listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = run_spec(&LoadSpec { requests: Some(10), ..spec(format!("http://127.0.0.1:{port}/")) }).await;
    assert_eq!((s.requests, s.failed), (10, 10));
    assert_eq!(s.errors.get("connect"), Some(&10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_cacert_over_http1_and_http2() {
    tollgate_loadtest::tls::install_provider();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let server = tls_config_from_pem(cert.cert.pem().as_bytes(), cert.signing_key.serialize_pem().as_bytes()).unwrap();
    let mock = MockHttp::spawn(MockHttpConfig { tls: Some(server), ..Default::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let url = format!("https://localhost:{}/", mock.local_addr().port());
    for http2 in [false, true] {
        let s = run_spec(&LoadSpec { requests: Some(30), http2, cacert: Some(ca.clone()), ..spec(url.clone()) }).await;
        assert_eq!((s.requests, s.failed), (30, 0), "http2={http2}: {:?}", s.errors);
    }
    let s = run_spec(&LoadSpec { requests: Some(5), insecure: true, ..spec(url.clone()) }).await;
    assert_eq!(s.failed, 0);
    // Without trust the spec refuses to start rather than failing every request.
    let err = spec(url).to_run_config(None).await.err().unwrap();
    assert!(err.to_string().contains("--cacert"), "{err}");
}

fn llm_cfg() -> LlmMockConfig {
    LlmMockConfig {
        tokens: 12,
        tokens_per_second: 2000.0,
        ttft: LatencyDist::Fixed(Duration::from_millis(5)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_streaming_metrics_end_to_end() {
    let mock = MockOpenAi::spawn(llm_cfg()).await.unwrap();
    let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi {{seq}}"}]}"#;
    let s = run_spec(&LoadSpec {
        requests: Some(20),
        sse: Some(SseFormat::Openai),
        body: Some(body.into()),
        headers: vec!["Authorization: Bearer sk-test".into()],
        ..spec(format!("{}/v1/chat/completions", mock.url()))
    })
    .await;
    assert_eq!((s.requests, s.failed), (20, 0), "{:?}", s.errors);
    let llm = s.llm.expect("llm metrics");
    assert_eq!(llm.streams, 20);
    assert_eq!(llm.incomplete_streams, 0);
    assert_eq!(llm.output_tokens, 20 * 12);
    assert!(llm.input_tokens > 0);
    assert_eq!(llm.ttft.count, 20);
    assert_eq!(llm.inter_token.count, 20 * 11);
    assert!(llm.decode_tps_p50 > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_streams_cut_mid_way_and_injected_failures_are_counted() {
    let mock = MockAnthropic::spawn(LlmMockConfig { cut_stream: 1.0, ..llm_cfg() }).await.unwrap();
    let body = r#"{"model":"m","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let base = LoadSpec {
        requests: Some(10),
        sse: Some(SseFormat::Anthropic),
        body: Some(body.into()),
        headers: vec!["x-api-key: sk-ant-test".into(), "anthropic-version: 2023-06-01".into()],
        ..spec(format!("{}/v1/messages", mock.url()))
    };
    let s = run_spec(&base).await;
    assert_eq!((s.requests, s.failed), (10, 10));
    assert_eq!(s.errors.get("stream_incomplete"), Some(&10));
    let llm = s.llm.unwrap();
    assert_eq!(llm.incomplete_streams, 10);
    // The mock cuts after 5 of 10 tokens; frames queued just before the abort may be lost.
    assert!(llm.output_tokens <= 10 * 5, "{}", llm.output_tokens);

    let mock = MockAnthropic::spawn(LlmMockConfig { fail_429: 1.0, ..llm_cfg() }).await.unwrap();
    let s = run_spec(&LoadSpec { targets: vec![format!("{}/v1/messages", mock.url())], ..base }).await;
    assert_eq!(s.status_codes.get("429"), Some(&10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_sse_streaming_end_to_end() {
    let mock = MockGemini::spawn(llm_cfg()).await.unwrap();
    let s = run_spec(&LoadSpec {
        requests: Some(6),
        sse: Some(SseFormat::Gemini),
        headers: vec!["x-goog-api-key: test-key".into()],
        body: Some(r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#.into()),
        ..spec(format!("{}/v1beta/models/mock-gemini:streamGenerateContent?alt=sse", mock.url()))
    })
    .await;
    assert_eq!((s.requests, s.failed), (6, 0), "{:?}", s.errors);
    assert_eq!(s.llm.unwrap().output_tokens, 6 * 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_written_and_parse_back() {
    let mock = MockHttp::spawn(MockHttpConfig::default()).await.unwrap();
    let s = run_spec(&LoadSpec { requests: Some(100), label: Some("report <test>".into()), ..spec(mock.url()) }).await;
    let dir = tempfile::tempdir().unwrap();
    let (j, m, c) = (dir.path().join("r.json"), dir.path().join("r.md"), dir.path().join("r.svg"));
    json::write(&j, &s).unwrap();
    markdown::write(&m, &s).unwrap();
    svg::write(&c, &s).unwrap();

    // Compare fields, not whole structs: JSON float round-trips may differ in the last bit.
    let back: RunSummary = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!((back.requests, back.failed, back.latency.count), (100, 0, 100));
    assert_eq!(back.status_codes, s.status_codes);
    assert_eq!(back.timeline.len(), s.timeline.len());
    assert!((back.latency.p99_ms - s.latency.p99_ms).abs() < 1e-9);
    let md = std::fs::read_to_string(&m).unwrap();
    assert!(md.starts_with("## report <test>"));
    for table_line in md.lines().filter(|l| l.starts_with('|')) {
        assert!(table_line.ends_with('|'), "broken table row: {table_line}");
    }
    let svg_text = std::fs::read_to_string(&c).unwrap();
    let doc = roxmltree::Document::parse(&svg_text).expect("chart is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(doc.descendants().filter(|n| n.has_tag_name("polyline")).count() >= 4);
    assert!(svg_text.contains("report &lt;test&gt;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_alternates_sides_and_reports_ratios() {
    let a = MockHttp::spawn(MockHttpConfig::default()).await.unwrap();
    let b = MockHttp::spawn(MockHttpConfig::default()).await.unwrap();
    let side = |url: String, label: &str| LoadSpec { requests: Some(50), label: Some(label.into()), ..spec(url) };
    let cfg = CompareConfig {
        a: side(a.url(), "direct").to_run_config(None).await.unwrap(),
        b: side(b.url(), "gateway").to_run_config(None).await.unwrap(),
        rounds: 3,
    };
    let mut seen = 0;
    let c = run_compare(cfg, |_| seen += 1).await.unwrap();
    assert_eq!(seen, 3);
    let firsts: Vec<&str> = c.rounds.iter().map(|r| r.first.as_str()).collect();
    assert_eq!(firsts, ["a", "b", "a"]);
    assert_eq!((a.requests_served(), b.requests_served()), (150, 150));
    assert!(c.median.achieved_rate > 0.0);
    let back: CompareSummary = serde_json::from_str(&json::to_string(&c).unwrap()).unwrap();
    assert_eq!((back.rounds.len(), back.label_a.as_str(), back.label_b.as_str()), (3, "direct", "gateway"));
    assert!((back.median.achieved_rate - c.median.achieved_rate).abs() < 1e-9);
    assert!(markdown::render_compare(&c).contains("Median B/A"));
}

#[test]
fn cli_mock_prints_address_and_run_writes_reports() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_tollgate-load");
    let mut mock = Command::new(bin)
        .args(["mock", "http", "--listen", "127.0.0.1:0", "--exit-after", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(mock.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line.trim().parse().expect("first stdout line is the bound address");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args(["--threads", "1", "run", &format!("http://{addr}/"), "-n", "200", "-c", "2", "-q"])
        .arg("--json")
        .arg(dir.path().join("r.json"))
        .output()
        .unwrap();
    let _ = mock.kill();
    let _ = mock.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("requests       200"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(v["requests"], 200);

    let refused = Command::new(bin).args(["run", "http://192.0.2.7/", "-n", "1", "-q"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--allow-remote"));
}
