//! Logging: human-readable by default, one JSON object per line with
//! `--log-format json` (access log lines carry `target: "access"`).

pub mod access_log;
pub mod ai_metrics;
pub mod limit_metrics;
pub mod metrics;
pub mod tracing;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The filter when `TOLLGATE_LOG` is not set. openraft logs a WARN for every
/// heartbeat a peer misses (26 lines in the first second of a clean 3-node
/// join, while the new members were still starting), so only its errors
/// reach the operator; `cluster_events` logs what the operator needs from
/// Raft (leader changes, members, snapshots, a member not answering) as our
/// own INFO and WARN lines. `TOLLGATE_LOG=info,openraft=debug` brings it back.
pub const DEFAULT_FILTER: &str = "info,openraft=error,h2=warn,hyper=warn,tower=warn";

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").is_some()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Colour only for a person at a terminal: never into a file, a pipe or a
/// journal (escape codes there are noise), nor when `NO_COLOR` is set
/// (no-color.org).
fn use_colour(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}
