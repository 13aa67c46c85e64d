//! Failpoints: named places where the fault-injection harness makes Keel fail on purpose.
//!
//! Runs on: any core (the check functions are lock-free); armed once on the main thread at
//! boot, before any executor starts.
//!
//! Keel's disk I/O goes through io_uring, where libfiu's LD_PRELOAD cannot reach, so the
//! points are in Keel itself, and only in builds with the cargo feature `failpoints`:
//! without it every check is an inlined constant `false` and release builds carry none.
//!
//! # Arming
//! `KEEL_FAILPOINTS` is a comma list of `name=action`, read once at boot:
//!
//! - `wal-write` (`eio`, `eio@P`): a write to a WAL segment (`src/wal/`) fails before it
//!   reaches the file.
//! - `wal-fsync` (`eio`, `eio@P`): the call that makes a WAL write durable fails, after the
//!   write: the O_DSYNC write itself (the default, `WalOptions::dsync_writes`), else the
//!   fdatasync after it; also the fdatasync of a new segment's preamble.
//! - `db-fsync` (`eio`, `eio@P`): an fdatasync of the db (`mvcc::db::Db::sync`: a commit's
//!   data and meta syncs).
//! - `stale-read` (`on`): a deliberately broken Keel: linearizable Range and read-only Txn
//!   are served from the local store as if serializable, without ReadIndex
//!   (`api::services`), to prove the chaos harness catches stale reads.
//! - `skip-wal-sync` (`on`): a mutant for `keel-chaos powercut`: the WAL skips its
//!   durability step (no O_DSYNC, no fdatasync), so a power cut loses acknowledged writes
//!   and the harness must say so.
//! - `skip-db-sync` (`on`): a mutant as above: a db commit writes its meta page without
//!   the fdatasync of the data pages before it (and the raft core starts no early
//!   writeback of them, which would put most of them on the disk first anyway).
//! - `shard-churn` (`on`): not a fault but a stress: the raft core moves a shard split key
//!   a few keys one way or the other every few milliseconds, balanced or not
//!   (`raft/rebalance.rs`), so that reads, watches and writes meet rebalance steps all
//!   the time in a chaos run's small key space.
//!
//! `eio` fails every time with EIO, `eio@P` with probability `P` (0 ≤ P ≤ 1, e.g.
//! `eio@0.05`); an injected error takes the path a real one would (the WAL or db is
//! poisoned and the member stops with the error). `KEEL_FAILPOINTS_SEED` (a decimal u64)
//! seeds the draws; the default is pid ^ time. A malformed spec or seed stops the boot
//! (exit 2). Boot logs one warning listing what is armed; each firing logs a warning
//! (`failpoint wal-fsync fired: injected EIO`); `stale-read` logs its first firing and
//! then every [`STALE_READ_LOG_EVERY`]th, since it fires on every linearizable read.
//!
//! # Determinism
//! The n-th check of a point fires iff `draw(seed, point, n) < P`: a pure function of the
//! seed, the point and how often that point was checked before in this process image,
//! whatever the other points or cores do.

use std::fmt;

/// The failpoints, by where they are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    WalWrite,
    WalFsync,
    DbFsync,
    StaleRead,
    SkipWalSync,
    SkipDbSync,
    ShardChurn,
}

impl Point {
    pub const ALL: [Point; 7] = [
        Point::WalWrite,
        Point::WalFsync,
        Point::DbFsync,
        Point::StaleRead,
        Point::SkipWalSync,
        Point::SkipDbSync,
        Point::ShardChurn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Point::WalWrite => "wal-write",
            Point::WalFsync => "wal-fsync",
            Point::DbFsync => "db-fsync",
            Point::StaleRead => "stale-read",
            Point::SkipWalSync => "skip-wal-sync",
            Point::SkipDbSync => "skip-db-sync",
            Point::ShardChurn => "shard-churn",
        }
    }

    fn from_name(name: &str) -> Option<Point> {
        Point::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether the point injects an I/O error (`eio`) rather than a behaviour (`on`).
    fn is_io(self) -> bool {
        !matches!(
            self,
            Point::StaleRead | Point::SkipWalSync | Point::SkipDbSync | Point::ShardChurn
        )
    }

    fn index(self) -> usize {
        self as usize
    }

    /// What a firing does, for its log line.
    pub fn effect(self) -> &'static str {
        match self {
            Point::StaleRead => "served a linearizable read as serializable",
            Point::SkipWalSync => "skipped a WAL sync",
            Point::SkipDbSync => "skipped a db data-page sync",
            Point::ShardChurn => "moved a shard split key a few keys, balanced or not",
            _ => "injected EIO",
        }
    }
}

/// What an armed point does when it fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Fail with EIO with this probability (1.0 for a bare `eio`).
    Eio { probability: f64 },
    /// Always (a behaviour switch such as `stale-read`).
    On,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Eio { probability } if *probability == 1.0 => write!(f, "eio"),
            Action::Eio { probability } => write!(f, "eio@{probability}"),
            Action::On => write!(f, "on"),
        }
    }
}

/// A parsed `KEEL_FAILPOINTS`: at most one action per point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spec {
    pub actions: [Option<Action>; Point::ALL.len()],
}

impl Spec {
    pub fn action(&self, point: Point) -> Option<Action> {
        self.actions[point.index()]
    }

    pub fn is_empty(&self) -> bool {
        self.actions.iter().all(Option::is_none)
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for p in Point::ALL {
            if let Some(a) = self.action(p) {
                let sep = if first { "" } else { "," };
                write!(f, "{sep}{}={a}", p.name())?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Why a spec or seed does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// An item is not `name=action`.
    NotAssignment(String),
    UnknownPoint(String),
    Duplicate(&'static str),
    /// The action is malformed or not one this point takes.
    BadAction {
        point: &'static str,
        action: String,
    },
    BadSeed(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotAssignment(item) => {
                write!(f, "KEEL_FAILPOINTS: {item:?} is not name=action")
            }
            ParseError::UnknownPoint(name) => {
                let known: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
                write!(
                    f,
                    "KEEL_FAILPOINTS: unknown failpoint {name:?} (known: {})",
                    known.join(", ")
                )
            }
            ParseError::Duplicate(name) => {
                write!(f, "KEEL_FAILPOINTS: failpoint {name} is given twice")
            }
            ParseError::BadAction { point, action } => {
                let takes = match Point::from_name(point) {
                    Some(p) if !p.is_io() => "on",
                    _ => "eio or eio@P with 0 <= P <= 1",
                };
                write!(
                    f,
                    "KEEL_FAILPOINTS: bad action {action:?} for {point} (it takes {takes})"
                )
            }
            ParseError::BadSeed(s) => {
                write!(
                    f,
                    "KEEL_FAILPOINTS_SEED: {s:?} is not an unsigned 64-bit number"
                )
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses a `KEEL_FAILPOINTS` value (see the module doc). Blank items are skipped.
pub fn parse_spec(text: &str) -> Result<Spec, ParseError> {
    let mut spec = Spec::default();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((name, action)) = item.split_once('=') else {
            return Err(ParseError::NotAssignment(item.to_string()));
        };
        let (name, action) = (name.trim(), action.trim());
        let point =
            Point::from_name(name).ok_or_else(|| ParseError::UnknownPoint(name.to_string()))?;
        let parsed = parse_action(point, action).ok_or_else(|| ParseError::BadAction {
            point: point.name(),
            action: action.to_string(),
        })?;
        let slot = &mut spec.actions[point.index()];
        if slot.is_some() {
            return Err(ParseError::Duplicate(point.name()));
        }
        *slot = Some(parsed);
    }
    Ok(spec)
}

fn parse_action(point: Point, action: &str) -> Option<Action> {
    if !point.is_io() {
        return (action == "on").then_some(Action::On);
    }
    if action == "eio" {
        return Some(Action::Eio { probability: 1.0 });
    }
    let probability: f64 = action.strip_prefix("eio@")?.parse().ok()?;
    // `parse` accepts "nan" and "inf"; the range check refuses them.
    (0.0..=1.0)
        .contains(&probability)
        .then_some(Action::Eio { probability })
}

/// Parses `KEEL_FAILPOINTS_SEED`: a decimal u64.
pub fn parse_seed(text: &str) -> Result<u64, ParseError> {
    text.trim()
        .parse()
        .map_err(|_| ParseError::BadSeed(text.to_string()))
}

/// splitmix64's finaliser: a bijective mix of all 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `n`-th draw of `point` under `seed`, uniform in [0, 1).
pub fn draw(seed: u64, point: Point, n: u64) -> f64 {
    let stream = mix64(seed ^ (point.index() as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let bits = mix64(stream.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    // The top 53 bits as a fraction: every value is exact and below 1.
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the `n`-th check of `point` fires under `action` and `seed`.
pub fn fires(action: Action, seed: u64, point: Point, n: u64) -> bool {
    match action {
        Action::On => true,
        Action::Eio { probability } if probability >= 1.0 => true,
        Action::Eio { probability } => draw(seed, point, n) < probability,
    }
}

/// `stale-read` fires on every linearizable read: its firing is logged once per this many.
pub const STALE_READ_LOG_EVERY: u64 = 1000;

/// The error an `eio` failpoint injects: what the kernel returns for a failed write or
/// fdatasync.
pub fn eio() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EIO)
}

pub use armed::{arm_from_env, check_io, is_on};

#[cfg(feature = "failpoints")]
mod armed {
    use super::*;
    use crate::runtime::log;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    struct Armed {
        spec: Spec,
        seed: u64,
        /// Checks so far, per point.
        checks: [AtomicU64; Point::ALL.len()],
    }

    static ARMED: OnceLock<Armed> = OnceLock::new();

    /// Reads `KEEL_FAILPOINTS` and `KEEL_FAILPOINTS_SEED` and arms the points. Call once,
    /// at boot, before any executor starts.
    pub fn arm_from_env() -> Result<(), ParseError> {
        let Ok(text) = std::env::var("KEEL_FAILPOINTS") else {
            return Ok(());
        };
        let spec = parse_spec(&text)?;
        let seed = match std::env::var("KEEL_FAILPOINTS_SEED") {
            Ok(s) => parse_seed(&s)?,
            Err(_) => default_seed(),
        };
        if spec.is_empty() {
            return Ok(());
        }
        log::warning(
            "failpoint",
            &format!("failpoints armed: {spec} (KEEL_FAILPOINTS_SEED={seed})"),
        );
        let armed = Armed {
            spec,
            seed,
            checks: Default::default(),
        };
        assert!(ARMED.set(armed).is_ok(), "failpoints armed twice");
        Ok(())
    }

    fn default_seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        u64::from(std::process::id()) ^ nanos
    }

    /// Counts a check of `point` and says whether it fires.
    fn check(point: Point) -> Option<Action> {
        let armed = ARMED.get()?;
        let action = armed.spec.action(point)?;
        let n = armed.checks[point.index()].fetch_add(1, Ordering::Relaxed);
        fires(action, armed.seed, point, n).then_some(action)
    }

    /// EIO when the I/O failpoint `point` fires, logged.
    #[inline]
    pub fn check_io(point: Point) -> Option<std::io::Error> {
        debug_assert!(point.is_io());
        check(point)?;
        log::warning(
            "failpoint",
            &format!("failpoint {} fired: {}", point.name(), point.effect()),
        );
        Some(eio())
    }

    /// Whether the behaviour failpoint `point` is on (it fires on every check).
    #[inline]
    pub fn is_on(point: Point) -> bool {
        debug_assert!(!point.is_io());
        let Some(armed) = ARMED.get() else {
            return false;
        };
        if armed.spec.action(point).is_none() {
            return false;
        }
        let n = armed.checks[point.index()].fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(STALE_READ_LOG_EVERY) {
            log::warning(
                "failpoint",
                &format!(
                    "failpoint {} fired: {} (firing {}, logged every {STALE_READ_LOG_EVERY})",
                    point.name(),
                    point.effect(),
                    n + 1,
                ),
            );
        }
        true
    }
}

#[cfg(not(feature = "failpoints"))]
mod armed {
    use super::*;
    use crate::runtime::log;

    /// Built without the `failpoints` feature: a set `KEEL_FAILPOINTS` is ignored, with a
    /// warning.
    pub fn arm_from_env() -> Result<(), ParseError> {
        if let Some(text) = std::env::var_os("KEEL_FAILPOINTS").filter(|t| !t.is_empty()) {
            log::warning(
                "failpoint",
                &format!(
                    "KEEL_FAILPOINTS={} ignored: keel was built without the failpoints \
                     feature",
                    text.to_string_lossy()
                ),
            );
        }
        Ok(())
    }

    #[inline(always)]
    pub fn check_io(_point: Point) -> Option<std::io::Error> {
        None
    }

    #[inline(always)]
    pub fn is_on(_point: Point) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eio_at(probability: f64) -> Option<Action> {
        Some(Action::Eio { probability })
    }

    #[test]
    fn valid_specs_parse() {
        let s =
            parse_spec("wal-fsync=eio@0.05, db-fsync=eio ,stale-read=on,wal-write=eio@1").unwrap();
        assert_eq!(s.action(Point::WalFsync), eio_at(0.05));
        assert_eq!(s.action(Point::DbFsync), eio_at(1.0));
        assert_eq!(s.action(Point::StaleRead), Some(Action::On));
        assert_eq!(s.action(Point::WalWrite), eio_at(1.0));
        assert_eq!(
            s.to_string(),
            "wal-write=eio,wal-fsync=eio@0.05,db-fsync=eio,stale-read=on"
        );
        assert!(parse_spec("").unwrap().is_empty());
        assert!(parse_spec(" , ").unwrap().is_empty());
        let one = parse_spec("db-fsync=eio@0").unwrap();
        assert_eq!(one.action(Point::DbFsync), eio_at(0.0));
        assert_eq!(one.action(Point::WalFsync), None);
        assert_eq!(
            parse_spec(&one.to_string()).unwrap(),
            one,
            "Display round-trips"
        );
    }

    #[test]
    fn invalid_specs_are_refused_with_the_reason() {
        let bad = |text: &str| parse_spec(text).expect_err(text);
        assert_eq!(
            bad("wal-fsync"),
            ParseError::NotAssignment("wal-fsync".into())
        );
        assert_eq!(
            bad("wal-sync=eio"),
            ParseError::UnknownPoint("wal-sync".into())
        );
        assert_eq!(
            bad("db-fsync=eio,db-fsync=eio@0.5"),
            ParseError::Duplicate("db-fsync")
        );
        for (text, point, action) in [
            ("wal-fsync=on", "wal-fsync", "on"),
            ("wal-fsync=EIO", "wal-fsync", "EIO"),
            ("wal-fsync=eio@", "wal-fsync", "eio@"),
            ("wal-fsync=eio@x", "wal-fsync", "eio@x"),
            ("wal-write=eio@0.5x", "wal-write", "eio@0.5x"),
            ("stale-read=eio", "stale-read", "eio"),
            ("stale-read=", "stale-read", ""),
        ] {
            let point = Point::from_name(point).unwrap().name();
            let want = ParseError::BadAction {
                point,
                action: action.into(),
            };
            assert_eq!(bad(text), want, "{text}");
        }
        let msg = bad("stale-read=eio").to_string();
        assert!(msg.contains("it takes on"), "{msg}");
        let msg = bad("nope=eio").to_string();
        assert!(
            msg.contains("wal-write, wal-fsync, db-fsync, stale-read"),
            "{msg}"
        );
    }

    #[test]
    fn probabilities_outside_zero_to_one_are_refused() {
        for p in ["-0.1", "1.5", "2", "nan", "NaN", "inf", "-inf", "1e9"] {
            let text = format!("db-fsync=eio@{p}");
            assert!(
                matches!(parse_spec(&text), Err(ParseError::BadAction { .. })),
                "{text}"
            );
        }
        for (p, want) in [
            ("0", 0.0),
            ("1", 1.0),
            ("0.5", 0.5),
            ("1e-3", 0.001),
            (".25", 0.25),
        ] {
            let spec = parse_spec(&format!("db-fsync=eio@{p}")).unwrap();
            assert_eq!(spec.action(Point::DbFsync), eio_at(want), "{p}");
        }
    }

    #[test]
    fn seeds_parse_as_u64() {
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed(" 18446744073709551615 "), Ok(u64::MAX));
        for bad in ["", "-1", "0x10", "18446744073709551616", "seed"] {
            assert_eq!(
                parse_seed(bad),
                Err(ParseError::BadSeed(bad.into())),
                "{bad}"
            );
        }
    }

    /// The first `count` fire decisions of `point`.
    fn decisions(action: Action, seed: u64, point: Point, count: u64) -> Vec<bool> {
        (0..count).map(|n| fires(action, seed, point, n)).collect()
    }

    #[test]
    fn fire_decisions_are_a_function_of_the_seed() {
        let half = Action::Eio { probability: 0.5 };
        let a = decisions(half, 7, Point::WalFsync, 1000);
        assert_eq!(
            a,
            decisions(half, 7, Point::WalFsync, 1000),
            "same seed, same run"
        );
        assert_ne!(
            a,
            decisions(half, 8, Point::WalFsync, 1000),
            "another seed differs"
        );
        assert_ne!(
            a,
            decisions(half, 7, Point::DbFsync, 1000),
            "each point its own stream"
        );
        let fired = a.iter().filter(|f| **f).count();
        assert!((400..=600).contains(&fired), "about half fire: {fired}");
        // A higher probability fires on a superset of the draws.
        let more = decisions(Action::Eio { probability: 0.8 }, 7, Point::WalFsync, 1000);
        assert!(a.iter().zip(&more).all(|(lo, hi)| !lo || *hi));
    }

    #[test]
    fn probability_bounds_fire_never_and_always() {
        for seed in [0, 1, u64::MAX] {
            let never = decisions(Action::Eio { probability: 0.0 }, seed, Point::DbFsync, 500);
            assert!(never.iter().all(|f| !f));
            let always = decisions(Action::Eio { probability: 1.0 }, seed, Point::DbFsync, 500);
            assert!(always.iter().all(|f| *f));
            assert!(decisions(Action::On, seed, Point::StaleRead, 10)
                .iter()
                .all(|f| *f));
        }
        let small = decisions(
            Action::Eio { probability: 0.05 },
            99,
            Point::WalWrite,
            10_000,
        );
        let fired = small.iter().filter(|f| **f).count();
        assert!((350..=650).contains(&fired), "about 5% fire: {fired}");
    }

    #[test]
    fn draws_are_in_zero_to_one() {
        for n in 0..10_000 {
            let d = draw(12345, Point::WalWrite, n);
            assert!((0.0..1.0).contains(&d), "{d}");
        }
    }

    /// Unit tests never arm (only `main` does): with or without the feature, nothing fires.
    #[test]
    fn unarmed_points_never_fire() {
        for p in Point::ALL {
            if p.is_io() {
                assert!(check_io(p).is_none());
            } else {
                assert!(!is_on(p));
            }
        }
    }

    #[test]
    fn injected_errors_are_eio() {
        let e = eio();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(e.to_string().starts_with("Input/output error"), "{e}");
    }
}
