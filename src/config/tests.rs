use super::*;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn ok(s: &str) -> Config {
    parse(&args(s), &[]).unwrap_or_else(|e| panic!("{s}: {e:?}"))
}

fn err(s: &str, env: &[(&str, &str)]) -> String {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match parse(&args(s), &env) {
        Err(ConfigError::Invalid(m)) => m,
        other => panic!("{s}: expected Invalid, got {other:?}"),
    }
}

#[test]
fn defaults_are_etcds_with_a_keel_data_dir() {
    let c = ok("");
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir, PathBuf::from("default.keel"));
    assert_eq!(
        c.listen_client_urls[0].socket_addr().unwrap().to_string(),
        "127.0.0.1:2379"
    );
    assert_eq!(c.initial_cluster.len(), 1);
    assert_eq!(c.initial_cluster[0].0, "default");
    assert_eq!(c.initial_cluster[0].1.to_string(), "http://localhost:2380");
    assert_eq!(c.initial_cluster_token, "etcd-cluster");
    assert_eq!(c.max_request_bytes, 1_572_864);
    assert_eq!(c.max_txn_ops, 128);
    assert_eq!(c.snapshot_count, 100_000);
    assert_eq!(
        (c.heartbeat_interval_ms, c.election_timeout_ms),
        (100, 1000)
    );
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert!(c.warnings.is_empty());
}

#[test]
fn go_flag_syntax_in_all_its_forms() {
    let c =
        ok("-name a --data-dir=/d --snapshot-count 5 -max-txn-ops=3 --enable-pprof --debug=false");
    assert_eq!(c.name, "a");
    assert_eq!(c.data_dir, PathBuf::from("/d"));
    assert_eq!(c.snapshot_count, 5);
    assert_eq!(c.max_txn_ops, 3);
    // Booleans never swallow the next argument.
    let c = ok("--enable-pprof --name b");
    assert_eq!(c.name, "b");
    assert_eq!(c.data_dir, PathBuf::from("b.keel"));
    assert!(matches!(
        parse(&args("--help"), &[]),
        Err(ConfigError::Help(_))
    ));
    assert_eq!(
        parse(&args("--version"), &[]).unwrap_err(),
        ConfigError::Version
    );
}

#[test]
fn the_e2e_suites_command_lines_parse_with_warnings() {
    let base = "--name test-0 --listen-client-urls http://localhost:20000 \
        --advertise-client-urls http://localhost:20000 --listen-peer-urls http://localhost:20001 \
        --initial-advertise-peer-urls http://localhost:20001 \
        --initial-cluster test-0=http://localhost:20001 --initial-cluster-token new \
        --data-dir /tmp/x --snapshot-count 100000 --experimental-initial-corrupt-check \
        --peer-auto-tls";
    let c = ok(base);
    assert_eq!(c.initial_cluster_token, "new");
    assert!(c.warnings.iter().any(|w| w.contains("peer-auto-tls")));
    assert!(c.warnings.iter().any(|w| w.contains("corrupt")));
    let c = ok(&format!(
        "{base} --initial-cluster-state existing --enable-v2"
    ));
    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
    assert!(c.warnings.iter().any(|w| w.contains("v2")));
    let two = base.replace(
        "--listen-client-urls http://localhost:20000",
        "--listen-client-urls http://localhost:20000,http://127.0.0.1:20010",
    );
    assert_eq!(ok(&two).listen_client_urls.len(), 2);
    let any = base.replace(
        "--listen-client-urls http://localhost:20000",
        "--listen-client-urls http://0.0.0.0:0",
    );
    assert_eq!(
        ok(&any).listen_client_urls[0]
            .socket_addr()
            .unwrap()
            .to_string(),
        "0.0.0.0:0"
    );
}

#[test]
fn environment_fills_what_the_command_line_left() {
    let env = vec![
        ("ETCD_NAME".to_string(), "e".to_string()),
        ("ETCD_SNAPSHOT_COUNT".to_string(), "7".to_string()),
        ("ETCD_NOT_A_FLAG".to_string(), "x".to_string()),
        ("ETCDCTL_API".to_string(), "3".to_string()),
    ];
    let c = parse(&args("--max-txn-ops 9"), &env).unwrap();
    assert_eq!(c.name, "e");
    assert_eq!(c.snapshot_count, 7);
    assert_eq!(c.max_txn_ops, 9);
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("unrecognized environment variable ETCD_NOT_A_FLAG")));
    assert!(!c.warnings.iter().any(|w| w.contains("ETCDCTL")));
    let m = err("--name x", &[("ETCD_NAME", "y")]);
    assert!(
        m.contains("conflicting environment variable \"ETCD_NAME\""),
        "{m}"
    );
    let m = err("", &[("ETCD_SNAPSHOT_COUNT", "many")]);
    assert_eq!(
        m,
        "invalid value \"many\" for ETCD_SNAPSHOT_COUNT: parse error"
    );
}

#[test]
fn a_config_file_replaces_flags_and_environment() {
    let path = std::env::temp_dir().join(format!("keel-config-{}.yml", std::process::id()));
    std::fs::write(
        &path,
        "# etcd config\nname: 'filed'\ndata-dir: /tmp/filed   # comment\n\
         listen-client-urls: http://127.0.0.1:23790\nadvertise-client-urls: \"http://127.0.0.1:23790\"\n\
         snapshot-count: 42\nheartbeat-interval: 50\nelection-timeout: 500\nwal-dir:\n\
         initial-cluster-state: 'new'\nclient-transport-security:\n  cert-file: /c.pem\n  auto-tls: false\n\
         enable-v2: true\n",
    )
    .unwrap();
    let a = format!("--config-file {} --name ignored", path.display());
    let c = parse(&args(&a), &[("ETCD_SNAPSHOT_COUNT".into(), "1".into())]).unwrap();
    assert_eq!(c.name, "filed");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/filed"));
    assert_eq!(c.snapshot_count, 42);
    assert_eq!((c.heartbeat_interval_ms, c.election_timeout_ms), (50, 500));
    assert_eq!(c.wal_dir, None);
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("client-transport-security.cert-file")));
    assert!(c.warnings.iter().any(|w| w.contains("enable-v2")));
    std::fs::remove_file(&path).unwrap();
    let m = err("--config-file /nonexistent/keel.yml", &[]);
    assert!(
        m.starts_with("cannot read config file /nonexistent/keel.yml"),
        "{m}"
    );
}

#[test]
fn bad_values_get_etcds_messages() {
    assert_eq!(
        err("--bogus 1", &[]),
        "flag provided but not defined: -bogus"
    );
    assert_eq!(
        err("--snapshot-count abc", &[]),
        "invalid value \"abc\" for flag -snapshot-count: parse error"
    );
    assert_eq!(err("--name", &[]), "flag needs an argument: -name");
    assert!(err("--initial-cluster-state maybe", &[]).contains("valid values are"));
    assert_eq!(
        err("--name x --initial-cluster y=http://localhost:2380", &[]),
        "couldn't find local name \"x\" in the initial cluster configuration"
    );
    assert_eq!(
        err("--heartbeat-interval 300", &[]),
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
    );
    assert!(err("--election-timeout 60000 --heartbeat-interval 100", &[]).contains("is too long"));
    assert!(err(
        "--listen-client-urls ftp://x:1 --advertise-client-urls http://x:1",
        &[]
    )
    .contains("parse error"));
    assert!(err("--listen-client-urls http://127.0.0.1:1", &[])
        .contains("--advertise-client-urls is required"));
    assert!(err("--cores 0", &[]).contains("-cores"));
    assert!(err("--grpc-keepalive-interval 2 hours", &[]).contains("parse error"));
    assert!(
        ok("--grpc-keepalive-interval 1h30m --grpc-keepalive-timeout 20s")
            .warnings
            .is_empty()
    );
}

#[test]
fn member_and_cluster_ids_match_etcds() {
    let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
    assert_eq!(id, 0x8e9e05c52164694d);
    assert_eq!(cluster_id(&[id]), 0xcdf818194e3a8c32);
    // Order of URLs and IDs does not matter.
    let a = member_id(&["http://b:2".into(), "http://a:1".into()], "t");
    let b = member_id(&["http://a:1".into(), "http://b:2".into()], "t");
    assert_eq!(a, b);
    assert_eq!(cluster_id(&[1, 2]), cluster_id(&[2, 1]));
}
