//! `tollgate-cluster`: run a local N-node Tollgate cluster and break it on purpose.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::{Mutex, Notify};
use tollgate_cluster::control::{self, Control, STATE_FILE};
use tollgate_cluster::harness::{Cluster, ClusterOptions};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-cluster",
    version,
    about = "Local multi-node Tollgate clusters with fault injection",
    after_help = "Exit codes: 0 success (a requested stop of `up` included), 1 error (no cluster running, \
                  unknown node, a node that fails to start), 2 usage."
)]
struct Cli {
    /// Where the cluster keeps its data, logs and control file.
    #[arg(long, global = true, default_value = "./tollgate-cluster")]
    dir: PathBuf,
    /// Output: a table for people, or JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start N nodes (certificates, join, promotion), print their endpoints,
    /// and keep running until `down`, Ctrl-C or SIGTERM (then stop every node
    /// and exit 0). With `-o json` the endpoints are one JSON line.
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
    /// Members: state, role, term, indexes, addresses, and partitions. A node
    /// that does not answer within 1 s is shown as unreachable.
    Status,
    /// SIGKILL node N.
    Kill { node: u64 },
    /// Stop node N gracefully (SIGTERM).
    Stop { node: u64 },
    /// Start node N again from its data directory, on the same ports.
    Start { node: u64 },
    /// Freeze node N (SIGSTOP).
    Pause { node: u64 },
    /// Unfreeze node N (SIGCONT).
    Resume { node: u64 },
    /// Cut peer traffic between groups, e.g. `partition 1,2 3`.
    Partition { groups: Vec<String> },
    /// Remove the partition.
    Heal,
    /// Stop every node and the `up` process; returns once they are stopped.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`status | head`) is not an error worth a panic.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        Cmd::Up { nodes, binary, snapshot_after_logs } => {
            up(cli.dir, cli.output, nodes, binary, snapshot_after_logs).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Bench { nodes, writes, concurrency, probes, binary } => {
            bench(nodes, writes, concurrency, probes, binary).await?;
            return Ok(ExitCode::SUCCESS);
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
    let ok = answer["ok"] == true;
    match cli.output {
        Output::Json => say(&format!("{answer:#}\n")),
        Output::Table if ok => {
            let mut text = String::new();
            if let Some(message) = answer["message"].as_str().filter(|m| !m.is_empty()) {
                text.push_str(message);
                text.push('\n');
            }
            if answer["cluster"].is_object() {
                text.push_str(&control::render_table(&answer["cluster"]));
            }
            say(&text);
        }
        Output::Table => {}
    }
    if !ok {
        eprintln!("error: {}", answer["error"].as_str().unwrap_or("the cluster refused the command"));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn up(
    dir: PathBuf,
    output: Output,
    nodes: usize,
    binary: Option<PathBuf>,
    snapshot_after_logs: u64,
) -> anyhow::Result<()> {
    if control::is_running(&dir).await {
        anyhow::bail!(
            "a cluster is already running in {}; stop it with `tollgate-cluster --dir {} down` or use another --dir",
            dir.display(),
            dir.display()
        );
    }
    let mut options = ClusterOptions::new(nodes, &dir);
    if let Some(binary) = binary {
        options.binary = binary;
    }
    options.snapshot_after_logs = snapshot_after_logs;
    let cluster = tokio::select! {
        cluster = Cluster::up(options) => cluster.context("cannot start the cluster")?,
        // Dropping the half-started cluster kills its nodes.
        () = stop_signal() => return Ok(()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let described = control::describe(&cluster).await;
    let state_file = dir.join(STATE_FILE);
    let state = serde_json::json!({ "control": listener.local_addr()?.to_string(), "cluster": described });
    std::fs::write(&state_file, state.to_string())?;
    match output {
        Output::Json => say(&format!("{described}\n")),
        Output::Table => {
            let mut text = format!("cluster of {nodes} nodes is up (admin token: {})\n", cluster.options().admin_token);
            for node in cluster.nodes() {
                text.push_str(&format!(
                    "  node {}: proxy http://{}  admin {}  ops {}  peer {}  log {}\n",
                    node.id,
                    node.proxy,
                    node.admin,
                    node.ops,
                    node.advertise(),
                    node.log.display()
                ));
            }
            text.push_str(&format!(
                "try: tollgate ctl --admin {} --token {} cluster status\n     tollgate-cluster --dir {} status\n",
                cluster.nodes()[0].admin,
                cluster.options().admin_token,
                dir.display()
            ));
            say(&text);
        }
    }
    let control =
        Arc::new(Control { cluster: Mutex::new(cluster), done: Notify::new(), state_file: state_file.clone() });
    let server = tokio::spawn(control::serve(listener, control.clone()));
    tokio::select! {
        () = control.done.notified() => {}
        () = stop_signal() => {}
    }
    server.abort();
    // `down` has stopped every node already; after a signal this does it.
    control.cluster.lock().await.stop_all().await;
    let _ = std::fs::remove_file(&state_file);
    if output == Output::Table {
        say("cluster stopped\n");
    }
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
    say(&report?.markdown());
    Ok(())
}
