//! Shards that follow the data: the raft core counts the live keys of each core's shard
//! as rounds apply, and when they drift out of balance (a prefix that grows after boot
//! lands on one core) it moves split keys, a step of at most `MOVE_STEP_KEYS` keys at a
//! time, until every shard holds its share again.
//!
//! A step moves one split key over the keys next to it in the authoritative index and
//! copies their histories into a [`Move`] that rides on the round after its changes; each
//! core takes it there (`Shard::take_move`), so no replica misses or repeats a change and
//! reads routed by the older split keys are routed again (`Shard::serves_as`). Watchers
//! live on their streams' cores and see every round, so they do not move at all. Steps
//! are paced like the compaction's slices (`runtime::background_pause`).
//!
//! Runs on: the raft core. Off with `--shard-split-keys` (the operator's split stays) or
//! `--shard-rebalance=false`, and with one core.

use super::*;
use crate::mvcc::Change;
use crate::shard::{shard_of, Move};
use std::sync::Arc;

/// Keys one step moves at most: the pause it adds to the raft core (copying their
/// histories; the longest steps of the skew runs, 2048 keys of one revision each under a
/// 64-client put load, took 0.43-0.85 ms: tuning.md issue 23).
const MOVE_STEP_KEYS: usize = 2048;

/// A rebalance starts when a split key is this many live keys away from its share
/// (and at least `START_SHARE_DIVISOR`th of a shard's share)...
const START_MIN_KEYS: usize = 1024;
const START_SHARE_DIVISOR: usize = 8;
/// ...and goes on until every split key is within this many (or a 64th of a share).
const STOP_MIN_KEYS: usize = 16;
const STOP_SHARE_DIVISOR: usize = 64;

/// The raft core's view of the shards' sizes, and the rebalance under way.
pub(super) struct Rebalance {
    enabled: bool,
    /// Live keys per shard, counted from the rounds' changes (estimated at boot).
    counts: Vec<usize>,
    /// The rebalance under way: when it started, the steps and keys moved so far, and
    /// the longest step (its pause on this core).
    running: Option<(Instant, usize, usize, Duration)>,
    /// Not before this the next step.
    next_step: Option<Instant>,
    /// Steps taken by the `shard-churn` failpoint (their direction alternates).
    churn: u64,
}

impl Rebalance {
    /// `shards` shards split at `splits` over `index`: the live keys per shard counted by
    /// the index's rebuild when given (`counted`), else counted exactly when the store is
    /// small, else as equal shares (the boot split's quantiles).
    pub(super) fn new(
        enabled: bool,
        shards: usize,
        splits: &[Vec<u8>],
        index: &crate::mvcc::KeyIndex,
        counted: Option<&[usize]>,
    ) -> Rebalance {
        let n = shards.max(1);
        let mut counts = vec![0; n];
        let live = index.live_key_count();
        if let Some(c) = counted.filter(|c| c.len() == n) {
            counts.copy_from_slice(c);
        } else if index.key_count() <= 4 * START_MIN_KEYS {
            for k in index.keys() {
                if index.history(k).is_some_and(|h| h.is_live()) {
                    counts[shard_of(splits, k).min(n - 1)] += 1;
                }
            }
        } else {
            for (i, c) in counts.iter_mut().enumerate() {
                *c = live * (i + 1) / n - live * i / n;
            }
        }
        Rebalance {
            enabled: enabled && shards > 1,
            counts,
            running: None,
            next_step: None,
            churn: 0,
        }
    }

    /// Counts a round's changes against the split keys they were applied under.
    fn count(&mut self, splits: &[Vec<u8>], changes: &[Change]) {
        if !self.enabled {
            return;
        }
        for c in changes {
            match c {
                Change::Put { kv, .. } if kv.version == 1 => {
                    self.counts[shard_of(splits, &kv.key)] += 1;
                }
                Change::Delete { key, .. } => {
                    let c = &mut self.counts[shard_of(splits, key)];
                    *c = c.saturating_sub(1);
                }
                _ => {}
            }
        }
    }

    /// The split key furthest from its share, and by how many live keys its left side
    /// should grow (negative: shrink).
    fn worst(&self) -> Option<(usize, i64)> {
        let n = self.counts.len();
        let total: usize = self.counts.iter().sum();
        let mut left = 0;
        let mut worst: Option<(usize, i64)> = None;
        for i in 0..n - 1 {
            left += self.counts[i];
            let d = (total * (i + 1) / n) as i64 - left as i64;
            if worst.is_none_or(|(_, w)| d.abs() > w.abs()) {
                worst = Some((i, d));
            }
        }
        worst
    }

    /// Fewest keys out of balance that count (`share`: one shard's share of the keys).
    fn threshold(&self, start: bool) -> i64 {
        let share = self.counts.iter().sum::<usize>() / self.counts.len();
        let t = if start {
            (share / START_SHARE_DIVISOR).max(START_MIN_KEYS)
        } else {
            (share / STOP_SHARE_DIVISOR).max(STOP_MIN_KEYS)
        };
        t as i64
    }

    /// When the loop must run for the next step (`None`: no rebalance under way).
    pub(super) fn due(&self) -> Option<Instant> {
        self.running
            .is_some()
            .then(|| self.next_step.unwrap_or_else(Instant::now))
    }
}

impl RaftCore {
    /// A round for the next step when one is due and no write made a round meanwhile.
    pub(super) fn rebalance_turn(&mut self, out: &dyn ReplySink) {
        if self.rebalance.due().is_some_and(|t| t <= Instant::now()) {
            self.round.refresh = true;
            self.broadcast(out);
        }
    }

    /// Counts a round's changes, then takes a step if one is due and `may_step` (not in
    /// the boot round, whose split keys the shards boot with): returned to ride on the
    /// round after its changes (the split keys in `round.splits` are already the new ones).
    pub(super) fn rebalance_round(
        &mut self,
        changes: &[Change],
        may_step: bool,
    ) -> Option<Arc<Move>> {
        let r = &mut self.rebalance;
        r.count(&self.round.splits, changes);
        if !r.enabled || !may_step || r.next_step.is_some_and(|t| t > Instant::now()) {
            return None;
        }
        if crate::failpoint::is_on(crate::failpoint::Point::ShardChurn) {
            return self.churn_step();
        }
        let (boundary, d) = r.worst()?;
        if r.running.is_none() {
            if d.abs() < r.threshold(true) {
                return None;
            }
            r.running = Some((Instant::now(), 0, 0, Duration::ZERO));
        }
        let started = Instant::now();
        let step = (d.abs() > r.threshold(false))
            .then(|| {
                let index = self.store.index();
                Move::plan(&index, &self.round.splits, boundary, d, MOVE_STEP_KEYS)
            })
            .flatten();
        let took = started.elapsed();
        let r = &mut self.rebalance;
        r.next_step = Some(Instant::now() + crate::runtime::background_pause(took));
        let Some(step) = step else {
            // Balanced: done until the counts drift again. Or nothing can move that way
            // (the counts, estimated at boot, are off): look again in a second.
            if d.abs() > r.threshold(false) {
                r.next_step = Some(Instant::now() + Duration::from_secs(1));
            }
            if let Some((t, steps, keys, longest)) = r.running.take().filter(|r| r.1 > 0) {
                crate::runtime::log::info(
                    "shard",
                    &format!(
                        "rebalanced the shards: moved {keys} keys in {steps} steps (took {:?}, \
                         longest step {longest:?}); live keys per shard {:?}",
                        t.elapsed(),
                        r.counts
                    ),
                );
            }
            return None;
        };
        if let Some((_, steps, keys, longest)) = &mut r.running {
            *steps += 1;
            *keys += step.keys.len();
            *longest = (*longest).max(took);
        }
        Some(self.take_step(step))
    }

    /// The raft core's side of a step: counts, metrics, and the split keys the next
    /// rounds are routed by.
    fn take_step(&mut self, step: Move) -> Arc<Move> {
        let r = &mut self.rebalance;
        r.counts[step.from] = r.counts[step.from].saturating_sub(step.live);
        r.counts[step.to] += step.live;
        crate::metrics::inc(crate::metrics::Counter::ShardMoves);
        crate::metrics::add(
            crate::metrics::Counter::ShardMovedKeys,
            step.keys.len() as u64,
        );
        self.round.splits = step.splits.clone();
        super::boot::keep_splits(&mut self.store, &step.splits);
        Arc::new(step)
    }

    /// The `shard-churn` failpoint's step: a split key moved up to 4 keys, the way
    /// opposite to the last step (the other way if nothing lies that way), every 5 ms,
    /// whatever the balance. Keeps a rebalance "running" so the loop comes back for it.
    fn churn_step(&mut self) -> Option<Arc<Move>> {
        let r = &mut self.rebalance;
        r.churn += 1;
        r.next_step = Some(Instant::now() + Duration::from_millis(5));
        r.running
            .get_or_insert((Instant::now(), 0, 0, Duration::ZERO));
        let splits = &self.round.splits;
        let boundary = (r.churn / 2) as usize % splits.len().max(1);
        let d = if r.churn % 2 == 0 { 3 } else { -3 };
        let step = {
            let index = self.store.index();
            Move::plan(&index, splits, boundary, d, 4)
                .or_else(|| Move::plan(&index, splits, boundary, -d, 4))?
        };
        Some(self.take_step(step))
    }
}
