//! The cluster's usage ledger: each node's journaled usage, folded into
//! counters per key, consumer, model, provider, route and service, per UTC
//! hour and per UTC day.
//!
//! A node sends its journal in order, in batches of consecutive sequence
//! numbers. A batch is folded only if it starts right after the last one
//! folded for that node (its watermark); anything else (a batch retried after
//! a crash or a change of leader, or one sent twice) changes nothing, and the
//! answer carries the watermark so the node knows where to resume. Counters
//! are therefore exact: every record counts once.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use tollgate_proto::config::v1::{Meta, UsageCounter, UsageWatermark};
use tollgate_proto::raft::v1::{UsageBatch, UsageDelta};

use super::{Change, Outcome};
use crate::entities::AnyEntity;
use crate::error::ApplyError;
use crate::state::GatewayState;

/// Deltas per batch; a node sums its records by dimension values and hour.
pub(crate) const MAX_DELTAS: usize = 4096;
const MAX_VALUE_LEN: usize = 256;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// The dimensions counted, as `tollgate ctl usage --by` names them.
pub const DIMENSIONS: [&str; 9] =
    ["all", "key", "consumer", "model", "provider", "route", "service", "consumer_service", "consumer_model"];

pub(crate) fn fold(state: &GatewayState, batch: &UsageBatch, now: i64, index: u64) -> Result<Outcome, ApplyError> {
    check(batch)?;
    let watermark_id = batch.node_id.to_string();
    let mut watermark = state
        .usage_watermark(&watermark_id)
        .map(|w| w.as_ref().clone())
        .unwrap_or(UsageWatermark { node_id: batch.node_id, ..Default::default() });
    if batch.first_seq != watermark.last_seq + 1 {
        return Ok(Outcome { changes: Vec::new(), entity: Some(prost::Message::encode_to_vec(&watermark)) });
    }
    let mut counters: BTreeMap<String, UsageCounter> = BTreeMap::new();
    for delta in &batch.deltas {
        let hour = delta.hour_start_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let day = delta.hour_start_ms.div_euclid(DAY_MS) * DAY_MS;
        for (period, start) in [("hour", hour), ("day", day)] {
            for (dimension, value) in dimension_values(delta) {
                if value.len() > MAX_VALUE_LEN {
                    continue;
                }
                let id = counter_id(period, start, dimension, &value);
                let counter = counters.entry(id).or_insert_with_key(|id| {
                    state.usage_counter(id).map(|c| c.as_ref().clone()).unwrap_or_else(|| UsageCounter {
                        meta: Some(Meta { id: id.clone(), created_at_ms: now, ..Default::default() }),
                        period: period.into(),
                        period_start_ms: start,
                        dimension: dimension.into(),
                        value: value.to_string(),
                        ..Default::default()
                    })
                });
                add(counter, delta);
            }
        }
    }
    watermark.last_seq = batch.last_seq;
    watermark.batches += 1;
    let stamp = |meta: &mut Option<Meta>, id: String| {
        let created = meta.as_ref().map_or(now, |m| m.created_at_ms);
        *meta = Some(Meta { id, created_at_ms: created, updated_at_ms: now, revision: index });
    };
    stamp(&mut watermark.meta, watermark_id);
    let mut changes: Vec<Change> = counters
        .into_iter()
        .map(|(id, mut counter)| {
            stamp(&mut counter.meta, id);
            Change::Put(AnyEntity::UsageCounter(Arc::new(counter)))
        })
        .collect();
    let entity = prost::Message::encode_to_vec(&watermark);
    changes.push(Change::Put(AnyEntity::UsageWatermark(Arc::new(watermark))));
    Ok(Outcome { changes, entity: Some(entity) })
}

fn check(batch: &UsageBatch) -> Result<(), ApplyError> {
    if batch.node_id == 0 {
        return Err(ApplyError::invalid("node_id", "must name the node whose journal this is"));
    }
    if batch.first_seq == 0 || batch.last_seq < batch.first_seq {
        return Err(ApplyError::invalid("first_seq", "a batch covers first_seq..=last_seq, from 1"));
    }
    if batch.deltas.len() > MAX_DELTAS {
        return Err(ApplyError::invalid("deltas", format!("at most {MAX_DELTAS} per batch")));
    }
    for (i, delta) in batch.deltas.iter().enumerate() {
        // The values a node sent; the per-consumer ones derived from them
        // are skipped when too long (fold), never a reason to refuse a batch
        // an earlier version accepted.
        if dimension_values(delta).any(|(dimension, value)| !is_derived(dimension) && value.len() > MAX_VALUE_LEN) {
            return Err(ApplyError::invalid(
                format!("deltas[{i}]"),
                format!("values are at most {MAX_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// The counters one delta adds to: the cluster total, each dimension it has
/// a value for, and a consumer's usage per service and per model (its
/// own charts in the developer portal), valued `<consumer>/<service>` and
/// `<consumer>/<model>` (ids hold no '/').
fn dimension_values(delta: &UsageDelta) -> impl Iterator<Item = (&'static str, Cow<'_, str>)> {
    let per_consumer = |dimension: &'static str, value: &str| {
        let both = !delta.consumer.is_empty() && !value.is_empty();
        both.then(|| (dimension, Cow::Owned(format!("{}/{value}", delta.consumer))))
    };
    [
        ("key", delta.key.as_str()),
        ("consumer", delta.consumer.as_str()),
        ("model", delta.model.as_str()),
        ("provider", delta.provider.as_str()),
        ("route", delta.route.as_str()),
        ("service", delta.service.as_str()),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(dimension, value)| (dimension, Cow::Borrowed(value)))
    .chain(std::iter::once(("all", Cow::Borrowed(""))))
    .chain(per_consumer("consumer_service", &delta.service))
    .chain(per_consumer("consumer_model", &delta.model))
}

fn is_derived(dimension: &str) -> bool {
    matches!(dimension, "consumer_service" | "consumer_model")
}

/// `<period>/<start, 13 digits>/<dimension>/<value>`: a period's counters
/// sort together, by time.
pub fn counter_id(period: &str, start_ms: i64, dimension: &str, value: &str) -> String {
    format!("{period}/{start_ms:013}/{dimension}/{value}")
}

impl GatewayState {
    /// The counters of `period` ("hour" or "day") whose period starts in
    /// `[from_ms, to_ms)`, by start, then dimension and value: their ids sort
    /// so, and the read costs what it returns.
    pub fn usage_counters_between<'a>(
        &'a self,
        period: &'a str,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Iterator<Item = &'a Arc<UsageCounter>> + 'a {
        let start = format!("{period}/{:013}/", from_ms.max(0));
        self.table::<UsageCounter>()
            .values_from(&start)
            .take_while(move |c| c.period == period && c.period_start_ms < to_ms)
    }
}

fn add(counter: &mut UsageCounter, delta: &UsageDelta) {
    counter.requests = counter.requests.saturating_add(delta.requests);
    counter.errors = counter.errors.saturating_add(delta.errors);
    counter.input_tokens = counter.input_tokens.saturating_add(delta.input_tokens);
    counter.output_tokens = counter.output_tokens.saturating_add(delta.output_tokens);
    counter.cached_input_tokens = counter.cached_input_tokens.saturating_add(delta.cached_input_tokens);
    counter.cost_picodollars = counter.cost_picodollars.saturating_add(delta.cost_picodollars);
}

#[cfg(test)]
mod tests {
    use tollgate_proto::raft::v1::Command;
    use tollgate_proto::raft::v1::command::Op;

    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn delta(key: &str, requests: u64) -> UsageDelta {
        UsageDelta { hour_start_ms: T0, key: key.into(), route: "r1".into(), requests, ..Default::default() }
    }

    fn send(state: &GatewayState, index: u64, batch: UsageBatch) -> GatewayState {
        let cmd =
            Command { proposed_at_ms: T0, actor: "node 1".into(), op: Some(Op::Usage(batch)), ..Default::default() };
        state.with_command(&cmd, index).unwrap()
    }

    fn count(state: &GatewayState, period: &str, start: i64, dimension: &str, value: &str) -> u64 {
        state.usage_counter(&counter_id(period, start, dimension, value)).map_or(0, |c| c.requests)
    }

    #[test]
    fn batches_fold_into_hour_and_day_counters_once() {
        let batch = |first, last, deltas| UsageBatch { node_id: 1, first_seq: first, last_seq: last, deltas };
        let state = send(&GatewayState::default(), 1, batch(1, 3, vec![delta("k1", 2), delta("k2", 1)]));
        let hour = T0.div_euclid(HOUR_MS) * HOUR_MS;
        let day = T0.div_euclid(DAY_MS) * DAY_MS;
        assert_eq!(count(&state, "hour", hour, "all", ""), 3);
        assert_eq!(count(&state, "day", day, "key", "k1"), 2);
        assert_eq!(count(&state, "day", day, "route", "r1"), 3);
        assert_eq!(count(&state, "day", day, "consumer", ""), 0, "no consumer, no counter");

        // The same batch again (a retry after a crash): nothing changes.
        let again = send(&state, 2, batch(1, 3, vec![delta("k1", 2), delta("k2", 1)]));
        assert_eq!(again.encoded_entries(), state.encoded_entries());
        // A batch that skips records is refused too: the node resends from the watermark.
        let gap = send(&state, 3, batch(5, 6, vec![delta("k1", 1)]));
        assert_eq!(gap.encoded_entries(), state.encoded_entries());
        let next = send(&state, 4, batch(4, 4, vec![delta("k1", 1)]));
        assert_eq!(count(&next, "day", day, "key", "k1"), 3);
        assert_eq!(next.usage_watermark("1").unwrap().last_seq, 4);

        let days: Vec<_> = next.usage_counters_between("day", day, day + DAY_MS).map(|c| c.value.clone()).collect();
        assert_eq!(days, ["", "k1", "k2", "r1"], "the day's counters, by dimension then value");
        assert_eq!(next.usage_counters_between("hour", hour + HOUR_MS, i64::MAX).count(), 0);
        assert_eq!(next.usage_counters_between("hour", 0, hour + 1).count(), 4);
    }

    #[test]
    fn a_consumers_usage_counts_per_service_and_model_and_a_long_pair_is_skipped_not_refused() {
        let with = |model: &str| UsageDelta {
            consumer: "c1".into(),
            service: "orders".into(),
            model: model.into(),
            ..delta("k1", 1)
        };
        let batch =
            UsageBatch { node_id: 1, first_seq: 1, last_seq: 2, deltas: vec![with("m1"), with(&"m".repeat(250))] };
        let state = send(&GatewayState::default(), 1, batch);
        let day = T0.div_euclid(DAY_MS) * DAY_MS;
        assert_eq!(count(&state, "day", day, "consumer_service", "c1/orders"), 2);
        assert_eq!(count(&state, "day", day, "consumer_model", "c1/m1"), 1);
        // A 250-byte model is a valid value; with the consumer's id before
        // it, too long for a counter: that one counter is skipped.
        assert_eq!(count(&state, "day", day, "model", &"m".repeat(250)), 1);
        assert_eq!(state.usage_watermark("1").unwrap().last_seq, 2, "the batch is folded");
    }

    #[test]
    fn malformed_batches_are_refused() {
        let state = GatewayState::default();
        for batch in [
            UsageBatch { node_id: 0, first_seq: 1, last_seq: 1, deltas: vec![] },
            UsageBatch { node_id: 1, first_seq: 0, last_seq: 1, deltas: vec![] },
            UsageBatch { node_id: 1, first_seq: 3, last_seq: 2, deltas: vec![] },
            UsageBatch { node_id: 1, first_seq: 1, last_seq: 1, deltas: vec![delta(&"k".repeat(300), 1)] },
        ] {
            let cmd = Command {
                proposed_at_ms: T0,
                actor: "node 1".into(),
                op: Some(Op::Usage(batch)),
                ..Default::default()
            };
            assert!(matches!(state.with_command(&cmd, 1), Err(ApplyError::InvalidArgument { .. })));
        }
    }
}
