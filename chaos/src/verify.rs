//! The checks at the end of a run, against the cluster's final history (every event
//! under `/chaos/` from revision 1, read by one Watch after healing; the members agree on
//! it when their HashKV agree):
//! - lost writes: every acknowledged put or cas is in the history at the revision its
//!   response carried, with its value;
//! - watches: each watcher received exactly the history's events in its range from its
//!   start revision to the last revision it saw, once each, in order, each revision whole
//!   in one response, across the streams it resumed;
//! - serializable reads: never from the future (a value written after the read ended, a
//!   revision beyond the history), always a consistent snapshot at their own header
//!   revision, and never going backwards on one member within one process life (a member
//!   restarted after a crash may come back behind what it served: raft does not sync a
//!   hard state whose only change is the commit index, so entries it had applied are
//!   applied again only once the leader repeats the commit; etcd does the same);
//! - leases: keys of a revoked lease are gone by the revoke's revision;
//! - locks: at the revision a Lock response carried, no earlier waiter's key is alive;
//! - the history itself: revisions are contiguous (each has an event).
//!
//! Linearizability (per key) and HashKV are run by the caller (`run.rs`).

use crate::history::{Event, Kind, F};
use crate::record::*;
use std::collections::HashMap;

/// One event of the final history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HEvent {
    pub revision: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
    pub create_revision: i64,
}

pub struct FinalHistory {
    /// In revision order.
    pub events: Vec<HEvent>,
    by_key: HashMap<String, Vec<usize>>,
}

impl FinalHistory {
    pub fn new(events: Vec<HEvent>) -> FinalHistory {
        let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            by_key.entry(e.key.clone()).or_default().push(i);
        }
        FinalHistory { events, by_key }
    }

    pub fn last_revision(&self) -> i64 {
        self.events.last().map_or(1, |e| e.revision)
    }

    /// The key's latest event at or before `revision` if it is a put (the key's state).
    pub fn state_at(&self, key: &str, revision: i64) -> Option<&HEvent> {
        let idx = self.by_key.get(key)?;
        let n = idx.partition_point(|&i| self.events[i].revision <= revision);
        let e = &self.events[*idx.get(n.checked_sub(1)?)?];
        e.value.as_ref().map(|_| e)
    }

    /// The events of one revision.
    pub fn at(&self, revision: i64) -> &[HEvent] {
        let lo = self.events.partition_point(|e| e.revision < revision);
        let hi = self.events.partition_point(|e| e.revision <= revision);
        &self.events[lo..hi]
    }

    /// Every key ever written with `prefix`.
    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a String> {
        self.by_key.keys().filter(move |k| k.starts_with(prefix))
    }
}

/// What the checks found: counts and one line per violation.
#[derive(Default, Debug)]
pub struct Findings {
    pub lost_acked: Vec<String>,
    pub watch: Vec<String>,
    pub serializable: Vec<String>,
    pub lease: Vec<String>,
    pub lock: Vec<String>,
    pub history: Vec<String>,
}

pub fn check_all(
    h: &FinalHistory,
    rec: &Recording,
    lives: &[(usize, i64)],
    first_revision: i64,
) -> Findings {
    Findings {
        lost_acked: lost_writes(h, &rec.writes),
        watch: rec
            .watches
            .iter()
            .filter_map(|w| watch_violation(h, w))
            .collect(),
        serializable: serializable(h, &rec.history, &rec.ser_reads, lives),
        lease: leases(h, &rec.leases),
        lock: locks(h, &rec.locks),
        history: contiguity(h, first_revision),
    }
}

fn lost_writes(h: &FinalHistory, writes: &[AckedWrite]) -> Vec<String> {
    writes
        .iter()
        .filter(|w| {
            !h.at(w.revision)
                .iter()
                .any(|e| e.key == w.key && e.value.as_deref() == Some(w.value.as_str()))
        })
        .map(|w| {
            let there: Vec<String> = h
                .at(w.revision)
                .iter()
                .map(|e| format!("{}={:?}", e.key, e.value))
                .collect();
            format!(
                "acknowledged put {}={} at revision {} (through m{}, at {:.3}s) is not in the history; revision {} holds {:?}",
                w.key,
                w.value,
                w.revision,
                w.slot,
                w.complete_ns as f64 / 1e9,
                w.revision,
                there
            )
        })
        .collect()
}

/// The first problem with one watcher, if any.
fn watch_violation(h: &FinalHistory, w: &WatchLog) -> Option<String> {
    let got: Vec<&WatchEvent> = w
        .segments
        .iter()
        .flat_map(|s| s.responses.iter().flatten())
        .collect();
    let ctx = || {
        format!(
            "watch #{} [{}, {}) from {}",
            w.id, w.key, w.range_end, w.start_revision
        )
    };
    for s in &w.segments {
        if let Some(first) = s.responses.first().and_then(|r| r.first()) {
            if first.revision < s.start_revision {
                return Some(format!(
                    "{}: a stream asked to start at {} on m{} delivered revision {} first",
                    ctx(),
                    s.start_revision,
                    s.slot,
                    first.revision
                ));
            }
        }
        for pair in s.responses.windows(2) {
            let last = pair[0].last().map_or(0, |e| e.revision);
            let next = pair[1].first().map_or(i64::MAX, |e| e.revision);
            if next <= last {
                return Some(format!(
                    "{}: on m{}, revision {next} arrived after revision {last} (split across responses or out of order)",
                    ctx(),
                    s.slot
                ));
            }
        }
    }
    let last = got.last().map(|e| e.revision)?;
    let expected: Vec<WatchEvent> = h
        .events
        .iter()
        .filter(|e| e.revision >= w.start_revision && e.revision <= last && w.matches(&e.key))
        .map(|e| WatchEvent {
            revision: e.revision,
            key: e.key.clone(),
            value: e.value.clone(),
        })
        .collect();
    for (i, want) in expected.iter().enumerate() {
        match got.get(i) {
            Some(g) if *g == want => {}
            Some(g) => {
                return Some(format!(
                    "{}: event #{i} is {}@{} {:?}, the history has {}@{} {:?} there ({} events received, {} expected)",
                    ctx(),
                    g.key,
                    g.revision,
                    g.value,
                    want.key,
                    want.revision,
                    want.value,
                    got.len(),
                    expected.len()
                ))
            }
            None => unreachable!("the last received revision bounds the expected events"),
        }
    }
    if got.len() > expected.len() {
        let g = got[expected.len()];
        return Some(format!(
            "{}: received {}@{} {:?} which the history does not hold (duplicate or invented)",
            ctx(),
            g.key,
            g.revision,
            g.value
        ));
    }
    None
}

fn serializable(
    h: &FinalHistory,
    history: &[Event],
    reads: &[SerRead],
    lives: &[(usize, i64)],
) -> Vec<String> {
    let mut out = Vec::new();
    // When each value's write was invoked (values are unique).
    let mut invoked: HashMap<String, i64> = HashMap::new();
    for e in history.iter().filter(|e| e.kind == Kind::Invoke) {
        let v = match e.f {
            F::Write => &e.value,
            F::Cas => match &e.value {
                serde_json::Value::Array(a) if a.len() == 2 => &a[1],
                _ => continue,
            },
            F::Read => continue,
        };
        invoked.insert(value_text(v), e.time_ns);
    }
    let last = h.last_revision();
    for r in reads {
        let read = || {
            format!(
                "serializable read of {} on m{} at {:.3}s–{:.3}s (header revision {}, got {:?})",
                r.key,
                r.slot,
                r.invoke_ns as f64 / 1e9,
                r.complete_ns as f64 / 1e9,
                r.header_revision,
                r.kv
            )
        };
        if r.header_revision > last {
            out.push(format!(
                "{}: beyond the history's last revision {last}",
                read()
            ));
            continue;
        }
        if let Some((v, _)) = &r.kv {
            if let Some(&t) = invoked.get(v) {
                if t > r.complete_ns {
                    out.push(format!(
                        "{}: from the future: that value's write was invoked at {:.3}s",
                        read(),
                        t as f64 / 1e9
                    ));
                    continue;
                }
            }
        }
        let want = h
            .state_at(&r.key, r.header_revision)
            .map(|e| (e.value.clone().unwrap_or_default(), e.revision));
        if want != r.kv {
            out.push(format!(
                "{}: not the state at its own revision, which is {want:?}",
                read()
            ));
        }
    }
    // Never backwards on one member: a read invoked after another completed (same slot,
    // same process life) carries a header revision at least as high.
    let incarnation =
        |slot: usize, t: i64| lives.iter().filter(|(s, w)| *s == slot && *w < t).count();
    let mut groups: HashMap<(usize, usize), Vec<&SerRead>> = HashMap::new();
    for r in reads {
        groups
            .entry((r.slot, incarnation(r.slot, r.invoke_ns)))
            .or_default()
            .push(r);
    }
    for ((slot, _), mut by_invoke) in groups {
        let mut by_complete = by_invoke.clone();
        by_invoke.sort_by_key(|r| r.invoke_ns);
        by_complete.sort_by_key(|r| r.complete_ns);
        let mut done = 0;
        let mut highest: Option<&SerRead> = None;
        for b in by_invoke {
            while done < by_complete.len() && by_complete[done].complete_ns < b.invoke_ns {
                let a = by_complete[done];
                if highest.is_none_or(|x| a.header_revision > x.header_revision) {
                    highest = Some(a);
                }
                done += 1;
            }
            if let Some(a) = highest {
                if b.header_revision < a.header_revision {
                    out.push(format!(
                        "serializable reads on m{slot} went backwards: revision {} (client {}'s read of {} ended {:.6}s) then revision {} (client {}'s read of {} began {:.6}s)",
                        a.header_revision,
                        a.client,
                        a.key,
                        a.complete_ns as f64 / 1e9,
                        b.header_revision,
                        b.client,
                        b.key,
                        b.invoke_ns as f64 / 1e9
                    ));
                }
            }
        }
    }
    out
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn leases(h: &FinalHistory, leases: &[LeaseLog]) -> Vec<String> {
    let mut out = Vec::new();
    for l in leases {
        let Some(rev) = l.revoked_revision else {
            continue;
        };
        for k in &l.keys {
            if let Some(e) = h.state_at(k, rev) {
                out.push(format!(
                    "lease {:x} was revoked at revision {rev} but its key {k} (put at {}) is still there then",
                    l.id, e.revision
                ));
            }
        }
    }
    out
}

fn locks(h: &FinalHistory, locks: &[LockLog]) -> Vec<String> {
    let mut out = Vec::new();
    for l in locks {
        let prefix = format!("{}/", l.name);
        let mine = h.by_key.get(&l.key).and_then(|idx| {
            idx.iter()
                .map(|&i| &h.events[i])
                .find(|e| e.value.is_some())
        });
        let Some(mine) = mine else {
            out.push(format!(
                "lock {} granted with key {} at revision {}, but that key never existed",
                l.name, l.key, l.revision
            ));
            continue;
        };
        for other in h.keys_with_prefix(&prefix) {
            if *other == l.key {
                continue;
            }
            if let Some(e) = h.state_at(other, l.revision) {
                if e.create_revision < mine.create_revision {
                    out.push(format!(
                        "lock {} granted to {} (created at {}) at revision {} through m{} while the earlier waiter {} (created at {}) still held its key",
                        l.name, l.key, mine.create_revision, l.revision, l.slot, other, e.create_revision
                    ));
                }
            }
        }
    }
    out
}

/// Every revision from the first one written to the last has at least one event.
fn contiguity(h: &FinalHistory, first_revision: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut expect = first_revision;
    for e in &h.events {
        if e.revision > expect {
            out.push(format!(
                "the history has no event for revisions {expect}..{}",
                e.revision - 1
            ));
        }
        expect = expect.max(e.revision + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: i64, key: &str, v: &str, create: i64) -> HEvent {
        HEvent {
            revision: rev,
            key: key.into(),
            value: Some(v.into()),
            create_revision: create,
        }
    }

    fn del(rev: i64, key: &str) -> HEvent {
        HEvent {
            revision: rev,
            key: key.into(),
            value: None,
            create_revision: 0,
        }
    }

    fn history() -> FinalHistory {
        FinalHistory::new(vec![
            put(2, "/chaos/r/a", "1", 2),
            put(3, "/chaos/r/b", "2", 3),
            put(4, "/chaos/r/a", "3", 2),
            del(5, "/chaos/r/b"),
        ])
    }

    fn ack(key: &str, value: &str, revision: i64) -> AckedWrite {
        AckedWrite {
            key: key.into(),
            value: value.into(),
            revision,
            slot: 0,
            complete_ns: 0,
        }
    }

    #[test]
    fn state_at_follows_puts_and_deletes() {
        let h = history();
        assert_eq!(h.state_at("/chaos/r/a", 1), None);
        assert_eq!(
            h.state_at("/chaos/r/a", 3).unwrap().value.as_deref(),
            Some("1")
        );
        assert_eq!(
            h.state_at("/chaos/r/a", 9).unwrap().value.as_deref(),
            Some("3")
        );
        assert!(h.state_at("/chaos/r/b", 4).is_some());
        assert_eq!(h.state_at("/chaos/r/b", 5), None);
        assert_eq!(h.at(4).len(), 1);
    }

    #[test]
    fn a_write_missing_at_its_revision_is_lost() {
        let h = history();
        assert!(lost_writes(&h, &[ack("/chaos/r/a", "3", 4)]).is_empty());
        assert_eq!(lost_writes(&h, &[ack("/chaos/r/a", "3", 3)]).len(), 1);
        assert_eq!(lost_writes(&h, &[ack("/chaos/r/a", "9", 4)]).len(), 1);
    }

    fn ev(rev: i64, key: &str, v: Option<&str>) -> WatchEvent {
        WatchEvent {
            revision: rev,
            key: key.into(),
            value: v.map(str::to_string),
        }
    }

    fn watch(start: i64, responses: Vec<Vec<Vec<WatchEvent>>>) -> WatchLog {
        WatchLog {
            id: 1,
            key: "/chaos/r/".into(),
            range_end: "/chaos/r0".into(),
            start_revision: start,
            segments: responses
                .into_iter()
                .map(|r| WatchSegment {
                    slot: 0,
                    start_revision: r
                        .first()
                        .and_then(|x| x.first())
                        .map_or(start, |e| e.revision),
                    created: true,
                    responses: r,
                    end: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn watchers_must_see_every_event_once_in_order() {
        let h = history();
        let a2 = ev(2, "/chaos/r/a", Some("1"));
        let b3 = ev(3, "/chaos/r/b", Some("2"));
        let a4 = ev(4, "/chaos/r/a", Some("3"));
        let b5 = ev(5, "/chaos/r/b", None);
        // Whole, and resumed across two streams.
        let ok = watch(
            2,
            vec![vec![
                vec![a2.clone(), b3.clone()],
                vec![a4.clone(), b5.clone()],
            ]],
        );
        assert_eq!(watch_violation(&h, &ok), None);
        let resumed = watch(
            2,
            vec![vec![vec![a2.clone()]], vec![vec![b3.clone(), a4.clone()]]],
        );
        assert_eq!(watch_violation(&h, &resumed), None);
        // A gap, a duplicate, a wrong value, a revision split across responses.
        let gap = watch(2, vec![vec![vec![a2.clone(), a4.clone()]]]);
        assert!(watch_violation(&h, &gap).is_some());
        let dup = watch(
            2,
            vec![vec![vec![a2.clone()]], vec![vec![a2.clone(), b3.clone()]]],
        );
        assert!(watch_violation(&h, &dup).is_some());
        let wrong = watch(
            2,
            vec![vec![vec![a2.clone(), ev(3, "/chaos/r/b", Some("7"))]]],
        );
        assert!(watch_violation(&h, &wrong).is_some());
        let split = watch(3, vec![vec![vec![b3.clone()], vec![b3.clone()]]]);
        assert!(watch_violation(&h, &split).is_some());
        // Nothing received: nothing to judge.
        assert_eq!(watch_violation(&h, &watch(2, vec![vec![]])), None);
    }

    fn ser(slot: usize, key: &str, kv: Option<(&str, i64)>, rev: i64, t: (i64, i64)) -> SerRead {
        SerRead {
            slot,
            client: 0,
            key: key.into(),
            kv: kv.map(|(v, r)| (v.to_string(), r)),
            header_revision: rev,
            invoke_ns: t.0,
            complete_ns: t.1,
        }
    }

    #[test]
    fn serializable_reads_are_snapshots_that_never_go_back() {
        let h = history();
        let good = [
            ser(0, "/chaos/r/a", Some(("1", 2)), 3, (0, 10)),
            ser(0, "/chaos/r/a", Some(("3", 4)), 4, (20, 30)),
            // Concurrent with the one above: may see less.
            ser(0, "/chaos/r/b", Some(("2", 3)), 3, (25, 35)),
        ];
        assert!(serializable(&h, &[], &good, &[]).is_empty());
        let back = [
            ser(1, "/chaos/r/a", Some(("3", 4)), 4, (0, 10)),
            ser(1, "/chaos/r/a", Some(("1", 2)), 3, (20, 30)),
        ];
        assert_eq!(serializable(&h, &[], &back, &[]).len(), 1);
        // The same, but the member was restarted between them: a new process life.
        assert!(serializable(&h, &[], &back, &[(1, 15)]).is_empty());
        let not_snapshot = [ser(0, "/chaos/r/a", Some(("1", 2)), 4, (0, 10))];
        assert_eq!(serializable(&h, &[], &not_snapshot, &[]).len(), 1);
        let beyond = [ser(0, "/chaos/r/a", Some(("3", 4)), 9, (0, 10))];
        assert_eq!(serializable(&h, &[], &beyond, &[]).len(), 1);
        let future_write = [Event {
            process: 0,
            kind: Kind::Invoke,
            f: F::Write,
            key: "/chaos/r/a".into(),
            value: serde_json::Value::from(3),
            time_ns: 50,
        }];
        let early = [ser(0, "/chaos/r/a", Some(("3", 4)), 4, (0, 10))];
        assert_eq!(serializable(&h, &future_write, &early, &[]).len(), 1);
    }

    #[test]
    fn revoked_leases_keys_and_lock_order() {
        let h = FinalHistory::new(vec![
            put(2, "/chaos/lease/1/0", "x", 2),
            put(3, "/chaos/lock/0/a", "", 3),
            put(4, "/chaos/lock/0/b", "", 4),
            del(5, "/chaos/lease/1/0"),
            del(6, "/chaos/lock/0/a"),
        ]);
        let lease = |rev| LeaseLog {
            id: 1,
            ttl_s: 5,
            keys: vec!["/chaos/lease/1/0".into()],
            revoked_revision: Some(rev),
        };
        assert!(leases(&h, &[lease(5)]).is_empty());
        assert_eq!(leases(&h, &[lease(4)]).len(), 1);
        let lock = |key: &str, rev| LockLog {
            name: "/chaos/lock/0".into(),
            key: key.into(),
            revision: rev,
            slot: 0,
        };
        assert!(locks(
            &h,
            &[lock("/chaos/lock/0/a", 3), lock("/chaos/lock/0/b", 6)]
        )
        .is_empty());
        // b granted while a (created earlier) still held its key.
        assert_eq!(locks(&h, &[lock("/chaos/lock/0/b", 5)]).len(), 1);
        assert_eq!(locks(&h, &[lock("/chaos/lock/0/zz", 5)]).len(), 1);
        assert!(contiguity(&h, 2).is_empty());
        assert_eq!(
            contiguity(
                &FinalHistory::new(vec![put(2, "k", "v", 2), put(5, "k", "w", 2)]),
                2
            )
            .len(),
            1
        );
    }
}
