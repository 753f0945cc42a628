//! Node configuration: defaults that make `tollgate` with no arguments a
//! working single-node gateway, overridable by a TOML file and by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's Raft id. Unique within a cluster.
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub admin: Admin,
    pub proxy: Proxy,
    pub raft: Raft,
    pub cluster: Cluster,
    pub telemetry: Telemetry,
    pub ops: Ops,
    pub limits: Limits,
    pub usage: Usage,
    pub audit: Audit,
    pub storage: Storage,
}

/// How much memory the node's RocksDB may hold. The replicated state of a
/// gateway is small; raise these only for very large key or route counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// Cache of data, index and filter blocks read from disk, shared by
    /// every column family.
    pub block_cache_mib: u64,
    /// A column family's memtable is written to disk at this size.
    pub write_buffer_mib: u64,
    /// All memtables together, a soft bound: past it the family with the
    /// oldest memtable is written out early.
    pub write_buffers_total_mib: u64,
}

impl Default for Storage {
    fn default() -> Self {
        let budget = tollgate_storage::MemoryBudget::default();
        let mib = |bytes: usize| (bytes >> 20) as u64;
        Storage {
            block_cache_mib: mib(budget.block_cache_bytes),
            write_buffer_mib: mib(budget.write_buffer_bytes),
            write_buffers_total_mib: mib(budget.write_buffers_total_bytes),
        }
    }
}

impl Storage {
    pub fn budget(&self) -> tollgate_storage::MemoryBudget {
        let bytes = |mib: u64| usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        tollgate_storage::MemoryBudget {
            block_cache_bytes: bytes(self.block_cache_mib),
            write_buffer_bytes: bytes(self.write_buffer_mib),
            write_buffers_total_bytes: bytes(self.write_buffers_total_mib),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let defaults = Storage::default();
        for (key, value, default) in [
            ("storage.block_cache_mib", self.block_cache_mib, defaults.block_cache_mib),
            ("storage.write_buffer_mib", self.write_buffer_mib, defaults.write_buffer_mib),
            ("storage.write_buffers_total_mib", self.write_buffers_total_mib, defaults.write_buffers_total_mib),
        ] {
            if !(1..=65_536).contains(&value) {
                return Err(ConfigError::Invalid(format!("{key} must be 1 to 65536 ({default} is the default)")));
            }
        }
        if self.write_buffers_total_mib < self.write_buffer_mib {
            return Err(ConfigError::Invalid(format!(
                "storage.write_buffers_total_mib ({}) must be at least storage.write_buffer_mib ({})",
                self.write_buffers_total_mib, self.write_buffer_mib
            )));
        }
        Ok(())
    }
}

/// The audit trail of admin changes (replicated; see `crate::admin`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Audit {
    /// Entries older than this are deleted, by the leader, hourly. 0 keeps
    /// them forever.
    pub retention_days: u64,
}

impl Default for Audit {
    fn default() -> Self {
        Audit { retention_days: 365 }
    }
}

/// The usage ledger: every request's record is journaled on the node that
/// served it, then folded into the cluster's counters (see `crate::usage`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Usage {
    /// How often this node sends its journal to the cluster's counters
    /// (sooner when 100,000 records are waiting).
    pub flush_interval_ms: u64,
    /// Per-request records are kept this many days on the node that served
    /// them, and deleted after (once the counters hold them: a record not
    /// yet folded is kept however old). The counters are kept.
    pub retention_days: u64,
    /// The journal's segment files, in MiB: each is reserved at this size
    /// while written, and trimmed when the next starts (at the latest an
    /// hour later).
    pub segment_mib: u64,
}

impl Default for Usage {
    fn default() -> Self {
        Usage { flush_interval_ms: 1_000, retention_days: 30, segment_mib: 32 }
    }
}

impl Usage {
    pub fn journal_options(&self) -> tollgate_journal::Options {
        tollgate_journal::Options { segment_bytes: self.segment_mib.saturating_mul(1 << 20), ..Default::default() }
    }

    pub fn flush_config(&self) -> crate::usage::flush::FlushConfig {
        crate::usage::flush::FlushConfig {
            interval: ms(self.flush_interval_ms),
            retention: Duration::from_secs(self.retention_days.saturating_mul(86_400)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// Peer address other nodes use to reach this one (a relay, NAT or DNS
    /// name); default: the bound `listen.cluster` address.
    pub advertise: Option<String>,
    /// On first start, join the cluster of this member (its peer address)
    /// instead of forming a new one. Ignored once the node has joined.
    pub join: Option<String>,
    /// The token for `join`, from `tollgate ctl cluster token`.
    pub join_token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Telemetry {
    /// OTLP/gRPC collector for traces, e.g. "http://127.0.0.1:4317". When
    /// unset, OTEL_EXPORTER_OTLP_ENDPOINT is used; when both are unset, no
    /// spans are exported and `traceparent` passes through untouched.
    pub otlp_endpoint: Option<String>,
}

/// TLS termination on a second proxy listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTls {
    pub listen: SocketAddr,
    /// PEM files; the certificate matching the client's SNI is served, the first is the default.
    pub certificates: Vec<crate::proxy::tls::CertFiles>,
    /// How often the files are checked for changes; 0 = 5000.
    #[serde(default)]
    pub reload_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Peer traffic (QUIC). Recorded in the membership; used once nodes join.
    pub cluster: SocketAddr,
    /// Ops HTTP: /metrics, /healthz, /readyz.
    pub ops: SocketAddr,
    /// The web console (admins) and developer portal (consumers).
    pub console: SocketAddr,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Bearer token for the admin API. When unset, `<data_dir>/admin-token` is
    /// used, and created with a random token on first start.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Proxy {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: u64,
    /// Used when a service does not set its own.
    pub connect_timeout_ms: u64,
    /// Time until the upstream's response headers; used when a service does not set its own.
    pub request_timeout_ms: u64,
    /// Idle upstream connections are closed after this long.
    pub upstream_idle_timeout_ms: u64,
    /// A client's HTTP/1 connection is closed when no complete request head
    /// arrives for this long: idle keep-alive connections, and clients that
    /// send headers too slowly to tie up connections (slowloris), alike.
    /// HTTP/2 connections are pinged after this long without traffic and
    /// closed when the ping goes unanswered. 75 s, like nginx's keep-alive
    /// timeout, outlasts the 60 s idle timeout of common load balancers.
    pub client_idle_timeout_ms: u64,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout_ms: u64,
    /// A client that accepts none of its response for this long is
    /// disconnected, which also releases the upstream connection its
    /// response comes from (otherwise a client that stops reading holds both
    /// forever).
    pub client_send_timeout_ms: u64,
    /// Open client connections of the proxy listeners (plain and TLS
    /// together). At the cap an idle keep-alive connection is closed to make
    /// room for a new one; when none is idle, new connections are closed at
    /// once. 0 (default) = derived from the open-file limit (RLIMIT_NOFILE,
    /// raised to its hard limit at start): half of what remains after
    /// reserving max(256, 10 %) for the admin API, ops, Raft and RocksDB,
    /// since a client with a request in flight holds an upstream connection too.
    pub max_connections: usize,
    /// JSON access log: "stdout", "off", or a file path (appended to).
    pub access_log: String,
    /// Memory for the response cache of all routes together, in bytes.
    pub cache_max_bytes: u64,
    /// Empty path segments (`//`): "merge" (default, as nginx), "reject"
    /// (400) or "keep". See `proxy::path`.
    pub path_slashes: crate::proxy::SlashPolicy,
    /// Encoded separators in the path (`%2F`, `%5C`) and raw `\`: "reject"
    /// (default, 400), "keep" (forwarded encoded) or "decode" (to `/`).
    /// An encoded NUL is refused whatever this says.
    pub path_escaped_separators: crate::proxy::EscapedSeparatorPolicy,
    /// TLS termination; absent = plain HTTP only.
    pub tls: Option<ProxyTls>,
}

/// The ops listener (/metrics, /healthz, /readyz): small answers to a few
/// scrapers and probes, so tight bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ops {
    /// A connection is closed when no complete request head arrives for this
    /// long: hyper's header-read timer starts whenever it waits for a head,
    /// so this bounds idle keep-alive connections and slow headers alike.
    pub client_idle_timeout_ms: u64,
    /// A client that accepts none of its response for this long is disconnected.
    pub client_send_timeout_ms: u64,
    /// Open connections; more are closed at accept. Part of the descriptors
    /// reserved from the proxy (see `proxy.max_connections`).
    pub max_connections: usize,
}

impl Default for Ops {
    fn default() -> Self {
        Ops { client_idle_timeout_ms: 10_000, client_send_timeout_ms: 10_000, max_connections: 64 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raft {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_after_logs: u64,
    pub logs_kept_after_snapshot: u64,
    /// A write (or a linearizable read) that cannot reach a majority fails
    /// with "unavailable" after this long.
    pub write_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("./tollgate-data"),
            listen: Listen::default(),
            admin: Admin::default(),
            proxy: Proxy::default(),
            raft: Raft::default(),
            cluster: Cluster::default(),
            telemetry: Telemetry::default(),
            ops: Ops::default(),
            limits: Limits::default(),
            usage: Usage::default(),
            audit: Audit::default(),
            storage: Storage::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            proxy: ([127, 0, 0, 1], 8080).into(),
            admin: ([127, 0, 0, 1], 9090).into(),
            cluster: ([127, 0, 0, 1], 7000).into(),
            ops: ([127, 0, 0, 1], 9091).into(),
            console: ([127, 0, 0, 1], 9092).into(),
        }
    }
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            max_body_bytes: 16 << 20,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 60_000,
            upstream_idle_timeout_ms: 90_000,
            client_idle_timeout_ms: 75_000,
            drain_timeout_ms: 30_000,
            client_send_timeout_ms: 60_000,
            max_connections: 0,
            access_log: "stdout".into(),
            cache_max_bytes: 64 << 20,
            path_slashes: Default::default(),
            path_escaped_separators: Default::default(),
            tls: None,
        }
    }
}

impl Default for Raft {
    fn default() -> Self {
        Raft {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
            write_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let config: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), source: Box::new(e) })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::Invalid("node_id must be at least 1".into()));
        }
        if self.proxy.max_body_bytes == 0 {
            return Err(ConfigError::Invalid("proxy.max_body_bytes must be positive".into()));
        }
        if self.proxy.client_idle_timeout_ms < 100 {
            return Err(ConfigError::Invalid(
                "proxy.client_idle_timeout_ms must be at least 100 (75000 is the default)".into(),
            ));
        }
        for (key, value, default) in [
            ("proxy.client_send_timeout_ms", self.proxy.client_send_timeout_ms, 60_000),
            ("ops.client_idle_timeout_ms", self.ops.client_idle_timeout_ms, 10_000),
            ("ops.client_send_timeout_ms", self.ops.client_send_timeout_ms, 10_000),
        ] {
            if value < 100 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 100 ({default} is the default)")));
            }
        }
        self.storage.validate()?;
        if self.usage.flush_interval_ms < 10 {
            return Err(ConfigError::Invalid(
                "usage.flush_interval_ms must be at least 10 (1000 is the default)".into(),
            ));
        }
        if !(1..=1024).contains(&self.usage.segment_mib) {
            return Err(ConfigError::Invalid("usage.segment_mib must be 1 to 1024 (32 is the default)".into()));
        }
        if self.usage.retention_days == 0 {
            return Err(ConfigError::Invalid("usage.retention_days must be at least 1 (30 is the default)".into()));
        }
        if self.ops.max_connections == 0 {
            return Err(ConfigError::Invalid("ops.max_connections must be at least 1 (64 is the default)".into()));
        }
        if self.raft.election_timeout_min_ms <= self.raft.heartbeat_ms
            || self.raft.election_timeout_max_ms <= self.raft.election_timeout_min_ms
        {
            return Err(ConfigError::Invalid(
                "raft timeouts must satisfy heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
            ));
        }
        if self.cluster.join.is_some() != self.cluster.join_token.is_some() {
            return Err(ConfigError::Invalid(
                "joining needs both --join <peer address> and --join-token <token>".into(),
            ));
        }
        if let Some(token) = &self.admin.token
            && token.len() < 16
        {
            return Err(ConfigError::Invalid("admin.token must be at least 16 characters".into()));
        }
        Ok(())
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }
}

pub(crate) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Quota leases (DESIGN §5): how long a request may wait for a grant, and
/// when a node gives back what it holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// A request that finds this node's lease empty while more is being
    /// asked for waits this long for the grant, then is refused (429).
    pub lease_wait_ms: u64,
    /// The same for the first request of a bucket this node has never held
    /// a lease for (its grant is a Raft commit away), and for an AI call's
    /// token or cost reservation, which lasts seconds anyway.
    pub first_lease_wait_ms: u64,
    /// A lease command that has not committed by then fails: the requests
    /// waiting for it are refused, and the node admits nothing beyond what
    /// it holds (as when it cannot reach a majority).
    pub ask_timeout_ms: u64,
    /// Units of an hour-, day- or month-long window that a node has not
    /// used for this long go back to the cluster for other nodes to use.
    pub idle_return_ms: u64,
    /// Admitted responses carry the RateLimit and X-RateLimit-* headers of
    /// their tightest limit (refusals always do). Off, as Kong's
    /// `hide_client_headers`, saves their cost on every response.
    pub admitted_headers: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            lease_wait_ms: 5,
            first_lease_wait_ms: 250,
            ask_timeout_ms: 2_000,
            idle_return_ms: 5_000,
            admitted_headers: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Config {
        toml::from_str(text).expect("the TOML parses")
    }

    #[test]
    fn storage_memory_is_configurable_and_small_by_default() {
        let budget = Config::default().storage.budget();
        assert_eq!(budget, tollgate_storage::MemoryBudget::default());
        assert!(budget.block_cache_bytes + budget.write_buffers_total_bytes <= 32 << 20, "{budget:?}");

        let config = parsed("[storage]\nblock_cache_mib = 64\nwrite_buffer_mib = 16\nwrite_buffers_total_mib = 64\n");
        config.validate().unwrap();
        let budget = config.storage.budget();
        assert_eq!(
            (budget.block_cache_bytes, budget.write_buffer_bytes, budget.write_buffers_total_bytes),
            (64 << 20, 16 << 20, 64 << 20)
        );
    }

    #[test]
    fn storage_settings_that_cannot_work_are_refused_by_name() {
        for (text, names) in [
            ("[storage]\nblock_cache_mib = 0\n", "storage.block_cache_mib must be 1 to 65536"),
            ("[storage]\nwrite_buffer_mib = 0\n", "storage.write_buffer_mib must be 1 to 65536"),
            (
                "[storage]\nwrite_buffer_mib = 32\nwrite_buffers_total_mib = 8\n",
                "must be at least storage.write_buffer_mib",
            ),
        ] {
            let error = parsed(text).validate().expect_err(text).to_string();
            assert!(error.contains(names), "{text}: {error}");
        }
        assert!(toml::from_str::<Config>("[storage]\nblock_cache = 3\n").is_err(), "unknown keys are refused");
    }
}
