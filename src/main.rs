//! `keel`: flags → config → one boot call.
//!
//! With no flags it serves one member on 127.0.0.1:2379 with data in `./default.keel`,
//! as etcd does with `./default.etcd`.

use keel::config::{self, Config, ConfigError};
use keel::raft::transport::{PeerListen, PeerTarget};
use keel::raft::RaftOptions;
use keel::runtime::log;
use keel::server::{self, ClientListen, ServerOptions};
use keel::tls;
use std::process::ExitCode;

fn server_options(cfg: &Config) -> Result<ServerOptions, String> {
    // --initial-cluster lists one name=url pair per peer URL; a member is all its URLs.
    let mut cluster: Vec<(String, Vec<String>)> = Vec::new();
    for (name, url) in &cfg.initial_cluster {
        match cluster.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => cluster.push((name.clone(), vec![url.to_string()])),
        }
    }
    let advertise: Vec<String> = cfg
        .advertise_client_urls
        .iter()
        .map(|u| u.to_string())
        .collect();
    let members =
        server::initial_members(&cluster, &cfg.initial_cluster_token, &cfg.name, &advertise);
    let me = members.iter().find(|m| m.name == cfg.name).ok_or_else(|| {
        format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            cfg.name
        )
    })?;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cluster_id = config::cluster_id(&ids);
    let listen_peers = cfg
        .listen_peer_urls
        .iter()
        .map(|u| {
            let tls = is_tls(u);
            if u.scheme.starts_with("unix") {
                // etcd listens on the path `host:port` (relative to the working directory).
                let path = format!("{}:{}", u.host, u.port);
                Ok(PeerListen {
                    target: PeerTarget::Unix(path.into()),
                    tls,
                })
            } else {
                Ok(PeerListen {
                    target: PeerTarget::Tcp(u.socket_addr()?),
                    tls,
                })
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    let listen_clients = client_listens(&cfg.listen_client_urls)?;
    let listen_metrics = client_listens(&cfg.listen_metrics_urls)?;
    keel::config::version::set(&cfg.etcd_version)?;
    keel::metrics::set_extensive(cfg.metrics_extensive);
    // Absolute paths: glommio opens directories with openat, which fails on relative ones
    // (EBADF), and a relative data dir is the default (`./default.keel`).
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let data_dir = cwd.join(&cfg.data_dir);
    let member_dir = data_dir.join("member");
    let cores = cfg.cores.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let client_tls = tls_side(
        cfg,
        &cfg.client_tls,
        &cfg.listen_client_urls,
        data_dir.join("fixtures").join("client"),
        false,
    )?;
    let peer_tls = tls_side(
        cfg,
        &cfg.peer_tls,
        &cfg.listen_peer_urls,
        data_dir.join("fixtures").join("peer"),
        true,
    )?;
    let any_https_client = cfg
        .listen_client_urls
        .iter()
        .chain(&cfg.listen_metrics_urls)
        .any(is_tls);
    if let Some(u) = cfg.listen_metrics_urls.iter().find(|u| is_tls(u)) {
        if client_tls.is_none() {
            return Err(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for metrics url {u} \
                 with HTTPS scheme"
            ));
        }
    }
    if let Some(u) = cfg.listen_client_urls.iter().find(|u| is_tls(u)) {
        if client_tls.is_none() {
            return Err(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {u} with \
                 HTTPS scheme"
            ));
        }
    }
    if let Some(u) = cfg.listen_peer_urls.iter().find(|u| is_tls(u)) {
        if peer_tls.is_none() {
            return Err(format!(
                "cannot listen on TLS for {}:{}: KeyFile and CertFile are not presented",
                u.host, u.port
            ));
        }
    }
    for u in cfg.listen_client_urls.iter().filter(|u| !is_tls(u)) {
        if client_tls.is_some() || !cfg.client_tls.cert_file.is_empty() {
            log::warning(
                "embed",
                &format!("scheme is HTTP while key and cert files are present; ignoring key and cert files (client-url {u})"),
            );
        }
    }
    Ok(ServerOptions {
        name: cfg.name.clone(),
        client_tls: if any_https_client { client_tls } else { None },
        peer_tls,
        tls_ready: Default::default(),
        data_dir,
        member_id: me.id,
        cluster_id,
        listen_clients,
        listen_metrics,
        listen_peers,
        advertise_client_urls: advertise.clone(),
        raft: RaftOptions {
            peer_tls: None,
            member_id: me.id,
            cluster_id,
            wal_dir: cfg
                .wal_dir
                .as_ref()
                .map_or_else(|| member_dir.join("wal"), |w| cwd.join(w)),
            db_path: member_dir.join("snap").join("db"),
            initial_members: members.clone(),
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            election_timeout_ms: cfg.election_timeout_ms,
            snapshot_count: cfg.snapshot_count,
            snapshot_bytes: cfg.snapshot_bytes,
            max_txn_ops: cfg.max_txn_ops,
            shards: cores,
            shard_splits: cfg.shard_split_keys.clone(),
            shard_rebalance: cfg.shard_rebalance,
            idle_spin: cfg.idle_spin,
            lease_checkpoint_interval: cfg.lease_checkpoint_interval,
            corrupt_check_interval: cfg.corrupt_check_interval,
            initial_corrupt_check: cfg.initial_corrupt_check,
            join_existing: cfg.initial_cluster_state == config::ClusterState::Existing,
            advertise_peer_urls: cfg
                .initial_advertise_peer_urls
                .iter()
                .map(|u| u.to_string())
                .collect(),
            publish: Some((cfg.name.clone(), advertise)),
            strict_reconfig_check: cfg.strict_reconfig_check,
            auto_compaction: cfg.auto_compaction,
            force_new_cluster: cfg.force_new_cluster,
        },
        cores,
        cpus: if cfg.cpu_list.is_empty() {
            (0..cores).collect()
        } else {
            cfg.cpu_list[..cores].to_vec()
        },
        watch_progress_notify_interval: cfg.watch_progress_notify_interval,
        max_request_bytes: cfg.max_request_bytes,
        max_response_bytes: cfg.max_response_bytes,
        max_txn_ops: cfg.max_txn_ops,
        max_concurrent_streams: cfg.max_concurrent_streams,
        gateway_calls: std::sync::Arc::new(keel::grpc::server::CallSlots::new(
            cfg.max_concurrent_streams,
        )),
        lease: keel::api::LeaseConfig::new(
            me.id,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            cfg.election_timeout_ms,
            cfg.heartbeat_interval_ms,
        ),
        auth: keel::api::AuthConfig {
            client_cert_auth: cfg.client_tls.client_cert_auth,
            bcrypt_cost: cfg.bcrypt_cost,
            jwt: jwt_provider(&cfg.auth_token)?,
        },
        auth_token_ttl: std::time::Duration::from_secs(cfg.auth_token_ttl_s),
        quota_backend_bytes: cfg.quota_backend_bytes,
    })
}

/// `--auth-token jwt,…`: the signing keys read now, so a bad option or key file stops the
/// boot naming it (`simple`: `None`).
fn jwt_provider(
    auth_token: &str,
) -> Result<Option<std::sync::Arc<keel::auth::jwt::JwtProvider>>, String> {
    let Some(options) = auth_token.strip_prefix("jwt") else {
        return Ok(None);
    };
    let options = options.strip_prefix(',').unwrap_or(options);
    let opts = keel::auth::jwt::parse_options(options)
        .map_err(|e| format!("failed to create token provider: {e}"))?;
    for key in &opts.unknown_keys {
        keel::runtime::log::warning("auth", &format!("unknown JWT options: {key}"));
    }
    let provider = keel::auth::jwt::JwtProvider::new(&opts)
        .map_err(|e| format!("failed to create token provider: {e}"))?;
    Ok(Some(std::sync::Arc::new(provider)))
}

fn is_tls(u: &config::Url) -> bool {
    u.scheme == "https" || u.scheme == "unixs"
}

/// One listener per address of `urls`: the same address as http and https is one
/// listener that serves both (etcd too).
fn client_listens(urls: &[config::Url]) -> Result<Vec<ClientListen>, String> {
    let mut listens: Vec<ClientListen> = Vec::new();
    for u in urls {
        let addr = u.socket_addr()?;
        let tls = is_tls(u);
        match listens.iter_mut().find(|l| l.addr == addr) {
            Some(l) => {
                l.tls |= tls;
                l.plain |= !tls;
            }
            None => listens.push(ClientListen {
                addr,
                plain: !tls,
                tls,
            }),
        }
    }
    Ok(listens)
}

/// One side's TLS settings from its flags: `None` when it has no certificate and no
/// auto-TLS (the side is then plaintext only).
fn tls_side(
    cfg: &Config,
    flags: &config::TlsFlags,
    listen: &[config::Url],
    auto_dir: std::path::PathBuf,
    peer: bool,
) -> Result<Option<tls::Side>, String> {
    let which = if peer { "peer" } else { "client" };
    let info = tls::TlsInfo {
        cert_file: flags.cert_file.clone().into(),
        key_file: flags.key_file.clone().into(),
        client_cert_file: flags.client_cert_file.clone().into(),
        client_key_file: flags.client_key_file.clone().into(),
        trusted_ca_file: flags.trusted_ca_file.clone().into(),
        client_cert_auth: flags.client_cert_auth,
        crl_file: flags.crl_file.clone().into(),
        allowed_cn: flags.allowed_cn.clone(),
        allowed_hostname: flags.allowed_hostname.clone(),
        self_signed: false,
        versions: tls::Versions {
            min_tls13: cfg.tls_min_tls13,
            max_tls12: cfg.tls_max_tls12,
            cipher_suites: cfg.cipher_suites.clone(),
        },
    };
    if !info.is_empty() {
        if flags.auto_tls {
            log::warning(
                "embed",
                &format!("ignoring {which} auto TLS since certs given"),
            );
        }
        return Ok(Some(tls::Side { info, auto: None }));
    }
    if !flags.auto_tls {
        return Ok(None);
    }
    Ok(Some(tls::Side {
        info,
        auto: Some(tls::Auto {
            dir: auto_dir,
            hosts: listen.iter().map(|u| u.host.clone()).collect(),
            validity_years: cfg.self_signed_cert_validity,
            client_auth: peer,
        }),
    }))
}

/// Boots this process again (same PID, arguments and environment) on a db a snapshot
/// from the leader replaced; every inherited descriptor but stdio is closed first.
#[allow(unsafe_code)]
fn reexec() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for fd in dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            if fd > 2 {
                // SAFETY: only sets the close-on-exec flag of a descriptor number.
                unsafe {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec()
}

/// mimalloc instead of glibc's malloc (issue 22: at put c64, glibc's malloc and free took
/// ~16% of the server's CPU, with arena-lock waits between the cores).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = keel::proxy::run(&args) {
        return code;
    }
    if let Some(result) = keel::server::tools::run(&args) {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("Error: {msg}");
                ExitCode::from(1)
            }
        };
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let cfg = match config::parse(&args, &env) {
        Ok(cfg) => cfg,
        Err(ConfigError::Help(text)) => {
            // A closed pipe (`keel --help | head`) is no error.
            let _ =
                std::io::Write::write_all(&mut std::io::stdout(), format!("{text}\n").as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(ConfigError::Version) => {
            println!("keel Version: {}", env!("CARGO_PKG_VERSION"));
            println!("etcd API Version: 3.4");
            return ExitCode::SUCCESS;
        }
        Err(ConfigError::Invalid(msg)) => {
            eprintln!("keel: {msg}");
            eprintln!("Try 'keel --help' for more information.");
            return ExitCode::from(2);
        }
    };
    log::info(
        "etcdmain",
        &format!("keel Version: {}", env!("CARGO_PKG_VERSION")),
    );
    for w in &cfg.warnings {
        log::warning("etcdmain", w);
    }
    if let Err(e) = keel::failpoint::arm_from_env() {
        eprintln!("keel: {e}");
        return ExitCode::from(2);
    }
    let opts = match server_options(&cfg) {
        Ok(opts) => opts,
        Err(msg) => {
            eprintln!("keel: {msg}");
            return ExitCode::from(2);
        }
    };
    log::info(
        "etcdmain",
        &format!(
            "name = {}, data dir = {}, member = {:x}, cluster = {:x}, cores = {}",
            opts.name,
            cfg.data_dir.display(),
            opts.member_id,
            opts.cluster_id,
            opts.cores
        ),
    );
    match server::run(opts) {
        Ok(keel::raft::Exit::Stopped | keel::raft::Exit::Removed) => ExitCode::SUCCESS,
        Ok(keel::raft::Exit::Restart) => {
            let err = reexec();
            eprintln!("keel: cannot restart on the installed snapshot: {err}");
            ExitCode::from(1)
        }
        Err(msg) => {
            log::error("etcdmain", &msg);
            eprintln!("keel: {msg}");
            ExitCode::from(1)
        }
    }
}
