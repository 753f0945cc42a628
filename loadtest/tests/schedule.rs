//! Arrival scheduler: pure schedule maths, dispatcher bounds, and coordinated-omission
//! correction checked on tokio's paused (virtual) clock, so no assertion depends on timing.

use std::time::Duration;

use tokio::time::Instant;
use tollgate_loadtest::runner::{RunContext, Sender, drive};
use tollgate_loadtest::schedule::{Dispatcher, Phase, Schedule, Ticket, charged_latency};
use tollgate_loadtest::stats::{Live, Outcome, Percentiles, Recorder, Timeline};

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn constant_rate_spaces_requests_evenly() {
    let s = Schedule::constant(100.0, Duration::from_secs(10));
    assert_eq!(s.time_of(0), Some(Duration::ZERO));
    assert!((secs(s.time_of(1).unwrap()) - 0.01).abs() < 1e-9);
    assert!((secs(s.time_of(500).unwrap()) - 5.0).abs() < 1e-9);
    assert!(s.time_of(999).is_some());
    assert_eq!(s.time_of(1000), None, "schedule ends after rate x duration requests");
    assert_eq!(s.total_requests(), Some(1000));
    assert!((s.mean_rate() - 100.0).abs() < 1e-9);
}

#[test]
fn linear_ramp_sends_a_quarter_in_the_first_half() {
    // Rate rises 0 -> 200/s over 10s: 1000 requests in total, 250 of them in the first 5s.
    let s = Schedule { phases: vec![Phase::ramp(0.0, 200.0, Duration::from_secs(10))], then: None };
    assert_eq!(s.total_requests(), Some(1000));
    let t250 = secs(s.time_of(250).unwrap());
    assert!((t250 - 5.0).abs() < 1e-6, "t250 = {t250}");
    let times: Vec<f64> = (0..1000).map(|i| secs(s.time_of(i).unwrap())).collect();
    assert!(times.windows(2).all(|w| w[1] >= w[0]), "send times must not go backwards");
    // Gaps shrink as the rate rises.
    assert!(times[11] - times[10] > times[901] - times[900]);
    assert!((s.mean_rate() - 100.0).abs() < 1e-9);
}

#[test]
fn ramp_down_and_steps_follow_their_rates() {
    let s = Schedule {
        phases: vec![
            Phase::constant(10.0, Duration::from_secs(2)),
            Phase::constant(50.0, Duration::from_secs(2)),
            Phase::ramp(50.0, 0.0, Duration::from_secs(2)),
        ],
        then: None,
    };
    assert_eq!(s.total_requests(), Some(20 + 100 + 50));
    assert!((secs(s.time_of(20).unwrap()) - 2.0).abs() < 1e-9, "second step starts at 2s");
    assert!((secs(s.time_of(70).unwrap()) - 3.0).abs() < 1e-9);
    // Half of the ramp-down's 50 requests land in its first 0.586s (1 - 1/sqrt(2) of 2s).
    let t = secs(s.time_of(120 + 25).unwrap()) - 4.0;
    assert!((t - 2.0 * (1.0 - 1.0 / 2f64.sqrt())).abs() < 1e-6, "t = {t}");
    assert_eq!(s.time_of(170), None);
}

#[test]
fn phase_syntax_parses_and_rejects_nonsense() {
    assert_eq!(Phase::parse("500@30s").unwrap(), Phase::constant(500.0, Duration::from_secs(30)));
    assert_eq!(Phase::parse("0..1000@1m").unwrap(), Phase::ramp(0.0, 1000.0, Duration::from_secs(60)));
    assert!(Phase::parse("500").is_err());
    assert!(Phase::parse("-5@1s").is_err());
    assert!(Phase::parse("5@soon").is_err());
}

#[test]
fn unbounded_tail_continues_after_phases() {
    let s = Schedule { phases: vec![Phase::constant(10.0, Duration::from_secs(1))], then: Some(100.0) };
    assert_eq!(s.total_requests(), None);
    assert!((secs(s.time_of(10).unwrap()) - 1.0).abs() < 1e-9);
    assert!((secs(s.time_of(110).unwrap()) - 2.0).abs() < 1e-9);
}

#[test]
fn dispatcher_respects_request_count_and_deadline() {
    let d = Dispatcher::new(None, Some(3), None);
    let seqs: Vec<u64> = std::iter::from_fn(|| d.next(Duration::ZERO)).map(|t| t.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2]);

    let d = Dispatcher::new(None, None, Some(Duration::from_secs(1)));
    assert!(d.next(Duration::from_millis(999)).is_some());
    assert!(d.next(Duration::from_secs(1)).is_none());

    // Open loop: tickets scheduled at or past the deadline are not issued.
    let d = Dispatcher::new(Some(Schedule::unbounded(10.0)), None, Some(Duration::from_secs(1)));
    let n = std::iter::from_fn(|| d.next(Duration::ZERO)).count();
    assert_eq!(n, 10);

    let d = Dispatcher::new(None, None, None);
    d.stop();
    assert!(d.next(Duration::ZERO).is_none());
}

#[test]
fn latency_is_charged_from_the_scheduled_time() {
    let ms = Duration::from_millis;
    assert_eq!(charged_latency(Some(ms(100)), ms(400), ms(410)), ms(310));
    assert_eq!(charged_latency(None, ms(400), ms(410)), ms(10));
}

/// Answers in 1ms, except one request that stalls for 1s.
struct StallingSender {
    stall_seq: u64,
}

impl Sender for StallingSender {
    async fn send(&mut self, ticket: &Ticket, _origin: Instant) -> Outcome {
        let d = if ticket.seq == self.stall_seq { Duration::from_secs(1) } else { Duration::from_millis(1) };
        tokio::time::sleep(d).await;
        Outcome { status: Some(200), ..Default::default() }
    }
}

async fn run_virtual(schedule: Option<Schedule>, requests: u64) -> (Recorder, Duration) {
    let ctx = RunContext {
        dispatcher: Dispatcher::new(schedule, Some(requests), None),
        start: Instant::now(),
        timeline: Timeline::default(),
        live: Live::default(),
    };
    let mut rec = Recorder::default();
    drive(&mut StallingSender { stall_seq: 10 }, &ctx, &mut rec).await;
    (rec, ctx.start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn open_loop_charges_the_stall_to_every_request_queued_behind_it() {
    // 100 req/s on one connection; request 10 stalls 1s. The ~100 requests scheduled during
    // the stall must show the time they waited (wrk2-style correction).
    let (rec, elapsed) = run_virtual(Some(Schedule::unbounded(100.0)), 300).await;
    assert_eq!(rec.requests, 300);
    let p = Percentiles::from_histogram(&rec.latency);
    assert!(p.max_ms >= 999.0 && p.max_ms < 1010.0, "max {}", p.max_ms);
    let over_100ms = rec.latency.count_between(100_000, u64::MAX);
    assert!((95..=105).contains(&over_100ms), "{over_100ms} of 300 requests should carry the stall");
    // Virtual time: the run lasts about as long as the schedule (3s) plus catching up.
    assert!(elapsed >= Duration::from_millis(2990) && elapsed < Duration::from_millis(3100), "{elapsed:?}");
    // Send lag shows the generator was behind schedule during the stall.
    assert!(Percentiles::from_histogram(&rec.send_lag).max_ms > 900.0);
}

#[tokio::test(start_paused = true)]
async fn closed_loop_only_sees_the_single_stalled_request() {
    let (rec, _) = run_virtual(None, 300).await;
    assert_eq!(rec.requests, 300);
    assert_eq!(
        rec.latency.count_between(100_000, u64::MAX),
        1,
        "closed loop hides the queueing (coordinated omission)"
    );
}

#[tokio::test(start_paused = true)]
async fn open_loop_holds_the_target_rate_on_the_virtual_clock() {
    let ctx = RunContext {
        dispatcher: Dispatcher::new(
            Some(Schedule::constant(200.0, Duration::from_secs(5))),
            None,
            Some(Duration::from_secs(5)),
        ),
        start: Instant::now(),
        timeline: Timeline::default(),
        live: Live::default(),
    };
    let mut workers = Vec::new();
    let ctx = std::sync::Arc::new(ctx);
    for _ in 0..4 {
        let ctx = ctx.clone();
        workers.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            drive(&mut StallingSender { stall_seq: u64::MAX }, &ctx, &mut rec).await;
            rec
        }));
    }
    let mut total = Recorder::default();
    for w in workers {
        total.merge(&w.await.unwrap());
    }
    assert_eq!(total.requests, 1000);
    let points = ctx.timeline.points();
    assert_eq!(points.len(), 5);
    for p in &points {
        assert!((199..=201).contains(&p.requests), "second {} had {} requests", p.second, p.requests);
    }
}
