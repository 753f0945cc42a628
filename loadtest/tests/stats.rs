//! Histogram and percentile maths.

use std::time::Duration;

use proptest::prelude::*;
use tollgate_loadtest::compare::{median, ratio};
use tollgate_loadtest::report::svg::nice_max;
use tollgate_loadtest::stats::{Live, Outcome, Percentiles, Recorder, Timeline, new_histogram, record};

#[test]
fn percentiles_of_a_uniform_sequence() {
    let mut h = new_histogram(3);
    for us in 1..=10_000u64 {
        record(&mut h, Duration::from_micros(us));
    }
    let p = Percentiles::from_histogram(&h);
    assert_eq!(p.count, 10_000);
    let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
    assert!(close(p.p50_ms, 5.0), "p50 {}", p.p50_ms);
    assert!(close(p.p90_ms, 9.0), "p90 {}", p.p90_ms);
    assert!(close(p.p99_ms, 9.9), "p99 {}", p.p99_ms);
    assert!(close(p.p999_ms, 9.99), "p99.9 {}", p.p999_ms);
    assert!(close(p.max_ms, 10.0), "max {}", p.max_ms);
    assert!(close(p.min_ms, 0.001));
    assert!(close(p.mean_ms, 5.0005));
}

#[test]
fn empty_histogram_gives_zeroes() {
    assert_eq!(Percentiles::from_histogram(&new_histogram(3)), Percentiles::default());
}

#[test]
fn out_of_range_values_are_clamped_not_lost() {
    let mut h = new_histogram(3);
    record(&mut h, Duration::ZERO);
    record(&mut h, Duration::from_secs(10 * 3600));
    assert_eq!(h.len(), 2);
    assert_eq!(h.min(), 1);
}

#[test]
fn recorders_merge_counts_statuses_and_errors() {
    let (tl, live) = (Timeline::default(), Live::default());
    let ok = Outcome { status: Some(200), bytes: 10, ..Default::default() };
    let bad = Outcome { status: Some(503), ..Default::default() };
    let err = Outcome { error: Some("connect".into()), ..Default::default() };
    let ms = Duration::from_millis;
    let mut a = Recorder::default();
    a.record(&ok, ms(1), ms(0), ms(100), &tl, &live);
    a.record(&bad, ms(2), ms(0), ms(1100), &tl, &live);
    let mut b = Recorder::default();
    b.record(&err, ms(3), ms(0), ms(1200), &tl, &live);
    b.record(&ok, ms(4), ms(0), ms(2500), &tl, &live);
    a.flush(&tl);
    b.flush(&tl);
    a.merge(&b);
    assert_eq!(a.requests, 4);
    assert_eq!(a.failed, 2);
    assert_eq!(a.bytes, 20);
    assert_eq!(a.statuses.get(&200), Some(&2));
    assert_eq!(a.statuses.get(&503), Some(&1));
    assert_eq!(a.errors.get("connect"), Some(&1));
    assert_eq!(a.latency.len(), 4);
    assert_eq!(live.snapshot(), (4, 2, 0));
    let points = tl.points();
    let per_second: Vec<(u64, u64)> = points.iter().map(|p| (p.requests, p.errors)).collect();
    assert_eq!(per_second, vec![(1, 0), (2, 2), (1, 0)]);
}

#[test]
fn helper_maths() {
    assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    assert_eq!(median(vec![]), 0.0);
    assert_eq!(ratio(2.0, 4.0), 0.5);
    assert_eq!(ratio(2.0, 0.0), 0.0);
    assert_eq!(nice_max(0.0), 1.0);
    assert_eq!(nice_max(7.3), 10.0);
    assert_eq!(nice_max(1500.0), 2000.0);
    assert_eq!(nice_max(0.042), 0.05);
}

proptest! {
    #[test]
    fn percentiles_are_ordered_and_within_bounds(values in proptest::collection::vec(1u64..5_000_000, 1..400)) {
        let mut h = new_histogram(3);
        for v in &values {
            record(&mut h, Duration::from_micros(*v));
        }
        let p = Percentiles::from_histogram(&h);
        let (min, max) = (*values.iter().min().unwrap() as f64 / 1000.0, *values.iter().max().unwrap() as f64 / 1000.0);
        prop_assert!(p.min_ms <= p.p50_ms && p.p50_ms <= p.p90_ms && p.p90_ms <= p.p99_ms);
        prop_assert!(p.p99_ms <= p.p999_ms && p.p999_ms <= p.max_ms);
        // hdrhistogram keeps 3 significant digits: bounds hold within 0.1%.
        prop_assert!(p.min_ms >= min * 0.999 && p.max_ms <= max * 1.001);
        prop_assert_eq!(p.count, values.len() as u64);
    }

    #[test]
    fn merging_equals_recording_everything_in_one(a in proptest::collection::vec(1u64..1_000_000, 0..100),
                                                  b in proptest::collection::vec(1u64..1_000_000, 0..100)) {
        let (mut ha, mut hb, mut hall) = (new_histogram(3), new_histogram(3), new_histogram(3));
        for v in &a { record(&mut ha, Duration::from_micros(*v)); record(&mut hall, Duration::from_micros(*v)); }
        for v in &b { record(&mut hb, Duration::from_micros(*v)); record(&mut hall, Duration::from_micros(*v)); }
        ha.add(&hb).unwrap();
        prop_assert_eq!(Percentiles::from_histogram(&ha), Percentiles::from_histogram(&hall));
    }
}
