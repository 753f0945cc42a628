//! Cluster benchmarks: admin write throughput and commit latency, and how
//! long an acknowledged change takes to be served by every node's data plane.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tollgate_proto::admin::v1::GetNodeStatusRequest;
use tollgate_proto::config::v1::Consumer;

use crate::harness::{Cluster, HarnessError};

#[derive(Debug)]
pub struct Report {
    pub nodes: usize,
    pub writes: u64,
    pub concurrency: usize,
    pub elapsed: Duration,
    pub commit_us: Histogram<u64>,
    pub propagation_us: Histogram<u64>,
}

impl Report {
    pub fn throughput(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }

    pub fn markdown(&self) -> String {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "| metric | value |\n|---|---|\n\
             | nodes | {} |\n| admin writes (create consumer) | {} at concurrency {} |\n\
             | write throughput | {:.0} writes/s |\n\
             | commit latency p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n\
             | acknowledged → served by every node's data plane p50 / p99 / max ({} samples) | {:.2} / {:.2} / {:.2} ms |\n",
            self.nodes,
            self.writes,
            self.concurrency,
            self.throughput(),
            ms(&self.commit_us, 0.5),
            ms(&self.commit_us, 0.99),
            self.commit_us.max() as f64 / 1000.0,
            self.propagation_us.len(),
            ms(&self.propagation_us, 0.5),
            ms(&self.propagation_us, 0.99),
            self.propagation_us.max() as f64 / 1000.0,
        )
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// `writes` creates through the leader from `concurrency` clients, then
/// `probes` single writes whose propagation to every node is timed.
pub async fn run(cluster: &Cluster, writes: u64, concurrency: usize, probes: u64) -> Result<Report, HarnessError> {
    let leader = cluster.leader().await?;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let commit = Arc::new(Mutex::new(histogram()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut admin = cluster.admin(leader).await?;
        let (next, commit) = (next.clone(), commit.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= writes {
                    return Ok::<(), tonic::Status>(());
                }
                let t = Instant::now();
                admin.create_consumer(Consumer { name: format!("bench-{i}"), ..Default::default() }).await?;
                let _ = commit.lock().await.record(t.elapsed().as_micros() as u64);
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| HarnessError::Timeout(e.to_string()))?
            .map_err(|status| HarnessError::Admin { node: leader, status })?;
    }
    let elapsed = started.elapsed();

    let mut propagation = histogram();
    let mut admin = cluster.admin(leader).await?;
    let mut statuses = Vec::new();
    for node in cluster.nodes() {
        statuses.push(cluster.admin(node.id).await?);
    }
    for i in 0..probes {
        let created = admin
            .create_consumer(Consumer { name: format!("probe-{i}"), ..Default::default() })
            .await
            .map_err(|status| HarnessError::Admin { node: leader, status })?
            .into_inner();
        let revision = created.meta.map_or(0, |m| m.revision);
        let t = Instant::now();
        for status in &mut statuses {
            loop {
                let s = status
                    .get_node_status(GetNodeStatusRequest {})
                    .await
                    .map_err(|status| HarnessError::Admin { node: 0, status })?
                    .into_inner();
                if s.data_plane_index >= revision {
                    break;
                }
            }
        }
        let _ = propagation.record(t.elapsed().as_micros() as u64);
    }
    let commit_us = commit.lock().await.clone();
    Ok(Report { nodes: cluster.nodes().len(), writes, concurrency, elapsed, commit_us, propagation_us: propagation })
}
