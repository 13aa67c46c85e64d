//! A compaction's sweep on the raft core: applying a Compact only sets the compact
//! revision (`Store::compact`); the records and key-index history it drops go a slice at a
//! time between rounds (`Store::compact_step`), each slice followed by a pause as long as
//! it took (`runtime::background_pause`), while reads and writes go on. Where
//! the sweep stands is in the db's meta, committed with the deletions, so a restart (or a
//! member booting on a snapshot taken mid-way) goes on from there. Compact calls with
//! `physical` set are answered once the sweep is done, as etcd answers them once its
//! scheduled compaction has finished.
//!
//! Runs on: the raft core. Invariant: every physical caller gets one reply, once the sweep
//! that covers its revision is done (or the member stops).

use super::*;

/// Records a slice sweeps (whole main revisions, so at least this many): the pause it
/// adds to the requests queued behind it. Under a put load at 500k keys (tuning.md, issue
/// 23) a slice of 1024 took under 1 ms.
const COMPACT_STEP_RECORDS: usize = 1024;

/// How long a sweep waiting for this core's shard to take its round waits before it
/// looks again.
const SWEEP_WAIT: Duration = Duration::from_millis(1);

/// The physical Compact calls waiting for the sweep.
#[derive(Default)]
pub(super) struct CompactionDuty {
    /// Each caller's origin (to fail it at shutdown) and its reply.
    physical: Vec<(Origin, Reply)>,
    /// When the running sweep started, for the log line at its end.
    started: Option<(Instant, i64)>,
    /// Not before this the next slice (`runtime::background_pause` after the last one:
    /// with no pause the loop would not go through the executor's rings between slices,
    /// and this core's connections would wait for the whole sweep).
    next_step: Option<Instant>,
}

impl RaftCore {
    /// When the loop must run again for the next slice (`None`: no sweep pending).
    pub(super) fn compaction_due(&self) -> Option<Instant> {
        self.store
            .compaction_pending()
            .then(|| self.compaction.next_step.unwrap_or_else(Instant::now))
    }

    /// Holds the reply to a physical Compact of this member's client until the sweep ends.
    pub(super) fn hold_physical_compact(&mut self, held: (Origin, Reply)) {
        self.compaction.physical.push(held);
    }

    /// One slice of a pending sweep; once it is done, the physical callers' replies go
    /// out with a round.
    pub(super) fn compaction_turn(&mut self, out: &dyn ReplySink) -> Result<(), BootError> {
        if !self.store.compaction_pending() {
            return Ok(());
        }
        let rev = self.store.compact_revision();
        if self.compaction.started.is_none_or(|(_, r)| r != rev) {
            self.compaction.started = Some((Instant::now(), rev));
        }
        if self
            .compaction
            .next_step
            .is_some_and(|t| t > Instant::now())
        {
            return Ok(());
        }
        if self.store.sweep_waits() {
            // The shard on this core has not taken the compaction's round yet (it is in
            // this core's queue): look again shortly.
            self.compaction.next_step = Some(Instant::now() + SWEEP_WAIT);
            return Ok(());
        }
        let started = Instant::now();
        let deleted = self
            .store
            .compact_step(COMPACT_STEP_RECORDS)
            .map_err(|e| boot_err(format!("compaction at {rev}: {e}")))?;
        self.compaction.next_step =
            Some(Instant::now() + crate::runtime::background_pause(started.elapsed()));
        crate::metrics::add(crate::metrics::Counter::CompactionKeys, deleted as u64);
        if self.store.compaction_pending() {
            return Ok(());
        }
        if let Some((t, rev)) = self.compaction.started.take() {
            crate::runtime::log::info(
                "mvcc",
                &format!(
                    "finished scheduled compaction at {rev} (took {:?})",
                    t.elapsed()
                ),
            );
        }
        if !self.compaction.physical.is_empty() {
            let held = std::mem::take(&mut self.compaction.physical);
            self.round
                .replies
                .extend(held.into_iter().map(|(o, reply)| (o.from, reply)));
            self.broadcast(out);
        }
        Ok(())
    }

    /// The physical Compact calls still waiting (failed at shutdown).
    pub(super) fn take_physical_compacts(&mut self) -> impl Iterator<Item = Origin> {
        std::mem::take(&mut self.compaction.physical)
            .into_iter()
            .map(|(o, _)| o)
    }
}
