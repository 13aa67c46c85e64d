//! A core's lease cache: what each core knows of the leases its keep-alive streams renew,
//! so most keep-alives are answered on their own core without a round trip.
//!
//! Runs on: every core (each owns one, inside its `node::Node`). Fed by the
//! replies of the raft core (`learn`) and by its applied rounds (`on_applied`).
//!
//! Invariant: a cached deadline is one the current leader confirmed in the current raft
//! term; a new term or a revoke drops it, so a fast answer never outlives a lease the
//! leader let expire by more than `FAST_RENEW_MARGIN` minus the renewal's trip.

use crate::mesh::Applied;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// When a keep-alive may be answered by its core without asking the raft core: the
/// lease's last known deadline is at least this far ahead (the batched renewal reaches
/// the leader long before that deadline could pass).
pub const FAST_RENEW_MARGIN: Duration = Duration::from_secs(1);
/// A core's view of the leases its streams keep alive: TTL and the deadline the leader
/// last confirmed. Dropped when a round revokes the lease or the raft term changes.
#[derive(Default)]
pub struct LeaseCache {
    known: RefCell<HashMap<i64, (i64, Instant)>>,
    term: Cell<u64>,
}

impl LeaseCache {
    /// The TTL to answer with at once, if the lease is known to live well past `now`.
    pub fn fast(&self, id: i64, now: Instant) -> Option<i64> {
        let known = self.known.borrow();
        let &(ttl, deadline) = known.get(&id)?;
        (now + FAST_RENEW_MARGIN < deadline).then_some(ttl)
    }

    /// What the leader answered for a renewal of `id` (`None`: gone, or unknown).
    pub fn learn(&self, id: i64, result: Option<(i64, Instant)>) {
        let mut known = self.known.borrow_mut();
        match result {
            Some(r) => {
                known.insert(id, r);
            }
            None => {
                known.remove(&id);
            }
        }
    }

    /// A round this core applied: forget its revoked leases; a new term (leader) means
    /// no deadline this core learnt is known to hold any more.
    pub fn on_applied(&self, a: &Applied) {
        if a.raft_term != self.term.get() {
            self.term.set(a.raft_term);
            self.known.borrow_mut().clear();
            return;
        }
        if !a.revoked_leases.is_empty() {
            let mut known = self.known.borrow_mut();
            for id in a.revoked_leases.iter() {
                known.remove(id);
            }
        }
    }
}
