//! `keel snapshot restore|status` and `keel defrag`: the offline tools etcdutl (and
//! etcdctl 3.4) offer, on Keel's data dirs and etcd's snapshot files.
//!
//! Runs on: the `keel` process's main thread, on a fresh executor (`runtime::block_on`);
//! no server runs.

use crate::bbolt;
use crate::mesh::MemberInfo;
use crate::raft::restore::{self, RestoreTarget};
use std::path::PathBuf;

/// `keel snapshot …` and `keel defrag …` usage.
pub const USAGE: &str = "\
Usage:
  keel snapshot restore FILE [--name NAME] [--data-dir DIR] [--wal-dir DIR]
                        [--initial-cluster NAME=URL,...] [--initial-cluster-token TOKEN]
                        [--initial-advertise-peer-urls URL,...] [--skip-hash-check]
      Restores a snapshot (from `etcdctl snapshot save`, of etcd or of Keel) into a new
      Keel data dir with a new cluster's membership (defaults as etcdutl's: name
      'default', cluster 'default=http://localhost:2380', token 'etcd-cluster', data dir
      '<name>.keel').
  keel snapshot status FILE [-w|--write-out table|json|simple]
      Hash, revision, total keys and size of a snapshot file, as etcdctl prints them.
  keel defrag --data-dir DIR
      Defragments a stopped member's db in place (the file shrinks to its live pages).
";

/// Parsed `--flag value` / `--flag=value` pairs, and the positional arguments.
struct Args {
    flags: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

fn parse(args: &[String], bool_flags: &[&str], known: &[&str]) -> Result<Args, String> {
    let mut out = Args {
        flags: Vec::new(),
        positional: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(f) = a
            .strip_prefix("--")
            .or_else(|| a.strip_prefix('-').filter(|f| f.len() == 1))
        {
            let (name, inline) = match f.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (f.to_string(), None),
            };
            let name = if name == "w" {
                "write-out".to_string()
            } else {
                name
            };
            if !known.contains(&name.as_str()) {
                return Err(format!("unknown flag: --{name}"));
            }
            if bool_flags.contains(&name.as_str()) {
                out.flags
                    .push((name, Some(inline.unwrap_or_else(|| "true".into()))));
            } else if let Some(v) = inline {
                out.flags.push((name, Some(v)));
            } else {
                let v = args
                    .get(i + 1)
                    .ok_or_else(|| format!("flag needs an argument: --{name}"))?;
                out.flags.push((name, Some(v.clone())));
                i += 1;
            }
        } else {
            out.positional.push(a.clone());
        }
        i += 1;
    }
    Ok(out)
}

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Runs a tool subcommand (`args` after `keel`); `None` if `args` names none.
pub fn run(args: &[String]) -> Option<Result<(), String>> {
    match args.first().map(String::as_str) {
        Some("snapshot") => Some(match args.get(1).map(String::as_str) {
            Some("restore") => snapshot_restore(&args[2..]),
            Some("status") => snapshot_status(&args[2..]),
            _ => Err(format!("keel snapshot: restore or status\n{USAGE}")),
        }),
        Some("defrag") => Some(defrag(&args[1..])),
        _ => None,
    }
}

fn one_file(a: &Args, what: &str) -> Result<PathBuf, String> {
    match a.positional.as_slice() {
        [f] => Ok(PathBuf::from(f)),
        _ => Err(format!(
            "{what} requires exactly one argument (the snapshot file)"
        )),
    }
}

fn snapshot_restore(args: &[String]) -> Result<(), String> {
    let a = parse(
        args,
        &["skip-hash-check"],
        &[
            "name",
            "data-dir",
            "wal-dir",
            "initial-cluster",
            "initial-cluster-token",
            "initial-advertise-peer-urls",
            "skip-hash-check",
        ],
    )?;
    let file = one_file(&a, "snapshot restore")?;
    let name = a.get("name").unwrap_or("default").to_string();
    let data_dir = PathBuf::from(
        a.get("data-dir")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{name}.keel")),
    );
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let data_dir = cwd.join(data_dir);
    let wal_dir = a
        .get("wal-dir")
        .map(|w| cwd.join(w))
        .unwrap_or_else(|| data_dir.join("member").join("wal"));
    let token = a.get("initial-cluster-token").unwrap_or("etcd-cluster");
    let cluster = a
        .get("initial-cluster")
        .unwrap_or("default=http://localhost:2380");
    let advertise: Vec<String> = a
        .get("initial-advertise-peer-urls")
        .unwrap_or("http://localhost:2380")
        .split(',')
        .map(str::to_string)
        .collect();
    let skip_hash_check = a.get("skip-hash-check").is_some_and(|v| v != "false");
    let members = members_of(cluster, token)?;
    let me = members.iter().find(|m| m.name == name).ok_or_else(|| {
        format!("couldn't find local name {name:?} in the initial cluster configuration")
    })?;
    let mut mine = me.peer_urls.clone();
    let mut adv = advertise.clone();
    mine.sort();
    adv.sort();
    if mine != adv {
        return Err(format!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={}",
            me.peer_urls.join(","),
            advertise.join(",")
        ));
    }
    if std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!(
            "data-dir {:?} not empty or could not be read",
            data_dir.display().to_string()
        ));
    }
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let db = restore::check_snapshot_bytes(&bytes, skip_hash_check)?;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let target = RestoreTarget {
        db_path: data_dir.join("member").join("snap").join("db"),
        wal_dir,
        member_id: me.id,
        cluster_id: crate::config::cluster_id(&ids),
        members: members.clone(),
    };
    let db = db.to_vec();
    let t = target.clone();
    let imported = crate::runtime::block_on(async move { restore::restore(&db, &t).await })?;
    for m in &members {
        crate::runtime::log::info(
            "snapshot",
            &format!(
                "added member {:x} {:?} to cluster {:x}",
                m.id, m.peer_urls, target.cluster_id
            ),
        );
    }
    crate::runtime::log::info(
        "snapshot",
        &format!(
            "restored snapshot {} into {}: revision {} (compacted at {}), {} revisions, {} leases, {} users, {} roles",
            file.display(),
            data_dir.display(),
            imported.revision,
            imported.compact_revision,
            imported.revisions,
            imported.leases,
            imported.users,
            imported.roles
        ),
    );
    Ok(())
}

/// `name=url,...` as etcd reads `--initial-cluster`: a member per name, all its URLs.
fn members_of(cluster: &str, token: &str) -> Result<Vec<MemberInfo>, String> {
    let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
    for part in cluster.split(',').filter(|p| !p.is_empty()) {
        let (n, u) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {part:?} is not name=url"))?;
        match by_name.iter_mut().find(|(m, _)| m == n) {
            Some((_, urls)) => urls.push(u.to_string()),
            None => by_name.push((n.to_string(), vec![u.to_string()])),
        }
    }
    Ok(by_name
        .into_iter()
        .map(|(name, mut peer_urls)| {
            peer_urls.sort();
            MemberInfo {
                id: crate::config::member_id(&peer_urls, token),
                name,
                peer_urls,
                client_urls: Vec::new(),
                is_learner: false,
            }
        })
        .collect())
}

/// go-humanize's `Bytes` (SI units), as etcdctl prints TOTAL SIZE.
fn humanize(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let v = n as f64 / 1000f64.powi(e as i32);
    let v = (v * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", units[e])
    } else {
        format!("{v:.0} {}", units[e])
    }
}

fn snapshot_status(args: &[String]) -> Result<(), String> {
    let a = parse(args, &[], &["write-out"])?;
    let file = one_file(&a, "snapshot status")?;
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    // etcd reads the file as it is (a trailer past the last page is not looked at).
    let s = bbolt::status(&bytes).map_err(|e| e.to_string())?;
    match a.get("write-out").unwrap_or("simple") {
        "json" => println!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
            s.hash, s.revision, s.total_key, s.total_size
        ),
        "table" => {
            let row = [
                format!("{:x}", s.hash),
                s.revision.to_string(),
                s.total_key.to_string(),
                humanize(s.total_size),
            ];
            let head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let w: Vec<usize> = head
                .iter()
                .zip(&row)
                .map(|(h, r)| h.len().max(r.len()) + 2)
                .collect();
            let line = w
                .iter()
                .map(|n| "-".repeat(*n))
                .collect::<Vec<_>>()
                .join("+");
            println!("+{line}+");
            let centre = |t: &str, n: usize| {
                let l = (n - t.len()) / 2;
                format!("{}{t}{}", " ".repeat(l), " ".repeat(n - t.len() - l))
            };
            println!(
                "|{}|",
                head.iter()
                    .zip(&w)
                    .map(|(h, n)| centre(h, *n))
                    .collect::<Vec<_>>()
                    .join("|")
            );
            println!("+{line}+");
            println!(
                "|{}|",
                row.iter()
                    .zip(&w)
                    .map(|(r, n)| format!("{r:>width$} ", width = n - 1))
                    .collect::<Vec<_>>()
                    .join("|")
            );
            println!("+{line}+");
        }
        "simple" => println!(
            "{:x}, {}, {}, {}",
            s.hash,
            s.revision,
            s.total_key,
            humanize(s.total_size)
        ),
        other => return Err(format!("unsupported output format {other:?}")),
    }
    Ok(())
}

fn defrag(args: &[String]) -> Result<(), String> {
    let a = parse(args, &[], &["data-dir"])?;
    let dir = a
        .get("data-dir")
        .ok_or("keel defrag needs --data-dir (the member must be stopped)")?;
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let data_dir = cwd.join(dir);
    let lock = crate::server::dir_lock::DirLock::acquire("data dir", &data_dir)
        .map_err(|e| format!("{}: {e} (is the member still running?)", data_dir.display()))?;
    let db_path = data_dir.join("member").join("snap").join("db");
    if !db_path.exists() {
        return Err(format!("{} does not exist", db_path.display()));
    }
    let before = std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0);
    let p = db_path.clone();
    let after = crate::runtime::block_on(async move {
        let mut db = crate::mvcc::db::Db::open(&p, crate::mvcc::db::DbOptions::default())
            .await
            .map_err(|e| format!("{}: {e}", p.display()))?;
        db.defrag_all()
            .await
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let after = db.stats().file_bytes;
        db.close()
            .await
            .map_err(|e| format!("{}: {e}", p.display()))?;
        Ok::<u64, String>(after)
    })?;
    drop(lock);
    println!(
        "Finished defragmenting etcd data[{}] ({} → {} bytes)",
        data_dir.display(),
        before,
        after
    );
    Ok(())
}
