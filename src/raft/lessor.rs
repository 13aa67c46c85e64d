//! `Lessor`: when leases expire. The leader's half of etcd's lessor: a deadline per lease
//! on this member's monotonic clock, renewed by keep-alives without touching raft, and
//! the leases past their deadline, which the raft core revokes through raft.
//!
//! Runs on: the raft core. Which leases exist (and their keys) is the store's
//! (`mvcc::lease`); this only times them.
//!
//! Invariants:
//! - Only a primary (the leader, once it applied an entry of its term) has deadlines;
//!   elsewhere every lease lives until a leader revokes it, as in etcd.
//! - `heap` holds at least one entry per timed lease at or before its deadline, so the
//!   earliest deadline is always found by popping (stale entries are skipped or pushed
//!   back with the lease's current deadline).
//! - A lease past its deadline is offered for revocation at most once per
//!   `REVOKE_RETRY_INTERVAL` until its revoke is applied; once offered, no keep-alive
//!   renews it (the revoke is on its way through raft).
//! - A keep-alive counts from when its core received it: it renews a lease whose
//!   deadline was still ahead then, to that time + TTL; a deadline never moves back.

use crate::mvcc::lease::Leases;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// etcd's leaseRevokeRate: at most this many expired leases are revoked per second (the
/// raft core offers `rate × check interval` per check).
pub const LEASE_REVOKE_PER_SECOND_MAX: usize = 1000;
/// etcd's expiredLeaseRetryInterval: an expired lease whose revoke did not apply is
/// offered again after this.
pub const REVOKE_RETRY_INTERVAL: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct Lessor {
    primary: bool,
    deadline: HashMap<i64, Instant>,
    heap: BinaryHeap<Reverse<(Instant, i64)>>,
    /// Leases offered for revocation whose revoke has not applied yet.
    offered: HashSet<i64>,
    /// etcd's lease checkpoints: how often remaining TTLs are recorded, and when next.
    checkpoint_interval: Option<Duration>,
    next_checkpoint: Option<Instant>,
}

/// etcd's maxLeaseCheckpointBatchSize: remaining TTLs recorded per raft entry at most.
pub const CHECKPOINT_BATCH_MAX: usize = 1000;

impl Lessor {
    /// A lessor that checkpoints remaining TTLs every `interval` while primary.
    pub fn with_checkpoints(interval: Option<Duration>) -> Lessor {
        Lessor {
            checkpoint_interval: interval,
            ..Lessor::default()
        }
    }

    pub fn checkpoints(&self) -> bool {
        self.checkpoint_interval.is_some()
    }

    /// When due, the remaining TTL (whole seconds) of every lease that has more left than
    /// a checkpoint interval, in batches of at most `CHECKPOINT_BATCH_MAX`: what the
    /// leader records through raft so a new leader resumes from it instead of the full
    /// TTL (etcd's checkpointing; leases about to expire need none).
    pub fn due_checkpoints(&mut self, now: Instant) -> Vec<Vec<(i64, i64)>> {
        let Some(interval) = self.checkpoint_interval else {
            return Vec::new();
        };
        if !self.primary {
            return Vec::new();
        }
        match self.next_checkpoint {
            Some(at) if at > now => return Vec::new(),
            None => {
                self.next_checkpoint = Some(now + interval);
                return Vec::new();
            }
            Some(_) => {}
        }
        self.next_checkpoint = Some(now + interval);
        let mut all: Vec<(i64, i64)> = self
            .deadline
            .iter()
            .filter(|(id, _)| !self.offered.contains(id))
            .filter_map(|(&id, &at)| {
                let left = at.saturating_duration_since(now);
                (left > interval).then_some((id, left.as_secs() as i64))
            })
            .collect();
        all.sort_unstable();
        all.chunks(CHECKPOINT_BATCH_MAX)
            .map(|c| c.to_vec())
            .collect()
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// This member became the leader: every lease gets `extend` (an election timeout)
    /// on top of its TTL, or of its checkpointed remaining TTL, from now (etcd's
    /// Promote), then deadlines that pile up beyond the revoke rate are spread out.
    pub fn promote(&mut self, leases: &Leases, extend: Duration, now: Instant) {
        self.primary = true;
        self.deadline.clear();
        self.heap.clear();
        self.offered.clear();
        self.next_checkpoint = None;
        let mut timed: Vec<(Duration, i64)> = leases
            .iter()
            .map(|(id, l)| {
                let secs = if l.remaining_ttl > 0 {
                    l.remaining_ttl
                } else {
                    l.ttl
                };
                (secs_duration(secs) + extend, id)
            })
            .collect();
        spread_pile_up(&mut timed);
        for (after, id) in timed {
            self.set_deadline(id, now + after);
        }
    }

    /// This member is no longer the leader: leases stop expiring here.
    pub fn demote(&mut self) {
        self.primary = false;
        self.deadline.clear();
        self.heap.clear();
        self.offered.clear();
    }

    fn set_deadline(&mut self, id: i64, at: Instant) {
        self.deadline.insert(id, at);
        self.heap.push(Reverse((at, id)));
    }

    /// A grant was applied.
    pub fn granted(&mut self, id: i64, ttl_s: i64, now: Instant) {
        if self.primary {
            self.set_deadline(id, now + secs_duration(ttl_s));
        }
    }

    /// A revoke was applied.
    pub fn revoked(&mut self, id: i64) {
        self.deadline.remove(&id);
        self.offered.remove(&id);
    }

    /// A keep-alive received at `received`: the lease's deadline moves to `received +
    /// ttl`. `None` if the lease is gone, was past its deadline at `received`, or is
    /// offered for revocation, as etcd answers then. Only on a primary.
    pub fn renew(&mut self, leases: &Leases, id: i64, received: Instant) -> Option<(i64, Instant)> {
        debug_assert!(self.primary);
        let ttl = leases.get(id)?.ttl;
        if self.offered.contains(&id) {
            return None;
        }
        let deadline = self.deadline.get_mut(&id)?;
        if *deadline <= received {
            return None;
        }
        // The heap keeps the older (earlier) entry; popping it finds this deadline.
        *deadline = (*deadline).max(received + secs_duration(ttl));
        Some((ttl, *deadline))
    }

    /// Whole seconds left (truncated, as etcd reports them); the TTL when not primary.
    pub fn remaining_s(&self, id: i64, ttl_s: i64, now: Instant) -> i64 {
        match self.deadline.get(&id) {
            Some(at) => at.saturating_duration_since(now).as_secs() as i64,
            None => ttl_s,
        }
    }

    /// The earliest deadline, if any lease is timed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Up to `limit` leases past their deadline, to revoke; each is offered again after
    /// `REVOKE_RETRY_INTERVAL` if its revoke has not applied by then.
    pub fn expired(&mut self, now: Instant, limit: usize) -> Vec<i64> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(&Reverse((at, id))) = self.heap.peek() else {
                break;
            };
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(&deadline) = self.deadline.get(&id) else {
                continue; // revoked
            };
            if deadline > now {
                // Renewed since this entry was pushed (or a retry not yet due).
                if deadline > at {
                    self.heap.push(Reverse((deadline, id)));
                }
                continue;
            }
            out.push(id);
            self.offered.insert(id);
            self.heap.push(Reverse((now + REVOKE_RETRY_INTERVAL, id)));
        }
        out
    }

    pub fn timed_count(&self) -> usize {
        self.deadline.len()
    }
}

fn secs_duration(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// etcd's pile-up rule on promotion: if more leases would expire within a second of each
/// other than 3/4 of the revoke rate, the later ones in that window are pushed back so
/// expiries arrive at about that rate instead of all at once.
fn spread_pile_up(timed: &mut [(Duration, i64)]) {
    if timed.len() < LEASE_REVOKE_PER_SECOND_MAX {
        return;
    }
    timed.sort_unstable();
    let target = (3 * LEASE_REVOKE_PER_SECOND_MAX / 4) as f64;
    let mut base = timed[0].0;
    let mut next_window = base + Duration::from_secs(1);
    let mut expires = 0usize;
    for (after, _) in timed.iter_mut() {
        let remaining = *after;
        if remaining > next_window {
            base = remaining;
            next_window = base + Duration::from_secs(1);
            expires = 1;
            continue;
        }
        expires += 1;
        if expires as f64 <= target {
            continue;
        }
        let rate_delay = Duration::from_secs_f64(expires as f64 / target);
        let delay = rate_delay.saturating_sub(remaining - base);
        next_window = base + delay;
        *after += delay;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(ids: &[(i64, i64)]) -> Leases {
        let mut l = Leases::default();
        for &(id, ttl) in ids {
            l.insert(id, ttl, 0);
        }
        l
    }

    #[test]
    fn deadlines_move_with_renewals_and_expired_leases_are_offered_once_per_retry() {
        let t0 = Instant::now();
        let ls = leases(&[(1, 5), (2, 10)]);
        let mut lessor = Lessor::default();
        assert_eq!(
            lessor.expired(t0 + Duration::from_secs(100), 10),
            Vec::<i64>::new()
        );
        lessor.promote(&ls, Duration::from_secs(1), t0);
        assert_eq!(lessor.remaining_s(1, 5, t0), 6);
        // Lease 1 renewed at 5 s: its deadline moves from 6 s to 10 s; a keep-alive that
        // was received earlier (and arrives later) does not move it back.
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(lessor.renew(&ls, 1, at(5)), Some((5, at(10))));
        assert_eq!(lessor.renew(&ls, 1, at(4)), Some((5, at(10))));
        assert_eq!(
            lessor.expired(t0 + Duration::from_secs(7), 10),
            Vec::<i64>::new()
        );
        assert_eq!(
            lessor.expired(t0 + Duration::from_millis(10_500), 10),
            vec![1]
        );
        // Past its deadline a lease cannot be renewed, and is not offered again at once.
        assert_eq!(lessor.renew(&ls, 1, t0 + Duration::from_secs(11)), None);
        // Offered for revocation: not even a keep-alive received in time renews it now.
        assert_eq!(lessor.renew(&ls, 1, at(9)), None);
        assert_eq!(lessor.expired(t0 + Duration::from_secs(12), 10), vec![2]);
        assert_eq!(
            lessor.expired(t0 + Duration::from_secs(13), 10),
            Vec::<i64>::new()
        );
        // Not revoked within the retry interval: offered again.
        assert_eq!(lessor.expired(t0 + Duration::from_secs(14), 10), vec![1]);
        lessor.revoked(1);
        lessor.revoked(2);
        assert_eq!(
            lessor.expired(t0 + Duration::from_secs(60), 10),
            Vec::<i64>::new()
        );
        assert_eq!(lessor.timed_count(), 0);
    }

    #[test]
    fn only_a_primary_times_leases() {
        let t0 = Instant::now();
        let ls = leases(&[(1, 5)]);
        let mut lessor = Lessor::default();
        lessor.granted(1, 5, t0);
        assert_eq!(lessor.remaining_s(1, 5, t0), 5);
        assert_eq!(lessor.next_deadline(), None);
        lessor.promote(&ls, Duration::ZERO, t0);
        assert!(lessor.next_deadline().is_some());
        lessor.demote();
        assert_eq!(
            lessor.expired(t0 + Duration::from_secs(60), 10),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn promotion_spreads_a_pile_up_of_expiries() {
        let t0 = Instant::now();
        let ids: Vec<(i64, i64)> = (1..=3000).map(|i| (i, 10)).collect();
        let ls = leases(&ids);
        let mut lessor = Lessor::default();
        lessor.promote(&ls, Duration::ZERO, t0);
        // All 3000 would expire at 10 s; spread, no second sees much more than 750.
        let mut per_second = std::collections::BTreeMap::new();
        for &(id, _) in &ids {
            let left = lessor.remaining_s(id, 10, t0);
            *per_second.entry(left).or_insert(0) += 1;
        }
        assert!(per_second.values().all(|&n| n <= 760), "{per_second:?}");
        assert!(per_second.len() >= 4, "{per_second:?}");
    }

    #[test]
    fn checkpoints_record_remaining_ttls_of_long_leases_each_interval() {
        let t0 = Instant::now();
        let ls = leases(&[(1, 100), (2, 3)]);
        let mut lessor = Lessor::with_checkpoints(Some(Duration::from_secs(10)));
        lessor.promote(&ls, Duration::ZERO, t0);
        // The first call schedules; checkpoints come one interval later.
        assert!(lessor.due_checkpoints(t0).is_empty());
        assert!(lessor
            .due_checkpoints(t0 + Duration::from_secs(5))
            .is_empty());
        let due = lessor.due_checkpoints(t0 + Duration::from_secs(10));
        // Lease 2 (3 s) needs none; lease 1 has 90 s left.
        assert_eq!(due, vec![vec![(1, 90)]]);
        assert!(lessor
            .due_checkpoints(t0 + Duration::from_secs(11))
            .is_empty());
        // Off: never.
        let mut off = Lessor::default();
        off.promote(&ls, Duration::ZERO, t0);
        assert!(off
            .due_checkpoints(t0 + Duration::from_secs(100))
            .is_empty());
    }
}
