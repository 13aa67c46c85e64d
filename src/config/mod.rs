//! Server configuration: etcd's server flags, `ETCD_*` environment variables and
//! `--config-file` (etcd's YAML keys), turned into one validated [`Config`].
//!
//! Runs once in `main` before any executor starts, so it may block (it reads the
//! config file with `std::fs`) and it allocates freely.
//!
//! The way through: the command line (`args`) or the config file (`file`) gives raw
//! values keyed by flag name, each already checked with its flag's Go syntax (`go`,
//! `flags`); `build` applies defaults and etcd's cross-checks; `cluster` checks the
//! initial membership and computes etcd's member and cluster IDs.
//!
//! Invariants of a `Config` returned by [`parse`]:
//! - every URL has scheme http, https, unix or unixs and an explicit port;
//!   listen URLs name an IP address or `localhost` (we never resolve DNS to bind);
//! - `initial_cluster` contains `name`, and for a new cluster its URLs for `name`
//!   are exactly `initial_advertise_peer_urls`;
//! - `5 * heartbeat_interval_ms <= election_timeout_ms <= 50000`;
//! - `max_request_bytes`, `max_txn_ops`, `snapshot_count`, `snapshot_bytes` are positive and
//!   `cores`, when set, is between 1 and the number of available cores.
//!
//! Precedence follows etcd: a config file replaces all flags and environment
//! variables; otherwise a flag given on the command line wins over `ETCD_<FLAG>`.
//! Every other etcd 3.4 server flag is accepted so that scripts written for etcd
//! start Keel unchanged; flags whose feature Keel lacks add a line to
//! `Config::warnings` when set to a non-default value, whether they come from a flag,
//! a variable or the file (the file's TLS sections set the TLS flags' values).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

mod args;
mod build;
mod cluster;
mod file;
mod flags;
mod go;
mod url;
pub mod version;

#[cfg(test)]
mod file_tests;
#[cfg(test)]
mod tests;

pub use cluster::{cluster_id, member_id};
pub use flags::usage;
pub use go::go_duration;
pub use url::Url;

/// A validated server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub listen_client_urls: Vec<Url>,
    /// `--listen-metrics-urls`: `/metrics` and the health probes only.
    pub listen_metrics_urls: Vec<Url>,
    /// Keel's own `--etcd-version`: the etcd version reported to clients.
    pub etcd_version: String,
    /// `--metrics extensive`: gRPC handling-time histograms too.
    pub metrics_extensive: bool,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub initial_cluster: Vec<(String, Url)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub max_request_bytes: usize,
    /// Keel's `--max-response-bytes`: the largest message sent (etcd: grpc-go's
    /// `math.MaxInt32`); a Range answer larger than it is never built whole.
    pub max_response_bytes: usize,
    pub max_txn_ops: usize,
    /// `--max-concurrent-streams`: streams per gRPC connection, and calls in flight through
    /// the JSON gateway (etcd's gateway is one gRPC connection to its own member).
    pub max_concurrent_streams: u32,
    pub snapshot_count: u64,
    /// Keel's `--snapshot-bytes`: a snapshot is also taken when the raft log held in
    /// memory reaches this many bytes, which bounds it for large values.
    pub snapshot_bytes: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// 0 means etcd's default quota (2 GiB).
    pub quota_backend_bytes: u64,
    /// Keel's own `--cores N`; `None` means all available cores.
    pub cores: Option<usize>,
    /// Keel's own `--cpu-list c0,c1,…`: the CPU each core's executor is pinned to (core i
    /// on the i-th; empty: core i on CPU i). Several members on one machine use it to
    /// keep their raft cores apart.
    pub cpu_list: Vec<usize>,
    /// Keel's own `--idle-spin`: after a WAL sync of one entry that followed the last one
    /// straight on, the raft core polls this long before it sleeps, and the WAL's append
    /// thread 4× as long (zero: never; `raft::persist`).
    pub idle_spin: std::time::Duration,
    /// Keel's own `--shard-split-keys k1,k2,…`: where the key-range shards split (empty:
    /// chosen from the keys in the store at boot).
    pub shard_split_keys: Vec<Vec<u8>>,
    /// Keel's own `--shard-rebalance`: move the split keys online when the keys drift out
    /// of balance (never with `--shard-split-keys`; `raft/rebalance.rs`).
    pub shard_rebalance: bool,
    /// `--experimental-watch-progress-notify-interval` (etcd raises values under 100 ms).
    pub watch_progress_notify_interval: std::time::Duration,
    /// `--experimental-enable-lease-checkpoint`: the leader records each lease's
    /// remaining TTL this often (`None`: off).
    pub lease_checkpoint_interval: Option<std::time::Duration>,
    /// `--experimental-corrupt-check-time`: the leader compares HashKV with the other
    /// members this often (`None`: never).
    pub corrupt_check_interval: Option<std::time::Duration>,
    /// `--experimental-initial-corrupt-check`: compare HashKV with the peers at boot.
    pub initial_corrupt_check: bool,
    /// `--strict-reconfig-check`: refuse membership changes that could cost the quorum.
    pub strict_reconfig_check: bool,
    /// `--cert-file` … `--auto-tls`: TLS on the client URLs.
    pub client_tls: TlsFlags,
    /// `--peer-cert-file` … `--peer-auto-tls`: TLS on the peer URLs.
    pub peer_tls: TlsFlags,
    /// `--cipher-suites` (Go names; empty: the TLS stack's defaults).
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version TLS1.3`.
    pub tls_min_tls13: bool,
    /// `--tls-max-version TLS1.2`.
    pub tls_max_tls12: bool,
    /// `--self-signed-cert-validity`, in years.
    pub self_signed_cert_validity: u32,
    /// `--auth-token`: `simple` or `jwt,pub-key=…,priv-key=…,sign-method=…[,ttl=…]`
    /// (the JWT options are read by `auth::jwt` at boot).
    pub auth_token: String,
    /// `--auth-token-ttl`: seconds a simple token lives without use.
    pub auth_token_ttl_s: u64,
    /// `--bcrypt-cost` (4..=31; anything else is etcd's default, 10, with a warning).
    pub bcrypt_cost: u32,
    /// `--auto-compaction-mode` and `--auto-compaction-retention` (`None`: off).
    pub auto_compaction: Option<AutoCompaction>,
    /// `--force-new-cluster`: restart this member as the only one of its cluster.
    pub force_new_cluster: bool,
    /// Flags that were accepted but whose feature is not built (or is ignored).
    pub warnings: Vec<String>,
}

/// One side's TLS flags, as given (files unread).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFlags {
    pub cert_file: String,
    pub key_file: String,
    /// The certificate shown when dialing (peers only; default: `cert_file`).
    pub client_cert_file: String,
    pub client_key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
    pub crl_file: String,
    pub allowed_cn: Vec<String>,
    pub allowed_hostname: Vec<String>,
    pub auto_tls: bool,
}

/// What auto-compaction keeps, as etcd 3.4 parses `--auto-compaction-retention` for
/// `--auto-compaction-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// `periodic`: compact away history older than this.
    Periodic(std::time::Duration),
    /// `revision`: keep this many revisions.
    Revision(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `-h` / `--help`: print the text and exit 0.
    Help(String),
    /// `--version`: print the version and exit 0.
    Version,
    /// A bad flag, value, combination or config file: print the message and exit 2.
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Help(text) => f.write_str(text),
            ConfigError::Version => f.write_str("version requested"),
            ConfigError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message.into()))
}

/// Raw, syntax-checked values by flag name, before defaults and cross-checks.
type Values = BTreeMap<&'static str, String>;

/// Where the values came from: etcd applies some rules to one source only.
#[derive(Debug)]
enum Source {
    /// The command line and `ETCD_*` variables.
    Args,
    /// A config file; `labels` names the file key that set a flag where it is not the
    /// flag's own name.
    File {
        labels: BTreeMap<&'static str, String>,
    },
}

impl Source {
    /// How a warning names the setting of flag `name`.
    fn label(&self, name: &'static str) -> String {
        match self {
            Source::File { labels } => labels
                .get(name)
                .cloned()
                .unwrap_or_else(|| format!("--{name}")),
            Source::Args => format!("--{name}"),
        }
    }
}

/// Parses the server's arguments (without argv[0]) and environment.
pub fn parse(args: &[String], env: &[(String, String)]) -> Result<Config, ConfigError> {
    let cores_available = std::thread::available_parallelism().map_or(1, |n| n.get());
    parse_with_cores(args, env, cores_available)
}

fn parse_with_cores(
    args: &[String],
    env: &[(String, String)],
    cores_available: usize,
) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let from_args = args::parse_args(args, &mut warnings)?;
    if from_args
        .get("version")
        .is_some_and(|v| go::parse_go_bool(v) == Ok(true))
    {
        return Err(ConfigError::Version);
    }
    let env_value = |key: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let config_file = match from_args.get("config-file") {
        Some(path) => Some(path.clone()),
        None => env_value("ETCD_CONFIG_FILE")
            .filter(|v| !v.is_empty())
            .map(str::to_string),
    };
    let Some(path) = config_file else {
        let values = args::apply_env(from_args, env, &mut warnings)?;
        return build::build(&values, &Source::Args, cores_available, warnings);
    };
    // etcd reads only the file once one is named, so flags and env are dropped.
    if from_args.keys().any(|name| *name != "config-file") {
        warnings.push(format!(
            "--config-file {path}: other command-line flags and environment variables are \
             ignored"
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ConfigError::Invalid(format!("cannot read config file {path}: {e}")))?;
    let from_file = file::read(&path, &text, &mut warnings)
        .map_err(|e| ConfigError::Invalid(format!("config file {path}: {e}")))?;
    let source = Source::File {
        labels: from_file.labels,
    };
    build::build(&from_file.values, &source, cores_available, warnings)
}
