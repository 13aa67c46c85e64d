//! The recorded history: one JSON object per line, Jepsen-style.
//!
//! ```text
//! {"process": 3, "type": "invoke", "f": "write", "key": "k7", "value": 41, "time": 1200}
//! {"process": 3, "type": "ok",     "f": "write", "key": "k7", "value": 41, "time": 1900}
//! ```
//! - `type`: `invoke` starts an operation of `process`; `ok` (it took effect, and a read's
//!   value is the value read), `fail` (it did not take effect) or `info` (unknown: it may
//!   take effect at any time after its invoke, or never) completes it.
//! - `f`: `read` (invoke value null; ok value is what was read, null for a missing key),
//!   `write` (value written), `cas` (value `[expected, new]`).
//! - `time`: nanoseconds, any origin, non-decreasing along the file is not required.
//! A process has at most one operation outstanding; an `info` ends it (the process then
//! may invoke again: the harness gives it a new process number, as Jepsen does).

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
