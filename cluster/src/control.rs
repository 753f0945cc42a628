//! The control channel of a running `tollgate-cluster up`: other invocations
//! (`kill 2`, `partition 1,2 3`, ...) send one line over loopback TCP and get
//! one JSON line back.
//!
//! An action holds the cluster's lock only while it changes the cluster; the
//! status that follows every answer is probed afterwards, without the lock,
//! every node at once and each within [`PROBE_TIMEOUT`], so a frozen node
//! neither slows the answer much nor makes `resume` wait behind it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify};

use crate::harness::{Cluster, probe_status};

pub const STATE_FILE: &str = "cluster.json";

/// How long one node's status may take before it is reported unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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

/// What the cluster looks like, copied under the lock so that the slow part
/// (asking every node for its status) runs without it.
#[derive(Debug, Clone)]
pub struct View {
    pub admin_token: String,
    pub partitions: Option<Vec<Vec<u64>>>,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: u64,
    pub state: &'static str,
    pub pid: Option<u32>,
    pub admin: SocketAddr,
    pub proxy: SocketAddr,
    pub ops: SocketAddr,
    pub peer: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl View {
    pub fn of(cluster: &Cluster) -> View {
        View {
            admin_token: cluster.options().admin_token.clone(),
            partitions: cluster.partitions(),
            nodes: cluster
                .nodes()
                .iter()
                .map(|node| NodeView {
                    id: node.id,
                    state: match (node.is_running(), node.is_paused()) {
                        (false, _) => "stopped",
                        (true, true) => "paused",
                        (true, false) => "running",
                    },
                    pid: node.pid(),
                    admin: node.admin,
                    proxy: node.proxy,
                    ops: node.ops,
                    peer: node.advertise(),
                    data_dir: node.data_dir.clone(),
                    log: node.log.clone(),
                })
                .collect(),
        }
    }

    /// Every node's description with the status it reports itself; a
    /// running node that does not answer within `within` is `unreachable`.
    pub async fn describe(&self, within: Duration) -> Value {
        let probes: Vec<_> = self
            .nodes
            .iter()
            .map(|node| {
                let (running, admin, token) = (node.state != "stopped", node.admin, self.admin_token.clone());
                tokio::spawn(
                    async move { if running { Some(probe_status(admin, &token, within).await) } else { None } },
                )
            })
            .collect();
        let mut nodes = Vec::new();
        for (node, probe) in self.nodes.iter().zip(probes) {
            let status = probe.await.unwrap_or_else(|e| Some(Err(e.to_string())));
            let ok = status.as_ref().and_then(|s| s.as_ref().ok());
            nodes.push(json!({
                "id": node.id,
                "state": node.state,
                "running": node.state != "stopped",
                "paused": node.state == "paused",
                "reachable": ok.is_some(),
                "error": status.as_ref().and_then(|s| s.as_ref().err()),
                "pid": node.pid,
                "admin": node.admin.to_string(),
                "proxy": node.proxy.to_string(),
                "ops": node.ops.to_string(),
                "peer": node.peer.to_string(),
                "data_dir": node.data_dir.display().to_string(),
                "log": node.log.display().to_string(),
                "role": ok.map(|s| s.role.clone()),
                "term": ok.map(|s| s.current_term),
                "leader_id": ok.and_then(|s| s.leader_id),
                "committed_index": ok.map(|s| s.committed_index),
                "applied_index": ok.map(|s| s.applied_index),
                "data_plane_index": ok.map(|s| s.data_plane_index),
            }));
        }
        json!({ "admin_token": self.admin_token, "partitions": self.partitions, "nodes": nodes })
    }
}

/// The description of a whole cluster (see [`View::describe`]).
pub async fn describe(cluster: &Cluster) -> Value {
    View::of(cluster).describe(PROBE_TIMEOUT).await
}

/// What a running `up` shares with the control connections.
pub struct Control {
    pub cluster: Mutex<Cluster>,
    /// Notified once `down` has stopped every node.
    pub done: Notify,
    /// The state file, removed by `down` before it answers.
    pub state_file: PathBuf,
}

/// Serves control commands until the process ends.
pub async fn serve(listener: TcpListener, control: Arc<Control>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let control = control.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let command = line.trim();
            let answer = execute(command, &control).await;
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
            let _ = write.shutdown().await;
            // Answer first: `down` ends the process that serves this channel.
            if command == "down" {
                control.done.notify_one();
            }
        });
    }
}

async fn execute(line: &str, control: &Control) -> Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    let node = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    let (result, view) = {
        let mut cluster = control.cluster.lock().await;
        let result: Result<String, String> = match (words.first().copied(), node(1)) {
            (Some("status"), _) => Ok(String::new()),
            (Some("kill"), Some(id)) => cluster.kill(id).await.map(|()| format!("node {id} killed (SIGKILL)")),
            (Some("stop"), Some(id)) => cluster.stop(id).await.map(|()| format!("node {id} stopped")),
            (Some("start"), Some(id)) => cluster.start(id).await.map(|()| format!("node {id} started")),
            (Some("pause"), Some(id)) => cluster.pause(id).map(|()| format!("node {id} paused (SIGSTOP)")),
            (Some("resume"), Some(id)) => cluster.resume(id).map(|()| format!("node {id} resumed (SIGCONT)")),
            (Some(verb @ ("kill" | "stop" | "start" | "pause" | "resume")), None) => {
                return json!({ "ok": false, "error": format!("`{verb}` needs a node id, e.g. `{verb} 2`") });
            }
            (Some("partition"), _) => match parse_groups(&words[1..]) {
                Ok(groups) => {
                    let text = groups.iter().map(|g| format_group(g)).collect::<Vec<_>>().join(" | ");
                    cluster.partition(groups);
                    Ok(format!("partitioned: {text}"))
                }
                Err(e) => return json!({ "ok": false, "error": e }),
            },
            (Some("heal"), _) => {
                cluster.heal();
                Ok("partition healed".into())
            }
            (Some("down"), _) => {
                cluster.stop_all().await;
                let _ = std::fs::remove_file(&control.state_file);
                Ok("cluster stopped".into())
            }
            _ => return json!({ "ok": false, "error": format!("unknown command {line:?}") }),
        }
        .map_err(|e| e.to_string());
        (result, View::of(&cluster))
    };
    match result {
        Ok(message) if line == "down" => json!({ "ok": true, "message": message }),
        Ok(message) => json!({ "ok": true, "message": message, "cluster": view.describe(PROBE_TIMEOUT).await }),
        Err(error) => json!({ "ok": false, "error": error }),
    }
}

fn format_group(group: &[u64]) -> String {
    group.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// The cluster description as a table, one node a line, for people.
pub fn render_table(cluster: &Value) -> String {
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let header = ["NODE", "STATE", "PID", "ROLE", "TERM", "LEADER", "APPLIED", "DATA_PLANE", "PROXY", "ADMIN", "OPS"];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    let mut notes = Vec::new();
    for node in cluster["nodes"].as_array().into_iter().flatten() {
        let role = match (&node["role"], node["running"].as_bool()) {
            (Value::String(role), _) => role.clone(),
            (_, Some(true)) => "unreachable".to_string(),
            _ => "-".to_string(),
        };
        if let Some(error) = node["error"].as_str() {
            notes.push(format!("node {}: {error}", text(&node["id"])));
        }
        rows.push(vec![
            text(&node["id"]),
            text(&node["state"]),
            text(&node["pid"]),
            role,
            text(&node["term"]),
            text(&node["leader_id"]),
            text(&node["applied_index"]),
            text(&node["data_plane_index"]),
            text(&node["proxy"]),
            text(&node["admin"]),
            text(&node["ops"]),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let partitions = match cluster["partitions"].as_array() {
        Some(groups) => groups
            .iter()
            .map(|g| g.as_array().into_iter().flatten().map(text).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
            .join(" | "),
        None => "none".to_string(),
    };
    let _ = writeln!(out, "partitions: {partitions}");
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    out
}

/// The address of the `up` process that owns `dir`, if its state file exists.
fn control_addr(dir: &Path) -> anyhow::Result<SocketAddr> {
    let state = std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|e| {
        anyhow::anyhow!(
            "no running cluster in {} ({e}); start one with `tollgate-cluster --dir {} up`",
            dir.display(),
            dir.display()
        )
    })?;
    let state: Value = serde_json::from_str(&state)?;
    Ok(state["control"].as_str().unwrap_or_default().parse()?)
}

/// True when an `up` process answers on the control address recorded in `dir`.
pub async fn is_running(dir: &Path) -> bool {
    match control_addr(dir) {
        Ok(addr) => TcpStream::connect(addr).await.is_ok(),
        Err(_) => false,
    }
}

/// Sends one command to the `up` process that owns `dir`.
pub async fn send(dir: &Path, command: &str) -> anyhow::Result<Value> {
    let addr = control_addr(dir)?;
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("the cluster in {} is not running ({e})", dir.display()))?;
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    if line.trim().is_empty() {
        anyhow::bail!("the cluster in {} closed the control connection without an answer", dir.display());
    }
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

    #[test]
    fn the_table_has_a_row_per_node_and_marks_unreachable_nodes() {
        let cluster = json!({
            "partitions": [[1], [2, 3]],
            "nodes": [
                {"id": 1, "state": "running", "running": true, "pid": 10, "role": "leader", "term": 3,
                 "leader_id": 1, "applied_index": 9, "data_plane_index": 9,
                 "proxy": "127.0.0.1:1001", "admin": "127.0.0.1:2001", "ops": "127.0.0.1:3001"},
                {"id": 2, "state": "paused", "running": true, "pid": 11, "role": null,
                 "error": "no answer within 1000 ms",
                 "proxy": "127.0.0.1:1002", "admin": "127.0.0.1:2002", "ops": "127.0.0.1:3002"},
                {"id": 3, "state": "stopped", "running": false, "pid": null, "role": null,
                 "proxy": "127.0.0.1:1003", "admin": "127.0.0.1:2003", "ops": "127.0.0.1:3003"}
            ]
        });
        let table = render_table(&cluster);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NODE  STATE"), "{table}");
        let cells = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(cells(1)[..4], ["1", "running", "10", "leader"]);
        assert_eq!(cells(2)[..4], ["2", "paused", "11", "unreachable"]);
        assert_eq!(cells(3)[..4], ["3", "stopped", "-", "-"]);
        assert!(lines[1].ends_with("127.0.0.1:3001"));
        assert!(table.contains("partitions: 1 | 2,3"), "{table}");
        assert!(table.contains("node 2: no answer within 1000 ms"), "{table}");
    }
}
