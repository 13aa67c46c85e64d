//! Key-range shards: every core owns one contiguous key range, with a replica of the key
//! index for that range (fed by the raft core's applied rounds) over which it serves
//! Range from the published pages of the mmap'd revision tree.
//!
//! Runs on: every core (one `Shard` each, inside its `node::Node`).
//!
//! - Split keys are chosen by the raft core at boot from the keys in the store (equal
//!   key counts per shard), or taken from `--shard-split-keys`; shard *i* owns
//!   `[split[i-1], split[i])` (the first starts at "", the last is unbounded).
//! - A replica applies exactly the Puts, Deletes and Compactions of its range, in the
//!   raft core's order, so it equals the authoritative index restricted to the range.
//! - A read at revision *r* is served by every shard the range touches, each once it has
//!   applied the round holding *r*; the parts merge exactly ([`merge`]).
//! - Shards follow the data: when the keys drift out of balance (a prefix that grows after
//!   boot), the raft core moves split keys a step at a time ([`Move`], `raft/rebalance.rs`).
//!   A step rides on a round, after its changes: every core takes the new split keys
//!   there, the shard losing the step's keys drops them and the one gaining them takes the
//!   histories the step carries, so each replica still equals the authoritative index
//!   restricted to its range. A part of a read routed by older (or newer) split keys than
//!   the serving shard's is refused ([`Shard::serves_as`]) and routed again.

pub use crate::mesh::ShardMove as Move;
use crate::mvcc::db::{ReadSnapshot, TreeId};
use crate::mvcc::store::SharedIndex;
use crate::mvcc::{
    self, kv, Change, KeyIndex, KeyRange, RangeRequest, RangeResponse, ReadView, Revision,
    SortOrder, SortTarget,
};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

/// Split keys for `shards` shards: the configured ones when they fit, else key-count
/// quantiles of the keys in `index`, else (an empty store) evenly over printable ASCII.
pub fn split_keys(index: &KeyIndex, shards: usize, configured: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let want = shards.saturating_sub(1);
    if want == 0 {
        return Vec::new();
    }
    if !configured.is_empty() {
        return configured_splits(shards, configured);
    }
    let n = index.key_count();
    if n >= shards * 2 {
        let mut out = Vec::with_capacity(want);
        let mut next = 1;
        for (i, k) in index.keys().enumerate() {
            if next <= want && i == n * next / shards {
                out.push(k.to_vec());
                next += 1;
            }
        }
        out.dedup();
        return out;
    }
    (1..=want)
        .map(|i| vec![b' ' + ((0x7f - b' ') as usize * i / shards) as u8])
        .collect()
}

/// The configured split keys for `shards` shards (`--shard-split-keys`), as
/// [`split_keys`] takes them: sorted, without duplicates or the empty key, at most one
/// fewer than the shards.
pub fn configured_splits(shards: usize, configured: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = configured.to_vec();
    s.sort();
    s.dedup();
    s.retain(|k| !k.is_empty());
    s.truncate(shards.saturating_sub(1));
    s
}

/// Where the raft core keeps the current split keys in the db's Meta tree: a hint for the
/// next boot, whose replicas are built from it while the raft core rebuilds its own
/// index ([`build_replica`]). Not part of the store's state: a wrong or stale hint only
/// costs a replica built again.
pub const SPLITS_META_KEY: &[u8] = b"shard_splits";

/// The split keys the last run kept in `db` ([`SPLITS_META_KEY`]), if they are for
/// `shards` shards.
pub fn kept_splits(db: &crate::mvcc::db::Db, shards: usize) -> Option<Vec<Vec<u8>>> {
    let bytes = db.get(TreeId::Meta, SPLITS_META_KEY).ok().flatten()?;
    decode_splits(bytes).filter(|s| s.len() + 1 == shards && shards > 1)
}

/// The split keys known at boot before the key index is rebuilt: the configured ones,
/// else the ones the last run kept for as many shards; `None` when they are to be chosen
/// from the index. The raft core boots with these and the other cores' replicas are
/// built for them, so both ask here.
pub fn boot_splits(
    db: &crate::mvcc::db::Db,
    shards: usize,
    configured: &[Vec<u8>],
) -> Option<Vec<Vec<u8>>> {
    if configured.is_empty() {
        kept_splits(db, shards)
    } else {
        Some(configured_splits(shards, configured))
    }
}

/// Split keys longer than this in all are not kept as a hint.
const SPLITS_HINT_BYTES_MAX: usize = 64 << 10;

/// The hint's bytes: each key's length (u32, big-endian), then the key. `None` when the
/// keys are too long to keep.
pub fn encode_splits(splits: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for k in splits {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
    }
    (out.len() <= SPLITS_HINT_BYTES_MAX).then_some(out)
}

/// The split keys of a hint; `None` if it is damaged (or not ascending).
pub fn decode_splits(mut bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let key = rest.get(..len)?;
        if key.is_empty() || out.last().is_some_and(|last| last.as_slice() >= key) {
            return None;
        }
        out.push(key.to_vec());
        bytes = &rest[len..];
    }
    Some(out)
}

/// A replica built at boot before the shard's first round: from the db as it was opened
/// (before the raft core rebuilt its own index or applied anything), under the split
/// keys the last run kept ([`SPLITS_META_KEY`]). The first round's changes bring it up
/// to the round; it is used only if the round's split keys are the same.
pub struct Prebuilt {
    pub splits: Vec<Vec<u8>>,
    pub index: KeyIndex,
    /// The db's compact revision when it was opened.
    pub compact_revision: i64,
    /// Whether a sweep of that compaction was pending (the replica still holds history
    /// it drops).
    pub sweep_pending: bool,
}

/// Shard `id`'s replica under `splits`, from every record of `snapshot`.
pub fn build_replica(
    id: usize,
    splits: &[Vec<u8>],
    snapshot: &ReadSnapshot,
) -> Result<KeyIndex, mvcc::Error> {
    // Sized once for its share of the keys the meta recorded (each growth of the map is
    // a rehash into a fresh, zeroed table).
    let share = snapshot.app_meta().key_count as usize / (splits.len() + 1);
    let mut index = KeyIndex::with_capacity(share + share / 16);
    for entry in snapshot.range(TreeId::Revision, &[], &[]) {
        let (k, v) = entry?;
        let rev = Revision::decode(k).ok_or_else(|| mvcc::Error::Corrupt {
            what: format!("revision tree key {k:02x?}"),
        })?;
        let (kind, record) = kv::decode_record_ref(v)?;
        if shard_of(splits, record.key) != id {
            continue;
        }
        let tombstone = kind == kv::RecordKind::Tombstone;
        index.restore(
            record.key,
            rev,
            tombstone,
            record.create_revision,
            record.version,
        );
    }
    index.finish_restore();
    Ok(index)
}

/// [`build_replica`] for a [`Prebuilt`].
pub fn prebuild(
    id: usize,
    splits: Vec<Vec<u8>>,
    snapshot: &ReadSnapshot,
) -> Result<Prebuilt, mvcc::Error> {
    let index = build_replica(id, &splits, snapshot)?;
    let meta = snapshot.app_meta();
    Ok(Prebuilt {
        splits,
        index,
        compact_revision: meta.compact_revision.max(0),
        sweep_pending: meta.compact_sweep != 0,
    })
}

/// The shard owning `key`.
pub fn shard_of(splits: &[Vec<u8>], key: &[u8]) -> usize {
    splits.partition_point(|s| s.as_slice() <= key)
}

/// The shards a request's `key` / `range_end` touches, in key order.
pub fn shards_for(splits: &[Vec<u8>], key: &[u8], range_end: &[u8]) -> Range<usize> {
    match KeyRange::new(key, range_end) {
        KeyRange::Single(k) => {
            let s = shard_of(splits, k);
            s..s + 1
        }
        KeyRange::From(k) => shard_of(splits, k)..splits.len() + 1,
        KeyRange::Between(k, e) if k < e => {
            let last = splits.partition_point(|s| s.as_slice() < e);
            shard_of(splits, k)..last + 1
        }
        KeyRange::Between(k, _) => {
            let s = shard_of(splits, k);
            s..s + 1
        }
    }
}

/// The key range shard `id` owns under `splits`: `[lo, hi)`, `None` for unbounded.
pub fn bounds(splits: &[Vec<u8>], id: usize) -> (Option<&[u8]>, Option<&[u8]>) {
    let lo = id
        .checked_sub(1)
        .and_then(|i| splits.get(i))
        .map(Vec::as_slice);
    (lo, splits.get(id).map(Vec::as_slice))
}

impl Move {
    /// A step that moves split key `boundary` of `splits` over at most `max_keys` keys of
    /// `index` (and `d` live ones): up when the shard left of it should grow by `d`, down
    /// when it should shrink (`d` < 0), never past the split keys beside it. `None` when
    /// no key lies that way.
    pub fn plan(
        index: &KeyIndex,
        splits: &Arc<Vec<Vec<u8>>>,
        boundary: usize,
        d: i64,
        max_keys: usize,
    ) -> Option<Move> {
        let at = splits.get(boundary)?;
        let want = d.unsigned_abs() as usize;
        let (keys, live) = if d > 0 {
            let above = splits.get(boundary + 1).map(Vec::as_slice);
            index.export(at, above, false, max_keys, want)
        } else {
            let below = boundary.checked_sub(1).map(|i| splits[i].as_slice());
            index.export(at, below, true, max_keys, want)
        };
        let (first, last) = (keys.first()?, keys.last()?);
        let mut moved = splits.to_vec();
        let (from, to, lo, hi) = if d > 0 {
            // The new split key is the least key above the last one moved.
            let mut next = last.0.as_bytes().to_vec();
            next.push(0);
            moved[boundary] = next.clone();
            (boundary + 1, boundary, at.clone(), next)
        } else {
            let lowest = first.0.as_bytes().to_vec();
            moved[boundary] = lowest.clone();
            (boundary, boundary + 1, lowest, at.clone())
        };
        Some(Move {
            splits: Arc::new(moved),
            from,
            to,
            lo,
            hi,
            keys,
            live,
        })
    }
}

/// The key index a shard reads.
enum Replica {
    /// A replica of the shard's range, fed by the rounds.
    Own(KeyIndex),
    /// The raft core's whole index, seen through the shard's bounds: the shard of the raft
    /// core's own core (the rounds' changes are already in it).
    Shared(Rc<SharedIndex>),
}

/// One core's key-range shard.
pub struct Shard {
    id: usize,
    splits: Arc<Vec<Vec<u8>>>,
    index: Replica,
    snapshot: ReadSnapshot,
    applied_index: u64,
    revision: i64,
    compact_revision: i64,
    /// A compaction of the replica still to finish: its revision and the key to go on
    /// from (`compact_step`).
    compacting: Option<(i64, Vec<u8>)>,
}

/// Keys a step of a replica's compaction handles at most: the pause it adds to the
/// core's other tasks (under 1 ms under a put load at 500k keys, tuning.md issue 23).
pub const COMPACT_STEP_KEYS: usize = 2048;

impl Shard {
    /// The shard `id`, its replica rebuilt from `snapshot` (the state at `applied_index`
    /// and `revision`).
    pub fn boot(
        id: usize,
        splits: Arc<Vec<Vec<u8>>>,
        snapshot: ReadSnapshot,
        applied_index: u64,
        revision: i64,
        compact_revision: i64,
    ) -> Result<Shard, mvcc::Error> {
        let index = build_replica(id, &splits, &snapshot)?;
        // A snapshot taken while the raft core's sweep was under way still holds records
        // the compaction drops, and so does a replica built from it.
        let compacting =
            (snapshot.app_meta().compact_sweep != 0).then(|| (compact_revision, Vec::new()));
        Ok(Shard {
            id,
            splits,
            index: Replica::Own(index),
            snapshot,
            applied_index,
            revision,
            compact_revision,
            compacting,
        })
    }

    /// The shard `id` from a replica built before its first round, brought up to that
    /// round by its changes and steps (`apply_chunks`; `advance` follows). `None` (the
    /// replica given back) if the round's split keys are not the ones it was built for.
    pub fn from_prebuilt(
        id: usize,
        p: Prebuilt,
        splits: &Arc<Vec<Vec<u8>>>,
        snapshot: ReadSnapshot,
    ) -> Result<Shard, Prebuilt> {
        if p.splits != **splits {
            return Err(p);
        }
        Ok(Shard {
            id,
            splits: splits.clone(),
            index: Replica::Own(p.index),
            snapshot,
            applied_index: 0,
            revision: 0,
            compact_revision: p.compact_revision,
            compacting: p.sweep_pending.then(|| (p.compact_revision, Vec::new())),
        })
    }

    /// The shard `id` of the raft core's own core, reading the raft core's `index` (as of
    /// the round of `snapshot`) instead of a replica.
    pub fn shared(
        id: usize,
        splits: Arc<Vec<Vec<u8>>>,
        index: Rc<SharedIndex>,
        snapshot: ReadSnapshot,
        applied_index: u64,
        revision: i64,
        compact_revision: i64,
    ) -> Shard {
        index.shard_compacted(compact_revision);
        Shard {
            id,
            splits,
            index: Replica::Shared(index),
            snapshot,
            applied_index,
            revision,
            compact_revision,
            compacting: None,
        }
    }

    /// Whether this shard reads the raft core's index (no replica of its own).
    pub fn is_shared(&self) -> bool {
        matches!(self.index, Replica::Shared(_))
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn splits(&self) -> &Arc<Vec<Vec<u8>>> {
        &self.splits
    }

    pub fn owns(&self, key: &[u8]) -> bool {
        shard_of(&self.splits, key) == self.id
    }

    /// Whether this shard owns exactly the range `splits` give it: a read part routed by
    /// `splits` finds here all the keys it was sent for and no other shard's.
    pub fn serves_as(&self, splits: &Arc<Vec<Vec<u8>>>) -> bool {
        Arc::ptr_eq(splits, &self.splits)
            || bounds(splits, self.id) == bounds(&self.splits, self.id)
    }

    /// Takes one rebalance step (at its place in the round): the new split keys, and the
    /// step's keys dropped or taken over if this shard is the one losing or gaining them.
    pub fn take_move(&mut self, m: &Move) {
        let Replica::Own(index) = &mut self.index else {
            // The whole index is there already: the new bounds are all it takes.
            self.splits = m.splits.clone();
            return;
        };
        if m.from == self.id {
            index.remove_range(&m.lo, Some(&m.hi));
        }
        if m.to == self.id {
            // Compacted as far as this replica is (a compaction of this round may not
            // be in `compact_revision` yet).
            let at = self
                .compacting
                .as_ref()
                .map_or(self.compact_revision, |(at, _)| *at)
                .max(self.compact_revision);
            index.import(&m.keys, at);
        }
        self.splits = m.splits.clone();
    }

    /// Keys with history in this shard's range (for a shard reading the raft core's
    /// index, a walk over the range).
    pub fn key_count(&self) -> usize {
        match &self.index {
            Replica::Own(index) => index.key_count(),
            Replica::Shared(shared) => {
                let index = shared.borrow();
                index.keys().filter(|k| self.owns(k)).count()
            }
        }
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    pub fn snapshot(&self) -> &ReadSnapshot {
        &self.snapshot
    }

    /// Applies one round: the changes of this shard's range, then the new snapshot and
    /// watermark.
    pub fn apply<'c>(
        &mut self,
        changes: impl IntoIterator<Item = &'c Change>,
        snapshot: ReadSnapshot,
        applied_index: u64,
        revision: i64,
        compact_revision: i64,
    ) {
        self.apply_changes(changes);
        self.advance(snapshot, applied_index, revision, compact_revision);
    }

    /// A round's new snapshot and watermark, after its changes and moves.
    pub fn advance(
        &mut self,
        snapshot: ReadSnapshot,
        applied_index: u64,
        revision: i64,
        compact_revision: i64,
    ) {
        self.snapshot = snapshot;
        self.applied_index = applied_index;
        self.revision = revision;
        self.compact_revision = compact_revision;
        if let Replica::Shared(index) = &self.index {
            // The raft core's sweep of this compaction may go on now.
            index.shard_compacted(compact_revision);
        }
    }

    /// A whole round: its changes and rebalance steps, then its snapshot and watermark.
    pub fn take_round(&mut self, a: &crate::mesh::Applied) {
        self.apply_chunks(&a.changes, &a.moves);
        self.advance(a.snapshot.clone(), a.index, a.revision, a.compact_revision);
    }

    /// A round's changes, in chunks, with the rebalance steps between them (each after
    /// the number of chunks given with it); `advance` follows.
    pub fn apply_chunks(&mut self, chunks: &[Arc<Vec<Change>>], moves: &[(usize, Arc<Move>)]) {
        let mut moves = moves.iter().peekable();
        for (i, chunk) in chunks.iter().enumerate() {
            while let Some((_, m)) = moves.next_if(|(at, _)| *at <= i) {
                self.take_move(m);
            }
            self.apply_changes(chunk.iter());
        }
        for (_, m) in moves {
            self.take_move(m);
        }
    }

    /// The changes of this shard's range (part of a round: `advance` follows).
    pub fn apply_changes<'c>(&mut self, changes: impl IntoIterator<Item = &'c Change>) {
        let Replica::Own(index) = &mut self.index else {
            // The raft core applied them to the index this shard reads, and sweeps its
            // compactions itself.
            return;
        };
        let splits = &self.splits;
        let owns = |key: &[u8]| shard_of(splits, key) == self.id;
        for c in changes {
            match c {
                Change::Put { rev, kv, .. } if owns(&kv.key) => {
                    index.put(&kv.key, *rev);
                }
                Change::Delete { rev, key, .. } if owns(key) => {
                    index.tombstone(key, *rev);
                }
                Change::Compact { revision } => {
                    // From the first key again: those already done were done for an
                    // earlier revision.
                    self.compacting = Some((*revision, Vec::new()));
                }
                _ => {}
            }
        }
    }

    /// Whether the replica has a compaction to finish (`compact_step`).
    pub fn compaction_pending(&self) -> bool {
        self.compacting.is_some()
    }

    /// One step of the replica's pending compaction: `max_keys` keys at most. Returns
    /// whether more is left. Done a step at a time between the core's other tasks, so a
    /// compaction of millions of keys never holds a core; reads at or above the compact
    /// revision answer the same before and after (`KeyIndex::compact_slice`).
    pub fn compact_step(&mut self, max_keys: usize) -> bool {
        let Replica::Own(index) = &mut self.index else {
            return false;
        };
        let Some((at, from)) = self.compacting.take() else {
            return false;
        };
        self.compacting = index
            .compact_slice(at, &from, max_keys)
            .map(|next| (at, next));
        self.compacting.is_some()
    }

    /// This shard's part of a Range read at revision `at` (≤ its revision).
    pub fn range(&self, req: &RangeRequest, at: i64) -> mvcc::Result<RangeResponse> {
        self.with_view(|view| view.range(req, at))
    }

    /// One slice of this shard's part of a Range (`ReadView::range_slice`).
    pub fn range_slice(
        &self,
        req: &RangeRequest,
        at: i64,
        from: Option<&[u8]>,
        keys_max: usize,
        read: &mut mvcc::SliceRead,
    ) -> mvcc::Result<Option<Vec<u8>>> {
        self.with_view(|view| view.range_slice(req, at, from, keys_max, read))
    }

    /// The live value of `key` at revision `at`, if this shard owns it.
    pub fn get(&self, key: &[u8], at: i64) -> mvcc::Result<Option<mvcc::KeyValue>> {
        self.with_view(|view| view.load_key(key, at))
    }

    /// Reads over this shard's keys as of its round.
    fn with_view<T>(&self, f: impl FnOnce(&ReadView<'_, ReadSnapshot>) -> T) -> T {
        match &self.index {
            Replica::Own(index) => f(&ReadView::new(index, &self.snapshot, self.compact_revision)),
            Replica::Shared(shared) => {
                let index = shared.borrow();
                let (lo, hi) = bounds(&self.splits, self.id);
                let view = ReadView::new(&index, &self.snapshot, self.compact_revision);
                f(&view.within(lo.unwrap_or_default(), hi))
            }
        }
    }
}

/// The request each shard of a multi-shard range gets: a VALUE sort needs the values
/// even when only keys are asked for (they are dropped after the merge).
pub fn part_request(req: &RangeRequest) -> RangeRequest {
    let mut part = req.clone();
    if !mvcc::RawKvs::serves(req) {
        // Decoded parts for a merge that sorts or filters (a part below may look
        // servable raw once its sort target is KEY).
        part.raw_bytes_max = 0;
    }
    if part.keys_only && part.sort_target == SortTarget::Value {
        part.keys_only = false;
    }
    if sorts_first_keys_only(req) {
        part.sort_target = SortTarget::Key;
        // One more than asked, to know whether there is more; a limit of i64::MAX
        // already covers every key.
        part.limit = req.limit.saturating_add(1);
    }
    part
}

/// etcd's quirk: with a sort target but no sort order, no filter and a limit, it fetches
/// the first `limit + 1` keys in key order and sorts only those (ascending).
fn sorts_first_keys_only(req: &RangeRequest) -> bool {
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    req.sort_order == SortOrder::None
        && req.sort_target != SortTarget::Key
        && !filtered
        && req.limit > 0
}

/// A positive request limit as a length (saturating where usize is narrower than i64).
fn limit_len(limit: i64) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Merges the shards' parts (in key order of the shards) into the one response a single
/// index would give: each part is already pruned, sorted and cut at `limit`; the union's
/// first `limit` after a stable sort are the answer, `more` if anything was left out.
pub fn merge(req: &RangeRequest, parts: Vec<RangeResponse>, revision: i64) -> RangeResponse {
    if parts.iter().any(|p| p.raw.is_some()) {
        return merge_raw(req, parts, revision);
    }
    let first_keys = sorts_first_keys_only(req);
    let mut count = 0;
    let mut more = false;
    let mut kvs = Vec::new();
    for p in parts {
        count += p.count;
        more |= p.more && !first_keys;
        kvs.extend(p.kvs);
    }
    if first_keys {
        kvs.truncate(limit_len(req.limit).saturating_add(1));
    }
    // The single-index sort (stable, so ties stay in key order as the parts arrive).
    mvcc::read::sort(&mut kvs, req);
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(limit_len(req.limit));
        more = true;
    }
    if req.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    RangeResponse {
        header: mvcc::ResponseHeader { revision },
        kvs,
        more,
        count,
        raw: None,
    }
}

/// [`merge`] of raw parts (`RawKvs::serves`): in key order already, so the parts follow
/// one another (not copied together), then the limit.
fn merge_raw(req: &RangeRequest, parts: Vec<RangeResponse>, revision: i64) -> RangeResponse {
    let mut count = 0;
    let mut more = false;
    let mut raw = mvcc::RawParts::default();
    for p in parts {
        count += p.count;
        more |= p.more;
        raw.0.extend(p.raw.unwrap_or_default().0);
    }
    if req.limit > 0 && raw.len() as i64 > req.limit {
        raw.truncate(limit_len(req.limit));
        more = true;
    }
    RangeResponse {
        header: mvcc::ResponseHeader { revision },
        kvs: Vec::new(),
        more,
        count,
        raw: Some(raw),
    }
}

#[cfg(test)]
pub(crate) mod tests;
