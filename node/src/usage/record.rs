//! A request's usage record as the request path writes it, and the filters
//! and groupings reads apply.
//!
//! Every request writes one record, so the request path encodes it straight
//! from what it holds ([`RequestUsage`] borrows; nothing is cloned or
//! allocated) into the `UsageRecord` wire format (entities.proto), which
//! every reader decodes as usual. AI calls build a full `UsageRecord` (they
//! carry tokens, prices and errors) and cost what they cost anyway.

use std::time::Duration;

use bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint};
use tollgate_proto::config::v1::UsageRecord;

/// What a request that no backend accounted for leaves in the ledger.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestUsage<'a> {
    pub at_ms: i64,
    pub request_id: &'a str,
    pub route: &'a str,
    pub service: &'a str,
    pub consumer_id: &'a str,
    pub api_key_id: &'a str,
    /// `UsageOutcome` as its number.
    pub outcome: i32,
    pub http_status: u32,
    pub duration_ms: u32,
    pub attempts: u32,
    /// "rest", or "ai" for an AI route's request refused before its backend.
    pub kind: &'a str,
}

fn string(tag: u32, value: &str, out: &mut Vec<u8>) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.put_slice(value.as_bytes());
    }
}

fn varint(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

impl RequestUsage<'_> {
    /// Appends the record's protobuf encoding to `out`: what
    /// `UsageRecord { .. }.encode` writes for the same fields (a test holds
    /// the two together).
    pub fn encode(&self, out: &mut Vec<u8>) {
        varint(3, self.at_ms as u64, out);
        string(4, self.request_id, out);
        string(5, self.route, out);
        string(6, self.consumer_id, out);
        string(7, self.api_key_id, out);
        // An enum is an int32: negative numbers are sign-extended to 64 bits.
        varint(14, self.outcome as i64 as u64, out);
        varint(15, u64::from(self.http_status), out);
        varint(24, u64::from(self.duration_ms), out);
        varint(26, u64::from(self.attempts), out);
        string(27, self.service, out);
        string(28, self.kind, out);
    }
}

pub fn duration_ms(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX)
}

/// Which records a listing wants; empty strings and 0 match everything.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    /// Records with `from_ms <= at_ms < to_ms`.
    pub from_ms: i64,
    pub to_ms: i64,
    pub key: String,
    pub consumer: String,
    pub route: String,
    /// The model as asked for, as served, or as `provider/model`.
    pub model: String,
    pub status: u32,
}

impl RecordFilter {
    pub fn matches(&self, r: &UsageRecord) -> bool {
        let model_matches = || {
            self.model == r.model
                || self.model == r.requested_model
                || self.model.split_once('/').is_some_and(|(p, m)| p == r.provider && m == r.model)
        };
        r.at_ms >= self.from_ms
            && r.at_ms < self.to_ms
            && (self.key.is_empty() || self.key == r.api_key_id)
            && (self.consumer.is_empty() || self.consumer == r.consumer_id)
            && (self.route.is_empty() || self.route == r.route)
            && (self.status == 0 || self.status == r.http_status)
            && (self.model.is_empty() || model_matches())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tollgate_proto::config::v1::UsageOutcome;

    use super::*;

    #[test]
    fn a_request_record_encodes_as_the_usage_record_with_the_same_fields() {
        let usage = RequestUsage {
            at_ms: 1_764_201_600_123,
            request_id: "req-1",
            route: "orders",
            service: "orders-svc",
            consumer_id: "c1",
            api_key_id: "k1",
            outcome: UsageOutcome::Error as i32,
            http_status: 503,
            duration_ms: 17,
            attempts: 2,
            kind: "rest",
        };
        let mut lean = Vec::new();
        usage.encode(&mut lean);
        let full = UsageRecord {
            at_ms: usage.at_ms,
            request_id: "req-1".into(),
            route: "orders".into(),
            service: "orders-svc".into(),
            consumer_id: "c1".into(),
            api_key_id: "k1".into(),
            outcome: UsageOutcome::Error as i32,
            http_status: 503,
            duration_ms: 17,
            attempts: 2,
            kind: "rest".into(),
            ..Default::default()
        };
        assert_eq!(lean, full.encode_to_vec(), "byte for byte");
        let mut empty = Vec::new();
        RequestUsage::default().encode(&mut empty);
        assert!(empty.is_empty(), "defaults are not written, as prost does");
        let negative = RequestUsage { at_ms: -1, outcome: -3, ..Default::default() };
        let mut out = Vec::new();
        negative.encode(&mut out);
        let back = UsageRecord::decode(out.as_slice()).unwrap();
        assert_eq!((back.at_ms, back.outcome), (-1, -3));
    }
}
