//! The WAL's writer: a task of its own on the raft core that owns the `Wal`, so the raft
//! loop goes on while a batch is written and synced (issue 22: the loop used to await
//! every sync, so proposals, ReadIndex, keep-alives and the apply of the previous batch
//! all waited for the disk).
//!
//! Runs on: the raft core (a glommio task beside the loop). The loop hands each raft
//! `Ready` over with [`Persister::persist`] and tells raft with `advance_append_async`;
//! the writer takes every command queued since its last sync, appends them in order, syncs
//! once (group commit, only when a `Ready` needs it, raft's `must_sync`), and answers with
//! the highest `Ready` number it made durable; the loop then calls `on_persist_ready`,
//! which is what lets raft count this member's own log as persisted (commit) and hand over
//! entries to apply. So a write is still acknowledged only after its entry is durable on a
//! quorum (raft-rs never returns committed entries above this member's persisted index),
//! and the messages raft holds until the entries are durable (a follower's append
//! response, a vote) leave only after the answer.
//!
//! # Idle spin (`--idle-spin`)
//! At one client a put waits on three sleeping threads in turn: the WAL's append thread
//! for its job, the raft core for the append thread's answer and for the client's next
//! request. On a VM each wake of an idle CPU is a halt exit, tens of microseconds. So after
//! a *light* sync (at most [`LIGHT_SYNC_ENTRIES`] entries: nobody is queueing, latency is
//! what counts) that began within `idle_spin` of the previous one's end (the put came
//! straight back; see [`spin_after`]), the raft core's executor polls for `idle_spin`
//! before it parks, and the append thread polls for 4× that before it sleeps. After any
//! other sync neither spins (under load they stay awake anyway, a spin would take CPU the
//! other threads need, and a trickle of puts would keep a CPU polling for nothing). When
//! no command follows within `idle_spin`, the writer turns the raft core's spin off (an
//! idle member would otherwise poll after every wake, raft ticks and reads, until the next
//! sync). Both yield to any other runnable thread while they spin. Measured against
//! `--idle-spin 0s` (tuning.md, issue 22): put p50 at one client 240–270 → 160–185 µs,
//! at two clients +40% throughput; at 4, 16 and 64 clients no change beyond the noise.
//!
//! Invariants: commands are applied to the WAL in the order they were sent; a `Persisted(n)`
//! answer means every `Ready` numbered up to n is durable; a snapshot marker is durable
//! before its `Marked` answer and before any release sent after it runs; the first failure
//! ends the writer (the `Wal` is poisoned) and is the last answer.

use crate::metrics;
use crate::wal::{self, Wal};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::time::{Duration, Instant};

/// A sync of at most this many entries is light: see the module doc (idle spin).
/// (Two spun at 4 clients too, and cost 17% of their throughput: the spinning raft core
/// took CPU from the connections on the same core.)
pub const LIGHT_SYNC_ENTRIES: usize = 1;

/// Whether to spin after a sync of `entry_count` entries that began `gap` after the
/// previous sync ended: only a light sync whose put came straight back (one client, back
/// to back). A steady trickle of puts further apart than the spin would only keep a CPU
/// polling: at 300 puts/s open loop the spin cost 1.6 ms of server CPU per put, against
/// 0.38 ms without it.
fn spin_after(entry_count: usize, gap: Option<Duration>, idle_spin: Duration) -> bool {
    !idle_spin.is_zero() && entry_count <= LIGHT_SYNC_ENTRIES && gap.is_some_and(|g| g <= idle_spin)
}

/// How much longer the append thread spins than the raft core: its next job comes a whole
/// put later (the raft core's next event is the job's answer or the next request).
const APPEND_SPIN_FACTOR: u32 = 4;

enum Cmd {
    /// A `Ready`'s entries and hard state; `sync` when raft must have them durable.
    Persist {
        number: u64,
        entries: Vec<wal::Entry>,
        hard_state: Option<wal::HardState>,
        sync: bool,
    },
    /// A snapshot marker, made durable.
    Mark(wal::SnapshotMarker),
    /// Release the segments below this index (after the markers before it are durable).
    Release(u64),
}

/// What the writer reports, in order.
pub enum Done {
    /// Every `Ready` up to this number is durable.
    Persisted(u64),
    /// A snapshot marker is durable.
    Marked,
    /// The WAL failed (the message says how); nothing more will be written.
    Failed(String),
}

/// The loop's end of the writer.
pub struct Persister {
    tx: Option<LocalSender<Cmd>>,
    rx: LocalReceiver<Done>,
    task: Option<glommio::Task<()>>,
    /// The highest `Ready` number sent, and the highest reported durable.
    sent: u64,
    persisted: u64,
}

impl Persister {
    /// Starts the writer on the current executor with `wal`; `idle_spin` as in the module
    /// doc (zero: never spin).
    pub fn start(wal: Wal, idle_spin: Duration) -> Persister {
        let (tx, cmds) = local_channel::new_unbounded();
        let (done, rx) = local_channel::new_unbounded();
        let task = glommio::spawn_local(writer(wal, cmds, done, idle_spin));
        Persister {
            tx: Some(tx),
            rx,
            task: Some(task),
            sent: 0,
            persisted: 0,
        }
    }

    fn send(&self, cmd: Cmd) {
        // Unbounded: fails only once the writer has ended, and then its last answer is a
        // `Failed` the loop reads next.
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(cmd);
        }
    }

    /// Hands a `Ready` over (`number` from `Ready::number`).
    pub fn persist(
        &mut self,
        number: u64,
        entries: Vec<wal::Entry>,
        hard_state: Option<wal::HardState>,
        sync: bool,
    ) {
        self.sent = self.sent.max(number);
        self.send(Cmd::Persist {
            number,
            entries,
            hard_state,
            sync,
        });
    }

    /// Queues a snapshot marker; the writer answers `Marked` once it is durable.
    pub fn mark(&self, m: wal::SnapshotMarker) {
        self.send(Cmd::Mark(m));
    }

    /// Queues the release of the segments below `index`.
    pub fn release(&self, index: u64) {
        self.send(Cmd::Release(index));
    }

    /// Whether a `Ready` handed over is not yet durable.
    pub fn pending(&self) -> bool {
        self.persisted < self.sent
    }

    /// The writer's next answer (pending forever once it has ended and said so).
    pub async fn next(&mut self) -> Done {
        match self.rx.recv().await {
            Some(d) => self.noted(d),
            None => std::future::pending().await,
        }
    }

    /// The next answer if there is one now.
    pub async fn try_next(&mut self) -> Option<Done> {
        match futures_lite::future::poll_once(self.rx.recv()).await {
            Some(Some(d)) => Some(self.noted(d)),
            _ => None,
        }
    }

    /// Keeps the highest durable `Ready` number an answer reports.
    fn noted(&mut self, d: Done) -> Done {
        if let Done::Persisted(n) = d {
            self.persisted = self.persisted.max(n);
        }
        d
    }

    /// Ends the writer once it has written everything sent, and waits for it (so a
    /// restart on the same directory never finds it still writing).
    pub async fn close(&mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            task.await;
        }
    }
}

async fn writer(
    mut wal: Wal,
    cmds: LocalReceiver<Cmd>,
    done: LocalSender<Done>,
    idle_spin: Duration,
) {
    let fail = |e: String| {
        let _ = done.try_send(Done::Failed(e));
    };
    let mut last_sync_end: Option<Instant> = None;
    loop {
        // While the last sync left the raft core spinning, a command must come within the
        // spin, or the spin stops: an idle member would otherwise poll after every wake
        // (raft ticks, reads) until the next sync. (The append thread's spin ends by
        // itself after its job.)
        let first = if glommio::executor().spin_before_park().is_none() {
            cmds.recv().await
        } else {
            let within = futures_lite::future::or(async { Some(cmds.recv().await) }, async {
                glommio::timer::sleep(idle_spin).await;
                None
            });
            match within.await {
                Some(c) => c,
                None => {
                    glommio::executor().set_spin_before_park(None);
                    cmds.recv().await
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while let Some(Some(c)) = futures_lite::future::poll_once(cmds.recv()).await {
            batch.push(c);
        }
        let (mut last, mut sync, mut marked, mut entry_count) = (None, false, 0, 0);
        let mut releases = Vec::new();
        for cmd in batch {
            match cmd {
                Cmd::Persist {
                    number,
                    entries,
                    hard_state,
                    sync: s,
                } => {
                    if !entries.is_empty() {
                        wal.append_entries(&entries);
                    }
                    entry_count += entries.len();
                    if let Some(hs) = hard_state {
                        wal.set_hard_state(hs);
                    }
                    sync |= s;
                    last = Some(number);
                }
                Cmd::Mark(m) => {
                    wal.save_snapshot_marker(m);
                    sync = true;
                    marked += 1;
                }
                Cmd::Release(index) => releases.push(index),
            }
        }
        if sync {
            let started = Instant::now();
            if !idle_spin.is_zero() {
                let gap = last_sync_end.map(|end| started.saturating_duration_since(end));
                let spin = spin_after(entry_count, gap, idle_spin).then_some(idle_spin);
                glommio::executor().set_spin_before_park(spin);
                wal.set_append_spin(spin.map_or(Duration::ZERO, |s| s * APPEND_SPIN_FACTOR));
            }
            if let Err(e) = wal.sync().await {
                return fail(format!("WAL: {e}; stopping"));
            }
            last_sync_end = Some(Instant::now());
            let took = started.elapsed();
            metrics::observe(metrics::Hist::WalFsync, took);
            metrics::observe(metrics::Hist::StageWalSync, took);
        }
        for index in releases {
            if let Err(e) = wal.start_release_to(index).await {
                return fail(format!("WAL: {e}; stopping"));
            }
        }
        if let Some(n) = last {
            let _ = done.try_send(Done::Persisted(n));
        }
        for _ in 0..marked {
            let _ = done.try_send(Done::Marked);
        }
    }
    // The loop closed its end: let a release in flight finish before the WAL goes.
    if let Err(e) = wal.finish_release().await {
        fail(format!("WAL: {e}; stopping"));
    }
}

#[cfg(test)]
mod tests {
    use super::{spin_after, Done, Persister};
    use crate::wal::{self, Wal};
    use std::time::Duration;

    /// Two light syncs back to back turn the raft core's spin on; with no put after them
    /// for longer than the spin, the writer turns it off again (an idle member would
    /// otherwise poll after every wake until the next sync).
    #[test]
    fn the_spin_ends_when_no_put_follows_within_it() {
        let dir = crate::wal::tests::test_dir("persist-spin");
        let spin = Duration::from_millis(20);
        let wal_dir = dir.to_path_buf();
        let (on, off) =
            crate::runtime::executor_builder("persist-spin", glommio::Placement::Fixed(0))
                .spawn(move || async move {
                    let wal = Wal::create(&wal_dir, b"m", wal::WalOptions::default())
                        .await
                        .unwrap();
                    let mut p = Persister::start(wal, spin);
                    for index in 1..=2 {
                        let entry = wal::Entry {
                            term: 1,
                            index,
                            data: bytes::Bytes::from_static(b"put"),
                            ..wal::Entry::default()
                        };
                        p.persist(index, vec![entry], None, true);
                        match p.next().await {
                            Done::Persisted(n) => assert_eq!(n, index),
                            _ => panic!("entry {index} was not persisted"),
                        }
                    }
                    let on = glommio::executor().spin_before_park();
                    glommio::timer::sleep(spin * 3).await;
                    let off = glommio::executor().spin_before_park();
                    p.close().await;
                    (on, off)
                })
                .unwrap()
                .join()
                .unwrap();
        assert_eq!((on, off), (Some(spin), None));
    }

    #[test]
    fn only_light_syncs_that_follow_straight_on_spin() {
        let spin = Duration::from_micros(250);
        let us = Duration::from_micros;
        assert!(
            spin_after(1, Some(us(120)), spin),
            "one client, back to back"
        );
        assert!(
            spin_after(0, Some(us(250)), spin),
            "a hard state alone, at the edge"
        );
        assert!(
            !spin_after(2, Some(us(120)), spin),
            "a batch: others are queueing"
        );
        assert!(
            !spin_after(1, Some(us(251)), spin),
            "a trickle further apart than the spin"
        );
        assert!(!spin_after(1, None, spin), "the first sync");
        assert!(
            !spin_after(1, Some(us(10)), Duration::ZERO),
            "--idle-spin 0s"
        );
    }
}
