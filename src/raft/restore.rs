//! Restoring a member from an etcd snapshot file (`keel snapshot restore`, as etcdutl's
//! restore), and booting on a data dir that `etcdctl snapshot restore` made for etcd
//! (the migration path etcd → Keel).
//!
//! A restore writes a new Keel data dir: the db with the snapshot's revisions, leases,
//! auth and alarms, and the new cluster's membership as if its bootstrap conf changes
//! (one per member, term 1) were applied, at consistent index n; and a WAL whose
//! snapshot marker is at n — what etcd's restore writes for etcd (a raft snapshot at
//! the n conf changes). The member then boots as a restarted member whose log starts
//! after n, so a member added later is sent the db.
//!
//! Runs on: a glommio executor (the Db and WAL are glommio files): the `keel` command's
//! own, or the raft core's at boot, before it serves anything.

use super::*;
use crate::bbolt;
use std::path::{Path, PathBuf};

/// Bytes of etcd's sha256 trailer.
const SHA256_BYTES: usize = 32;

/// The db part of a snapshot file, after etcd's hash check: a file whose size is 32
/// more than a multiple of 512 carries a sha256 of what comes before.
pub fn check_snapshot_bytes(bytes: &[u8], skip_hash_check: bool) -> Result<&[u8], String> {
    let has_hash = bytes.len() % 512 == SHA256_BYTES;
    if !has_hash {
        if !skip_hash_check {
            return Err("snapshot missing hash but --skip-hash-check=false".into());
        }
        return Ok(bytes);
    }
    let (db, want) = bytes.split_at(bytes.len() - SHA256_BYTES);
    if !skip_hash_check {
        let got = ring::digest::digest(&ring::digest::SHA256, db);
        if got.as_ref() != want {
            // Go prints byte slices as [1 2 3].
            let go = |b: &[u8]| {
                format!(
                    "[{}]",
                    b.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            };
            return Err(format!(
                "expected sha256 {}, got {}",
                go(want),
                go(got.as_ref())
            ));
        }
    }
    Ok(db)
}

/// Where and as whom a snapshot is restored.
#[derive(Clone, Debug)]
pub struct RestoreTarget {
    pub db_path: PathBuf,
    pub wal_dir: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    pub members: Vec<MemberInfo>,
}

/// Writes the db from an etcd bbolt file (`db_bytes`, its hash already checked) and the
/// WAL that bootstraps `target.members`. Both must not exist yet.
pub async fn restore(db_bytes: &[u8], target: &RestoreTarget) -> Result<etcd_db::Imported, String> {
    let reader = bbolt::Reader::open(db_bytes).map_err(|e| e.to_string())?;
    if target.db_path.exists() {
        return Err(format!("{} exists", target.db_path.display()));
    }
    if Wal::exists(&target.wal_dir) {
        return Err(format!("{} holds a WAL", target.wal_dir.display()));
    }
    if let Some(parent) = target.db_path.parent() {
        crate::durable_dir::create_dir_all(parent, 0o700)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut db = mvcc::db::Db::open(&target.db_path, mvcc::db::DbOptions::default())
        .await
        .map_err(|e| format!("{}: {e}", target.db_path.display()))?;
    let imported = etcd_db::import(&reader, &mut db).map_err(|e| e.to_string())?;
    // The new membership as applied, at index n (one bootstrap conf change per member),
    // and a WAL whose snapshot marker is there: the log starts after it, so a member that
    // joins later gets the db sent (the restored data is in no log entry).
    let n = target.members.len() as u64;
    let mut cs = ConfState::default();
    for m in &target.members {
        db.insert(
            TreeId::Member,
            &m.id.to_be_bytes(),
            &member_record(m).encode_to_vec(),
        )
        .map_err(|e| format!("{}: {e}", target.db_path.display()))?;
        if m.is_learner {
            cs.learners.push(m.id);
        } else {
            cs.voters.push(m.id);
        }
    }
    let cs_bytes = cs.write_to_bytes().expect("ConfState encodes");
    db.insert(TreeId::Meta, META_CONF_STATE_KEY, &cs_bytes)
        .map_err(|e| format!("{}: {e}", target.db_path.display()))?;
    let mut app = db.app_meta();
    app.consistent_index = n;
    app.consistent_term = 1;
    db.set_app_meta(app);
    db.commit()
        .await
        .map_err(|e| format!("{}: {e}", target.db_path.display()))?;
    db.close()
        .await
        .map_err(|e| format!("{}: {e}", target.db_path.display()))?;
    let metadata = boot::encode_metadata(target.member_id, target.cluster_id);
    let mut wal = Wal::create(&target.wal_dir, &metadata, WalOptions::default())
        .await
        .map_err(|e| format!("{}: {e}", target.wal_dir.display()))?;
    wal.set_hard_state(wal::HardState {
        term: 1,
        vote: 0,
        commit: n,
    });
    wal.save_snapshot_marker(wal::SnapshotMarker { index: n, term: 1 });
    wal.sync()
        .await
        .map_err(|e| format!("{}: {e}", target.wal_dir.display()))?;
    Ok(imported)
}

/// A new WAL whose log bootstraps `members`: one committed conf change each (index 1..n,
/// term 1), as a new member's first boot and etcd's restore write it.
pub(super) async fn write_bootstrap_wal(
    wal_dir: &Path,
    member_id: u64,
    cluster_id: u64,
    members: &[MemberInfo],
) -> Result<(Wal, Vec<Entry>, HardState), BootError> {
    let metadata = boot::encode_metadata(member_id, cluster_id);
    let mut wal = Wal::create(wal_dir, &metadata, WalOptions::default())
        .await
        .map_err(|e| boot_err(format!("{}: {e}", wal_dir.display())))?;
    let mut entries = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let mut cc = ConfChange::default();
        cc.set_change_type(if m.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        });
        cc.node_id = m.id;
        cc.context = member_record(m).encode_to_vec().into();
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = 1;
        e.index = i as u64 + 1;
        e.data = cc.write_to_bytes().expect("ConfChange encodes").into();
        entries.push(e);
    }
    let hs = HardState {
        term: 1,
        vote: 0,
        commit: entries.len() as u64,
        ..Default::default()
    };
    append_synced(&mut wal, &entries, &hs, wal_dir).await?;
    Ok((wal, entries, hs))
}

/// Appends `entries` and the hard state `hs` to the WAL and syncs it.
pub(super) async fn append_synced(
    wal: &mut Wal,
    entries: &[Entry],
    hs: &HardState,
    wal_dir: &Path,
) -> Result<(), BootError> {
    let wal_entries: Vec<wal::Entry> = entries.iter().map(boot::to_wal_entry).collect();
    wal.append_entries(&wal_entries);
    wal.set_hard_state(wal::HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    });
    wal.sync()
        .await
        .map_err(|e| boot_err(format!("{}: {e}", wal_dir.display())))
}

/// Whether the file at `path` is a bbolt db (etcd's) rather than Keel's: bbolt's meta
/// magic at byte 16 of its first page.
pub fn is_bbolt_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) == 0xED0C_DAED
}

/// Boot on an etcd data dir (`member/snap/db` is bbolt, `member/wal` etcd's WAL), as
/// `etcdctl snapshot restore` leaves it: the membership comes from etcd's WAL, the data
/// from the db; a Keel data dir is written beside it and swapped in, and etcd's files are
/// kept in `member.etcd` (or `<wal-dir>.etcd`) for the way back. A crash in between
/// leaves either etcd's dir (the import starts over) or Keel's complete one.
pub(super) async fn import_etcd_data_dir(opts: &RaftOptions) -> Result<(), BootError> {
    let db_path = &opts.db_path;
    let err = |what: String| boot_err(format!("importing etcd data dir: {what}"));
    let wal = crate::etcd_wal::read_wal_dir(&opts.wal_dir).map_err(|e| err(e.to_string()))?;
    if wal.members.is_empty() {
        return Err(err(format!(
            "{}: etcd's WAL names no member",
            opts.wal_dir.display()
        )));
    }
    if wal.last_index > wal.members.len() as u64 + 1 && wal.last_index > wal.snapshot_index {
        // A data dir etcd has run on: its db may be behind its WAL, whose entries Keel
        // does not replay.
        return Err(err(format!(
            "{}: etcd's WAL has entries up to index {} beyond its snapshot at {}: Keel boots on \
             a data dir freshly made by `etcdctl snapshot restore`; take a snapshot of the \
             running etcd (`etcdctl snapshot save`) and restore it instead",
            opts.wal_dir.display(),
            wal.last_index,
            wal.snapshot_index
        )));
    }
    let members: Vec<MemberInfo> = wal
        .members
        .iter()
        .map(|m| MemberInfo {
            id: m.id,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            client_urls: m.client_urls.clone(),
            is_learner: m.is_learner,
        })
        .collect();
    let bytes = std::fs::read(db_path).map_err(|e| err(format!("{}: {e}", db_path.display())))?;
    // Staging paths beside the real ones, swapped in by renames.
    let staged_db = db_path.with_extension("keel-import");
    let staged_wal = opts.wal_dir.with_extension("keel-import");
    let _ = std::fs::remove_file(&staged_db);
    let _ = std::fs::remove_dir_all(&staged_wal);
    let target = RestoreTarget {
        db_path: staged_db.clone(),
        wal_dir: staged_wal.clone(),
        member_id: wal.member_id,
        cluster_id: wal.cluster_id,
        members,
    };
    let imported = restore(&bytes, &target).await.map_err(err)?;
    // Keel's files are complete and durable: from here on a boot finishes the swap.
    let marker = import_marker(opts);
    crate::durable_dir::write_file_durably(&marker, b"keel import of an etcd data dir\n")
        .map_err(|e| err(format!("{}: {e}", marker.display())))?;
    finish_import(opts)?;
    crate::runtime::log::notice(
        "etcdserver",
        &format!(
            "imported etcd's data dir: {} revisions up to {} (compacted at {}), {} leases, \
             {} users, {} roles; etcd's files kept in {} and {}",
            imported.revisions,
            imported.revision,
            imported.compact_revision,
            imported.leases,
            imported.users,
            imported.roles,
            kept_snap_dir(opts).display(),
            opts.wal_dir.with_extension("etcd").display()
        ),
    );
    Ok(())
}

fn import_marker(opts: &RaftOptions) -> PathBuf {
    snap_dir(opts).with_extension("keel-import")
}

fn snap_dir(opts: &RaftOptions) -> PathBuf {
    opts.db_path
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn kept_snap_dir(opts: &RaftOptions) -> PathBuf {
    snap_dir(opts).with_extension("etcd")
}

/// Swaps a complete import in (idempotent: each step is skipped once done), if the
/// import's marker says one was made. Called at every boot before the WAL is looked at.
pub(super) fn finish_import(opts: &RaftOptions) -> Result<(), BootError> {
    let marker = import_marker(opts);
    if !marker.exists() {
        return Ok(());
    }
    let err = |what: String| boot_err(format!("finishing the import of etcd's data dir: {what}"));
    let step = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|e| {
            err(format!(
                "rename {} to {}: {e}",
                from.display(),
                to.display()
            ))
        })
    };
    let staged_db = opts.db_path.with_extension("keel-import");
    let staged_wal = opts.wal_dir.with_extension("keel-import");
    let kept_snap = kept_snap_dir(opts);
    let kept_wal = opts.wal_dir.with_extension("etcd");
    crate::durable_dir::create_dir_all(&kept_snap, 0o700).map_err(|e| err(e.to_string()))?;
    if staged_db.exists() {
        if opts.db_path.exists() {
            step(&opts.db_path, &kept_snap.join("db"))?;
        }
        if let Ok(dir) = std::fs::read_dir(snap_dir(opts)) {
            for f in dir.flatten() {
                if f.path().extension().is_some_and(|x| x == "snap") {
                    step(&f.path(), &kept_snap.join(f.file_name()))?;
                }
            }
        }
        step(&staged_db, &opts.db_path)?;
    }
    if staged_wal.exists() {
        if opts.wal_dir.exists() {
            step(&opts.wal_dir, &kept_wal)?;
        }
        step(&staged_wal, &opts.wal_dir)?;
    }
    for dir in [
        snap_dir(opts),
        kept_snap.clone(),
        opts.wal_dir
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    ] {
        crate::durable_dir::sync_dir(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    }
    std::fs::remove_file(&marker).map_err(|e| err(format!("{}: {e}", marker.display())))?;
    Ok(())
}
