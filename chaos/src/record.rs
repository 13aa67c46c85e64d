//! What the clients saw, beyond the register history: acknowledged writes with their
//! revisions, serializable reads, watch streams, leases and locks. The checks in
//! `verify` hold these against the cluster's final history.

use crate::history::Event;

/// A write the cluster acknowledged: it must be in the history at `revision`.
#[derive(Clone, Debug)]
pub struct AckedWrite {
    pub key: String,
    pub value: String,
    pub revision: i64,
    pub slot: usize,
    pub complete_ns: i64,
}

/// A serializable Range of one key on one member.
#[derive(Clone, Debug)]
pub struct SerRead {
    pub slot: usize,
    /// Which register client read (for the violation report).
    pub client: usize,
    pub key: String,
    /// (value, mod_revision) read, `None` when the key was absent.
    pub kv: Option<(String, i64)>,
    pub header_revision: i64,
    pub invoke_ns: i64,
    pub complete_ns: i64,
}

/// One event a watcher received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub revision: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
}

/// One watch stream's life on one member: from its create request to its end.
#[derive(Clone, Debug)]
pub struct WatchSegment {
    pub slot: usize,
    /// The start revision this segment asked for.
    pub start_revision: i64,
    pub created: bool,
    /// The responses with events, in arrival order.
    pub responses: Vec<Vec<WatchEvent>>,
    /// Why it ended (deadline, stream error, cancel).
    pub end: String,
}

/// A watcher as a client sees it: one key range from `start_revision`, resumed after
/// each broken stream from the revision after the last event it had.
#[derive(Clone, Debug)]
pub struct WatchLog {
    pub id: u64,
    pub key: String,
    pub range_end: String,
    pub start_revision: i64,
    pub segments: Vec<WatchSegment>,
}

impl WatchLog {
    /// Whether `key` is in the watched range (etcd's conventions: empty end = one key).
    pub fn matches(&self, key: &str) -> bool {
        if self.range_end.is_empty() {
            key == self.key
        } else {
            key >= self.key.as_str() && key < self.range_end.as_str()
        }
    }
}

/// A lease the lease workload granted and what became of it.
#[derive(Clone, Debug)]
pub struct LeaseLog {
    pub id: i64,
    pub ttl_s: i64,
    /// Keys put with the lease (acknowledged or not).
    pub keys: Vec<String>,
    /// The header revision of an acknowledged revoke.
    pub revoked_revision: Option<i64>,
}

/// An acquired lock: the ownership key and the revision the Lock response carried.
#[derive(Clone, Debug)]
pub struct LockLog {
    pub name: String,
    pub key: String,
    pub revision: i64,
    pub slot: usize,
}

/// Everything the workload recorded.
#[derive(Default, Debug)]
pub struct Recording {
    pub history: Vec<Event>,
    pub writes: Vec<AckedWrite>,
    pub ser_reads: Vec<SerRead>,
    pub watches: Vec<WatchLog>,
    pub leases: Vec<LeaseLog>,
    pub locks: Vec<LockLog>,
    /// Completed operations of every kind (register ops, serializable reads, lease,
    /// lock and watch calls).
    pub ops: u64,
    /// The highest register key index used.
    pub keys_used: u64,
    pub next_process: u64,
}
