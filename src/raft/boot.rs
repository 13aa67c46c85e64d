//! Boot: open the member's WAL and db (or create them), check they agree, and build the
//! `RawNode` at the db's consistent index. A new member bootstraps its log with the
//! initial cluster's conf changes; a joining one takes its IDs from the peers; a restart
//! replays the WAL after its snapshot marker on top of the db.
//!
//! Runs on: the raft core, before its loop. Errors are `BootError`s naming what is wrong
//! and where (file, member IDs).

use super::*;

/// The WAL metadata of a Keel member: member ID and cluster ID, 8 bytes each, big-endian
/// (what etcd keeps in its WAL metadata too).
pub(super) fn encode_metadata(member_id: u64, cluster_id: u64) -> Vec<u8> {
    let mut m = member_id.to_be_bytes().to_vec();
    m.extend_from_slice(&cluster_id.to_be_bytes());
    m
}

pub(super) fn decode_metadata(m: &[u8]) -> Option<(u64, u64)> {
    if m.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(m[..8].try_into().ok()?),
        u64::from_be_bytes(m[8..].try_into().ok()?),
    ))
}

pub(super) fn to_wal_entry(e: &Entry) -> wal::Entry {
    wal::Entry {
        entry_type: e.get_entry_type() as u8,
        term: e.term,
        index: e.index,
        data: e.data.clone(),
        context: e.context.clone(),
    }
}

pub(super) fn from_wal_entry(e: wal::Entry) -> Entry {
    let mut out = Entry::default();
    out.set_entry_type(match e.entry_type {
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => EntryType::EntryNormal,
    });
    out.term = e.term;
    out.index = e.index;
    out.data = e.data;
    out.context = e.context;
    out
}

/// Keeps `splits` in the db's Meta tree as the next boot's hint (`shard::SPLITS_META_KEY`),
/// committed with the next db commit. A failure only loses the hint.
pub(super) fn keep_splits(store: &mut Store, splits: &[Vec<u8>]) {
    use crate::shard::{encode_splits, SPLITS_META_KEY};
    let db = store.backend_mut();
    let kept = db.get(TreeId::Meta, SPLITS_META_KEY).ok().flatten();
    let new = encode_splits(splits);
    if kept == new.as_deref() {
        return;
    }
    let done = match new {
        Some(bytes) => db.insert(TreeId::Meta, SPLITS_META_KEY, &bytes),
        None => db.remove(TreeId::Meta, SPLITS_META_KEY).map(|_| ()),
    };
    if let Err(e) = done {
        crate::runtime::log::warning("shard", &format!("cannot keep the split keys: {e}"));
    }
}

/// A number that differs between boots of this member: nanoseconds since the epoch.
pub(super) fn new_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl RaftCore {
    /// Opens the member's WAL and db (or creates them for a new member), checks they
    /// agree, and builds the `RawNode` at the db's consistent index.
    pub async fn open(opts: RaftOptions) -> Result<RaftCore, BootError> {
        Self::open_with(opts, |_| {}).await
    }

    /// [`RaftCore::open`], calling `on_db` with the db as it is opened, before the key
    /// index is rebuilt from it (the server starts building the other cores' replicas
    /// there, in parallel with that rebuild).
    pub async fn open_with(
        mut opts: RaftOptions,
        on_db: impl FnOnce(&crate::mvcc::db::Db),
    ) -> Result<RaftCore, BootError> {
        // A data dir `etcdctl snapshot restore` made for etcd: becomes Keel's first.
        restore::finish_import(&opts)?;
        if restore::is_bbolt_file(&opts.db_path) {
            restore::import_etcd_data_dir(&opts).await?;
        }
        let wal_exists = Wal::exists(&opts.wal_dir);
        let mut db_exists = opts.db_path.exists();
        if db_exists && !wal_exists {
            // A power cut during a first boot's creation of the db, before its sync, can
            // leave less than its two meta pages. No entry was ever applied to it (the WAL
            // comes after): it starts again from nothing.
            let len = std::fs::metadata(&opts.db_path).map_or(u64::MAX, |m| m.len());
            if len < 2 * crate::mvcc::db::PAGE_BYTES as u64 {
                crate::runtime::log::warning(
                    "etcdserver",
                    &format!(
                        "{} is {len} bytes, an unfinished creation by a first boot that never \
                         made its WAL: creating it again",
                        opts.db_path.display()
                    ),
                );
                std::fs::remove_file(&opts.db_path).map_err(|e| {
                    boot_err(format!("cannot remove {}: {e}", opts.db_path.display()))
                })?;
                db_exists = false;
            }
        }
        if let Some(parent) = opts.db_path.parent() {
            crate::durable_dir::create_dir_all(parent, 0o700)
                .map_err(|e| boot_err(format!("cannot create {}: {e}", parent.display())))?;
        }
        let store_opts = StoreOptions {
            max_txn_ops: opts.max_txn_ops,
            ..StoreOptions::default()
        };
        let db = crate::mvcc::db::Db::open(&opts.db_path, store_opts.db.clone())
            .await
            .map_err(|e| boot_err(format!("{}: {e}", opts.db_path.display())))?;
        on_db(&db);
        // The split keys, when known before the index is: configured, or the ones the
        // last run kept (for as many shards), which the replicas `on_db` started are
        // built for. Else chosen from the index once it is rebuilt.
        let known = crate::shard::boot_splits(&db, opts.shards, &opts.shard_splits);
        let (mut store, live) =
            Store::with_backend_split(db, store_opts, known.as_deref().unwrap_or_default())
                .map_err(|e| boot_err(format!("{}: {e}", opts.db_path.display())))?;
        // From here on every change goes to the rounds: the first one brings the replicas
        // built from the db as opened up to date.
        store.capture_changes(true);
        store
            .check_open()
            .map_err(|e| boot_err(format!("{}: {e}", opts.db_path.display())))?;
        if db_exists && !wal_exists {
            // A first boot that failed after creating the db and before its WAL (a disk
            // error, a crash) leaves a db that never applied an entry: boot as new on it.
            // A db that applied entries has lost its WAL: refuse.
            if store.consistent_index() != 0 {
                return Err(boot_err(format!(
                    "{} exists but there is no WAL in {}: refusing to start on a partial data dir",
                    opts.db_path.display(),
                    opts.wal_dir.display()
                )));
            }
            crate::runtime::log::warning(
                "etcdserver",
                &format!(
                    "{} was created by a first boot that never made its WAL: booting as new",
                    opts.db_path.display()
                ),
            );
        }
        let mut seed_members = Vec::new();
        let (wal, log) = if wal_exists {
            Self::recover(&mut opts, &mut store).await?
        } else {
            if opts.join_existing {
                seed_members = Self::join(&mut opts).await?;
            } else {
                Self::check_not_bootstrapped(&opts).await?;
            }
            Self::bootstrap(&opts).await?
        };
        let applied = store.consistent_index();
        let config = ::raft::Config {
            id: opts.member_id,
            heartbeat_tick: 1,
            election_tick: (opts.election_timeout_ms / opts.heartbeat_interval_ms.max(1)).max(2)
                as usize,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node =
            RawNode::new(&config, log, &logger).map_err(|e| boot_err(format!("raft: {e}")))?;
        node.mut_store()
            .set_snapshot_source(applied, store.consistent_term());
        let snapshot_index = node.store().first_index_raw().saturating_sub(1);
        let now = Instant::now();
        let splits = match &known {
            Some(s) => s.clone(),
            None => crate::shard::split_keys(&store.index(), opts.shards, &opts.shard_splits),
        };
        keep_splits(&mut store, &splits);
        let auth = auth::AuthDuty::load(&store)?;
        let alarms = alarm::AlarmDuty::load(&store)?;
        let rebalance = rebalance::Rebalance::new(
            opts.shard_rebalance && opts.shard_splits.is_empty(),
            opts.shards,
            &splits,
            &store.index(),
            known.is_some().then_some(live.as_slice()),
        );
        Ok(RaftCore {
            auth,
            alarms,
            defrag: Default::default(),
            auto_compact: autocompact::AutoCompactDuty::new(opts.auto_compaction),
            corrupt: Default::default(),
            compaction: Default::default(),
            rebalance,
            node,
            store,
            wal: persist::Persister::start(wal, opts.idle_spin),
            held: Default::default(),
            reads: ReadQueue {
                waiting: Vec::new(),
                requested: HashMap::new(),
                indexed: Vec::new(),
                next_ctx: 1,
            },
            applied_index: applied,
            snapshot_index,
            db_committed_index: applied,
            last_db_commit: now,
            last_db_writeback: now,
            db_writeback_running: Default::default(),
            next_tick: now + Duration::from_millis(opts.heartbeat_interval_ms),
            incarnation: new_incarnation(),
            round: Round {
                replies: Vec::new(),
                sent_index: None,
                sent_leader: (0, false),
                sent_db_bytes: 0,
                refresh: false,
                splits: std::sync::Arc::new(splits),
            },
            leases: LeaseDuty {
                lessor: Lessor::with_checkpoints(opts.lease_checkpoint_interval),
                round_revoked: Vec::new(),
                checkpoints_pending: Vec::new(),
                last_expiry_check: now,
            },
            writes: Writes {
                held: VecDeque::new(),
                waiting: HashMap::new(),
                deadlines: VecDeque::new(),
            },
            known_leader: 0,
            transport: None,
            seed_members,
            forwards: cluster::Forwards::default(),
            move_leader: None,
            publish: Publish {
                done: false,
                proposed_at: None,
                on_done: None,
            },
            exit: None,
            installed_snapshot: None,
            // etcd's request timeout: 5 s plus two election timeouts.
            request_timeout: Duration::from_millis(5000 + 2 * opts.election_timeout_ms),
            opts,
        })
    }

    /// A new member: a WAL whose first entries add every initial member (one ConfChange
    /// each, committed at term 1, as etcd bootstraps), so replay rebuilds the membership.
    pub(super) async fn bootstrap(opts: &RaftOptions) -> Result<(Wal, LogStore), BootError> {
        let (wal, entries, hs) = restore::write_bootstrap_wal(
            &opts.wal_dir,
            opts.member_id,
            opts.cluster_id,
            &opts.initial_members,
        )
        .await?;
        let mut log = LogStore::new(hs, ConfState::default(), 0, 0);
        log.append(&entries);
        Ok((wal, log))
    }

    /// A new data dir with `--initial-cluster-state new` while the cluster already runs
    /// with this member in it (its data dir was wiped, say): refused, as etcd refuses it,
    /// because starting over would forget the votes it cast. One quick ask of each peer;
    /// silence (a cluster starting up) lets the boot go on.
    pub(super) async fn check_not_bootstrapped(opts: &RaftOptions) -> Result<(), BootError> {
        let mine = &opts.advertise_peer_urls;
        let others: Vec<Vec<crate::config::Url>> = opts
            .initial_members
            .iter()
            .filter(|m| m.id != opts.member_id && !m.peer_urls.iter().any(|u| mine.contains(u)))
            .map(|m| transport::peer_addrs(&m.peer_urls))
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let connector = opts
            .peer_tls
            .as_ref()
            .map(crate::tls::stream::Connector::new);
        let Ok(info) = transport::fetch_cluster_info(&others, 1, connector.as_ref()).await else {
            return Ok(());
        };
        let started = info
            .members
            .iter()
            .any(|m| m.id == opts.member_id && !m.client_urls.is_empty());
        if started && info.cluster_id == opts.cluster_id {
            return Err(boot_err(format!(
                "member {:x} has already been bootstrapped",
                opts.member_id
            )));
        }
        Ok(())
    }

    /// A new member of a running cluster (`--initial-cluster-state existing`): its member
    /// and cluster IDs come from the peers, which must already list its peer URLs (added
    /// with MemberAdd); it starts with an empty log and learns everything from the leader.
    pub(super) async fn join(opts: &mut RaftOptions) -> Result<Vec<MemberInfo>, BootError> {
        let mine: Vec<String> = opts.advertise_peer_urls.clone();
        let others: Vec<Vec<crate::config::Url>> = opts
            .initial_members
            .iter()
            .filter(|m| !m.peer_urls.iter().any(|u| mine.contains(u)))
            .map(|m| transport::peer_addrs(&m.peer_urls))
            .collect();
        let connector = opts
            .peer_tls
            .as_ref()
            .map(crate::tls::stream::Connector::new);
        let info = transport::fetch_cluster_info(&others, 30, connector.as_ref())
            .await
            .map_err(|e| boot_err(format!("cannot join the cluster: {e}")))?;
        let mut wanted = mine.clone();
        wanted.sort();
        let me = info.members.iter().find(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls == wanted
        });
        let Some(me) = me else {
            return Err(boot_err(format!(
                "error validating peerURLs {{ClusterID:{:x} Members:[{}]}}: PeerURLs: no match \
                 found for existing member (add it with `etcdctl member add` first)",
                info.cluster_id,
                info.members
                    .iter()
                    .map(|m| format!("{:x}={}", m.id, m.peer_urls.join(",")))
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        };
        opts.member_id = me.id;
        opts.cluster_id = info.cluster_id;
        // The membership arrives with the log (or a snapshot) from the leader; until then
        // the transport knows the peers from their answer.
        opts.initial_members.clear();
        Ok(info.members.iter().map(cluster::member_info).collect())
    }

    /// An existing member: replay the WAL after its snapshot marker on top of the db.
    pub(super) async fn recover(
        opts: &mut RaftOptions,
        store: &mut Store,
    ) -> Result<(Wal, LogStore), BootError> {
        let (mut wal, rec) = Wal::open(&opts.wal_dir, WalOptions::default())
            .await
            .map_err(|e| boot_err(format!("{}: {e}", opts.wal_dir.display())))?;
        if let Some((file, offset, bytes)) = &rec.truncated_tail {
            eprintln!(
                "keel: WAL torn tail repaired: {bytes} bytes zeroed at {}:{offset}",
                file.display()
            );
        }
        match decode_metadata(&rec.metadata) {
            // A restarted member is who its WAL says (a member that joined got its ID
            // from the cluster, not from the flags).
            Some((member, cluster)) if member == opts.member_id || opts.join_existing => {
                opts.member_id = member;
                opts.cluster_id = cluster;
            }
            Some((member, _)) => {
                return Err(boot_err(format!(
                    "{}: the WAL belongs to member {member:x}, not {:x} (wrong --name or \
                     --initial-cluster for this data dir?)",
                    opts.wal_dir.display(),
                    opts.member_id
                )))
            }
            None => {
                return Err(boot_err(format!(
                    "{}: WAL metadata is not a Keel member's",
                    opts.wal_dir.display()
                )))
            }
        }
        let applied = store.consistent_index();
        let last_wal_index = rec
            .entries
            .last()
            .map(|e| e.index)
            .unwrap_or(rec.snapshot.index);
        if applied < rec.snapshot.index {
            return Err(boot_err(format!(
                "{}: db applied index {applied} is behind the WAL snapshot at {}",
                opts.db_path.display(),
                rec.snapshot.index
            )));
        }
        // A db ahead of the WAL is a snapshot from the leader that was installed before
        // its WAL marker was written: the log starts after it.
        let db_ahead = applied > last_wal_index;
        if db_ahead {
            crate::runtime::log::notice(
                "etcdserver",
                &format!(
                    "{}: db applied index {applied} is past the WAL's last entry \
                     {last_wal_index}: starting from the installed snapshot",
                    opts.db_path.display()
                ),
            );
            wal.save_snapshot_marker(wal::SnapshotMarker {
                index: applied,
                term: store.consistent_term(),
            });
            wal.sync()
                .await
                .map_err(|e| boot_err(format!("{}: {e}", opts.wal_dir.display())))?;
        }
        let conf_state = match store
            .backend()
            .get(TreeId::Meta, META_CONF_STATE_KEY)
            .map_err(boot_err)?
        {
            Some(bytes) => ConfState::parse_from_bytes(bytes)
                .map_err(|e| boot_err(format!("{}: conf state: {e}", opts.db_path.display())))?,
            None => ConfState::default(),
        };
        // Applying implies committed; the commit in the hard state may lag (it is written
        // lazily with the next batch), so raise it to what the db has applied.
        let hs = HardState {
            term: rec.hard_state.term.max(store.consistent_term()),
            vote: rec.hard_state.vote,
            commit: rec.hard_state.commit.max(applied),
            ..Default::default()
        };
        let (snapshot_index, snapshot_term, mut entries) = if db_ahead {
            (applied, store.consistent_term(), Vec::new())
        } else {
            let term = if rec.snapshot.index == 0 {
                0
            } else {
                rec.snapshot.term
            };
            let entries: Vec<Entry> = rec.entries.into_iter().map(from_wal_entry).collect();
            (rec.snapshot.index, term, entries)
        };
        let mut hs = hs;
        if opts.force_new_cluster {
            hs = Self::force_new_cluster(opts, &mut wal, hs, &conf_state, applied, &mut entries)
                .await?;
        }
        let mut log = LogStore::new(hs, conf_state, snapshot_index, snapshot_term);
        log.append(&entries);
        Ok((wal, log))
    }

    /// `--force-new-cluster` at a restart (etcd's restartAsStandaloneNode): the entries
    /// past the commit index are dropped (they may never have been committed), and conf
    /// changes removing every other member of the membership as of the commit (and adding
    /// this one, if it is missing) are appended after it as committed entries of the
    /// current term, in the WAL with the hard state that commits them. Raft then applies
    /// them like any other: the other members' records leave the Member tree, this member
    /// is the only voter and elects itself, and a later restart needs no flag.
    async fn force_new_cluster(
        opts: &RaftOptions,
        wal: &mut Wal,
        mut hs: HardState,
        conf_state: &ConfState,
        applied: u64,
        entries: &mut Vec<Entry>,
    ) -> Result<HardState, BootError> {
        let me = opts.member_id;
        crate::runtime::log::notice(
            "etcdserver",
            &format!(
                "forcing restart of member {me:x} in cluster {:x} at commit index {}",
                opts.cluster_id, hs.commit
            ),
        );
        let uncommitted = entries.iter().filter(|e| e.index > hs.commit).count();
        if uncommitted > 0 {
            crate::runtime::log::info(
                "etcdserver",
                &format!("discarding {uncommitted} uncommitted WAL entries"),
            );
            entries.retain(|e| e.index <= hs.commit);
        }
        // The membership as of the commit: the db's (as of `applied`), then the conf
        // changes committed after it.
        let mut ids: std::collections::BTreeSet<u64> = conf_state
            .voters
            .iter()
            .chain(&conf_state.learners)
            .copied()
            .collect();
        for e in entries
            .iter()
            .filter(|e| e.index > applied && e.get_entry_type() == EntryType::EntryConfChange)
        {
            let cc = ConfChange::parse_from_bytes(&e.data)
                .map_err(|err| boot_err(format!("raft entry {}: conf change: {err}", e.index)))?;
            match cc.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    ids.insert(cc.node_id);
                }
                ConfChangeType::RemoveNode => {
                    ids.remove(&cc.node_id);
                }
            }
        }
        let mut changes: Vec<ConfChange> = ids
            .iter()
            .filter(|id| **id != me)
            .map(|id| {
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = *id;
                cc
            })
            .collect();
        if !ids.contains(&me) {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = me;
            let record = MemberRecord {
                id: me,
                name: opts
                    .publish
                    .as_ref()
                    .map(|p| p.0.clone())
                    .unwrap_or_default(),
                peer_urls: opts.advertise_peer_urls.clone(),
                client_urls: Vec::new(),
                is_learner: false,
            };
            cc.context = record.encode_to_vec().into();
            changes.push(cc);
        }
        if changes.is_empty() {
            return Ok(hs);
        }
        let mut appended = Vec::with_capacity(changes.len());
        for cc in changes {
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChange);
            e.term = hs.term;
            e.index = hs.commit + 1 + appended.len() as u64;
            e.data = cc.write_to_bytes().expect("ConfChange encodes").into();
            appended.push(e);
        }
        hs.commit = appended.last().map_or(hs.commit, |e| e.index);
        // Written over whatever uncommitted entries the WAL held past the old commit.
        restore::append_synced(wal, &appended, &hs, &opts.wal_dir).await?;
        entries.extend(appended);
        Ok(hs)
    }
}
