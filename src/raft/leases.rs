//! The leader's lease duties on the raft core: keep-alives (renewed on the leader's
//! clock without a raft entry), TimeToLive, and expiry: revokes (at most etcd's rate)
//! and checkpoints proposed through raft.
//!
//! Runs on: the raft core. Invariant: only a leader that applied an entry of its own term
//! times leases (`Lessor::is_primary`); any other member forwards keep-alives.

use super::*;

/// The leader's lease duties: deadlines, revokes owed to the cores, checkpoints to
/// propose.
pub(super) struct LeaseDuty {
    /// Lease deadlines (while leader).
    pub(super) lessor: Lessor,
    /// Leases revoked this round; they travel with the round.
    pub(super) round_revoked: Vec<i64>,
    /// Lease checkpoints to propose (id, remaining TTL; 0 clears).
    pub(super) checkpoints_pending: Vec<(i64, i64)>,
    /// When expired leases were last looked for.
    pub(super) last_expiry_check: Instant,
}

/// How often the leader looks for expired leases (etcd checks every 500 ms).
pub const LEASE_EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(100);

impl RaftCore {
    /// Keep-alives: the leader (which times the leases) renews them; another member asks
    /// the leader.
    pub(super) fn lease_renew(
        &mut self,
        out: &dyn ReplySink,
        to: ReplyTo<LeaseRenewed>,
        renewals: Vec<(i64, Instant)>,
    ) {
        if !self.leases.lessor.is_primary() {
            return self.forward_lease_renew(out, to, renewals);
        }
        let leases = self.store.leases();
        let results = renewals
            .iter()
            .map(|&(id, received)| self.leases.lessor.renew(leases, id, received))
            .collect();
        if self.leases.lessor.checkpoints() {
            // A renewed lease starts from its full TTL again: clear a recorded remaining
            // TTL (one entry per lease per interval at most).
            for &(id, _) in &renewals {
                if leases.get(id).is_some_and(|l| l.remaining_ttl > 0) {
                    self.leases.checkpoints_pending.push((id, 0));
                }
            }
        }
        let body = LeaseRenewed {
            revision: self.store.current_revision(),
            results,
        };
        self.respond(out, to, Ok(body));
    }

    /// Lease.LeaseTimeToLive: the leader's deadline decides (a follower asks the leader).
    pub(super) fn lease_time_to_live(
        &mut self,
        out: &dyn ReplySink,
        to: ReplyTo<LeaseTtl>,
        id: i64,
        keys: bool,
    ) {
        if self.node.raft.state != StateRole::Leader {
            return self.forward_time_to_live(out, to, id, keys);
        }
        let revision = self.store.current_revision();
        let body = match self.store.leases().get(id) {
            Some(l) => LeaseTtl {
                revision,
                ttl: self.leases.lessor.remaining_s(id, l.ttl, Instant::now()),
                granted_ttl: l.ttl,
                keys: if keys {
                    l.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
            None => LeaseTtl {
                revision,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        self.respond(out, to, Ok(body));
    }

    /// The leader proposes a revoke for each lease past its deadline (at most etcd's
    /// revoke rate); a member that lost the lead stops timing leases.
    pub fn expire_leases(&mut self, now: Instant) {
        if self.node.raft.state != StateRole::Leader {
            if self.leases.lessor.is_primary() {
                self.leases.lessor.demote();
            }
            return;
        }
        if now.duration_since(self.leases.last_expiry_check) < LEASE_EXPIRY_CHECK_INTERVAL {
            return;
        }
        let limit =
            LEASE_REVOKE_PER_SECOND_MAX * LEASE_EXPIRY_CHECK_INTERVAL.as_millis() as usize / 1000;
        self.leases.last_expiry_check = now;
        let mut ops: Vec<Op> = self
            .leases
            .lessor
            .expired(now, limit)
            .into_iter()
            .map(|id| Op::LeaseRevoke(mvcc::LeaseRevokeRequest { id }))
            .collect();
        crate::metrics::add(crate::metrics::Counter::LeaseExpired, ops.len() as u64);
        let mut batches = self.leases.lessor.due_checkpoints(now);
        if !self.leases.checkpoints_pending.is_empty() {
            let mut clears = std::mem::take(&mut self.leases.checkpoints_pending);
            clears.sort_unstable();
            clears.dedup();
            batches.push(clears);
        }
        ops.extend(
            batches.into_iter().map(|checkpoints| {
                Op::LeaseCheckpoint(mvcc::LeaseCheckpointRequest { checkpoints })
            }),
        );
        for op in ops {
            let data = entry::encode_raft_request(&op);
            // No context: nobody waits for the reply.
            if self.node.propose(Vec::new(), data.to_vec()).is_err() {
                break;
            }
        }
    }
}
