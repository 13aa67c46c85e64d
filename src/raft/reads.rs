//! Linearizable reads on the raft core: queued, one ReadIndex per batch, served (or
//! answered with the index, for the shards to serve) once apply reaches it.
//!
//! Runs on: the raft core. Invariant: a read is in exactly one of `waiting`, `requested`
//! and `indexed` until it is answered; a ReadIndex unanswered for `READ_INDEX_RETRY` is
//! asked again (its reads go back to `waiting`).

use super::*;

/// Linearizable reads and ReadIndex requests, from arrival to answer: waiting for a
/// ReadIndex to be asked, asked (by context), indexed (waiting for apply to reach it).
pub(super) struct ReadQueue {
    pub(super) waiting: Vec<PendingRead>,
    /// ReadIndex context → when it was asked and the reads it serves.
    pub(super) requested: HashMap<u64, (Instant, Vec<PendingRead>)>,
    /// (read index, reads) whose index is known, waiting for apply to reach it.
    pub(super) indexed: Vec<(u64, Vec<PendingRead>)>,
    pub(super) next_ctx: u64,
}

pub(super) struct PendingRead {
    /// When the read gives up ("request timed out").
    pub(super) deadline: Instant,
    pub(super) waiter: ReadWaiter,
}

/// Who waits for a ReadIndex, and what to answer once it is applied.
pub(super) enum ReadWaiter {
    /// A read the raft core serves itself.
    Op(ReplyTo<OpResponse>, Op),
    /// A bare ReadIndex, answered with the index (the shards serve the read).
    Index(ReplyTo<ReadIndex>),
}

impl PendingRead {
    pub(super) fn origin(&self) -> Origin {
        match &self.waiter {
            ReadWaiter::Op(to, _) => to.origin(),
            ReadWaiter::Index(to) => to.origin(),
        }
    }
}

impl RaftCore {
    /// One ReadIndex for every linearizable read queued since the last one.
    pub(super) fn request_read_index(&mut self) {
        if self.reads.waiting.is_empty() || self.node.raft.leader_id == ::raft::INVALID_ID {
            return;
        }
        // raft-rs drops a ReadIndex on a leader that has not committed in its term yet.
        if self.node.raft.state == StateRole::Leader && !self.node.raft.commit_to_current_term() {
            return;
        }
        let ctx = self.reads.next_ctx;
        self.reads.next_ctx += 1;
        self.node.read_index(ctx.to_le_bytes().to_vec());
        let reads = std::mem::take(&mut self.reads.waiting);
        self.reads.requested.insert(ctx, (Instant::now(), reads));
    }

    pub(super) fn serve_indexed_reads(&mut self, out: &dyn ReplySink) {
        let applied = self.applied_index;
        let mut i = 0;
        while i < self.reads.indexed.len() {
            if self.reads.indexed[i].0 <= applied {
                let (index, reads) = self.reads.indexed.swap_remove(i);
                for r in reads {
                    match r.waiter {
                        ReadWaiter::Op(to, op) => {
                            let res = self.read(&op);
                            self.respond(out, to, res);
                        }
                        ReadWaiter::Index(to) => self.respond(out, to, Ok(ReadIndex(index))),
                    }
                }
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn read(&mut self, op: &Op) -> Result<OpResponse, ServerError> {
        let res = match op {
            Op::Range(r) => self.store.range(r).map(OpResponse::Range),
            Op::Txn(t) => self.store.txn(t).map(OpResponse::Txn),
            _ => unreachable!("only Range and read-only Txn are reads"),
        };
        res.map_err(ServerError::from)
    }
}
