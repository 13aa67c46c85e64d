//! `keel-chaos check HISTORY.jsonl`: exit codes 0 (linearizable), 1 (not, or undecided),
//! 2 (bad arguments or input), and what it prints.

use std::path::PathBuf;
use std::process::{Command, Output};

use chaos::history::{Event, Kind, F};
use serde_json::{json, Value};

/// A file in the test target's scratch directory, named after the test.
fn history_file(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("check_cli_{name}.jsonl"));
    std::fs::write(&path, text).expect("write history");
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel-chaos"))
        .arg("check")
        .args(args)
        .output()
        .expect("run keel-chaos")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn event(process: u64, kind: Kind, f: F, value: Value, time_ns: i64) -> Event {
    Event {
        process,
        kind,
        f,
        key: "k".to_string(),
        value,
        time_ns,
    }
}

/// write 1, write 2, then a read of `read` (and an unrelated key "other", read absent).
fn history(read: Value) -> String {
    let events = [
        event(0, Kind::Invoke, F::Write, json!(1), 0),
        event(0, Kind::Ok, F::Write, json!(1), 10),
        event(0, Kind::Invoke, F::Write, json!(2), 20),
        event(0, Kind::Ok, F::Write, json!(2), 30),
        event(1, Kind::Invoke, F::Read, Value::Null, 40),
        event(1, Kind::Ok, F::Read, read, 50),
        Event {
            key: "other".into(),
            ..event(2, Kind::Invoke, F::Read, Value::Null, 5)
        },
        Event {
            key: "other".into(),
            ..event(2, Kind::Ok, F::Read, Value::Null, 6)
        },
    ];
    events.iter().map(|e| e.to_json_line() + "\n").collect()
}

#[test]
fn linearizable_history_exits_0() {
    let path = history_file("linearizable", &history(json!(2)));
    let output = run(&[path.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(stdout(&output), "ops=4 keys=2 linearizable=yes\n");
}

#[test]
fn stale_read_exits_1_with_window_and_explanation() {
    let path = history_file("stale", &history(json!(1)));
    let output = run(&[path.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let out = stdout(&output);
    assert!(out.contains("key k: NOT linearizable"), "{out}");
    assert!(out.contains("t=50 p=1 ok read k 1\n"), "{out}");
    assert!(out.contains("explanation: read of k by process 1"), "{out}");
    assert!(!out.contains("key other"), "{out}");
    assert_eq!(out.lines().last(), Some("ops=4 keys=2 linearizable=no"));
}

#[test]
fn exhausted_budget_exits_1_and_says_so() {
    // Twenty concurrent writes, then a read: more than 3 configurations to search.
    let mut text = String::new();
    for p in 0..20 {
        text += &event(p, Kind::Invoke, F::Write, json!(p), 0).to_json_line();
        text += "\n";
    }
    for p in 0..20 {
        text += &event(p, Kind::Ok, F::Write, json!(p), 100).to_json_line();
        text += "\n";
    }
    text += &event(30, Kind::Invoke, F::Read, Value::Null, 200).to_json_line();
    text += "\n";
    text += &event(30, Kind::Ok, F::Read, json!(3), 210).to_json_line();
    let path = history_file("budget", &text);
    let output = run(&["--states-max", "3", path.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let out = stdout(&output);
    assert!(out.contains("key k: unknown"), "{out}");
    assert!(out.contains("undecided"), "{out}");
    assert_eq!(
        out.lines().last(),
        Some("ops=21 keys=1 linearizable=no unknown=1")
    );
    // With the default budget it is decided.
    let output = run(&[path.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
}

#[test]
fn bad_input_exits_2_naming_the_line() {
    let mut text = history(json!(2));
    text.insert(0, '\n');
    // Line 3 (after a blank line and one event) becomes unparseable.
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = r#"{"process":0,"type":"okay","f":"write","key":"k","value":1,"time":10}"#;
    let path = history_file("bad", &lines.join("\n"));
    let output = run(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("line 3: unknown type \"okay\""),
        "{}",
        stderr(&output)
    );
    assert_eq!(stdout(&output), "");
}

#[test]
fn bad_arguments_exit_2() {
    for args in [&[][..], &["a", "b"][..], &["--states-max", "many", "x"][..]] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains("usage: keel-chaos check"),
            "{}",
            stderr(&output)
        );
    }
    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("check_cli_missing.jsonl");
    let output = run(&[missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("check_cli_missing.jsonl"),
        "{}",
        stderr(&output)
    );
}
