//! An interval index: which of a set of etcd key ranges contain a given key.
//!
//! Runs on: every core, inside that core's watch `Hub` (one per core, never shared). The
//! hub keeps its range and prefix watchers here, so matching an applied change costs
//! about the depth of a tree plus the watchers it matches, instead of a scan of them all.
//!
//! An entry is a [`KeyRange`] and a caller-chosen `id`, unique among live entries. The
//! ranges keep etcd's meaning exactly: `Between(key, end)` is `[key, end)` (empty when
//! `end <= key`), `From(key)` (range_end "\0") is every key `>= key`, and `Single(key)`
//! is stored as `[key, key ++ "\0")`, the smallest range holding only `key`.
//!
//! The structure is a treap in an arena: a binary search tree ordered by `(start, id)`,
//! heap-ordered by a pseudo-random priority, so its expected depth is O(log n) whatever
//! the keys are (priorities come from an insertion counter, never from client bytes).
//! Each node also names the node of its subtree with the greatest end. A query for `key`
//! skips every subtree whose greatest end is `<= key` and every right subtree whose root
//! starts after `key`. The nodes it visits are the search path of `key` plus, hanging
//! off it, subtrees that all start at or before `key`, where it enters only subtrees
//! holding a match: O(log n + m·log(n/m)) for m matches, and never more than n.
//! Insert and remove are O(log n) expected. An entry costs one allocation (its key bytes,
//! start and end together); arena slots are reused, so a steady churn of watchers does
//! not grow the arena.
//!
//! Invariants (all checked by [`IntervalIndex::check`]; the O(1) ones by
//! [`IntervalIndex::invariants`] after every change in debug builds):
//! - the in-order walk is strictly increasing in `(start, id)`;
//! - a node's priority is greater than its children's;
//! - a node's `max_end` is, of it and its children's `max_end`s, the one with the greatest
//!   end (an unbounded end is greater than any key), ties to the node, then the left;
//! - the nodes reachable from the root are exactly the live ones, `len` of them; every
//!   other slot is on the free list, once.

use crate::mvcc::KeyRange;
use std::cmp::Ordering;

/// No node (a missing child, an empty tree).
const NIL: u32 = u32::MAX;

struct Node {
    /// `start ++ end`; the end is left out when unbounded. Empty in a free slot.
    bytes: Box<[u8]>,
    start_len: usize,
    unbounded: bool,
    id: u64,
    priority: u64,
    left: u32,
    right: u32,
    /// The node of this subtree with the greatest end.
    max_end: u32,
}

impl Node {
    fn start(&self) -> &[u8] {
        &self.bytes[..self.start_len]
    }

    /// `None`: unbounded.
    fn end(&self) -> Option<&[u8]> {
        (!self.unbounded).then(|| &self.bytes[self.start_len..])
    }

    fn cmp_key(&self, start: &[u8], id: u64) -> Ordering {
        (self.start(), self.id).cmp(&(start, id))
    }
}

/// Orders ends, an unbounded end above every key.
fn cmp_end(a: Option<&[u8]>, b: Option<&[u8]>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => a.cmp(b),
    }
}

/// splitmix64: distinct priorities for distinct insertion counts (it is a bijection).
fn priority_of(count: u64) -> u64 {
    let mut z = count.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key ranges by start, each with an id; see the module doc.
pub struct IntervalIndex {
    nodes: Vec<Node>,
    free: Vec<u32>,
    root: u32,
    len: usize,
    /// Entries ever inserted: the source of priorities.
    inserted_count: u64,
}

impl Default for IntervalIndex {
    fn default() -> Self {
        IntervalIndex::new()
    }
}

impl IntervalIndex {
    pub fn new() -> IntervalIndex {
        IntervalIndex {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            len: 0,
            inserted_count: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds `range` under `id`. The caller keeps `(start, id)` unique among live entries
    /// (a duplicate is a programmer error, caught in debug builds).
    pub fn insert(&mut self, range: KeyRange<'_>, id: u64) {
        let start = match range {
            KeyRange::Single(k) | KeyRange::From(k) | KeyRange::Between(k, _) => k,
        };
        debug_assert!(!self.contains_entry(start, id), "duplicate entry {id}");
        let new = self.alloc(range, id);
        self.root = self.insert_at(self.root, new, start, id);
        self.len += 1;
        self.invariants();
    }

    /// Removes the entry `(start, id)`; false if there is none.
    pub fn remove(&mut self, start: &[u8], id: u64) -> bool {
        let (root, found) = self.remove_at(self.root, start, id);
        self.root = root;
        if found {
            self.len -= 1;
        }
        self.invariants();
        found
    }

    /// Calls `f` with the id of every entry whose range contains `key`, in `(start, id)`
    /// order.
    pub fn for_each_containing(&self, key: &[u8], mut f: impl FnMut(u64)) {
        self.visit(self.root, key, &mut f);
    }

    /// The O(1) invariants, run after every change in debug builds.
    pub fn invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert_eq!(self.len + self.free.len(), self.nodes.len());
        assert_eq!(self.root == NIL, self.len == 0);
        assert!(self.nodes.len() <= NIL as usize);
    }

    /// Every invariant of the module doc: O(n), for tests.
    #[cfg(test)]
    pub fn check(&self) {
        self.invariants();
        let mut seen = vec![false; self.nodes.len()];
        let mut order = Vec::with_capacity(self.len);
        self.check_subtree(self.root, &mut seen, &mut order);
        assert_eq!(order.len(), self.len);
        for w in order.windows(2) {
            let (a, b) = (&self.nodes[w[0] as usize], &self.nodes[w[1] as usize]);
            assert_eq!(a.cmp_key(b.start(), b.id), Ordering::Less, "in-order walk");
        }
        for &slot in &self.free {
            assert!(
                !seen[slot as usize],
                "free slot {slot} reachable or listed twice"
            );
            seen[slot as usize] = true;
            assert!(self.nodes[slot as usize].bytes.is_empty());
        }
        assert!(seen.iter().all(|s| *s), "a slot neither live nor free");
    }

    /// The subtree's max-end node, as `update` would compute it.
    #[cfg(test)]
    fn check_subtree(&self, t: u32, seen: &mut [bool], order: &mut Vec<u32>) -> u32 {
        if t == NIL {
            return NIL;
        }
        assert!(!seen[t as usize], "node {t} reached twice");
        seen[t as usize] = true;
        let n = &self.nodes[t as usize];
        for child in [n.left, n.right] {
            if child != NIL {
                assert!(
                    self.nodes[child as usize].priority < n.priority,
                    "heap order"
                );
            }
        }
        let left = self.check_subtree(n.left, seen, order);
        order.push(t);
        let right = self.check_subtree(n.right, seen, order);
        let want = self.max_end_of(t, left, right);
        assert_eq!(n.max_end, want, "max_end of node {t}");
        want
    }

    #[cfg(test)]
    fn depth(&self, t: u32) -> usize {
        if t == NIL {
            return 0;
        }
        let n = &self.nodes[t as usize];
        1 + self.depth(n.left).max(self.depth(n.right))
    }

    fn contains_entry(&self, start: &[u8], id: u64) -> bool {
        let mut t = self.root;
        while t != NIL {
            let n = &self.nodes[t as usize];
            t = match n.cmp_key(start, id) {
                Ordering::Equal => return true,
                Ordering::Less => n.right,
                Ordering::Greater => n.left,
            };
        }
        false
    }

    /// A slot holding `range` and `id`, with no children.
    fn alloc(&mut self, range: KeyRange<'_>, id: u64) -> u32 {
        let (start, end, unbounded): (&[u8], &[u8], bool) = match range {
            KeyRange::Single(k) => (k, k, false),
            KeyRange::From(k) => (k, &[], true),
            KeyRange::Between(k, e) => (k, e, false),
        };
        let single = matches!(range, KeyRange::Single(_));
        let mut bytes = Vec::with_capacity(start.len() + end.len() + usize::from(single));
        bytes.extend_from_slice(start);
        bytes.extend_from_slice(end);
        if single {
            bytes.push(0);
        }
        self.inserted_count += 1;
        let node = Node {
            bytes: bytes.into_boxed_slice(),
            start_len: start.len(),
            unbounded,
            id,
            priority: priority_of(self.inserted_count),
            left: NIL,
            right: NIL,
            max_end: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                assert!(self.nodes.len() < NIL as usize, "interval index full");
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.nodes[slot as usize].max_end = slot;
        slot
    }

    fn release(&mut self, slot: u32) {
        let n = &mut self.nodes[slot as usize];
        n.bytes = Box::default();
        n.start_len = 0;
        n.left = NIL;
        n.right = NIL;
        n.max_end = NIL;
        self.free.push(slot);
    }

    /// Of `t` and the max-end nodes of its two children, the one with the greatest end.
    fn max_end_of(&self, t: u32, left: u32, right: u32) -> u32 {
        let mut best = t;
        for m in [left, right] {
            if m != NIL && cmp_end(self.end(m), self.end(best)) == Ordering::Greater {
                best = m;
            }
        }
        best
    }

    fn end(&self, t: u32) -> Option<&[u8]> {
        self.nodes[t as usize].end()
    }

    /// Recomputes `t`'s max_end from its children.
    fn update(&mut self, t: u32) {
        let n = &self.nodes[t as usize];
        let left = match n.left {
            NIL => NIL,
            l => self.nodes[l as usize].max_end,
        };
        let right = match n.right {
            NIL => NIL,
            r => self.nodes[r as usize].max_end,
        };
        self.nodes[t as usize].max_end = self.max_end_of(t, left, right);
    }

    /// Puts the childless node `new`, keyed `(start, id)`, into the subtree `t`; returns
    /// the subtree's new root.
    fn insert_at(&mut self, t: u32, new: u32, start: &[u8], id: u64) -> u32 {
        if t == NIL {
            return new;
        }
        if self.nodes[new as usize].priority > self.nodes[t as usize].priority {
            let (left, right) = self.split(t, start, id);
            let n = &mut self.nodes[new as usize];
            n.left = left;
            n.right = right;
            self.update(new);
            return new;
        }
        if self.nodes[t as usize].cmp_key(start, id) == Ordering::Less {
            let right = self.insert_at(self.nodes[t as usize].right, new, start, id);
            self.nodes[t as usize].right = right;
        } else {
            let left = self.insert_at(self.nodes[t as usize].left, new, start, id);
            self.nodes[t as usize].left = left;
        }
        self.update(t);
        t
    }

    /// Splits the subtree `t` into the nodes below `(start, id)` and the rest.
    fn split(&mut self, t: u32, start: &[u8], id: u64) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.nodes[t as usize].cmp_key(start, id) == Ordering::Less {
            let (left, right) = self.split(self.nodes[t as usize].right, start, id);
            self.nodes[t as usize].right = left;
            self.update(t);
            (t, right)
        } else {
            let (left, right) = self.split(self.nodes[t as usize].left, start, id);
            self.nodes[t as usize].left = right;
            self.update(t);
            (left, t)
        }
    }

    /// Joins two subtrees, every key of `a` below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].priority > self.nodes[b as usize].priority {
            let right = self.merge(self.nodes[a as usize].right, b);
            self.nodes[a as usize].right = right;
            self.update(a);
            a
        } else {
            let left = self.merge(a, self.nodes[b as usize].left);
            self.nodes[b as usize].left = left;
            self.update(b);
            b
        }
    }

    /// Removes `(start, id)` from the subtree `t`: its new root, and whether it was there.
    fn remove_at(&mut self, t: u32, start: &[u8], id: u64) -> (u32, bool) {
        if t == NIL {
            return (NIL, false);
        }
        let n = &self.nodes[t as usize];
        let (left, right) = (n.left, n.right);
        let found = match n.cmp_key(start, id) {
            Ordering::Equal => {
                let joined = self.merge(left, right);
                self.release(t);
                return (joined, true);
            }
            Ordering::Less => {
                let (right, found) = self.remove_at(right, start, id);
                self.nodes[t as usize].right = right;
                found
            }
            Ordering::Greater => {
                let (left, found) = self.remove_at(left, start, id);
                self.nodes[t as usize].left = left;
                found
            }
        };
        if found {
            self.update(t);
        }
        (t, found)
    }

    /// Reports the matches in the subtree `t`; returns the nodes it looked at (for tests).
    fn visit(&self, mut t: u32, key: &[u8], f: &mut impl FnMut(u64)) -> usize {
        let mut visited = 0;
        // Left subtrees recurse; the right spine is a loop.
        while t != NIL {
            visited += 1;
            let n = &self.nodes[t as usize];
            if cmp_end(self.end(n.max_end), Some(key)) != Ordering::Greater {
                break;
            }
            visited += self.visit(n.left, key, f);
            if n.start() > key {
                break;
            }
            if cmp_end(n.end(), Some(key)) == Ordering::Greater {
                f(n.id);
            }
            t = n.right;
        }
        visited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn matches(ix: &IntervalIndex, key: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        ix.for_each_containing(key, |id| out.push(id));
        out
    }

    #[test]
    fn etcd_range_semantics() {
        let mut ix = IntervalIndex::new();
        ix.insert(KeyRange::new(b"b", b""), 1); // the key "b"
        ix.insert(KeyRange::new(b"b", b"c"), 2); // prefix "b"
        ix.insert(KeyRange::new(b"b", b"\0"), 3); // from "b"
        ix.insert(KeyRange::new(b"", b"\0"), 4); // every key
        ix.insert(KeyRange::new(b"a", b"b"), 5); // end excluded
        ix.insert(KeyRange::new(b"c", b"a"), 6); // empty: end below start
        ix.insert(KeyRange::new(b"\0", b"\0\0"), 7); // only "\0"
        ix.check();
        assert_eq!(matches(&ix, b""), [4]);
        assert_eq!(matches(&ix, b"\0"), [4, 7]);
        assert_eq!(matches(&ix, b"a"), [4, 5]);
        assert_eq!(matches(&ix, b"az\xff"), [4, 5]);
        assert_eq!(matches(&ix, b"b"), [4, 1, 2, 3]);
        assert_eq!(matches(&ix, b"b\0"), [4, 2, 3]);
        assert_eq!(matches(&ix, b"bzz"), [4, 2, 3]);
        assert_eq!(matches(&ix, b"c"), [4, 3]);
        assert_eq!(matches(&ix, b"\xff\xff"), [4, 3]);
    }

    #[test]
    fn remove_takes_out_only_the_named_entry() {
        let mut ix = IntervalIndex::new();
        for id in 0..4 {
            ix.insert(KeyRange::new(b"p/", b"p0"), id);
        }
        ix.insert(KeyRange::new(b"q", b"\0"), 9);
        assert!(!ix.remove(b"p/", 9), "right id, wrong start");
        assert!(!ix.remove(b"q", 2), "right start, wrong id");
        assert!(ix.remove(b"p/", 2));
        assert!(!ix.remove(b"p/", 2), "already gone");
        ix.check();
        assert_eq!(ix.len(), 4);
        assert_eq!(matches(&ix, b"p/x"), [0, 1, 3]);
        for id in [0, 1, 3] {
            assert!(ix.remove(b"p/", id));
        }
        assert!(ix.remove(b"q", 9));
        ix.check();
        assert_eq!(ix.len(), 0);
        assert!(matches(&ix, b"p/x").is_empty());
        // Slots are reused, not grown.
        ix.insert(KeyRange::new(b"r", b""), 10);
        ix.check();
        assert_eq!(ix.nodes.len(), 5);
        assert_eq!(matches(&ix, b"r"), [10]);
    }

    /// Keys from a small alphabet, so that ranges share starts and ends and keys fall on
    /// range boundaries, including "" and "\0".
    fn random_key(rng: &mut Rng) -> Vec<u8> {
        const ALPHABET: [u8; 4] = [0, b'a', b'b', 0xff];
        let len = rng.below(4) as usize;
        (0..len).map(|_| ALPHABET[rng.below(4) as usize]).collect()
    }

    /// A watch's `(key, range_end)` as a client could send it.
    fn random_range(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
        let key = random_key(rng);
        let end = match rng.below(4) {
            0 => Vec::new(),
            1 => vec![0],
            _ => random_key(rng),
        };
        (key, end)
    }

    /// The index against a brute-force scan of the same entries under `KeyRange`'s own
    /// `contains`, through random inserts, removes and queries.
    #[test]
    fn model_random_ops_match_brute_force_scan() {
        for seed in 0..40 {
            let mut rng = Rng(seed);
            let mut ix = IntervalIndex::new();
            // (key, range_end, id): the model.
            let mut model: Vec<(Vec<u8>, Vec<u8>, u64)> = Vec::new();
            let mut next_id = 0u64;
            for step in 0..600 {
                let op = rng.below(10);
                if op < 4 || model.is_empty() {
                    let (key, end) = random_range(&mut rng);
                    // Ids are reused after removal, as the hub's slab reuses watcher ids.
                    let id = if rng.chance(30) {
                        (0..next_id)
                            .find(|i| model.iter().all(|m| m.2 != *i))
                            .unwrap_or(next_id)
                    } else {
                        next_id
                    };
                    next_id = next_id.max(id + 1);
                    ix.insert(KeyRange::new(&key, &end), id);
                    model.push((key, end, id));
                } else if op < 7 {
                    let (key, _, id) = model.swap_remove(rng.below(model.len() as u64) as usize);
                    assert!(ix.remove(&key, id), "seed {seed} step {step}");
                } else if op < 8 {
                    let key = random_key(&mut rng);
                    let id = rng.below(next_id + 1);
                    let present = model.iter().any(|m| m.0 == key && m.2 == id);
                    assert_eq!(ix.remove(&key, id), present, "seed {seed} step {step}");
                    model.retain(|m| !(m.0 == key && m.2 == id));
                } else {
                    let key = random_key(&mut rng);
                    let mut want: Vec<(&[u8], u64)> = model
                        .iter()
                        .filter(|(k, e, _)| KeyRange::new(k, e).contains(&key))
                        .map(|(k, _, id)| (k.as_slice(), *id))
                        .collect();
                    want.sort();
                    let want: Vec<u64> = want.into_iter().map(|w| w.1).collect();
                    assert_eq!(
                        matches(&ix, &key),
                        want,
                        "seed {seed} step {step} key {key:?}"
                    );
                }
                ix.check();
                assert_eq!(ix.len(), model.len());
            }
        }
    }

    /// Keys inserted in order (a plain search tree's worst case) still give a shallow tree,
    /// and a query that matches little looks at few nodes.
    #[test]
    fn sorted_inserts_stay_shallow_and_queries_stay_cheap() {
        let n = 20_000u64;
        let mut ix = IntervalIndex::new();
        for i in 0..n {
            let start = format!("k/{i:08}/");
            let end = format!("k/{i:08}0");
            ix.insert(KeyRange::new(start.as_bytes(), end.as_bytes()), i);
        }
        ix.insert(KeyRange::new(b"k/", b"k0"), n);
        ix.check();
        let depth = ix.depth(ix.root);
        assert!(depth <= 64, "depth {depth} for {} entries", ix.len());
        let mut found = Vec::new();
        let visited = ix.visit(ix.root, b"k/00012345/x", &mut |id| found.push(id));
        assert_eq!(found, [n, 12345]);
        assert!(
            visited <= 4 * depth,
            "visited {visited} nodes, depth {depth}"
        );
        // A key past every range: pruned by max_end at the root's right spine.
        let visited = ix.visit(ix.root, b"z", &mut |_| panic!("no range holds z"));
        assert!(visited <= depth, "visited {visited} nodes, depth {depth}");
        // Every entry matches: the walk is linear.
        for i in 0..n {
            assert!(ix.remove(format!("k/{i:08}/").as_bytes(), i));
        }
        for i in 0..n {
            ix.insert(KeyRange::new(b"k/", b"\0"), i);
        }
        ix.check();
        let mut count = 0;
        let visited = ix.visit(ix.root, b"k/x", &mut |_| count += 1);
        assert_eq!(count, n + 1);
        assert!(visited <= 2 * (count as usize) + 1, "visited {visited}");
    }
}
