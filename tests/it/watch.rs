//! The Watch API against the real server binary: through the `etcd-client` crate (events
//! and their key-values, ranges, history replay, prev_kv, filters, several watchers on one
//! stream, cancel, atomic transactions, compaction, progress requests) and through
//! etcdctl 3.4's `watch` command (plain, --rev, --prefix, --prev-kv, -i).
//!
//! Expectations are etcd 3.4.23's: every test also passes with
//! `KEEL_TEST_SERVER=/usr/bin/etcd`. Every wait is bounded (10 s), and every etcdctl child
//! started here is killed by its own PID.

use crate::common;

use common::{connect, runtime, Server, Spawned};
use etcd_client::{
    Client, CompactionOptions, DeleteOptions, Event, EventType, GetOptions, Txn, TxnOp,
    WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// The next response on `ws`, within 10 s.
#[track_caller]
fn next(ws: &mut WatchStream) -> impl std::future::Future<Output = WatchResponse> + '_ {
    let at = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(WAIT, ws.message()).await {
            Err(_) => panic!("no watch response within {WAIT:?} (at {at})"),
            Ok(Err(e)) => panic!("watch stream error: {e:?} (at {at})"),
            Ok(Ok(None)) => panic!("watch stream ended (at {at})"),
            Ok(Ok(Some(r))) => r,
        }
    }
}

/// Asserts that nothing arrives on `ws` for `ms` milliseconds.
async fn quiet(ws: &mut WatchStream, ms: u64) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(ms), ws.message()).await {
        panic!("unexpected watch response: {r:?}");
    }
}

/// Opens a stream with one watcher and returns it with the watcher's id and the created
/// response's header revision.
async fn watch(c: &mut Client, key: &str, opts: Option<WatchOptions>) -> (WatchStream, i64, i64) {
    let mut ws = tokio::time::timeout(WAIT, c.watch(key, opts))
        .await
        .expect("watch call within 10 s")
        .expect("watch call");
    let r = next(&mut ws).await;
    assert!(r.created(), "first response is the created one: {r:?}");
    assert!(!r.canceled(), "{r:?}");
    assert!(r.events().is_empty(), "{r:?}");
    let rev = r
        .header()
        .expect("created response has a header")
        .revision();
    (ws, r.watch_id(), rev)
}

/// Reads responses until `n` events have arrived in total; returns the responses.
async fn responses_with(ws: &mut WatchStream, n: usize) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    let mut got = 0;
    while got < n {
        let r = next(ws).await;
        got += r.events().len();
        out.push(r);
    }
    assert_eq!(got, n, "more events than expected: {out:?}");
    out
}

async fn events(ws: &mut WatchStream, n: usize) -> Vec<Event> {
    responses_with(ws, n)
        .await
        .into_iter()
        .flat_map(|r| r.events().to_vec())
        .collect()
}

/// (type, key, value, create_revision, mod_revision, version)
type Ev = (&'static str, String, String, i64, i64, i64);

fn ev(e: &Event) -> Ev {
    let kv = e.kv().expect("an event has a kv");
    (
        match e.event_type() {
            EventType::Put => "PUT",
            EventType::Delete => "DELETE",
        },
        String::from_utf8_lossy(kv.key()).into_owned(),
        String::from_utf8_lossy(kv.value()).into_owned(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
    )
}

fn put(k: &str, v: &str, create: i64, m: i64, ver: i64) -> Ev {
    ("PUT", k.into(), v.into(), create, m, ver)
}

/// etcd's DELETE event: the key and the deletion's revision, everything else zero.
fn del(k: &str, m: i64) -> Ev {
    ("DELETE", k.into(), String::new(), 0, m, 0)
}

fn keys(evs: &[Event]) -> Vec<String> {
    evs.iter().map(|e| ev(e).1).collect()
}

/// (key, value, create_revision, mod_revision, version) of a prev_kv.
fn prev(e: &Event) -> Option<(String, String, i64, i64, i64)> {
    e.prev_kv().map(|kv| {
        (
            String::from_utf8_lossy(kv.key()).into_owned(),
            String::from_utf8_lossy(kv.value()).into_owned(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
        )
    })
}

fn header_rev(r: &WatchResponse) -> i64 {
    r.header().expect("watch response has a header").revision()
}

#[test]
fn put_and_delete_events() {
    let s = Server::start("w-basic", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let (mut ws, id, rev) = watch(&mut c, "foo", None).await;
        assert_eq!(rev, 1, "created header has the current revision");
        c.put("foo", "bar", None).await.unwrap(); // 2
        let r = next(&mut ws).await;
        assert_eq!(r.watch_id(), id);
        assert!(!r.created() && !r.canceled(), "{r:?}");
        assert_eq!(r.compact_revision(), 0);
        assert_eq!(header_rev(&r), 2);
        assert_eq!(
            r.events().iter().map(ev).collect::<Vec<_>>(),
            [put("foo", "bar", 2, 2, 1)]
        );
        assert!(r.events()[0].prev_kv().is_none(), "no prev_kv unless asked");
        assert_eq!(r.events()[0].kv().unwrap().lease(), 0);
        c.put("foo", "baz", None).await.unwrap(); // 3
        c.put("fo", "x", None).await.unwrap(); // 4: other keys are not watched
        c.put("foo0", "x", None).await.unwrap(); // 5
        c.delete("foo", None).await.unwrap(); // 6
        c.delete("foo", None).await.unwrap(); // deletes nothing: no revision, no event
        c.put("foo", "again", None).await.unwrap(); // 7: a new generation
        let rs = responses_with(&mut ws, 3).await;
        let evs: Vec<Ev> = rs.iter().flat_map(|r| r.events().iter().map(ev)).collect();
        assert_eq!(
            evs,
            [
                put("foo", "baz", 2, 3, 2),
                del("foo", 6),
                put("foo", "again", 7, 7, 1)
            ]
        );
        for r in &rs {
            assert_eq!(r.watch_id(), id);
            // One revision per response here; its header carries that revision.
            assert_eq!(
                header_rev(r),
                r.events().last().unwrap().kv().unwrap().mod_revision()
            );
        }
        quiet(&mut ws, 300).await;
    });
}

#[test]
fn prefix_range_from_key_and_all_keys() {
    let s = Server::start("w-ranges", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let (mut pre, _, _) = watch(&mut c, "p/", Some(WatchOptions::new().with_prefix())).await;
        let (mut rng, _, _) = watch(&mut c, "b", Some(WatchOptions::new().with_range("d"))).await;
        let (mut from, _, _) = watch(&mut c, "c", Some(WatchOptions::new().with_from_key())).await;
        let (mut all, _, _) = watch(&mut c, "", Some(WatchOptions::new().with_all_keys())).await;
        let order = [
            "p/1", "a", "b", "p", "bz", "c", "d", "p/2/x", "q", "p0", "p/",
        ];
        for k in order {
            c.put(k, "v", None).await.unwrap();
        }
        assert_eq!(keys(&events(&mut pre, 3).await), ["p/1", "p/2/x", "p/"]);
        assert_eq!(keys(&events(&mut rng, 3).await), ["b", "bz", "c"]);
        let from_c: Vec<&str> = order.iter().copied().filter(|k| *k >= "c").collect();
        assert_eq!(keys(&events(&mut from, from_c.len()).await), from_c);
        let evs = events(&mut all, order.len()).await;
        assert_eq!(keys(&evs), order);
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e.kv().unwrap().mod_revision(), i as i64 + 2);
        }
        for ws in [&mut pre, &mut rng, &mut from, &mut all] {
            quiet(ws, 200).await;
        }
    });
}

#[test]
fn start_revision_replays_history() {
    let s = Server::start("w-history", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        c.put("h", "1", None).await.unwrap(); // 2
        c.put("other", "x", None).await.unwrap(); // 3
        c.put("h", "2", None).await.unwrap(); // 4
        c.delete("h", None).await.unwrap(); // 5
        c.put("h", "3", None).await.unwrap(); // 6
        c.put("h", "4", None).await.unwrap(); // 7
        let all = [
            put("h", "1", 2, 2, 1),
            put("h", "2", 2, 4, 2),
            del("h", 5),
            put("h", "3", 6, 6, 1),
            put("h", "4", 6, 7, 2),
        ];
        for (start, skip) in [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (7, 4)] {
            let (mut ws, id, rev) = watch(
                &mut c,
                "h",
                Some(WatchOptions::new().with_start_revision(start)),
            )
            .await;
            assert_eq!(rev, 7, "created header has the current revision");
            let rs = responses_with(&mut ws, all.len() - skip).await;
            let evs: Vec<Ev> = rs.iter().flat_map(|r| r.events().iter().map(ev)).collect();
            assert_eq!(evs, all[skip..], "start_revision {start}");
            for r in &rs {
                assert_eq!(r.watch_id(), id);
                assert!(header_rev(r) >= r.events().last().unwrap().kv().unwrap().mod_revision());
            }
            quiet(&mut ws, 100).await;
        }
        // A start revision in the future waits for it; then live events follow history.
        let (mut fut, _, _) = watch(
            &mut c,
            "h",
            Some(WatchOptions::new().with_start_revision(9)),
        )
        .await;
        let (mut hist, _, _) = watch(
            &mut c,
            "h",
            Some(WatchOptions::new().with_start_revision(6)),
        )
        .await;
        c.put("h", "5", None).await.unwrap(); // 8
        quiet(&mut fut, 200).await;
        c.put("h", "6", None).await.unwrap(); // 9
        let e = events(&mut fut, 1).await;
        assert_eq!(ev(&e[0]), put("h", "6", 6, 9, 4));
        let e = events(&mut hist, 4).await;
        assert_eq!(
            e.iter()
                .map(|e| e.kv().unwrap().mod_revision())
                .collect::<Vec<_>>(),
            [6, 7, 8, 9]
        );
    });
}

#[test]
fn prev_kv_on_put_and_delete() {
    let s = Server::start("w-prevkv", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let (mut ws, _, _) = watch(&mut c, "k", Some(WatchOptions::new().with_prev_key())).await;
        c.put("k", "1", None).await.unwrap(); // 2
        c.put("k", "2", None).await.unwrap(); // 3
        c.delete("k", None).await.unwrap(); // 4
        c.put("k", "3", None).await.unwrap(); // 5
        let e = events(&mut ws, 4).await;
        assert_eq!(
            e.iter().map(ev).collect::<Vec<_>>(),
            [
                put("k", "1", 2, 2, 1),
                put("k", "2", 2, 3, 2),
                del("k", 4),
                put("k", "3", 5, 5, 1)
            ]
        );
        assert_eq!(prev(&e[0]), None, "a key's first put has no prev_kv");
        assert_eq!(prev(&e[1]), Some(("k".into(), "1".into(), 2, 2, 1)));
        assert_eq!(prev(&e[2]), Some(("k".into(), "2".into(), 2, 3, 2)));
        assert_eq!(prev(&e[3]), None, "a put after a delete has no prev_kv");
        // prev_kv also comes with replayed history.
        let (mut h, _, _) = watch(
            &mut c,
            "k",
            Some(WatchOptions::new().with_prev_key().with_start_revision(3)),
        )
        .await;
        let e = events(&mut h, 3).await;
        assert_eq!(prev(&e[0]), Some(("k".into(), "1".into(), 2, 2, 1)));
        assert_eq!(prev(&e[1]), Some(("k".into(), "2".into(), 2, 3, 2)));
        assert_eq!(prev(&e[2]), None);
    });
}

#[test]
fn filters_drop_puts_or_deletes() {
    let s = Server::start("w-filters", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let pre = || WatchOptions::new().with_prefix();
        let (mut no_put, _, _) = watch(
            &mut c,
            "f",
            Some(pre().with_filters([WatchFilterType::NoPut])),
        )
        .await;
        let (mut no_del, _, _) = watch(
            &mut c,
            "f",
            Some(pre().with_filters([WatchFilterType::NoDelete])),
        )
        .await;
        let (mut none, _, _) = watch(
            &mut c,
            "f",
            Some(pre().with_filters([WatchFilterType::NoPut, WatchFilterType::NoDelete])),
        )
        .await;
        c.put("f1", "a", None).await.unwrap(); // 2
        c.put("f2", "b", None).await.unwrap(); // 3
        c.delete("f1", None).await.unwrap(); // 4
        c.put("f1", "c", None).await.unwrap(); // 5
        c.delete("f", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap(); // 6
        let e = events(&mut no_put, 3).await;
        assert_eq!(
            e.iter().map(ev).collect::<Vec<_>>(),
            [del("f1", 4), del("f1", 6), del("f2", 6)]
        );
        let e = events(&mut no_del, 3).await;
        assert_eq!(
            e.iter().map(ev).collect::<Vec<_>>(),
            [
                put("f1", "a", 2, 2, 1),
                put("f2", "b", 3, 3, 1),
                put("f1", "c", 5, 5, 1)
            ]
        );
        quiet(&mut no_put, 200).await;
        quiet(&mut no_del, 100).await;
        quiet(&mut none, 100).await;
    });
}

#[test]
fn several_watchers_on_one_stream() {
    let s = Server::start("w-multi", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let (mut ws, id_a, _) = watch(&mut c, "a", None).await;
        ws.watch("b", None).await.unwrap();
        let r = next(&mut ws).await;
        assert!(r.created(), "{r:?}");
        let id_b = r.watch_id();
        ws.watch(
            "",
            Some(WatchOptions::new().with_all_keys().with_prev_key()),
        )
        .await
        .unwrap();
        let r = next(&mut ws).await;
        assert!(r.created(), "{r:?}");
        let id_all = r.watch_id();
        assert!(
            id_a != id_b && id_b != id_all && id_a != id_all,
            "distinct ids: {id_a} {id_b} {id_all}"
        );
        c.put("a", "1", None).await.unwrap(); // 2
        c.put("b", "2", None).await.unwrap(); // 3
        c.put("c", "3", None).await.unwrap(); // 4
        c.put("a", "4", None).await.unwrap(); // 5
                                              // Events for different watchers come in different responses, each with its id.
        let mut got: Vec<(i64, String, i64, bool)> = Vec::new();
        for r in responses_with(&mut ws, 7).await {
            for e in r.events() {
                got.push((r.watch_id(), ev(e).1, ev(e).4, e.prev_kv().is_some()));
            }
        }
        let of = |id: i64| {
            got.iter()
                .filter(|g| g.0 == id)
                .map(|g| (g.1.clone(), g.2, g.3))
                .collect::<Vec<_>>()
        };
        let s = |k: &str| k.to_string();
        assert_eq!(
            of(id_a),
            [(s("a"), 2, false), (s("a"), 5, false)],
            "{got:?}"
        );
        assert_eq!(of(id_b), [(s("b"), 3, false)], "{got:?}");
        assert_eq!(
            of(id_all),
            [
                (s("a"), 2, false),
                (s("b"), 3, false),
                (s("c"), 4, false),
                (s("a"), 5, true)
            ],
            "{got:?}"
        );
        assert_eq!(got.len(), 7, "{got:?}");

        // Cancel one: a canceled response for it, then nothing more for it.
        ws.cancel(id_a).await.unwrap();
        let r = next(&mut ws).await;
        assert!(r.canceled(), "{r:?}");
        assert_eq!(r.watch_id(), id_a);
        assert!(r.events().is_empty());
        assert_eq!(r.compact_revision(), 0);
        c.put("a", "5", None).await.unwrap(); // 6
        c.put("b", "6", None).await.unwrap(); // 7
        let mut got = Vec::new();
        for r in responses_with(&mut ws, 3).await {
            for e in r.events() {
                got.push((r.watch_id(), ev(e).1, ev(e).4));
            }
        }
        got.sort();
        let mut want = vec![(id_all, s("a"), 6), (id_all, s("b"), 7), (id_b, s("b"), 7)];
        want.sort();
        assert_eq!(got, want);
        // Canceling the others leaves the stream open and quiet.
        ws.cancel(id_b).await.unwrap();
        let r = next(&mut ws).await;
        assert!(r.canceled() && r.watch_id() == id_b, "{r:?}");
        ws.cancel(id_all).await.unwrap();
        let r = next(&mut ws).await;
        assert!(r.canceled() && r.watch_id() == id_all, "{r:?}");
        c.put("a", "7", None).await.unwrap();
        quiet(&mut ws, 300).await;
        // The stream still takes new watchers, with yet another id.
        ws.watch("a", None).await.unwrap();
        let r = next(&mut ws).await;
        assert!(r.created(), "{r:?}");
        assert!(![id_a, id_b, id_all].contains(&r.watch_id()), "{r:?}");
        let id = r.watch_id();
        c.put("a", "8", None).await.unwrap();
        let r = next(&mut ws).await;
        assert_eq!(r.watch_id(), id);
        assert_eq!(ev(&r.events()[0]).2, "8");
    });
}

#[test]
fn a_transaction_arrives_in_one_response() {
    let s = Server::start("w-txn", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        c.put("t/old", "o", None).await.unwrap(); // 2
        let (mut ws, id, _) = watch(&mut c, "t/", Some(WatchOptions::new().with_prefix())).await;
        let t = Txn::new().and_then([
            TxnOp::put("t/1", "a", None),
            TxnOp::put("t/2", "b", None),
            TxnOp::put("t/3", "c", None),
            TxnOp::put("u/outside", "d", None),
        ]);
        let tr = c.txn(t).await.unwrap();
        let rev = tr.header().unwrap().revision();
        assert_eq!(rev, 3);
        let r = next(&mut ws).await;
        assert_eq!(r.watch_id(), id);
        assert_eq!(header_rev(&r), 3);
        assert_eq!(
            r.events().iter().map(ev).collect::<Vec<_>>(),
            [
                put("t/1", "a", 3, 3, 1),
                put("t/2", "b", 3, 3, 1),
                put("t/3", "c", 3, 3, 1)
            ]
        );
        // A mixed transaction and a range delete: one response per revision each.
        let t = Txn::new().and_then([
            TxnOp::put("t/2", "bb", None),
            TxnOp::delete("t/old", None),
            TxnOp::put("t/4", "e", None),
        ]);
        c.txn(t).await.unwrap(); // 4
        c.delete("t/", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap(); // 5
        let rs = responses_with(&mut ws, 7).await;
        assert_eq!(rs.len(), 2, "{rs:?}");
        assert_eq!(
            rs[0].events().iter().map(ev).collect::<Vec<_>>(),
            [
                put("t/2", "bb", 3, 4, 2),
                del("t/old", 4),
                put("t/4", "e", 4, 4, 1)
            ]
        );
        assert_eq!(
            rs[1].events().iter().map(ev).collect::<Vec<_>>(),
            [del("t/1", 5), del("t/2", 5), del("t/3", 5), del("t/4", 5)]
        );
        // Replayed history keeps each revision in one response too.
        let (mut h, _, _) = watch(
            &mut c,
            "t/",
            Some(WatchOptions::new().with_prefix().with_start_revision(3)),
        )
        .await;
        let rs = responses_with(&mut h, 10).await;
        let mut seen = std::collections::BTreeMap::new();
        for r in &rs {
            let mut revs: Vec<i64> = r.events().iter().map(|e| ev(e).4).collect();
            revs.dedup();
            for rev in revs {
                assert!(
                    seen.insert(rev, ()).is_none(),
                    "revision {rev} split: {rs:?}"
                );
            }
        }
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [3, 4, 5]);
    });
}

#[test]
fn watch_from_a_compacted_revision_is_canceled() {
    let s = Server::start("w-compact", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        for i in 0..6 {
            c.put("c", format!("{i}"), None).await.unwrap(); // 2..=7
        }
        c.compact(5, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        // Below the compaction: created, then canceled with compact_revision.
        for (i, start) in [1, 2, 4].into_iter().enumerate() {
            let (mut ws, id, rev) = watch(
                &mut c,
                "c",
                Some(WatchOptions::new().with_start_revision(start)),
            )
            .await;
            assert_eq!(rev, 7 + i as i64);
            let r = next(&mut ws).await;
            assert_eq!(r.watch_id(), id);
            assert!(r.canceled(), "start {start}: {r:?}");
            assert_eq!(r.compact_revision(), 5, "start {start}: {r:?}");
            // (etcd 3.4 sends this one with header revision 0 and an empty cancel_reason;
            // neither is checked.)
            assert!(r.events().is_empty(), "{r:?}");
            c.put("c", "later", None).await.unwrap();
            quiet(&mut ws, 200).await;
        }
        // At the compaction revision itself: history from there on.
        let (mut ws, _, _) = watch(
            &mut c,
            "c",
            Some(WatchOptions::new().with_start_revision(5)),
        )
        .await;
        let e = events(&mut ws, 6).await;
        assert_eq!(
            e.iter()
                .map(|e| e.kv().unwrap().mod_revision())
                .collect::<Vec<_>>(),
            [5, 6, 7, 8, 9, 10]
        );
        assert_eq!(ev(&e[0]), put("c", "3", 2, 5, 4));
        // Several watchers on one stream: only the compacted one is canceled.
        ws.watch("c", Some(WatchOptions::new().with_start_revision(3)))
            .await
            .unwrap();
        let r = next(&mut ws).await;
        assert!(r.created(), "{r:?}");
        let old = r.watch_id();
        let r = next(&mut ws).await;
        assert!(
            r.canceled() && r.watch_id() == old && r.compact_revision() == 5,
            "{r:?}"
        );
        c.put("c", "live", None).await.unwrap(); // 11
        let r = next(&mut ws).await;
        assert!(!r.canceled() && r.watch_id() != old, "{r:?}");
        assert_eq!(ev(&r.events()[0]).4, 11);
    });
}

#[test]
fn progress_requests_and_progress_notify() {
    let s = Server::start("w-progress", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        c.put("x", "1", None).await.unwrap(); // 2
        let (mut ws, id, _) = watch(
            &mut c,
            "p",
            Some(WatchOptions::new().with_prefix().with_progress_notify()),
        )
        .await;
        c.put("x", "2", None).await.unwrap(); // 3: not watched
        c.put("y", "3", None).await.unwrap(); // 4: not watched
        ws.request_progress().await.unwrap();
        let r = next(&mut ws).await;
        assert!(r.events().is_empty(), "{r:?}");
        assert!(!r.created() && !r.canceled(), "{r:?}");
        assert_eq!(header_rev(&r), 4, "progress carries the current revision");
        // etcd 3.4 answers for no watcher in particular: watch_id -1 (clientv3's
        // InvalidWatchID), which Go clients broadcast to all their watchers.
        assert_eq!(r.watch_id(), -1, "{r:?}");
        // progress_notify watchers still get their events.
        c.put("p1", "v", None).await.unwrap(); // 5
        let r = next(&mut ws).await;
        assert_eq!(r.watch_id(), id);
        assert_eq!(ev(&r.events()[0]), put("p1", "v", 5, 5, 1));
        ws.request_progress().await.unwrap();
        let r = next(&mut ws).await;
        assert!(r.events().is_empty(), "{r:?}");
        assert_eq!(header_rev(&r), 5);
        // A progress request on a stream with no watchers is answered too.
        ws.cancel(id).await.unwrap();
        let r = next(&mut ws).await;
        assert!(r.canceled(), "{r:?}");
        c.put("z", "z", None).await.unwrap(); // 6
        ws.request_progress().await.unwrap();
        let r = next(&mut ws).await;
        assert!(r.events().is_empty(), "{r:?}");
        assert_eq!(header_rev(&r), 6);
        // The current revision per Range agrees.
        let g = c.get("z", Some(GetOptions::new())).await.unwrap();
        assert_eq!(g.header().unwrap().revision(), 6);
    });
}

// ---------------------------------------------------------------------------------------
// etcdctl watch

/// An `etcdctl watch ...` child (see `common::Spawned`).
struct Watcher(Spawned);

impl Watcher {
    fn spawn(s: &Server, args: &[&str]) -> Watcher {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        Watcher(s.etcdctl_spawn(&all))
    }

    /// Stdout, then stderr (if any) marked `<stderr>…</stderr>`, so an exact comparison
    /// also fails on an error message.
    fn output(&self) -> String {
        let (out, err) = (self.0.stdout(), self.0.stderr());
        if err.is_empty() {
            out
        } else {
            format!("{out}<stderr>{err}</stderr>")
        }
    }

    /// Waits (10 s at most) until the output contains `text`; returns the output.
    #[track_caller]
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let o = self.output();
            if o.contains(text) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl watch printed no {text:?} in {WAIT:?}; output: {o:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes sure the watcher is established: puts `key` (which it must see) until an
    /// event shows, then a last "synced" put; returns the output length after it, so later
    /// output can be compared exactly.
    #[track_caller]
    fn sync(&self, s: &Server, key: &str) -> usize {
        let deadline = Instant::now() + WAIT;
        let mut i = 0;
        while !self.output().contains("sync-") {
            assert!(
                Instant::now() < deadline,
                "etcdctl watch never saw a put to {key}: {:?}",
                self.output()
            );
            s.etcdctl(&["put", key, &format!("sync-{i}")])
                .expect_ok("OK\n");
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        s.etcdctl(&["put", key, "synced"]).expect_ok("OK\n");
        let o = self.wait_for("synced\n");
        o.find("synced\n").unwrap() + "synced\n".len()
    }

    /// Waits until the output from `from` on is exactly `want` (and stays so briefly).
    #[track_caller]
    fn expect_from(&self, from: usize, want: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let o = self.output();
            if o.len() >= from + want.len() || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(200));
                let o = self.output();
                assert_eq!(&o[from.min(o.len())..], want, "whole output: {o:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stdin(&mut self, line: &str) {
        self.0.stdin(line);
    }
}

#[test]
fn etcdctl_watch_key() {
    let s = Server::start("w-ctl", &[]);
    let w = Watcher::spawn(&s, &["key"]);
    let at = w.sync(&s, "key");
    s.etcdctl(&["put", "key", "value"]).expect_ok("OK\n");
    s.etcdctl(&["put", "key2", "other"]).expect_ok("OK\n");
    s.etcdctl(&["del", "key"]).expect_ok("1\n");
    s.etcdctl(&["put", "key", "v 2"]).expect_ok("OK\n");
    w.expect_from(at, "PUT\nkey\nvalue\nDELETE\nkey\n\nPUT\nkey\nv 2\n");
}

#[test]
fn etcdctl_watch_rev_replays() {
    let s = Server::start("w-ctl-rev", &[]);
    s.etcdctl(&["put", "key", "a"]).expect_ok("OK\n"); // 2
    s.etcdctl(&["put", "zzz", "a"]).expect_ok("OK\n"); // 3
    s.etcdctl(&["put", "key", "b"]).expect_ok("OK\n"); // 4
    s.etcdctl(&["del", "key"]).expect_ok("1\n"); // 5
    let w = Watcher::spawn(&s, &["--rev", "2", "key"]);
    w.expect_from(0, "PUT\nkey\na\nPUT\nkey\nb\nDELETE\nkey\n\n");
    s.etcdctl(&["put", "key", "c"]).expect_ok("OK\n"); // 6
    w.expect_from(0, "PUT\nkey\na\nPUT\nkey\nb\nDELETE\nkey\n\nPUT\nkey\nc\n");
    drop(w);
    // --rev 4 with --prev-kv: history with previous values.
    let w = Watcher::spawn(&s, &["--rev=4", "--prev-kv", "key"]);
    w.expect_from(
        0,
        "PUT\nkey\na\nkey\nb\nDELETE\nkey\nb\nkey\n\nPUT\nkey\nc\n",
    );
    drop(w);
    // A compacted start revision: etcdctl reports it and exits.
    s.etcdctl(&["compact", "4"])
        .expect_ok("compacted revision 4\n");
    let mut w = Watcher::spawn(&s, &["--rev", "2", "key"]);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = w.0.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl watch kept running: {:?}",
            w.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!status.success());
    let o = w.output();
    assert!(o.contains("required revision has been compacted"), "{o:?}");
}

#[test]
fn etcdctl_watch_prefix_and_prev_kv() {
    let s = Server::start("w-ctl-prefix", &[]);
    let w = Watcher::spawn(&s, &["--prefix", "pre/"]);
    let at = w.sync(&s, "pre/sync");
    s.etcdctl(&["put", "pre/a", "1"]).expect_ok("OK\n");
    s.etcdctl(&["put", "pre", "no"]).expect_ok("OK\n");
    s.etcdctl(&["put", "pre/b/c", "2"]).expect_ok("OK\n");
    s.etcdctl(&["del", "--prefix", "pre/"]).expect_ok("3\n");
    w.expect_from(
        at,
        "PUT\npre/a\n1\nPUT\npre/b/c\n2\nDELETE\npre/a\n\nDELETE\npre/b/c\n\nDELETE\npre/sync\n\n",
    );
    drop(w);

    let w = Watcher::spawn(&s, &["--prev-kv", "pk"]);
    let at = w.sync(&s, "pk");
    s.etcdctl(&["put", "pk", "new"]).expect_ok("OK\n");
    s.etcdctl(&["del", "pk"]).expect_ok("1\n");
    s.etcdctl(&["put", "pk", "fresh"]).expect_ok("OK\n");
    // prev then current; a delete prints the previous kv, then the key with no value.
    w.expect_from(
        at,
        "PUT\npk\nsynced\npk\nnew\nDELETE\npk\nnew\npk\n\nPUT\npk\nfresh\n",
    );
}

#[test]
fn etcdctl_watch_interactive() {
    let s = Server::start("w-ctl-i", &[]);
    s.etcdctl(&["put", "ik", "old"]).expect_ok("OK\n"); // 2
    let mut w = Watcher::spawn(&s, &["-i"]);
    w.stdin("watch ik\n");
    let at = w.sync(&s, "ik");
    s.etcdctl(&["put", "ik", "v1"]).expect_ok("OK\n");
    w.expect_from(at, "PUT\nik\nv1\n");
    // A second watch on the same interactive session, with flags, replaying history.
    w.stdin("watch --rev 2 --prev-kv ik\n");
    let o = w.wait_for("PUT\nik\nold\n");
    let at2 = o.find("PUT\nik\nold\n").unwrap();
    assert!(at2 >= at + "PUT\nik\nv1\n".len(), "{o:?}");
}
