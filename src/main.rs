//! `keel`: flags → config → one boot call.
//!
//! With no flags it serves one member on 127.0.0.1:2379 with data in `./default.keel`,
//! as etcd does with `./default.etcd`.

use keel::config::{self, Config, ConfigError};
use keel::raft::RaftOptions;
use keel::runtime::log;
use keel::server::{self, ServerOptions};
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
    // Peer TLS is not built: an https peer URL is never served in plaintext (a single
    // member needs no peer traffic; a cluster on https peer URLs cannot form, and says so).
    for u in cfg.listen_peer_urls.iter().filter(|u| u.scheme == "https") {
        log::warning(
            "etcdmain",
            &format!("peer TLS is not supported yet: not listening on {u}"),
        );
    }
    let listen_peer_addrs = cfg
        .listen_peer_urls
        .iter()
        .filter(|u| u.scheme != "https")
        .map(|u| u.socket_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let listen_client_addrs = cfg
        .listen_client_urls
        .iter()
        .map(|u| u.socket_addr())
        .collect::<Result<Vec<_>, _>>()?;
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
    Ok(ServerOptions {
        name: cfg.name.clone(),
        data_dir,
        member_id: me.id,
        cluster_id,
        listen_client_addrs,
        listen_peer_addrs,
        advertise_client_urls: advertise.clone(),
        raft: RaftOptions {
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
            max_txn_ops: cfg.max_txn_ops,
            shards: cores,
            shard_splits: cfg.shard_split_keys.clone(),
            lease_checkpoint_interval: cfg.lease_checkpoint_interval,
            join_existing: cfg.initial_cluster_state == config::ClusterState::Existing,
            advertise_peer_urls: cfg
                .initial_advertise_peer_urls
                .iter()
                .map(|u| u.to_string())
                .collect(),
            publish: Some((cfg.name.clone(), advertise)),
            strict_reconfig_check: cfg.strict_reconfig_check,
        },
        cores,
        cpus: if cfg.cpu_list.is_empty() {
            (0..cores).collect()
        } else {
            cfg.cpu_list[..cores].to_vec()
        },
        watch_progress_notify_interval: cfg.watch_progress_notify_interval,
        max_request_bytes: cfg.max_request_bytes,
        max_txn_ops: cfg.max_txn_ops,
        lease: keel::api::LeaseConfig::new(
            me.id,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            cfg.election_timeout_ms,
            cfg.heartbeat_interval_ms,
        ),
    })
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let cfg = match config::parse(&args, &env) {
        Ok(cfg) => cfg,
        Err(ConfigError::Help(text)) => {
            println!("{text}");
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
