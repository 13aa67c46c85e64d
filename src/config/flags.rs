//! The flag table: every server flag etcd has, with its Go type, etcd's default and what
//! Keel does with it, and the help text. The command line, `ETCD_*` variables and the config
//! file all name settings by these flags.

use super::go::{
    check_go_duration, parse_go_bool, parse_go_int, parse_go_uint, parse_url_list, ValueError,
};

pub(super) const DEFAULT_NAME: &str = "default";
pub(super) const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";

/// Why a flag is accepted but ignored (the line `Config::warnings` gets).
/// Why `client-transport-security.allowed-cn` and a few TLS flags are ignored.
pub(super) const TLS: &str = "not used by Keel";

/// The TLS flags: set from the config file's two transport-security sections only, never
/// from a top-level key (`is_flag_only`).
pub(super) const TLS_FLAGS: &[&str] = &[
    "auto-tls",
    "cert-file",
    "client-cert-allowed-hostname",
    "client-cert-auth",
    "client-cert-file",
    "client-crl-file",
    "client-key-file",
    "experimental-peer-skip-client-san-verification",
    "key-file",
    "peer-auto-tls",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "peer-cert-file",
    "peer-client-cert-auth",
    "peer-client-cert-file",
    "peer-client-key-file",
    "peer-crl-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "trusted-ca-file",
];
const V2: &str = "the v2 API is not built";
const DISCOVERY: &str = "discovery is not built; use --initial-cluster";
const PROXY: &str = "the v2 proxy is not built";
const NOT_BUILT: &str = "not built yet";

/// A flag's Go type, which decides the syntax its value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    /// Comma-separated strings (etcd's `StringsValue`); a config file may give a YAML list.
    List,
    Bool,
    /// Go `uint`/`uint64` (64 bits).
    Uint,
    Uint32,
    /// Go `int`/`int64`.
    Int,
    /// Go `time.Duration`: `1m30s` on the command line, nanoseconds or `1m30s` in a file.
    Duration,
    /// Comma-separated URLs; a config file may give a YAML list.
    Urls,
    Choice(&'static [&'static str]),
    /// etcd's `IgnoredFlag`: parsed like a boolean, value thrown away.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    /// Keel reads it into `Config`.
    Keel,
    /// Accepted; the feature has no behaviour Keel must honour (logging, metrics).
    Silent,
    /// Accepted; warn when set to anything but etcd's default.
    Warn(&'static str),
}

pub(super) struct Spec {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    /// etcd's default, as text; a value equal to it never warns.
    pub(super) default: &'static str,
    pub(super) effect: Effect,
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
use Kind::{Bool, Choice, Duration, Ignored, Int, List, Str, Uint, Uint32, Urls};

/// Every etcd 3.4 server flag, etcd 3.5's TLS and lease-checkpoint flags, and Keel's own
/// (`--cores`, `--cpu-list`, `--shard-split-keys`, `--shard-rebalance`, `--idle-spin`,
/// `--max-response-bytes`), sorted by name so that environment
/// variables are applied in etcd's order.
pub(super) const SPECS: &[Spec] = &[
    spec("advertise-client-urls", Urls, "http://localhost:2379", Keel),
    spec("auth-token", Str, "simple", Keel),
    spec("auth-token-ttl", Uint, "300", Keel),
    spec("auto-compaction-mode", Str, "periodic", Keel),
    spec("auto-compaction-retention", Str, "0", Keel),
    spec("auto-tls", Bool, "false", Keel),
    spec("backend-batch-interval", Duration, "", Silent),
    spec("backend-batch-limit", Int, "0", Silent),
    spec("bcrypt-cost", Uint, "10", Keel),
    spec("cert-file", Str, "", Keel),
    spec("cipher-suites", List, "", Keel),
    spec("client-cert-allowed-hostname", List, "", Keel),
    spec("client-cert-auth", Bool, "false", Keel),
    spec("client-cert-file", Str, "", Warn(TLS)),
    spec("client-crl-file", Str, "", Keel),
    spec("client-key-file", Str, "", Warn(TLS)),
    spec("cluster-active-size", Ignored, "", Silent),
    spec("cluster-remove-delay", Ignored, "", Silent),
    spec("cluster-sync-interval", Ignored, "", Silent),
    spec("config", Ignored, "", Silent),
    spec("config-file", Str, "", Keel),
    spec("cores", Uint, "", Keel),
    spec("cpu-list", List, "", Keel),
    spec("cors", List, "*", Silent),
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
    spec("etcd-version", Str, crate::config::version::DEFAULT, Keel),
    spec("experimental-corrupt-check-time", Duration, "0s", Keel),
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
    spec("experimental-initial-corrupt-check", Bool, "false", Keel),
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
    spec("force-new-cluster", Bool, "false", Keel),
    spec("grpc-keepalive-interval", Duration, "2h", Warn(NOT_BUILT)),
    spec("grpc-keepalive-min-time", Duration, "5s", Warn(NOT_BUILT)),
    spec("grpc-keepalive-timeout", Duration, "20s", Warn(NOT_BUILT)),
    spec("heartbeat-interval", Uint, "100", Keel),
    spec("host-whitelist", List, "*", Silent),
    spec("idle-spin", Duration, "250us", Keel),
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
    spec("key-file", Str, "", Keel),
    spec(
        "listen-client-http-urls",
        Urls,
        "",
        Warn("a separate HTTP listener is not built yet"),
    ),
    spec("listen-client-urls", Urls, "http://localhost:2379", Keel),
    spec("listen-metrics-urls", Urls, "", Keel),
    spec("listen-peer-urls", Urls, "http://localhost:2380", Keel),
    spec("log-level", Str, "info", Silent),
    spec("log-output", Str, "default", Silent),
    spec("log-outputs", List, "default", Silent),
    spec("log-package-levels", Str, "", Silent),
    spec("logger", Str, "capnslog", Silent),
    spec("max-concurrent-streams", Uint32, "4294967295", Keel),
    spec("max-request-bytes", Uint, "1572864", Keel),
    spec("max-response-bytes", Uint, "2147483647", Keel),
    spec("max-result-buffer", Ignored, "", Silent),
    spec("max-retry-attempts", Ignored, "", Silent),
    spec("max-snapshots", Uint, "5", Silent),
    spec("max-txn-ops", Uint, "128", Keel),
    spec("max-wals", Uint, "5", Silent),
    spec("metrics", Choice(&["basic", "extensive"]), "basic", Keel),
    spec("name", Str, DEFAULT_NAME, Keel),
    spec(
        "next-cluster-version-compatible",
        Bool,
        "false",
        Warn(NOT_BUILT),
    ),
    spec("peer-auto-tls", Bool, "false", Keel),
    spec("peer-cert-allowed-cn", List, "", Keel),
    spec("peer-cert-allowed-hostname", List, "", Keel),
    spec("peer-cert-file", Str, "", Keel),
    spec("peer-client-cert-auth", Bool, "false", Keel),
    spec("peer-client-cert-file", Str, "", Keel),
    spec("peer-client-key-file", Str, "", Keel),
    spec("peer-crl-file", Str, "", Keel),
    spec("peer-election-timeout", Ignored, "", Silent),
    spec("peer-heartbeat-interval", Ignored, "", Silent),
    spec("peer-key-file", Str, "", Keel),
    spec("peer-trusted-ca-file", Str, "", Keel),
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
    spec("self-signed-cert-validity", Uint, "1", Keel),
    spec("snapshot", Ignored, "", Silent),
    spec("shard-rebalance", Bool, "true", Keel),
    spec("shard-split-keys", List, "", Keel),
    spec("snapshot-bytes", Uint, "67108864", Keel),
    spec("snapshot-count", Uint, "100000", Keel),
    spec("strict-reconfig-check", Bool, "true", Keel),
    spec("test.coverprofile", Ignored, "", Silent),
    spec("test.outputdir", Ignored, "", Silent),
    spec("tls-max-version", Str, "", Keel),
    spec("tls-min-version", Str, "TLS1.2", Keel),
    spec("trusted-ca-file", Str, "", Keel),
    spec("unsafe-no-fsync", Bool, "false", Warn(NOT_BUILT)),
    spec("v", Ignored, "", Silent),
    spec("version", Bool, "false", Keel),
    spec("vv", Ignored, "", Silent),
    spec("wal-dir", Str, "", Keel),
];

pub(super) fn find_spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// Checks a value the way the matching Go `flag.Value::Set` would.
pub(super) fn check_value(kind: Kind, value: &str) -> Result<(), ValueError> {
    match kind {
        Str | List | Ignored => Ok(()),
        Bool => parse_go_bool(value).map(|_| ()),
        Uint => parse_go_uint(value, 64).map(|_| ()),
        Uint32 => parse_go_uint(value, 32).map(|_| ()),
        Int => parse_go_int(value).map(|_| ()),
        Duration => check_go_duration(value),
        Urls => parse_url_list(value).map(|_| ()),
        Choice(valid) if valid.contains(&value) => Ok(()),
        Choice(valid) => Err(ValueError::Choice(valid)),
    }
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
  keel snapshot restore FILE [flags]   restore an etcd or Keel snapshot into a new data dir
  keel snapshot status FILE [-w json]  hash, revision, keys and size of a snapshot file
  keel defrag --data-dir DIR           defragment a stopped member's db
  keel grpc-proxy start [flags]        a gRPC proxy in front of a cluster (etcd's
                                       flags; `keel grpc-proxy start --help`)
  keel gateway start [flags]           a TCP (L4) forwarder to a cluster's client URLs
                                       (`keel gateway start --help`)
  keel --config-file PATH read all settings from an etcd YAML config file (etcd's
                          etcd.conf.yml keys, with client-transport-security and
                          peer-transport-security sections); flags and ETCD_*
                          variables are then ignored

Every flag can also be set as ETCD_<FLAG> (upper case, '-' as '_'); a flag given
on the command line wins.

Member:
  --name 'default'                      name of this member
  --data-dir '${name}.keel'             where the data lives
  --wal-dir ''                          put the write-ahead log in its own directory
  --snapshot-count '100000'             committed entries between snapshots
  --snapshot-bytes '67108864'           also snapshot when the raft log held in memory
                                        reaches this many bytes (large values)
  --heartbeat-interval '100'            leader heartbeat, in milliseconds
  --election-timeout '1000'             election timeout, in milliseconds (>= 5 heartbeats)
  --listen-peer-urls 'http://localhost:2380'
  --listen-client-urls 'http://localhost:2379'
  --max-txn-ops '128'                   operations allowed in one transaction
  --max-request-bytes '1572864'         largest client request accepted
  --max-response-bytes '2147483647'     largest response sent (grpc-go's limit, which etcd
                                        keeps); a larger one fails with ResourceExhausted
  --quota-backend-bytes '0'             database size limit (0 means 2 GiB)
  --cores N                             cores to run on (default: all available)
  --cpu-list c0,c1                      the CPU of each core (default: core i on CPU i)
  --shard-split-keys k1,k2              where the cores' key-range shards split (default:
                                        key-count quantiles at boot, then moved online)
  --shard-rebalance 'true'              move the split keys online when the keys drift
                                        out of balance (not with --shard-split-keys)
  --idle-spin '250us'                   how long the raft core polls before it sleeps
                                        when puts come one at a time back to back (the
                                        WAL's thread 4x as long); '0s' never spins
  --listen-metrics-urls ''              more URLs serving /metrics, /health, /livez and
                                        /readyz only (https ones use the client TLS files)
  --metrics 'basic'                     'extensive' adds grpc_server_handling_seconds
  --etcd-version '3.4.23'               the etcd version reported (Status, /version,
                                        etcd_server_version); Kubernetes enables
                                        ConsistentListFromCache and WatchList for
                                        >= 3.4.31 or >= 3.5.13 (e.g. 3.5.17)

Clustering:
  --initial-advertise-peer-urls 'http://localhost:2380'
  --initial-cluster 'default=http://localhost:2380'
                                        name=url pairs of the first members
  --initial-cluster-state 'new'         'new' or 'existing'
  --initial-cluster-token 'etcd-cluster'
  --advertise-client-urls 'http://localhost:2379'
                                        required when --listen-client-urls is given
  --force-new-cluster                   disaster recovery: restart this member as the only
                                        member of its cluster, with its data; the others
                                        are removed (durably: later restarts need no flag)

Compaction (only the leader compacts, through raft, as `etcdctl compact` does):
  --auto-compaction-mode 'periodic'     'periodic': keep the retention's span of history;
                                        'revision': keep that many revisions
  --auto-compaction-retention '0'       '0' is off; periodic: a duration ('1h30m', '10m')
                                        or hours ('1'), compacting first after one
                                        retention, then every min(retention, 1h);
                                        revision: a count, checked every 5 minutes

Client TLS (https:// client URLs):
  --cert-file, --key-file               the server certificate and its key (PEM)
  --trusted-ca-file                     CA for client certificates (then one is required)
  --client-cert-auth                    require a client certificate; its CN is the user
  --client-crl-file                     refuse the client certificates this CRL revokes
  --client-cert-allowed-hostname        a client certificate must be valid for this name
  --auto-tls                            self-signed certificate in <data-dir>/fixtures/client
Peer TLS (https:// or unixs:// peer URLs): --peer-cert-file --peer-key-file
  --peer-trusted-ca-file --peer-client-cert-auth --peer-crl-file --peer-cert-allowed-cn
  --peer-cert-allowed-hostname --peer-client-cert-file --peer-client-key-file --peer-auto-tls
Both: --cipher-suites (Go names of TLS 1.2 ECDHE AEAD suites) --tls-min-version
  --tls-max-version (TLS1.2, TLS1.3) --self-signed-cert-validity (years)
Certificate files are read again (at most once a second) on new connections, so a
rotated certificate is served without a restart.

Accepted for etcd compatibility (a warning is printed when the feature is not built):
  TLS: --client-cert-file --client-key-file (Keel never dials its own client URLs)
  auth: --auth-token --bcrypt-cost --auth-token-ttl
  bootstrap: --discovery --discovery-fallback --discovery-proxy --discovery-srv
       --discovery-srv-name
  v2 and proxy: --enable-v2 --experimental-enable-v2v3 --proxy --proxy-*
  other: --pre-vote --initial-election-tick-advance
       --grpc-keepalive-* --listen-client-http-urls
       --unsafe-no-fsync --next-cluster-version-compatible --experimental-*
  no effect: --logger --log-level --log-outputs --debug --enable-pprof
       --enable-grpc-gateway --max-snapshots --max-wals --cors --host-whitelist
       --backend-batch-interval --backend-batch-limit
";
