//! Server configuration: etcd's server flags, `ETCD_*` environment variables and
//! `--config-file` (etcd's YAML keys), turned into one validated [`Config`].
//!
//! Runs once in `main` before any executor starts, so it may block (it reads the
//! config file with `std::fs`) and it allocates freely.
//!
//! Invariants of a `Config` returned by [`parse`]:
//! - every URL has scheme http, https, unix or unixs and an explicit port;
//!   listen URLs name an IP address or `localhost` (we never resolve DNS to bind);
//! - `initial_cluster` contains `name`, and for a new cluster its URLs for `name`
//!   are exactly `initial_advertise_peer_urls`;
//! - `5 * heartbeat_interval_ms <= election_timeout_ms <= 50000`;
//! - `max_request_bytes`, `max_txn_ops`, `snapshot_count` are positive and
//!   `cores`, when set, is between 1 and the number of available cores.
//!
//! Precedence follows etcd: a config file replaces all flags and environment
//! variables; otherwise a flag given on the command line wins over `ETCD_<FLAG>`.
//! Every other etcd 3.4 server flag is accepted so that scripts written for etcd
//! start Keel unchanged; flags whose feature Keel lacks add a line to
//! `Config::warnings` when set to a non-default value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[cfg(test)]
mod tests;

const DEFAULT_NAME: &str = "default";
const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";
/// etcd refuses election timeouts above this (`maxElectionMs`).
const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;
const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;

const TLS: &str = "TLS is not built yet";
const AUTH: &str = "auth is not built yet";
const V2: &str = "the v2 API is not built";
const DISCOVERY: &str = "discovery is not built; use --initial-cluster";
const PROXY: &str = "the v2 proxy is not built";
const NOT_BUILT: &str = "not built yet";

/// A validated server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub initial_cluster: Vec<(String, Url)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub snapshot_count: u64,
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
    /// Keel's own `--shard-split-keys k1,k2,…`: where the key-range shards split (empty:
    /// chosen from the keys in the store at boot).
    pub shard_split_keys: Vec<Vec<u8>>,
    /// `--experimental-watch-progress-notify-interval` (etcd raises values under 100 ms).
    pub watch_progress_notify_interval: std::time::Duration,
    /// `--experimental-enable-lease-checkpoint`: the leader records each lease's
    /// remaining TTL this often (`None`: off).
    pub lease_checkpoint_interval: Option<std::time::Duration>,
    /// `--strict-reconfig-check`: refuse membership changes that could cost the quorum.
    pub strict_reconfig_check: bool,
    /// Flags that were accepted but whose feature is not built (or is ignored).
    pub warnings: Vec<String>,
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
    /// A bad flag, value or combination: print the message and exit 2.
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

/// A URL the way etcd accepts it: `scheme://host:port`, no path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    pub scheme: String,
    /// Without the brackets of an IPv6 literal; may be empty ("http://:2379").
    pub host: String,
    pub port: u16,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let text = s.trim();
        let scheme_error = || format!("URL scheme must be http, https, unix, or unixs: {text}");
        let (scheme, rest) = text.split_once("://").ok_or_else(scheme_error)?;
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
            return Err(scheme_error());
        }
        if rest.contains(['/', '?', '#']) {
            return Err(format!("URL must not contain a path: {text}"));
        }
        let form_error = || format!("URL address does not have the form \"host:port\": {text}");
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(form_error)?;
            (host, after.strip_prefix(':').ok_or_else(form_error)?)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or_else(form_error)?;
            if host.contains(':') {
                return Err(form_error());
            }
            (host, port)
        };
        if host.contains('@') {
            return Err(format!("URL must not contain user information: {text}"));
        }
        let port = match port.parse::<u16>() {
            Ok(number) if port.bytes().all(|b| b.is_ascii_digit()) => number,
            _ => return Err(format!("URL has an invalid port {port:?}: {text}")),
        };
        Ok(Url {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    /// The address to bind. Only IP literals and `localhost` are accepted, as in
    /// etcd: binding must not depend on DNS.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        if self.scheme.starts_with("unix") {
            return Err(format!("unix sockets are not supported yet ({self})"));
        }
        let ip = if self.host == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.host
                .parse::<IpAddr>()
                .map_err(|_| format!("expected IP in URL for binding ({self})"))?
        };
        Ok(SocketAddr::new(ip, self.port))
    }

    /// The key two URLs are compared by when matching `--initial-cluster` against
    /// `--initial-advertise-peer-urls`; etcd resolves names there, we only know
    /// that `localhost` is 127.0.0.1.
    fn match_key(&self) -> (String, String, u16) {
        let host = if self.host == "localhost" {
            "127.0.0.1"
        } else {
            &self.host
        };
        (self.scheme.clone(), host.to_string(), self.port)
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// etcd's member ID: SHA-1 over the sorted peer URLs concatenated, then the
/// cluster token; the first 8 bytes big-endian. Initial members have no time
/// component (etcd adds one only for members added at runtime).
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    let mut bytes = sorted.concat().into_bytes();
    bytes.extend_from_slice(cluster_token.as_bytes());
    first_8_bytes_be(&bytes)
}

/// etcd's cluster ID: SHA-1 over the member IDs sorted ascending, each as 8
/// bytes big-endian; the first 8 bytes of the digest big-endian.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let bytes: Vec<u8> = sorted.iter().flat_map(|id| id.to_be_bytes()).collect();
    first_8_bytes_be(&bytes)
}

fn first_8_bytes_be(bytes: &[u8]) -> u64 {
    let digest = sha1_smol::Sha1::from(bytes).digest().bytes();
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 digest is 20 bytes"))
}

// ---------------------------------------------------------------------------
// The flag table.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    /// Go `uint`/`uint64` (64 bits).
    Uint,
    Uint32,
    /// Go `int`/`int64`.
    Int,
    Duration,
    Urls,
    Choice(&'static [&'static str]),
    /// etcd's `IgnoredFlag`: parsed like a boolean, value thrown away.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Keel reads it into `Config`.
    Keel,
    /// Accepted; the feature has no behaviour Keel must honour (logging, metrics).
    Silent,
    /// Accepted; warn when set to anything but etcd's default.
    Warn(&'static str),
}

struct Spec {
    name: &'static str,
    kind: Kind,
    /// etcd's default, as text; a value equal to it never warns.
    default: &'static str,
    effect: Effect,
}

const fn spec(name: &'static str, kind: Kind, default: &'static str, effect: Effect) -> Spec {
    Spec {
        name,
        kind,
        default,
        effect,
    }
}

use Effect::{Keel, Silent, Warn};
use Kind::{Bool, Choice, Duration, Ignored, Int, Str, Uint, Uint32, Urls};

/// Every etcd 3.4 server flag plus Keel's `--cores`, sorted by name so that
/// environment variables are applied in etcd's order.
const SPECS: &[Spec] = &[
    spec("advertise-client-urls", Urls, "http://localhost:2379", Keel),
    spec("auth-token", Str, "simple", Warn(AUTH)),
    spec("auth-token-ttl", Uint, "300", Warn(AUTH)),
    spec(
        "auto-compaction-mode",
        Str,
        "periodic",
        Warn("auto-compaction is not built yet"),
    ),
    spec(
        "auto-compaction-retention",
        Str,
        "0",
        Warn("auto-compaction is not built yet"),
    ),
    spec("auto-tls", Bool, "false", Warn(TLS)),
    spec("backend-batch-interval", Duration, "", Silent),
    spec("backend-batch-limit", Int, "0", Silent),
    spec("bcrypt-cost", Uint, "10", Warn(AUTH)),
    spec("cert-file", Str, "", Warn(TLS)),
    spec("cipher-suites", Str, "", Warn(TLS)),
    spec("client-cert-allowed-hostname", Str, "", Warn(TLS)),
    spec("client-cert-auth", Bool, "false", Warn(TLS)),
    spec("client-crl-file", Str, "", Warn(TLS)),
    spec("cluster-active-size", Ignored, "", Silent),
    spec("cluster-remove-delay", Ignored, "", Silent),
    spec("cluster-sync-interval", Ignored, "", Silent),
    spec("config", Ignored, "", Silent),
    spec("config-file", Str, "", Keel),
    spec("cores", Uint, "", Keel),
    spec("cpu-list", Str, "", Keel),
    spec("cors", Str, "*", Silent),
    spec("data-dir", Str, "", Keel),
    spec("debug", Bool, "false", Silent),
    spec("discovery", Str, "", Warn(DISCOVERY)),
    spec(
        "discovery-fallback",
        Choice(&["exit", "proxy"]),
        "proxy",
        Warn(DISCOVERY),
    ),
    spec("discovery-proxy", Str, "", Warn(DISCOVERY)),
    spec("discovery-srv", Str, "", Warn(DISCOVERY)),
    spec("discovery-srv-name", Str, "", Warn(DISCOVERY)),
    spec("election-timeout", Uint, "1000", Keel),
    spec("enable-grpc-gateway", Bool, "true", Silent),
    spec("enable-pprof", Bool, "false", Silent),
    spec("enable-v2", Bool, "false", Warn(V2)),
    spec(
        "experimental-backend-bbolt-freelist-type",
        Str,
        "array",
        Silent,
    ),
    spec("experimental-compaction-batch-limit", Int, "1000", Silent),
    spec(
        "experimental-corrupt-check-time",
        Duration,
        "0s",
        Warn("corruption checks are not built yet"),
    ),
    spec("experimental-enable-lease-checkpoint", Bool, "false", Keel),
    // Checkpoints are always persisted in the Lease tree (3.5's persist flag's behaviour).
    spec(
        "experimental-enable-lease-checkpoint-persist",
        Bool,
        "false",
        Keel,
    ),
    // etcd 3.5's flag (3.4 fixes the interval at 5 minutes).
    spec(
        "experimental-lease-checkpoint-interval",
        Duration,
        "5m",
        Keel,
    ),
    spec("experimental-enable-v2v3", Str, "", Warn(V2)),
    spec(
        "experimental-initial-corrupt-check",
        Bool,
        "false",
        Warn("corruption checks are not built yet"),
    ),
    spec(
        "experimental-peer-skip-client-san-verification",
        Bool,
        "false",
        Warn(TLS),
    ),
    spec(
        "experimental-warning-apply-duration",
        Duration,
        "100ms",
        Silent,
    ),
    spec(
        "experimental-watch-progress-notify-interval",
        Duration,
        "10m",
        Keel,
    ),
    spec("force", Ignored, "", Silent),
    spec("force-new-cluster", Bool, "false", Warn(NOT_BUILT)),
    spec("grpc-keepalive-interval", Duration, "2h", Warn(NOT_BUILT)),
    spec("grpc-keepalive-min-time", Duration, "5s", Warn(NOT_BUILT)),
    spec("grpc-keepalive-timeout", Duration, "20s", Warn(NOT_BUILT)),
    spec("heartbeat-interval", Uint, "100", Keel),
    spec("host-whitelist", Str, "*", Silent),
    spec(
        "initial-advertise-peer-urls",
        Urls,
        "http://localhost:2380",
        Keel,
    ),
    spec("initial-cluster", Str, DEFAULT_INITIAL_CLUSTER, Keel),
    spec(
        "initial-cluster-state",
        Choice(&["new", "existing"]),
        "new",
        Keel,
    ),
    spec("initial-cluster-token", Str, "etcd-cluster", Keel),
    spec(
        "initial-election-tick-advance",
        Bool,
        "true",
        Warn(NOT_BUILT),
    ),
    spec("key-file", Str, "", Warn(TLS)),
    spec(
        "listen-client-http-urls",
        Urls,
        "",
        Warn("a separate HTTP listener is not built yet"),
    ),
    spec("listen-client-urls", Urls, "http://localhost:2379", Keel),
    spec(
        "listen-metrics-urls",
        Urls,
        "",
        Warn("the metrics listener is not built yet"),
    ),
    spec("listen-peer-urls", Urls, "http://localhost:2380", Keel),
    spec("log-level", Str, "info", Silent),
    spec("log-output", Str, "default", Silent),
    spec("log-outputs", Str, "default", Silent),
    spec("log-package-levels", Str, "", Silent),
    spec("logger", Str, "capnslog", Silent),
    spec(
        "max-concurrent-streams",
        Uint32,
        "4294967295",
        Warn(NOT_BUILT),
    ),
    spec("max-request-bytes", Uint, "1572864", Keel),
    spec("max-result-buffer", Ignored, "", Silent),
    spec("max-retry-attempts", Ignored, "", Silent),
    spec("max-snapshots", Uint, "5", Silent),
    spec("max-txn-ops", Uint, "128", Keel),
    spec("max-wals", Uint, "5", Silent),
    spec("metrics", Str, "basic", Silent),
    spec("name", Str, DEFAULT_NAME, Keel),
    spec(
        "next-cluster-version-compatible",
        Bool,
        "false",
        Warn(NOT_BUILT),
    ),
    spec("peer-auto-tls", Bool, "false", Warn(TLS)),
    spec("peer-cert-allowed-cn", Str, "", Warn(TLS)),
    spec("peer-cert-allowed-hostname", Str, "", Warn(TLS)),
    spec("peer-cert-file", Str, "", Warn(TLS)),
    spec("peer-client-cert-auth", Bool, "false", Warn(TLS)),
    spec("peer-crl-file", Str, "", Warn(TLS)),
    spec("peer-election-timeout", Ignored, "", Silent),
    spec("peer-heartbeat-interval", Ignored, "", Silent),
    spec("peer-key-file", Str, "", Warn(TLS)),
    spec("peer-trusted-ca-file", Str, "", Warn(TLS)),
    spec("pre-vote", Bool, "false", Warn(NOT_BUILT)),
    spec(
        "proxy",
        Choice(&["off", "readonly", "on"]),
        "off",
        Warn(PROXY),
    ),
    spec("proxy-dial-timeout", Uint, "1000", Warn(PROXY)),
    spec("proxy-failure-wait", Uint, "5000", Warn(PROXY)),
    spec("proxy-read-timeout", Uint, "0", Warn(PROXY)),
    spec("proxy-refresh-interval", Uint, "30000", Warn(PROXY)),
    spec("proxy-write-timeout", Uint, "5000", Warn(PROXY)),
    spec("quota-backend-bytes", Int, "0", Keel),
    spec("retry-interval", Ignored, "", Silent),
    spec("snapshot", Ignored, "", Silent),
    spec("shard-split-keys", Str, "", Keel),
    spec("snapshot-count", Uint, "100000", Keel),
    spec("strict-reconfig-check", Bool, "true", Keel),
    spec("test.coverprofile", Ignored, "", Silent),
    spec("test.outputdir", Ignored, "", Silent),
    spec("tls-max-version", Str, "", Warn(TLS)),
    spec("tls-min-version", Str, "TLS1.2", Warn(TLS)),
    spec("trusted-ca-file", Str, "", Warn(TLS)),
    spec("unsafe-no-fsync", Bool, "false", Warn(NOT_BUILT)),
    spec("v", Ignored, "", Silent),
    spec("version", Bool, "false", Keel),
    spec("vv", Ignored, "", Silent),
    spec("wal-dir", Str, "", Keel),
];

fn find_spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// Checks a value the way the matching Go `flag.Value::Set` would; the error is
/// the text Go puts after the colon.
fn check_value(kind: Kind, value: &str) -> Result<(), String> {
    match kind {
        Str | Ignored => Ok(()),
        Bool => parse_go_bool(value).map(|_| ()),
        Uint => parse_go_uint(value, 64).map(|_| ()),
        Uint32 => parse_go_uint(value, 32).map(|_| ()),
        Int => parse_go_int(value).map(|_| ()),
        Duration => check_go_duration(value),
        Urls => parse_url_list(value).map(|_| ()),
        Choice(valid) if valid.contains(&value) => Ok(()),
        Choice(valid) => Err(format!(
            "invalid value (valid values are {})",
            valid.join(", ")
        )),
    }
}

fn parse_go_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("parse error".to_string()),
    }
}

/// Go's `strconv.ParseUint(s, 0, bits)`: decimal, 0x, 0o, 0b or leading-0 octal.
fn parse_go_uint(value: &str, bits: u32) -> Result<u64, String> {
    let lower = value.to_ascii_lowercase();
    let (digits, radix) = if let Some(hex) = lower.strip_prefix("0x") {
        (hex, 16)
    } else if let Some(octal) = lower.strip_prefix("0o") {
        (octal, 8)
    } else if let Some(binary) = lower.strip_prefix("0b") {
        (binary, 2)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8)
    } else {
        (lower.as_str(), 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err("parse error".to_string());
    }
    let parsed = u64::from_str_radix(digits, radix).map_err(|_| "value out of range")?;
    if bits < 64 && parsed >> bits != 0 {
        return Err("value out of range".to_string());
    }
    Ok(parsed)
}

fn parse_go_int(value: &str) -> Result<i64, String> {
    let (negative, magnitude) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    let magnitude = parse_go_uint(magnitude, 64)?;
    let limit = if negative {
        1u64 << 63
    } else {
        (1u64 << 63) - 1
    };
    if magnitude > limit {
        return Err("value out of range".to_string());
    }
    Ok(if negative {
        (magnitude as i64).wrapping_neg()
    } else {
        magnitude as i64
    })
}

/// Go's `time.ParseDuration` grammar: `[-+]` then `<number><unit>` repeated, or "0".
fn check_go_duration(value: &str) -> Result<(), String> {
    let parse_error = || "parse error".to_string();
    let mut rest = value.strip_prefix(['-', '+']).unwrap_or(value);
    if rest == "0" {
        return Ok(());
    }
    if rest.is_empty() {
        return Err(parse_error());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(parse_error());
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        if !matches!(
            &rest[..unit_len],
            "ns" | "us" | "µs" | "μs" | "ms" | "s" | "m" | "h"
        ) {
            return Err(parse_error());
        }
        rest = &rest[unit_len..];
    }
    Ok(())
}

/// A comma-separated URL list, duplicates dropped, order kept.
fn parse_url_list(value: &str) -> Result<Vec<Url>, String> {
    let mut urls: Vec<Url> = Vec::new();
    for item in value.split(',') {
        let url = Url::parse(item)?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

// ---------------------------------------------------------------------------
// Collecting raw values from the command line, the environment or a file.

/// Raw, syntax-checked values by flag name, before defaults and cross-checks.
type Values = BTreeMap<&'static str, String>;

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
    let from_args = parse_args(args, &mut warnings)?;
    if from_args
        .get("version")
        .is_some_and(|v| parse_go_bool(v) == Ok(true))
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
    if let Some(path) = config_file {
        // etcd reads only the file once one is named, so flags and env are dropped.
        if from_args.keys().any(|name| *name != "config-file") {
            warnings.push(format!(
                "--config-file {path}: other command-line flags and environment variables are \
                 ignored"
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::Invalid(format!("cannot read config file {path}: {e}")))?;
        let values = values_from_yaml(&path, &text, &mut warnings)?;
        return build(&values, false, cores_available, warnings);
    }
    let values = apply_env(from_args, env, &mut warnings)?;
    build(&values, true, cores_available, warnings)
}

/// Go `flag` syntax: `-f`, `--f`, `-f=v`, `-f v`; booleans never take the next
/// argument; `--` or the first non-flag argument ends the flags.
fn parse_args(args: &[String], warnings: &mut Vec<String>) -> Result<Values, ConfigError> {
    let mut values = Values::new();
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        if arg == "--" {
            break;
        }
        let Some(dashless) = arg.strip_prefix('-').filter(|rest| !rest.is_empty()) else {
            return invalid(format!("'{arg}' is not a valid flag"));
        };
        let body = dashless.strip_prefix('-').unwrap_or(dashless);
        if body.is_empty() || body.starts_with(['-', '=']) {
            return invalid(format!("bad flag syntax: {arg}"));
        }
        let (name, inline_value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (body, None),
        };
        let Some(spec) = find_spec(name) else {
            if name == "h" || name == "help" {
                return Err(ConfigError::Help(usage().to_string()));
            }
            return invalid(format!("flag provided but not defined: -{name}"));
        };
        let value = if matches!(spec.kind, Bool | Ignored) {
            let value = inline_value.unwrap_or_else(|| "true".to_string());
            if spec.kind == Bool {
                parse_go_bool(&value).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "invalid boolean value {value:?} for -{name}: {e}"
                    ))
                })?;
            }
            value
        } else {
            let value = match inline_value {
                Some(value) => value,
                None if index < args.len() => {
                    index += 1;
                    args[index - 1].clone()
                }
                None => return invalid(format!("flag needs an argument: -{name}")),
            };
            check_value(spec.kind, &value).map_err(|e| {
                ConfigError::Invalid(format!("invalid value {value:?} for flag -{name}: {e}"))
            })?;
            value
        };
        if spec.kind == Ignored {
            warnings.push(format!("--{name}: deprecated etcd flag; ignored"));
        }
        values.insert(spec.name, value);
    }
    if let Some(extra) = args.get(index) {
        return invalid(format!("'{extra}' is not a valid flag"));
    }
    Ok(values)
}

fn env_key(flag: &str) -> String {
    format!("ETCD_{}", flag.replace('-', "_").to_ascii_uppercase())
}

/// `ETCD_FOO_BAR` sets `--foo-bar` unless the command line set it.
fn apply_env(
    mut values: Values,
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<Values, ConfigError> {
    let from_args: Vec<&'static str> = values.keys().copied().collect();
    let mut used = vec!["ETCD_CONFIG_FILE".to_string()];
    for spec in SPECS {
        let key = env_key(spec.name);
        if from_args.contains(&spec.name) {
            continue;
        }
        let Some((_, value)) = env.iter().rev().find(|(k, _)| *k == key) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        check_value(spec.kind, value)
            .map_err(|e| ConfigError::Invalid(format!("invalid value {value:?} for {key}: {e}")))?;
        values.insert(spec.name, value.clone());
        used.push(key);
    }
    for (key, value) in env {
        if used.contains(key) || !key.starts_with("ETCD_") {
            continue;
        }
        let shadowed = from_args.iter().any(|name| env_key(name) == *key);
        if shadowed {
            // etcd 3.4 exits here; we let the command line win and say so.
            warnings.push(format!(
                "conflicting environment variable {key:?} is shadowed by corresponding \
                 command-line flag"
            ));
        } else {
            warnings.push(format!("unrecognized environment variable {key}={value}"));
        }
    }
    Ok(values)
}

fn values_from_yaml(
    path: &str,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<Values, ConfigError> {
    let entries =
        yaml_entries(text).map_err(|e| ConfigError::Invalid(format!("config file {path}: {e}")))?;
    let mut values = Values::new();
    for (key, value) in entries {
        let Some(value) = value else { continue };
        if let Some(field) = key
            .strip_prefix("client-transport-security.")
            .or_else(|| key.strip_prefix("peer-transport-security."))
        {
            let unset = value.is_empty() || parse_go_bool(&value) == Ok(false);
            if ![
                "cert-file",
                "key-file",
                "client-cert-auth",
                "trusted-ca-file",
                "auto-tls",
            ]
            .contains(&field)
            {
                warnings.push(format!("config file {path}: unknown key {key}; ignored"));
            } else if !unset {
                warnings.push(format!("{key}: {TLS}; ignored"));
            }
            continue;
        }
        let Some(spec) = find_spec(&key).filter(|s| !matches!(s.name, "config-file" | "version"))
        else {
            warnings.push(format!("config file {path}: unknown key {key}; ignored"));
            continue;
        };
        check_value(spec.kind, &value).map_err(|e| {
            ConfigError::Invalid(format!(
                "config file {path}: invalid value {value:?} for {key}: {e}"
            ))
        })?;
        values.insert(spec.name, value);
    }
    Ok(values)
}

// ---------------------------------------------------------------------------
// A YAML subset: enough for etcd's config files.

/// Flattens `key: value` lines into `("parent.child", value)` pairs; `None` is
/// YAML null. Block lists (`- item`) and flow lists (`[a, b]`) become one
/// comma-joined value, which is how etcd's list-valued keys read as flags.
fn yaml_entries(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut entries: Vec<(String, Option<String>)> = Vec::new();
    // (indent, key path) of the keys that may still receive children.
    let mut parents: Vec<(usize, String)> = Vec::new();
    for (line_index, raw_line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let line = strip_yaml_comment(raw_line).trim_end();
        let content = line.trim_start();
        if content.is_empty() || content == "---" || content == "..." {
            continue;
        }
        let indent = line.len() - content.len();
        if line[..indent].contains('\t') {
            return Err(format!(
                "line {line_number}: tabs are not allowed in indentation"
            ));
        }
        if let Some(item) = content
            .strip_prefix('-')
            .filter(|r| r.is_empty() || r.starts_with(' '))
        {
            let item = yaml_scalar(item.trim(), line_number)?.unwrap_or_default();
            let Some((_, value)) = entries.last_mut() else {
                return Err(format!("line {line_number}: list item without a key"));
            };
            match value {
                Some(joined) => {
                    joined.push(',');
                    joined.push_str(&item);
                }
                None => *value = Some(item),
            }
            continue;
        }
        let (key, value) = split_yaml_key(content)
            .ok_or_else(|| format!("line {line_number}: expected \"key: value\""))?;
        while parents
            .last()
            .is_some_and(|(parent_indent, _)| *parent_indent >= indent)
        {
            parents.pop();
        }
        let path = match parents.last() {
            Some((_, parent)) => format!("{parent}.{key}"),
            None => key.to_string(),
        };
        if value.is_empty() {
            parents.push((indent, path.clone()));
        }
        entries.push((path, yaml_scalar(value, line_number)?));
    }
    // A key that turned out to be a map parent carries no value of its own.
    let parent_paths: Vec<String> = entries
        .iter()
        .filter_map(|(key, _)| key.rsplit_once('.').map(|(parent, _)| parent.to_string()))
        .collect();
    entries.retain(|(key, _)| !parent_paths.contains(key));
    Ok(entries)
}

fn strip_yaml_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (index, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return &line[..index],
            None => {}
        }
        previous = c;
    }
    line
}

fn split_yaml_key(content: &str) -> Option<(&str, &str)> {
    let (key, value) = match content.split_once(": ") {
        Some((key, value)) => (key, value.trim()),
        None => (content.strip_suffix(':')?, ""),
    };
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty()).then_some((key, value))
}

fn yaml_scalar(value: &str, line_number: usize) -> Result<Option<String>, String> {
    if value.is_empty() || value == "~" || value == "null" || value == "Null" || value == "NULL" {
        return Ok(None);
    }
    if value.starts_with('|') || value.starts_with('>') {
        return Err(format!(
            "line {line_number}: block scalars are not supported"
        ));
    }
    if let Some(inner) = value.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| format!("line {line_number}: unterminated quoted string"))?;
        return Ok(Some(inner.replace("''", "'")));
    }
    if let Some(inner) = value.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| format!("line {line_number}: unterminated quoted string"))?;
        return unescape_double_quoted(inner)
            .map(Some)
            .map_err(|e| format!("line {line_number}: {e}"));
    }
    if let Some(inner) = value.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("line {line_number}: unterminated flow list"))?;
        let mut items = Vec::new();
        for item in inner
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            items.push(yaml_scalar(item, line_number)?.unwrap_or_default());
        }
        return Ok(Some(items.join(",")));
    }
    Ok(Some(value.to_string()))
}

fn unescape_double_quoted(inner: &str) -> Result<String, String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('/') => out.push('/'),
            other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// From raw values to a validated Config.

fn raw<'a>(values: &'a Values, name: &'static str) -> &'a str {
    match values.get(name) {
        Some(value) => value,
        None => find_spec(name).expect("flag in SPECS").default,
    }
}

fn uint_value(values: &Values, name: &'static str) -> Result<u64, ConfigError> {
    parse_go_uint(raw(values, name), 64).map_err(|e| ConfigError::Invalid(format!("--{name}: {e}")))
}

fn url_list(values: &Values, name: &'static str) -> Result<Vec<Url>, ConfigError> {
    parse_url_list(raw(values, name)).map_err(|e| ConfigError::Invalid(format!("--{name}: {e}")))
}

/// `from_args`: values came from flags/env, where etcd applies two extra rules.
fn build(
    values: &Values,
    from_args: bool,
    cores_available: usize,
    mut warnings: Vec<String>,
) -> Result<Config, ConfigError> {
    push_feature_warnings(values, &mut warnings);
    check_unbuilt_features(values)?;
    let name = raw(values, "name").to_string();
    let data_dir = match raw(values, "data-dir") {
        "" => PathBuf::from(format!("{name}.keel")),
        dir => PathBuf::from(dir),
    };
    let wal_dir = Some(raw(values, "wal-dir"))
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);

    let listen_client_urls = url_list(values, "listen-client-urls")?;
    let listen_peer_urls = url_list(values, "listen-peer-urls")?;
    let advertise_client_urls = url_list(values, "advertise-client-urls")?;
    let initial_advertise_peer_urls = url_list(values, "initial-advertise-peer-urls")?;
    // etcd drops the default advertise URL once the listen URL is explicit, so a
    // client is never told to dial localhost on a server that does not serve it.
    let proxy_on = raw(values, "proxy") != "off";
    if from_args
        && values.contains_key("listen-client-urls")
        && !values.contains_key("advertise-client-urls")
        && !proxy_on
    {
        return invalid(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly",
        );
    }
    for name in [
        "listen-peer-urls",
        "listen-client-urls",
        "listen-client-http-urls",
    ] {
        for url in url_list(values, name).unwrap_or_default() {
            url.socket_addr()
                .map_err(|e| ConfigError::Invalid(format!("--{name}: {e}")))?;
        }
    }
    check_host_urls("initial-advertise-peer-urls", &initial_advertise_peer_urls)?;
    check_host_urls("advertise-client-urls", &advertise_client_urls)?;

    let initial_cluster_state = match raw(values, "initial-cluster-state") {
        "existing" => ClusterState::Existing,
        _ => ClusterState::New,
    };
    let initial_cluster = initial_cluster(
        values,
        &name,
        &initial_advertise_peer_urls,
        initial_cluster_state,
    )?;

    let heartbeat_interval_ms = uint_value(values, "heartbeat-interval")?;
    let election_timeout_ms = uint_value(values, "election-timeout")?;
    check_timeouts(heartbeat_interval_ms, election_timeout_ms)?;

    let max_request_bytes = positive(values, "max-request-bytes")?;
    let max_txn_ops = positive(values, "max-txn-ops")?;
    // etcd treats 0 as "use the default" rather than "snapshot on every entry".
    let snapshot_count = match uint_value(values, "snapshot-count")? {
        0 => DEFAULT_SNAPSHOT_COUNT,
        count => count,
    };
    let quota = parse_go_int(raw(values, "quota-backend-bytes")).unwrap_or(0);
    let Ok(quota_backend_bytes) = u64::try_from(quota) else {
        return invalid(format!(
            "--quota-backend-bytes must be >=0 (set to {quota}); disabling the quota is not \
             supported"
        ));
    };
    let mut cores = match values.get("cores") {
        None => None,
        Some(_) => Some(check_cores(uint_value(values, "cores")?, cores_available)?),
    };
    let cpu_list = cpu_list(raw(values, "cpu-list"), cores_available)?;
    if !cpu_list.is_empty() {
        match cores {
            Some(n) if n > cpu_list.len() => {
                return invalid(format!(
                    "--cpu-list names {} CPUs for --cores {n}",
                    cpu_list.len()
                ))
            }
            Some(_) => {}
            None => cores = Some(cpu_list.len()),
        }
    }
    Ok(Config {
        name,
        data_dir,
        wal_dir,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state,
        initial_cluster_token: raw(values, "initial-cluster-token").to_string(),
        max_request_bytes,
        max_txn_ops,
        snapshot_count,
        heartbeat_interval_ms,
        election_timeout_ms,
        quota_backend_bytes,
        cores,
        cpu_list,
        shard_split_keys: raw(values, "shard-split-keys")
            .split(',')
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect(),
        watch_progress_notify_interval: go_duration(raw(
            values,
            "experimental-watch-progress-notify-interval",
        ))
        .map(|d| {
            if d.is_zero() {
                d
            } else {
                d.max(std::time::Duration::from_millis(100))
            }
        })
        .unwrap_or(std::time::Duration::from_secs(600)),
        lease_checkpoint_interval: (parse_go_bool(raw(
            values,
            "experimental-enable-lease-checkpoint",
        )) == Ok(true))
        .then(|| {
            go_duration(raw(values, "experimental-lease-checkpoint-interval"))
                .unwrap_or(std::time::Duration::from_secs(300))
                .max(std::time::Duration::from_millis(100))
        }),
        strict_reconfig_check: parse_go_bool(raw(values, "strict-reconfig-check")) != Ok(false),
        warnings,
    })
}

/// A Go duration (already checked by `check_go_duration`) as a std Duration; negative
/// values are zero.
pub fn go_duration(value: &str) -> Option<std::time::Duration> {
    if value.starts_with('-') {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = value.strip_prefix('+').unwrap_or(value);
    if rest == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let number: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[u..];
    }
    Some(std::time::Duration::from_secs_f64(total))
}

fn push_feature_warnings(values: &Values, warnings: &mut Vec<String>) {
    for spec in SPECS {
        let (Effect::Warn(reason), Some(value)) = (spec.effect, values.get(spec.name)) else {
            continue;
        };
        let is_default = if spec.kind == Bool {
            parse_go_bool(value).ok() == parse_go_bool(spec.default).ok()
        } else {
            value.trim() == spec.default
        };
        if !is_default {
            warnings.push(format!("--{}: {reason}; ignored", spec.name));
        }
    }
}

/// Values etcd itself rejects for features we only warn about: a config that
/// etcd refuses must not start Keel either.
fn check_unbuilt_features(values: &Values) -> Result<(), ConfigError> {
    let mode = raw(values, "auto-compaction-mode");
    if !matches!(mode, "" | "periodic" | "revision") {
        return invalid(format!("unknown auto-compaction-mode {mode:?}"));
    }
    let is_set = |name| parse_go_bool(raw(values, name)) == Ok(true);
    if is_set("experimental-enable-lease-checkpoint-persist")
        && !is_set("experimental-enable-lease-checkpoint")
    {
        return invalid(
            "setting experimental-enable-lease-checkpoint-persist requires \
             experimental-enable-lease-checkpoint",
        );
    }
    for name in ["tls-min-version", "tls-max-version"] {
        let version = raw(values, name);
        if !matches!(version, "" | "TLS1.2" | "TLS1.3") {
            return invalid(format!(
                "--{name}: unexpected TLS version {version:?} (must be one of: TLS1.2, TLS1.3)"
            ));
        }
    }
    let bootstrap_count = [
        values.contains_key("initial-cluster"),
        !raw(values, "discovery").is_empty(),
        !raw(values, "discovery-srv").is_empty(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if bootstrap_count > 1 {
        return invalid(
            "multiple discovery or bootstrap flags are set; choose one of --initial-cluster, \
             --discovery or --discovery-srv",
        );
    }
    Ok(())
}

fn check_host_urls(name: &str, urls: &[Url]) -> Result<(), ConfigError> {
    if let Some(url) = urls.iter().find(|url| url.host.is_empty()) {
        let all: Vec<String> = urls.iter().map(Url::to_string).collect();
        return invalid(format!(
            "--{name} {:?} must be \"host:port\" (unexpected empty host ({url}))",
            all.join(",")
        ));
    }
    Ok(())
}

fn check_timeouts(heartbeat_interval_ms: u64, election_timeout_ms: u64) -> Result<(), ConfigError> {
    if heartbeat_interval_ms == 0 {
        return invalid("--heartbeat-interval must be >0 (set to 0ms)");
    }
    if election_timeout_ms == 0 {
        return invalid("--election-timeout must be >0 (set to 0ms)");
    }
    if heartbeat_interval_ms.saturating_mul(5) > election_timeout_ms {
        return invalid(format!(
            "--election-timeout[{election_timeout_ms}ms] should be at least as 5 times as \
             --heartbeat-interval[{heartbeat_interval_ms}ms]"
        ));
    }
    if election_timeout_ms > ELECTION_TIMEOUT_MS_MAX {
        return invalid(format!(
            "--election-timeout[{election_timeout_ms}ms] is too long, and should be set less \
             than {ELECTION_TIMEOUT_MS_MAX}ms"
        ));
    }
    Ok(())
}

fn positive(values: &Values, name: &'static str) -> Result<usize, ConfigError> {
    match usize::try_from(uint_value(values, name)?) {
        Ok(0) => invalid(format!("--{name} must be >0 (set to 0)")),
        Ok(n) => Ok(n),
        Err(_) => invalid(format!("--{name} is too large")),
    }
}

/// `--cpu-list 1,0`: distinct CPU numbers below the available count.
fn cpu_list(value: &str, cores_available: usize) -> Result<Vec<usize>, ConfigError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in value.split(',') {
        match part.trim().parse::<usize>() {
            Ok(n) if n < cores_available && !out.contains(&n) => out.push(n),
            _ => {
                return invalid(format!(
                    "--cpu-list must list distinct CPUs below {cores_available} (set to {value:?})"
                ))
            }
        }
    }
    Ok(out)
}

fn check_cores(cores: u64, cores_available: usize) -> Result<usize, ConfigError> {
    match usize::try_from(cores) {
        Ok(n) if (1..=cores_available).contains(&n) => Ok(n),
        _ => invalid(format!(
            "--cores must be between 1 and the {cores_available} available cores (set to {cores})"
        )),
    }
}

/// `--initial-cluster`, defaulted and checked the way etcd bootstraps a member.
fn initial_cluster(
    values: &Values,
    name: &str,
    advertise_peer_urls: &[Url],
    state: ClusterState,
) -> Result<Vec<(String, Url)>, ConfigError> {
    let text = raw(values, "initial-cluster");
    // etcd rewrites the untouched default as "<name>=<each advertise peer URL>",
    // so `--name x` alone bootstraps a one-member cluster called x.
    let members: Vec<(String, Url)> = if text == DEFAULT_INITIAL_CLUSTER && name != DEFAULT_NAME {
        advertise_peer_urls
            .iter()
            .map(|url| (name.to_string(), url.clone()))
            .collect()
    } else {
        let mut members = Vec::new();
        for entry in text.split(',').filter(|entry| !entry.is_empty()) {
            let (member, url) = entry.split_once('=').unwrap_or((entry, ""));
            let url = Url::parse(url)
                .map_err(|e| ConfigError::Invalid(format!("--initial-cluster {text:?}: {e}")))?;
            members.push((member.to_string(), url));
        }
        members
    };
    let local: Vec<&Url> = members
        .iter()
        .filter(|(m, _)| m == name)
        .map(|(_, u)| u)
        .collect();
    if local.is_empty() {
        return invalid(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        ));
    }
    let mut seen = Vec::new();
    for (_, url) in &members {
        if seen.contains(&url) {
            return invalid(format!("initial cluster {text} has duplicate url"));
        }
        seen.push(url);
    }
    if state == ClusterState::New {
        check_advertise_matches(name, &local, advertise_peer_urls)?;
    }
    Ok(members)
}

fn check_advertise_matches(
    name: &str,
    cluster_urls: &[&Url],
    advertise_peer_urls: &[Url],
) -> Result<(), ConfigError> {
    let in_advertise = |url: &Url| {
        advertise_peer_urls
            .iter()
            .any(|a| a.match_key() == url.match_key())
    };
    let in_cluster = |url: &Url| {
        cluster_urls
            .iter()
            .any(|c| c.match_key() == url.match_key())
    };
    let advertised: Vec<String> = advertise_peer_urls.iter().map(Url::to_string).collect();
    let as_members = |urls: &mut dyn Iterator<Item = &Url>| -> String {
        urls.map(|url| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let missing = as_members(&mut cluster_urls.iter().copied().filter(|u| !in_advertise(u)));
    if !missing.is_empty() {
        return invalid(format!(
            "--initial-cluster has {missing} but missing from --initial-advertise-peer-urls={}",
            advertised.join(",")
        ));
    }
    let extra: Vec<String> = advertise_peer_urls
        .iter()
        .filter(|u| !in_cluster(u))
        .map(Url::to_string)
        .collect();
    if !extra.is_empty() {
        return invalid(format!(
            "--initial-advertise-peer-urls has {} but missing from --initial-cluster={}",
            extra.join(","),
            as_members(&mut advertise_peer_urls.iter())
        ));
    }
    Ok(())
}

/// Keel's help text.
pub fn usage() -> &'static str {
    USAGE
}

const USAGE: &str = "\
Usage:

  keel [flags]            start a Keel member (etcd v3 API)
  keel --version          print the version
  keel -h | --help        print this text
  keel --config-file PATH read all settings from an etcd-style YAML file;
                          flags and ETCD_* variables are then ignored

Every flag can also be set as ETCD_<FLAG> (upper case, '-' as '_'); a flag given
on the command line wins.

Member:
  --name 'default'                      name of this member
  --data-dir '${name}.keel'             where the data lives
  --wal-dir ''                          put the write-ahead log in its own directory
  --snapshot-count '100000'             committed entries between snapshots
  --heartbeat-interval '100'            leader heartbeat, in milliseconds
  --election-timeout '1000'             election timeout, in milliseconds (>= 5 heartbeats)
  --listen-peer-urls 'http://localhost:2380'
  --listen-client-urls 'http://localhost:2379'
  --max-txn-ops '128'                   operations allowed in one transaction
  --max-request-bytes '1572864'         largest client request accepted
  --quota-backend-bytes '0'             database size limit (0 means 2 GiB)
  --cores N                             cores to run on (default: all available)
  --cpu-list c0,c1                      the CPU of each core (default: core i on CPU i)

Clustering:
  --initial-advertise-peer-urls 'http://localhost:2380'
  --initial-cluster 'default=http://localhost:2380'
                                        name=url pairs of the first members
  --initial-cluster-state 'new'         'new' or 'existing'
  --initial-cluster-token 'etcd-cluster'
  --advertise-client-urls 'http://localhost:2379'
                                        required when --listen-client-urls is given

Accepted for etcd compatibility (a warning is printed when the feature is not built):
  TLS: --cert-file --key-file --trusted-ca-file --client-cert-auth --client-crl-file
       --client-cert-allowed-hostname --auto-tls --peer-cert-file --peer-key-file
       --peer-trusted-ca-file --peer-client-cert-auth --peer-crl-file --peer-auto-tls
       --peer-cert-allowed-cn --peer-cert-allowed-hostname --cipher-suites
       --tls-min-version --tls-max-version
  auth: --auth-token --bcrypt-cost --auth-token-ttl
  bootstrap: --discovery --discovery-fallback --discovery-proxy --discovery-srv
       --discovery-srv-name --force-new-cluster
  v2 and proxy: --enable-v2 --experimental-enable-v2v3 --proxy --proxy-*
  other: --auto-compaction-mode --auto-compaction-retention
       --pre-vote --initial-election-tick-advance --max-concurrent-streams
       --grpc-keepalive-* --listen-client-http-urls --listen-metrics-urls
       --unsafe-no-fsync --next-cluster-version-compatible --experimental-*
  no effect: --logger --log-level --log-outputs --debug --metrics --enable-pprof
       --enable-grpc-gateway --max-snapshots --max-wals --cors --host-whitelist
       --backend-batch-interval --backend-batch-limit
";
