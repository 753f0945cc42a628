//! The control channel of a running `tollgate-cluster up`: other invocations
//! (`kill 2`, `partition 1,2 3`, ...) send one line over loopback TCP and get
//! one JSON line back.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify};

use crate::harness::Cluster;

pub const STATE_FILE: &str = "cluster.json";

/// Parses "1,2 3" into groups [[1, 2], [3]].
pub fn parse_groups(words: &[&str]) -> Result<Vec<Vec<u64>>, String> {
    let groups: Result<Vec<Vec<u64>>, String> = words
        .iter()
        .map(|g| g.split(',').map(|n| n.trim().parse::<u64>().map_err(|_| format!("{n:?} is not a node id"))).collect())
        .collect();
    let groups = groups?;
    if groups.len() < 2 {
        return Err("a partition needs at least two groups, e.g. `partition 1,2 3`".into());
    }
    Ok(groups)
}

pub async fn describe(cluster: &Cluster) -> Value {
    let mut nodes = Vec::new();
    for node in cluster.nodes() {
        let status = if node.is_running() { cluster.node_status(node.id).await.ok() } else { None };
        nodes.push(json!({
            "id": node.id,
            "running": node.is_running(),
            "pid": node.pid(),
            "admin": node.admin.to_string(),
            "proxy": node.proxy.to_string(),
            "peer": node.advertise().to_string(),
            "data_dir": node.data_dir.display().to_string(),
            "log": node.log.display().to_string(),
            "role": status.as_ref().map(|s| s.role.clone()),
            "term": status.as_ref().map(|s| s.current_term),
            "applied_index": status.as_ref().map(|s| s.applied_index),
            "data_plane_index": status.as_ref().map(|s| s.data_plane_index),
        }));
    }
    json!({ "admin_token": cluster.options().admin_token, "partitions": cluster.partitions(), "nodes": nodes })
}

/// Serves control commands until `down` is received.
pub async fn serve(listener: TcpListener, cluster: Arc<Mutex<Cluster>>, done: Arc<Notify>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let cluster = cluster.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let command = line.trim();
            let answer = execute(command, &cluster).await;
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
            let _ = write.shutdown().await;
            // Answer first: `down` ends the process that serves this channel.
            if command == "down" {
                done.notify_one();
            }
        });
    }
}

async fn execute(line: &str, cluster: &Mutex<Cluster>) -> Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    let node = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    let mut cluster = cluster.lock().await;
    let result: Result<(), String> = match (words.first().copied(), node(1)) {
        (Some("status"), _) => Ok(()),
        (Some("kill"), Some(id)) => cluster.kill(id).await.map_err(|e| e.to_string()),
        (Some("stop"), Some(id)) => cluster.stop(id).await.map_err(|e| e.to_string()),
        (Some("start"), Some(id)) => cluster.start(id).await.map_err(|e| e.to_string()),
        (Some("pause"), Some(id)) => cluster.pause(id).map_err(|e| e.to_string()),
        (Some("resume"), Some(id)) => cluster.resume(id).map_err(|e| e.to_string()),
        (Some("partition"), _) => parse_groups(&words[1..]).map(|groups| cluster.partition(groups)),
        (Some("heal"), _) => {
            cluster.heal();
            Ok(())
        }
        (Some("down"), _) => Ok(()),
        _ => Err(format!("unknown command {line:?}")),
    };
    match result {
        Ok(()) => json!({ "ok": true, "cluster": describe(&cluster).await }),
        Err(error) => json!({ "ok": false, "error": error }),
    }
}

/// Sends one command to the `up` process that owns `dir`.
pub async fn send(dir: &Path, command: &str) -> anyhow::Result<Value> {
    let state = std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| {
        anyhow::anyhow!(
            "no running cluster in {} ({e}); start one with `tollgate-cluster up --dir {}`",
            dir.display(),
            dir.display()
        )
    })?;
    let state: Value = serde_json::from_str(&state)?;
    let addr: SocketAddr = state["control"].as_str().unwrap_or_default().parse()?;
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("the cluster in {} is not running ({e})", dir.display()))?;
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    Ok(serde_json::from_str(&line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse_and_need_two_sides() {
        assert_eq!(parse_groups(&["1,2", "3"]).unwrap(), vec![vec![1, 2], vec![3]]);
        assert!(parse_groups(&["1,2,3"]).is_err());
        assert!(parse_groups(&["1,x", "3"]).is_err());
    }
}
