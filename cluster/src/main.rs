//! `tollgate-cluster`: run a local N-node Tollgate cluster and break it on purpose.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::{Mutex, Notify};
use tollgate_cluster::control::{self, STATE_FILE};
use tollgate_cluster::harness::{Cluster, ClusterOptions};

#[derive(Debug, Parser)]
#[command(name = "tollgate-cluster", version, about = "Local multi-node Tollgate clusters with fault injection")]
struct Cli {
    /// Where the cluster keeps its data, logs and control file.
    #[arg(long, global = true, default_value = "./tollgate-cluster")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start N nodes (certificates, join, promotion), print their endpoints,
    /// and keep running until `down` or Ctrl-C.
    Up {
        #[arg(short = 'n', long, default_value_t = 3)]
        nodes: usize,
        /// The tollgate binary [default: next to this one, or $TOLLGATE_BIN].
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Build a Raft snapshot after this many log entries.
        #[arg(long, default_value_t = 10_000)]
        snapshot_after_logs: u64,
    },
    /// Members, roles, indexes and partitions.
    Status,
    /// SIGKILL node N.
    Kill { node: u64 },
    /// Stop node N gracefully (SIGTERM).
    Stop { node: u64 },
    /// Start node N again from its data directory.
    Start { node: u64 },
    /// Freeze node N (SIGSTOP).
    Pause { node: u64 },
    /// Unfreeze node N (SIGCONT).
    Resume { node: u64 },
    /// Cut peer traffic between groups, e.g. `partition 1,2 3`.
    Partition { groups: Vec<String> },
    /// Remove the partition.
    Heal,
    /// Stop every node and the `up` process.
    Down,
    /// Start a temporary cluster, measure admin write throughput, commit
    /// latency and propagation to every data plane, print a Markdown table.
    Bench {
        #[arg(short = 'n', long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 2000)]
        writes: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 200)]
        probes: u64,
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let command = match cli.command {
        Cmd::Up { nodes, binary, snapshot_after_logs } => return up(cli.dir, nodes, binary, snapshot_after_logs).await,
        Cmd::Bench { nodes, writes, concurrency, probes, binary } => {
            return bench(nodes, writes, concurrency, probes, binary).await;
        }
        Cmd::Status => "status".to_string(),
        Cmd::Kill { node } => format!("kill {node}"),
        Cmd::Stop { node } => format!("stop {node}"),
        Cmd::Start { node } => format!("start {node}"),
        Cmd::Pause { node } => format!("pause {node}"),
        Cmd::Resume { node } => format!("resume {node}"),
        Cmd::Partition { groups } => format!("partition {}", groups.join(" ")),
        Cmd::Heal => "heal".to_string(),
        Cmd::Down => "down".to_string(),
    };
    let answer = control::send(&cli.dir, &command).await?;
    println!("{answer:#}");
    if answer["ok"] != true {
        std::process::exit(1);
    }
    Ok(())
}

async fn up(dir: PathBuf, nodes: usize, binary: Option<PathBuf>, snapshot_after_logs: u64) -> anyhow::Result<()> {
    let mut options = ClusterOptions::new(nodes, &dir);
    if let Some(binary) = binary {
        options.binary = binary;
    }
    options.snapshot_after_logs = snapshot_after_logs;
    let cluster = Cluster::up(options).await.context("cannot start the cluster")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let described = control::describe(&cluster).await;
    let state = serde_json::json!({ "control": listener.local_addr()?.to_string(), "cluster": described });
    std::fs::write(dir.join(STATE_FILE), state.to_string())?;
    println!("cluster of {nodes} nodes is up (admin token: {})", cluster.options().admin_token);
    for node in cluster.nodes() {
        println!(
            "  node {}: proxy http://{}  admin {}  peer {}  log {}",
            node.id,
            node.proxy,
            node.admin,
            node.advertise(),
            node.log.display()
        );
    }
    println!(
        "try: tollgate ctl --admin {} --token {} cluster status",
        cluster.nodes()[0].admin,
        cluster.options().admin_token
    );
    let cluster = Arc::new(Mutex::new(cluster));
    let done = Arc::new(Notify::new());
    tokio::spawn(control::serve(listener, cluster.clone(), done.clone()));
    tokio::select! {
        () = done.notified() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = std::fs::remove_file(dir.join(STATE_FILE));
    let cluster = Arc::try_unwrap(cluster).map_err(|_| anyhow::anyhow!("cluster still in use"))?.into_inner();
    cluster.down().await;
    println!("cluster stopped");
    Ok(())
}

async fn bench(
    nodes: usize,
    writes: u64,
    concurrency: usize,
    probes: u64,
    binary: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
    let mut options = ClusterOptions::new(nodes, &dir);
    if let Some(binary) = binary {
        options.binary = binary;
    }
    let cluster = Cluster::up(options).await.context("cannot start the cluster")?;
    let report = tollgate_cluster::bench::run(&cluster, writes, concurrency, probes).await;
    cluster.down().await;
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", report?.markdown());
    Ok(())
}
