//! `tollgate`: with no arguments, a single-node gateway on the default ports;
//! `tollgate serve` with explicit settings; `tollgate ctl` to administer it.
// The library forbids unsafe code; the one exception is the allocator's
// calls into mimalloc, kept to its own module here.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod allocator;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tollgate_node::Node;
use tollgate_node::config::Config;
use tollgate_node::ctl::{self, CtlArgs};
use tollgate_node::telemetry::{self, LogFormat};

// The proxy allocates and frees small buffers on every request; mimalloc's
// thread-local free lists make that measurably cheaper than glibc malloc.
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about = "Clustered API and AI gateway with built-in Raft storage")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per process; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway node (the default when no command is given).
    Serve(ServeArgs),
    /// Administer a running node through its admin API.
    Ctl(CtlArgs),
    /// Cluster set-up: create the certificate authority, issue join tokens.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Create the cluster CA and this node's certificate in <data-dir>/tls
    /// (done automatically on the first start of a new node).
    Init {
        #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = "./tollgate-data")]
        data_dir: PathBuf,
        #[arg(long, env = "TOLLGATE_NODE_ID", default_value_t = 1)]
        node_id: u64,
    },
    /// Issue a join token from a running member (same as `tollgate ctl cluster token`).
    Token(CtlArgsForToken),
}

#[derive(Debug, Args)]
struct CtlArgsForToken {
    #[arg(long, env = "TOLLGATE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = "./tollgate-data")]
    data_dir: PathBuf,
    /// Lifetime such as 3600s, 90m, 12h or 7d.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// Give up after this long (e.g. 15s, 500ms); then exit 7.
    #[arg(long, default_value = "15s", value_parser = ctl::parse_timeout)]
    timeout: std::time::Duration,
}

#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// TOML config file; flags override its values.
    #[arg(long, short = 'c', env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "TOLLGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "TOLLGATE_NODE_ID")]
    node_id: Option<u64>,
    /// Proxy listener [default: 127.0.0.1:8080].
    #[arg(long, env = "TOLLGATE_PROXY_LISTEN")]
    proxy_listen: Option<SocketAddr>,
    /// Admin gRPC listener [default: 127.0.0.1:9090].
    #[arg(long, env = "TOLLGATE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Peer (QUIC, UDP) listener [default: 127.0.0.1:7000].
    #[arg(long, env = "TOLLGATE_CLUSTER_LISTEN")]
    cluster_listen: Option<SocketAddr>,
    /// Peer address other members should use for this node [default: the bound address].
    #[arg(long, env = "TOLLGATE_CLUSTER_ADVERTISE")]
    cluster_advertise: Option<String>,
    /// Join the cluster of this member (its peer address) on first start.
    #[arg(long, env = "TOLLGATE_JOIN", requires = "join_token")]
    join: Option<String>,
    /// Join token from `tollgate ctl cluster token`.
    #[arg(long, env = "TOLLGATE_JOIN_TOKEN", hide_env_values = true, requires = "join")]
    join_token: Option<String>,
    /// Ops HTTP listener for /metrics, /healthz, /readyz [default: 127.0.0.1:9091].
    #[arg(long, env = "TOLLGATE_OPS_LISTEN")]
    ops_listen: Option<SocketAddr>,
    /// Web console and developer portal listener [default: 127.0.0.1:9092].
    #[arg(long, env = "TOLLGATE_CONSOLE_LISTEN")]
    console_listen: Option<SocketAddr>,
    /// JSON access log: stdout, off, or a file path [default: stdout].
    #[arg(long, env = "TOLLGATE_ACCESS_LOG")]
    access_log: Option<String>,
    /// Admin API bearer token [default: <data-dir>/admin-token, generated on first start].
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[arg(long, value_enum, env = "TOLLGATE_LOG_FORMAT", default_value = "text")]
    log_format: Option<LogFormat>,
}

/// `tollgate` with no subcommand reads `serve`'s settings from the environment.
#[derive(clap::Parser)]
struct ServeFromEnv {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    // Everything the node writes (RocksDB, snapshots, keys, the admin token)
    // is private; set before any thread or file exists. Node::start sets it
    // too, for embedders and tests.
    tollgate_storage::private::restrict_umask();
    // One crypto provider for every TLS user in the process (proxy, upstreams, JWKS).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match build_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Ctl(args)) => run_ctl(&runtime, args),
        Some(Command::Cluster(ClusterCommand::Token(t))) => {
            let ttl = match ctl::parse_lifetime(&t.ttl) {
                Ok(ttl) => ttl,
                Err(e) => {
                    eprintln!("error: --ttl {e}");
                    return ExitCode::from(2);
                }
            };
            let args = CtlArgs {
                admin: t.admin,
                token: t.token,
                data_dir: t.data_dir,
                output: ctl::Format::Table,
                stale: false,
                timeout: t.timeout,
                command: ctl::CtlCommand::Cluster(ctl::ClusterCmd::Token { ttl }),
            };
            run_ctl(&runtime, args)
        }
        Some(Command::Cluster(ClusterCommand::Init { data_dir, node_id })) => match cluster_init(&data_dir, node_id) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", chain(&e));
                ExitCode::FAILURE
            }
        },
        command => {
            let args = match command {
                Some(Command::Serve(args)) => args,
                // Plain `tollgate`: no flags, but the same TOLLGATE_* environment as `serve`.
                _ => ServeFromEnv::parse_from(["tollgate"]).serve,
            };
            telemetry::init(args.log_format.unwrap_or(LogFormat::Text));
            match runtime.block_on(serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// With one usable CPU (e.g. pinned by `taskset` or a 1-CPU container), a
/// single-threaded scheduler serves the same work without the multi-thread
/// scheduler's cross-thread wake-ups; otherwise one worker per CPU.
fn build_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Runtime::new()
    }
}

/// An error and its causes, each said once: several of our errors already
/// include their cause's text ("cannot listen on …: Address already in use"),
/// and `{:#}` would repeat it.
fn chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn run_ctl(runtime: &tokio::runtime::Runtime, args: CtlArgs) -> ExitCode {
    match runtime.block_on(ctl::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_quiet() {
                eprintln!("error: {e}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// The `tollgate ctl` command that finds this node and its token, flags only
/// where the defaults would not (`--data-dir` resolves against the directory
/// ctl runs in, so a relative one is said to be).
fn ctl_hint(data_dir: &std::path::Path, admin: SocketAddr) -> String {
    let mut command = String::from("tollgate ctl");
    let default_dir = std::path::Path::new("./tollgate-data");
    if data_dir != default_dir && data_dir != std::path::Path::new("tollgate-data") {
        command.push_str(" --data-dir ");
        command.push_str(&shell_word(&data_dir.display().to_string()));
    }
    // A wildcard listener is reached on loopback.
    let reach = match admin.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], admin.port())),
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, admin.port())),
        _ => admin,
    };
    if reach.to_string() != "127.0.0.1:9090" {
        command.push_str(&format!(" --admin {reach}"));
    }
    command.push_str(" status");
    if data_dir.is_relative() { format!("`{command}` run from this directory") } else { format!("`{command}`") }
}

/// `s` as one shell word: unchanged when that is safe, else single-quoted.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn cluster_init(data_dir: &std::path::Path, node_id: u64) -> anyhow::Result<()> {
    let tls_dir = data_dir.join("tls");
    if let Some(existing) = tollgate_raft::pki::ClusterTls::load(&tls_dir)? {
        println!("{} already holds a cluster CA (fingerprint {})", tls_dir.display(), existing.ca_fingerprint());
        return Ok(());
    }
    let tls = tollgate_raft::pki::ClusterTls::create(node_id)?;
    tls.save(&tls_dir)?;
    println!("created the cluster CA in {} (fingerprint {})", tls_dir.display(), tls.ca_fingerprint());
    println!("start the node with `tollgate serve --data-dir {} --node-id {node_id}`", data_dir.display());
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.proxy_listen {
        config.listen.proxy = v;
    }
    if let Some(v) = args.admin_listen {
        config.listen.admin = v;
    }
    if let Some(v) = args.ops_listen {
        config.listen.ops = v;
    }
    if let Some(v) = args.console_listen {
        config.listen.console = v;
    }
    if let Some(v) = args.access_log {
        config.proxy.access_log = v;
    }
    if let Some(v) = args.admin_token {
        config.admin.token = Some(v);
    }
    if let Some(v) = args.cluster_listen {
        config.listen.cluster = v;
    }
    if let Some(v) = args.cluster_advertise {
        config.cluster.advertise = Some(v);
    }
    if let Some(v) = args.join {
        config.cluster.join = Some(v);
    }
    if let Some(v) = args.join_token {
        config.cluster.join_token = Some(v);
    }
    config.validate()?;

    let node = Node::start(config).await.context("cannot start the node")?;
    tracing::info!(
        node_id = node.raft().node_id(),
        proxy = %node.proxy_addr,
        admin = %node.admin_addr,
        peer = %node.raft().advertise_addr(),
        data_dir = %node.data_dir.display(),
        applied = node.raft().status().applied_index,
        "tollgate is ready"
    );
    if node.admin_token_generated {
        eprintln!(
            "\nA new admin token was generated and saved to {}:\n\n    {}\n\n{} reads it from there \
             (or pass --token, or set TOLLGATE_ADMIN_TOKEN).\n",
            node.data_dir.join("admin-token").display(),
            node.admin_token,
            ctl_hint(&node.data_dir, node.admin_addr),
        );
    }
    wait_for_signal().await?;
    tracing::info!("shutting down: draining in-flight requests");
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("cannot wait for Ctrl-C")?,
    }
    Ok(())
}
