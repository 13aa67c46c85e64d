//! Hand-made histories, a brute-force cross-check on small random ones, and generated
//! 100k-operation histories of a real (simulated) linearizable register.

use std::time::Instant;

use serde_json::{json, Value};

use super::*;
use crate::history::{Event, Kind, F};

/// One operation of a hand-made history.
struct O {
    process: u64,
    f: F,
    key: &'static str,
    input: Value,
    call_ns: i64,
    /// (kind, value, time) of the completion; `None`: never completed.
    end: Option<(Kind, Value, i64)>,
}

fn write(process: u64, key: &'static str, v: Value, call_ns: i64, ret_ns: i64) -> O {
    O {
        process,
        f: F::Write,
        key,
        input: v.clone(),
        call_ns,
        end: Some((Kind::Ok, v, ret_ns)),
    }
}

fn write_as(kind: Kind, process: u64, key: &'static str, v: Value, call: i64, ret: i64) -> O {
    O {
        end: Some((kind, v.clone(), ret)),
        ..write(process, key, v, call, ret)
    }
}

fn write_pending(process: u64, key: &'static str, v: Value, call_ns: i64) -> O {
    O {
        end: None,
        ..write(process, key, v, call_ns, call_ns)
    }
}

fn read(process: u64, key: &'static str, v: Value, call_ns: i64, ret_ns: i64) -> O {
    let end = Some((Kind::Ok, v, ret_ns));
    O {
        process,
        f: F::Read,
        key,
        input: Value::Null,
        call_ns,
        end,
    }
}

fn cas(kind: Kind, process: u64, key: &'static str, e: Value, n: Value, call: i64, ret: i64) -> O {
    let pair = json!([e, n]);
    let end = Some((kind, pair.clone(), ret));
    O {
        process,
        f: F::Cas,
        key,
        input: pair,
        call_ns: call,
        end,
    }
}

/// The events of `ops`, in time order (a completion before an invoke at an equal time).
fn history(ops: &[O]) -> Vec<Event> {
    let mut events: Vec<(i64, bool, usize, Event)> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let event = |kind, value: &Value, time_ns| Event {
            process: op.process,
            kind,
            f: op.f,
            key: op.key.to_string(),
            value: value.clone(),
            time_ns,
        };
        events.push((
            op.call_ns,
            true,
            index,
            event(Kind::Invoke, &op.input, op.call_ns),
        ));
        if let Some((kind, value, time)) = &op.end {
            events.push((*time, false, index, event(*kind, value, *time)));
        }
    }
    events.sort_by_key(|(time, is_invoke, index, _)| (*time, *is_invoke, *index));
    events.into_iter().map(|(.., event)| event).collect()
}

fn report(ops: &[O]) -> Report {
    check(&history(ops)).expect("well formed")
}

fn outcome<'r>(report: &'r Report, key: &str) -> &'r Outcome {
    &report
        .keys
        .iter()
        .find(|k| k.key == key)
        .expect("key reported")
        .outcome
}

fn assert_linearizable(ops: &[O]) {
    let report = report(ops);
    assert!(report.linearizable(), "{report:#?}");
}

/// The violation of the only key, its window and explanation.
fn violation(ops: &[O]) -> (Vec<Event>, String) {
    let report = report(ops);
    assert!(!report.linearizable());
    assert_eq!(report.violations().count(), 1, "{report:#?}");
    let outcome = report.violations().next().map(|k| k.outcome.clone());
    match outcome {
        Some(Outcome::NotLinearizable {
            window,
            explanation,
        }) => (window, explanation),
        other => panic!("{other:?}"),
    }
}

fn window_has(window: &[Event], process: u64, kind: Kind, value: Value) -> bool {
    window
        .iter()
        .any(|e| e.process == process && e.kind == kind && e.value == value)
}

#[test]
fn overlapping_write_and_reads_may_see_either_value() {
    for (first, second) in [(1, 1), (1, 2), (2, 2)] {
        assert_linearizable(&[
            write(0, "k", json!(1), 0, 10),
            write(1, "k", json!(2), 20, 40),
            read(2, "k", json!(first), 22, 30),
            read(3, "k", json!(second), 31, 38),
            read(2, "k", json!(2), 41, 45),
        ]);
    }
    // A read overlapping nothing but the key's start sees absent.
    assert_linearizable(&[
        read(0, "k", Value::Null, 0, 5),
        write(1, "k", json!(1), 3, 8),
    ]);
    // Equal times overlap: a read returning at the write's invoke may see it.
    assert_linearizable(&[
        write(1, "k", json!(1), 10, 20),
        read(0, "k", json!(1), 0, 10),
    ]);
}

#[test]
fn stale_read_is_caught() {
    let (window, explanation) = violation(&[
        write(0, "k", json!(1), 0, 10),
        write(1, "k", json!(2), 20, 30),
        read(2, "k", json!(1), 40, 50),
    ]);
    assert!(window_has(&window, 2, Kind::Ok, json!(1)), "{window:?}");
    assert!(
        explanation.contains("overwritten by the write of 2"),
        "{explanation}"
    );
    assert!(explanation.contains("could hold only 2"), "{explanation}");
}

#[test]
fn lost_cas_is_caught() {
    let (window, explanation) = violation(&[
        write(0, "k", json!(1), 0, 10),
        cas(Kind::Ok, 1, "k", json!(1), json!(2), 20, 30),
        read(2, "k", json!(1), 40, 50),
    ]);
    assert!(window_has(&window, 2, Kind::Ok, json!(1)));
    assert!(window_has(&window, 1, Kind::Ok, json!([1, 2])));
    assert!(
        explanation.contains("overwritten by the cas of k from 1 to 2"),
        "{explanation}"
    );
}

#[test]
fn read_of_a_value_never_written_is_caught() {
    let (window, explanation) = violation(&[
        write(0, "k", json!(1), 0, 10),
        read(1, "k", json!(7), 20, 30),
    ]);
    assert!(window_has(&window, 1, Kind::Ok, json!(7)));
    assert!(
        explanation.contains("no operation invoked before it completed wrote 7"),
        "{explanation}"
    );
    // Even as the very first operation, where the key is still absent.
    let (window, _) = violation(&[read(1, "k", json!(7), 0, 30)]);
    assert_eq!(window.len(), 2);
}

#[test]
fn reads_going_backwards_are_caught() {
    // No write in flight during the reads.
    let (window, _) = violation(&[
        write(0, "k", json!(1), 0, 10),
        write(0, "k", json!(2), 20, 30),
        read(1, "k", json!(2), 40, 50),
        read(2, "k", json!(1), 60, 70),
    ]);
    assert!(window_has(&window, 2, Kind::Ok, json!(1)));
    // A write in flight across both reads: the first may see it, but then the second
    // (invoked after the first returned) cannot see the old value again.
    let (window, explanation) = violation(&[
        write(0, "k", json!(1), 0, 10),
        write(0, "k", json!(2), 20, 100),
        read(1, "k", json!(2), 30, 40),
        read(2, "k", json!(1), 50, 60),
    ]);
    assert!(window_has(&window, 2, Kind::Ok, json!(1)));
    assert!(window_has(&window, 1, Kind::Ok, json!(2)));
    assert!(explanation.contains("returned 1"), "{explanation}");
}

#[test]
fn unknown_write_later_observed_is_linearizable() {
    assert_linearizable(&[
        write(0, "k", json!(1), 0, 10),
        write_as(Kind::Info, 1, "k", json!(2), 20, 30),
        read(2, "k", json!(1), 40, 50),
        read(2, "k", json!(2), 100, 110),
    ]);
    // Never completed at all: the same.
    assert_linearizable(&[
        write(0, "k", json!(1), 0, 10),
        write_pending(1, "k", json!(2), 20),
        read(2, "k", json!(2), 100, 110),
    ]);
    // An unknown cas, observed.
    assert_linearizable(&[
        write(0, "k", json!(1), 0, 10),
        cas(Kind::Info, 1, "k", json!(1), json!(3), 20, 30),
        read(2, "k", json!(3), 100, 110),
    ]);
}

#[test]
fn unknown_write_observed_before_its_invoke_is_caught() {
    let (window, explanation) = violation(&[
        read(0, "k", json!(2), 0, 10),
        write_as(Kind::Info, 1, "k", json!(2), 20, 30),
    ]);
    assert!(window_has(&window, 0, Kind::Ok, json!(2)));
    assert!(explanation.contains("returned 2"), "{explanation}");
    // An unknown cas whose compare cannot hold cannot explain the read either.
    violation(&[
        write(0, "k", json!(1), 0, 10),
        cas(Kind::Info, 1, "k", json!(5), json!(3), 20, 30),
        read(2, "k", json!(3), 100, 110),
    ]);
}

#[test]
fn unknown_write_never_observed_is_dropped() {
    let ops = [
        write(0, "k", json!(1), 0, 10),
        write_as(Kind::Info, 1, "k", json!(9), 20, 30),
        read(2, "k", json!(1), 40, 50),
        read(2, "k", json!(1), 60, 70),
    ];
    assert_linearizable(&ops);
    let events = history(&ops);
    let pairs = crate::history::pair(&events).unwrap();
    let (kept, _) = key_ops(&events, &pairs);
    assert_eq!(kept.len(), 3);
    assert!(kept.iter().all(|op| op.known));
    // Observed by a kept unknown cas, which a read observes: both kept.
    let ops = [
        write(0, "k", json!(1), 0, 10),
        write_as(Kind::Info, 1, "k", json!(9), 20, 30),
        cas(Kind::Info, 3, "k", json!(9), json!(10), 20, 30),
        read(2, "k", json!(10), 40, 50),
    ];
    assert_linearizable(&ops);
    let events = history(&ops);
    let pairs = crate::history::pair(&events).unwrap();
    assert_eq!(key_ops(&events, &pairs).0.len(), 4);
    // The same without the read: the cas is dropped, and then the write it expected.
    let events = history(&ops[..3]);
    let pairs = crate::history::pair(&events).unwrap();
    assert_eq!(key_ops(&events, &pairs).0.len(), 1);
}

#[test]
fn cas_with_null_expected_means_absent() {
    assert_linearizable(&[
        cas(Kind::Ok, 0, "k", Value::Null, json!(1), 0, 10),
        read(1, "k", json!(1), 20, 30),
        cas(Kind::Fail, 0, "k", Value::Null, json!(2), 40, 50),
    ]);
    let (window, explanation) = violation(&[
        cas(Kind::Ok, 0, "k", Value::Null, json!(1), 0, 10),
        cas(Kind::Ok, 1, "k", Value::Null, json!(2), 20, 30),
    ]);
    assert!(window_has(&window, 1, Kind::Ok, json!([null, 2])));
    assert!(
        explanation.contains("cas of k from null to 2"),
        "{explanation}"
    );
    // A cas from null after a write is absent no longer.
    violation(&[
        write(0, "k", json!(1), 0, 10),
        cas(Kind::Ok, 1, "k", Value::Null, json!(2), 20, 30),
    ]);
}

#[test]
fn failed_ops_are_ignored() {
    assert_linearizable(&[
        write(0, "k", json!(1), 0, 10),
        write_as(Kind::Fail, 1, "k", json!(2), 20, 30),
        cas(Kind::Fail, 1, "k", json!(1), json!(3), 31, 35),
        read(2, "k", json!(1), 40, 50),
    ]);
    // But a failed write's value read later is a read of a value never written.
    violation(&[
        write(0, "k", json!(1), 0, 10),
        write_as(Kind::Fail, 1, "k", json!(2), 20, 30),
        read(2, "k", json!(2), 40, 50),
    ]);
}

#[test]
fn only_the_bad_key_is_reported() {
    let ops = [
        write(0, "a", json!(1), 0, 10),
        write(1, "b", json!(1), 0, 10),
        write(2, "c", json!(1), 0, 10),
        write(0, "a", json!(2), 20, 30),
        write(1, "b", json!(2), 20, 30),
        write(2, "c", json!(2), 20, 30),
        read(0, "a", json!(2), 40, 50),
        read(1, "b", json!(1), 40, 50),
        read(2, "c", json!(2), 40, 50),
    ];
    let report = report(&ops);
    assert_eq!(report.ops, 9);
    assert_eq!(report.keys.len(), 3);
    let bad: Vec<&str> = report.violations().map(|k| k.key.as_str()).collect();
    assert_eq!(bad, ["b"]);
    assert_eq!(outcome(&report, "a"), &Outcome::Linearizable);
    assert_eq!(outcome(&report, "c"), &Outcome::Linearizable);
    let Outcome::NotLinearizable { window, .. } = outcome(&report, "b") else {
        unreachable!()
    };
    assert!(window.iter().all(|e| e.key == "b"));
    assert_eq!(report.summary(), "ops=9 keys=3 linearizable=no");
}

#[test]
fn budget_exhausted_is_unknown_not_linearizable() {
    let ops: Vec<O> = (0..20)
        .map(|i| write(i, "k", json!(i), 0, 100))
        .chain([read(30, "k", json!(3), 200, 210)])
        .collect();
    let events = history(&ops);
    let config = Config {
        states_max: 5,
        threads_max: 1,
    };
    let report = check_with(&events, &config).unwrap();
    assert!(!report.linearizable());
    assert_eq!(report.violations().count(), 0);
    assert!(matches!(&report.keys[0].outcome, Outcome::Unknown(why) if why.contains("budget")));
    assert_eq!(report.summary(), "ops=21 keys=1 linearizable=no unknown=1");
    // With the default budget it is decided.
    assert!(check(&events).unwrap().linearizable());
}

/// A long history of three processes on one key, sequential and overlapping, with one
/// stale read in the middle.
#[test]
fn violation_buried_in_a_long_history_has_a_short_window() {
    let mut ops = Vec::new();
    let mut value = 0;
    for round in 0..400i64 {
        let t = round * 100;
        value += 1;
        ops.push(write(0, "k", json!(value), t, t + 50));
        let seen = if round == 200 {
            json!(value - 2)
        } else {
            json!(value)
        };
        ops.push(read(1, "k", seen, t + 60, t + 90));
        // A read overlapping the next write: sees this value or the next.
        ops.push(read(2, "k", json!(value), t + 70, t + 120));
    }
    let (window, explanation) = violation(&ops);
    let window_ops = window.iter().filter(|e| e.kind == Kind::Invoke).count();
    assert!(window_ops <= 10, "{window_ops} ops: {window:#?}");
    assert!(window_has(&window, 1, Kind::Ok, json!(199)), "{window:#?}");
    assert!(explanation.contains("returned 199"), "{explanation}");
    println!("window of {window_ops} ops: {explanation}");
}

// ---- brute force ----

/// Linearizable by trying every order (and every subset of the unknown writes and cas).
fn brute_force(events: &[Event]) -> bool {
    struct B {
        call: i64,
        ret: i64,
        f: F,
        input: Value,
        output: Value,
        known: bool,
    }
    let pairs = crate::history::pair(events).unwrap();
    let mut ops = Vec::new();
    for op in pairs {
        let invoke = &events[op.invoke_index];
        let completion = op.completion_index.map(|i| &events[i]);
        let kind = completion.map_or(Kind::Info, |c| c.kind);
        if kind == Kind::Fail || (kind == Kind::Info && invoke.f == F::Read) {
            continue;
        }
        let known = kind == Kind::Ok;
        ops.push(B {
            call: invoke.time_ns,
            ret: if known {
                completion.unwrap().time_ns
            } else {
                i64::MAX
            },
            f: invoke.f,
            input: invoke.value.clone(),
            output: completion.map_or(Value::Null, |c| c.value.clone()),
            known,
        });
    }
    fn apply(op: &B, state: &Value) -> Option<Value> {
        match op.f {
            F::Read => (op.output == *state).then(|| state.clone()),
            F::Write => Some(op.input.clone()),
            F::Cas => (op.input[0] == *state).then(|| op.input[1].clone()),
        }
    }
    fn extend(ops: &[B], included: &[bool], done: &mut Vec<bool>, state: &Value) -> bool {
        if ops.iter().zip(done.iter()).all(|(op, &d)| d || !op.known) {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] || !included[i] {
                continue;
            }
            // Every op that returned before i was called must come first.
            let blocked = (0..ops.len())
                .any(|j| j != i && !done[j] && included[j] && ops[j].ret < ops[i].call);
            if blocked {
                continue;
            }
            if let Some(next) = apply(&ops[i], state) {
                done[i] = true;
                if extend(ops, included, done, &next) {
                    return true;
                }
                done[i] = false;
            }
        }
        false
    }
    let unknown: Vec<usize> = (0..ops.len()).filter(|&i| !ops[i].known).collect();
    (0..1u32 << unknown.len()).any(|mask| {
        let mut included = vec![true; ops.len()];
        for (bit, &i) in unknown.iter().enumerate() {
            included[i] = mask & (1 << bit) != 0;
        }
        extend(&ops, &included, &mut vec![false; ops.len()], &Value::Null)
    })
}

/// Deterministic random numbers for the tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        search::splitmix64(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A small random history of one key, usually not linearizable: `processes` of 1 to 3
/// ops, values null and 1 to `values_max`.
fn random_small(rng: &mut Rng, processes: u64, values_max: u64) -> Vec<Event> {
    let value = |rng: &mut Rng| match rng.below(values_max + 1) {
        0 => Value::Null,
        v => json!(v),
    };
    let mut ops = Vec::new();
    for process in 0..processes {
        let mut t = rng.below(4) as i64;
        let count = 1 + rng.below(3);
        for n in 0..count {
            let call = t;
            let ret = call + 1 + rng.below(6) as i64;
            t = ret + 1 + rng.below(3) as i64;
            let kind = match rng.below(20) {
                0..=13 => Kind::Ok,
                14..=16 => Kind::Info,
                _ => Kind::Fail,
            };
            let pending = kind == Kind::Info && n + 1 == count && rng.chance(500);
            let mut op = match rng.below(3) {
                0 => read(process, "k", value(rng), call, ret),
                1 => write_as(kind, process, "k", value(rng), call, ret),
                _ => cas(kind, process, "k", value(rng), value(rng), call, ret),
            };
            if op.f == F::Read && kind != Kind::Ok {
                op.end = Some((kind, Value::Null, ret));
            }
            if pending {
                op.end = None;
            }
            ops.push(op);
        }
    }
    history(&ops)
}

#[test]
fn agrees_with_brute_force_on_small_histories() {
    agree_with_brute_force(7, 3, 3);
}

#[test]
fn agrees_with_brute_force_on_small_histories_with_more_repeats() {
    agree_with_brute_force(8, 4, 2);
}

fn agree_with_brute_force(seed: u64, processes: u64, values_max: u64) {
    let mut rng = Rng(seed);
    let (mut yes, mut no) = (0, 0);
    for round in 0..3000 {
        let events = random_small(&mut rng, processes, values_max);
        let expected = brute_force(&events);
        let report = check(&events).unwrap();
        assert_eq!(
            report.linearizable(),
            expected,
            "round {round}: {events:#?}\n{report:#?}"
        );
        if expected {
            yes += 1;
            continue;
        }
        no += 1;
        let Some(KeyResult {
            outcome: Outcome::NotLinearizable { window, .. },
            ..
        }) = report.violations().next()
        else {
            panic!("{report:#?}")
        };
        assert!(
            !brute_force(window),
            "round {round}: window linearizable: {window:#?}"
        );
    }
    println!("{yes} linearizable, {no} not");
    assert!(
        yes > 300 && no > 300,
        "{yes} linearizable, {no} not: generator too one-sided"
    );
}

// ---- generated histories ----

struct Generated {
    process: u64,
    key: usize,
    f: F,
    call_ns: i64,
    linearized_ns: i64,
    return_ns: i64,
    /// The client gave up: completes `info` (or never, if last), may or may not apply.
    unknown: bool,
    applies_if_unknown: bool,
    input: Value,
    /// Read: the value read; cas: whether the compare held.
    output: Value,
    cas_held: bool,
}

/// A history of registers that are linearizable by construction: every op takes effect
/// at a random point of its interval (an unknown one perhaps not at all).
fn generate(
    seed: u64,
    processes: u64,
    keys: usize,
    ops_total: usize,
    small_values: bool,
) -> Vec<Event> {
    let mut rng = Rng(seed);
    let per_process = ops_total / processes as usize;
    let mut ops = Vec::with_capacity(ops_total);
    let mut counter = 0u64;
    for process in 0..processes {
        let mut t = rng.below(1000) as i64;
        for _ in 0..per_process {
            let duration = 1 + rng.below(2000) as i64;
            let unknown = rng.chance(30);
            let f = match rng.below(10) {
                0..=4 => F::Read,
                5..=7 => F::Write,
                _ => F::Cas,
            };
            counter += 1;
            let fresh = if small_values {
                json!(rng.below(5))
            } else {
                json!(counter)
            };
            ops.push(Generated {
                process,
                key: rng.below(keys as u64) as usize,
                f,
                call_ns: t,
                linearized_ns: t + rng.below(duration as u64 + 1) as i64,
                return_ns: t + duration,
                unknown,
                applies_if_unknown: rng.chance(500),
                input: fresh,
                output: Value::Null,
                cas_held: false,
            });
            t += duration + 1 + rng.below(300) as i64;
        }
    }
    // Apply every op at its linearization point.
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].linearized_ns, i));
    let mut registers = vec![Value::Null; keys];
    for i in order {
        let choice = rng.below(3);
        let op = &mut ops[i];
        let register = &mut registers[op.key];
        let applies = !op.unknown || op.applies_if_unknown;
        match op.f {
            F::Read => op.output = register.clone(),
            F::Write => {
                if applies {
                    *register = op.input.clone();
                }
            }
            F::Cas => {
                // Clients guess the current value often enough for cas to succeed.
                let expected = match choice {
                    0 | 1 => register.clone(),
                    _ => json!(op.input.as_u64().unwrap_or(0) / 2),
                };
                op.cas_held = expected == *register;
                if applies && op.cas_held {
                    *register = op.input.clone();
                }
                op.input = json!([expected, op.input]);
            }
        }
    }
    // Events: an unknown op completes `info`, unless it is its process's last (never).
    let mut events: Vec<(i64, bool, usize, Event)> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let event = |kind, value: Value, time_ns| Event {
            process: op.process,
            kind,
            f: op.f,
            key: format!("k{}", op.key),
            value,
            time_ns,
        };
        let invoke_value = if op.f == F::Read {
            Value::Null
        } else {
            op.input.clone()
        };
        events.push((
            op.call_ns,
            true,
            index,
            event(Kind::Invoke, invoke_value, op.call_ns),
        ));
        let last = ops
            .get(index + 1)
            .is_none_or(|next| next.process != op.process);
        let (kind, value) = match op.f {
            _ if op.unknown && last => continue,
            F::Read if op.unknown => (Kind::Info, Value::Null),
            F::Read => (Kind::Ok, op.output.clone()),
            _ if op.unknown => (Kind::Info, op.input.clone()),
            F::Cas if !op.cas_held => (Kind::Fail, op.input.clone()),
            _ => (Kind::Ok, op.input.clone()),
        };
        events.push((op.return_ns, false, index, event(kind, value, op.return_ns)));
    }
    events.sort_by_key(|(time, is_invoke, index, _)| (*time, *is_invoke, *index));
    events.into_iter().map(|(.., event)| event).collect()
}

fn timed_check(what: &str, events: &[Event]) -> Report {
    let started = Instant::now();
    let report = check(events).unwrap();
    let ops_info = events.iter().filter(|e| e.kind == Kind::Info).count();
    println!(
        "{what}: {} ops ({ops_info} info) on {} keys checked in {:?}: {}",
        report.ops,
        report.keys.len(),
        started.elapsed(),
        report.summary()
    );
    report
}

/// The first ok read of `key` past the middle that a completed write made stale: its
/// completion's event index and the stale value.
fn stale_read(events: &[Event], key: &str) -> (usize, Value) {
    let pairs = crate::history::pair(events).unwrap();
    let ok = |op: &crate::history::Op| {
        op.completion_index
            .filter(|&c| events[c].kind == Kind::Ok)
            .map(|c| &events[c])
    };
    let writes: Vec<(&Event, &Event)> = pairs
        .iter()
        .filter(|op| events[op.invoke_index].key == key && events[op.invoke_index].f == F::Write)
        .filter_map(|op| Some((&events[op.invoke_index], ok(op)?)))
        .collect();
    let reads = pairs.iter().filter(|op| {
        let invoke = &events[op.invoke_index];
        invoke.key == key && invoke.f == F::Read && ok(op).is_some()
    });
    for read in reads.skip(writes.len() / 4) {
        let call = events[read.invoke_index].time_ns;
        // W1 completed, then W2 was invoked after W1 completed and completed itself, all
        // before the read was invoked.
        let stale = writes
            .iter()
            .filter(|(_, w1_ok)| w1_ok.time_ns < call)
            .find(|(_, w1_ok)| {
                writes.iter().any(|(w2, w2_ok)| {
                    w2.time_ns > w1_ok.time_ns && w2_ok.time_ns < call && w2.value != w1_ok.value
                })
            });
        if let Some((w1, _)) = stale {
            let completion = read.completion_index.unwrap();
            if events[completion].value != w1.value {
                return (completion, w1.value.clone());
            }
        }
    }
    panic!("no read to make stale");
}

#[test]
fn generated_100k_history_is_linearizable_and_a_stale_read_in_it_is_caught() {
    let mut events = generate(42, 40, 20, 100_000, false);
    let report = timed_check("generated", &events);
    assert_eq!(report.ops, 100_000);
    assert!(
        report.linearizable(),
        "{:#?}",
        report.violations().collect::<Vec<_>>()
    );

    let (index, stale) = stale_read(&events, "k7");
    events[index].value = stale.clone();
    let report = timed_check("generated with one stale read", &events);
    let bad: Vec<&KeyResult> = report.violations().collect();
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert_eq!(bad[0].key, "k7");
    assert_eq!(report.unknown().count(), 0);
    let Outcome::NotLinearizable {
        window,
        explanation,
    } = &bad[0].outcome
    else {
        unreachable!()
    };
    print!("{}", bad[0]);
    assert!(window.contains(&events[index]), "{window:#?}");
    assert!(window.len() <= 40, "{window:#?}");
    assert!(
        explanation.contains(&format!("returned {stale}")),
        "{explanation}"
    );
}

#[test]
fn generated_history_with_repeated_values_is_linearizable() {
    // Values from 0..5: unknown writes can be observed through many reads, and identical
    // unknown ops are common.
    let events = generate(7, 30, 10, 30_000, true);
    let report = timed_check("repeated values", &events);
    assert!(report.linearizable(), "{report:#?}");
}

#[test]
fn generated_history_on_one_hot_key_is_linearizable() {
    let events = generate(9, 30, 1, 20_000, false);
    let report = timed_check("one hot key, 30 clients", &events);
    assert!(report.linearizable(), "{report:#?}");
    let events = generate(9, 10, 1, 20_000, true);
    let report = timed_check("one hot key, 10 clients, repeated values", &events);
    assert!(report.linearizable(), "{report:#?}");
}
