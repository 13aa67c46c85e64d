//! Linearizability checking of a recorded history against a register per key.
//!
//! A register's operations on one key never constrain another key's, so the history is
//! split by key and every key is checked alone (P-compositionality), in parallel; a key
//! starts absent (null). Per key:
//! 1. operations are prepared ([`key_ops`]): `fail`s and reads of unknown outcome are
//!    dropped (no effect), values interned; a write or cas of unknown outcome whose new
//!    value nothing observes is dropped too (it can always be linearized at the end), and
//!    the values nothing observes become one;
//! 2. [`search`] decides (Wing & Gong / Lowe, memoised), within `states_max` configurations;
//! 3. for a violation, [`window`] shrinks the history to a short run of operations that
//!    is not linearizable by itself, and explains it.
//!
//! Histories check fastest when each key's written values are unique (a counter): a read
//! then names the one write it saw, and a wrong order of writes is refused at its first
//! step. Values drawn from a handful, with tens of clients on one key, can exhaust the
//! search budget (see [`STATES_MAX_DEFAULT`]); such a key is reported unknown.
//!
//! Invariants: a [`Report`] has one [`KeyResult`] per key of the history, in key order;
//! `Linearizable` is only reported by a finished search, never by a budget-cut one.

mod search;
mod window;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::history::{self, Event, Kind, ParseError, F};
use search::{search, SearchOutcome};

/// Configurations one key's search may visit before the key is reported unknown. A
/// configuration costs up to about 170 bytes, so this bounds a search to about 350 MB and
/// a few seconds. Generated histories of 100k operations (one hot key with up to 50
/// clients, or 20 keys) need at most about one configuration per operation; what exceeds
/// it is many clients on one key writing values from a handful (20 clients writing 0..5
/// on one key: about 20 per operation; 30 clients: about 200).
pub const STATES_MAX_DEFAULT: u64 = 2_000_000;

/// A register value interned per key: `NULL` is the absent key, `WILDCARD` an unknown
/// value (only as the initial state of a window).
type ValueId = u32;
const NULL: ValueId = 0;
const WILDCARD: ValueId = u32::MAX;

/// What an operation does to the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    /// Read this value.
    Read(ValueId),
    Write(ValueId),
    /// Compare with the first, then write the second.
    Cas(ValueId, ValueId),
}

/// One operation of a key, as the search sees it.
#[derive(Clone, Copy, Debug)]
struct KeyOp {
    call_ns: i64,
    /// `i64::MAX` when unknown.
    return_ns: i64,
    step: Step,
    /// `step` before [`merge_unread`], for explanations.
    recorded: Step,
    /// Completed `ok`; false: outcome unknown (`info` or never completed).
    known: bool,
    invoke_index: usize,
    completion_index: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Per key: configurations visited before giving up (see [`STATES_MAX_DEFAULT`]).
    pub states_max: u64,
    /// Keys checked at once.
    pub threads_max: usize,
}

impl Default for Config {
    fn default() -> Config {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            states_max: STATES_MAX_DEFAULT,
            threads_max: threads,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyResult {
    pub key: String,
    /// Operations on this key in the history (every invoke, whatever its completion).
    pub ops: usize,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Linearizable,
    /// `window`: the invokes and completions, in time order, of a short run of operations
    /// that is not linearizable by itself (from any initial value, or from absent when it
    /// starts the key's history).
    NotLinearizable {
        window: Vec<Event>,
        explanation: String,
    },
    /// Undecided, and why.
    Unknown(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Operations in the history (every invoke, whatever its completion), all keys.
    pub ops: usize,
    pub keys: Vec<KeyResult>,
}

impl Report {
    /// Every key was decided linearizable.
    pub fn linearizable(&self) -> bool {
        self.keys.iter().all(|k| k.outcome == Outcome::Linearizable)
    }

    /// Keys found not linearizable.
    pub fn violations(&self) -> impl Iterator<Item = &KeyResult> {
        self.keys
            .iter()
            .filter(|k| matches!(k.outcome, Outcome::NotLinearizable { .. }))
    }

    /// Keys the search could not decide.
    pub fn unknown(&self) -> impl Iterator<Item = &KeyResult> {
        self.keys
            .iter()
            .filter(|k| matches!(k.outcome, Outcome::Unknown(_)))
    }

    /// `ops=N keys=K linearizable=yes|no`, then ` unknown=U` if some key is undecided.
    pub fn summary(&self) -> String {
        let yes_no = if self.linearizable() { "yes" } else { "no" };
        let mut line = format!(
            "ops={} keys={} linearizable={yes_no}",
            self.ops,
            self.keys.len()
        );
        let unknown = self.unknown().count();
        if unknown > 0 {
            line += &format!(" unknown={unknown}");
        }
        line
    }
}

impl fmt::Display for KeyResult {
    /// A headline, then for a violation its window (one event a line) and explanation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Linearizable => {
                writeln!(f, "key {}: linearizable ({} ops)", self.key, self.ops)
            }
            Outcome::Unknown(why) => {
                writeln!(f, "key {}: unknown ({} ops): {why}", self.key, self.ops)
            }
            Outcome::NotLinearizable {
                window,
                explanation,
            } => {
                writeln!(
                    f,
                    "key {}: NOT linearizable ({} ops); window:",
                    self.key, self.ops
                )?;
                for event in window {
                    writeln!(f, "  {}", event_line(event))?;
                }
                writeln!(f, "  explanation: {explanation}")
            }
        }
    }
}

/// `t=1200 p=3 invoke write k7 41`
pub fn event_line(event: &Event) -> String {
    format!(
        "t={} p={} {} {} {} {}",
        event.time_ns,
        event.process,
        event.kind.as_str(),
        event.f.as_str(),
        event.key,
        event.value
    )
}

/// Checks `events` with the default [`Config`]. Err: the history is not well formed (see
/// [`history::pair`]; the error's line is the event's 1-based position).
pub fn check(events: &[Event]) -> Result<Report, ParseError> {
    check_with(events, &Config::default())
}

pub fn check_with(events: &[Event], config: &Config) -> Result<Report, ParseError> {
    let ops = history::pair(events)?;
    let mut by_key: BTreeMap<&str, Vec<history::Op>> = BTreeMap::new();
    for op in &ops {
        by_key
            .entry(events[op.invoke_index].key.as_str())
            .or_default()
            .push(*op);
    }
    let keys: Vec<(&str, Vec<history::Op>)> = by_key.into_iter().collect();
    let next = AtomicUsize::new(0);
    let threads = config.threads_max.clamp(1, keys.len().max(1));
    let mut results: Vec<(usize, KeyResult)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some((key, key_ops)) = keys.get(index) else {
                            break;
                        };
                        done.push((index, check_key(events, key, key_ops, config)));
                    }
                    done
                })
            })
            .collect();
        let join = |worker: std::thread::ScopedJoinHandle<'_, Vec<(usize, KeyResult)>>| {
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        };
        workers.into_iter().flat_map(join).collect()
    });
    results.sort_by_key(|(index, _)| *index);
    assert_eq!(results.len(), keys.len());
    let keys = results.into_iter().map(|(_, result)| result).collect();
    Ok(Report {
        ops: ops.len(),
        keys,
    })
}

fn check_key(events: &[Event], key: &str, ops: &[history::Op], config: &Config) -> KeyResult {
    let (key_ops, values) = key_ops(events, ops);
    let outcome = match search(&key_ops, NULL, config.states_max) {
        SearchOutcome::Linearizable { .. } => Outcome::Linearizable,
        SearchOutcome::Exhausted { states } => Outcome::Unknown(format!(
            "search budget exhausted after {states} configurations ({} operations searched)",
            key_ops.len()
        )),
        SearchOutcome::NotLinearizable {
            blocked, states, ..
        } => {
            let context = window::Context {
                key,
                events,
                ops: &key_ops,
                values: &values,
            };
            let (window, explanation) =
                window::shrink(&context, blocked, states, config.states_max);
            Outcome::NotLinearizable {
                window,
                explanation,
            }
        }
    };
    KeyResult {
        key: key.to_string(),
        ops: ops.len(),
        outcome,
    }
}

/// Values of one key, interned: id → value, `NULL` (id 0) being JSON null.
struct Interner {
    ids: HashMap<String, ValueId>,
    values: Vec<Value>,
}

impl Interner {
    fn new() -> Interner {
        Interner {
            ids: HashMap::new(),
            values: vec![Value::Null],
        }
    }

    /// Values are equal when their JSON texts are (objects' keys are sorted).
    fn intern(&mut self, value: &Value) -> ValueId {
        if value.is_null() {
            return NULL;
        }
        let next = self.values.len() as ValueId;
        assert!(next < WILDCARD);
        let id = *self.ids.entry(value.to_string()).or_insert(next);
        if id == next {
            self.values.push(value.clone());
        }
        id
    }
}

/// The searchable operations of one key (sorted by call time), and its values.
fn key_ops(events: &[Event], ops: &[history::Op]) -> (Vec<KeyOp>, Values) {
    let mut interner = Interner::new();
    let mut key_ops = Vec::with_capacity(ops.len());
    for op in ops {
        let invoke = &events[op.invoke_index];
        let completion = op.completion_index.map(|index| &events[index]);
        let kind = completion.map_or(Kind::Info, |c| c.kind);
        let step = match (invoke.f, kind) {
            (_, Kind::Fail) | (F::Read, Kind::Info) => continue,
            (_, Kind::Invoke) => unreachable!("pair() only pairs an invoke with a completion"),
            (F::Read, _) => {
                let Some(completion) = completion else {
                    continue;
                };
                Step::Read(interner.intern(&completion.value))
            }
            (F::Write, _) => Step::Write(interner.intern(&invoke.value)),
            (F::Cas, _) => {
                let Some((expected, new)) = invoke.cas_pair() else {
                    unreachable!("pair() checks cas values")
                };
                Step::Cas(interner.intern(expected), interner.intern(new))
            }
        };
        let known = kind == Kind::Ok;
        key_ops.push(KeyOp {
            call_ns: invoke.time_ns,
            return_ns: if known {
                completion.map_or(i64::MAX, |c| c.time_ns)
            } else {
                i64::MAX
            },
            step,
            recorded: step,
            known,
            invoke_index: op.invoke_index,
            completion_index: op.completion_index,
        });
    }
    let keep = unknown_observed(&key_ops);
    let mut index = 0;
    key_ops.retain(|_| {
        index += 1;
        keep[index - 1]
    });
    key_ops.sort_by_key(|op| (op.call_ns, op.invoke_index));
    let unread = merge_unread(&mut key_ops, interner.values.len());
    let mut by_id = interner.values;
    by_id.push(Value::Null);
    (key_ops, Values { by_id, unread })
}

/// Makes every value written but never read, nor expected by a cas, the one value
/// `unread` (returned: a new id after the `value_count` interned ones). No op tells such
/// values apart, and merged they let the memo merge orders of the writes of them.
fn merge_unread(ops: &mut [KeyOp], value_count: usize) -> ValueId {
    let unread = value_count as ValueId;
    assert!(unread < WILDCARD);
    let mut observed = vec![false; value_count];
    for op in ops.iter() {
        if let Step::Read(value) | Step::Cas(value, _) = op.step {
            observed[value as usize] = true;
        }
    }
    for op in ops.iter_mut() {
        match &mut op.step {
            Step::Write(value) | Step::Cas(_, value) if !observed[*value as usize] => {
                *value = unread;
            }
            _ => {}
        }
    }
    unread
}

/// One key's register values by id.
struct Values {
    by_id: Vec<Value>,
    /// Stands for every value no op reads or expects (see [`merge_unread`]).
    unread: ValueId,
}

/// Which ops to keep: all completed ones, and the unknown ones whose new value may be
/// observed (read by a completed read, expected by a completed cas, or expected by a kept
/// unknown cas). Dropping an unknown cas may leave its expected value unobserved, so this
/// runs to a fixpoint.
fn unknown_observed(ops: &[KeyOp]) -> Vec<bool> {
    let mut observers: HashMap<ValueId, usize> = HashMap::new();
    let mut writers: HashMap<ValueId, Vec<usize>> = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        match (op.step, op.known) {
            (Step::Read(value), _) | (Step::Cas(value, _), true) => {
                *observers.entry(value).or_default() += 1;
            }
            (Step::Cas(expected, new), false) => {
                *observers.entry(expected).or_default() += 1;
                writers.entry(new).or_default().push(index);
            }
            (Step::Write(new), false) => writers.entry(new).or_default().push(index),
            (Step::Write(_), true) => {}
        }
    }
    let mut keep = vec![true; ops.len()];
    let mut unobserved: Vec<ValueId> = writers
        .keys()
        .copied()
        .filter(|v| !observers.contains_key(v))
        .collect();
    while let Some(value) = unobserved.pop() {
        for &index in writers.get(&value).map_or(&[][..], Vec::as_slice) {
            if !keep[index] {
                continue;
            }
            keep[index] = false;
            if let Step::Cas(expected, _) = ops[index].step {
                let count = observers.get_mut(&expected).expect("counted above");
                *count -= 1;
                if *count == 0 {
                    observers.remove(&expected);
                    unobserved.push(expected);
                }
            }
        }
    }
    keep
}

const USAGE: &str = "usage: keel-chaos check [--states-max N] HISTORY.jsonl";

/// `keel-chaos check [--states-max N] HISTORY.jsonl`: prints each violation (its window
/// and explanation), each undecided key, then the summary line. Exit 0 linearizable,
/// 1 not (or undecided), 2 bad arguments or input.
pub fn command(args: &[String]) -> i32 {
    let mut config = Config::default();
    let path = match args {
        [path] => path,
        [flag, n, path] if flag == "--states-max" => match n.parse() {
            Ok(n) => {
                config.states_max = n;
                path
            }
            Err(e) => {
                eprintln!("keel-chaos check: --states-max {n}: {e}\n{USAGE}");
                return 2;
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return 2;
        }
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("keel-chaos check: {path}: {e}");
            return 2;
        }
    };
    let report = match history::parse(&text).and_then(|events| check_with(&events, &config)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("keel-chaos check: {path}: {e}");
            return 2;
        }
    };
    for key in report.violations().chain(report.unknown()) {
        print!("{key}");
    }
    let unknown = report.unknown().count();
    if unknown > 0 {
        println!(
            "{unknown} key(s) undecided: the search budget ran out (try a larger --states-max)"
        );
    }
    println!("{}", report.summary());
    if report.linearizable() {
        0
    } else {
        1
    }
}
