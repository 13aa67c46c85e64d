//! Maintenance.Defragment on the raft core: the db moves its live pages from the end of
//! the file into free pages near its start, a slice per loop turn between rounds, commits
//! each slice, and cuts the file once nothing can reach the cut pages (`mvcc::db`'s
//! "Defragmentation"). Unlike etcd, which holds every lock while it copies its db into a
//! new file (a write stall for the whole copy), reads and writes go on meanwhile.
//!
//! Runs on: the raft core. Invariant: every waiter gets one reply, once a step reports
//! the defragmentation done (or the db fails).

use super::*;
use crate::mesh::Defragmented;

/// Pages a loop turn moves at most (256 KiB with 4 KiB pages): the pause a turn adds.
/// Measured on a 1 GiB db (bench/results/issue19-defrag): 256 pages and a commit per turn
/// cost ~16 ms a turn, which showed in the puts' p50; a quarter of it, committed on the
/// db's usual cadence, keeps a turn near the cost of a round.
const DEFRAG_STEP_PAGES: u64 = 64;
/// The pause before the next step when one made no progress (a pinned snapshot holds
/// the pages it waits for).
const DEFRAG_IDLE_RETRY: Duration = Duration::from_millis(20);
/// A defragmentation whose steps moved nothing for this long answers its callers with
/// what it achieved. Writes between steps take the free pages below the target first
/// (they allocate lowest-first), and a long snapshot stream pins pages: under a steady
/// write load a defragmentation could otherwise wait as long as the load lasts
/// (tests/it/maintenance.rs saw 20 s under 850 puts/s). The db keeps its place: the next
/// Defragment goes on from there.
const DEFRAG_STALL_MAX: Duration = Duration::from_secs(2);

/// The Defragment calls waiting for the current defragmentation.
#[derive(Default)]
pub(super) struct DefragDuty {
    waiting: Vec<ReplyTo<Defragmented>>,
    started_bytes: u64,
    started: Option<Instant>,
    next_step: Option<Instant>,
    moved_pages: u64,
    /// When a step last moved pages (or the defragmentation began).
    last_progress: Option<Instant>,
}

impl DefragDuty {
    pub(super) fn active(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// When the loop must run again for the next step (`None`: no defrag running).
    pub(super) fn due(&self) -> Option<Instant> {
        self.active()
            .then(|| self.next_step.unwrap_or_else(Instant::now))
    }
}

impl RaftCore {
    pub(super) fn start_defrag(&mut self, to: ReplyTo<Defragmented>) {
        if !self.defrag.active() {
            self.defrag.started_bytes = self.store.backend().size_bytes();
            self.defrag.started = Some(Instant::now());
            crate::metrics::set(crate::metrics::Gauge::DefragInflight, 1.0);
            self.defrag.moved_pages = 0;
            self.defrag.next_step = None;
            self.defrag.last_progress = Some(Instant::now());
            crate::runtime::log::info(
                "mvcc/backend",
                &format!(
                    "defragmenting (db {} bytes, in use {} bytes)",
                    self.defrag.started_bytes,
                    self.store.backend().stats().pages_in_use * mvcc::db::PAGE_BYTES as u64
                ),
            );
        }
        self.defrag.waiting.push(to);
    }

    /// One slice of a running defragmentation: move, publish, commit; replies once done.
    pub(super) async fn defrag_turn(&mut self, out: &dyn ReplySink) -> Result<(), BootError> {
        let now = Instant::now();
        if !self.defrag.active() || self.defrag.next_step.is_some_and(|t| t > now) {
            return Ok(());
        }
        let res = self.store.backend_mut().defrag_step(DEFRAG_STEP_PAGES);
        let p = match res {
            Ok(p) => p,
            Err(e) => {
                let waiting = std::mem::take(&mut self.defrag.waiting);
                for to in waiting {
                    self.respond(
                        out,
                        to,
                        Err(ServerError::Internal(format!("defragment: {e}"))),
                    );
                }
                return Err(boot_err(format!("db defragment: {e}; stopping")));
            }
        };
        self.defrag.moved_pages += p.moved_pages;
        if p.moved_pages > 0 {
            self.defrag.last_progress = Some(now);
        }
        let stalled = !p.done
            && self
                .defrag
                .last_progress
                .is_some_and(|t| now.duration_since(t) >= DEFRAG_STALL_MAX);
        // The moved pages are in the working state like a write's: published for the
        // cores' next round, made durable by the db's commit on its usual cadence (at once
        // when the step moved nothing: it waits for commits and pins to free pages or cut
        // the file). The commit also cuts the file.
        self.store.publish();
        let waiting = p.moved_pages == 0 && !p.done;
        if waiting || p.done || now.duration_since(self.last_db_commit) >= DB_COMMIT_INTERVAL {
            self.commit_db(now).await?;
            // The cores move to the new snapshot and release the old one's pins, which
            // the reuse of moved-away pages and the file's cut wait for.
            self.round.refresh = true;
            self.broadcast(out);
        }
        self.defrag.next_step = waiting.then(|| now + DEFRAG_IDLE_RETRY);
        if p.done || stalled {
            let after = self.store.backend().size_bytes();
            let took = self.defrag.started.map(|t| t.elapsed()).unwrap_or_default();
            crate::metrics::observe(crate::metrics::Hist::Defrag, took);
            crate::metrics::set(crate::metrics::Gauge::DefragInflight, 0.0);
            crate::runtime::log::info(
                "mvcc/backend",
                &format!(
                    "finished defragmenting{}: db {} → {} bytes, {} pages moved, took {:?}",
                    if stalled {
                        " (stopped: no page could move for 2 s; writes or a pinned snapshot hold the free space)"
                    } else {
                        ""
                    },
                    self.defrag.started_bytes,
                    after,
                    self.defrag.moved_pages,
                    took
                ),
            );
            let waiting = std::mem::take(&mut self.defrag.waiting);
            for to in waiting {
                self.respond(
                    out,
                    to,
                    Ok(Defragmented {
                        before_bytes: self.defrag.started_bytes,
                        after_bytes: after,
                    }),
                );
            }
        }
        Ok(())
    }
}
