//! The recorded history: one JSON object per line, Jepsen-style.
//!
//! ```text
//! {"process":3,"type":"invoke","f":"write","key":"k7","value":41,"time":1200}
//! {"process":3,"type":"ok","f":"write","key":"k7","value":41,"time":1900}
//! ```
//! - `type`: `invoke` starts an operation of `process`; `ok` (it took effect, and a read's
//!   value is the value read), `fail` (it did not take effect) or `info` (unknown: it may
//!   take effect at any time after its invoke, or never) completes it. An invoke with no
//!   completion in the file is treated as `info`.
//! - `f`: `read` (invoke value null; ok value is what was read, null for a missing key),
//!   `write` (value written), `cas` (value `[expected, new]`, expected null = key absent).
//! - `time`: nanoseconds, any origin; the file need not be sorted by time, but a completion
//!   comes after its invoke in the file and not earlier in time.
//! - Other fields (Jepsen's `index`, …) are ignored; blank lines are ignored.
//!
//! Invariants of a history that [`parse`] or [`pair`] accepted:
//! - a process has at most one operation outstanding; after its completion (`info`
//!   included) the same process number may invoke again;
//! - every completion follows an outstanding invoke of its process with the same `f` and
//!   `key`, at a time no earlier than that invoke;
//! - every `cas` event's value is a 2-array.
//!
//! Bad input is a [`ParseError`] naming the line; nothing here panics on it.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum F {
    Read,
    Write,
    Cas,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub process: u64,
    pub kind: Kind,
    pub f: F,
    pub key: String,
    pub value: Value,
    pub time_ns: i64,
}

/// One operation: an invoke and its completion (`None`: never completed, i.e. unknown).
/// Both are indexes into the event slice that [`pair`] was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub invoke_index: usize,
    pub completion_index: Option<usize>,
}

/// A history that is not well formed. `line` is the 1-based line of the file for
/// [`parse`], and the 1-based position of the event in the slice for [`pair`] (the same
/// number when the history was written with [`Event::to_json_line`], one event a line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The line is not JSON, or not a JSON object.
    Json(String),
    FieldMissing(&'static str),
    FieldType {
        field: &'static str,
        expected: &'static str,
    },
    UnknownType(String),
    UnknownF(String),
    /// A cas event whose value is not `[expected, new]`.
    CasValue,
    /// A completion while its process has no operation outstanding.
    NoInvoke {
        process: u64,
    },
    /// A completion whose `f` or `key` differs from the outstanding invoke's.
    Mismatch {
        process: u64,
        invoke_line: usize,
    },
    /// An invoke while the process still has an operation outstanding.
    Outstanding {
        process: u64,
        invoke_line: usize,
    },
    /// A completion timed before its invoke.
    CompletionBeforeInvoke {
        invoke_line: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.kind {
            ParseErrorKind::Json(e) => write!(f, "not a JSON object: {e}"),
            ParseErrorKind::FieldMissing(name) => write!(f, "field \"{name}\" missing"),
            ParseErrorKind::FieldType { field, expected } => {
                write!(f, "field \"{field}\" must be {expected}")
            }
            ParseErrorKind::UnknownType(t) => {
                write!(f, "unknown type {t:?} (invoke, ok, fail or info)")
            }
            ParseErrorKind::UnknownF(x) => write!(f, "unknown f {x:?} (read, write or cas)"),
            ParseErrorKind::CasValue => write!(f, "cas value must be [expected, new]"),
            ParseErrorKind::NoInvoke { process } => {
                write!(
                    f,
                    "completion of process {process}, which has no operation outstanding"
                )
            }
            ParseErrorKind::Mismatch {
                process,
                invoke_line,
            } => write!(
                f,
                "completion of process {process} differs in f or key from its invoke \
                 (line {invoke_line})"
            ),
            ParseErrorKind::Outstanding {
                process,
                invoke_line,
            } => write!(
                f,
                "invoke of process {process} while its invoke of line {invoke_line} is \
                 outstanding"
            ),
            ParseErrorKind::CompletionBeforeInvoke { invoke_line } => {
                write!(f, "completion timed before its invoke (line {invoke_line})")
            }
        }
    }
}

impl std::error::Error for ParseError {}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Invoke => "invoke",
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        }
    }

    fn from_str(s: &str) -> Option<Kind> {
        Some(match s {
            "invoke" => Kind::Invoke,
            "ok" => Kind::Ok,
            "fail" => Kind::Fail,
            "info" => Kind::Info,
            _ => return None,
        })
    }
}

impl F {
    pub fn as_str(self) -> &'static str {
        match self {
            F::Read => "read",
            F::Write => "write",
            F::Cas => "cas",
        }
    }

    fn from_str(s: &str) -> Option<F> {
        Some(match s {
            "read" => F::Read,
            "write" => F::Write,
            "cas" => F::Cas,
            _ => return None,
        })
    }
}

impl Event {
    /// One compact JSON object, fields in the order process, type, f, key, value, time;
    /// [`parse`] reads it back to an equal event.
    pub fn to_json_line(&self) -> String {
        format!(
            "{{\"process\":{},\"type\":\"{}\",\"f\":\"{}\",\"key\":{},\"value\":{},\"time\":{}}}",
            self.process,
            self.kind.as_str(),
            self.f.as_str(),
            Value::from(self.key.as_str()),
            self.value,
            self.time_ns
        )
    }

    /// The `[expected, new]` of a cas event, `None` if the value is not a 2-array.
    pub fn cas_pair(&self) -> Option<(&Value, &Value)> {
        match self.value.as_array().map(Vec::as_slice) {
            Some([expected, new]) => Some((expected, new)),
            _ => None,
        }
    }
}

/// Parses a history file: one event a line, blank lines ignored, invokes and completions
/// paired as [`pair`] does.
pub fn parse(text: &str) -> Result<Vec<Event>, ParseError> {
    let mut events = Vec::new();
    let mut line_numbers = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_number = line_index + 1;
        let event = parse_line(line).map_err(|kind| ParseError {
            line: line_number,
            kind,
        })?;
        events.push(event);
        line_numbers.push(line_number);
    }
    pair_lines(&events, &line_numbers)?;
    Ok(events)
}

/// Pairs every invoke with its completion, checking the invariants in the module doc.
/// Operations come in the order of their invokes.
pub fn pair(events: &[Event]) -> Result<Vec<Op>, ParseError> {
    let line_numbers: Vec<usize> = (1..=events.len()).collect();
    pair_lines(events, &line_numbers)
}

fn pair_lines(events: &[Event], line_numbers: &[usize]) -> Result<Vec<Op>, ParseError> {
    assert_eq!(events.len(), line_numbers.len());
    let mut ops: Vec<Op> = Vec::new();
    // process → index into `ops` of its outstanding operation.
    let mut outstanding: HashMap<u64, usize> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        let error = |kind| ParseError {
            line: line_numbers[index],
            kind,
        };
        if event.f == F::Cas && event.cas_pair().is_none() {
            return Err(error(ParseErrorKind::CasValue));
        }
        if event.kind == Kind::Invoke {
            if let Some(&op_index) = outstanding.get(&event.process) {
                let invoke_line = line_numbers[ops[op_index].invoke_index];
                return Err(error(ParseErrorKind::Outstanding {
                    process: event.process,
                    invoke_line,
                }));
            }
            outstanding.insert(event.process, ops.len());
            ops.push(Op {
                invoke_index: index,
                completion_index: None,
            });
            continue;
        }
        let Some(op_index) = outstanding.remove(&event.process) else {
            return Err(error(ParseErrorKind::NoInvoke {
                process: event.process,
            }));
        };
        let invoke_index = ops[op_index].invoke_index;
        let invoke = &events[invoke_index];
        let invoke_line = line_numbers[invoke_index];
        if invoke.f != event.f || invoke.key != event.key {
            return Err(error(ParseErrorKind::Mismatch {
                process: event.process,
                invoke_line,
            }));
        }
        if event.time_ns < invoke.time_ns {
            return Err(error(ParseErrorKind::CompletionBeforeInvoke {
                invoke_line,
            }));
        }
        assert!(ops[op_index].completion_index.is_none());
        ops[op_index].completion_index = Some(index);
    }
    Ok(ops)
}

fn parse_line(line: &str) -> Result<Event, ParseErrorKind> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| ParseErrorKind::Json(e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(ParseErrorKind::Json("not an object".to_string()));
    };
    let mut field = |name: &'static str| {
        object
            .remove(name)
            .ok_or(ParseErrorKind::FieldMissing(name))
    };
    let process = field("process")?;
    let kind = field("type")?;
    let f = field("f")?;
    let key = field("key")?;
    let value = field("value")?;
    let time = field("time")?;

    let ill_typed = |field, expected| ParseErrorKind::FieldType { field, expected };
    let process = process
        .as_u64()
        .ok_or(ill_typed("process", "a non-negative integer"))?;
    let kind = kind.as_str().ok_or(ill_typed("type", "a string"))?;
    let kind = Kind::from_str(kind).ok_or_else(|| ParseErrorKind::UnknownType(kind.into()))?;
    let f = f.as_str().ok_or(ill_typed("f", "a string"))?;
    let f = F::from_str(f).ok_or_else(|| ParseErrorKind::UnknownF(f.into()))?;
    let Value::String(key) = key else {
        return Err(ill_typed("key", "a string"));
    };
    let time_ns = time.as_i64().ok_or(ill_typed("time", "an integer (ns)"))?;
    Ok(Event {
        process,
        kind,
        f,
        key,
        value,
        time_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(process: u64, kind: Kind, f: F, key: &str, value: Value, time_ns: i64) -> Event {
        Event {
            process,
            kind,
            f,
            key: key.to_string(),
            value,
            time_ns,
        }
    }

    #[test]
    fn round_trip() {
        let events = vec![
            event(0, Kind::Invoke, F::Read, "k\"1", Value::Null, -5),
            event(
                1,
                Kind::Invoke,
                F::Write,
                "k2",
                json!({"b": [1, 2.5], "a": "x"}),
                0,
            ),
            event(0, Kind::Ok, F::Read, "k\"1", json!(41), 10),
            event(
                1,
                Kind::Info,
                F::Write,
                "k2",
                json!({"b": [1, 2.5], "a": "x"}),
                11,
            ),
            event(1, Kind::Invoke, F::Cas, "k2", json!([null, 7]), 12),
            event(1, Kind::Fail, F::Cas, "k2", json!([null, 7]), 13),
            event(u64::MAX, Kind::Invoke, F::Cas, "é", json!([1, 2]), i64::MAX),
        ];
        let text: String = events.iter().map(|e| e.to_json_line() + "\n").collect();
        assert_eq!(parse(&text).unwrap(), events);
        assert_eq!(
            events[1].to_json_line(),
            r#"{"process":1,"type":"invoke","f":"write","key":"k2","value":{"a":"x","b":[1,2.5]},"time":0}"#
        );
        let ops = pair(&events).unwrap();
        assert_eq!(
            ops,
            vec![
                Op {
                    invoke_index: 0,
                    completion_index: Some(2)
                },
                Op {
                    invoke_index: 1,
                    completion_index: Some(3)
                },
                Op {
                    invoke_index: 4,
                    completion_index: Some(5)
                },
                Op {
                    invoke_index: 6,
                    completion_index: None
                },
            ]
        );
    }

    #[test]
    fn blank_lines_and_extra_fields_are_ignored() {
        let text = "\n  \n{\"index\":4,\"process\":2,\"type\":\"invoke\",\"f\":\"read\",\
                    \"key\":\"a\",\"value\":null,\"time\":3}\n\n";
        let events = parse(text).unwrap();
        assert_eq!(
            events,
            vec![event(2, Kind::Invoke, F::Read, "a", Value::Null, 3)]
        );
    }

    fn error_of(text: &str) -> ParseError {
        match parse(text) {
            Ok(events) => panic!("accepted {events:?}"),
            Err(e) => e,
        }
    }

    const GOOD: &str = r#"{"process":1,"type":"invoke","f":"write","key":"k","value":1,"time":1}"#;

    /// The bad line comes third, after a good line and a blank line.
    fn third(bad: &str) -> String {
        format!("{GOOD}\n\n{bad}\n")
    }

    #[test]
    fn bad_lines_are_named() {
        let cases: Vec<(&str, ParseErrorKind)> = vec![
            ("{not json", ParseErrorKind::Json(String::new())),
            ("[1,2]", ParseErrorKind::Json(String::new())),
            (
                r#"{"type":"invoke","f":"read","key":"k","value":null,"time":1}"#,
                ParseErrorKind::FieldMissing("process"),
            ),
            (
                r#"{"process":2,"type":"invoke","f":"read","key":"k","time":1}"#,
                ParseErrorKind::FieldMissing("value"),
            ),
            (
                r#"{"process":-2,"type":"invoke","f":"read","key":"k","value":null,"time":1}"#,
                ParseErrorKind::FieldType {
                    field: "process",
                    expected: "a non-negative integer",
                },
            ),
            (
                r#"{"process":2,"type":"invoke","f":"read","key":5,"value":null,"time":1}"#,
                ParseErrorKind::FieldType {
                    field: "key",
                    expected: "a string",
                },
            ),
            (
                r#"{"process":2,"type":"invoke","f":"read","key":"k","value":null,"time":1.5}"#,
                ParseErrorKind::FieldType {
                    field: "time",
                    expected: "an integer (ns)",
                },
            ),
            (
                r#"{"process":2,"type":"begin","f":"read","key":"k","value":null,"time":1}"#,
                ParseErrorKind::UnknownType("begin".into()),
            ),
            (
                r#"{"process":2,"type":"invoke","f":"delete","key":"k","value":null,"time":1}"#,
                ParseErrorKind::UnknownF("delete".into()),
            ),
            (
                r#"{"process":2,"type":"invoke","f":"cas","key":"k","value":[1],"time":1}"#,
                ParseErrorKind::CasValue,
            ),
            (
                r#"{"process":2,"type":"ok","f":"read","key":"k","value":null,"time":1}"#,
                ParseErrorKind::NoInvoke { process: 2 },
            ),
            (
                r#"{"process":1,"type":"ok","f":"write","key":"other","value":1,"time":2}"#,
                ParseErrorKind::Mismatch {
                    process: 1,
                    invoke_line: 1,
                },
            ),
            (
                r#"{"process":1,"type":"ok","f":"read","key":"k","value":1,"time":2}"#,
                ParseErrorKind::Mismatch {
                    process: 1,
                    invoke_line: 1,
                },
            ),
            (
                r#"{"process":1,"type":"invoke","f":"read","key":"k","value":null,"time":2}"#,
                ParseErrorKind::Outstanding {
                    process: 1,
                    invoke_line: 1,
                },
            ),
            (
                r#"{"process":1,"type":"ok","f":"write","key":"k","value":1,"time":0}"#,
                ParseErrorKind::CompletionBeforeInvoke { invoke_line: 1 },
            ),
        ];
        for (bad, expected) in cases {
            let error = error_of(&third(bad));
            assert_eq!(error.line, 3, "{bad}: {error}");
            match (&error.kind, &expected) {
                (ParseErrorKind::Json(_), ParseErrorKind::Json(_)) => {}
                (kind, expected) => assert_eq!(kind, expected, "{bad}"),
            }
            assert!(error.to_string().starts_with("line 3: "), "{error}");
        }
    }

    #[test]
    fn pair_names_the_position_of_the_event() {
        let events = vec![
            event(1, Kind::Invoke, F::Read, "k", Value::Null, 1),
            event(1, Kind::Ok, F::Read, "k", Value::Null, 2),
            event(1, Kind::Info, F::Read, "k", Value::Null, 3),
        ];
        let error = pair(&events).unwrap_err();
        assert_eq!(
            error,
            ParseError {
                line: 3,
                kind: ParseErrorKind::NoInvoke { process: 1 }
            }
        );
    }

    #[test]
    fn process_may_invoke_again_after_info() {
        let events = vec![
            event(1, Kind::Invoke, F::Write, "k", json!(1), 1),
            event(1, Kind::Info, F::Write, "k", json!(1), 2),
            event(1, Kind::Invoke, F::Write, "k", json!(2), 3),
        ];
        let ops = pair(&events).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[1],
            Op {
                invoke_index: 2,
                completion_index: None
            }
        );
    }
}
