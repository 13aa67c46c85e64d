//! Corruption checks (etcd's `etcdserver/corrupt.go`): members compare HashKV at the same
//! revision, and a db page that fails its checksum raises the CORRUPT alarm.
//!
//! - At boot (`--experimental-initial-corrupt-check`): this member asks every peer for
//!   its HashKV at this member's revision; a peer with the same compaction revision and a
//!   different hash stops this member ("found data inconsistency with peers"), as etcd
//!   refuses to start. Peers that do not answer in time, are behind or compacted past it
//!   are skipped with a warning. Unlike etcd, the member serves meanwhile (a few seconds
//!   at most; the check runs on the raft core's loop, which must run for the peers'
//!   answers to arrive).
//! - Periodically (`--experimental-corrupt-check-time`), on the leader: the same question
//!   to every other member; a mismatch raises CORRUPT for that member, through raft.
//! - At any time: a page that fails its check on any core (`mvcc::db::corruption_found`)
//!   raises CORRUPT for this member, once.
//!
//! The questions travel as forwarded requests on the peer connections (`raft::cluster`),
//! answered by the peer's raft core from its store (`ToRaft::HashKv`).
//!
//! Runs on: the raft core.

use super::*;
use crate::mesh::{Alarm, ALARM_CORRUPT};
use crate::pb::etcdserverpb as pb;

/// One question to a peer: what this member's hash was at that revision.
#[derive(Clone, Debug)]
pub(super) struct HashAsk {
    peer: u64,
    revision: i64,
    hash: u32,
    compact_revision: i64,
    initial: bool,
}

/// How long the boot check waits for the peers' answers.
const INITIAL_CHECK_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct CorruptDuty {
    /// `mvcc::db::corruptions_found()` when last looked at.
    seen: u64,
    /// CORRUPT for this member proposed (once per boot).
    raised_self: bool,
    next_periodic: Option<Instant>,
    /// The boot check: asked (peers still to answer) and when it gives up.
    initial_outstanding: usize,
    initial_deadline: Option<Instant>,
    initial_started: bool,
    /// A mismatch the boot check found: the member stops.
    pub(super) initial_failed: Option<String>,
}

impl CorruptDuty {
    /// When the loop must run again for a check (`None`: nothing scheduled).
    pub(super) fn due(&self) -> Option<Instant> {
        match (self.next_periodic, self.initial_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl RaftCore {
    fn peers(&self) -> Vec<u64> {
        let cs = self.node.store().conf_state();
        cs.voters
            .iter()
            .chain(cs.learners.iter())
            .copied()
            .filter(|&id| id != self.opts.member_id)
            .collect()
    }

    /// Proposes an alarm as the member's own entry (no caller, so auth never refuses it).
    fn propose_alarm(&mut self, out: &dyn ReplySink, member: u64, kind: i32) {
        if self.alarms.list.contains(&Alarm { member, kind }) {
            return;
        }
        let data = entry::encode_alarm(
            &pb::AlarmRequest {
                action: pb::alarm_request::AlarmAction::Activate as i32,
                member_id: member,
                alarm: kind,
            },
            None,
        );
        // An empty context: nobody waits for the reply.
        let _ = out;
        if self.node.propose(Vec::new(), data.to_vec()).is_err() {
            crate::runtime::log::warning(
                "etcdserver",
                "cannot propose the CORRUPT alarm now (no leader); retrying",
            );
        }
    }

    /// Each loop turn: a corruption found since the last turn raises CORRUPT for this
    /// member; the boot check starts or gives up; the periodic check runs when due.
    pub(super) fn corrupt_turn(&mut self, out: &dyn ReplySink) -> Result<(), BootError> {
        let now = Instant::now();
        let found = mvcc::db::corruptions_found();
        if found > self.corrupt.seen && !self.corrupt.raised_self {
            if self.node.raft.leader_id != ::raft::INVALID_ID {
                crate::runtime::log::error(
                    "etcdserver",
                    &format!(
                        "{} damaged db page(s) found since boot: raising CORRUPT for member {:x}",
                        found, self.opts.member_id
                    ),
                );
                self.propose_alarm(out, self.opts.member_id, ALARM_CORRUPT);
                self.corrupt.raised_self = true;
                self.corrupt.seen = found;
            }
        }
        if self.opts.initial_corrupt_check && !self.corrupt.initial_started {
            // Once a leader is known the peers are reachable (or known not to be).
            if self.node.raft.leader_id != ::raft::INVALID_ID || self.peers().is_empty() {
                self.corrupt.initial_started = true;
                self.start_hash_round(true);
            }
        }
        if let Some(why) = &self.corrupt.initial_failed {
            return Err(boot_err(why.clone()));
        }
        if self
            .corrupt
            .initial_deadline
            .is_some_and(|d| d <= now || self.corrupt.initial_outstanding == 0)
        {
            if self.corrupt.initial_outstanding > 0 {
                crate::runtime::log::warning(
                    "etcdserver",
                    &format!(
                        "initial corruption check: {} peer(s) did not answer; serving",
                        self.corrupt.initial_outstanding
                    ),
                );
            } else {
                crate::runtime::log::info(
                    "etcdserver",
                    "initial corruption check passed: no corruption detected",
                );
            }
            self.corrupt.initial_deadline = None;
            self.corrupt.initial_outstanding = 0;
        }
        if let Some(every) = self.opts.corrupt_check_interval {
            match self.corrupt.next_periodic {
                None => self.corrupt.next_periodic = Some(now + every),
                Some(t) if t <= now => {
                    self.corrupt.next_periodic = Some(now + every);
                    if self.node.raft.state == StateRole::Leader {
                        self.start_hash_round(false);
                    }
                }
                Some(_) => {}
            }
        }
        let _ = out;
        Ok(())
    }

    /// Asks every peer for its HashKV at this member's current revision.
    fn start_hash_round(&mut self, initial: bool) {
        let revision = self.store.current_revision();
        let (hash, compact_revision) = match self.store.hash_kv(revision) {
            Ok(h) => h,
            Err(e) => {
                crate::runtime::log::warning(
                    "etcdserver",
                    &format!("corruption check: cannot hash this member's store: {e}"),
                );
                return;
            }
        };
        let peers = self.peers();
        let mut asked = 0;
        for peer in peers {
            let ask = HashAsk {
                peer,
                revision,
                hash,
                compact_revision,
                initial,
            };
            if self.ask_peer_hash(peer, revision, ask) {
                asked += 1;
            }
        }
        if initial {
            self.corrupt.initial_outstanding = asked;
            self.corrupt.initial_deadline = Some(Instant::now() + INITIAL_CHECK_WAIT);
            crate::runtime::log::info(
                "etcdserver",
                &format!(
                    "initial corruption check: asked {asked} peer(s) for their hash at revision {revision}"
                ),
            );
        }
    }

    /// A peer's answer to a corruption check.
    pub(super) fn hash_check_answer(
        &mut self,
        out: &dyn ReplySink,
        ask: HashAsk,
        res: Result<HashKv, ServerError>,
    ) {
        if ask.initial {
            self.corrupt.initial_outstanding = self.corrupt.initial_outstanding.saturating_sub(1);
        }
        let theirs = match res {
            Ok(h) => h,
            Err(e) => {
                // Behind (future revision) or compacted past it: nothing to compare.
                crate::runtime::log::warning(
                    "etcdserver",
                    &format!(
                        "corruption check: member {:x} cannot hash revision {}: {}",
                        ask.peer,
                        ask.revision,
                        crate::mesh::ServerError::peer_code(&e).1
                    ),
                );
                return;
            }
        };
        if theirs.compact_revision != ask.compact_revision || theirs.hash == ask.hash {
            return;
        }
        let what = format!(
            "found data inconsistency with peers: member {:x} has hash {} at revision {} \
             (compacted at {}), this member {:x} has {}",
            ask.peer,
            theirs.hash,
            ask.revision,
            theirs.compact_revision,
            self.opts.member_id,
            ask.hash
        );
        crate::runtime::log::error("etcdserver", &what);
        if ask.initial {
            self.corrupt.initial_failed = Some(what);
        } else {
            // etcd's leader raises CORRUPT for the member whose hash differs from its own.
            self.propose_alarm(out, ask.peer, ALARM_CORRUPT);
        }
    }

    /// A question that got no answer in time.
    pub(super) fn hash_check_lost(&mut self, waiter: cluster::ForwardWaiter) {
        if let cluster::ForwardWaiter::HashCheck(ask) = waiter {
            if ask.initial {
                self.corrupt.initial_outstanding =
                    self.corrupt.initial_outstanding.saturating_sub(1);
            }
            crate::runtime::log::warning(
                "etcdserver",
                &format!(
                    "corruption check: member {:x} did not answer for revision {}",
                    ask.peer, ask.revision
                ),
            );
        }
    }
}
