//! The linearizability search for one key's register: Wing & Gong's algorithm with Lowe's
//! just-in-time linearization and a memo of visited configurations, written from the
//! papers.
//!
//! The operations' calls and returns form one list ordered by time (a call before a
//! return at an equal time, so equal times count as overlapping). The calls before the
//! first return in the list are the candidates: the operations that may be linearized
//! next. The search tries them in call order (the model step must be valid and the
//! resulting configuration new); linearizing one lifts its call and return out of the
//! list. When none is left to try, the op of the first return must have been linearized
//! before anything later: the search is stuck and backtracks, putting the last linearized
//! operation back and trying that configuration's next candidate. The history is
//! linearizable when every operation that completed `ok` is linearized.
//!
//! Operations whose outcome is unknown (`info`, or never completed) have no return: they
//! may take effect at any point after their call, or never. Three rules keep them from
//! multiplying the configurations, each sound because such an operation may always be
//! moved later in a linearization or left out:
//! - restriction: an unknown operation is linearized only if it changes the register, and
//!   the next operation linearized must then observe the new value (a read of it, or a cas
//!   expecting it); an unobserved effect could as well never have happened;
//! - relevance: once every completed operation that could observe an unknown operation's
//!   new value is linearized, its status no longer matters: it is lifted out of the list
//!   and left out of the memo key;
//! - symmetry: identical unknown operations (same step and values) form a group that is
//!   linearized in call order, so the list holds one entry per group (at its first call),
//!   standing for the group's first member not linearized yet.
//!
//! Three more rules cut the orders of completed operations, each sound by an exchange
//! argument:
//! - a completed read of the current value, when it may go next, is the only move tried:
//!   it changes nothing, and any linearization from here stays one with the read moved to
//!   the front; this keeps concurrent reads from multiplying the configurations;
//! - of identical completed writes (or cas) that may both go next, the one returning first
//!   goes first: swapping two identical steps changes nothing, and the earlier-returning
//!   one fits wherever the other did;
//! - a move that leaves the register away from a value some completed op still needs (a
//!   read of it, a cas expecting it) while nothing left can write it again before that op
//!   returns is refused at once ([`Supply`]), rather than found out at that op's return;
//!   this cuts a wrong order of concurrent writes at its first step.
//!
//! Memo key of a configuration: the set of linearized operations, the register value and
//! the restriction flag. The set is hashed incrementally (Zobrist: the XOR of a random
//! word per operation) and stored in full for equality, compactly: the linearized
//! completed operations are "all before index f" (f = the first one not linearized, stored
//! as a count of full words) plus the bitset words from f up to the last operation called
//! before f's return (no later operation can be linearized while f is not, so the words
//! past it are zero); the linearized unknown operations of each relevant group are its
//! first n members, stored as the last of them, in a sorted list.
//!
//! Invariants (asserted): the linked list holds the call and return of every completed
//! operation not linearized, and one entry per group with members left that was not
//! lifted as irrelevant; `full_words` counts the leading all-ones words of the bitset
//! (padding bits are ones); the bitset holds `finite_done` bits besides the padding; the
//! unknown operations linearized are as many as the frames that linearized them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::{KeyOp, Step, ValueId, WILDCARD};

const NIL: u32 = u32::MAX;
const HEAD: u32 = 0;
/// Most register values remembered for the explanation of a failed search.
const BLOCK_STATES_MAX: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SearchOutcome {
    Linearizable {
        states: u64,
    },
    /// `blocked` (an index into the searched ops) completed, but no configuration the
    /// search reached got past its return; `states_before` are register values seen there.
    NotLinearizable {
        blocked: usize,
        states_before: Vec<ValueId>,
        states: u64,
    },
    /// More than `states_max` configurations, undecided.
    Exhausted {
        states: u64,
    },
}

/// Searches `ops` (sorted by call time) from the register value `initial` (`WILDCARD`:
/// any value, fixed by the first operation that reads or compares it).
pub(super) fn search(ops: &[KeyOp], initial: ValueId, states_max: u64) -> SearchOutcome {
    assert!(ops.windows(2).all(|w| w[0].call_ns <= w[1].call_ns));
    assert!(ops.len() < NIL as usize / 2);
    Search::new(ops).run(initial, states_max)
}

/// One entry of the list: an operation's call or return. Every call has a node, in time
/// order with the returns, but of an unknown op's group only the first member's is linked.
#[derive(Clone, Copy, Debug)]
struct Node {
    op: u32,
    is_return: bool,
    prev: u32,
    next: u32,
}

/// A linearization step taken, to be undone when backtracking.
#[derive(Clone, Copy, Debug)]
struct Frame {
    op: u32,
    state_before: ValueId,
    restricted_before: bool,
    /// Length of `Search::lifted` when the step was taken.
    lifted_len: usize,
    /// Its op's index among the candidates of its configuration.
    candidate: usize,
    /// The only move tried from its configuration (a read of the current value).
    forced: bool,
}

/// The unknown ops, grouped by identical step.
struct Groups {
    /// Per op: its group, `NIL` for completed ops.
    of: Vec<u32>,
    /// Per group: its ops, in call order.
    members: Vec<Vec<u32>>,
    /// Per op: its index among its group's members (0 for completed ops).
    rank: Vec<u32>,
    /// Per group: how many of its first members are linearized.
    linearized: Vec<u32>,
    /// The groups with members linearized, in the order they got the first.
    touched: Vec<u32>,
}

impl Groups {
    fn new(ops: &[KeyOp]) -> Groups {
        let mut by_step: HashMap<Step, u32> = HashMap::new();
        let mut members: Vec<Vec<u32>> = Vec::new();
        let of = ops
            .iter()
            .enumerate()
            .map(|(index, op)| {
                if op.known {
                    return NIL;
                }
                let group = *by_step.entry(op.step).or_insert(members.len() as u32);
                if group as usize == members.len() {
                    members.push(Vec::new());
                }
                members[group as usize].push(index as u32);
                group
            })
            .collect();
        let mut rank = vec![0; ops.len()];
        for list in &members {
            for (i, &op) in list.iter().enumerate() {
                rank[op as usize] = i as u32;
            }
        }
        let linearized = vec![0; members.len()];
        Groups {
            of,
            members,
            rank,
            linearized,
            touched: Vec::new(),
        }
    }

    /// The group's first member not linearized, if any.
    fn next(&self, group: u32) -> Option<u32> {
        let members = &self.members[group as usize];
        members
            .get(self.linearized[group as usize] as usize)
            .copied()
    }

    /// The group's last member linearized, if any.
    fn last(&self, group: u32) -> Option<u32> {
        let n = self.linearized[group as usize] as usize;
        n.checked_sub(1).map(|i| self.members[group as usize][i])
    }

    fn exhausted(&self, group: u32) -> bool {
        self.linearized[group as usize] as usize == self.members[group as usize].len()
    }
}

struct Search<'a> {
    ops: &'a [KeyOp],
    /// Per completed op: its index among them (the finite index, in call order).
    slot: Vec<u32>,
    call_node: Vec<u32>,
    /// Per op: its return node, `NIL` for unknown ops.
    return_node: Vec<u32>,
    zobrist: Vec<u64>,
    /// Per unknown op: the highest finite index that may observe its new value (-1 none,
    /// `i64::MAX` when an unknown cas may).
    observer_last: Vec<i64>,
    groups: Groups,
    /// Per completed write or cas: the identical one returning before it, or `NIL`.
    known_prev: Vec<u32>,
    /// Per finite index: the word of the last finite op called before its return.
    reach_word: Vec<u32>,
    nodes: Vec<Node>,
    /// The first return node in the list at the configuration being scanned.
    first_return: u32,
    /// The ops worth trying from the configuration being scanned.
    candidates: Vec<u32>,

    words: Vec<u64>,
    padding_last: u64,
    full_words: usize,
    finite_done: usize,
    finite_total: usize,
    finite_hash: u64,
    frames: Vec<Frame>,
    /// Groups lifted out of the list as irrelevant, in lifting order.
    lifted: Vec<u32>,
    cache: Cache,
    supply: Supply,
    /// The latest return node the search was stuck at, and register values seen there.
    block_node: u32,
    block_states: Vec<ValueId>,
    scratch_words: Vec<u64>,
    scratch_unknown: Vec<u32>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [KeyOp]) -> Search<'a> {
        let mut slot = vec![NIL; ops.len()];
        let mut finite_total = 0usize;
        for (index, op) in ops.iter().enumerate() {
            if op.known {
                slot[index] = finite_total as u32;
                finite_total += 1;
            }
        }
        let padding_last = match finite_total % 64 {
            0 => 0,
            used => !0u64 << used,
        };
        let mut words = vec![0u64; finite_total.div_ceil(64)];
        if let Some(last) = words.last_mut() {
            *last = padding_last;
        }
        let groups = Groups::new(ops);
        let list = build_list(ops, &slot, &groups);
        let mut search = Search {
            ops,
            slot,
            call_node: list.call_node,
            return_node: list.return_node,
            zobrist: (0..ops.len() as u64)
                .map(|i| splitmix64(i ^ 0x6b65_656c))
                .collect(),
            observer_last: observer_last(ops),
            groups,
            known_prev: known_prev(ops),
            reach_word: list.reach_word,
            nodes: list.nodes,
            first_return: NIL,
            candidates: Vec::new(),
            words,
            padding_last,
            full_words: 0,
            finite_done: 0,
            finite_total,
            finite_hash: 0,
            frames: Vec::new(),
            lifted: Vec::new(),
            cache: Cache::default(),
            supply: Supply::new(ops),
            block_node: HEAD,
            block_states: Vec::new(),
            scratch_words: Vec::new(),
            scratch_unknown: Vec::new(),
        };
        search.advance_full_words();
        search
    }

    fn run(mut self, initial: ValueId, states_max: u64) -> SearchOutcome {
        let mut state = initial;
        let mut restricted = false;
        // The candidate of the current configuration to try next; `None`: just entered it.
        let mut next: Option<usize> = None;
        loop {
            if self.finite_done == self.finite_total {
                self.invariants();
                return SearchOutcome::Linearizable {
                    states: self.cache.len(),
                };
            }
            if self.cache.len() > states_max {
                return SearchOutcome::Exhausted {
                    states: self.cache.len(),
                };
            }
            let first = match next {
                Some(index) => index,
                None => {
                    let read = self.enter(state);
                    match read {
                        Some(read) if self.take(read, state, restricted, state, 0, true) => {
                            restricted = false;
                            continue;
                        }
                        // Taking the read first was tried and failed: so does this.
                        Some(_) => usize::MAX,
                        None => 0,
                    }
                }
            };
            self.collect_candidates();
            let mut taken = false;
            for index in first..self.candidates.len() {
                let op = self.candidates[index];
                let Some(state_next) = step(state, restricted, &self.ops[op as usize]) else {
                    continue;
                };
                if self.take(op, state, restricted, state_next, index, false) {
                    state = state_next;
                    restricted = !self.ops[op as usize].known;
                    taken = true;
                    break;
                }
            }
            if taken {
                next = None;
                continue;
            }
            if first != usize::MAX {
                // Stuck: the first return's op must come before anything else.
                self.note_block(self.first_return, state);
            }
            let Some(resume) = self.backtrack() else {
                self.invariants();
                return self.not_linearizable();
            };
            (state, restricted, next) = (resume.0, resume.1, Some(resume.2));
        }
    }

    /// On entering a configuration: finds the first return, lifts the irrelevant groups
    /// before it, and returns a completed read of the current value that may go next, if
    /// any. Taking that read first loses nothing (see the module doc), so it is then the
    /// only move tried here.
    fn enter(&mut self, state: ValueId) -> Option<u32> {
        let mut read = None;
        let mut at = self.nodes[HEAD as usize].next;
        while at != NIL && !self.nodes[at as usize].is_return {
            let node = self.nodes[at as usize];
            let op = &self.ops[node.op as usize];
            if !op.known {
                let group = self.groups.of[node.op as usize];
                if !self.group_relevant(group) {
                    self.lifted.push(group);
                    self.unlink(at);
                }
            } else if read.is_none() && op.step == Step::Read(state) {
                read = Some(node.op);
            }
            at = node.next;
        }
        // Some completed op is not linearized, so its return is still in the list.
        assert_ne!(at, NIL);
        self.first_return = at;
        read
    }

    /// The ops worth trying next, into `candidates`: completed ones by return time (the
    /// sooner an op returns, the sooner it must be linearized), then unknown ones.
    fn collect_candidates(&mut self) {
        self.candidates.clear();
        let mut at = self.nodes[HEAD as usize].next;
        while at != self.first_return {
            let node = self.nodes[at as usize];
            let op = node.op;
            match self.groups.of[op as usize] {
                NIL => {
                    if self.known_worth_trying(op) {
                        self.candidates.push(op);
                    }
                }
                group => {
                    let next = self
                        .groups
                        .next(group)
                        .expect("exhausted groups are not listed");
                    // The group's entry sits at its first call; this member may come later.
                    if self.call_node[next as usize] < self.first_return {
                        self.candidates.push(next);
                    }
                }
            }
            at = node.next;
        }
    }

    /// Whether to try the completed `op` here: not if an identical one returning no later
    /// may go now too (taking that one first loses nothing, see the module doc).
    fn known_worth_trying(&self, op: u32) -> bool {
        let prev = self.known_prev[op as usize];
        prev == NIL
            || self.call_node[prev as usize] > self.first_return
            || self.finite_linearized(prev)
    }

    fn finite_linearized(&self, op: u32) -> bool {
        let i = self.slot[op as usize] as usize;
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// The list entry of a group of unknown ops: its first member's call.
    fn group_node(&self, group: u32) -> u32 {
        self.call_node[self.groups.members[group as usize][0] as usize]
    }

    /// Linearizes `op` if that reaches a configuration not seen before.
    fn take(
        &mut self,
        op: u32,
        state_before: ValueId,
        restricted_before: bool,
        state: ValueId,
        candidate: usize,
        forced: bool,
    ) -> bool {
        self.linearize(op);
        if state != state_before && state_before != WILDCARD {
            if let Some(observer) = self.stranded(state_before) {
                self.note_block(self.return_node[observer as usize], state);
                self.unlinearize(op);
                return false;
            }
        }
        if !self.visit(state, !self.ops[op as usize].known) {
            self.unlinearize(op);
            return false;
        }
        let lifted_len = self.lifted.len();
        let frame = Frame {
            op,
            state_before,
            restricted_before,
            lifted_len,
            candidate,
            forced,
        };
        self.frames.push(frame);
        self.lift(op);
        true
    }

    /// Undoes steps until one whose configuration has moves left to try; returns its
    /// register value, restriction and the index of its next candidate. `None`: none left.
    fn backtrack(&mut self) -> Option<(ValueId, bool, usize)> {
        loop {
            let frame = self.frames.pop()?;
            self.undo(frame);
            if !frame.forced {
                self.first_return = self.first_return_node();
                return Some((
                    frame.state_before,
                    frame.restricted_before,
                    frame.candidate + 1,
                ));
            }
        }
    }

    /// The first return node in the list (`NIL`: none).
    fn first_return_node(&self) -> u32 {
        let mut at = self.nodes[HEAD as usize].next;
        while at != NIL && !self.nodes[at as usize].is_return {
            at = self.nodes[at as usize].next;
        }
        at
    }

    /// Undoes `frame`: first the lifts of irrelevant groups made after it, then its own.
    fn undo(&mut self, frame: Frame) {
        while self.lifted.len() > frame.lifted_len {
            let Some(group) = self.lifted.pop() else {
                break;
            };
            self.relink(self.group_node(group));
        }
        self.unlift(frame.op);
        self.unlinearize(frame.op);
    }

    fn not_linearizable(&self) -> SearchOutcome {
        assert_ne!(self.block_node, HEAD);
        let blocked = self.nodes[self.block_node as usize].op as usize;
        SearchOutcome::NotLinearizable {
            blocked,
            states_before: self.block_states.clone(),
            states: self.cache.len(),
        }
    }

    /// Remembers where the search got stuck: the latest return node, with the register
    /// values it was reached with.
    fn note_block(&mut self, node: u32, state: ValueId) {
        if node > self.block_node {
            self.block_node = node;
            self.block_states.clear();
        }
        if node == self.block_node
            && !self.block_states.contains(&state)
            && self.block_states.len() < BLOCK_STATES_MAX
        {
            self.block_states.push(state);
        }
    }

    /// The first open observer of `value`, if no open writer of it can come before it.
    fn stranded(&self, value: ValueId) -> Option<u32> {
        let v = value as usize;
        let observer = *self.supply.observers[v].get(self.supply.observers_open[v] as usize)?;
        let writer = self.supply.writers[v].get(self.supply.writers_open[v] as usize);
        let supplied = writer
            .is_some_and(|&w| self.call_node[w as usize] < self.return_node[observer as usize]);
        (!supplied).then_some(observer)
    }

    fn linearized(&self, op: u32) -> bool {
        match self.groups.of[op as usize] {
            NIL => self.finite_linearized(op),
            group => self.groups.rank[op as usize] < self.groups.linearized[group as usize],
        }
    }

    /// Moves the supply's cursors past `op`, just linearized.
    fn supply_advance(&mut self, op: u32) {
        if let Some(value) = observed(&self.ops[op as usize]) {
            let v = value as usize;
            if self.supply.observer_index[op as usize] == self.supply.observers_open[v] {
                let mut i = self.supply.observers_open[v] as usize;
                while self.supply.observers[v]
                    .get(i)
                    .is_some_and(|&o| self.linearized(o))
                {
                    i += 1;
                }
                self.supply.observers_open[v] = i as u32;
            }
        }
        if let Some(value) = written(&self.ops[op as usize]) {
            let v = value as usize;
            if self.supply.writer_index[op as usize] == self.supply.writers_open[v] {
                let mut i = self.supply.writers_open[v] as usize;
                while self.supply.writers[v]
                    .get(i)
                    .is_some_and(|&w| self.linearized(w))
                {
                    i += 1;
                }
                self.supply.writers_open[v] = i as u32;
            }
        }
    }

    /// Moves the supply's cursors back to `op`, just put back.
    fn supply_retreat(&mut self, op: u32) {
        if let Some(value) = observed(&self.ops[op as usize]) {
            let open = &mut self.supply.observers_open[value as usize];
            *open = (*open).min(self.supply.observer_index[op as usize]);
        }
        if let Some(value) = written(&self.ops[op as usize]) {
            let open = &mut self.supply.writers_open[value as usize];
            *open = (*open).min(self.supply.writer_index[op as usize]);
        }
    }

    /// The first finite index not linearized (`finite_total` when all are).
    fn finite_first_open(&self) -> usize {
        match self.words.get(self.full_words) {
            None => self.finite_total,
            Some(word) => self.full_words * 64 + word.trailing_ones() as usize,
        }
    }

    fn group_relevant(&self, group: u32) -> bool {
        let first = self.groups.members[group as usize][0];
        self.observer_last[first as usize] >= self.finite_first_open() as i64
    }

    fn linearize(&mut self, op: u32) {
        if self.ops[op as usize].known {
            let i = self.slot[op as usize] as usize;
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            assert_eq!(self.words[word] & bit, 0);
            self.words[word] |= bit;
            self.finite_done += 1;
            self.finite_hash ^= self.zobrist[op as usize];
            self.advance_full_words();
        } else {
            let group = self.groups.of[op as usize];
            assert_eq!(self.groups.next(group), Some(op));
            self.groups.linearized[group as usize] += 1;
            if self.groups.linearized[group as usize] == 1 {
                self.groups.touched.push(group);
            }
        }
        self.supply_advance(op);
    }

    fn unlinearize(&mut self, op: u32) {
        if self.ops[op as usize].known {
            let i = self.slot[op as usize] as usize;
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            assert_ne!(self.words[word] & bit, 0);
            self.words[word] &= !bit;
            self.finite_done -= 1;
            self.finite_hash ^= self.zobrist[op as usize];
            self.full_words = self.full_words.min(word);
        } else {
            let group = self.groups.of[op as usize];
            assert_eq!(self.groups.last(group), Some(op));
            self.groups.linearized[group as usize] -= 1;
            if self.groups.linearized[group as usize] == 0 {
                assert_eq!(self.groups.touched.pop(), Some(group));
            }
        }
        self.supply_retreat(op);
    }

    fn advance_full_words(&mut self) {
        while self.words.get(self.full_words) == Some(&!0u64) {
            self.full_words += 1;
        }
    }

    /// Records the current configuration in the memo; false if it was there already.
    fn visit(&mut self, state: ValueId, restricted: bool) -> bool {
        let first_open = self.finite_first_open();
        self.scratch_words.clear();
        if first_open < self.finite_total {
            let end_word = self.reach_word[first_open] as usize;
            self.scratch_words
                .extend_from_slice(&self.words[self.full_words..=end_word]);
            if cfg!(debug_assertions) {
                self.assert_zero_past(end_word);
            }
        }
        self.scratch_unknown.clear();
        let mut unknown_hash = 0u64;
        for &group in &self.groups.touched {
            let first = self.groups.members[group as usize][0];
            if self.observer_last[first as usize] >= first_open as i64 {
                let last = self
                    .groups
                    .last(group)
                    .expect("touched groups have members in");
                self.scratch_unknown.push(last);
                unknown_hash ^= self.zobrist[last as usize];
            }
        }
        self.scratch_unknown.sort_unstable();
        let hash = self.finite_hash
            ^ unknown_hash
            ^ splitmix64(u64::from(state) | (u64::from(restricted) << 32));
        let key = Key {
            state,
            restricted,
            full_words: self.full_words as u32,
            words: &self.scratch_words,
            unknown: &self.scratch_unknown,
        };
        self.cache.insert(hash, key)
    }

    /// No finite op past `end_word` is linearized while the first open one is not.
    fn assert_zero_past(&self, end_word: usize) {
        let last = self.words.len() - 1;
        for (index, &word) in self.words.iter().enumerate().skip(end_word + 1) {
            let padding = if index == last { self.padding_last } else { 0 };
            assert_eq!(
                word, padding,
                "finite op linearized past the reach of the first open"
            );
        }
    }

    /// Takes a just linearized op out of the list: its call and return, or its group's
    /// entry once the group has no member left.
    fn lift(&mut self, op: u32) {
        match self.groups.of[op as usize] {
            NIL => {
                self.unlink(self.call_node[op as usize]);
                self.unlink(self.return_node[op as usize]);
            }
            group if self.groups.exhausted(group) => self.unlink(self.group_node(group)),
            _ => {}
        }
    }

    /// Undoes `lift`, before the op's linearization is undone.
    fn unlift(&mut self, op: u32) {
        match self.groups.of[op as usize] {
            NIL => {
                self.relink(self.return_node[op as usize]);
                self.relink(self.call_node[op as usize]);
            }
            group if self.groups.exhausted(group) => self.relink(self.group_node(group)),
            _ => {}
        }
    }

    fn unlink(&mut self, node: u32) {
        let Node { prev, next, .. } = self.nodes[node as usize];
        self.nodes[prev as usize].next = next;
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
    }

    /// Puts back a node unlinked last among those still out (dancing links).
    fn relink(&mut self, node: u32) {
        let Node { prev, next, .. } = self.nodes[node as usize];
        self.nodes[prev as usize].next = node;
        if next != NIL {
            self.nodes[next as usize].prev = node;
        }
    }

    /// Checks the invariants in the module doc (debug and test builds).
    fn invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let ones: u32 = self.words.iter().map(|w| w.count_ones()).sum();
        assert_eq!(
            ones as usize,
            self.finite_done + self.padding_last.count_ones() as usize
        );
        assert!(self.words[..self.full_words].iter().all(|&w| w == !0));
        assert!(self.words.get(self.full_words).is_none_or(|&w| w != !0));
        let unknown_linearized: u32 = self.groups.linearized.iter().sum();
        let unknown_in_frames = self
            .frames
            .iter()
            .filter(|f| !self.ops[f.op as usize].known)
            .count();
        assert_eq!(unknown_linearized as usize, unknown_in_frames);
        let touched = self.groups.linearized.iter().filter(|&&n| n > 0).count();
        assert_eq!(touched, self.groups.touched.len());
        let mut listed = 0;
        let mut at = self.nodes[HEAD as usize].next;
        while at != NIL {
            let op = self.nodes[at as usize].op;
            match self.groups.of[op as usize] {
                NIL => assert!(!self.finite_linearized(op)),
                group => {
                    assert_eq!(self.groups.members[group as usize][0], op);
                    assert!(!self.groups.exhausted(group) && !self.lifted.contains(&group));
                }
            }
            listed += 1;
            at = self.nodes[at as usize].next;
        }
        let groups_open = (0..self.groups.members.len() as u32)
            .filter(|&g| !self.groups.exhausted(g))
            .count();
        let finite_open = self.finite_total - self.finite_done;
        assert_eq!(listed, 2 * finite_open + groups_open - self.lifted.len());
        let supply = &self.supply;
        for (lists, opens) in [
            (&supply.observers, &supply.observers_open),
            (&supply.writers, &supply.writers_open),
        ] {
            for (list, &open) in lists.iter().zip(opens) {
                assert!(list[..open as usize].iter().all(|&op| self.linearized(op)));
                assert!(list
                    .get(open as usize)
                    .is_none_or(|&op| !self.linearized(op)));
            }
        }
    }
}

/// The model: a register. `restricted` means the previous step was an unknown op, so this
/// one must observe the value it wrote. `None`: the step is not valid (or, for an unknown
/// op, pointless).
fn step(state: ValueId, restricted: bool, op: &KeyOp) -> Option<ValueId> {
    let holds = |value: ValueId| state == value || state == WILDCARD;
    match (op.step, op.known) {
        (Step::Read(value), known) => {
            assert!(
                known,
                "reads of unknown outcome are dropped before the search"
            );
            holds(value).then_some(value)
        }
        (Step::Write(_), _) if restricted => None,
        (Step::Write(value), true) => Some(value),
        (Step::Write(value), false) => (state != value).then_some(value),
        (Step::Cas(expected, new), true) => holds(expected).then_some(new),
        (Step::Cas(expected, new), false) => (holds(expected) && state != new).then_some(new),
    }
}

/// The list and what the search needs to know of its nodes.
struct List {
    /// Node 0 is the head sentinel.
    nodes: Vec<Node>,
    call_node: Vec<u32>,
    return_node: Vec<u32>,
    /// Per finite index: the word of the last finite op called before its return.
    reach_word: Vec<u32>,
}

fn build_list(ops: &[KeyOp], slot: &[u32], groups: &Groups) -> List {
    // (time, is_return, op): a call sorts before a return at an equal time.
    let mut entries: Vec<(i64, bool, u32)> = Vec::with_capacity(2 * ops.len());
    for (index, op) in ops.iter().enumerate() {
        entries.push((op.call_ns, false, index as u32));
        if op.known {
            assert!(op.return_ns >= op.call_ns);
            entries.push((op.return_ns, true, index as u32));
        }
    }
    entries.sort_unstable();
    let mut list = List {
        nodes: Vec::with_capacity(entries.len() + 1),
        call_node: vec![NIL; ops.len()],
        return_node: vec![NIL; ops.len()],
        reach_word: vec![0; slot.iter().filter(|&&s| s != NIL).count()],
    };
    list.nodes.push(Node {
        op: NIL,
        is_return: false,
        prev: NIL,
        next: NIL,
    });
    let mut last_linked = HEAD;
    let mut finite_called = 0usize;
    for &(_, is_return, op) in &entries {
        let node = list.nodes.len() as u32;
        list.nodes.push(Node {
            op,
            is_return,
            prev: NIL,
            next: NIL,
        });
        let finite = slot[op as usize];
        if is_return {
            list.return_node[op as usize] = node;
            assert!(finite_called > finite as usize);
            list.reach_word[finite as usize] = ((finite_called - 1) / 64) as u32;
        } else {
            list.call_node[op as usize] = node;
            if finite != NIL {
                // Finite indexes follow the call order.
                assert_eq!(finite as usize, finite_called);
                finite_called += 1;
            }
        }
        let group = groups.of[op as usize];
        if group == NIL || groups.members[group as usize][0] == op {
            list.nodes[last_linked as usize].next = node;
            list.nodes[node as usize].prev = last_linked;
            last_linked = node;
        }
    }
    list
}

fn observer_last(ops: &[KeyOp]) -> Vec<i64> {
    let mut finite_last: HashMap<ValueId, i64> = HashMap::new();
    let mut unknown_cas_expected: Vec<ValueId> = Vec::new();
    let mut finite_index = 0i64;
    for op in ops {
        let observed = match op.step {
            Step::Read(value) | Step::Cas(value, _) => value,
            Step::Write(_) => {
                finite_index += i64::from(op.known);
                continue;
            }
        };
        if op.known {
            finite_last.insert(observed, finite_index);
            finite_index += 1;
        } else {
            unknown_cas_expected.push(observed);
        }
    }
    unknown_cas_expected.sort_unstable();
    ops.iter()
        .map(|op| match (op.known, op.step) {
            (true, _) | (false, Step::Read(_)) => -1,
            (false, Step::Write(value) | Step::Cas(_, value)) => {
                if unknown_cas_expected.binary_search(&value).is_ok() {
                    i64::MAX
                } else {
                    finite_last.get(&value).copied().unwrap_or(-1)
                }
            }
        })
        .collect()
}

fn known_prev(ops: &[KeyOp]) -> Vec<u32> {
    let mut by_return: Vec<u32> = (0..ops.len() as u32)
        .filter(|&i| ops[i as usize].known && !matches!(ops[i as usize].step, Step::Read(_)))
        .collect();
    by_return.sort_by_key(|&i| (ops[i as usize].return_ns, i));
    let mut last: HashMap<Step, u32> = HashMap::new();
    let mut prev = vec![NIL; ops.len()];
    for i in by_return {
        prev[i as usize] = last.insert(ops[i as usize].step, i).unwrap_or(NIL);
    }
    prev
}

pub(super) fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Per register value: the completed ops that need the register to hold it (reads of
/// it, cas expecting it), by return time, and the ops that write it, by call time, each
/// with the index of its first not linearized. When the register moves away from a value
/// whose first open observer returns before the first open writer is called, that
/// observer can never be linearized: the move is refused at once rather than found out
/// at the observer's return.
struct Supply {
    observers: Vec<Vec<u32>>,
    writers: Vec<Vec<u32>>,
    observers_open: Vec<u32>,
    writers_open: Vec<u32>,
    /// Per op: its index among its value's observers, writers (`NIL`: none).
    observer_index: Vec<u32>,
    writer_index: Vec<u32>,
}

impl Supply {
    fn new(ops: &[KeyOp]) -> Supply {
        let values = ops.iter().map(|op| match op.step {
            Step::Read(v) | Step::Write(v) => v,
            Step::Cas(e, n) => e.max(n),
        });
        let value_count = values.max().map_or(0, |v| v as usize + 1);
        let mut observers = vec![Vec::new(); value_count];
        let mut writers = vec![Vec::new(); value_count];
        for (index, op) in ops.iter().enumerate() {
            if let Some(value) = observed(op) {
                observers[value as usize].push(index as u32);
            }
            if let Some(value) = written(op) {
                writers[value as usize].push(index as u32);
            }
        }
        let mut observer_index = vec![NIL; ops.len()];
        let mut writer_index = vec![NIL; ops.len()];
        for list in &mut observers {
            list.sort_by_key(|&op| (ops[op as usize].return_ns, op));
            for (i, &op) in list.iter().enumerate() {
                observer_index[op as usize] = i as u32;
            }
        }
        // `ops` is in call order already.
        for list in &writers {
            for (i, &op) in list.iter().enumerate() {
                writer_index[op as usize] = i as u32;
            }
        }
        Supply {
            observers,
            writers,
            observers_open: vec![0; value_count],
            writers_open: vec![0; value_count],
            observer_index,
            writer_index,
        }
    }
}

/// The value a completed op needs the register to hold.
fn observed(op: &KeyOp) -> Option<ValueId> {
    match (op.step, op.known) {
        (Step::Read(value) | Step::Cas(value, _), true) => Some(value),
        _ => None,
    }
}

fn written(op: &KeyOp) -> Option<ValueId> {
    match op.step {
        Step::Read(_) => None,
        Step::Write(value) | Step::Cas(_, value) => Some(value),
    }
}

/// A configuration, borrowed from the search's scratch buffers.
struct Key<'k> {
    state: ValueId,
    restricted: bool,
    full_words: u32,
    words: &'k [u64],
    unknown: &'k [u32],
}

/// A configuration stored in the memo; its words and unknown ops live in the arenas.
struct Entry {
    state: ValueId,
    restricted: bool,
    full_words: u32,
    words_start: usize,
    words_len: u32,
    unknown_start: usize,
    unknown_len: u32,
    /// The next entry with the same hash, or `NIL`.
    next: u32,
}

/// The memo: hash → chain of entries, with the variable parts in two arenas.
#[derive(Default)]
struct Cache {
    heads: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    entries: Vec<Entry>,
    words: Vec<u64>,
    unknown: Vec<u32>,
}

impl Cache {
    fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    fn insert(&mut self, hash: u64, key: Key<'_>) -> bool {
        let head = self.heads.get(&hash).copied().unwrap_or(NIL);
        let mut index = head;
        while index != NIL {
            let entry = &self.entries[index as usize];
            if self.matches(entry, &key) {
                return false;
            }
            index = entry.next;
        }
        assert!(self.entries.len() < NIL as usize);
        let entry = Entry {
            state: key.state,
            restricted: key.restricted,
            full_words: key.full_words,
            words_start: self.words.len(),
            words_len: key.words.len() as u32,
            unknown_start: self.unknown.len(),
            unknown_len: key.unknown.len() as u32,
            next: head,
        };
        self.words.extend_from_slice(key.words);
        self.unknown.extend_from_slice(key.unknown);
        self.heads.insert(hash, self.entries.len() as u32);
        self.entries.push(entry);
        true
    }

    fn matches(&self, entry: &Entry, key: &Key<'_>) -> bool {
        let words = &self.words[entry.words_start..][..entry.words_len as usize];
        let unknown = &self.unknown[entry.unknown_start..][..entry.unknown_len as usize];
        entry.state == key.state
            && entry.restricted == key.restricted
            && entry.full_words == key.full_words
            && words == key.words
            && unknown == key.unknown
    }
}

/// The memo's keys are already well mixed hashes: use them as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}
