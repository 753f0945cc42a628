//! Request templates and the CLI/scenario spec that builds runs.

use std::time::Duration;

use rand::SeedableRng;
use tollgate_loadtest::scenario::Scenario;
use tollgate_loadtest::schedule::Phase;
use tollgate_loadtest::spec::LoadSpec;
use tollgate_loadtest::template::{Template, TemplateError, Vars};

fn render(t: &str, seq: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    Template::parse(t).unwrap().render_string(&Vars { seq, worker: 3, key: "sk-abc" }, &mut rng)
}

#[test]
fn variables_render() {
    assert_eq!(render("req {{seq}} from {{ worker }} with {{key}}", 42), "req 42 from 3 with sk-abc");
    let n: u64 = render("{{random:5-9}}", 0).parse().unwrap();
    assert!((5..=9).contains(&n));
    let u = render("{{uuid}}", 0);
    assert_eq!(u.len(), 36);
    assert_eq!(u.as_bytes()[14], b'4', "version 4 uuid: {u}");
    assert!(Template::parse("plain").unwrap().as_static().is_some());
    assert!(Template::parse("{{seq}}").unwrap().as_static().is_none());
}

#[test]
fn bad_templates_say_what_is_wrong() {
    assert_eq!(Template::parse("{{seq"), Err(TemplateError::Unclosed));
    assert_eq!(Template::parse("{{nope}}"), Err(TemplateError::Unknown("nope".into())));
    assert!(matches!(Template::parse("{{random:9-1}}"), Err(TemplateError::BadRange(_))));
}

#[test]
fn spec_builds_open_loop_schedules() {
    let spec =
        LoadSpec { rate: Some(100.0), duration: Some("10s".into()), ramp_up: Some("2s".into()), ..Default::default() };
    let s = spec.schedule().unwrap().unwrap();
    assert_eq!(
        s.phases,
        vec![Phase::ramp(0.0, 100.0, Duration::from_secs(2)), Phase::constant(100.0, Duration::from_secs(8))]
    );

    let spec = LoadSpec { rate: Some(50.0), requests: Some(10), ..Default::default() };
    assert_eq!(spec.schedule().unwrap().unwrap().then, Some(50.0));

    let spec = LoadSpec { phases: vec!["10@1s".into(), "10..20@2s".into()], ..Default::default() };
    assert_eq!(spec.schedule().unwrap().unwrap().total_requests(), Some(40));

    assert!(LoadSpec::default().schedule().unwrap().is_none(), "no rate means closed loop");
    assert!(LoadSpec { rate: Some(1.0), phases: vec!["1@1s".into()], ..Default::default() }.schedule().is_err());
}

#[tokio::test]
async fn spec_refuses_remote_targets_unless_allowed() {
    let spec = LoadSpec { targets: vec!["http://192.0.2.1:80/".into()], ..Default::default() };
    let err = spec.to_run_config(None).await.err().expect("remote target must be refused");
    assert!(err.to_string().contains("--allow-remote"), "{err}");
    let ok = LoadSpec { allow_remote: true, ..spec };
    assert!(ok.to_run_config(None).await.is_ok(), "resolving does not send traffic");
    let local =
        LoadSpec { targets: vec!["http://localhost:9/".into(), "http://[::1]:9/x".into()], ..Default::default() };
    let cfg = local.to_run_config(None).await.unwrap();
    assert_eq!(cfg.targets.len(), 2);
    assert_eq!(cfg.duration, Some(Duration::from_secs(10)), "unbounded runs get the default duration");
}

#[tokio::test]
async fn spec_adds_key_header_and_json_content_type() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.txt"), "# pool\nk1\n\nk2\n").unwrap();
    let spec = LoadSpec {
        targets: vec!["http://127.0.0.1:9/".into()],
        api_keys_file: Some("keys.txt".into()),
        body: Some("{\"n\": {{seq}}}".into()),
        ..Default::default()
    };
    let cfg = spec.to_run_config(Some(dir.path())).await.unwrap();
    assert_eq!(cfg.request.keys, vec!["k1", "k2"]);
    assert_eq!(cfg.request.method, http::Method::POST);
    let names: Vec<&str> = cfg.request.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["authorization", "content-type"]);
}

#[tokio::test]
async fn committed_scenarios_parse_and_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let sc = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let specs = match sc.compare_specs() {
            Some((a, b, rounds)) => {
                assert!(rounds >= 1);
                vec![a, b]
            }
            None => vec![sc.run_spec()],
        };
        for s in specs {
            let cfg =
                s.to_run_config(sc.base_dir.as_deref()).await.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            cfg.validate().unwrap();
        }
        n += 1;
    }
    assert!(n >= 3, "expected the committed scenarios, found {n}");
}

#[test]
fn scenario_rejects_unknown_keys() {
    let err = Scenario::parse("name = \"x\"\n[run]\nrat = 5\n", std::path::Path::new("x.toml")).unwrap_err();
    assert!(err.to_string().contains("rat"), "{err}");
}
