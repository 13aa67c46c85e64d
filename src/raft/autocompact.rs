//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), scheduled as
//! etcd 3.4's v3compactor schedules it, and proposed through raft as the same Compaction
//! entry a client's `etcdctl compact` proposes.
//!
//! Runs on: the raft core, one step per loop turn (`RaftCore::auto_compact`); its
//! deadline joins the loop's wait like the tick's. The schedulers are pure: they see only
//! the time and the current revision they are given, so the unit tests drive them with a
//! fake clock.
//!
//! - periodic (retention `r`, a duration): the current revision is sampled every
//!   `min(r, 1h) / 10`, keeping the last `r / that + 1` samples; once `r` has passed since
//!   the start (then `min(r, 1h)` since the last compaction), the oldest sample (the
//!   revision of about `r` ago) is compacted to.
//! - revision (retention `n`): every 5 minutes, compact to `current - n` if that is
//!   positive and moved since the last compaction.
//!
//! Invariants: only the leader compacts (a member that is not the leader is paused; a
//! periodic scheduler keeps sampling while paused, as etcd's does, so a new leader
//! compacts to what was current one retention ago); a compaction to a revision at or
//! below the store's compact revision is skipped, as etcd ignores ErrCompacted.

use super::*;
use crate::config::AutoCompaction;

/// etcd's periodic compactor samples `RETRY_DIVISOR` times per compaction interval.
const RETRY_DIVISOR: u32 = 10;
/// The periodic compactor compacts at most this far apart once it started.
const PERIODIC_COMPACT_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// The revision compactor's period (etcd's `revInterval`).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(300);
/// The shortest sampling interval (etcd would divide by zero below 10 ns).
const RETRY_INTERVAL_MIN: Duration = Duration::from_millis(1);

/// etcd's Periodic compactor, without its goroutine: `on_tick` is its loop body.
#[derive(Debug)]
pub struct Periodic {
    period: Duration,
    compact_interval: Duration,
    retry_interval: Duration,
    /// Samples kept: `revs[0]` is the revision of one period ago.
    samples_max: usize,
    revs: VecDeque<i64>,
    /// Wait this long since the last success (the period first, then the interval).
    base_interval: Duration,
    last_success: Option<Instant>,
    /// `last_success` before the compaction just handed out (restored if it fails).
    last_success_before: Option<Instant>,
    next_due: Option<Instant>,
    paused: bool,
}

impl Periodic {
    pub fn new(period: Duration) -> Periodic {
        assert!(
            !period.is_zero(),
            "a zero retention disables auto-compaction"
        );
        let compact_interval = period.min(PERIODIC_COMPACT_INTERVAL_MAX);
        let retry_interval = (compact_interval / RETRY_DIVISOR).max(RETRY_INTERVAL_MIN);
        let samples_max = (period.as_nanos() / retry_interval.as_nanos()) as usize + 1;
        Periodic {
            period,
            compact_interval,
            retry_interval,
            samples_max,
            revs: VecDeque::with_capacity(samples_max.min(1024)),
            base_interval: period,
            last_success: None,
            last_success_before: None,
            next_due: None,
            paused: false,
        }
    }

    /// The revision to compact to now, if any; `now` must not go back.
    pub fn on_tick(&mut self, now: Instant, current_revision: i64) -> Option<i64> {
        let Some(due) = self.next_due else {
            // The start: the first sample, and the period counts from here.
            self.last_success = Some(now);
            self.sample(now, current_revision);
            return None;
        };
        if now < due {
            return None;
        }
        let last_success = self.last_success.expect("set at the first tick");
        let mut compact_to = None;
        if !self.paused && now.duration_since(last_success) >= self.base_interval {
            self.base_interval = self.compact_interval;
            compact_to = self.revs.front().copied();
            self.last_success_before = Some(last_success);
            self.last_success = Some(now);
        }
        self.sample(now, current_revision);
        compact_to
    }

    /// Takes a sample and waits one retry interval for the next step.
    fn sample(&mut self, now: Instant, current_revision: i64) {
        self.revs.push_back(current_revision);
        while self.revs.len() > self.samples_max {
            self.revs.pop_front();
        }
        self.next_due = Some(now + self.retry_interval);
    }

    /// The compaction handed out last could not be proposed: retry at the next step.
    pub fn failed(&mut self) {
        if let Some(t) = self.last_success_before.take() {
            self.last_success = Some(t);
        }
    }
}

/// etcd's Revision compactor, without its goroutine.
#[derive(Debug)]
pub struct Revisions {
    retention: i64,
    /// The revision last compacted to (`prev` in etcd).
    prev: i64,
    prev_before: i64,
    next_due: Option<Instant>,
    paused: bool,
}

impl Revisions {
    pub fn new(retention: i64) -> Revisions {
        assert!(retention > 0, "a zero retention disables auto-compaction");
        Revisions {
            retention,
            prev: 0,
            prev_before: 0,
            next_due: None,
            paused: false,
        }
    }

    pub fn on_tick(&mut self, now: Instant, current_revision: i64) -> Option<i64> {
        let Some(due) = self.next_due else {
            self.next_due = Some(now + REVISION_INTERVAL);
            return None;
        };
        if now < due {
            return None;
        }
        self.next_due = Some(now + REVISION_INTERVAL);
        if self.paused {
            return None;
        }
        let rev = current_revision.saturating_sub(self.retention);
        if rev <= 0 || rev == self.prev {
            return None;
        }
        self.prev_before = self.prev;
        self.prev = rev;
        Some(rev)
    }

    pub fn failed(&mut self) {
        self.prev = self.prev_before;
    }
}

/// The member's auto-compactor.
#[derive(Debug)]
pub enum Compactor {
    Periodic(Periodic),
    Revision(Revisions),
}

impl Compactor {
    /// `None` when the retention disables auto-compaction.
    pub fn new(config: AutoCompaction) -> Option<Compactor> {
        match config {
            AutoCompaction::Periodic(d) if d.is_zero() => None,
            AutoCompaction::Periodic(d) => Some(Compactor::Periodic(Periodic::new(d))),
            AutoCompaction::Revision(n) if n <= 0 => None,
            AutoCompaction::Revision(n) => Some(Compactor::Revision(Revisions::new(n))),
        }
    }

    pub fn on_tick(&mut self, now: Instant, current_revision: i64) -> Option<i64> {
        match self {
            Compactor::Periodic(p) => p.on_tick(now, current_revision),
            Compactor::Revision(r) => r.on_tick(now, current_revision),
        }
    }

    /// When the loop must run again for the next step (`None`: at the next turn).
    pub fn due(&self) -> Option<Instant> {
        match self {
            Compactor::Periodic(p) => p.next_due,
            Compactor::Revision(r) => r.next_due,
        }
    }

    /// Stops compacting (this member is not the leader); returns whether it ran.
    pub fn pause(&mut self) -> bool {
        let paused = match self {
            Compactor::Periodic(p) => &mut p.paused,
            Compactor::Revision(r) => &mut r.paused,
        };
        !std::mem::replace(paused, true)
    }

    /// Compacts again (this member leads); returns whether it was paused.
    pub fn resume(&mut self) -> bool {
        let paused = match self {
            Compactor::Periodic(p) => &mut p.paused,
            Compactor::Revision(r) => &mut r.paused,
        };
        std::mem::replace(paused, false)
    }

    pub fn failed(&mut self) {
        match self {
            Compactor::Periodic(p) => p.failed(),
            Compactor::Revision(r) => r.failed(),
        }
    }

    /// The retention as etcd's log lines print it.
    pub fn retention(&self) -> String {
        match self {
            Compactor::Periodic(p) => go_duration_string(p.period),
            Compactor::Revision(r) => format!("{} revisions", r.retention),
        }
    }
}

/// The raft core's auto-compaction state.
#[derive(Debug)]
pub(super) struct AutoCompactDuty {
    pub(super) compactor: Compactor,
    /// The revision of the compaction proposed and not yet seen applied.
    pub(super) pending: Option<i64>,
}

impl AutoCompactDuty {
    pub(super) fn new(config: Option<AutoCompaction>) -> Option<AutoCompactDuty> {
        Some(AutoCompactDuty {
            compactor: Compactor::new(config?)?,
            pending: None,
        })
    }
}

impl RaftCore {
    /// When the auto-compactor's next step is due (`None`: off, or at the next turn).
    pub(super) fn auto_compact_due(&self) -> Option<Instant> {
        self.auto_compact.as_ref()?.compactor.due()
    }

    /// One step of the auto-compactor: pause or resume it with the lead, and propose the
    /// compaction it asks for (a revision already compacted is skipped).
    pub(super) fn auto_compact(&mut self, now: Instant) {
        let leader = self.node.raft.state == StateRole::Leader;
        let current = self.store.current_revision();
        let compacted = self.store.compact_revision();
        let Some(duty) = self.auto_compact.as_mut() else {
            return;
        };
        if let Some(rev) = duty.pending {
            if compacted >= rev {
                duty.pending = None;
                crate::runtime::log::notice(
                    "compactor",
                    &format!("Finished auto-compaction at revision {rev}"),
                );
            }
        }
        if leader {
            duty.compactor.resume();
        } else if duty.compactor.pause() {
            // A proposal of the old term may never apply; nobody waits for it.
            duty.pending = None;
        }
        let Some(rev) = duty.compactor.on_tick(now, current) else {
            return;
        };
        if rev <= compacted {
            return; // etcd's ErrCompacted: counts as done
        }
        crate::runtime::log::notice(
            "compactor",
            &format!(
                "Starting auto-compaction at revision {rev} (retention: {})",
                duty.compactor.retention()
            ),
        );
        let op = Op::Compaction(mvcc::CompactionRequest {
            revision: rev,
            physical: false,
        });
        let data = entry::encode_raft_request(&op);
        // No context: nobody waits for the reply; the loop sees the compact revision move.
        match self.node.propose(Vec::new(), data.to_vec()) {
            Ok(()) => duty.pending = Some(rev),
            Err(e) => {
                duty.compactor.failed();
                crate::runtime::log::notice(
                    "compactor",
                    &format!("Failed auto-compaction at revision {rev} ({e})"),
                );
            }
        }
    }
}

/// Go's `time.Duration.String()`: `1h30m0s`, `2s`, `1.5s`, `300ms`.
pub fn go_duration_string(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let trim = |whole: u128, frac: u128, digits: usize| -> String {
        let frac = format!("{frac:0digits$}");
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{frac}")
        }
    };
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim(nanos / 1_000, nanos % 1_000, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim(nanos / 1_000_000, nanos % 1_000_000, 6));
    }
    let secs = nanos / 1_000_000_000;
    let seconds = trim(secs % 60, nanos % 1_000_000_000, 9);
    let (hours, minutes) = (secs / 3600, secs / 60 % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Drives `c` from `start` in `step`s for `total`, the revision growing by one per
    /// step; returns (time since start, revision compacted to) for each compaction.
    fn drive(
        c: &mut Compactor,
        start: Instant,
        step: Duration,
        total: Duration,
    ) -> Vec<(Duration, i64)> {
        let mut out = Vec::new();
        let mut t = Duration::ZERO;
        let mut rev = 1;
        while t <= total {
            if let Some(r) = c.on_tick(start + t, rev) {
                out.push((t, r));
            }
            t += step;
            rev += 1;
        }
        out
    }

    #[test]
    fn periodic_compacts_first_after_one_retention_to_the_revision_of_then() {
        let start = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Periodic(10 * S)).unwrap();
        // Revision r at second r - 1: steps of 1 s, retry interval 1 s.
        let got = drive(&mut c, start, S, 35 * S);
        // First after 10 s with the sample of t=0; then every 10 s with the sample of
        // 11 samples back (the window holds 10/1 + 1).
        assert_eq!(got, vec![(10 * S, 1), (20 * S, 10), (30 * S, 20)]);
    }

    #[test]
    fn periodic_over_an_hour_compacts_hourly_keeping_the_whole_retention() {
        let start = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Periodic(3 * 3600 * S)).unwrap();
        // Retry interval: 6 minutes; samples kept: 3h / 6m + 1 = 31.
        let step = 360 * S;
        let got = drive(&mut c, start, step, 5 * 3600 * S);
        // The first after 3 h (the sample of t=0, revision 1), then every hour, each to
        // the revision sampled 30 steps (3 h) before the last sample.
        assert_eq!(
            got,
            vec![(3 * 3600 * S, 1), (4 * 3600 * S, 10), (5 * 3600 * S, 20)]
        );
    }

    #[test]
    fn periodic_waits_for_its_due_time_between_ticks() {
        let start = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Periodic(2 * S)).unwrap();
        assert_eq!(c.on_tick(start, 5), None);
        assert_eq!(c.due(), Some(start + Duration::from_millis(200)));
        // Ticks between due times change nothing.
        assert_eq!(c.on_tick(start + Duration::from_millis(100), 6), None);
        assert_eq!(c.due(), Some(start + Duration::from_millis(200)));
        let got = drive(&mut c, start + Duration::from_millis(200), S / 10, 2 * S);
        assert_eq!(got[0], (Duration::from_millis(1800), 5));
    }

    #[test]
    fn periodic_paused_keeps_sampling_and_compacts_when_resumed() {
        let start = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Periodic(10 * S)).unwrap();
        assert!(c.pause());
        assert!(!c.pause(), "already paused");
        let got = drive(&mut c, start, S, 30 * S);
        assert!(got.is_empty(), "a paused compactor compacted: {got:?}");
        assert!(c.resume());
        // Resumed: the next step compacts (more than a retention since the start) to the
        // revision of one retention ago, sampled while paused.
        assert_eq!(c.on_tick(start + 31 * S, 32), Some(21));
        assert_eq!(c.on_tick(start + 32 * S, 33), None);
    }

    #[test]
    fn periodic_retries_after_a_failed_proposal() {
        let start = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Periodic(10 * S)).unwrap();
        let got = drive(&mut c, start, S, 10 * S);
        assert_eq!(got, vec![(10 * S, 1)]);
        c.failed();
        // The window has not slid yet: the same oldest sample.
        assert_eq!(c.on_tick(start + 11 * S, 12), Some(1));
        assert_eq!(c.on_tick(start + 12 * S, 13), None);
    }

    #[test]
    fn revision_compacts_every_five_minutes_to_current_minus_retention_if_moved() {
        let start = Instant::now();
        let mut c = Compactor::new(AutoCompaction::Revision(100)).unwrap();
        assert_eq!(c.on_tick(start, 50), None);
        assert_eq!(c.due(), Some(start + REVISION_INTERVAL));
        assert_eq!(c.on_tick(start + 299 * S, 1000), None, "not due yet");
        // Due: 50 - 100 <= 0, nothing.
        assert_eq!(c.on_tick(start + REVISION_INTERVAL, 80), None);
        let t = start + 2 * REVISION_INTERVAL;
        assert_eq!(c.on_tick(t, 1000), Some(900));
        // Not moved: skipped.
        let t = t + REVISION_INTERVAL;
        assert_eq!(c.on_tick(t, 1000), None);
        let t = t + REVISION_INTERVAL;
        assert_eq!(c.on_tick(t, 1500), Some(1400));
        // Paused: nothing, and the period goes on.
        assert!(c.pause());
        let t = t + REVISION_INTERVAL;
        assert_eq!(c.on_tick(t, 2000), None);
        assert!(c.resume());
        let t = t + REVISION_INTERVAL;
        assert_eq!(c.on_tick(t, 2000), Some(1900));
        // A failed proposal is tried again at the next period even if nothing moved.
        c.failed();
        let t = t + REVISION_INTERVAL;
        assert_eq!(c.on_tick(t, 2000), Some(1900));
    }

    #[test]
    fn zero_retention_disables() {
        assert!(Compactor::new(AutoCompaction::Periodic(Duration::ZERO)).is_none());
        assert!(Compactor::new(AutoCompaction::Revision(0)).is_none());
    }

    #[test]
    fn durations_print_as_go_does() {
        for (d, s) in [
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_secs(600), "10m0s"),
            (Duration::from_nanos(5), "5ns"),
        ] {
            assert_eq!(go_duration_string(d), s);
        }
    }
}
