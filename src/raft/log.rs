//! `LogStore`: raft-rs's `Storage` over the entries the WAL holds, kept in memory on the
//! raft core.
//!
//! raft-rs reads the log through `&self` while `RawNode` owns it; we change it through
//! `RawNode::mut_store` between `Ready`s, on the same core, so plain fields suffice (no
//! lock, unlike raft-rs's `MemStorage`).
//!
//! Invariants:
//! - `entries[i].index == first_index + i` (consecutive, no holes).
//! - `snapshot_index + 1 == first_index`; the term of `snapshot_index` is kept so raft can
//!   match the entry before the first one.
//! - Everything here is durable in the WAL before raft-rs is told it is persisted
//!   (the driver appends to the WAL and fdatasyncs before `advance`).

use ::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use ::raft::{GetEntriesContext, RaftState, StorageError};

pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_index: u64,
    snapshot_term: u64,
    entries: Vec<Entry>,
    /// [`entry_bytes`] summed over `entries`.
    bytes: u64,
    /// The applied (index, term) the db holds: what a raft snapshot for a lagging
    /// follower describes (the transport streams the db itself).
    applied: (u64, u64),
}

impl LogStore {
    /// A log that starts after `(snapshot_index, snapshot_term)` (0, 0 for a new member).
    pub fn new(
        hard_state: HardState,
        conf_state: ConfState,
        snapshot_index: u64,
        snapshot_term: u64,
    ) -> LogStore {
        LogStore {
            hard_state,
            conf_state,
            snapshot_index,
            snapshot_term,
            entries: Vec::new(),
            bytes: 0,
            applied: (snapshot_index, snapshot_term),
        }
    }

    /// The applied state a snapshot sent now would hold.
    pub fn set_snapshot_source(&mut self, index: u64, term: u64) {
        self.applied = (index, term);
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The first index held (the snapshot index + 1).
    pub fn first_index_raw(&self) -> u64 {
        self.first()
    }

    fn first(&self) -> u64 {
        self.snapshot_index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    /// Appends `ents`, replacing any entries at or after the first one's index (raft's
    /// overwrite of an uncommitted suffix).
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        assert!(
            first.index >= self.first() && first.index <= self.last() + 1,
            "append at {} to a log of [{}, {}]",
            first.index,
            self.first(),
            self.last()
        );
        let keep = (first.index - self.first()) as usize;
        self.bytes -= self.entries[keep..].iter().map(entry_bytes).sum::<u64>();
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        self.bytes += ents.iter().map(entry_bytes).sum::<u64>();
        self.invariants();
    }

    /// Drops entries up to and including `index` (they are in the db now).
    ///
    /// Returns the entries dropped, for the caller to free off the raft loop: freeing the
    /// ~95,000 entries of a `--snapshot-count` 100,000 compaction took ~30 ms here.
    #[must_use = "the dropped entries are returned to be freed elsewhere"]
    pub fn compact(&mut self, index: u64) -> Vec<Entry> {
        if index < self.first() {
            return Vec::new();
        }
        assert!(
            index <= self.last(),
            "compact to {index} past the last entry"
        );
        let term = self.entries[(index - self.first()) as usize].term;
        let cut = (index + 1 - self.first()) as usize;
        // The kept tail moves to a vector of the same capacity (no reallocations as the
        // log grows again); the dropped head stays in the old one, returned whole.
        let mut kept = Vec::with_capacity(self.entries.capacity());
        kept.extend(self.entries.drain(cut..));
        let dropped = std::mem::replace(&mut self.entries, kept);
        // Summed over the few kept (the catch-up entries and those not yet in the db),
        // not over the up to ~100,000 dropped, whose structs the raft loop would
        // otherwise walk at every snapshot.
        self.bytes = self.entries.iter().map(entry_bytes).sum();
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.invariants();
        dropped
    }

    /// The bytes the entries held take ([`entry_bytes`]): what `--snapshot-bytes` bounds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The lowest index from which the entries up to `upto` take at most `bytes_max`
    /// bytes (`upto + 1` when even that one entry is bigger), never below the first held.
    pub fn first_index_within(&self, upto: u64, bytes_max: u64) -> u64 {
        let upto = upto.min(self.last());
        let mut from = upto + 1;
        let mut bytes = 0;
        while from > self.first() {
            bytes += entry_bytes(&self.entries[(from - 1 - self.first()) as usize]);
            if bytes > bytes_max {
                break;
            }
            from -= 1;
        }
        from
    }

    pub fn invariants(&self) {
        debug_assert!(self
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == self.first() + i as u64));
        debug_assert_eq!(
            self.bytes,
            self.entries.iter().map(entry_bytes).sum::<u64>()
        );
    }

    fn check_range(&self, low: u64, high: u64) -> ::raft::Result<()> {
        if low < self.first() {
            return Err(::raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last() + 1,
            "entries [{low}, {high}) out of bound {}",
            self.last()
        );
        Ok(())
    }
}

/// What an entry held in memory takes: its struct and its payloads (allocator rounding and
/// the vector's spare capacity are not counted).
pub fn entry_bytes(e: &Entry) -> u64 {
    (std::mem::size_of::<Entry>() + e.data.len() + e.context.len()) as u64
}

impl ::raft::Storage for LogStore {
    fn initial_state(&self) -> ::raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> ::raft::Result<Vec<Entry>> {
        self.check_range(low, high)?;
        let start = (low - self.first()) as usize;
        let end = (high - self.first()) as usize;
        let mut ents = self.entries[start..end].to_vec();
        ::raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> ::raft::Result<u64> {
        if idx == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if idx < self.first() {
            return Err(::raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(::raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> ::raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> ::raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> ::raft::Result<Snapshot> {
        // Only the metadata: the transport streams the published db with the message.
        let (index, term) = self.applied;
        if index == 0 || index < request_index {
            return Err(::raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_describes_the_applied_state() {
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        let mut log = LogStore::new(HardState::default(), cs, 0, 0);
        // Nothing applied yet: raft is told to retry later.
        assert!(log.snapshot(0, 2).is_err());
        log.set_snapshot_source(42, 3);
        let snap = log.snapshot(40, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 42);
        assert_eq!(snap.get_metadata().term, 3);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        assert!(snap.data.is_empty(), "the db travels beside the message");
        // Asked for more than is applied: not yet.
        assert!(log.snapshot(43, 2).is_err());
    }

    #[test]
    fn bytes_follow_appends_overwrites_and_compactions() {
        let sized = |index: u64, data: usize| Entry {
            index,
            term: 1,
            data: vec![7; data].into(),
            ..Default::default()
        };
        let each = |data: usize| entry_bytes(&sized(0, data));
        let mut log = LogStore::new(HardState::default(), ConfState::default(), 0, 0);
        log.append(&[sized(1, 100), sized(2, 200), sized(3, 300)]);
        assert_eq!(log.bytes(), each(100) + each(200) + each(300));
        log.append(&[sized(3, 50)]);
        assert_eq!(log.bytes(), each(100) + each(200) + each(50));
        // The lowest index whose entries up to 3 fit the bound.
        assert_eq!(log.first_index_within(3, each(50)), 3);
        assert_eq!(log.first_index_within(3, each(50) + each(200)), 2);
        assert_eq!(log.first_index_within(3, u64::MAX), 1);
        assert_eq!(
            log.first_index_within(3, 0),
            4,
            "not even the last one fits"
        );
        assert_eq!(log.first_index_within(2, each(200)), 2);
        let _dropped = log.compact(1);
        assert_eq!(log.bytes(), each(200) + each(50));
        assert_eq!(
            log.first_index_within(3, u64::MAX),
            2,
            "never below the first held"
        );
    }

    #[test]
    fn append_overwrites_the_suffix_and_compact_keeps_the_term() {
        let mut log = LogStore::new(HardState::default(), ConfState::default(), 0, 0);
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        log.append(&[entry(2, 2)]);
        assert_eq!(log.last_index().unwrap(), 2);
        assert_eq!(log.term(2).unwrap(), 2);
        let dropped = log.compact(1);
        assert_eq!(dropped.iter().map(|e| e.index).collect::<Vec<_>>(), [1]);
        assert_eq!(log.first_index().unwrap(), 2);
        assert_eq!(log.term(1).unwrap(), 1);
        assert!(log.term(0).is_err());
        assert!(log
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .is_err());
        let got = log
            .entries(2, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, vec![entry(2, 2)]);
    }
}
