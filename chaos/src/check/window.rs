//! The evidence for a key that is not linearizable: a short run of its operations that is
//! not linearizable by itself, and a sentence saying why.
//!
//! The run is a contiguous range of the key's operations in call order. It ends at the
//! last operation called before the op the full search got stuck at (`blocked`) returned
//! (nothing called later can come before that op), then its start moves forward and its
//! end back, by binary search, while its own search still gets stuck at `blocked`. A run
//! that starts the key's history is searched from the absent value, any other from any
//! value (the first read or cas fixes it), so a reported run is a violation on its own.
//! Keeping `blocked` keeps the evidence about it: a later read that the shortened run no
//! longer explains would otherwise take its place.
//!
//! Invariant: every run this module returns was found not linearizable by a search.

use serde_json::Value;

use super::search::{search, SearchOutcome};
use super::{KeyOp, Step, ValueId, Values, NULL, WILDCARD};
use crate::history::{Event, Kind};

/// One key's operations, as `check` prepared them, and what they came from.
pub(super) struct Context<'a> {
    pub key: &'a str,
    pub events: &'a [Event],
    /// Sorted by call time; the full search of them found no linearization.
    pub ops: &'a [KeyOp],
    pub values: &'a Values,
}

/// Configurations the search of the window with its values as recorded may visit.
const RECORDED_STATES_MAX: u64 = 100_000;

/// The window's events (time order) and the explanation. `blocked` is where the search
/// of all of `context.ops` got stuck, after visiting `states` configurations; a search of
/// a part gets twice that (at least 10k, at most `states_max`), and a part whose search
/// runs out counts as linearizable, so the shrinking costs a few dozen full searches at
/// most.
pub(super) fn shrink(
    context: &Context<'_>,
    blocked: usize,
    states: u64,
    states_max: u64,
) -> (Vec<Event>, String) {
    let ops = context.ops;
    assert!(blocked < ops.len() && ops[blocked].known);
    let part_states_max = states
        .saturating_mul(2)
        .clamp(10_000, states_max.max(states));
    // A range counts if its search gets stuck at the same op as the full search, so that
    // the explanation is about that op.
    let not_linearizable = |start: usize, end: usize| {
        let initial = if start == 0 { NULL } else { WILDCARD };
        match search(&ops[start..=end], initial, part_states_max) {
            SearchOutcome::NotLinearizable { blocked: stuck, .. } => start + stuck == blocked,
            _ => false,
        }
    };
    // Nothing called after `blocked` returned can come before it. All of `ops` counts.
    let mut end = ops.partition_point(|op| op.call_ns <= ops[blocked].return_ns) - 1;
    if !not_linearizable(0, end) {
        end = ops.len() - 1;
    }
    let mut start = shrink_start(0, end, &not_linearizable);
    end = shrink_end(start, end, &not_linearizable);
    start = shrink_start(start, end, &not_linearizable);

    // Searched again with the values as recorded, so that the explanation names them
    // (failing that, as merged).
    let initial = if start == 0 { NULL } else { WILDCARD };
    let recorded: Vec<KeyOp> = ops[start..=end]
        .iter()
        .map(|op| KeyOp {
            step: op.recorded,
            ..*op
        })
        .collect();
    let searches = [
        (&recorded[..], RECORDED_STATES_MAX),
        (&ops[start..=end], part_states_max),
    ];
    let found = searches.into_iter().find_map(|(window, states_max)| {
        match search(window, initial, states_max) {
            SearchOutcome::NotLinearizable {
                blocked: stuck,
                states_before,
                ..
            } => Some((start + stuck, states_before)),
            _ => None,
        }
    });
    let (blocked, states) = found.unwrap_or((blocked, Vec::new()));
    (
        window_events(context, start, end),
        explain(context, blocked, &states),
    )
}

/// The latest start in `start..=end` found not linearizable, `start` being so.
fn shrink_start(
    start: usize,
    end: usize,
    not_linearizable: &dyn Fn(usize, usize) -> bool,
) -> usize {
    let (mut yes, mut no) = (start, end + 1);
    while no - yes > 1 {
        let mid = yes + (no - yes) / 2;
        if not_linearizable(mid, end) {
            yes = mid;
        } else {
            no = mid;
        }
    }
    yes
}

/// The earliest end in `start..=end` found not linearizable, `end` being so.
fn shrink_end(start: usize, end: usize, not_linearizable: &dyn Fn(usize, usize) -> bool) -> usize {
    // `no` is one before a candidate: start - 1, kept as start + 1 - 1 to stay unsigned.
    let (mut no_plus_one, mut yes) = (start, end);
    while yes > no_plus_one {
        let mid = no_plus_one + (yes - no_plus_one) / 2;
        if not_linearizable(start, mid) {
            yes = mid;
        } else {
            no_plus_one = mid + 1;
        }
    }
    yes
}

fn window_events(context: &Context<'_>, start: usize, end: usize) -> Vec<Event> {
    let mut indexes: Vec<usize> = context.ops[start..=end]
        .iter()
        .flat_map(|op| std::iter::once(op.invoke_index).chain(op.completion_index))
        .collect();
    let events = context.events;
    indexes.sort_by_key(|&i| (events[i].time_ns, events[i].kind != Kind::Invoke, i));
    indexes.into_iter().map(|i| events[i].clone()).collect()
}

/// Names the op the search got stuck at, why if a simple reason is found, and the values
/// the register could hold just before it (`states`, when known).
fn explain(context: &Context<'_>, blocked: usize, states: &[ValueId]) -> String {
    let op = &context.ops[blocked];
    let specific = match op.step {
        Step::Read(needed) | Step::Cas(needed, _) if op.known => stale(context, blocked, needed),
        _ => None,
    };
    let why = specific.unwrap_or_else(|| format!("{} cannot be linearized", describe(context, op)));
    match states {
        [] => why,
        _ => format!(
            "{why}; just before it the register could hold {}",
            states_text(context, states)
        ),
    }
}

/// Why `blocked`, which read (or compared with) `needed`, saw a value that was gone.
fn stale(context: &Context<'_>, blocked: usize, needed: ValueId) -> Option<String> {
    let ops = context.ops;
    let op = &ops[blocked];
    let value = value_text(context, needed);
    let writers: Vec<&KeyOp> = ops
        .iter()
        .filter(|w| w.call_ns <= op.return_ns && written(w) == Some(needed))
        .collect();
    if writers.is_empty() && needed != NULL {
        return Some(format!(
            "{}, but no operation invoked before it completed wrote {value}",
            describe(context, op)
        ));
    }
    // An op that completed before `op` was invoked and overwrote `needed` after every
    // write of it had completed: `needed` was gone for good.
    let written_last_ns = writers
        .iter()
        .map(|w| w.return_ns)
        .max()
        .unwrap_or(i64::MIN);
    let overwrite = ops
        .iter()
        .filter(|x| x.known && x.return_ns < op.call_ns && written_last_ns < x.call_ns)
        .filter(|x| written(x).is_some_and(|v| v != needed))
        .max_by_key(|x| x.return_ns)?;
    let source = match writers.iter().max_by_key(|w| w.call_ns) {
        Some(writer) => format!(
            "{value} was last written by the {}",
            describe(context, writer)
        ),
        None => format!("{value} (absent) is only the initial state"),
    };
    Some(format!(
        "{}, but {value} had been overwritten by the {} before it was invoked ({source})",
        describe(context, op),
        describe(context, overwrite)
    ))
}

fn written(op: &KeyOp) -> Option<ValueId> {
    match op.step {
        Step::Read(_) => None,
        Step::Write(value) | Step::Cas(_, value) => Some(value),
    }
}

fn value_text(context: &Context<'_>, value: ValueId) -> String {
    if value == WILDCARD {
        return "any value".to_string();
    }
    if value == context.values.unread {
        return "a value no operation reads".to_string();
    }
    let text = context
        .values
        .by_id
        .get(value as usize)
        .map(Value::to_string);
    text.unwrap_or_else(|| format!("value #{value}"))
}

fn states_text(context: &Context<'_>, states: &[ValueId]) -> String {
    match states {
        [one] => format!("only {}", value_text(context, *one)),
        many => {
            let texts: Vec<String> = many.iter().map(|&v| value_text(context, v)).collect();
            format!("one of {}", texts.join(", "))
        }
    }
}

/// `read of k7 by process 3 (invoked t=1200, ok t=1900) returned 41`, with the values
/// as recorded (the ids may stand for several, see `merge_unread`).
fn describe(context: &Context<'_>, op: &KeyOp) -> String {
    let invoke = &context.events[op.invoke_index];
    let completion = op.completion_index.map(|i| &context.events[i]);
    let when = match completion {
        Some(c) => format!(
            "invoked t={}, {} t={}",
            invoke.time_ns,
            c.kind.as_str(),
            c.time_ns
        ),
        None => format!("invoked t={}, never completed", invoke.time_ns),
    };
    let (key, process) = (context.key, invoke.process);
    match (op.step, invoke.cas_pair()) {
        (Step::Read(_), _) => {
            let read = completion.map_or(&Value::Null, |c| &c.value);
            format!("read of {key} by process {process} ({when}) returned {read}")
        }
        (Step::Cas(..), Some((expected, new))) => {
            format!("cas of {key} from {expected} to {new} by process {process} ({when})")
        }
        _ => format!(
            "write of {} to {key} by process {process} ({when})",
            invoke.value
        ),
    }
}
