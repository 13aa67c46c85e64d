//! From raw values (command line, environment or config file) to a validated [`Config`]:
//! defaults, the checks etcd makes at startup, and warnings for features not built.

use std::path::PathBuf;
use std::time::Duration;

use super::cluster::initial_cluster;
use super::flags::{find_spec, Effect, Kind, SPECS};
use super::go::{go_duration, parse_go_bool, parse_go_int, parse_go_uint, parse_url_list};
use super::{
    invalid, AutoCompaction, ClusterState, Config, ConfigError, Source, TlsFlags, Url, Values,
};

/// etcd refuses election timeouts above this (`maxElectionMs`).
const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;
const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
/// etcd raises a shorter watch progress interval or lease checkpoint interval to this.
const INTERVAL_MIN: Duration = Duration::from_millis(100);

/// A flag's value, or etcd's default.
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

fn is_true(values: &Values, name: &'static str) -> bool {
    parse_go_bool(raw(values, name)) == Ok(true)
}

/// Builds the `Config` from syntax-checked values; `warnings` so far are kept.
pub(super) fn build(
    values: &Values,
    source: &Source,
    cores_available: usize,
    mut warnings: Vec<String>,
) -> Result<Config, ConfigError> {
    push_feature_warnings(values, source, &mut warnings);
    check_unbuilt_features(values)?;
    let name = raw(values, "name").to_string();
    let data_dir = match raw(values, "data-dir") {
        "" => PathBuf::from(format!("{name}.keel")),
        dir => PathBuf::from(dir),
    };
    let wal_dir = Some(raw(values, "wal-dir"))
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let urls = member_urls(values, source)?;
    let initial_cluster_state = match raw(values, "initial-cluster-state") {
        "existing" => ClusterState::Existing,
        _ => ClusterState::New,
    };
    let initial_cluster = initial_cluster(
        raw(values, "initial-cluster"),
        &name,
        &urls.initial_advertise_peer,
        initial_cluster_state,
    )?;
    let heartbeat_interval_ms = uint_value(values, "heartbeat-interval")?;
    let election_timeout_ms = uint_value(values, "election-timeout")?;
    check_timeouts(heartbeat_interval_ms, election_timeout_ms)?;
    let max_request_bytes = positive(values, "max-request-bytes")?;
    let max_txn_ops = positive(values, "max-txn-ops")?;
    // A gRPC message length is a u32; grpc-go refuses more than i32::MAX.
    let max_response_bytes = positive(values, "max-response-bytes")?.min(i32::MAX as usize);
    let max_concurrent_streams =
        u32::try_from(uint_value(values, "max-concurrent-streams")?).unwrap_or(u32::MAX);
    // etcd treats 0 as "use the default" rather than "snapshot on every entry".
    let snapshot_count = match uint_value(values, "snapshot-count")? {
        0 => DEFAULT_SNAPSHOT_COUNT,
        count => count,
    };
    let snapshot_bytes = positive(values, "snapshot-bytes")? as u64;
    let quota_backend_bytes = quota_backend_bytes(values)?;
    let cpu_list = cpu_list(raw(values, "cpu-list"), cores_available)?;
    let cores = cores(values, cores_available, &cpu_list)?;
    let auth_token = raw(values, "auth-token").to_string();
    match auth_token.split(',').next().unwrap_or("") {
        "simple" | "jwt" => {}
        other => {
            return invalid(format!("unknown token type: {other}"));
        }
    }
    let auth_token_ttl_s = match uint_value(values, "auth-token-ttl")? {
        0 => 300,
        ttl => ttl,
    };
    let bcrypt_cost = match uint_value(values, "bcrypt-cost")? {
        cost @ 4..=31 => cost as u32,
        cost => {
            warnings.push(format!(
                "--bcrypt-cost {cost} is out of range [4, 31]; using the default, 10"
            ));
            10
        }
    };
    let auto_compaction = auto_compaction(
        raw(values, "auto-compaction-mode"),
        raw(values, "auto-compaction-retention"),
    )?;
    Ok(Config {
        name,
        data_dir,
        wal_dir,
        listen_client_urls: urls.listen_client,
        listen_metrics_urls: if raw(values, "listen-metrics-urls").is_empty() {
            Vec::new()
        } else {
            url_list(values, "listen-metrics-urls")?
        },
        etcd_version: etcd_version(values)?,
        metrics_extensive: raw(values, "metrics") == "extensive",
        advertise_client_urls: urls.advertise_client,
        listen_peer_urls: urls.listen_peer,
        initial_advertise_peer_urls: urls.initial_advertise_peer,
        initial_cluster,
        initial_cluster_state,
        initial_cluster_token: raw(values, "initial-cluster-token").to_string(),
        max_request_bytes,
        max_response_bytes,
        max_txn_ops,
        max_concurrent_streams,
        snapshot_count,
        snapshot_bytes,
        heartbeat_interval_ms,
        election_timeout_ms,
        quota_backend_bytes,
        cores,
        cpu_list,
        shard_split_keys: shard_split_keys(values),
        shard_rebalance: parse_go_bool(raw(values, "shard-rebalance")) != Ok(false),
        idle_spin: go_duration(raw(values, "idle-spin")).unwrap_or_default(),
        watch_progress_notify_interval: watch_progress_notify_interval(values),
        lease_checkpoint_interval: lease_checkpoint_interval(values),
        corrupt_check_interval: go_duration(raw(values, "experimental-corrupt-check-time"))
            .filter(|d| !d.is_zero()),
        initial_corrupt_check: is_true(values, "experimental-initial-corrupt-check"),
        strict_reconfig_check: parse_go_bool(raw(values, "strict-reconfig-check")) != Ok(false),
        client_tls: TlsFlags {
            cert_file: raw(values, "cert-file").to_string(),
            key_file: raw(values, "key-file").to_string(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            trusted_ca_file: raw(values, "trusted-ca-file").to_string(),
            client_cert_auth: is_true(values, "client-cert-auth"),
            crl_file: raw(values, "client-crl-file").to_string(),
            allowed_cn: Vec::new(),
            allowed_hostname: list(values, "client-cert-allowed-hostname"),
            auto_tls: is_true(values, "auto-tls"),
        },
        peer_tls: TlsFlags {
            cert_file: raw(values, "peer-cert-file").to_string(),
            key_file: raw(values, "peer-key-file").to_string(),
            client_cert_file: raw(values, "peer-client-cert-file").to_string(),
            client_key_file: raw(values, "peer-client-key-file").to_string(),
            trusted_ca_file: raw(values, "peer-trusted-ca-file").to_string(),
            client_cert_auth: is_true(values, "peer-client-cert-auth"),
            crl_file: raw(values, "peer-crl-file").to_string(),
            allowed_cn: list(values, "peer-cert-allowed-cn"),
            allowed_hostname: list(values, "peer-cert-allowed-hostname"),
            auto_tls: is_true(values, "peer-auto-tls"),
        },
        cipher_suites: list(values, "cipher-suites"),
        tls_min_tls13: raw(values, "tls-min-version") == "TLS1.3",
        tls_max_tls12: raw(values, "tls-max-version") == "TLS1.2",
        self_signed_cert_validity: self_signed_cert_validity(values)?,
        auth_token,
        auth_token_ttl_s,
        bcrypt_cost,
        auto_compaction,
        force_new_cluster: is_true(values, "force-new-cluster"),
        warnings,
    })
}

/// etcd 3.4's parseCompactionRetention: a non-negative integer is hours (periodic) or a
/// revision count (revision); anything else must be a Go duration (in revision mode etcd
/// then keeps as many revisions as the duration has nanoseconds, and so does Keel).
/// `None` (off) for a zero retention, and for a negative duration (which etcd would run
/// with, compacting at every step).
pub(super) fn auto_compaction(
    mode: &str,
    retention: &str,
) -> Result<Option<AutoCompaction>, ConfigError> {
    let parsed = match retention.parse::<i64>() {
        Ok(count) if count >= 0 => match mode {
            "revision" => AutoCompaction::Revision(count),
            "periodic" => match (count as u64).checked_mul(3600) {
                Some(s) => AutoCompaction::Periodic(Duration::from_secs(s)),
                None => {
                    return invalid(format!(
                        "error parsing CompactionRetention: {retention} hours is out of range"
                    ))
                }
            },
            // etcd leaves the retention at zero for an empty mode.
            _ => return Ok(None),
        },
        _ => {
            if super::go::check_go_duration(retention).is_err() {
                let digits = retention.strip_prefix(['-', '+']).unwrap_or(retention);
                let what = if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                    "missing unit in duration"
                } else {
                    "invalid duration"
                };
                return invalid(format!(
                    "error parsing CompactionRetention: time: {what} {retention:?}"
                ));
            }
            let d = go_duration(retention).unwrap_or_default();
            match mode {
                "revision" => {
                    AutoCompaction::Revision(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                }
                "periodic" => AutoCompaction::Periodic(d),
                _ if d.is_zero() => return Ok(None),
                _ => return invalid(format!("unsupported compaction mode {mode}")),
            }
        }
    };
    Ok(match parsed {
        AutoCompaction::Periodic(d) if d.is_zero() => None,
        AutoCompaction::Revision(n) if n <= 0 => None,
        other => Some(other),
    })
}

/// This member's URLs, checked.
struct MemberUrls {
    listen_client: Vec<Url>,
    advertise_client: Vec<Url>,
    listen_peer: Vec<Url>,
    initial_advertise_peer: Vec<Url>,
}

fn member_urls(values: &Values, source: &Source) -> Result<MemberUrls, ConfigError> {
    let urls = MemberUrls {
        listen_client: url_list(values, "listen-client-urls")?,
        advertise_client: url_list(values, "advertise-client-urls")?,
        listen_peer: url_list(values, "listen-peer-urls")?,
        initial_advertise_peer: url_list(values, "initial-advertise-peer-urls")?,
    };
    // etcd drops the default advertise URL once the listen URL is explicit, so a
    // client is never told to dial localhost on a server that does not serve it.
    // etcd applies this rule to flags only.
    let proxy_on = raw(values, "proxy") != "off";
    if matches!(source, Source::Args)
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
        "listen-metrics-urls",
    ] {
        for url in url_list(values, name).unwrap_or_default() {
            if name == "listen-peer-urls" && url.scheme.starts_with("unix") {
                continue; // a socket file, bound as given
            }
            url.socket_addr()
                .map_err(|e| ConfigError::Invalid(format!("--{name}: {e}")))?;
        }
    }
    check_host_urls("initial-advertise-peer-urls", &urls.initial_advertise_peer)?;
    check_host_urls("advertise-client-urls", &urls.advertise_client)?;
    Ok(urls)
}

fn quota_backend_bytes(values: &Values) -> Result<u64, ConfigError> {
    let quota = parse_go_int(raw(values, "quota-backend-bytes")).unwrap_or(0);
    u64::try_from(quota).or_else(|_| {
        invalid(format!(
            "--quota-backend-bytes must be >=0 (set to {quota}); disabling the quota is not \
             supported"
        ))
    })
}

/// `--cores`, or as many cores as `--cpu-list` names.
fn cores(
    values: &Values,
    cores_available: usize,
    cpu_list: &[usize],
) -> Result<Option<usize>, ConfigError> {
    let cores = match values.get("cores") {
        None => None,
        Some(_) => Some(check_cores(uint_value(values, "cores")?, cores_available)?),
    };
    if cpu_list.is_empty() {
        return Ok(cores);
    }
    match cores {
        Some(n) if n > cpu_list.len() => invalid(format!(
            "--cpu-list names {} CPUs for --cores {n}",
            cpu_list.len()
        )),
        Some(n) => Ok(Some(n)),
        None => Ok(Some(cpu_list.len())),
    }
}

/// A comma-separated (or YAML list) flag's items.
fn list(values: &Values, name: &'static str) -> Vec<String> {
    raw(values, name)
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

fn self_signed_cert_validity(values: &Values) -> Result<u32, ConfigError> {
    match u32::try_from(uint_value(values, "self-signed-cert-validity")?) {
        Ok(0) => invalid("--self-signed-cert-validity must be >0 (set to 0)"),
        Ok(n) if n <= 100 => Ok(n),
        _ => invalid("--self-signed-cert-validity is too large"),
    }
}

fn etcd_version(values: &Values) -> Result<String, ConfigError> {
    let v = raw(values, "etcd-version");
    crate::config::version::cluster_of(v).map_err(ConfigError::Invalid)?;
    Ok(v.to_string())
}

fn shard_split_keys(values: &Values) -> Vec<Vec<u8>> {
    raw(values, "shard-split-keys")
        .split(',')
        .filter(|k| !k.is_empty())
        .map(|k| k.as_bytes().to_vec())
        .collect()
}

fn watch_progress_notify_interval(values: &Values) -> Duration {
    match go_duration(raw(values, "experimental-watch-progress-notify-interval")) {
        Some(interval) if interval.is_zero() => interval,
        Some(interval) => interval.max(INTERVAL_MIN),
        None => Duration::from_secs(600),
    }
}

fn lease_checkpoint_interval(values: &Values) -> Option<Duration> {
    is_true(values, "experimental-enable-lease-checkpoint").then(|| {
        go_duration(raw(values, "experimental-lease-checkpoint-interval"))
            .unwrap_or(Duration::from_secs(300))
            .max(INTERVAL_MIN)
    })
}

/// Whether `value` is etcd's default for a flag of `kind`: compared as the value it
/// means, so `5000000000ns` from a file is the default `5s`.
fn is_default(kind: Kind, value: &str, default: &str) -> bool {
    match kind {
        Kind::Bool => parse_go_bool(value).ok() == parse_go_bool(default).ok(),
        Kind::Duration => go_duration(value) == go_duration(default),
        Kind::Uint | Kind::Uint32 => {
            parse_go_uint(value, 64).ok() == parse_go_uint(default, 64).ok()
        }
        Kind::Int => parse_go_int(value).ok() == parse_go_int(default).ok(),
        _ => value.trim() == default,
    }
}

fn push_feature_warnings(values: &Values, source: &Source, warnings: &mut Vec<String>) {
    for spec in SPECS {
        let (Effect::Warn(reason), Some(value)) = (spec.effect, values.get(spec.name)) else {
            continue;
        };
        if !is_default(spec.kind, value, spec.default) {
            warnings.push(format!("{}: {reason}; ignored", source.label(spec.name)));
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
    if is_true(values, "experimental-enable-lease-checkpoint-persist")
        && !is_true(values, "experimental-enable-lease-checkpoint")
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
