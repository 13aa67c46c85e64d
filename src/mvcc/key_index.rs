//! `KeyIndex`: etcd's treeIndex. Key → generations of revisions, in memory.
//!
//! A key's history ([`KeyHistory`], etcd's keyIndex) is a list of generations. A
//! generation is one life of the key: from the put that created it to the tombstone that
//! deleted it (inclusive). The last generation is the current life, empty if the key is
//! deleted now. Example: put(1) put(2) delete(3) put(4) delete(5) on "foo" gives
//! `{1,2,3(t)} {4,5(t)} {}`.
//!
//! Invariants (checked by `KeyHistory::invariants`):
//! - revisions strictly increase across all generations of a key;
//! - only the last generation may be empty; every other one ends with its tombstone;
//! - a key whose history is a single empty generation is not in the map.
//!
//! The last generation is stored inline in the [`KeyHistory`], itself inline in the map's
//! table, and a generation's first revision inline in it: a key with one life and one
//! revision (most keys of a large store) takes no allocation of its own, and a put or a
//! read at the newest revision reads the generation from the table's cache line instead
//! of following pointers to it and to its revisions.
//!
//! Keys of up to [`INLINE_KEY_BYTES_MAX`] bytes are stored inline in the map's nodes
//! ([`IndexKey`]), so a lookup compares bytes already in the node instead of chasing one
//! heap pointer (one cache miss) per comparison.

use super::revision::Revision;
use smallvec::{smallvec, SmallVec};
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::ops::Bound;

/// Longest key stored inline in an [`IndexKey`].
pub const INLINE_KEY_BYTES_MAX: usize = 22;

/// Byte-wise (memcmp) order, with the first 8 bytes compared as one big-endian word: the
/// same order as `<[u8]>::cmp`, without a libc call for most comparisons.
#[inline]
pub fn cmp_key_bytes(a: &[u8], b: &[u8]) -> Ordering {
    if let (Some(x), Some(y)) = (a.first_chunk::<8>(), b.first_chunk::<8>()) {
        let (x, y) = (u64::from_be_bytes(*x), u64::from_be_bytes(*y));
        if x != y {
            return x.cmp(&y);
        }
        if a.len() == 8 && b.len() == 8 {
            return Ordering::Equal;
        }
        return a[8..].cmp(&b[8..]);
    }
    a.cmp(b)
}

/// A borrowed key with [`cmp_key_bytes`] order: what map lookups compare against.
#[repr(transparent)]
#[derive(PartialEq, Eq, Hash)]
pub struct KeyBytes([u8]);

impl KeyBytes {
    #[allow(unsafe_code)]
    #[inline]
    pub fn new(bytes: &[u8]) -> &KeyBytes {
        // SAFETY: `KeyBytes` is `#[repr(transparent)]` over `[u8]`, so `&[u8]` and
        // `&KeyBytes` have the same layout and pointer metadata (the length); the lifetime
        // is carried over unchanged.
        unsafe { &*(bytes as *const [u8] as *const KeyBytes) }
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Ord for KeyBytes {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_key_bytes(&self.0, &other.0)
    }
}

impl PartialOrd for KeyBytes {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// An owned index key: inline up to [`INLINE_KEY_BYTES_MAX`] bytes, boxed beyond.
#[derive(Clone)]
pub enum IndexKey {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES_MAX],
    },
    Boxed(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<IndexKey>() == 24);

impl IndexKey {
    pub fn new(key: &[u8]) -> IndexKey {
        if key.len() <= INLINE_KEY_BYTES_MAX {
            let mut bytes = [0; INLINE_KEY_BYTES_MAX];
            bytes[..key.len()].copy_from_slice(key);
            IndexKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            IndexKey::Boxed(key.into())
        }
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => &bytes[..*len as usize],
            IndexKey::Boxed(b) => b,
        }
    }
}

impl Borrow<KeyBytes> for IndexKey {
    #[inline]
    fn borrow(&self) -> &KeyBytes {
        KeyBytes::new(self.as_bytes())
    }
}

impl Hash for IndexKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash as `KeyBytes` (its derived Hash hashes the `[u8]`), see `Borrow`.
        self.as_bytes().hash(state)
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IndexKey {}

impl Ord for IndexKey {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_key_bytes(self.as_bytes(), other.as_bytes())
    }
}

impl PartialOrd for IndexKey {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", self.as_bytes())
    }
}

/// The key range of a request, decoded from etcd's `key` / `range_end` pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// `range_end` empty: the single key.
    Single(&'a [u8]),
    /// `range_end` = "\0": every key >= `key`.
    From(&'a [u8]),
    /// `[key, range_end)`; empty when `range_end <= key`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    /// The part of this range inside `[lo, hi)` (`hi` `None`: unbounded).
    pub fn clip<'r>(self, lo: &'r [u8], hi: Option<&'r [u8]>) -> KeyRange<'r>
    where
        'a: 'r,
    {
        let inside = |k: &[u8]| k >= lo && hi.is_none_or(|h| k < h);
        match self {
            KeyRange::Single(k) if inside(k) => KeyRange::Single(k),
            // Empty.
            KeyRange::Single(k) => KeyRange::Between(k, k),
            KeyRange::From(k) => {
                let from = k.max(lo);
                match hi {
                    Some(h) => KeyRange::Between(from, h),
                    None => KeyRange::From(from),
                }
            }
            KeyRange::Between(k, e) if k < e => {
                KeyRange::Between(k.max(lo), hi.map_or(e, |h| e.min(h)))
            }
            empty @ KeyRange::Between(..) => empty,
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::From(key) => k >= key,
            KeyRange::Between(key, end) => k >= key && k < end,
        }
    }
}

/// What a key looked like at some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAt {
    /// The revision of the record holding the key's value then.
    pub modified: Revision,
    pub create_revision: i64,
    pub version: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// Number of puts in this life (not reduced by compaction).
    pub version: i64,
    /// Revision of the put that created this life.
    pub created: Revision,
    /// Inline while the life has one revision (most keys of a large store): no
    /// allocation of its own, and no pointer to follow.
    pub revs: SmallVec<[Revision; 1]>,
}

/// etcd's keyIndex: one key's generations. The vector spills to the heap only once the
/// key has been deleted (a finished generation and the empty current one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyHistory {
    pub generations: SmallVec<[Generation; 1]>,
}

impl KeyHistory {
    /// The largest revision (the default for no history): the last one of the last
    /// generation, or of the one before it when the key is deleted now.
    pub fn modified(&self) -> Revision {
        let mut gens = self.generations.iter().rev();
        let last = gens.next().and_then(|g| g.revs.last());
        last.or_else(|| gens.next().and_then(|g| g.revs.last()))
            .copied()
            .unwrap_or_default()
    }

    /// Whether the key is alive at its newest revision.
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].revs.is_empty()
    }

    fn put(&mut self, rev: Revision) {
        let modified = self.modified();
        assert!(rev > modified, "put at {rev:?} not after {modified:?}");
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self.generations.last_mut().expect("one generation");
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.version += 1;
    }

    /// False (and no change) if the key is not alive now.
    fn tombstone(&mut self, rev: Revision) -> bool {
        match self.generations.last() {
            Some(g) if !g.revs.is_empty() => {}
            _ => return false,
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// The generation alive at main revision `at`, if the key existed then.
    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(tomb)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if i != last && tomb.main <= at {
                return None;
            }
            if first.main <= at {
                return Some(g);
            }
        }
        None
    }

    #[inline]
    fn get(&self, at: i64) -> Option<KeyAt> {
        // Fast path: at or after the last change, the answer is the key's live state.
        let g = self.generations.last()?;
        match g.revs.last() {
            Some(&modified) if at >= modified.main => {
                return Some(KeyAt {
                    modified,
                    create_revision: g.created.main,
                    version: g.version,
                });
            }
            None if at >= self.modified().main => return None, // deleted since
            _ => {}
        }
        self.get_in_history(at)
    }

    fn get_in_history(&self, at: i64) -> Option<KeyAt> {
        let g = self.find_generation(at)?;
        let n = g.revs.iter().rposition(|r| r.main <= at)?;
        Some(KeyAt {
            modified: g.revs[n],
            create_revision: g.created.main,
            version: g.version - (g.revs.len() - n - 1) as i64,
        })
    }

    /// etcd's doCompact: the generation to keep from and, inside it, the index of the
    /// latest revision <= `at`, if any.
    fn do_compact(&self, at: i64) -> (usize, Option<usize>) {
        let mut gen_index = 0;
        while gen_index + 1 < self.generations.len() {
            let tomb = self.generations[gen_index]
                .revs
                .last()
                .expect("non-last generation");
            if tomb.main > at {
                break;
            }
            gen_index += 1;
        }
        let g = &self.generations[gen_index];
        (gen_index, g.revs.iter().rposition(|r| r.main <= at))
    }

    /// Compacts at `at`; returns the revision <= `at` the Revision tree keeps for this
    /// key (its latest one unless that is a tombstone).
    fn compact(&mut self, at: i64) -> Option<Revision> {
        let (mut gen_index, rev_index) = self.do_compact(at);
        let mut kept = rev_index.map(|i| self.generations[gen_index].revs[i]);
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gen_index];
        if !g.revs.is_empty() {
            if let Some(i) = rev_index {
                g.revs.drain(..i);
            }
            // A generation left with only its tombstone is dropped with it.
            if g.revs.len() == 1 && gen_index != last {
                if kept == Some(g.revs[0]) {
                    kept = None;
                }
                gen_index += 1;
            }
        }
        self.generations.drain(..gen_index);
        kept
    }

    /// The revision `compact(at)` would keep, without changing anything. The same on a
    /// history compacted at any revision up to `at` as on the whole one.
    fn keep(&self, at: i64) -> Option<Revision> {
        if self.is_empty() {
            return None;
        }
        let (gen_index, rev_index) = self.do_compact(at);
        let g = &self.generations[gen_index];
        let i = rev_index?;
        if i == g.revs.len() - 1 && gen_index != self.generations.len() - 1 {
            return None; // the tombstone
        }
        Some(g.revs[i])
    }

    /// Whether `rev` is one of this key's revisions.
    fn holds(&self, rev: Revision) -> bool {
        self.generations.iter().any(|g| {
            g.revs.first().is_some_and(|f| *f <= rev)
                && g.revs.last().is_some_and(|l| rev <= *l)
                && g.revs.binary_search(&rev).is_ok()
        })
    }

    fn invariants(&self) {
        assert!(!self.generations.is_empty());
        let mut prev: Option<Revision> = None;
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate() {
            assert!(i == last || !g.revs.is_empty(), "empty non-last generation");
            for r in &g.revs {
                assert!(prev.is_none_or(|p| p < *r), "revisions not increasing");
                prev = Some(*r);
            }
        }
        assert_eq!(prev.unwrap_or_default(), self.modified());
    }
}

/// Keys with their whole histories, in key order: what a shard hands to another.
pub type MovedKeys = Vec<(IndexKey, KeyHistory)>;

/// All keys' histories, ordered by key: a hash map for the point operations (a put, a
/// tombstone, a single-key read: one or two cache misses instead of one per level of a
/// search tree) and an ordered set of the same keys for ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyIndex {
    keys: HashMap<IndexKey, KeyHistory>,
    /// Exactly the keys of `keys`.
    order: BTreeSet<IndexKey>,
    /// Keys alive now (etcd's `etcd_debugging_mvcc_keys_total`): a put that starts a
    /// generation adds one, a tombstone takes one.
    live: usize,
}

impl KeyIndex {
    pub fn new() -> KeyIndex {
        KeyIndex::default()
    }

    /// Number of keys with any history (alive or not).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Number of keys alive at the newest revision.
    pub fn live_key_count(&self) -> usize {
        self.live
    }

    /// Every key with history, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.order.iter().map(|k| k.as_bytes())
    }

    pub fn history(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.keys.get(KeyBytes::new(key))
    }

    /// Records a put of `key` at `rev` and returns the key's `(create_revision, version)`
    /// after it, with one map lookup (allocates only for a key never seen before).
    pub fn put(&mut self, key: &[u8], rev: Revision) -> (i64, i64) {
        let (created, version, _) = self.put_after(key, rev, None);
        (created, version)
    }

    /// [`KeyIndex::put`], also giving the revision of the key's record at main revision
    /// `prev_at` when asked (what [`KeyIndex::get`] gives before the put): one map search
    /// for both (issue 22: the second search was 3% of the raft core at put c64).
    pub fn put_after(
        &mut self,
        key: &[u8],
        rev: Revision,
        prev_at: Option<i64>,
    ) -> (i64, i64, Option<Revision>) {
        let h = self.history_mut(key, true);
        let prev = prev_at.and_then(|at| h.get(at)).map(|at| at.modified);
        h.put(rev);
        let g = h.generations.last().expect("a put leaves a generation");
        let out = (g.created.main, g.version, prev);
        if out.1 == 1 {
            self.live += 1;
        }
        out
    }

    /// The key's history, inserted empty if new: one map search for inline keys.
    /// `ordered`: also add a new key to `order` (a restore adds them all at the end).
    fn history_mut(&mut self, key: &[u8], ordered: bool) -> &mut KeyHistory {
        // A long key would pay a boxed copy for the entry: look it up first.
        if key.len() > INLINE_KEY_BYTES_MAX && self.keys.contains_key(KeyBytes::new(key)) {
            return self.keys.get_mut(KeyBytes::new(key)).expect("just found");
        }
        match self.keys.entry(IndexKey::new(key)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if ordered {
                    self.order.insert(e.key().clone());
                }
                e.insert(KeyHistory::default())
            }
        }
    }

    /// Marks `key` deleted at `rev`. False (no change) if the key is not alive.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        let done = self
            .keys
            .get_mut(KeyBytes::new(key))
            .is_some_and(|h| h.tombstone(rev));
        if done {
            self.live = self.live.saturating_sub(1);
        }
        done
    }

    /// The key as of main revision `at`, if it existed then.
    #[inline]
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(KeyBytes::new(key))?.get(at)
    }

    /// Calls `f` for every key in `range` that existed at `at`, in key order, until `f`
    /// returns false.
    pub fn range(&self, range: KeyRange<'_>, at: i64, mut f: impl FnMut(&[u8], KeyAt) -> bool) {
        let keys = &self.keys;
        let visit = |iter: std::collections::btree_set::Range<'_, IndexKey>,
                     f: &mut dyn FnMut(&[u8], KeyAt) -> bool| {
            for k in iter {
                let h = &keys[KeyBytes::new(k.as_bytes())];
                if let Some(found) = h.get(at) {
                    if !f(k.as_bytes(), found) {
                        return;
                    }
                }
            }
        };
        match range {
            KeyRange::Single(key) => {
                if let Some(found) = self.get(key, at) {
                    f(key, found);
                }
            }
            KeyRange::From(key) => {
                let bounds = (Bound::Included(KeyBytes::new(key)), Bound::Unbounded);
                visit(self.order.range::<KeyBytes, _>(bounds), &mut f)
            }
            KeyRange::Between(key, end) if key < end => {
                let bounds = (
                    Bound::Included(KeyBytes::new(key)),
                    Bound::Excluded(KeyBytes::new(end)),
                );
                visit(self.order.range::<KeyBytes, _>(bounds), &mut f)
            }
            KeyRange::Between(..) => {}
        }
    }

    /// Number of keys in `range` that existed at `at`.
    pub fn count(&self, range: KeyRange<'_>, at: i64) -> usize {
        let mut n = 0;
        self.range(range, at, |_, _| {
            n += 1;
            true
        });
        n
    }

    /// Compacts every key at main revision `at` and returns the revisions <= `at` that
    /// must stay in the Revision tree (etcd: the latest one of each key unless it is a
    /// tombstone), sorted (look one up with `binary_search`). Keys left without history are removed.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut available = Vec::new();
        let mut removed = Vec::new();
        self.keys.retain(|k, h| {
            available.extend(h.compact(at));
            if h.is_empty() {
                removed.push(k.clone());
            }
            !h.is_empty()
        });
        for k in &removed {
            self.order.remove(k);
        }
        available.sort_unstable();
        available
    }

    /// One slice of [`KeyIndex::compact`]: compacts at `at` at most `max_keys` keys in
    /// key order from `from` on, and returns the key to go on from (`None`: done). Between
    /// slices the index answers as before for every revision >= `at` (compaction only
    /// drops history below it), and keys put meanwhile need nothing.
    pub fn compact_slice(&mut self, at: i64, from: &[u8], max_keys: usize) -> Option<Vec<u8>> {
        let mut next = None;
        let mut removed = Vec::new();
        let bounds = (Bound::Included(KeyBytes::new(from)), Bound::Unbounded);
        for (n, k) in self.order.range::<KeyBytes, _>(bounds).enumerate() {
            if n == max_keys {
                next = Some(k.as_bytes().to_vec());
                break;
            }
            let h = self.keys.get_mut(k).expect("ordered keys are in the map");
            h.compact(at);
            if h.is_empty() {
                removed.push(k.clone());
            }
        }
        for k in &removed {
            self.keys.remove(k);
            self.order.remove(k);
        }
        next
    }

    /// Compacts `key` at `at` and says whether the Revision tree keeps its record `rev`
    /// (<= `at`): whether the compacted history still holds it. The step of a
    /// compaction's sweep of the tree, which meets every key with history at or below
    /// `at` through its records. A key left without history is removed.
    pub fn compact_key_keeps(&mut self, key: &[u8], at: i64, rev: Revision) -> bool {
        let Some(h) = self.keys.get_mut(KeyBytes::new(key)) else {
            return false;
        };
        h.compact(at);
        if !h.is_empty() {
            return h.holds(rev);
        }
        self.keys.remove(KeyBytes::new(key));
        self.order.remove(KeyBytes::new(key));
        false
    }

    /// Copies of the histories of consecutive keys, for a shard that takes them over: from
    /// `from` up (inclusive) while below `below`, or with `down`, from just below `from`
    /// down while at or above `below`; at most `max_keys` keys and `max_live` live ones.
    /// Returns them in key order with the number alive.
    pub fn export(
        &self,
        from: &[u8],
        below: Option<&[u8]>,
        down: bool,
        max_keys: usize,
        max_live: usize,
    ) -> (MovedKeys, usize) {
        let mut out = Vec::new();
        let mut live = 0;
        let mut take = |k: &IndexKey| {
            if out.len() == max_keys || live == max_live {
                return false;
            }
            let h = &self.keys[KeyBytes::new(k.as_bytes())];
            live += usize::from(h.is_live());
            out.push((k.clone(), h.clone()));
            true
        };
        let from = KeyBytes::new(from);
        if down {
            let lower = below.map_or(Bound::Unbounded, |b| Bound::Included(KeyBytes::new(b)));
            let keys = self
                .order
                .range::<KeyBytes, _>((lower, Bound::Excluded(from)));
            for k in keys.rev() {
                if !take(k) {
                    break;
                }
            }
            out.reverse();
        } else {
            let upper = below.map_or(Bound::Unbounded, |b| Bound::Excluded(KeyBytes::new(b)));
            for k in self
                .order
                .range::<KeyBytes, _>((Bound::Included(from), upper))
            {
                if !take(k) {
                    break;
                }
            }
        }
        (out, live)
    }

    /// Drops every key in `[lo, hi)` (`hi` `None`: unbounded), as a shard that hands them
    /// over does. Returns how many went.
    pub fn remove_range(&mut self, lo: &[u8], hi: Option<&[u8]>) -> usize {
        let upper = hi.map_or(Bound::Unbounded, |h| Bound::Excluded(KeyBytes::new(h)));
        let gone: Vec<IndexKey> = self
            .order
            .range::<KeyBytes, _>((Bound::Included(KeyBytes::new(lo)), upper))
            .cloned()
            .collect();
        for k in &gone {
            self.order.remove(k);
            if self.keys.remove(k).is_some_and(|h| h.is_live()) {
                self.live -= 1;
            }
        }
        gone.len()
    }

    /// An empty index with room for `keys` keys without growing.
    pub fn with_capacity(keys: usize) -> KeyIndex {
        KeyIndex {
            keys: HashMap::with_capacity(keys),
            ..KeyIndex::default()
        }
    }

    /// Takes over keys [`KeyIndex::export`] copied from another index (none of them known
    /// here), their history compacted at `compact_at`.
    pub fn import(&mut self, moved: &[(IndexKey, KeyHistory)], compact_at: i64) {
        for (k, h) in moved {
            let mut h = h.clone();
            if compact_at > 0 {
                h.compact(compact_at);
                if h.is_empty() {
                    continue;
                }
            }
            self.live += usize::from(h.is_live());
            if let Some(old) = self.keys.insert(k.clone(), h) {
                // Not expected (a key is in one shard only); keep the count right anyway.
                self.live -= usize::from(old.is_live());
            } else {
                self.order.insert(k.clone());
            }
        }
    }

    /// The revisions <= `at` that `compact(at)` would keep, without changing anything.
    pub fn keep(&self, at: i64) -> Vec<Revision> {
        let mut available: Vec<Revision> = self.keys.values().filter_map(|h| h.keep(at)).collect();
        available.sort_unstable();
        available
    }

    /// Rebuild step: applies one Revision-tree record, records in revision order; call
    /// [`KeyIndex::finish_restore`] after the last one.
    /// `create_revision` and `version` come from the record (a put whose earlier history
    /// was compacted away starts a generation mid-life, as etcd's restore does).
    pub fn restore(
        &mut self,
        key: &[u8],
        rev: Revision,
        tombstone: bool,
        create_revision: i64,
        version: i64,
    ) {
        if tombstone {
            // A tombstone for a key unknown here had its puts compacted away: skip it.
            self.tombstone(key, rev);
            return;
        }
        let h = self.history_mut(key, false);
        if h.generations.is_empty() {
            let g = Generation {
                version,
                created: Revision::new(create_revision, 0),
                revs: smallvec![rev],
            };
            *h = KeyHistory {
                generations: smallvec![g],
            };
            self.live += 1;
        } else {
            h.put(rev);
            if h.generations.last().is_some_and(|g| g.version == 1) {
                self.live += 1;
            }
        }
    }

    /// Ends a rebuild: orders the keys `restore` added (one sort and a bulk build instead
    /// of a tree insert per key).
    pub fn finish_restore(&mut self) {
        if self.order.len() == self.keys.len() {
            return;
        }
        let mut keys: Vec<IndexKey> = self.keys.keys().cloned().collect();
        keys.sort_unstable();
        self.order = BTreeSet::from_iter(keys);
    }

    /// Compares two indexes as a rebuild would see them: `created.sub` is not stored in
    /// records, so only `created.main` counts. Returns the first differing key.
    pub fn first_difference(&self, other: &KeyIndex) -> Option<Vec<u8>> {
        let norm = |h: &KeyHistory| {
            let mut h = h.clone();
            for g in &mut h.generations {
                g.created.sub = 0;
            }
            h
        };
        let mut a = self.order.iter().map(|k| (k, &self.keys[k]));
        let mut b = other.order.iter().map(|k| (k, &other.keys[k]));
        loop {
            match (a.next(), b.next()) {
                (None, None) => return None,
                (Some((ka, _)), None) => return Some(ka.as_bytes().to_vec()),
                (None, Some((kb, _))) => return Some(kb.as_bytes().to_vec()),
                (Some((ka, ha)), Some((kb, hb))) => {
                    if ka != kb {
                        return Some(ka.min(kb).as_bytes().to_vec());
                    }
                    if norm(ha) != norm(hb) {
                        return Some(ka.as_bytes().to_vec());
                    }
                }
            }
        }
    }

    pub fn invariants(&self) {
        assert_eq!(self.keys.len(), self.order.len());
        for k in &self.order {
            assert!(
                self.keys.contains_key(k),
                "ordered key {k:?} not in the map"
            );
        }
        for h in self.keys.values() {
            h.invariants();
            assert!(!h.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn at(main: i64, create: i64, version: i64) -> Option<KeyAt> {
        Some(KeyAt {
            modified: r(main),
            create_revision: create,
            version,
        })
    }

    /// etcd's documented example: put(1) put(2) del(3) put(4) del(5) on "foo".
    fn foo() -> KeyIndex {
        let mut ix = KeyIndex::new();
        ix.put(b"foo", r(1));
        ix.put(b"foo", r(2));
        assert!(ix.tombstone(b"foo", r(3)));
        ix.put(b"foo", r(4));
        assert!(ix.tombstone(b"foo", r(5)));
        ix.invariants();
        ix
    }

    fn revs(ix: &KeyIndex) -> Vec<Vec<i64>> {
        ix.history(b"foo")
            .map(|h| {
                h.generations
                    .iter()
                    .map(|g| g.revs.iter().map(|r| r.main).collect())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The memory layout the index's size per key rests on (issue 23): a key with one
    /// life and one revision lives in the map's table alone, and a history is no bigger
    /// than before its last generation moved inline.
    #[test]
    fn a_key_with_one_revision_takes_no_allocation() {
        assert!(std::mem::size_of::<Generation>() <= 48);
        assert!(std::mem::size_of::<KeyHistory>() <= 56);
        let mut ix = KeyIndex::new();
        ix.put(b"k", r(7));
        let h = ix.history(b"k").unwrap();
        assert!(!h.generations.spilled() && !h.generations[0].revs.spilled());
        assert_eq!(ix.get(b"k", 7), at(7, 7, 1));
        ix.put(b"k", r(8));
        assert!(ix.history(b"k").unwrap().generations[0].revs.spilled());
        assert_eq!(
            (ix.get(b"k", 7), ix.get(b"k", 9)),
            (at(7, 7, 1), at(8, 7, 2))
        );
        assert!(ix.tombstone(b"k", r(9)));
        let h = ix.history(b"k").unwrap();
        assert_eq!((h.generations.len(), h.modified()), (2, r(9)));
        assert_eq!((ix.get(b"k", 8), ix.get(b"k", 9)), (at(8, 7, 2), None));
        ix.invariants();
    }

    /// `put_after` gives what `get` gave before the put, at every revision asked (before,
    /// inside and after each generation, and for a new key), and leaves the index as
    /// `put` does.
    #[test]
    fn put_after_gives_the_revision_get_gave_before_the_put() {
        for prev_at in [
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            Some(9),
        ] {
            for key in [&b"foo"[..], b"new"] {
                let (mut ix, mut plain) = (foo(), foo());
                let before = prev_at.and_then(|at| ix.get(key, at)).map(|at| at.modified);
                let (created, version, prev) = ix.put_after(key, r(10), prev_at);
                assert_eq!(prev, before, "{key:?} at {prev_at:?}");
                assert_eq!((created, version), plain.put(key, r(10)));
                assert_eq!(ix.history(key), plain.history(key));
                assert_eq!(ix.live_key_count(), plain.live_key_count());
                ix.invariants();
            }
        }
    }

    #[test]
    fn get_follows_generations() {
        let ix = foo();
        assert_eq!(ix.get(b"foo", 0), None);
        assert_eq!(ix.get(b"foo", 1), at(1, 1, 1));
        assert_eq!(ix.get(b"foo", 2), at(2, 1, 2));
        assert_eq!(ix.get(b"foo", 3), None, "deleted at its tombstone revision");
        assert_eq!(
            ix.get(b"foo", 4),
            at(4, 4, 1),
            "version restarts in a new generation"
        );
        assert_eq!(ix.get(b"foo", 5), None);
        assert_eq!(ix.get(b"foo", 99), None);
        assert_eq!(ix.get(b"bar", 4), None);
    }

    #[test]
    fn tombstone_of_dead_key_is_refused() {
        let mut ix = foo();
        assert!(!ix.tombstone(b"foo", r(6)));
        assert!(!ix.tombstone(b"nope", r(6)));
        assert_eq!(ix.history(b"foo").unwrap().modified(), r(5));
    }

    #[test]
    fn compaction_matches_etcd_documented_example() {
        // compact(2): {2, 3(t)} {4, 5(t)} {}; keeps 2.
        let mut ix = foo();
        let keep = ix.compact(2);
        assert_eq!(keep, vec![r(2)]);
        assert_eq!(revs(&ix), vec![vec![2, 3], vec![4, 5], vec![]]);
        assert_eq!(
            ix.get(b"foo", 2),
            at(2, 1, 2),
            "version survives compaction"
        );
        // compact(4): {4, 5(t)} {}; keeps 4.
        let keep = ix.compact(4);
        assert_eq!(keep, vec![r(4)]);
        assert_eq!(revs(&ix), vec![vec![4, 5], vec![]]);
        // compact(5): the key is gone; the tombstone is not kept.
        let keep = ix.compact(5);
        assert!(keep.is_empty());
        assert_eq!(ix.history(b"foo"), None);
        assert_eq!(ix.key_count(), 0);
    }

    #[test]
    fn keys_exported_removed_and_imported_move_whole() {
        let mut ix = KeyIndex::new();
        for (i, k) in [b"a", b"b", b"c", b"d", b"e"].iter().enumerate() {
            ix.put(*k, r(2 + i as i64));
        }
        ix.tombstone(b"c", r(10));
        // Up from "b" while below "e": at most 2 live keys ("b", "c" deleted, "d").
        let (up, live) = ix.export(b"b", Some(b"e"), false, 10, 2);
        let keys: Vec<&[u8]> = up.iter().map(|(k, _)| k.as_bytes()).collect();
        assert_eq!((keys, live), (vec![&b"b"[..], b"c", b"d"], 2));
        // Down from just below "d" to "b": in key order; then at most 1 key.
        let (down, live) = ix.export(b"d", Some(b"b"), true, 10, 10);
        let keys: Vec<&[u8]> = down.iter().map(|(k, _)| k.as_bytes()).collect();
        assert_eq!((keys, live), (vec![&b"b"[..], b"c"], 1));
        assert_eq!(ix.export(b"d", None, true, 1, 10).0[0].0.as_bytes(), b"c");
        // Moved into another index: the same histories, counts follow.
        let mut other = KeyIndex::new();
        other.import(&up, 0);
        assert_eq!(ix.remove_range(b"b", Some(b"e")), 3);
        assert_eq!((ix.key_count(), ix.live_key_count()), (2, 2));
        assert_eq!((other.key_count(), other.live_key_count()), (3, 2));
        assert_eq!(other.history(b"c"), Some(&up[1].1));
        assert_eq!(
            other.keys().collect::<Vec<_>>(),
            vec![&b"b"[..], b"c", b"d"]
        );
        other.invariants();
        ix.invariants();
        // Imported compacted: "c", deleted at 10, has no history left at 10.
        let mut compacted = KeyIndex::new();
        compacted.import(&up, 10);
        assert_eq!(compacted.key_count(), 2);
        assert_eq!(compacted.history(b"c"), None);
    }

    #[test]
    fn compaction_at_a_tombstone_drops_that_generation() {
        let mut ix = foo();
        let keep = ix.compact(3);
        assert!(keep.is_empty(), "latest <= 3 is a tombstone");
        assert_eq!(revs(&ix), vec![vec![4, 5], vec![]]);
        let mut ix = foo();
        assert_eq!(ix.compact(6), Vec::new());
        assert_eq!(ix.key_count(), 0);
    }

    #[test]
    fn compaction_keeps_live_key_latest() {
        let mut ix = KeyIndex::new();
        ix.put(b"a", r(2));
        ix.put(b"a", Revision::new(3, 1));
        ix.put(b"a", r(7));
        ix.put(b"b", r(5));
        assert_eq!(ix.keep(4), vec![Revision::new(3, 1)]);
        let keep = ix.compact(4);
        assert_eq!(keep, vec![Revision::new(3, 1)]);
        assert_eq!(
            ix.get(b"a", 4),
            Some(KeyAt {
                modified: Revision::new(3, 1),
                create_revision: 2,
                version: 2
            })
        );
        assert_eq!(ix.get(b"a", 7), at(7, 2, 3));
        assert_eq!(ix.get(b"b", 5), at(5, 5, 1));
        ix.invariants();
    }

    #[test]
    fn keep_equals_compact_without_changes() {
        for c in 0..7 {
            let ix = foo();
            let mut ix2 = foo();
            assert_eq!(ix.keep(c), ix2.compact(c), "at {c}");
        }
    }

    #[test]
    fn range_forms() {
        let mut ix = KeyIndex::new();
        for (i, k) in [&b"a"[..], b"b", b"ba", b"c"].iter().enumerate() {
            ix.put(k, r(i as i64 + 2));
        }
        ix.tombstone(b"b", r(9));
        let keys = |range, at| {
            let mut out = Vec::new();
            ix.range(range, at, |k, _| {
                out.push(String::from_utf8(k.to_vec()).unwrap());
                true
            });
            out
        };
        assert_eq!(keys(KeyRange::new(b"b", b""), 8), ["b"]);
        assert_eq!(keys(KeyRange::new(b"b", b""), 9), Vec::<String>::new());
        assert_eq!(keys(KeyRange::new(b"b", b"c"), 8), ["b", "ba"]);
        assert_eq!(keys(KeyRange::new(b"b", b"c"), 9), ["ba"]);
        assert_eq!(keys(KeyRange::new(b"b", b"\0"), 9), ["ba", "c"]);
        assert_eq!(keys(KeyRange::new(b"\0", b"\0"), 3), ["a", "b"]);
        assert_eq!(keys(KeyRange::new(b"c", b"a"), 9), Vec::<String>::new());
        assert_eq!(ix.count(KeyRange::new(b"a", b"\0"), 9), 3);
    }

    #[test]
    fn index_key_order_is_byte_order() {
        let keys: Vec<Vec<u8>> = [
            &b""[..],
            b"\0",
            b"a",
            b"abcdefg",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefgi",
            b"abcdefghijklmnopqrstuv",
            b"abcdefghijklmnopqrstuvw",
            b"abcdefghijklmnopqrstuvwxyz",
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
        ]
        .iter()
        .map(|k| k.to_vec())
        .collect();
        for a in &keys {
            assert_eq!(IndexKey::new(a).as_bytes(), &a[..]);
            for b in &keys {
                assert_eq!(cmp_key_bytes(a, b), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(IndexKey::new(a).cmp(&IndexKey::new(b)), a.cmp(b));
            }
        }
    }

    #[test]
    fn restore_rebuilds_the_compacted_index() {
        let mut ix = foo();
        ix.put(b"bar", Revision::new(6, 0));
        ix.put(b"bar", Revision::new(7, 2));
        ix.compact(2);
        // Records left after compact(2), in revision order.
        let mut rebuilt = KeyIndex::new();
        rebuilt.restore(b"foo", r(2), false, 1, 2);
        rebuilt.restore(b"foo", r(3), true, 0, 0);
        rebuilt.restore(b"foo", r(4), false, 4, 1);
        rebuilt.restore(b"foo", r(5), true, 0, 0);
        rebuilt.restore(b"bar", r(6), false, 6, 1);
        rebuilt.restore(b"bar", Revision::new(7, 2), false, 6, 2);
        rebuilt.finish_restore();
        assert_eq!(ix.first_difference(&rebuilt), None);
        rebuilt.put(b"zzz", r(8));
        assert_eq!(ix.first_difference(&rebuilt), Some(b"zzz".to_vec()));
    }
}
