//! `tollgate.admin.v1.UsageService`: the cluster's usage counters, read
//! from the replicated state (so any member answers for the whole cluster),
//! and this node's own per-request records.

use std::sync::Arc;

use tollgate_proto::admin::v1::usage_service_server::UsageService;
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::UsageCounter;
use tollgate_raft::{RaftNode, USAGE_DIMENSIONS};
use tonic::{Request, Response, Status};

use super::propose;
use crate::usage::{RecordFilter, UsageLedger};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Records per answer: a gRPC message is at most 4 MiB by default, and a
/// record takes a few hundred bytes.
const MAX_RECORDS: u32 = 10_000;
const DEFAULT_RECORDS: u32 = 1_000;

pub struct Usage {
    raft: RaftNode,
    ledger: Arc<UsageLedger>,
}

impl Usage {
    pub fn new(raft: RaftNode, ledger: Arc<UsageLedger>) -> Usage {
        Usage { raft, ledger }
    }
}

fn period_of(period: &str) -> Result<(&'static str, i64), Status> {
    match period {
        "" | "day" => Ok(("day", DAY_MS)),
        "hour" => Ok(("hour", HOUR_MS)),
        other => Err(Status::invalid_argument(format!("period {other:?}: use hour or day"))),
    }
}

fn dimension_of(dimension: &str) -> Result<&'static str, Status> {
    let wanted = if dimension.is_empty() { "all" } else { dimension };
    USAGE_DIMENSIONS.iter().copied().find(|d| *d == wanted).ok_or_else(|| {
        Status::invalid_argument(format!("dimension {dimension:?}: use one of {}", USAGE_DIMENSIONS.join(", ")))
    })
}

fn row(c: &UsageCounter) -> ClusterUsageRow {
    ClusterUsageRow {
        period_start_ms: c.period_start_ms,
        value: c.value.clone(),
        requests: c.requests,
        errors: c.errors,
        input_tokens: c.input_tokens,
        output_tokens: c.output_tokens,
        cached_input_tokens: c.cached_input_tokens,
        cost_picodollars: c.cost_picodollars,
    }
}

#[tonic::async_trait]
impl UsageService for Usage {
    async fn get_cluster_usage(
        &self,
        request: Request<GetClusterUsageRequest>,
    ) -> Result<Response<ClusterUsageReport>, Status> {
        let r = request.into_inner();
        let (period, span) = period_of(&r.period)?;
        let dimension = dimension_of(&r.dimension)?;
        let to_ms = if r.to_ms == 0 { i64::MAX } else { r.to_ms };
        let state = propose::read(&self.raft, r.stale).await?;
        // Periods that overlap the window: the one `from_ms` falls in counts.
        let first = r.from_ms.div_euclid(span) * span;
        let rows = state
            .usage_counters_between(period, first, to_ms)
            .filter(|c| c.dimension == dimension)
            .map(|c| row(c))
            .collect();
        let watermarks =
            state.usage_watermarks().map(|w| NodeWatermark { node_id: w.node_id, last_seq: w.last_seq }).collect();
        Ok(Response::new(ClusterUsageReport {
            period: period.into(),
            dimension: dimension.into(),
            rows,
            watermarks,
            revision: state.applied_index(),
        }))
    }

    async fn list_usage_records(
        &self,
        request: Request<ListUsageRecordsRequest>,
    ) -> Result<Response<ListUsageRecordsResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => DEFAULT_RECORDS,
            n if n > MAX_RECORDS => {
                return Err(Status::invalid_argument(format!("limit {n}: at most {MAX_RECORDS} records per answer")));
            }
            n => n,
        };
        let filter = RecordFilter {
            from_ms: r.from_ms,
            to_ms: if r.to_ms == 0 { i64::MAX } else { r.to_ms },
            key: r.key,
            consumer: r.consumer,
            route: r.route,
            model: r.model,
            status: r.status,
        };
        let ledger = self.ledger.clone();
        let listed = tokio::task::spawn_blocking(move || {
            let (records, truncated) = ledger.list(&filter, limit as usize)?;
            Ok::<_, crate::usage::LedgerError>((records, truncated, ledger.last_seq()?))
        })
        .await
        .map_err(|e| Status::internal(format!("usage query failed: {e}")))?;
        let (records, truncated, journal_last_seq) = listed.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ListUsageRecordsResponse {
            node_id: self.ledger.node_id(),
            records,
            truncated,
            journal_last_seq,
        }))
    }
}
