//! This member's writes on the raft core: held while there is no leader, proposed with
//! a context naming their proposer (member, boot, core, sequence number), tracked until
//! applied or timed out.
//!
//! Runs on: the raft core. Invariant: an origin is held or waiting, never both, and gets
//! exactly one reply.

use super::*;

/// This member's writes. Every origin is in at most one of `held` and `waiting`.
pub(super) struct Writes {
    /// Waiting for a leader, in arrival order.
    pub(super) held: VecDeque<HeldProposal>,
    /// Proposed, not yet applied: when each gives up.
    pub(super) waiting: HashMap<Origin, Instant>,
    /// `waiting`'s deadlines in order (an entry whose origin left `waiting`, or got a
    /// later deadline, is skipped).
    pub(super) deadlines: VecDeque<(Instant, Origin)>,
}

/// A write waiting for a leader to propose it to.
pub(super) struct HeldProposal {
    /// Who waits (a store write's `Propose` or an Auth call's `ProposeAuth`).
    pub(super) origin: Origin,
    pub(super) data: bytes::Bytes,
    /// When it gives up ("context deadline exceeded").
    pub(super) deadline: Instant,
}

/// The proposer of an entry, in its context: member ID, boot incarnation, core, sequence
/// number. The incarnation keeps a replayed entry from an earlier boot from answering a
/// request of this boot that happens to reuse its (core, seq).
pub(super) fn encode_context(member_id: u64, incarnation: u64, origin: Origin) -> Vec<u8> {
    let mut c = Vec::with_capacity(CONTEXT_BYTES);
    c.extend_from_slice(&member_id.to_le_bytes());
    c.extend_from_slice(&incarnation.to_le_bytes());
    c.extend_from_slice(&origin.from.0.to_le_bytes());
    c.extend_from_slice(&origin.seq.to_le_bytes());
    c
}

pub(super) const CONTEXT_BYTES: usize = 26;

pub(super) fn decode_context(c: &[u8]) -> Option<(u64, u64, Origin)> {
    if c.len() != CONTEXT_BYTES {
        return None;
    }
    let member = u64::from_le_bytes(c[..8].try_into().ok()?);
    let incarnation = u64::from_le_bytes(c[8..16].try_into().ok()?);
    let core = u16::from_le_bytes(c[16..18].try_into().ok()?);
    let seq = u64::from_le_bytes(c[18..].try_into().ok()?);
    let origin = Origin {
        from: CoreId(core),
        seq,
    };
    Some((member, incarnation, origin))
}

impl RaftCore {
    /// Takes a client's write (or Auth call): proposed at once when a leader is known,
    /// else held until one is (or its deadline).
    pub(super) fn hold_proposal(
        &mut self,
        out: &dyn ReplySink,
        origin: Origin,
        data: bytes::Bytes,
    ) {
        let deadline = Instant::now() + self.request_timeout;
        self.writes.held.push_back(HeldProposal {
            origin,
            data,
            deadline,
        });
        self.propose_held(out);
    }

    /// Proposes the writes that wait for a leader (all of them, once one is known). Like
    /// etcd, a write waits while there is no leader and gives up at the request timeout.
    pub(super) fn propose_held(&mut self, out: &dyn ReplySink) {
        // First settle proposals sent to a leader that is gone (see `leader_changed`).
        self.leader_changed(self.node.raft.leader_id, out);
        while self.node.raft.leader_id != ::raft::INVALID_ID {
            let Some(h) = self.writes.held.pop_front() else {
                break;
            };
            let origin = h.origin;
            let ctx = encode_context(self.opts.member_id, self.incarnation, origin);
            match self.node.propose(ctx, h.data.to_vec()) {
                Ok(()) => self.track_proposal(origin),
                // A leader transfer in progress: wait for its outcome.
                Err(::raft::Error::ProposalDropped) => {
                    self.writes.held.push_front(h);
                    break;
                }
                Err(e) => self.fail(out, origin, ServerError::ProposalRefused(e.to_string())),
            }
        }
    }

    /// Remembers a proposal of this member, to answer "request timed out" if it is never
    /// applied (raft dropped it, or the leader it went to died).
    pub(super) fn track_proposal(&mut self, origin: Origin) {
        let deadline = Instant::now() + self.request_timeout;
        self.writes.waiting.insert(origin, deadline);
        self.writes.deadlines.push_back((deadline, origin));
    }
}

impl Writes {
    /// An origin is held or proposed, never both; every proposed one has a deadline.
    #[cfg(debug_assertions)]
    pub(super) fn invariants(&self) {
        for h in &self.held {
            assert!(
                !self.waiting.contains_key(&h.origin),
                "held and proposed at once"
            );
        }
        assert!(
            self.deadlines.len() >= self.waiting.len(),
            "a proposal without deadline"
        );
    }
}
