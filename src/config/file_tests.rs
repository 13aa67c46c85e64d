//! The config file: etcd's sample file, the TLS sections, the YAML value types etcd takes,
//! and malformed files.

use std::path::PathBuf;
use std::time::Duration;

use super::file::{read, FileError};
use super::*;

const CORES: usize = 4;

/// etcd 3.5's `etcd.conf.yml.sample`, keys and values.
const ETCD_SAMPLE: &str = include_str!("testdata/etcd-3.5.conf.yml");

/// A config file for one test, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> TempFile {
        let name = format!("keel-config-file-{}-{tag}.yaml", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn parse_args(text: &str) -> Result<Config, ConfigError> {
    let args: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    parse_with_cores(&args, &[], CORES)
}

fn from_file(tag: &str, text: &str) -> Result<Config, ConfigError> {
    let file = TempFile::new(tag, text);
    parse_with_cores(
        &["--config-file".to_string(), file.path().to_string()],
        &[],
        CORES,
    )
}

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

/// Reads `text` with the file reader alone: the values it sets and its warnings.
fn read_values(text: &str) -> (Values, Vec<String>) {
    let mut warnings = Vec::new();
    let values = read("f.yml", text, &mut warnings).unwrap().values;
    (values, warnings)
}

fn read_error(text: &str) -> FileError {
    read("f.yml", text, &mut Vec::new()).unwrap_err()
}

#[test]
fn etcd_sample_file_parses_into_the_expected_config() {
    let config = from_file("sample", ETCD_SAMPLE).unwrap();
    let expected = Config {
        name: "default".to_string(),
        data_dir: PathBuf::from("default.keel"),
        wal_dir: None,
        listen_client_urls: vec![url("http://localhost:2379")],
        advertise_client_urls: vec![url("http://localhost:2379")],
        listen_peer_urls: vec![url("http://localhost:2380")],
        initial_advertise_peer_urls: vec![url("http://localhost:2380")],
        initial_cluster: vec![("default".to_string(), url("http://localhost:2380"))],
        initial_cluster_state: ClusterState::New,
        initial_cluster_token: "etcd-cluster".to_string(),
        max_request_bytes: 1_572_864,
        max_response_bytes: i32::MAX as usize,
        max_txn_ops: 128,
        max_concurrent_streams: u32::MAX,
        snapshot_count: 10_000,
        snapshot_bytes: 64 << 20,
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1000,
        quota_backend_bytes: 0,
        cores: None,
        cpu_list: Vec::new(),
        shard_split_keys: Vec::new(),
        shard_rebalance: true,
        idle_spin: std::time::Duration::from_micros(250),
        listen_metrics_urls: Vec::new(),
        etcd_version: "3.4.23".to_string(),
        metrics_extensive: false,
        watch_progress_notify_interval: Duration::from_secs(600),
        lease_checkpoint_interval: None,
        corrupt_check_interval: None,
        initial_corrupt_check: false,
        strict_reconfig_check: false,
        // The sample's TLS sections name no files and switch nothing on.
        client_tls: TlsFlags::default(),
        peer_tls: TlsFlags::default(),
        cipher_suites: Vec::new(),
        tls_min_tls13: false,
        tls_max_tls12: false,
        self_signed_cert_validity: 1,
        auth_token: "simple".to_string(),
        auth_token_ttl_s: 300,
        bcrypt_cost: 10,
        auto_compaction: Some(AutoCompaction::Periodic(Duration::from_secs(3600))),
        force_new_cluster: false,
        // Everything else in the sample is etcd's default, or has no effect (logging,
        // pprof).
        warnings: vec!["--enable-v2: the v2 API is not built; ignored".to_string()],
    };
    assert_eq!(config, expected);
}

#[test]
fn etcd_sample_file_equals_the_same_settings_as_flags() {
    let file = from_file("sample-flags", ETCD_SAMPLE).unwrap();
    let flags = parse_args(
        "--snapshot-count 10000 --strict-reconfig-check=false --enable-v2 --enable-pprof \
         --log-level debug --logger zap --log-outputs stderr --auto-compaction-mode periodic \
         --auto-compaction-retention 1 --self-signed-cert-validity 1",
    )
    .unwrap();
    assert_eq!(file, flags);
}

#[test]
fn etcd_34_and_36_sample_lines_parse() {
    // etcd 3.4's sample has `debug`; the 3.6 sample adds a flow list over several lines
    // and the TLS versions.
    let text = format!(
        "{ETCD_SAMPLE}debug: false\ncipher-suites: [\n  \
         TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,\n  TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n]\n\
         tls-min-version: 'TLS1.2'\ntls-max-version: 'TLS1.3'\n"
    );
    let (values, warnings) = read_values(&text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        values["cipher-suites"],
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
    );
    let config = from_file("sample-36", &text).unwrap();
    assert_eq!(
        config.cipher_suites,
        [
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
        ]
    );
    assert!(!config.tls_min_tls13 && !config.tls_max_tls12);
    assert!(
        !config
            .warnings
            .iter()
            .any(|w| w.contains("TLS") || w.contains("tls")),
        "{:?}",
        config.warnings
    );
}

const TLS_FILE: &str = "\
client-transport-security:
  cert-file: /c/server.pem
  key-file: /c/server-key.pem
  client-cert-auth: true
  trusted-ca-file: /c/ca.pem
  auto-tls: false
  allowed-hostname: [client.example]
  allowed-cn: [root]
  crl-file: /c/crl.pem
peer-transport-security:
  cert-file: /c/peer.pem
  key-file: /c/peer-key.pem
  client-cert-file: /c/peer-client.pem
  client-key-file: /c/peer-client-key.pem
  client-cert-auth: yes
  trusted-ca-file: /c/ca.pem
  auto-tls: true
  allowed-cn: [etcd-peer, etcd-peer-2]
  allowed-hostname:
    - peer.example
";

/// The flags that set what `TLS_FILE` sets, and the file key of each.
const TLS_FLAGS: &[(&str, &str, &str)] = &[
    (
        "cert-file",
        "/c/server.pem",
        "client-transport-security.cert-file",
    ),
    (
        "key-file",
        "/c/server-key.pem",
        "client-transport-security.key-file",
    ),
    (
        "client-cert-auth",
        "true",
        "client-transport-security.client-cert-auth",
    ),
    (
        "trusted-ca-file",
        "/c/ca.pem",
        "client-transport-security.trusted-ca-file",
    ),
    ("auto-tls", "false", "client-transport-security.auto-tls"),
    (
        "client-cert-allowed-hostname",
        "client.example",
        "client-transport-security.allowed-hostname",
    ),
    (
        "peer-cert-file",
        "/c/peer.pem",
        "peer-transport-security.cert-file",
    ),
    (
        "peer-key-file",
        "/c/peer-key.pem",
        "peer-transport-security.key-file",
    ),
    (
        "peer-client-cert-file",
        "/c/peer-client.pem",
        "peer-transport-security.client-cert-file",
    ),
    (
        "peer-client-key-file",
        "/c/peer-client-key.pem",
        "peer-transport-security.client-key-file",
    ),
    (
        "peer-client-cert-auth",
        "true",
        "peer-transport-security.client-cert-auth",
    ),
    (
        "peer-trusted-ca-file",
        "/c/ca.pem",
        "peer-transport-security.trusted-ca-file",
    ),
    ("peer-auto-tls", "true", "peer-transport-security.auto-tls"),
    (
        "peer-cert-allowed-cn",
        "etcd-peer,etcd-peer-2",
        "peer-transport-security.allowed-cn",
    ),
    (
        "peer-cert-allowed-hostname",
        "peer.example",
        "peer-transport-security.allowed-hostname",
    ),
];

#[test]
fn tls_sections_set_the_tls_flags() {
    let (values, warnings) = read_values(TLS_FILE);
    let expected: Values = TLS_FLAGS
        .iter()
        .map(|(flag, value, _)| (*flag, value.to_string()))
        .collect();
    assert_eq!(values, expected);
    // etcd's file has no `crl-file`; the client section's `allowed-cn` has no flag.
    assert_eq!(
        warnings,
        [
            "client-transport-security.allowed-cn: not used by Keel; ignored",
            "config file f.yml: unknown key client-transport-security.crl-file; ignored",
        ]
    );
}

#[test]
fn tls_sections_give_the_same_config_as_the_tls_flags() {
    let args: Vec<String> = TLS_FLAGS
        .iter()
        .map(|(flag, value, _)| format!("--{flag}={value}"))
        .collect();
    let flags = parse_args(&args.join(" ")).unwrap();
    let file = from_file("tls", TLS_FILE).unwrap();
    // The same warnings, each naming what the user wrote.
    let file_key = |warning: &String| {
        let (label, rest) = warning.split_once(':').unwrap();
        let (_, _, key) = TLS_FLAGS
            .iter()
            .find(|(flag, _, _)| label == format!("--{flag}"))
            .unwrap();
        format!("{key}:{rest}")
    };
    let mut expected_warnings = vec![
        "client-transport-security.allowed-cn: not used by Keel; ignored".to_string(),
        format!(
            "config file {}: unknown key client-transport-security.crl-file; ignored",
            std::env::temp_dir()
                .join(format!("keel-config-file-{}-tls.yaml", std::process::id()))
                .display()
        ),
    ];
    expected_warnings.extend(flags.warnings.iter().map(file_key));
    assert_eq!(file.warnings, expected_warnings);
    assert!(flags.warnings.is_empty(), "{:?}", flags.warnings);
    assert_eq!(file.peer_tls.allowed_cn, ["etcd-peer", "etcd-peer-2"]);
    assert_eq!(file.peer_tls.allowed_hostname, ["peer.example"]);
    assert_eq!(file.peer_tls.client_cert_file, "/c/peer-client.pem");
    assert!(file.peer_tls.auto_tls && file.peer_tls.client_cert_auth);
    assert_eq!(file.client_tls.trusted_ca_file, "/c/ca.pem");
    assert!(file.client_tls.client_cert_auth && !file.client_tls.auto_tls);
    let without_warnings = |config: Config| Config {
        warnings: Vec::new(),
        ..config
    };
    assert_eq!(without_warnings(file), without_warnings(flags));
}

#[test]
fn tls_settings_in_a_file_are_checked_like_the_flags() {
    let flag = parse_args("--tls-min-version TLS1.0").unwrap_err();
    let file = from_file("tls-version", "tls-min-version: TLS1.0\n").unwrap_err();
    assert_eq!(file, flag);
    let message = from_file(
        "tls-bool",
        "peer-transport-security:\n  client-cert-auth: perhaps\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.ends_with(
            "invalid value \"perhaps\" for peer-transport-security.client-cert-auth: parse error"
        ),
        "{message}"
    );
    // TLS goes in the sections: etcd's file has no top-level `cert-file`.
    let (values, warnings) = read_values("cert-file: /c.pem\npeer-auto-tls: true\n");
    assert!(values.is_empty());
    assert_eq!(
        warnings,
        [
            "config file f.yml: unknown key cert-file; ignored",
            "config file f.yml: unknown key peer-auto-tls; ignored"
        ]
    );
}

const TYPES_FILE: &str = "\
enable-v2: on
force-new-cluster: 'false'
pre-vote: no
strict-reconfig-check: False
snapshot-count: 0x10
max-txn-ops: '64'
initial-cluster-token: 12345
auto-compaction-retention: 1
quota-backend-bytes: ~
wal-dir: null
data-dir: ''
initial-cluster-state: ''
cors: [http://a.example:1, \"*\"]
listen-client-urls:
  - http://127.0.0.1:2379
  - http://127.0.0.1:22379
advertise-client-urls: [http://127.0.0.1:2379]
experimental-watch-progress-notify-interval: 5000000000
experimental-corrupt-check-time: 1m
grpc-keepalive-min-time: 5s
grpc-keepalive-timeout: 20000000000
log-outputs:
  - stderr
cpu-list: [1, 0]
";

#[test]
fn yaml_value_types_etcd_accepts() {
    let (values, warnings) = read_values(TYPES_FILE);
    assert!(warnings.is_empty(), "{warnings:?}");
    let expected = [
        ("enable-v2", "true"),
        ("force-new-cluster", "false"),
        ("pre-vote", "false"),
        ("strict-reconfig-check", "False"),
        ("snapshot-count", "0x10"),
        ("max-txn-ops", "64"),
        ("initial-cluster-token", "12345"),
        ("auto-compaction-retention", "1"),
        ("data-dir", ""),
        ("cors", "http://a.example:1,*"),
        (
            "listen-client-urls",
            "http://127.0.0.1:2379,http://127.0.0.1:22379",
        ),
        ("advertise-client-urls", "http://127.0.0.1:2379"),
        (
            "experimental-watch-progress-notify-interval",
            "5000000000ns",
        ),
        ("experimental-corrupt-check-time", "1m"),
        ("grpc-keepalive-min-time", "5s"),
        ("grpc-keepalive-timeout", "20000000000ns"),
        ("log-outputs", "stderr"),
        ("cpu-list", "1,0"),
    ];
    let expected: Values = expected
        .iter()
        .map(|(key, value)| (*key, value.to_string()))
        .collect();
    assert_eq!(values, expected);

    let config = from_file("types", TYPES_FILE).unwrap();
    assert_eq!(config.snapshot_count, 16);
    assert_eq!(config.max_txn_ops, 64);
    assert_eq!(config.initial_cluster_token, "12345");
    assert_eq!(config.data_dir, PathBuf::from("default.keel"));
    assert_eq!(config.wal_dir, None);
    assert_eq!(config.initial_cluster_state, ClusterState::New);
    assert!(!config.strict_reconfig_check);
    assert_eq!(config.listen_client_urls.len(), 2);
    assert_eq!(
        config.watch_progress_notify_interval,
        Duration::from_secs(5)
    );
    assert_eq!(
        (config.cpu_list.clone(), config.cores),
        (vec![1, 0], Some(2))
    );
    // Durations in nanoseconds equal to etcd's default do not warn.
    assert_eq!(
        config.warnings,
        ["--enable-v2: the v2 API is not built; ignored"]
    );
}

#[test]
fn yaml_anchors_documents_and_empty_files() {
    let text = "\
x-peer: &peer http://127.0.0.1:2380
name: a
listen-peer-urls: *peer
initial-advertise-peer-urls: *peer
initial-cluster: a=http://127.0.0.1:2380
---
name: second-document-is-not-read
";
    let config = from_file("anchors", text).unwrap();
    assert_eq!(config.name, "a");
    assert_eq!(config.listen_peer_urls, vec![url("http://127.0.0.1:2380")]);
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].ends_with("unknown key x-peer; ignored"));
    let defaults = parse_args("").unwrap();
    for (tag, text) in [("empty", ""), ("comments", "# nothing\n"), ("null", "~\n")] {
        assert_eq!(from_file(tag, text).unwrap(), defaults, "{text:?}");
    }
}

#[test]
fn yaml_of_the_wrong_shape_is_a_clear_error() {
    let shape = |line, key: &str, expected, found| FileError::Shape {
        line,
        key: key.to_string(),
        expected,
        found,
    };
    let top = "a mapping of etcd's config keys";
    let cases = [
        ("- name\n", shape(1, "", top, "a list")),
        ("just text\n", shape(1, "", top, "a value")),
        (
            "name: x\nsnapshot-count: [1, 2]\n",
            shape(2, "snapshot-count", "a single value", "a list"),
        ),
        (
            "name: {a: 1}\n",
            shape(1, "name", "a single value", "a mapping"),
        ),
        (
            "cors: [[a]]\n",
            shape(1, "cors", "a list of values", "a list"),
        ),
        (
            "client-transport-security: yes\n",
            shape(
                1,
                "client-transport-security",
                "a mapping of TLS settings",
                "a value",
            ),
        ),
        ("? [a]\n: 1\n", FileError::Key { line: 1 }),
        ("a: &x [1, *x]\n", FileError::Alias { line: 1 }),
    ];
    for (text, expected) in cases {
        assert_eq!(read_error(text), expected, "{text:?}");
    }
    assert_eq!(
        read_error("enable-v2: maybe\n"),
        FileError::Value {
            key: "enable-v2".to_string(),
            value: "maybe".to_string(),
            error: go::ValueError::Syntax,
        }
    );
    let message = from_file("shape", "name: x\nsnapshot-count: [1, 2]\n")
        .unwrap_err()
        .to_string();
    assert!(
        message.ends_with("line 2: snapshot-count: expected a single value, found a list"),
        "{message}"
    );
}

#[test]
fn malformed_yaml_is_a_clear_error() {
    for (tag, text, line) in [
        ("quote", "name: 'x\n", 1),
        ("tab", "name: x\n\tdata-dir: y\n", 1),
        ("nested", "name: a: b\n", 1),
        ("flow", "cors: [a, b\n", 2),
        ("indent", "name: x\n  data-dir: y\n", 2),
        ("anchor", "name: *nowhere\n", 1),
        ("mixed", "name: x\n- y\n", 2),
        ("double-quote", "name: \"x\\q\"\n", 1),
    ] {
        let message = match from_file(tag, text) {
            Err(ConfigError::Invalid(message)) => message,
            other => panic!("{text:?}: expected Invalid, got {other:?}"),
        };
        let file = std::env::temp_dir().join(format!(
            "keel-config-file-{}-{tag}.yaml",
            std::process::id()
        ));
        let prefix = format!("config file {}: line {line} column ", file.display());
        assert!(message.starts_with(&prefix), "{text:?}: {message}");
        assert!(
            message.contains(": not valid YAML: "),
            "{text:?}: {message}"
        );
    }
}

#[test]
fn aliases_cannot_expand_without_bound() {
    let mut text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n".to_string();
    for (name, previous) in [("b", "a"), ("c", "b"), ("d", "c"), ("e", "d"), ("f", "e")] {
        let items = vec![format!("*{previous}"); 10].join(", ");
        text.push_str(&format!("{name}: &{name} [{items}]\n"));
    }
    assert_eq!(
        read_error(&text),
        FileError::TooLarge { nodes_max: 100_000 }
    );
}

#[test]
fn damaged_files_never_panic() {
    // Every prefix of the sample, and the sample with a YAML indicator written over
    // each character in turn: the reader answers with values or an error.
    let boundaries: Vec<usize> = ETCD_SAMPLE
        .char_indices()
        .map(|(i, _)| i)
        .chain([ETCD_SAMPLE.len()])
        .collect();
    let mut errors = 0;
    for &end in &boundaries {
        errors += usize::from(read("f", &ETCD_SAMPLE[..end], &mut Vec::new()).is_err());
    }
    for (index, c) in ETCD_SAMPLE.char_indices() {
        for replacement in [
            ":", "-", "[", "{", "\"", "'", "&", "*", "\t", "|", "!", "%", "?",
        ] {
            let damaged = format!(
                "{}{replacement}{}",
                &ETCD_SAMPLE[..index],
                &ETCD_SAMPLE[index + c.len_utf8()..]
            );
            errors += usize::from(read("f", &damaged, &mut Vec::new()).is_err());
        }
    }
    assert!(errors > 0, "some damage must be refused");
}
