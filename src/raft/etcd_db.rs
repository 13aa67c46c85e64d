//! Keel's db ↔ etcd's bbolt db: the snapshot a Keel member streams (Maintenance.Snapshot)
//! is a bbolt file in etcd 3.4's bucket layout, and a bbolt file made by etcd (or by Keel)
//! restores into a Keel db. That is the migration path both ways.
//!
//! Runs on: any core for the export (it reads a pinned `ReadSnapshot`, never the raft
//! core's working state); the offline `keel snapshot restore` and boot-time import for
//! the import.
//!
//! Buckets (etcd 3.4, sorted by name as bbolt keeps them):
//! ```text
//!  alarm            AlarmMember protobuf → empty          Meta tree "alarm/…"
//!  auth             "authEnabled" → [0|1], "authRevision" → 8 B BE     Auth tree
//!  authRoles        name → authpb.Role                     Auth tree "role/…"
//!  authUsers        name → authpb.User                     Auth tree "user/…"
//!  cluster          "clusterVersion" → "3.4.0"
//!  key              main(8 B BE) '_' sub(8 B BE) ['t'] → mvccpb.KeyValue   Revision tree
//!  lease            ID (8 B BE) → leasepb.Lease {ID, TTL, RemainingTTL}    Lease tree
//!  members          ID in hex → etcd's member JSON         Member tree
//!  members_removed  ID in hex → "removed"                  Meta tree "removed/…"
//!  meta             "consistent_index" → 8 B BE, "scheduledCompactRev" and
//!                   "finishedCompactRev" → 17-byte revision (when compacted)
//! ```
//! The `key` and `lease` buckets are streamed (resumed by key, chunk by chunk); the others
//! are small and read whole. The export is two passes over the same pinned snapshot (the
//! bbolt writer measures, then emits), so its memory is one chunk plus the first key of
//! every leaf page, whatever the db's size.

use super::alarm::{alarm_key, decode_alarm_key};
use crate::bbolt;
use crate::mvcc::db::{self, AppMeta, ReadSnapshot, TreeId};
use crate::mvcc::kv::{self, RecordKind};
use crate::mvcc::Revision;
use crate::pb::keel::internal::Member as MemberRecord;
use prost::Message;

/// The cluster version a Keel snapshot says it was made by (etcd 3.4's API).
pub const CLUSTER_VERSION: &str = "3.4.0";

/// The chunk size etcd streams its snapshot in.
pub const CHUNK_BYTES: usize = 32 * 1024;

/// etcd's bucket names, sorted as bbolt stores them.
pub const BUCKETS: [&[u8]; 10] = [
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"cluster",
    b"key",
    b"lease",
    b"members",
    b"members_removed",
    b"meta",
];
const B_KEY: usize = 5;
const B_LEASE: usize = 6;

/// etcd's leasepb.Lease.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeasePb {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

#[derive(Debug)]
pub enum Error {
    Db(db::Error),
    Bbolt(bbolt::Error),
    /// A record of the source that does not convert (what and where).
    Bad(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Db(e) => write!(f, "{e}"),
            Error::Bbolt(e) => write!(f, "{e}"),
            Error::Bad(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<db::Error> for Error {
    fn from(e: db::Error) -> Error {
        Error::Db(e)
    }
}

impl From<bbolt::Error> for Error {
    fn from(e: bbolt::Error) -> Error {
        Error::Bbolt(e)
    }
}

/// etcd's 17-byte revision key (18 with the tombstone mark).
pub fn etcd_revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&(rev.main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Parses etcd's revision key: (revision, tombstone).
pub fn parse_etcd_revision_key(k: &[u8]) -> Option<(Revision, bool)> {
    if (k.len() != 17 && k.len() != 18) || k[8] != b'_' {
        return None;
    }
    let tombstone = match k.get(17) {
        None => false,
        Some(b't') => true,
        Some(_) => return None,
    };
    let main = u64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?);
    if main > i64::MAX as u64 || sub > i64::MAX as u64 {
        return None;
    }
    Some((Revision::new(main as i64, sub as i64), tombstone))
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",")
    )
}

/// etcd's member record in its `members` bucket (membership.Member as JSON).
pub fn member_json(m: &MemberRecord) -> String {
    let mut o = format!("{{\"id\":{},\"peerURLs\":{}", m.id, json_list(&m.peer_urls));
    if m.is_learner {
        o.push_str(",\"isLearner\":true");
    }
    if !m.name.is_empty() {
        o.push_str(&format!(",\"name\":{}", json_str(&m.name)));
    }
    if !m.client_urls.is_empty() {
        o.push_str(&format!(",\"clientURLs\":{}", json_list(&m.client_urls)));
    }
    o.push('}');
    o
}

/// The small buckets, read whole and sorted (every bucket but `key` and `lease`).
fn small_buckets(snap: &ReadSnapshot) -> Result<Vec<Vec<(Vec<u8>, Vec<u8>)>>, Error> {
    let mut out: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); BUCKETS.len()];
    let app: AppMeta = snap.app_meta();
    // alarm, members_removed: Meta tree records.
    for r in snap.range(TreeId::Meta, b"", b"") {
        let (k, _) = r?;
        if let Some(a) = decode_alarm_key(k) {
            let pb = crate::pb::etcdserverpb::AlarmMember {
                member_id: a.member,
                alarm: a.kind,
            };
            out[0].push((pb.encode_to_vec(), Vec::new()));
        } else if let Some(id) = super::cluster::removed_id(k) {
            out[8].push((format!("{id:x}").into_bytes(), b"removed".to_vec()));
        }
    }
    // auth, authRoles, authUsers.
    let mut enabled = false;
    let mut revision = 0u64;
    for r in snap.range(TreeId::Auth, b"", b"") {
        let (k, v) = r?;
        if k == crate::auth::ops::KEY_ENABLED {
            enabled = v == [1];
        } else if k == crate::auth::ops::KEY_REVISION {
            revision = v
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Bad("auth revision record is not 8 bytes".into()))?;
        } else if let Some(name) = k.strip_prefix(crate::auth::ops::ROLE_PREFIX) {
            out[2].push((name.to_vec(), v.to_vec()));
        } else if let Some(name) = k.strip_prefix(crate::auth::ops::USER_PREFIX) {
            out[3].push((name.to_vec(), v.to_vec()));
        }
    }
    out[1].push((b"authEnabled".to_vec(), vec![enabled as u8]));
    out[1].push((b"authRevision".to_vec(), revision.to_be_bytes().to_vec()));
    // cluster.
    out[4].push((
        b"clusterVersion".to_vec(),
        CLUSTER_VERSION.as_bytes().to_vec(),
    ));
    // members.
    for r in snap.range(TreeId::Member, b"", b"") {
        let (_, v) = r?;
        let m = MemberRecord::decode(v).map_err(|e| Error::Bad(format!("member record: {e}")))?;
        out[7].push((
            format!("{:x}", m.id).into_bytes(),
            member_json(&m).into_bytes(),
        ));
    }
    // meta.
    out[9].push((
        b"consistent_index".to_vec(),
        app.consistent_index.to_be_bytes().to_vec(),
    ));
    if app.compact_revision > 0 {
        let rev = |main| etcd_revision_key(Revision::new(main, 0), false);
        out[9].push((b"scheduledCompactRev".to_vec(), rev(app.compact_revision)));
        // A sweep still pending leaves records the compaction drops: etcd (and Keel's
        // import) finish a compaction whose finished mark is behind the scheduled one.
        let finished = match app.compact_sweep {
            0 => app.compact_revision,
            _ => app.compact_revision - 1,
        };
        if finished > 0 {
            out[9].push((b"finishedCompactRev".to_vec(), rev(finished)));
        }
    }
    for b in &mut out {
        b.sort();
    }
    Ok(out)
}

/// Where a streamed bucket resumes: after this Keel tree key.
#[derive(Clone, Debug, Default)]
struct Resume {
    after: Option<Vec<u8>>,
}

fn next_key(k: &[u8]) -> Vec<u8> {
    let mut n = k.to_vec();
    n.push(0);
    n
}

/// Feeds up to `budget` entries of a streamed bucket (from `resume`) to `f` as etcd's
/// key and value; returns whether the bucket is done.
fn stream_bucket(
    snap: &ReadSnapshot,
    bucket: usize,
    resume: &mut Resume,
    budget_bytes: usize,
    f: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), Error>,
) -> Result<bool, Error> {
    let start = resume.after.as_deref().map(next_key).unwrap_or_default();
    let tree = if bucket == B_KEY {
        TreeId::Revision
    } else {
        TreeId::Lease
    };
    let mut fed = 0usize;
    let mut val_buf = Vec::new();
    for r in snap.range(tree, &start, b"") {
        let (k, v) = r?;
        if bucket == B_KEY {
            let rev = Revision::decode(k)
                .ok_or_else(|| Error::Bad(format!("revision key {k:?} is not 16 bytes")))?;
            let (kind, kv_bytes) = kv::split_record(v)
                .map_err(|e| Error::Bad(format!("record at revision {rev:?}: {e}")))?;
            let key = etcd_revision_key(rev, kind == RecordKind::Tombstone);
            f(&key, kv_bytes)?;
            fed += key.len() + kv_bytes.len() + 16;
        } else {
            let (id, ttl, remaining) = crate::mvcc::lease::decode_record(k, v)
                .ok_or_else(|| Error::Bad(format!("lease record {k:?}")))?;
            val_buf.clear();
            LeasePb {
                id,
                ttl,
                remaining_ttl: remaining,
            }
            .encode(&mut val_buf)
            .expect("a Vec grows");
            f(k, &val_buf)?;
            fed += k.len() + val_buf.len() + 16;
        }
        if fed >= budget_bytes {
            resume.after = Some(k.to_vec());
            return Ok(false);
        }
    }
    Ok(true)
}

/// A bbolt file in etcd's layout, made from one pinned snapshot and handed out in chunks.
/// Both passes run in slices so a caller on an executor can yield between them: first
/// `measure_some` until it answers true (pass 1), then `next_chunk` until `None`.
pub struct Export {
    snap: ReadSnapshot,
    small: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    plan: Option<bbolt::Plan>,
    layout_total: u64,
    head: Option<Vec<u8>>,
    leaves: Option<bbolt::LeafWriter>,
    bucket: usize,
    small_at: usize,
    resume: Resume,
    done: bool,
}

/// How many entry bytes one `measure_some` call reads.
const MEASURE_SLICE_BYTES: usize = 128 << 10;

impl Export {
    /// Reads the small buckets; the big ones are measured by `measure_some`.
    pub fn new(snap: ReadSnapshot) -> Result<Export, Error> {
        let small = small_buckets(&snap)?;
        Ok(Export {
            plan: Some(bbolt::Plan::new(&BUCKETS)),
            layout_total: 0,
            leaves: None,
            head: None,
            snap,
            small,
            bucket: 0,
            small_at: 0,
            resume: Resume::default(),
            done: false,
        })
    }

    /// Pass 1, a slice at a time: true once the whole snapshot is measured and the
    /// layout is known.
    pub fn measure_some(&mut self) -> Result<bool, Error> {
        let Some(plan) = self.plan.as_mut() else {
            return Ok(true);
        };
        let mut fed = 0usize;
        while self.bucket < BUCKETS.len() && fed < MEASURE_SLICE_BYTES {
            let b = self.bucket;
            if b == B_KEY || b == B_LEASE {
                let finished = stream_bucket(
                    &self.snap,
                    b,
                    &mut self.resume,
                    MEASURE_SLICE_BYTES - fed,
                    &mut |k, v| {
                        plan.measure(b, k, v);
                        fed += k.len() + v.len() + 16;
                        Ok(())
                    },
                )?;
                if !finished {
                    return Ok(false);
                }
                self.resume = Resume::default();
            } else {
                for (k, v) in &self.small[b] {
                    plan.measure(b, k, v);
                    fed += k.len() + v.len() + 16;
                }
            }
            self.bucket += 1;
        }
        if self.bucket < BUCKETS.len() {
            return Ok(false);
        }
        let layout = self.plan.take().expect("measuring").finish();
        let mut head = Vec::with_capacity(layout.head_bytes() as usize);
        layout.write_head(&mut head);
        self.layout_total = layout.total_bytes();
        self.leaves = Some(layout.leaves());
        self.head = Some(head);
        self.bucket = 0;
        Ok(true)
    }

    /// The file's exact length (once measured).
    pub fn total_bytes(&self) -> u64 {
        self.layout_total
    }

    /// The state the file holds.
    pub fn app_meta(&self) -> AppMeta {
        self.snap.app_meta()
    }

    /// The next part of the file (at least `CHUNK_BYTES` unless it is the last); `None`
    /// once the whole file was handed out. Measures first if `measure_some` was not run
    /// to the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        while !self.measure_some()? {}
        if self.done {
            return Ok(None);
        }
        let mut out = self.head.take().unwrap_or_default();
        let leaves = self.leaves.as_mut().expect("leaves until done");
        while out.len() < CHUNK_BYTES && self.bucket < BUCKETS.len() {
            let b = self.bucket;
            if b == B_KEY || b == B_LEASE {
                let budget = CHUNK_BYTES - out.len();
                let finished =
                    stream_bucket(&self.snap, b, &mut self.resume, budget, &mut |k, v| {
                        leaves.push(b, k, v, &mut out)?;
                        Ok(())
                    })?;
                if finished {
                    self.bucket += 1;
                    self.resume = Resume::default();
                }
            } else {
                let entries = &self.small[b];
                while self.small_at < entries.len() && out.len() < CHUNK_BYTES {
                    let (k, v) = &entries[self.small_at];
                    leaves.push(b, k, v, &mut out)?;
                    self.small_at += 1;
                }
                if self.small_at == entries.len() {
                    self.bucket += 1;
                    self.small_at = 0;
                }
            }
        }
        if self.bucket == BUCKETS.len() {
            self.leaves
                .take()
                .expect("leaves until done")
                .finish(&mut out)?;
            self.done = true;
        }
        Ok(Some(out))
    }

    /// The whole file (tests and small dbs).
    pub fn to_vec(mut self) -> Result<Vec<u8>, Error> {
        let mut all = Vec::new();
        while let Some(c) = self.next_chunk()? {
            all.extend_from_slice(&c);
        }
        Ok(all)
    }
}

/// What an import brought into a Keel db.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// The store's revision and compaction mark (etcd's: the newest revision key, and
    /// `finishedCompactRev`).
    pub revision: i64,
    pub compact_revision: i64,
    /// Records of the `key` bucket (every revision, tombstones too).
    pub revisions: u64,
    pub leases: u64,
    pub users: u64,
    pub roles: u64,
    pub alarms: u64,
    pub auth_enabled: bool,
}

/// Writes the content of an etcd bbolt db (made by etcd or by Keel's `Export`) into an
/// empty Keel db: revisions, leases, auth, alarms and the compaction mark. Membership is
/// not imported (a restore writes the new cluster's), nor the consistent index (the
/// restored member's log starts over). The caller commits.
pub fn import(reader: &bbolt::Reader<'_>, db: &mut db::Db) -> Result<Imported, Error> {
    let mut out = Imported::default();
    for tree in TreeId::ALL {
        if !db.is_empty(tree) {
            return Err(Error::Bad(format!(
                "the db to import into is not empty (tree {tree:?})"
            )));
        }
    }
    let names = reader.bucket_names()?;
    if !names.iter().any(|n| n == b"key") {
        return Err(Error::Bad(
            "not an etcd db: it has no \"key\" bucket".into(),
        ));
    }
    let mut record = Vec::new();
    reader.for_each(b"key", &mut |k, v| {
        let (rev, tombstone) = parse_etcd_revision_key(k)
            .ok_or_else(|| bbolt::Error::Invalid(format!("bucket key: {k:?} is not a revision")))?;
        let kv = kv::decode_key_value_bytes(v).map_err(|e| {
            bbolt::Error::Invalid(format!("bucket key: revision {}: {e}", rev.main))
        })?;
        record.clear();
        if tombstone {
            kv::encode_tombstone_record(&kv.key, rev.main, &mut record);
        } else {
            kv::encode_put_record(&kv, &mut record);
        }
        db.insert(TreeId::Revision, &rev.encode(), &record)
            .map_err(|e| bbolt::Error::Invalid(format!("keel db: {e}")))?;
        out.revisions += 1;
        out.revision = out.revision.max(rev.main);
        Ok(())
    })?;
    reader.for_each(b"lease", &mut |_, v| {
        let l =
            LeasePb::decode(v).map_err(|e| bbolt::Error::Invalid(format!("bucket lease: {e}")))?;
        let rec = crate::mvcc::lease::encode_record(l.ttl, l.remaining_ttl);
        db.insert(TreeId::Lease, &crate::mvcc::lease::lease_key(l.id), &rec)
            .map_err(|e| bbolt::Error::Invalid(format!("keel db: {e}")))?;
        out.leases += 1;
        Ok(())
    })?;
    let mut auth: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    reader.for_each(b"auth", &mut |k, v| {
        if k == b"authEnabled" {
            out.auth_enabled = v == [1];
            auth.push((
                crate::auth::ops::KEY_ENABLED.to_vec(),
                vec![out.auth_enabled as u8],
            ));
        } else if k == b"authRevision" {
            auth.push((crate::auth::ops::KEY_REVISION.to_vec(), v.to_vec()));
        }
        Ok(())
    })?;
    reader.for_each(b"authUsers", &mut |k, v| {
        auth.push(([crate::auth::ops::USER_PREFIX, k].concat(), v.to_vec()));
        out.users += 1;
        Ok(())
    })?;
    reader.for_each(b"authRoles", &mut |k, v| {
        auth.push(([crate::auth::ops::ROLE_PREFIX, k].concat(), v.to_vec()));
        out.roles += 1;
        Ok(())
    })?;
    // Checked the way boot reads it, so a restore never leaves a db that refuses to boot.
    crate::auth::AuthState::from_records(auth.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
        .map_err(|e| Error::Bad(format!("auth buckets: {e}")))?;
    for (k, v) in &auth {
        db.insert(TreeId::Auth, k, v)?;
    }
    let mut alarms = Vec::new();
    reader.for_each(b"alarm", &mut |k, _| {
        let a = crate::pb::etcdserverpb::AlarmMember::decode(k)
            .map_err(|e| bbolt::Error::Invalid(format!("bucket alarm: {e}")))?;
        alarms.push(crate::mesh::Alarm {
            member: a.member_id,
            kind: a.alarm,
        });
        Ok(())
    })?;
    for a in alarms {
        db.insert(TreeId::Meta, &alarm_key(a), &[])?;
        out.alarms += 1;
    }
    let (mut finished, mut scheduled) = (0i64, 0i64);
    reader.for_each(b"meta", &mut |k, v| {
        let mark = match k {
            b"finishedCompactRev" => &mut finished,
            b"scheduledCompactRev" => &mut scheduled,
            _ => return Ok(()),
        };
        let (rev, _) = parse_etcd_revision_key(v).ok_or_else(|| {
            bbolt::Error::Invalid(format!(
                "meta {} is not a revision",
                String::from_utf8_lossy(k)
            ))
        })?;
        *mark = rev.main;
        Ok(())
    })?;
    // A compaction scheduled but not finished (etcd stopped mid-way, or a Keel export
    // taken mid-sweep) is finished here as etcd's restore does: by the store's sweep.
    out.compact_revision = finished.max(scheduled);
    out.revision = out.revision.max(out.compact_revision);
    db.set_app_meta(AppMeta {
        consistent_index: 0,
        consistent_term: 0,
        current_revision: out.revision,
        compact_revision: out.compact_revision,
        compact_sweep: if scheduled > finished { 1 } else { 0 },
        key_count: 0,
    });
    Ok(out)
}
