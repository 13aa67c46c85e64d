//! What an etcd 3.4 data dir's WAL (`member/wal/*.wal`) says about the cluster: the
//! member's and cluster's IDs, the members after every committed conf change, the last
//! HardState, the last entry index and the last snapshot record.
//!
//! Runs once, at boot, on the thread that boots Keel on a data dir made by etcd (or by
//! `etcdctl snapshot restore`), before any executor starts: it reads files with blocking
//! `std::fs` and keeps no state. A leaf module: it names no other `crate::` module.
//!
//! # The format (etcd v3.4 `wal/encoder.go`, `wal/decoder.go`, `wal/walpb/record.proto`)
//!
//! Files are named `%016x-%016x.wal` (sequence, index of the first entry they may hold)
//! and are read in name order, sequences consecutive. Each file is a run of frames:
//!
//! ```text
//!  0        8                     8+n          8+n+pad  (8-byte aligned)
//!  ┌────────┬─────────────────────┬────────────┐
//!  │ length │ walpb.Record (n B)  │ pad zeros  │  next frame …
//!  └────────┴─────────────────────┴────────────┘
//!  length: u64 little-endian; bits 0..56 = n; if bit 63 is set, bits 56..59 = pad.
//!  A zero length word ends the file (preallocated space follows).
//!  walpb.Record { type int64 = 1, crc uint32 = 2, data bytes = 3 }
//!    1 metadata  data = etcdserverpb.Metadata { NodeID uint64 = 1, ClusterID uint64 = 2 }
//!    2 entry     data = raftpb.Entry { Type = 1, Term = 2, Index = 3, Data = 4 }
//!    3 state     data = raftpb.HardState { term = 1, vote = 2, commit = 3 }
//!    4 crc       crc  = the running CRC so far (starts each file; resets the chain)
//!    5 snapshot  data = walpb.Snapshot { index = 1, term = 2 }
//! ```
//!
//! CRCs are checked as etcd's decoder checks them: a crc32c (Castagnoli) chained over the
//! `data` of every record that is not a crc record, compared with each record's `crc`; a
//! crc record must equal the running value (unless that is still 0) and then replaces it.
//!
//! # Membership (etcd v3.4 `etcdserver/server.go` applyConfChange, `membership/cluster.go`)
//!
//! Entries replace earlier ones with the same or a higher index (a new leader's log wins),
//! as etcd's `ReadAll` does. Then the entries up to the last HardState's `commit` are
//! applied in order, as etcd applies them (uncommitted ones may yet be replaced, so they
//! change nothing here):
//! - a conf change (raftpb.ConfChange; its `context` is membership.Member's JSON,
//!   `{"id":…,"peerURLs":[…],"name":"…","clientURLs":[…],"isLearner":true,"isPromote":true}`):
//!   AddNode / AddLearnerNode adds the member, or promotes an existing learner when
//!   `isPromote` is set or the type is AddNode; RemoveNode removes; UpdateNode replaces the
//!   peer URLs and learner flag. Changes etcd's validation rejects (an ID that exists, was
//!   removed or is unknown; a peer URL another member has; a second learner) change
//!   nothing, as in etcd.
//! - the v2 request `PUT /0/members/<hex id>/attributes` a member proposes when it starts
//!   (etcdserverpb.Request, `Val` = `{"name":…,"clientURLs":[…]}`) sets that member's name
//!   and client URLs. Every other normal entry changes nothing here.
//!
//! Only what the WAL holds is seen: if etcd purged the files before its last raft snapshot,
//! the conf changes in them are gone and `members` misses what they did (the raft snapshot
//! in `member/snap` and the db's `members` bucket hold it). A restored or young data dir
//! keeps every file from index 0.
//!
//! # Damage
//! A torn tail of the last file (a short length word or frame, or a record that does not
//! decode or check where a 512-byte sector of it is all zeros) ends the read quietly, as
//! etcd does. Anything else (a short frame in an earlier file, a CRC mismatch, an
//! undecodable record or entry, a conflicting metadata record, a conf change etcd could not
//! apply) is [`Error::Corrupt`] naming the file and the frame's offset. Malformed input
//! never panics.
//!
//! etcd's raft messages are decoded with hand-declared prost messages, not raft-rs's
//! `eraftpb`: its `ConfChangeType` numbers differ from etcd's (etcd: UpdateNode = 2,
//! AddLearnerNode = 3; raft-rs: AddLearnerNode = 2), and a proto3 enum would read an
//! unknown type as AddNode.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One member of the cluster, as etcd's membership.Member holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// What the WAL says (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdWal {
    /// From the metadata record: this member's ID.
    pub member_id: u64,
    /// From the metadata record: the cluster's ID.
    pub cluster_id: u64,
    /// After applying every committed conf change in order, in the order added.
    pub members: Vec<EtcdMember>,
    /// The last HardState.
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    /// The last entry index seen.
    pub last_index: u64,
    /// The last walpb.Snapshot record's index (0 if none).
    pub snapshot_index: u64,
}

#[derive(Debug)]
pub enum Error {
    /// Reading the directory or a file failed.
    Io(PathBuf, std::io::Error),
    /// The WAL is damaged (or says something etcd could not apply) at this frame.
    Corrupt {
        file: PathBuf,
        offset: u64,
        what: String,
    },
    /// The directory holds no etcd WAL.
    NotEtcd(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(path, e) => write!(f, "etcd wal: {}: {e}", path.display()),
            Error::Corrupt { file, offset, what } => {
                write!(
                    f,
                    "etcd wal: {} corrupt at offset {offset}: {what}",
                    file.display()
                )
            }
            Error::NotEtcd(what) => write!(f, "etcd wal: not an etcd WAL: {what}"),
        }
    }
}

impl std::error::Error for Error {}

// Record types (etcd's wal.go).
const RECORD_METADATA: i64 = 1;
const RECORD_ENTRY: i64 = 2;
const RECORD_STATE: i64 = 3;
const RECORD_CRC: i64 = 4;
const RECORD_SNAPSHOT: i64 = 5;

const FRAME_LEN_BYTES: usize = 8;
/// etcd's maxWALEntrySizeLimit: a frame claiming this much or more is damage.
const RECORD_BYTES_MAX: u64 = 10 * 1024 * 1024;
/// etcd's minSectorSize: torn writes are detected per sector.
const SECTOR_BYTES: u64 = 512;
/// Nesting limit of the JSON reader (etcd's member JSON nests two deep).
const JSON_DEPTH_MAX: u32 = 32;

// raftpb.EntryType and raftpb.ConfChangeType (etcd's numbers).
const ENTRY_NORMAL: i32 = 0;
const ENTRY_CONF_CHANGE: i32 = 1;
const CONF_ADD_NODE: i32 = 0;
const CONF_REMOVE_NODE: i32 = 1;
const CONF_UPDATE_NODE: i32 = 2;
const CONF_ADD_LEARNER_NODE: i32 = 3;
/// etcd's maxLearners.
const LEARNERS_MAX: usize = 1;

#[derive(Clone, PartialEq, prost::Message)]
struct RecordPb {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetadataPb {
    #[prost(uint64, tag = "1")]
    node_id: u64,
    #[prost(uint64, tag = "2")]
    cluster_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotPb {
    #[prost(uint64, tag = "1")]
    index: u64,
    #[prost(uint64, tag = "2")]
    term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EntryPb {
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, tag = "3")]
    index: u64,
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HardStatePb {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    vote: u64,
    #[prost(uint64, tag = "3")]
    commit: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConfChangePb {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int32, tag = "2")]
    r#type: i32,
    #[prost(uint64, tag = "3")]
    node_id: u64,
    #[prost(bytes = "vec", tag = "4")]
    context: Vec<u8>,
}

/// etcdserverpb.Request (the v2 request), the fields the attribute update uses.
#[derive(Clone, PartialEq, prost::Message)]
struct RequestPb {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    method: String,
    #[prost(string, tag = "3")]
    path: String,
    #[prost(string, tag = "4")]
    val: String,
    #[prost(string, tag = "6")]
    prev_value: String,
    #[prost(uint64, tag = "7")]
    prev_index: u64,
    #[prost(bool, optional, tag = "8")]
    prev_exist: Option<bool>,
}

// ---------------------------------------------------------------------------------------
// crc32c (Castagnoli, reflected polynomial 0x82F63B78), as Go's crc32.Update.

/// Continues the crc32c `crc` over `data` (Go's `crc32.Update(crc, castagnoli, data)`).
fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    crate::crc32c::update(crc, data)
}

// ---------------------------------------------------------------------------------------
// Files.

/// Parses `%016x-%016x.wal`: (sequence, index).
fn parse_wal_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, index) = stem.split_once('-')?;
    let hex16 = |s: &str| {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    Some((hex16(seq)?, hex16(index)?))
}

/// The WAL files in `wal_dir`, in name order: (path, sequence, index).
fn wal_files(wal_dir: &Path) -> Result<Vec<(PathBuf, u64, u64)>, Error> {
    let dir = std::fs::read_dir(wal_dir).map_err(|e| Error::Io(wal_dir.to_path_buf(), e))?;
    let mut files = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| Error::Io(wal_dir.to_path_buf(), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((seq, index)) = parse_wal_name(name) {
            files.push((entry.path(), seq, index));
        }
    }
    files.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    Ok(files)
}

/// Whether `wal_dir` holds etcd WAL files (names `%016x-%016x.wal`).
pub fn is_etcd_wal_dir(wal_dir: &Path) -> bool {
    matches!(wal_files(wal_dir), Ok(files) if !files.is_empty())
}

/// Reads every .wal file in name order (see the module doc for what is checked and how a
/// torn tail ends the read).
pub fn read_wal_dir(wal_dir: &Path) -> Result<EtcdWal, Error> {
    let files = wal_files(wal_dir)?;
    if files.is_empty() {
        return Err(Error::NotEtcd(format!(
            "{} holds no %016x-%016x.wal file",
            wal_dir.display()
        )));
    }
    for pair in files.windows(2) {
        if pair[1].1 != pair[0].1.wrapping_add(1) {
            return Err(Error::Corrupt {
                file: pair[1].0.clone(),
                offset: 0,
                what: format!(
                    "file sequence numbers do not increase continuously ({:x} after {:x})",
                    pair[1].1, pair[0].1
                ),
            });
        }
    }
    // Entries at or below the first file's start were cut before it (etcd's start index).
    let mut reader = Reader::new(files[0].2.saturating_sub(1));
    for (i, (path, _, _)) in files.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| Error::Io(path.clone(), e))?;
        let is_last = i + 1 == files.len();
        let file_index = reader.paths.len();
        reader.paths.push(path.clone());
        let torn = reader.read_file(file_index, &bytes, is_last)?;
        if torn {
            break;
        }
    }
    reader.finish()
}

// ---------------------------------------------------------------------------------------
// Records.

/// Where a record was read: (index into `Reader::paths`, frame offset).
type At = (usize, u64);

/// What an entry means for membership.
enum Payload {
    Nothing,
    ConfChange(Vec<u8>),
    /// A v2 `PUT /0/members/<id>/attributes`: (member ID, the JSON value).
    Attributes(u64, String),
    /// An entry type etcd 3.4 cannot apply.
    Unknown(i32),
}

struct EntryRec {
    index: u64,
    at: At,
    payload: Payload,
}

struct Reader {
    paths: Vec<PathBuf>,
    crc: u32,
    metadata: Option<Vec<u8>>,
    hard_state: HardStatePb,
    /// Entries above `start_index`, consecutive: `entries[i].index == start_index + 1 + i`.
    start_index: u64,
    entries: Vec<EntryRec>,
    last_index: u64,
    snapshot_index: u64,
}

impl Reader {
    fn new(start_index: u64) -> Reader {
        Reader {
            paths: Vec::new(),
            crc: 0,
            metadata: None,
            hard_state: HardStatePb::default(),
            start_index,
            entries: Vec::new(),
            last_index: 0,
            snapshot_index: 0,
        }
    }

    fn corrupt(&self, at: At, what: impl Into<String>) -> Error {
        Error::Corrupt {
            file: self.paths[at.0].clone(),
            offset: at.1,
            what: what.into(),
        }
    }

    /// Reads one file's frames. Returns whether it ended at a torn tail (which ends the
    /// whole read; only the last file may have one).
    fn read_file(&mut self, file: usize, bytes: &[u8], is_last: bool) -> Result<bool, Error> {
        let mut offset = 0usize;
        loop {
            let at = (file, offset as u64);
            let rest = &bytes[offset..];
            if rest.is_empty() {
                return Ok(false);
            }
            if rest.len() < FRAME_LEN_BYTES {
                if is_last {
                    return Ok(true);
                }
                return Err(self.corrupt(at, "short length word"));
            }
            let mut word = [0u8; FRAME_LEN_BYTES];
            word.copy_from_slice(&rest[..FRAME_LEN_BYTES]);
            let word = u64::from_le_bytes(word);
            if word == 0 {
                // End of the written part (preallocated zeros follow).
                return Ok(false);
            }
            let record_bytes = word & !(0xff << 56);
            let pad_bytes = if word >> 63 == 1 {
                (word >> 56) & 0x7
            } else {
                0
            };
            if record_bytes + pad_bytes >= RECORD_BYTES_MAX {
                return Err(self.corrupt(
                    at,
                    format!(
                        "frame of {record_bytes} bytes exceeds the limit of {RECORD_BYTES_MAX}"
                    ),
                ));
            }
            let frame_bytes = (record_bytes + pad_bytes) as usize;
            let body = &rest[FRAME_LEN_BYTES..];
            if body.len() < frame_bytes {
                if is_last {
                    return Ok(true);
                }
                return Err(self.corrupt(at, "short frame"));
            }
            let frame = &body[..frame_bytes];
            let torn = || is_last && is_torn(frame, (offset + FRAME_LEN_BYTES) as u64);
            let record = match <RecordPb as prost::Message>::decode(&frame[..record_bytes as usize])
            {
                Ok(record) => record,
                Err(e) if !torn() => return Err(self.corrupt(at, format!("record: {e}"))),
                Err(_) => return Ok(true),
            };
            if record.r#type != RECORD_CRC {
                let crc = crc32c_update(self.crc, &record.data);
                if crc != record.crc {
                    if torn() {
                        return Ok(true);
                    }
                    return Err(self.corrupt(
                        at,
                        format!(
                            "crc mismatch: record {:#010x}, computed {crc:#010x}",
                            record.crc
                        ),
                    ));
                }
                self.crc = crc;
            }
            self.record(at, record)?;
            offset += FRAME_LEN_BYTES + frame_bytes;
        }
    }

    fn record(&mut self, at: At, record: RecordPb) -> Result<(), Error> {
        use prost::Message;
        match record.r#type {
            RECORD_METADATA => {
                if let Some(previous) = &self.metadata {
                    if *previous != record.data {
                        return Err(self.corrupt(at, "metadata conflicts with an earlier one"));
                    }
                }
                MetadataPb::decode(record.data.as_slice())
                    .map_err(|e| self.corrupt(at, format!("metadata: {e}")))?;
                self.metadata = Some(record.data);
            }
            RECORD_ENTRY => {
                let entry = EntryPb::decode(record.data.as_slice())
                    .map_err(|e| self.corrupt(at, format!("entry: {e}")))?;
                self.entry(at, entry)?;
            }
            RECORD_STATE => {
                self.hard_state = HardStatePb::decode(record.data.as_slice())
                    .map_err(|e| self.corrupt(at, format!("hard state: {e}")))?;
            }
            RECORD_CRC => {
                if self.crc != 0 && record.crc != self.crc {
                    return Err(self.corrupt(
                        at,
                        format!(
                            "crc record {:#010x} does not match the running crc {:#010x}",
                            record.crc, self.crc
                        ),
                    ));
                }
                self.crc = record.crc;
            }
            RECORD_SNAPSHOT => {
                let snapshot = SnapshotPb::decode(record.data.as_slice())
                    .map_err(|e| self.corrupt(at, format!("snapshot record: {e}")))?;
                self.snapshot_index = snapshot.index;
            }
            other => return Err(self.corrupt(at, format!("unexpected record type {other}"))),
        }
        Ok(())
    }

    fn entry(&mut self, at: At, entry: EntryPb) -> Result<(), Error> {
        self.last_index = entry.index;
        if entry.index <= self.start_index {
            return Ok(());
        }
        let position = entry.index - self.start_index - 1;
        if position > self.entries.len() as u64 {
            return Err(self.corrupt(
                at,
                format!(
                    "entry index {} leaves a gap after index {}",
                    entry.index,
                    self.start_index + self.entries.len() as u64
                ),
            ));
        }
        self.entries.truncate(position as usize);
        let payload = match entry.r#type {
            ENTRY_CONF_CHANGE => Payload::ConfChange(entry.data),
            ENTRY_NORMAL => attributes_request(&entry.data).unwrap_or(Payload::Nothing),
            other => Payload::Unknown(other),
        };
        self.entries.push(EntryRec {
            index: entry.index,
            at,
            payload,
        });
        Ok(())
    }

    fn finish(self) -> Result<EtcdWal, Error> {
        use prost::Message;
        let Some(metadata) = &self.metadata else {
            return Err(Error::Corrupt {
                file: self.paths[0].clone(),
                offset: 0,
                what: "no metadata record".into(),
            });
        };
        // Decoded when read.
        let metadata = MetadataPb::decode(metadata.as_slice()).unwrap_or_default();
        let mut members = Members::default();
        for entry in &self.entries {
            if entry.index > self.hard_state.commit {
                break;
            }
            let applied = match &entry.payload {
                Payload::Nothing => Ok(()),
                Payload::ConfChange(data) => members.conf_change(data),
                Payload::Attributes(id, val) => members.attributes(*id, val),
                Payload::Unknown(t) => Err(format!("entry type {t} etcd 3.4 cannot apply")),
            };
            applied
                .map_err(|what| self.corrupt(entry.at, format!("entry {}: {what}", entry.index)))?;
        }
        Ok(EtcdWal {
            member_id: metadata.node_id,
            cluster_id: metadata.cluster_id,
            members: members.members,
            term: self.hard_state.term,
            vote: self.hard_state.vote,
            commit: self.hard_state.commit,
            last_index: self.last_index,
            snapshot_index: self.snapshot_index,
        })
    }
}

/// Whether a frame that did not decode or check is a torn write: some 512-byte sector of
/// it (split at the file's sector boundaries; it starts at `file_offset`) is all zeros.
fn is_torn(frame: &[u8], file_offset: u64) -> bool {
    let mut offset = file_offset;
    let mut rest = frame;
    while !rest.is_empty() {
        let chunk_len = ((SECTOR_BYTES - offset % SECTOR_BYTES) as usize).min(rest.len());
        let (chunk, tail) = rest.split_at(chunk_len);
        if chunk.iter().all(|&b| b == 0) {
            return true;
        }
        offset += chunk_len as u64;
        rest = tail;
    }
    false
}

/// A normal entry that is the v2 request setting a member's attributes (what etcd's
/// applierV2store.Put matches), else None. A raw etcdserverpb.Request of this shape never
/// decodes as an InternalRaftRequest (which etcd tries first).
fn attributes_request(data: &[u8]) -> Option<Payload> {
    let request = <RequestPb as prost::Message>::decode(data).ok()?;
    if request.method != "PUT"
        || request.prev_exist.is_some()
        || request.prev_index != 0
        || !request.prev_value.is_empty()
    {
        return None;
    }
    let hex = request
        .path
        .strip_prefix("/0/members/")?
        .strip_suffix("/attributes")?;
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u64::from_str_radix(hex, 16).ok()?;
    Some(Payload::Attributes(id, request.val))
}

// ---------------------------------------------------------------------------------------
// Membership, applied as etcd 3.4 applies it.

#[derive(Default)]
struct Members {
    members: Vec<EtcdMember>,
    removed: HashSet<u64>,
}

impl Members {
    fn position(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    fn peer_url_taken(&self, urls: &[String], except: Option<u64>) -> bool {
        self.members
            .iter()
            .filter(|m| Some(m.id) != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// Applies one conf change entry; Err says why etcd could not apply it.
    fn conf_change(&mut self, data: &[u8]) -> Result<(), String> {
        let cc = <ConfChangePb as prost::Message>::decode(data)
            .map_err(|e| format!("conf change: {e}"))?;
        let id = cc.node_id;
        if self.removed.contains(&id) {
            return Ok(()); // etcd: ErrIDRemoved, ignored
        }
        match cc.r#type {
            CONF_ADD_NODE | CONF_ADD_LEARNER_NODE => {
                let m = parse_member(&cc.context)?;
                if m.member.id != id {
                    return Err(format!(
                        "conf change for {id:x} carries member {:x}",
                        m.member.id
                    ));
                }
                match self.position(id) {
                    Some(at) => {
                        let promote = m.is_promote || cc.r#type == CONF_ADD_NODE;
                        if promote && self.members[at].is_learner {
                            self.members[at].is_learner = false;
                        }
                    }
                    None if m.is_promote => {} // etcd: ErrIDNotFound
                    None => {
                        if self.peer_url_taken(&m.member.peer_urls, None) {
                            return Ok(()); // etcd: ErrPeerURLexists
                        }
                        let learners = self.members.iter().filter(|m| m.is_learner).count();
                        if m.member.is_learner && learners + 1 > LEARNERS_MAX {
                            return Ok(()); // etcd: ErrTooManyLearners
                        }
                        self.members.push(m.member);
                    }
                }
            }
            CONF_REMOVE_NODE => {
                if let Some(at) = self.position(id) {
                    self.members.remove(at);
                    self.removed.insert(id);
                }
            }
            CONF_UPDATE_NODE => {
                let Some(at) = self.position(id) else {
                    return Ok(()); // etcd: ErrIDNotFound
                };
                let m = parse_member(&cc.context)?;
                if self.peer_url_taken(&m.member.peer_urls, Some(id)) {
                    return Ok(());
                }
                if m.member.id != id {
                    return Err(format!(
                        "conf change for {id:x} carries member {:x}",
                        m.member.id
                    ));
                }
                self.members[at].peer_urls = m.member.peer_urls;
                self.members[at].is_learner = m.member.is_learner;
            }
            other => return Err(format!("unknown conf change type {other}")),
        }
        Ok(())
    }

    /// Applies a member's attributes (name, client URLs). An unknown member changes
    /// nothing (its add may be in a purged file).
    fn attributes(&mut self, id: u64, val: &str) -> Result<(), String> {
        let value = Json::parse(val.as_bytes())?;
        let fields = value.object("attributes")?;
        let mut name = String::new();
        let mut client_urls = Vec::new();
        for (key, v) in fields {
            if key.eq_ignore_ascii_case("name") {
                name = v.string("name")?;
            } else if key.eq_ignore_ascii_case("clientURLs") {
                client_urls = v.strings("clientURLs")?;
            }
        }
        if let Some(at) = self.position(id) {
            self.members[at].name = name;
            self.members[at].client_urls = client_urls;
        }
        Ok(())
    }
}

/// etcd's membership.ConfigChangeContext: a Member and `isPromote`.
struct MemberContext {
    member: EtcdMember,
    is_promote: bool,
}

/// Reads a conf change's context as Go's encoding/json reads it into etcd's
/// ConfigChangeContext: keys match case-insensitively, the last of a repeated key wins,
/// unknown keys are ignored, `null` leaves the zero value, anything else of the wrong type
/// is an error.
fn parse_member(context: &[u8]) -> Result<MemberContext, String> {
    let value = Json::parse(context)?;
    let mut m = MemberContext {
        member: EtcdMember {
            id: 0,
            name: String::new(),
            peer_urls: Vec::new(),
            client_urls: Vec::new(),
            is_learner: false,
        },
        is_promote: false,
    };
    for (key, v) in value.object("member")? {
        let key = key.as_str();
        if key.eq_ignore_ascii_case("id") {
            m.member.id = v.uint64("id")?;
        } else if key.eq_ignore_ascii_case("peerURLs") {
            m.member.peer_urls = v.strings("peerURLs")?;
        } else if key.eq_ignore_ascii_case("isLearner") {
            m.member.is_learner = v.boolean("isLearner")?;
        } else if key.eq_ignore_ascii_case("name") {
            m.member.name = v.string("name")?;
        } else if key.eq_ignore_ascii_case("clientURLs") {
            m.member.client_urls = v.strings("clientURLs")?;
        } else if key.eq_ignore_ascii_case("isPromote") {
            m.is_promote = v.boolean("isPromote")?;
        }
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// A small strict JSON reader (RFC 8259). Numbers keep their text so a uint64 is read
// exactly from its digits.

#[derive(Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(bytes: &[u8]) -> Result<Json, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("json: {e}"))?;
        let mut p = JsonParser {
            s: text.as_bytes(),
            at: 0,
        };
        let value = p.value(0)?;
        p.skip_ws();
        if p.at != p.s.len() {
            return Err(format!("json: trailing bytes at {}", p.at));
        }
        Ok(value)
    }

    fn object(&self, what: &str) -> Result<&[(String, Json)], String> {
        match self {
            Json::Object(fields) => Ok(fields),
            _ => Err(format!("json: {what} is not an object")),
        }
    }

    fn uint64(&self, what: &str) -> Result<u64, String> {
        match self {
            Json::Null => Ok(0),
            Json::Number(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => digits
                .parse::<u64>()
                .map_err(|_| format!("json: {what} {digits} is not a uint64")),
            _ => Err(format!("json: {what} is not a uint64")),
        }
    }

    fn boolean(&self, what: &str) -> Result<bool, String> {
        match self {
            Json::Null => Ok(false),
            Json::Bool(b) => Ok(*b),
            _ => Err(format!("json: {what} is not a boolean")),
        }
    }

    fn string(&self, what: &str) -> Result<String, String> {
        match self {
            Json::Null => Ok(String::new()),
            Json::String(s) => Ok(s.clone()),
            _ => Err(format!("json: {what} is not a string")),
        }
    }

    fn strings(&self, what: &str) -> Result<Vec<String>, String> {
        match self {
            Json::Null => Ok(Vec::new()),
            Json::Array(items) => items.iter().map(|v| v.string(what)).collect(),
            _ => Err(format!("json: {what} is not an array")),
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("json: {what} at {}", self.at))
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.at) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.s[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            self.err("unexpected token")
        }
    }

    fn value(&mut self, depth: u32) -> Result<Json, String> {
        if depth >= JSON_DEPTH_MAX {
            return self.err("nested too deep");
        }
        self.skip_ws();
        match self.s.get(self.at) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.at += 1;
                let mut fields = Vec::new();
                self.skip_ws();
                if self.s.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Json::Object(fields));
                }
                loop {
                    self.skip_ws();
                    if self.s.get(self.at) != Some(&b'"') {
                        return self.err("expected a key");
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    if self.s.get(self.at) != Some(&b':') {
                        return self.err("expected ':'");
                    }
                    self.at += 1;
                    let value = self.value(depth + 1)?;
                    fields.push((key, value));
                    self.skip_ws();
                    match self.s.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Object(fields));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.s.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    match self.s.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("unexpected byte"),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.s.get(self.at).is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.at;
        if self.s.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.s.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("bad number"),
        }
        if self.s.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return self.err("bad fraction");
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.s.get(self.at) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return self.err("bad exponent");
            }
        }
        // ASCII only, so always valid UTF-8.
        let text = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
        Ok(Json::Number(text))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let Some(digits) = self.s.get(self.at..self.at + 4) else {
            return self.err("short \\u escape");
        };
        let mut v = 0u32;
        for &d in digits {
            let Some(h) = (d as char).to_digit(16) else {
                return self.err("bad \\u escape");
            };
            v = v * 16 + h;
        }
        self.at += 4;
        Ok(v)
    }

    /// A string; `self.at` is at its opening quote.
    fn string(&mut self) -> Result<String, String> {
        self.at += 1;
        let mut out = String::new();
        loop {
            // Copy the run of plain bytes (the input is valid UTF-8, and runs end at ASCII).
            let start = self.at;
            while self
                .s
                .get(self.at)
                .is_some_and(|&b| b != b'"' && b != b'\\' && b >= 0x20)
            {
                self.at += 1;
            }
            out.push_str(&String::from_utf8_lossy(&self.s[start..self.at]));
            match self.s.get(self.at) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let Some(&e) = self.s.get(self.at) else {
                        return self.err("unterminated escape");
                    };
                    self.at += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi)
                                && self.s[self.at..].starts_with(b"\\u")
                            {
                                let save = self.at;
                                self.at += 2;
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                                } else {
                                    self.at = save; // the next escape stands alone
                                    None
                                }
                            } else {
                                char::from_u32(hi)
                            };
                            // A lone surrogate reads as U+FFFD, as in Go.
                            out.push(c.unwrap_or('\u{FFFD}'));
                        }
                        _ => return self.err("bad escape"),
                    }
                }
                Some(_) => return self.err("control character in string"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::process::{Child, Command, Output};
    use std::time::{Duration, Instant};

    const ETCD: &str = "/usr/bin/etcd";
    const ETCDCTL: &str = "/usr/bin/etcdctl";

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "keel-etcd-wal-{}-{name}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    // --- building WAL files by hand -----------------------------------------------------

    /// Writes frames as etcd's encoder does (running crc, 8-byte aligned frames).
    struct WalBuilder {
        bytes: Vec<u8>,
        crc: u32,
        /// Each frame's (offset, length of the whole frame).
        frames: Vec<(usize, usize)>,
    }

    impl WalBuilder {
        fn new(prev_crc: u32) -> WalBuilder {
            let mut b = WalBuilder {
                bytes: Vec::new(),
                crc: prev_crc,
                frames: Vec::new(),
            };
            b.record(RECORD_CRC, Vec::new());
            b
        }

        fn record(&mut self, r#type: i64, data: Vec<u8>) {
            if r#type != RECORD_CRC {
                self.crc = crc32c_update(self.crc, &data);
            }
            let record = RecordPb {
                r#type,
                crc: self.crc,
                data,
            }
            .encode_to_vec();
            let pad = (8 - record.len() % 8) % 8;
            let mut word = record.len() as u64;
            if pad != 0 {
                word |= (0x80 | pad as u64) << 56;
            }
            let start = self.bytes.len();
            self.bytes.extend_from_slice(&word.to_le_bytes());
            self.bytes.extend_from_slice(&record);
            self.bytes.resize(self.bytes.len() + pad, 0);
            self.frames.push((start, self.bytes.len() - start));
        }

        fn metadata(&mut self, node_id: u64, cluster_id: u64) -> &mut Self {
            let data = MetadataPb {
                node_id,
                cluster_id,
            }
            .encode_to_vec();
            self.record(RECORD_METADATA, data);
            self
        }

        fn snapshot(&mut self, index: u64, term: u64) -> &mut Self {
            self.record(RECORD_SNAPSHOT, SnapshotPb { index, term }.encode_to_vec());
            self
        }

        fn state(&mut self, term: u64, vote: u64, commit: u64) -> &mut Self {
            let data = HardStatePb { term, vote, commit }.encode_to_vec();
            self.record(RECORD_STATE, data);
            self
        }

        fn entry(&mut self, index: u64, r#type: i32, data: Vec<u8>) -> &mut Self {
            let data = EntryPb {
                r#type,
                term: 1,
                index,
                data,
            }
            .encode_to_vec();
            self.record(RECORD_ENTRY, data);
            self
        }

        fn conf(&mut self, index: u64, r#type: i32, node_id: u64, context: &str) -> &mut Self {
            let data = ConfChangePb {
                id: 0,
                r#type,
                node_id,
                context: context.as_bytes().to_vec(),
            }
            .encode_to_vec();
            self.entry(index, ENTRY_CONF_CHANGE, data)
        }

        fn attributes(&mut self, index: u64, id: u64, val: &str) -> &mut Self {
            let data = RequestPb {
                id: 7,
                method: "PUT".into(),
                path: format!("/0/members/{id:x}/attributes"),
                val: val.into(),
                ..Default::default()
            }
            .encode_to_vec();
            self.entry(index, ENTRY_NORMAL, data)
        }
    }

    fn write_wal(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn read_one(bytes: &[u8]) -> Result<EtcdWal, Error> {
        let dir = TempDir::new("one");
        write_wal(&dir.0, "0000000000000000-0000000000000000.wal", bytes);
        read_wal_dir(&dir.0)
    }

    fn member(id: u64, name: &str, peer: &str, client: &[&str], learner: bool) -> EtcdMember {
        EtcdMember {
            id,
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: client.iter().map(|s| s.to_string()).collect(),
            is_learner: learner,
        }
    }

    fn ctx(id: u64, name: &str, peer: &str, learner: bool, promote: bool) -> String {
        format!(
            r#"{{"id":{id},"peerURLs":["{peer}"],"name":"{name}","isLearner":{learner},"isPromote":{promote}}}"#
        )
    }

    fn assert_corrupt(r: Result<EtcdWal, Error>, offset: u64, what: &str) {
        match r {
            Err(Error::Corrupt {
                offset: o, what: w, ..
            }) => {
                assert_eq!(o, offset, "offset of {w}");
                assert!(w.contains(what), "{w:?} lacks {what:?}");
            }
            other => panic!("expected Corrupt at {offset} ({what}), got {other:?}"),
        }
    }

    // --- unit tests -----------------------------------------------------------------------

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c_update(0, b"123456789"), 0xE306_9283);
        // Chaining equals one pass, as Go's crc32.Update.
        let whole = crc32c_update(0, b"hello world");
        assert_eq!(crc32c_update(crc32c_update(0, b"hello "), b"world"), whole);
    }

    #[test]
    fn wal_names() {
        assert_eq!(
            parse_wal_name("0000000000000001-00000000000000ff.wal"),
            Some((1, 255))
        );
        assert_eq!(
            parse_wal_name("0000000000000001-00000000000000ff.wal.tmp"),
            None
        );
        assert_eq!(parse_wal_name("01-ff.wal"), None);
        assert_eq!(
            parse_wal_name("000000000000000g-0000000000000000.wal"),
            None
        );
    }

    #[test]
    fn json_reads_etcd_member_exactly() {
        let m = parse_member(
            br#" {"id":18446744073709551615,"peerURLs":["http://a:1","h\u00e9\"\\\/"],
                 "name":"n\ud83d\ude00","clientURLs":null,"isLearner":true,"extra":{"x":[1.5e-3,-0,false]}} "#,
        )
        .unwrap();
        assert_eq!(m.member.id, u64::MAX);
        assert_eq!(m.member.peer_urls, vec!["http://a:1", "hé\"\\/"]);
        assert_eq!(m.member.name, "n😀");
        assert!(m.member.client_urls.is_empty());
        assert!(m.member.is_learner && !m.is_promote);
        // 2^53 + 1 is kept exactly.
        assert_eq!(
            parse_member(br#"{"id":9007199254740993}"#)
                .unwrap()
                .member
                .id,
            9_007_199_254_740_993
        );
        // Keys match case-insensitively; the last wins.
        assert_eq!(parse_member(br#"{"ID":1,"id":2}"#).unwrap().member.id, 2);
        // A lone surrogate reads as U+FFFD.
        assert_eq!(
            parse_member(br#"{"name":"\ud800x"}"#).unwrap().member.name,
            "\u{FFFD}x"
        );
    }

    #[test]
    fn json_rejects_what_go_rejects() {
        for bad in [
            &br#"{"id":18446744073709551616}"#[..],
            br#"{"id":-1}"#,
            br#"{"id":1.0}"#,
            br#"{"id":1e3}"#,
            br#"{"id":"1"}"#,
            br#"{"id":01}"#,
            br#"{"peerURLs":"x"}"#,
            br#"{"peerURLs":[1]}"#,
            br#"{"isLearner":1}"#,
            br#"{"name":"a
b"}"#,
            br#"{"name":"\x"}"#,
            br#"{"name":"\u12"}"#,
            br#"{"id":1,}"#,
            br#"{"id":1} x"#,
            br#"[1]"#,
            br#"{"id" 1}"#,
            br#"{"a":tru}"#,
            br#"{"a":1."#,
            br#""#,
            b"{\"name\":\"\xff\"}",
        ] {
            assert!(
                parse_member(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "[".repeat(100_000);
        assert!(Json::parse(deep.as_bytes()).is_err());
        let deep = format!("{}1{}", "[".repeat(20), "]".repeat(20));
        assert!(Json::parse(deep.as_bytes()).is_ok());
    }

    #[test]
    fn replays_conf_changes_as_etcd_applies_them() {
        let mut b = WalBuilder::new(0);
        b.metadata(1, 99).snapshot(0, 0);
        b.conf(1, CONF_ADD_NODE, 1, &ctx(1, "a", "http://p1", false, false))
            .attributes(2, 1, r#"{"name":"a2","clientURLs":["http://c1"]}"#)
            .conf(
                3,
                CONF_ADD_LEARNER_NODE,
                2,
                &ctx(2, "", "http://p2", true, false),
            )
            // A second learner is refused (maxLearners = 1).
            .conf(
                4,
                CONF_ADD_LEARNER_NODE,
                3,
                &ctx(3, "", "http://p3", true, false),
            )
            // A taken peer URL is refused.
            .conf(5, CONF_ADD_NODE, 4, &ctx(4, "", "http://p1", false, false))
            .conf(6, CONF_ADD_NODE, 2, &ctx(2, "", "http://p2", true, true))
            .conf(
                7,
                CONF_UPDATE_NODE,
                1,
                &ctx(1, "", "http://p1b", false, false),
            )
            .conf(8, CONF_ADD_NODE, 5, &ctx(5, "e", "http://p5", false, false))
            .conf(9, CONF_REMOVE_NODE, 5, "")
            // A removed ID never comes back.
            .conf(
                10,
                CONF_ADD_NODE,
                5,
                &ctx(5, "e", "http://p5", false, false),
            )
            // Written, then replaced by a new leader's entry at the same index.
            .conf(
                11,
                CONF_ADD_NODE,
                6,
                &ctx(6, "f", "http://p6", false, false),
            )
            .conf(
                11,
                CONF_ADD_LEARNER_NODE,
                7,
                &ctx(7, "g", "http://p7", true, false),
            )
            .state(3, 1, 11)
            // Not committed: changes nothing.
            .conf(12, CONF_REMOVE_NODE, 1, "");
        let wal = read_one(&b.bytes).unwrap();
        assert_eq!(
            wal,
            EtcdWal {
                member_id: 1,
                cluster_id: 99,
                members: vec![
                    member(1, "a2", "http://p1b", &["http://c1"], false),
                    member(2, "", "http://p2", &[], false),
                    member(7, "g", "http://p7", &[], true),
                ],
                term: 3,
                vote: 1,
                commit: 11,
                last_index: 12,
                snapshot_index: 0,
            }
        );
    }

    #[test]
    fn add_node_of_an_existing_learner_promotes_it() {
        let mut b = WalBuilder::new(0);
        b.metadata(1, 2)
            .conf(
                1,
                CONF_ADD_LEARNER_NODE,
                2,
                &ctx(2, "", "http://p2", true, false),
            )
            .conf(2, CONF_ADD_NODE, 2, &ctx(2, "", "http://p2", false, false))
            .state(1, 0, 2);
        let wal = read_one(&b.bytes).unwrap();
        assert_eq!(wal.members, vec![member(2, "", "http://p2", &[], false)]);
    }

    #[test]
    fn a_conf_change_etcd_cannot_apply_is_corrupt() {
        let mut b = WalBuilder::new(0);
        b.metadata(1, 2);
        let at = b.bytes.len() as u64;
        b.conf(1, CONF_ADD_NODE, 2, &ctx(3, "", "http://p", false, false));
        b.state(1, 0, 1);
        assert_corrupt(read_one(&b.bytes), at, "carries member");

        let mut b = WalBuilder::new(0);
        b.metadata(1, 2);
        let at = b.bytes.len() as u64;
        b.conf(1, CONF_ADD_NODE, 2, "{\"id\":2");
        b.state(1, 0, 1);
        assert_corrupt(read_one(&b.bytes), at, "json");

        let mut b = WalBuilder::new(0);
        b.metadata(1, 2);
        let at = b.bytes.len() as u64;
        b.conf(1, 9, 2, "");
        b.state(1, 0, 1);
        assert_corrupt(read_one(&b.bytes), at, "unknown conf change type 9");
    }

    #[test]
    fn damage_is_corrupt_with_its_offset() {
        let mut b = WalBuilder::new(0);
        b.metadata(1, 2).snapshot(0, 0);
        b.conf(1, CONF_ADD_NODE, 1, &ctx(1, "a", "http://p1", false, false));
        b.state(1, 1, 1);
        let good = read_one(&b.bytes).unwrap();
        assert_eq!(good.members.len(), 1);

        // A flipped byte inside the entry's data: crc mismatch at that frame.
        let (start, len) = b.frames[3];
        let mut bad = b.bytes.clone();
        bad[start + len - 12] ^= 0x40;
        assert_corrupt(read_one(&bad), start as u64, "crc mismatch");

        // An unknown record type.
        let mut c = WalBuilder::new(0);
        c.metadata(1, 2);
        let at = c.bytes.len() as u64;
        c.record(9, vec![1, 2, 3]);
        assert_corrupt(read_one(&c.bytes), at, "unexpected record type 9");

        // A second metadata record that differs.
        let mut c = WalBuilder::new(0);
        c.metadata(1, 2);
        let at = c.bytes.len() as u64;
        c.metadata(1, 3);
        assert_corrupt(read_one(&c.bytes), at, "metadata conflicts");

        // An entry index gap.
        let mut c = WalBuilder::new(0);
        c.metadata(1, 2).entry(1, ENTRY_NORMAL, vec![]);
        let at = c.bytes.len() as u64;
        c.entry(3, ENTRY_NORMAL, vec![]);
        assert_corrupt(read_one(&c.bytes), at, "gap");

        // A frame claiming 10 MiB.
        let mut c = WalBuilder::new(0);
        c.metadata(1, 2);
        let at = c.bytes.len() as u64;
        c.bytes.extend_from_slice(&(10u64 << 20).to_le_bytes());
        c.bytes.extend_from_slice(&[1; 64]);
        assert_corrupt(read_one(&c.bytes), at, "exceeds");

        // No metadata at all.
        let c = WalBuilder::new(0);
        assert_corrupt(read_one(&c.bytes), 0, "no metadata");
    }

    #[test]
    fn a_torn_tail_ends_the_read_quietly() {
        let mut b = WalBuilder::new(0);
        b.metadata(1, 2);
        b.conf(1, CONF_ADD_NODE, 1, &ctx(1, "a", "http://p1", false, false));
        b.state(1, 1, 1);
        let whole = b.bytes.len();
        b.conf(2, CONF_ADD_NODE, 2, &ctx(2, "b", "http://p2", false, false));
        b.state(1, 1, 2);
        let (last_start, _) = b.frames[b.frames.len() - 2];
        // Cut anywhere inside the last two frames: the first part reads.
        for cut in whole..b.bytes.len() {
            let wal = read_one(&b.bytes[..cut]).unwrap();
            assert_eq!(wal.commit, 1, "cut at {cut}");
        }
        // Preallocated zeros after the written part.
        let mut padded = b.bytes.clone();
        padded.resize(padded.len() + 4096, 0);
        assert_eq!(read_one(&padded).unwrap().members.len(), 2);
        // A frame whose sector is zeros (a torn write) ends the read.
        let mut torn = b.bytes.clone();
        for byte in &mut torn[last_start + 8..] {
            *byte = 0;
        }
        assert_eq!(read_one(&torn).unwrap().commit, 1);
    }

    #[test]
    fn files_chain_their_crc_and_only_the_last_may_be_torn() {
        let mut first = WalBuilder::new(0);
        first.metadata(1, 2).snapshot(0, 0);
        first.conf(1, CONF_ADD_NODE, 1, &ctx(1, "a", "http://p1", false, false));
        first.state(1, 1, 1);
        let mut second = WalBuilder::new(first.crc);
        second.metadata(1, 2).state(1, 1, 1);
        second.conf(
            2,
            CONF_ADD_LEARNER_NODE,
            2,
            &ctx(2, "", "http://p2", true, false),
        );
        second.state(1, 1, 2).snapshot(2, 1);
        let dir = TempDir::new("two");
        let mut first_bytes = first.bytes.clone();
        first_bytes.resize(first_bytes.len() + 1000, 0);
        write_wal(
            &dir.0,
            "0000000000000000-0000000000000000.wal",
            &first_bytes,
        );
        write_wal(
            &dir.0,
            "0000000000000001-0000000000000002.wal",
            &second.bytes,
        );
        assert!(is_etcd_wal_dir(&dir.0));
        let wal = read_wal_dir(&dir.0).unwrap();
        assert_eq!(wal.members.len(), 2);
        assert_eq!((wal.commit, wal.last_index, wal.snapshot_index), (2, 2, 2));

        // A short frame in an earlier file is damage, not a torn tail.
        write_wal(
            &dir.0,
            "0000000000000000-0000000000000000.wal",
            &first.bytes[..first.bytes.len() - 3],
        );
        assert!(matches!(read_wal_dir(&dir.0), Err(Error::Corrupt { .. })));

        // A second file whose crc record does not continue the first's chain.
        write_wal(
            &dir.0,
            "0000000000000000-0000000000000000.wal",
            &first.bytes,
        );
        let mut other = WalBuilder::new(first.crc ^ 1);
        other.metadata(1, 2);
        write_wal(
            &dir.0,
            "0000000000000001-0000000000000002.wal",
            &other.bytes,
        );
        match read_wal_dir(&dir.0) {
            Err(Error::Corrupt { file, offset, what }) => {
                assert!(file.ends_with("0000000000000001-0000000000000002.wal"));
                assert_eq!(offset, 0);
                assert!(what.contains("running crc"), "{what}");
            }
            other => panic!("{other:?}"),
        }

        // A sequence gap.
        std::fs::remove_file(dir.0.join("0000000000000001-0000000000000002.wal")).unwrap();
        write_wal(
            &dir.0,
            "0000000000000002-0000000000000002.wal",
            &second.bytes,
        );
        assert!(matches!(read_wal_dir(&dir.0), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn a_dir_without_wal_files_is_not_etcd() {
        let dir = TempDir::new("empty");
        assert!(!is_etcd_wal_dir(&dir.0));
        assert!(!is_etcd_wal_dir(&dir.0.join("missing")));
        assert!(matches!(read_wal_dir(&dir.0), Err(Error::NotEtcd(_))));
        assert!(matches!(
            read_wal_dir(&dir.0.join("missing")),
            Err(Error::Io(..))
        ));
        write_wal(&dir.0, "notes.txt", b"x");
        assert!(!is_etcd_wal_dir(&dir.0));
    }

    #[test]
    fn random_bytes_never_panic() {
        // splitmix64, seeded: a failure reproduces.
        let mut state = 0x5eed_u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let dir = TempDir::new("random");
        let path = dir.0.join("0000000000000000-0000000000000000.wal");
        let mut errors = 0;
        for round in 0..300 {
            let len = (next() % 600) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && len >= 8 {
                // A plausible length word, so the record decoder sees the bytes.
                let n = next() % 64;
                bytes[..8].copy_from_slice(&n.to_le_bytes());
            }
            std::fs::write(&path, &bytes).unwrap();
            if read_wal_dir(&dir.0).is_err() {
                errors += 1;
            }
        }
        assert!(errors > 100, "only {errors} of 300 random files rejected");
    }

    // --- a real etcd ---------------------------------------------------------------------

    fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
        Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(["--dial-timeout=2s", "--command-timeout=10s"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{ETCDCTL} does not run: {e}"))
    }

    fn ok(out: Output, what: &str) -> String {
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An etcd this test started; stopped (SIGTERM, then SIGKILL) on drop.
    struct EtcdProcess {
        child: Child,
        stopped: bool,
    }

    impl EtcdProcess {
        fn start(data_dir: &Path, client_url: &str, peer_url: &str) -> EtcdProcess {
            assert!(
                Path::new(ETCD).exists() && Path::new(ETCDCTL).exists(),
                "{ETCD} and {ETCDCTL} (Debian's etcd-server and etcd-client, 3.4) are needed"
            );
            let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
            let child = Command::new(ETCD)
                .args(["--name", "n1", "--data-dir"])
                .arg(data_dir)
                .args(["--listen-client-urls", client_url])
                .args(["--advertise-client-urls", client_url])
                .args(["--listen-peer-urls", peer_url])
                .args(["--initial-advertise-peer-urls", peer_url])
                .args(["--initial-cluster", &format!("n1={peer_url}")])
                .args(["--initial-cluster-token", "tok"])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{ETCD} does not start: {e}"));
            EtcdProcess {
                child,
                stopped: false,
            }
        }

        /// SIGTERM, then waits (SIGKILL after 20 s).
        fn stop(&mut self) {
            if self.stopped {
                return;
            }
            self.stopped = true;
            // Our own child, not yet reaped: the pid cannot name another process.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for EtcdProcess {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn field<'a>(fields: &'a [(String, Json)], key: &str) -> &'a Json {
        &fields
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .1
    }

    /// The hex IDs in etcdctl snapshot restore's `"added member"` log lines.
    fn added_member_ids(log: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        for line in log.lines().filter(|l| l.contains("added member")) {
            let after = line
                .split_once("\"added-peer-id\":\"")
                .unwrap_or_else(|| panic!("no added-peer-id in {line}"))
                .1;
            let hex = after.split('"').next().unwrap();
            ids.push(u64::from_str_radix(hex, 16).unwrap());
        }
        ids
    }

    #[test]
    fn etcd_data_dir_and_restored_snapshot() {
        let tmp = TempDir::new("etcd");
        let data_dir = tmp.0.join("n1");
        let client_url = format!("http://127.0.0.1:{}", crate::testing::free_port());
        let peer_url = format!("http://127.0.0.1:{}", crate::testing::free_port());
        let mut etcd = EtcdProcess::start(&data_dir, &client_url, &peer_url);

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if etcdctl(&client_url, &["put", "a", "b"]).status.success() {
                break;
            }
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!(
                    "etcd exited ({status}): {}",
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not serve a put in 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ok(
            etcdctl(
                &client_url,
                &[
                    "member",
                    "add",
                    "m2",
                    "--learner",
                    "--peer-urls",
                    "http://127.0.0.1:1",
                ],
            ),
            "member add",
        );
        let list = ok(
            etcdctl(&client_url, &["member", "list", "-w", "json"]),
            "list",
        );
        let snapshot_file = tmp.0.join("snap.db");
        ok(
            etcdctl(
                &client_url,
                &["snapshot", "save", snapshot_file.to_str().unwrap()],
            ),
            "snapshot save",
        );
        etcd.stop();

        // What etcdctl said.
        let list = Json::parse(list.as_bytes()).unwrap();
        let top = list.object("list").unwrap();
        let header = field(top, "header").object("header").unwrap();
        let cluster_id = field(header, "cluster_id").uint64("cluster_id").unwrap();
        let member_id = field(header, "member_id").uint64("member_id").unwrap();
        let Json::Array(listed) = field(top, "members") else {
            panic!("members")
        };
        let mut expected: Vec<EtcdMember> = listed
            .iter()
            .map(|m| {
                let fields = m.object("member").unwrap();
                let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v);
                EtcdMember {
                    id: get("ID").unwrap().uint64("ID").unwrap(),
                    name: get("name").map_or(String::new(), |v| v.string("name").unwrap()),
                    peer_urls: get("peerURLs").unwrap().strings("peerURLs").unwrap(),
                    client_urls: get("clientURLs")
                        .map_or(Vec::new(), |v| v.strings("clientURLs").unwrap()),
                    is_learner: get("isLearner").is_some_and(|v| v.boolean("l").unwrap()),
                }
            })
            .collect();
        expected.sort_by_key(|m| m.id);
        assert_eq!(expected.len(), 2);
        assert_eq!(
            expected[0].name.len() + expected[1].name.len(),
            2,
            "{expected:?}"
        );

        let wal_dir = data_dir.join("member/wal");
        assert!(is_etcd_wal_dir(&wal_dir));
        let wal = read_wal_dir(&wal_dir).unwrap();
        assert_eq!(wal.cluster_id, cluster_id);
        assert_eq!(wal.member_id, member_id);
        let mut members = wal.members.clone();
        members.sort_by_key(|m| m.id);
        assert_eq!(members, expected);
        assert!(members.iter().any(|m| m.name == "n1"
            && m.client_urls == vec![client_url.clone()]
            && m.peer_urls == vec![peer_url.clone()]
            && !m.is_learner));
        assert!(members.iter().any(|m| m.name.is_empty()
            && m.peer_urls == vec!["http://127.0.0.1:1".to_string()]
            && m.is_learner));
        assert!(wal.commit >= 3 && wal.last_index >= wal.commit, "{wal:?}");
        assert_eq!(wal.vote, member_id);

        // Restore the snapshot into a new two-member cluster.
        let restored = tmp.0.join("x1");
        let out = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore", snapshot_file.to_str().unwrap()])
            .args(["--name", "x1"])
            .args([
                "--initial-cluster",
                "x1=http://127.0.0.1:2380,x2=http://127.0.0.1:2381",
            ])
            .args(["--initial-cluster-token", "t2"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .arg("--data-dir")
            .arg(&restored)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "snapshot restore: {log}");
        let mut added = added_member_ids(&log);
        added.sort_unstable();
        assert_eq!(added.len(), 2, "{log}");

        let wal = read_wal_dir(&restored.join("member/wal")).unwrap();
        let mut members = wal.members.clone();
        members.sort_by_key(|m| m.id);
        assert_eq!(members.iter().map(|m| m.id).collect::<Vec<_>>(), added);
        let x1 = wal.members.iter().find(|m| m.name == "x1").expect("x1");
        let x2 = wal.members.iter().find(|m| m.name == "x2").expect("x2");
        assert_eq!(x1.peer_urls, vec!["http://127.0.0.1:2380"]);
        assert_eq!(x2.peer_urls, vec!["http://127.0.0.1:2381"]);
        assert!(!x1.is_learner && !x2.is_learner);
        assert!(x1.client_urls.is_empty() && x2.client_urls.is_empty());
        assert_eq!(wal.member_id, x1.id);
        assert_ne!(wal.cluster_id, cluster_id);
        assert_eq!((wal.commit, wal.snapshot_index, wal.last_index), (2, 2, 2));
        assert_eq!(wal.term, 1);

        // Damage the small restored WAL every way: never a panic, mostly an error.
        let file = restored.join("member/wal/0000000000000000-0000000000000000.wal");
        let mut bytes = std::fs::read(&file).unwrap();
        let written = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
        bytes.truncate(written.div_ceil(8) * 8);
        assert!(bytes.len() < 4096, "{} bytes written", bytes.len());
        let scratch = TempDir::new("flips");
        let name = "0000000000000000-0000000000000000.wal";
        let same = |r: &Result<EtcdWal, Error>| matches!(r, Ok(w) if *w == wal);
        write_wal(&scratch.0, name, &bytes);
        assert!(same(&read_wal_dir(&scratch.0)));
        let mut errors = 0;
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                write_wal(&scratch.0, name, &bad);
                if read_wal_dir(&scratch.0).is_err() {
                    errors += 1;
                }
            }
        }
        assert!(
            errors * 2 > bytes.len() * 3,
            "only {errors} of {} flipped files rejected",
            bytes.len() * 3
        );
        for cut in 0..bytes.len() {
            write_wal(&scratch.0, name, &bytes[..cut]);
            let r = read_wal_dir(&scratch.0);
            // A cut file is a torn tail: it reads, or lacks its metadata.
            assert!(
                r.is_ok()
                    || matches!(&r, Err(Error::Corrupt { what, .. }) if what.contains("metadata")),
                "cut at {cut}: {r:?}"
            );
        }
    }
}
