//! etcd's server configuration: its flags (Go `flag` syntax), `ETCD_*` environment
//! variables and `--config-file` YAML, with etcd 3.4's names, defaults, checks and
//! messages, into one validated [`Config`].
//!
//! Runs on: the main thread, before any executor starts (reading the config file with
//! `std::fs` is fine here).
//!
//! Rules, as etcd applies them:
//! - Command line first; an `ETCD_FOO_BAR` variable sets `--foo-bar` only when the flag
//!   was not given. Unknown `ETCD_*` variables are reported, not fatal.
//! - With `--config-file` (or `ETCD_CONFIG_FILE`), only the file counts: other flags and
//!   variables are ignored.
//! - Every etcd 3.4 server flag is accepted. Flags for features Keel does not have yet are
//!   accepted with a warning in `Config::warnings` (so the log says so), never silently.
//! - Invariant of a returned `Config`: URLs parse, this member is in the initial cluster,
//!   the election timeout is at least 5 heartbeats and at most 50 s, limits are positive.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// The text as given (what etcd hashes into member IDs and prints).
    raw: String,
}

impl Url {
    /// `scheme://host:port` with scheme http, https, unix or unixs (etcd's rule).
    pub fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("URL scheme must be http, https, unix, or unixs: {s}"))?;
        if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
            return Err(format!(
                "URL scheme must be http, https, unix, or unixs: {s}"
            ));
        }
        let authority = rest.split('/').next().unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p),
            _ => return Err(format!("missing port in address: {s}")),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port {port:?} in URL {s}"))?;
        Ok(Url {
            scheme: scheme.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            raw: s.to_string(),
        })
    }

    /// The address to bind or dial. `localhost` is 127.0.0.1 (no resolver at boot).
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        let ip: IpAddr = if self.host == "localhost" || self.host.is_empty() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.host
                .parse()
                .map_err(|_| format!("{}: host must be an IP address or localhost", self.raw))?
        };
        Ok(SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub listen_client_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub listen_peer_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    /// One (name, peer URL) pair per entry of `--initial-cluster`.
    pub initial_cluster: Vec<(String, Url)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub snapshot_count: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// 0 = etcd's default (2 GiB).
    pub quota_backend_bytes: u64,
    /// Keel's own `--cores`: executors to run (default: every CPU).
    pub cores: Option<usize>,
    /// Flags accepted whose feature is not built yet, and other notices for the log.
    pub warnings: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `-h` / `--help`: print this and exit 0.
    Help(String),
    /// `--version`.
    Version,
    /// A bad flag, value or combination: print and exit 2.
    Invalid(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    Str,
    Uint,
    Int,
    Duration,
    Urls,
}

/// What Keel does with a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// Read into `Config`.
    Used,
    /// Accepted; no behaviour depends on it (logging, metrics, pprof, retention counts).
    Silent,
    /// Accepted; the feature is not built yet, so setting it earns this warning.
    Warn(&'static str),
}

use Effect::{Silent, Used, Warn};
use Kind::{Bool, Duration, Int, Str, Uint, Urls};

const TLS: &str = "TLS is not built yet; serving plaintext";
const NOT_YET: &str = "not built yet; ignored";

/// etcd 3.4's server flags, plus Keel's `--cores`.
const FLAGS: &[(&str, Kind, Effect)] = &[
    ("name", Str, Used),
    ("data-dir", Str, Used),
    ("wal-dir", Str, Used),
    ("listen-client-urls", Urls, Used),
    ("advertise-client-urls", Urls, Used),
    ("listen-peer-urls", Urls, Used),
    ("initial-advertise-peer-urls", Urls, Used),
    ("initial-cluster", Str, Used),
    ("initial-cluster-state", Str, Used),
    ("initial-cluster-token", Str, Used),
    ("max-request-bytes", Uint, Used),
    ("max-txn-ops", Uint, Used),
    ("snapshot-count", Uint, Used),
    ("heartbeat-interval", Uint, Used),
    ("election-timeout", Uint, Used),
    ("quota-backend-bytes", Int, Used),
    ("config-file", Str, Used),
    ("cores", Uint, Used),
    (
        "listen-metrics-urls",
        Urls,
        Warn("a separate metrics listener is not built yet"),
    ),
    ("max-snapshots", Uint, Silent),
    ("max-wals", Uint, Silent),
    ("backend-batch-interval", Duration, Silent),
    ("backend-batch-limit", Int, Silent),
    ("max-concurrent-streams", Uint, Silent),
    ("grpc-keepalive-min-time", Duration, Silent),
    ("grpc-keepalive-interval", Duration, Silent),
    ("grpc-keepalive-timeout", Duration, Silent),
    ("initial-election-tick-advance", Bool, Silent),
    ("pre-vote", Bool, Silent),
    ("strict-reconfig-check", Bool, Silent),
    ("enable-grpc-gateway", Bool, Silent),
    ("enable-pprof", Bool, Silent),
    ("metrics", Str, Silent),
    ("logger", Str, Silent),
    ("log-outputs", Str, Silent),
    ("log-output", Str, Silent),
    ("log-level", Str, Silent),
    ("log-package-levels", Str, Silent),
    ("debug", Bool, Silent),
    ("bcrypt-cost", Uint, Silent),
    ("cors", Str, Silent),
    ("host-whitelist", Str, Silent),
    ("experimental-backend-bbolt-freelist-type", Str, Silent),
    ("experimental-compaction-batch-limit", Int, Silent),
    ("experimental-warning-apply-duration", Duration, Silent),
    (
        "experimental-initial-corrupt-check",
        Bool,
        Warn("corruption checks are not built yet"),
    ),
    (
        "experimental-corrupt-check-time",
        Duration,
        Warn("corruption checks are not built yet"),
    ),
    (
        "experimental-enable-v2v3",
        Str,
        Warn("the v2 API is not built"),
    ),
    ("experimental-enable-lease-checkpoint", Bool, Warn(NOT_YET)),
    (
        "experimental-enable-lease-checkpoint-persist",
        Bool,
        Warn(NOT_YET),
    ),
    (
        "experimental-watch-progress-notify-interval",
        Duration,
        Warn(NOT_YET),
    ),
    (
        "experimental-peer-skip-client-san-verification",
        Bool,
        Warn(TLS),
    ),
    ("enable-v2", Bool, Warn("the v2 API is not built")),
    ("force-new-cluster", Bool, Warn(NOT_YET)),
    ("unsafe-no-fsync", Bool, Warn("Keel always fsyncs")),
    ("auto-compaction-mode", Str, Warn(NOT_YET)),
    ("auto-compaction-retention", Str, Warn(NOT_YET)),
    ("auth-token", Str, Warn("auth is not built yet")),
    ("auth-token-ttl", Uint, Warn("auth is not built yet")),
    ("discovery", Str, Warn("discovery is not built")),
    ("discovery-fallback", Str, Warn("discovery is not built")),
    ("discovery-proxy", Str, Warn("discovery is not built")),
    ("discovery-srv", Str, Warn("discovery is not built")),
    ("discovery-srv-name", Str, Warn("discovery is not built")),
    ("proxy", Str, Warn("the v2 proxy is not built")),
    (
        "proxy-failure-wait",
        Uint,
        Warn("the v2 proxy is not built"),
    ),
    (
        "proxy-refresh-interval",
        Uint,
        Warn("the v2 proxy is not built"),
    ),
    (
        "proxy-dial-timeout",
        Uint,
        Warn("the v2 proxy is not built"),
    ),
    (
        "proxy-write-timeout",
        Uint,
        Warn("the v2 proxy is not built"),
    ),
    (
        "proxy-read-timeout",
        Uint,
        Warn("the v2 proxy is not built"),
    ),
    ("cert-file", Str, Warn(TLS)),
    ("key-file", Str, Warn(TLS)),
    ("client-cert-auth", Bool, Warn(TLS)),
    ("client-crl-file", Str, Warn(TLS)),
    ("client-cert-allowed-hostname", Str, Warn(TLS)),
    ("trusted-ca-file", Str, Warn(TLS)),
    ("auto-tls", Bool, Warn(TLS)),
    ("peer-cert-file", Str, Warn(TLS)),
    ("peer-key-file", Str, Warn(TLS)),
    ("peer-client-cert-auth", Bool, Warn(TLS)),
    ("peer-trusted-ca-file", Str, Warn(TLS)),
    ("peer-cert-allowed-cn", Str, Warn(TLS)),
    ("peer-cert-allowed-hostname", Str, Warn(TLS)),
    ("peer-auto-tls", Bool, Warn(TLS)),
    ("peer-crl-file", Str, Warn(TLS)),
    ("cipher-suites", Str, Warn(TLS)),
];

/// Flags etcd 3.4 still accepts and ignores (v2-era names).
const IGNORED: &[&str] = &[
    "cluster-active-size",
    "cluster-remove-delay",
    "cluster-sync-interval",
    "config",
    "force",
    "max-result-buffer",
    "max-retry-attempts",
    "peer-heartbeat-interval",
    "peer-election-timeout",
    "retry-interval",
    "snapshot",
    "v",
    "vv",
];

fn spec(name: &str) -> Option<(Kind, Effect)> {
    FLAGS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, k, e)| (k, e))
}

pub fn usage() -> &'static str {
    "usage: keel [flags]
  Start a Keel member: an etcd v3-compatible server. Flags are etcd's.

member flags:
  --name 'default'                       human-readable name for this member
  --data-dir '${name}.keel'              path to the data directory
  --wal-dir ''                           path to a dedicated WAL directory
  --snapshot-count '100000'              committed entries between raft snapshots
  --heartbeat-interval '100'             time (ms) of a heartbeat interval
  --election-timeout '1000'              time (ms) of an election timeout
  --listen-peer-urls 'http://localhost:2380'
  --listen-client-urls 'http://localhost:2379'
  --max-request-bytes '1572864'          largest client request accepted
  --max-txn-ops '128'                    most operations in one txn
  --quota-backend-bytes '0'              backend size limit (0 = default)

clustering flags:
  --initial-advertise-peer-urls 'http://localhost:2380'
  --initial-cluster 'default=http://localhost:2380'
  --initial-cluster-state 'new'          'new' or 'existing'
  --initial-cluster-token 'etcd-cluster'
  --advertise-client-urls 'http://localhost:2379'

keel flags:
  --cores N                              executors to run (default: every CPU)

  --config-file ''                       etcd YAML config; other flags and ETCD_* are then ignored
  --version                              print the version and exit

Every other etcd 3.4 server flag is accepted; those whose feature Keel has not built yet
(TLS, auth tokens, v2, discovery, proxy, auto-compaction, ...) are logged as warnings.
Each flag can also be set as an environment variable: ETCD_DATA_DIR for --data-dir."
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Raw values by flag name, as given (last one wins), plus where they came from.
type Raw = HashMap<String, String>;

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` syntax: `300ms`, `1h30m`, `2.5s`, `0`.
fn parse_duration(v: &str) -> Option<std::time::Duration> {
    if v == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = v;
    let mut total_ns = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total_ns += n * scale;
        rest = &rest[unit_end..];
    }
    Some(std::time::Duration::from_nanos(total_ns as u64))
}

/// Checks a value against its flag's kind, with Go's flag package wording.
fn check_value(name: &str, kind: Kind, v: &str) -> Result<(), ConfigError> {
    let ok = match kind {
        Bool => parse_bool(v).is_some(),
        Str => true,
        Uint => v.parse::<u64>().is_ok(),
        Int => v.parse::<i64>().is_ok(),
        Duration => parse_duration(v).is_some(),
        Urls => parse_urls(v).is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid value {v:?} for flag -{name}: parse error"
        )))
    }
}

fn parse_urls(v: &str) -> Result<Vec<Url>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Url::parse)
        .collect()
}

/// Go `flag` syntax: `-f v`, `--f v`, `-f=v`, `--f=v`; booleans take no separate value.
fn parse_args(args: &[String]) -> Result<Raw, ConfigError> {
    let mut raw = Raw::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(invalid(format!(
                "'{arg}' is not a valid flag (flags start with -- )"
            )));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        match name {
            "h" | "help" => return Err(ConfigError::Help(usage().to_string())),
            "version" => return Err(ConfigError::Version),
            _ => {}
        }
        if IGNORED.contains(&name) {
            if inline.is_none() && i < args.len() && !args[i].starts_with('-') {
                i += 1;
            }
            continue;
        }
        let Some((kind, _)) = spec(name) else {
            return Err(invalid(format!("flag provided but not defined: -{name}")));
        };
        let value = match (kind, inline) {
            (_, Some(v)) => v,
            (Bool, None) => "true".to_string(),
            (_, None) => {
                if i >= args.len() {
                    return Err(invalid(format!("flag needs an argument: -{name}")));
                }
                i += 1;
                args[i - 1].clone()
            }
        };
        check_value(name, kind, &value)?;
        raw.insert(name.to_string(), value);
    }
    Ok(raw)
}

/// ETCD_* variables for flags not given on the command line.
fn apply_env(
    raw: &mut Raw,
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (key, value) in env {
        let Some(flag) = key.strip_prefix("ETCD_") else {
            continue;
        };
        let name = flag.to_lowercase().replace('_', "-");
        let Some((kind, _)) = spec(&name) else {
            warnings.push(format!("unrecognized environment variable {key}={value}"));
            continue;
        };
        if value.is_empty() {
            continue;
        }
        if raw.contains_key(&name) {
            return Err(invalid(format!(
                "conflicting environment variable {key:?} is shadowed by corresponding \
                 command-line flag (either unset environment variable or disable flag)"
            )));
        }
        check_value(&name, kind, value)
            .map_err(|_| invalid(format!("invalid value {value:?} for {key}: parse error")))?;
        raw.insert(name, value.clone());
    }
    Ok(())
}

/// The YAML subset etcd config files use: `key: value`, comments, quotes, nested maps
/// (flattened as `parent.child`), and `- item` lists (joined with commas).
fn parse_yaml(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut parents: Vec<(usize, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let content = strip_comment(line);
        if content.trim().is_empty() || content.trim() == "---" {
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        let item = content.trim();
        if let Some(list_item) = item.strip_prefix("- ") {
            let Some(last) = out.last_mut() else {
                return Err(format!("line {}: list item without a key", n + 1));
            };
            let v = unquote(list_item.trim());
            if last.1.is_empty() {
                last.1 = v;
            } else {
                last.1 = format!("{},{v}", last.1);
            }
            continue;
        }
        let Some((key, value)) = item.split_once(':') else {
            return Err(format!("line {}: expected `key: value`", n + 1));
        };
        while parents.last().is_some_and(|(i, _)| *i >= indent) {
            parents.pop();
        }
        let mut full = parents
            .iter()
            .map(|(_, p)| p.as_str())
            .collect::<Vec<_>>()
            .join(".");
        if !full.is_empty() {
            full.push('.');
        }
        full.push_str(key.trim());
        let value = value.trim();
        if value.is_empty() {
            parents.push((indent, key.trim().to_string()));
            out.push((full, String::new()));
        } else {
            let v = unquote(value);
            let v = if v == "null" || v == "~" {
                String::new()
            } else {
                v
            };
            out.push((full, v));
        }
    }
    Ok(out)
}

fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || line[..i].ends_with(' ') => return &line[..i],
            _ => {}
        }
    }
    line
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

fn apply_file(path: &str, warnings: &mut Vec<String>) -> Result<Raw, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read config file {path}: {e}")))?;
    let pairs = parse_yaml(&text).map_err(|e| invalid(format!("{path}: {e}")))?;
    let mut raw = Raw::new();
    for (key, value) in pairs {
        // TLS blocks: any setting in them is a TLS setting.
        if key.starts_with("client-transport-security")
            || key.starts_with("peer-transport-security")
        {
            if !value.is_empty() && value != "false" {
                warnings.push(format!("{key}: {TLS}"));
            }
            continue;
        }
        let Some((kind, _)) = spec(&key) else {
            warnings.push(format!("{path}: unknown key {key:?} ignored"));
            continue;
        };
        if value.is_empty() {
            continue;
        }
        check_value(&key, kind, &value)
            .map_err(|_| invalid(format!("{path}: invalid value {value:?} for {key}")))?;
        raw.insert(key, value);
    }
    Ok(raw)
}

fn num<T: std::str::FromStr>(raw: &Raw, name: &str, default: T) -> T {
    raw.get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn urls(raw: &Raw, name: &str, default: &str) -> Result<Vec<Url>, ConfigError> {
    let v = raw.get(name).map(String::as_str).unwrap_or(default);
    parse_urls(v).map_err(|e| invalid(format!("--{name}: {e}")))
}

/// Parses the command line (without argv[0]) and the environment into a `Config`.
pub fn parse(args: &[String], env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let cli = parse_args(args)?;
    let config_file = cli.get("config-file").cloned().or_else(|| {
        env.iter()
            .find(|(k, v)| k == "ETCD_CONFIG_FILE" && !v.is_empty())
            .map(|(_, v)| v.clone())
    });
    let raw = match config_file {
        Some(path) => {
            warnings.push(format!(
                "loading server configuration from {path:?}; other command line flags and \
                 environment variables are ignored"
            ));
            apply_file(&path, &mut warnings)?
        }
        None => {
            let mut raw = cli;
            apply_env(&mut raw, env, &mut warnings)?;
            raw
        }
    };
    build(raw, warnings)
}

fn build(raw: Raw, mut warnings: Vec<String>) -> Result<Config, ConfigError> {
    for (name, value) in &raw {
        if let Some((kind, Warn(why))) = spec(name) {
            // A boolean set to false asks for nothing.
            if !(kind == Bool && parse_bool(value) == Some(false)) {
                warnings.push(format!("--{name}={value}: {why}"));
            }
        }
    }
    let name = raw.get("name").cloned().unwrap_or_else(|| "default".into());
    let data_dir = PathBuf::from(
        raw.get("data-dir")
            .cloned()
            .unwrap_or_else(|| format!("{name}.keel")),
    );
    let listen_client_urls = urls(&raw, "listen-client-urls", "http://localhost:2379")?;
    let advertise_client_urls = urls(&raw, "advertise-client-urls", "http://localhost:2379")?;
    let listen_peer_urls = urls(&raw, "listen-peer-urls", "http://localhost:2380")?;
    let initial_advertise_peer_urls =
        urls(&raw, "initial-advertise-peer-urls", "http://localhost:2380")?;
    if raw.contains_key("listen-client-urls") && !raw.contains_key("advertise-client-urls") {
        return Err(invalid(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly",
        ));
    }
    // etcd: without --initial-cluster, the cluster is this member at its advertised URLs.
    let cluster_text = raw.get("initial-cluster").cloned().unwrap_or_else(|| {
        initial_advertise_peer_urls
            .iter()
            .map(|u| format!("{name}={u}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    let mut initial_cluster = Vec::new();
    for entry in cluster_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (n, u) = entry
            .split_once('=')
            .ok_or_else(|| invalid(format!("--initial-cluster: {entry:?} is not name=url")))?;
        let url = Url::parse(u).map_err(|e| invalid(format!("--initial-cluster: {e}")))?;
        initial_cluster.push((n.to_string(), url));
    }
    if !initial_cluster.iter().any(|(n, _)| *n == name) {
        return Err(invalid(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        )));
    }
    let initial_cluster_state = match raw.get("initial-cluster-state").map(String::as_str) {
        None | Some("new") => ClusterState::New,
        Some("existing") => ClusterState::Existing,
        Some(other) => {
            return Err(invalid(format!(
                "invalid value {other:?} for flag -initial-cluster-state: valid values are \"new\", \"existing\""
            )))
        }
    };
    let heartbeat_interval_ms: u64 = num(&raw, "heartbeat-interval", 100);
    let election_timeout_ms: u64 = num(&raw, "election-timeout", 1000);
    if heartbeat_interval_ms == 0 {
        return Err(invalid("--heartbeat-interval must be >0 (set to 0ms)"));
    }
    if election_timeout_ms == 0 {
        return Err(invalid("--election-timeout must be >0 (set to 0ms)"));
    }
    if 5 * heartbeat_interval_ms > election_timeout_ms {
        return Err(invalid(format!(
            "--election-timeout[{election_timeout_ms}ms] should be at least as 5 times as \
             --heartbeat-interval[{heartbeat_interval_ms}ms]"
        )));
    }
    if election_timeout_ms > 50_000 {
        return Err(invalid(format!(
            "--election-timeout[{election_timeout_ms}ms] is too long, and should be set less \
             than 50000ms"
        )));
    }
    let max_request_bytes: usize = num(&raw, "max-request-bytes", 1536 * 1024);
    let max_txn_ops: usize = num(&raw, "max-txn-ops", 128);
    if max_request_bytes == 0 || max_txn_ops == 0 {
        return Err(invalid("--max-request-bytes and --max-txn-ops must be > 0"));
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = match raw.get("cores") {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 && n <= cpus => Some(n),
            _ => {
                return Err(invalid(format!(
                    "invalid value {v:?} for flag -cores: must be between 1 and {cpus}"
                )))
            }
        },
    };
    let quota: i64 = num(&raw, "quota-backend-bytes", 0);
    Ok(Config {
        wal_dir: raw
            .get("wal-dir")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        initial_cluster_token: raw
            .get("initial-cluster-token")
            .cloned()
            .unwrap_or_else(|| "etcd-cluster".into()),
        snapshot_count: num(&raw, "snapshot-count", 100_000),
        quota_backend_bytes: quota.max(0) as u64,
        name,
        data_dir,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state,
        max_request_bytes,
        max_txn_ops,
        heartbeat_interval_ms,
        election_timeout_ms,
        cores,
        warnings,
    })
}

/// etcd's member ID: SHA-1 over the sorted peer URLs concatenated, then the cluster token;
/// the first 8 bytes, big-endian.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = sha1_smol::Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(cluster_token.as_bytes());
    let d = h.digest().bytes();
    u64::from_be_bytes(d[..8].try_into().expect("sha1 has 20 bytes"))
}

/// etcd's cluster ID: SHA-1 over the member IDs sorted ascending, 8 bytes big-endian
/// each; the first 8 bytes, big-endian.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = sha1_smol::Sha1::new();
    for id in ids {
        h.update(&id.to_be_bytes());
    }
    let d = h.digest().bytes();
    u64::from_be_bytes(d[..8].try_into().expect("sha1 has 20 bytes"))
}

#[cfg(test)]
mod tests;
