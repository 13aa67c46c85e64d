use super::go::{check_go_duration, parse_go_int};
use super::*;

const CORES: usize = 4;

fn args(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ok(text: &str) -> Config {
    parse_with_cores(&args(text), &[], CORES).unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

fn err(text: &str) -> String {
    match parse_with_cores(&args(text), &[], CORES) {
        Err(ConfigError::Invalid(message)) => message,
        other => panic!("{text}: expected Invalid, got {other:?}"),
    }
}

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

fn has_warning(config: &Config, needle: &str) -> bool {
    config.warnings.iter().any(|w| w.contains(needle))
}

#[test]
fn defaults_match_etcd() {
    let config = ok("");
    assert_eq!(config.name, "default");
    assert_eq!(config.data_dir, PathBuf::from("default.keel"));
    assert_eq!(config.wal_dir, None);
    assert_eq!(
        config.listen_client_urls,
        vec![url("http://localhost:2379")]
    );
    assert_eq!(
        config.advertise_client_urls,
        vec![url("http://localhost:2379")]
    );
    assert_eq!(config.listen_peer_urls, vec![url("http://localhost:2380")]);
    assert_eq!(
        config.initial_advertise_peer_urls,
        vec![url("http://localhost:2380")]
    );
    assert_eq!(
        config.initial_cluster,
        vec![("default".to_string(), url("http://localhost:2380"))]
    );
    assert_eq!(config.initial_cluster_state, ClusterState::New);
    assert_eq!(config.initial_cluster_token, "etcd-cluster");
    assert_eq!(config.max_request_bytes, 1_572_864);
    assert_eq!(config.max_txn_ops, 128);
    assert_eq!(config.snapshot_count, 100_000);
    assert_eq!(config.heartbeat_interval_ms, 100);
    assert_eq!(config.election_timeout_ms, 1000);
    assert_eq!(config.quota_backend_bytes, 0);
    assert_eq!(config.cores, None);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let listen = config.listen_client_urls[0].socket_addr().unwrap();
    assert_eq!(listen, "127.0.0.1:2379".parse().unwrap());
}

#[test]
fn member_and_cluster_id_match_etcd_single_default_member() {
    let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
    assert_eq!(id, 0x8e9e05c52164694d);
    assert_eq!(cluster_id(&[id]), 0xcdf818194e3a8c32);
}

#[test]
fn member_id_sorts_urls_and_cluster_id_sorts_ids() {
    let a = "http://10.0.0.1:2380".to_string();
    let b = "http://10.0.0.2:2380".to_string();
    assert_eq!(
        member_id(&[a.clone(), b.clone()], "t"),
        member_id(&[b.clone(), a.clone()], "t")
    );
    let one = std::slice::from_ref(&a);
    assert_ne!(member_id(one, "t"), member_id(one, "u"));
    assert_eq!(cluster_id(&[1, 2, 3]), cluster_id(&[3, 1, 2]));
    assert_ne!(cluster_id(&[1, 2]), cluster_id(&[1, 3]));
}

#[test]
fn flag_syntaxes_all_set_the_same_value() {
    for text in [
        "--snapshot-count=7",
        "--snapshot-count 7",
        "-snapshot-count 7",
        "-snapshot-count=7",
        "--snapshot-count 5 --snapshot-count 7",
    ] {
        assert_eq!(ok(text).snapshot_count, 7, "{text}");
    }
}

#[test]
fn booleans_do_not_consume_the_next_argument() {
    let config = ok("--enable-v2 --name x");
    assert_eq!(config.name, "x");
    assert!(has_warning(&config, "--enable-v2"));
    let config = ok("--enable-v2=false --name x");
    assert!(!has_warning(&config, "--enable-v2"));
    assert!(has_warning(&ok("--enable-v2=T"), "--enable-v2"));
    // Go's flag package stops at the first non-flag argument.
    assert_eq!(err("--enable-v2 true"), "'true' is not a valid flag");
    assert_eq!(
        err("--enable-v2=yes"),
        "invalid boolean value \"yes\" for -enable-v2: parse error"
    );
}

#[test]
fn version_and_help() {
    let run = |text: &str| parse_with_cores(&args(text), &[], CORES);
    assert_eq!(run("--version"), Err(ConfigError::Version));
    assert_eq!(run("--name x -version"), Err(ConfigError::Version));
    for text in ["-h", "--help", "-help", "--name x --h"] {
        assert_eq!(
            run(text),
            Err(ConfigError::Help(usage().to_string())),
            "{text}"
        );
    }
    assert!(usage().contains("--initial-cluster"));
}

#[test]
fn flag_syntax_errors_use_go_wording() {
    assert_eq!(err("--xyz"), "flag provided but not defined: -xyz");
    assert_eq!(err("-xyz=1"), "flag provided but not defined: -xyz");
    assert_eq!(err("--name"), "flag needs an argument: -name");
    assert_eq!(err("---name x"), "bad flag syntax: ---name");
    assert_eq!(err("--=x"), "bad flag syntax: --=x");
    assert_eq!(err("stray"), "'stray' is not a valid flag");
    assert_eq!(err("--name x -- y"), "'y' is not a valid flag");
}

#[test]
fn bad_values_name_the_flag_and_value() {
    assert_eq!(
        err("--snapshot-count abc"),
        "invalid value \"abc\" for flag -snapshot-count: parse error"
    );
    assert_eq!(
        err("--heartbeat-interval -1"),
        "invalid value \"-1\" for flag -heartbeat-interval: parse error"
    );
    assert_eq!(
        err("--max-concurrent-streams 4294967296"),
        "invalid value \"4294967296\" for flag -max-concurrent-streams: value out of range"
    );
    assert_eq!(
        err("--initial-cluster-state bogus"),
        "invalid value \"bogus\" for flag -initial-cluster-state: \
         invalid value (valid values are new, existing)"
    );
    assert_eq!(
        err("--grpc-keepalive-min-time 5"),
        "invalid value \"5\" for flag -grpc-keepalive-min-time: parse error"
    );
    assert_eq!(
        err("--listen-client-urls ftp://1.2.3.4:1"),
        "invalid value \"ftp://1.2.3.4:1\" for flag -listen-client-urls: \
         URL scheme must be http, https, unix, or unixs: ftp://1.2.3.4:1"
    );
    assert_eq!(
        err("--listen-peer-urls http://127.0.0.1"),
        "invalid value \"http://127.0.0.1\" for flag -listen-peer-urls: \
         URL address does not have the form \"host:port\": http://127.0.0.1"
    );
    assert_eq!(
        err("--listen-peer-urls http://127.0.0.1:2380/x"),
        "invalid value \"http://127.0.0.1:2380/x\" for flag -listen-peer-urls: \
         URL must not contain a path: http://127.0.0.1:2380/x"
    );
}

#[test]
fn go_number_and_duration_syntax() {
    assert_eq!(ok("--snapshot-count 0x10").snapshot_count, 16);
    assert_eq!(ok("--snapshot-count 010").snapshot_count, 8);
    assert_eq!(ok("--snapshot-count 0").snapshot_count, 100_000);
    for good in ["0", "1h30m", "1.5s", "100ms", "-2us", "3µs"] {
        assert_eq!(check_go_duration(good), Ok(()), "{good}");
    }
    for bad in ["", "5", "1x", "s", "1..2s", ".", "3000000h"] {
        assert!(check_go_duration(bad).is_err(), "{bad}");
    }
    // Go's longest duration is about 2562047h; past it Go refuses, and nothing panics.
    assert_eq!(check_go_duration("2562047h"), Ok(()));
    assert_eq!(go_duration("9999999999999999999999h"), None);
    assert_eq!(go_duration("-1s"), Some(std::time::Duration::ZERO));
    assert_eq!(parse_go_int("-9223372036854775808"), Ok(i64::MIN));
    assert!(parse_go_int("9223372036854775808").is_err());
}

#[test]
fn url_parse_and_socket_addr() {
    let v6 = url("http://[::1]:2379");
    assert_eq!(v6.host, "::1");
    assert_eq!(v6.to_string(), "http://[::1]:2379");
    assert_eq!(v6.socket_addr().unwrap(), "[::1]:2379".parse().unwrap());
    let any = url("HTTP://0.0.0.0:0");
    assert_eq!(any.scheme, "http");
    assert_eq!(any.socket_addr().unwrap(), "0.0.0.0:0".parse().unwrap());
    assert_eq!(
        url("https://example.com:443").to_string(),
        "https://example.com:443"
    );
    assert_eq!(
        url("https://example.com:443").socket_addr(),
        Err("expected IP in URL for binding (https://example.com:443)".to_string())
    );
    assert!(url("unix://localhost:1").socket_addr().is_err());
    assert!(Url::parse("localhost:2379")
        .unwrap_err()
        .starts_with("URL scheme must be"));
    assert!(Url::parse("http://h:+80")
        .unwrap_err()
        .contains("invalid port"));
    assert!(Url::parse("http://h:70000")
        .unwrap_err()
        .contains("invalid port"));
    assert!(Url::parse("http://::1:80")
        .unwrap_err()
        .contains("host:port"));
}

#[test]
fn listen_urls_must_be_ip_or_localhost() {
    assert_eq!(
        err("--listen-peer-urls http://example.com:2380"),
        "--listen-peer-urls: expected IP in URL for binding (http://example.com:2380)"
    );
    assert_eq!(
        err("--advertise-client-urls http://:2379"),
        "--advertise-client-urls \"http://:2379\" must be \"host:port\" \
         (unexpected empty host (http://:2379))"
    );
}

#[test]
fn listen_client_urls_without_advertise_is_an_error() {
    assert_eq!(
        err("--listen-client-urls http://127.0.0.1:3000"),
        "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    );
    let config = ok(
        "--listen-client-urls http://127.0.0.1:3000,http://127.0.0.1:3000 \
                     --advertise-client-urls http://127.0.0.1:3000",
    );
    assert_eq!(
        config.listen_client_urls,
        vec![url("http://127.0.0.1:3000")]
    );
}

const E2E: &str = "--name test-0 --listen-client-urls http://localhost:20000 \
    --advertise-client-urls http://localhost:20000 --listen-peer-urls http://localhost:20001 \
    --initial-advertise-peer-urls http://localhost:20001 \
    --initial-cluster test-0=http://localhost:20001 --initial-cluster-token new \
    --data-dir /tmp/x --snapshot-count 100000 --experimental-initial-corrupt-check \
    --peer-auto-tls";

#[test]
fn etcd_e2e_argv_parses_with_warnings() {
    let config = ok(E2E);
    assert_eq!(config.name, "test-0");
    assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(
        config.listen_client_urls,
        vec![url("http://localhost:20000")]
    );
    assert_eq!(config.listen_peer_urls, vec![url("http://localhost:20001")]);
    assert_eq!(
        config.initial_cluster,
        vec![("test-0".to_string(), url("http://localhost:20001"))]
    );
    assert_eq!(config.initial_cluster_token, "new");
    // Built now: the e2e suite boots every member with the initial corruption check.
    assert!(config.initial_corrupt_check);
    assert!(config.peer_tls.auto_tls);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn etcd_e2e_argv_variants() {
    let existing = ok(&format!("{E2E} --initial-cluster-state existing"));
    assert_eq!(existing.initial_cluster_state, ClusterState::Existing);
    assert!(has_warning(
        &ok(&format!("{E2E} --enable-v2")),
        "--enable-v2: the v2 API"
    ));
    let two = ok(&format!(
        "{E2E} --listen-client-urls http://localhost:20000,http://127.0.0.1:20010"
    ));
    assert_eq!(
        two.listen_client_urls,
        vec![url("http://localhost:20000"), url("http://127.0.0.1:20010")]
    );
    let any = ok(&format!("{E2E} --listen-client-urls http://0.0.0.0:0"));
    assert_eq!(any.listen_client_urls[0].socket_addr().unwrap().port(), 0);
}

#[test]
fn auth_flags_are_read_with_etcds_defaults_and_bounds() {
    let c = ok("");
    assert_eq!(
        (c.auth_token.as_str(), c.auth_token_ttl_s, c.bcrypt_cost),
        ("simple", 300, 10)
    );
    let c = ok("--bcrypt-cost 40 --auth-token-ttl 0");
    assert_eq!((c.bcrypt_cost, c.auth_token_ttl_s), (10, 300));
    assert!(has_warning(&c, "--bcrypt-cost 40 is out of range"));
    let e = err("--auth-token bogus");
    assert!(e.contains("unknown token type: bogus"), "{e}");
}

#[test]
fn every_etcd_34_flag_is_accepted() {
    let cases = "--auth-token jwt --auth-token-ttl 5 --auto-compaction-mode revision \
        --auto-compaction-retention 10 --auto-tls --backend-batch-interval 10ms \
        --backend-batch-limit 5 --bcrypt-cost 4 --cert-file c --cipher-suites x \
        --client-cert-allowed-hostname h --client-cert-auth --client-crl-file f --cors * \
        --debug --discovery-fallback exit --discovery-proxy p --discovery-srv-name n \
        --enable-grpc-gateway=false --enable-pprof --enable-v2 \
        --experimental-backend-bbolt-freelist-type map --experimental-compaction-batch-limit 9 \
        --experimental-corrupt-check-time 1m --experimental-enable-lease-checkpoint \
        --experimental-enable-lease-checkpoint-persist --experimental-enable-v2v3 /v2 \
        --experimental-initial-corrupt-check --experimental-peer-skip-client-san-verification \
        --experimental-warning-apply-duration 1s \
        --experimental-watch-progress-notify-interval 1m --force-new-cluster \
        --grpc-keepalive-interval 1h --grpc-keepalive-min-time 1s --grpc-keepalive-timeout 1s \
        --host-whitelist a,b --initial-election-tick-advance=false --key-file k \
        --listen-client-http-urls http://127.0.0.1:9 --listen-metrics-urls http://127.0.0.1:8 \
        --log-level debug --log-output stderr --log-outputs stderr --log-package-levels x \
        --logger zap --max-concurrent-streams 10 --max-snapshots 1 --max-wals 1 \
        --metrics extensive --next-cluster-version-compatible --peer-auto-tls \
        --peer-cert-allowed-cn cn --peer-cert-allowed-hostname h --peer-cert-file c \
        --peer-client-cert-auth --peer-crl-file f --peer-key-file k --peer-trusted-ca-file t \
        --pre-vote --proxy-dial-timeout 1 --proxy-failure-wait 1 --proxy-read-timeout 1 \
        --proxy-refresh-interval 1 --proxy-write-timeout 1 --strict-reconfig-check=false \
        --tls-max-version TLS1.3 --tls-min-version TLS1.2 --trusted-ca-file t \
        --unsafe-no-fsync --wal-dir /w --quota-backend-bytes 8589934592 \
        --max-request-bytes 10 --max-txn-ops 2 --config --v --vv --force";
    let config = ok(cases);
    assert_eq!(config.wal_dir, Some(PathBuf::from("/w")));
    assert_eq!(config.quota_backend_bytes, 8 << 30);
    assert_eq!((config.max_request_bytes, config.max_txn_ops), (10, 2));
    assert!(!config.strict_reconfig_check);
    assert!(ok("").strict_reconfig_check, "on by default, as in etcd");
    assert_eq!(config.auth_token, "jwt");
    assert_eq!((config.auth_token_ttl_s, config.bcrypt_cost), (5, 4));
    for flag in ["--unsafe-no-fsync", "--pre-vote"] {
        assert!(
            has_warning(&config, &format!("{flag}:")),
            "{flag}: {:?}",
            config.warnings
        );
    }
    assert!(has_warning(&config, "--vv: deprecated etcd flag; ignored"));
    for silent in [
        "--logger",
        "--metrics",
        "--max-wals",
        "--enable-pprof",
        "--cors",
    ] {
        assert!(!has_warning(&config, &format!("{silent}:")), "{silent}");
    }
    // Flags etcd rejects in combination or by value are rejected here too.
    assert!(ok("--discovery http://d:1 --initial-cluster-state new").name == "default");
    assert!(
        ok("--proxy on --listen-client-urls http://127.0.0.1:1")
            .warnings
            .len()
            == 1
    );
}

#[test]
fn auto_compaction_retention_parses_as_etcd_34() {
    use std::time::Duration;
    let parse = |flags: &str| ok(flags).auto_compaction;
    let h = |n: u64| Some(AutoCompaction::Periodic(Duration::from_secs(n * 3600)));
    assert_eq!(parse(""), None, "off by default");
    assert_eq!(parse("--auto-compaction-retention 0"), None);
    assert_eq!(parse("--auto-compaction-retention 0s"), None);
    assert_eq!(
        parse("--auto-compaction-mode revision --auto-compaction-retention 0"),
        None
    );
    // Periodic (the default mode): a bare number is hours, else a Go duration.
    assert_eq!(parse("--auto-compaction-retention 1"), h(1));
    assert_eq!(parse("--auto-compaction-retention 72"), h(72));
    assert_eq!(
        parse("--auto-compaction-mode periodic --auto-compaction-retention 1h30m"),
        Some(AutoCompaction::Periodic(Duration::from_secs(5400)))
    );
    assert_eq!(
        parse("--auto-compaction-retention 2s"),
        Some(AutoCompaction::Periodic(Duration::from_secs(2)))
    );
    assert_eq!(
        parse("--auto-compaction-retention -1h"),
        None,
        "negative: off"
    );
    // Revision: a count; a duration counts its nanoseconds, as etcd does.
    assert_eq!(
        parse("--auto-compaction-mode revision --auto-compaction-retention 1000"),
        Some(AutoCompaction::Revision(1000))
    );
    assert_eq!(
        parse("--auto-compaction-mode revision --auto-compaction-retention 1ms"),
        Some(AutoCompaction::Revision(1_000_000))
    );
    // etcd's errors.
    assert_eq!(
        err("--auto-compaction-retention abc"),
        "error parsing CompactionRetention: time: invalid duration \"abc\""
    );
    assert_eq!(
        err("--auto-compaction-mode revision --auto-compaction-retention -5"),
        "error parsing CompactionRetention: time: missing unit in duration \"-5\""
    );
    // ETCD_ variables name them too.
    let from_env = parse_with_cores(
        &[],
        &env(&[
            ("ETCD_AUTO_COMPACTION_MODE", "revision"),
            ("ETCD_AUTO_COMPACTION_RETENTION", "7"),
        ]),
        CORES,
    )
    .unwrap();
    assert_eq!(from_env.auto_compaction, Some(AutoCompaction::Revision(7)));
    assert!(from_env.warnings.is_empty(), "{:?}", from_env.warnings);
    assert!(!ok("").force_new_cluster);
    let forced = ok("--force-new-cluster");
    assert!(forced.force_new_cluster && forced.warnings.is_empty());
}

#[test]
fn unbuilt_features_are_still_validated_like_etcd() {
    assert_eq!(
        err("--auto-compaction-mode daily"),
        "unknown auto-compaction-mode \"daily\""
    );
    assert_eq!(
        err("--experimental-enable-lease-checkpoint-persist"),
        "setting experimental-enable-lease-checkpoint-persist requires \
         experimental-enable-lease-checkpoint"
    );
    assert!(err("--tls-min-version TLS1.0").contains("unexpected TLS version \"TLS1.0\""));
    assert!(
        err("--discovery http://d:1 --initial-cluster default=http://localhost:2380")
            .starts_with("multiple discovery or bootstrap flags are set")
    );
    assert_eq!(
        err("--proxy sometimes"),
        "invalid value \"sometimes\" for flag -proxy: invalid value (valid values are off, \
         readonly, on)"
    );
}

#[test]
fn name_alone_defaults_initial_cluster_to_advertise_urls() {
    let config = ok(
        "--name n1 --initial-advertise-peer-urls http://10.0.0.1:2380,http://10.0.0.2:2380 \
                     --listen-peer-urls http://0.0.0.0:2380",
    );
    assert_eq!(
        config.initial_cluster,
        vec![
            ("n1".to_string(), url("http://10.0.0.1:2380")),
            ("n1".to_string(), url("http://10.0.0.2:2380")),
        ]
    );
    assert_eq!(config.data_dir, PathBuf::from("n1.keel"));
    // Without --name, etcd keeps "default=http://localhost:2380", which no longer
    // matches the advertised URL.
    assert_eq!(
        err("--initial-advertise-peer-urls http://10.0.0.1:2380"),
        "--initial-cluster has default=http://localhost:2380 but missing from \
         --initial-advertise-peer-urls=http://10.0.0.1:2380"
    );
}

#[test]
fn initial_cluster_errors() {
    assert_eq!(
        err("--name x --initial-cluster y=http://localhost:2380"),
        "couldn't find local name \"x\" in the initial cluster configuration"
    );
    assert_eq!(
        err("--initial-cluster default=http://localhost:2380,default=http://10.0.0.1:2380"),
        "--initial-cluster has default=http://10.0.0.1:2380 but missing from \
         --initial-advertise-peer-urls=http://localhost:2380"
    );
    assert_eq!(
        err("--initial-cluster default=http://localhost:2380,other=http://localhost:2380"),
        "initial cluster default=http://localhost:2380,other=http://localhost:2380 has \
         duplicate url"
    );
    assert_eq!(
        err("--initial-cluster default=ftp://h:1"),
        "--initial-cluster \"default=ftp://h:1\": URL scheme must be http, https, unix, or \
         unixs: ftp://h:1"
    );
    assert_eq!(
        err("--initial-advertise-peer-urls http://localhost:2380,http://127.0.0.2:2380"),
        "--initial-advertise-peer-urls has http://127.0.0.2:2380 but missing from \
         --initial-cluster=default=http://localhost:2380,default=http://127.0.0.2:2380"
    );
    // localhost and 127.0.0.1 name the same peer, as etcd's resolver would find.
    ok("--initial-cluster default=http://127.0.0.1:2380");
    // Joining an existing cluster only needs this member listed.
    let existing = ok("--initial-cluster-state existing \
                       --initial-cluster default=http://10.0.0.9:2380,b=http://10.0.0.2:2380");
    assert_eq!(existing.initial_cluster.len(), 2);
}

#[test]
fn timeout_and_limit_errors() {
    assert_eq!(
        err("--heartbeat-interval 0"),
        "--heartbeat-interval must be >0 (set to 0ms)"
    );
    assert_eq!(
        err("--election-timeout 0"),
        "--election-timeout must be >0 (set to 0ms)"
    );
    assert_eq!(
        err("--heartbeat-interval 300"),
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
    );
    assert_eq!(
        err("--election-timeout 50001"),
        "--election-timeout[50001ms] is too long, and should be set less than 50000ms"
    );
    assert_eq!(ok("--election-timeout 50000").election_timeout_ms, 50_000);
    assert_eq!(
        err("--max-request-bytes 0"),
        "--max-request-bytes must be >0 (set to 0)"
    );
    assert_eq!(
        err("--max-txn-ops 0"),
        "--max-txn-ops must be >0 (set to 0)"
    );
    assert!(err("--quota-backend-bytes -1").starts_with("--quota-backend-bytes must be >=0"));
}

#[test]
fn cores_must_fit_the_machine() {
    assert_eq!(ok("--cores 2").cores, Some(2));
    assert_eq!(ok("--cores 4").cores, Some(4));
    let message = "--cores must be between 1 and the 4 available cores";
    assert!(err("--cores 0").starts_with(message));
    assert!(err("--cores 5").starts_with(message));
}

#[test]
fn cpu_list_pins_cores_and_sets_their_count() {
    let c = ok("--cpu-list 1,0");
    assert_eq!((c.cpu_list.clone(), c.cores), (vec![1, 0], Some(2)));
    let c = ok("--cores 1 --cpu-list 3,2");
    assert_eq!((c.cpu_list.clone(), c.cores), (vec![3, 2], Some(1)));
    assert!(ok("").cpu_list.is_empty());
    let message = "--cpu-list must list distinct CPUs below 4";
    assert!(err("--cpu-list 4").starts_with(message));
    assert!(err("--cpu-list 1,1").starts_with(message));
    assert!(err("--cpu-list x").starts_with(message));
    assert!(err("--cores 3 --cpu-list 0,1").starts_with("--cpu-list names 2 CPUs for --cores 3"));
}

#[test]
fn env_sets_unset_flags_and_the_command_line_wins() {
    let vars = env(&[
        ("ETCD_NAME", "from-env"),
        ("ETCD_SNAPSHOT_COUNT", "42"),
        ("ETCD_DATA_DIR", "/env"),
        ("ETCD_ENABLE_V2", "true"),
        ("ETCD_NOT_A_FLAG", "1"),
        ("ETCD_WAL_DIR", ""),
        ("ETCDCTL_API", "3"),
        ("PATH", "/bin"),
    ]);
    let config = parse_with_cores(&args("--data-dir /cli"), &vars, CORES).unwrap();
    assert_eq!(config.name, "from-env");
    assert_eq!(config.snapshot_count, 42);
    assert_eq!(config.data_dir, PathBuf::from("/cli"));
    assert_eq!(config.wal_dir, None);
    assert!(has_warning(&config, "--enable-v2"));
    assert!(has_warning(
        &config,
        "unrecognized environment variable ETCD_NOT_A_FLAG=1"
    ));
    assert!(has_warning(
        &config,
        "\"ETCD_DATA_DIR\" is shadowed by corresponding command-line"
    ));
    assert!(!has_warning(&config, "ETCDCTL"));
    // The empty ETCD_WAL_DIR is not used, so etcd calls it unrecognized too.
    assert!(has_warning(
        &config,
        "unrecognized environment variable ETCD_WAL_DIR="
    ));
    assert_eq!(config.warnings.len(), 4, "{:?}", config.warnings);

    let bad = env(&[("ETCD_SNAPSHOT_COUNT", "many")]);
    assert_eq!(
        parse_with_cores(&[], &bad, CORES),
        Err(ConfigError::Invalid(
            "invalid value \"many\" for ETCD_SNAPSHOT_COUNT: parse error".to_string()
        ))
    );
    let cores = env(&[("ETCD_CORES", "2")]);
    assert_eq!(parse_with_cores(&[], &cores, CORES).unwrap().cores, Some(2));
}

fn temp_file(tag: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("keel-config-{}-{tag}.yaml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

const YAML: &str = "\
# etcd-style configuration
name: 'node-a'
data-dir: \"/var/lib/keel\"   # trailing comment
wal-dir:
snapshot-count: 5
heartbeat-interval: 100
election-timeout: 1000
listen-peer-urls: http://10.0.0.1:2380
listen-client-urls: http://10.0.0.1:2379,http://127.0.0.1:2379
advertise-client-urls: http://10.0.0.1:2379
initial-advertise-peer-urls: http://10.0.0.1:2380
initial-cluster: node-a=http://10.0.0.1:2380,node-b=http://10.0.0.2:2380
initial-cluster-token: 'it''s-a-token'
initial-cluster-state: existing
quota-backend-bytes: ~
enable-v2: false
log-outputs: [stderr]
cipher-suites:
  - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
  - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
client-transport-security:
  cert-file: /etc/c.pem
  client-cert-auth: false
  # nested comment
peer-transport-security:
  auto-tls: true
unknown-key: 1
";

#[test]
fn config_file_is_read_and_replaces_flags_and_env() {
    let path = temp_file("full", YAML);
    let vars = env(&[("ETCD_NAME", "ignored"), ("ETCD_SNAPSHOT_COUNT", "9")]);
    let cli = args(&format!("--name ignored --config-file {path}"));
    let config = parse_with_cores(&cli, &vars, CORES).unwrap();
    assert_eq!(config.name, "node-a");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/keel"));
    assert_eq!(config.wal_dir, None);
    assert_eq!(config.snapshot_count, 5);
    assert_eq!(config.listen_client_urls.len(), 2);
    assert_eq!(config.initial_cluster.len(), 2);
    assert_eq!(config.initial_cluster_token, "it's-a-token");
    assert_eq!(config.initial_cluster_state, ClusterState::Existing);
    assert_eq!(config.quota_backend_bytes, 0);
    assert!(has_warning(
        &config,
        "other command-line flags and environment variables"
    ));
    assert_eq!(
        config.cipher_suites,
        [
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
        ]
    );
    assert_eq!(config.client_tls.cert_file, "/etc/c.pem");
    assert!(!config.client_tls.client_cert_auth);
    assert!(config.peer_tls.auto_tls);
    assert!(has_warning(&config, "unknown key unknown-key"));
    assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);

    // ETCD_CONFIG_FILE names the file when the flag is absent.
    let vars = env(&[("ETCD_CONFIG_FILE", path.as_str())]);
    assert_eq!(parse_with_cores(&[], &vars, CORES).unwrap().name, "node-a");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn config_file_errors() {
    let missing = err("--config-file /nonexistent/keel.yaml");
    assert!(missing.starts_with("cannot read config file /nonexistent/keel.yaml"));
    let path = temp_file("bad-value", "snapshot-count: lots\n");
    assert_eq!(
        err(&format!("--config-file {path}")),
        format!("config file {path}: invalid value \"lots\" for snapshot-count: parse error")
    );
    // Any YAML the crate reads is fine (a block scalar here); the name it gives is checked.
    let path_block = temp_file(
        "block",
        "name: |-\n  a\ninitial-cluster: b=http://localhost:2380\n",
    );
    assert_eq!(
        err(&format!("--config-file {path_block}")),
        "couldn't find local name \"a\" in the initial cluster configuration"
    );
    let path_syntax = temp_file("syntax", "name x\n");
    assert_eq!(
        err(&format!("--config-file {path_syntax}")),
        format!(
            "config file {path_syntax}: line 1: expected a mapping of etcd's config keys at the \
             top, found a value"
        )
    );
    // The file still goes through the same validation as flags.
    let path_cluster = temp_file(
        "cluster",
        "name: a\ninitial-cluster: b=http://localhost:2380\n",
    );
    assert_eq!(
        err(&format!("--config-file {path_cluster}")),
        "couldn't find local name \"a\" in the initial cluster configuration"
    );
    for path in [path, path_block, path_syntax, path_cluster] {
        std::fs::remove_file(path).unwrap();
    }
}
