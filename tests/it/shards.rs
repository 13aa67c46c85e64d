//! Key-range shards through a real client: one server with two shards split at "m"
//! (`--cores 2 --shard-split-keys m`) and one with a single shard (`--cores 1`) get the
//! same writes; every Range — point reads on each shard, ranges across the split, every
//! sort target and order, limits, historical revisions, keys-only, count-only, filters,
//! serializable and linearizable — must answer the same on both.
//! Keel only (the flags are Keel's); skipped with `KEEL_TEST_SERVER`.

use crate::common;

use common::{is_keel, Rng, Server};
use etcd_client::{
    Client, DeleteOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use std::time::Duration;

fn key(r: &mut Rng) -> String {
    let letters = b"adhlmnrtz";
    format!("{}{:02}", letters[r.below(9) as usize] as char, r.below(12))
}

type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64);

fn flat(r: &etcd_client::GetResponse) -> (Vec<Kv>, i64, bool, i64) {
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect();
    (kvs, r.count(), r.more(), r.header().unwrap().revision())
}

/// A random Get: point, from-key, prefix, all or a range (starting at keys `key` makes),
/// with a random limit, sort, revision at most 15 below `current`, keys-only, count-only,
/// filter and consistency. Returns the key, the options and a description.
fn random_get(
    r: &mut Rng,
    current: i64,
    key: fn(&mut Rng) -> String,
) -> (String, GetOptions, String) {
    let start = key(r);
    let mut o = GetOptions::new();
    let (k, mut desc) = match r.below(5) {
        0 => (start.clone(), "point".to_string()),
        1 => {
            o = o.with_from_key();
            (start.clone(), "from".into())
        }
        2 => {
            o = o.with_prefix();
            let cut = start.len() - 1 - r.below(2) as usize;
            (start[..cut].to_string(), "prefix".into())
        }
        3 => {
            o = o.with_all_keys();
            (String::new(), "all".into())
        }
        _ => {
            let end = key(r);
            o = o.with_range(end.clone());
            (start.clone(), format!("range ..{end}"))
        }
    };
    let limit = [0, 1, 3, 7][r.below(4) as usize];
    o = o.with_limit(limit);
    let target = [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ][r.below(5) as usize];
    let order = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][r.below(3) as usize];
    o = o.with_sort(target, order);
    desc += &format!(" limit {limit} {target:?} {order:?}");
    if r.below(3) == 0 {
        o = o.with_revision(current - r.below(15) as i64);
    }
    if r.below(4) == 0 {
        o = o.with_keys_only();
    }
    if r.below(8) == 0 {
        o = o.with_count_only();
    }
    if r.below(6) == 0 {
        o = o.with_min_mod_revision(current - 30);
    }
    if r.below(2) == 0 {
        o = o.with_serializable();
    }
    (k, o, desc)
}

#[test]
fn ranges_over_two_shards_equal_one_shard() {
    if !is_keel() {
        return;
    }
    // This machine may have fewer cores; --cores must not exceed them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!("one core: nothing to split");
        return;
    }
    let two = Server::start("shards-two", &["--cores", "2", "--shard-split-keys", "m"]);
    let one = Server::start("shards-one", &["--cores", "1"]);
    let rt = common::runtime();
    rt.block_on(async {
        let mut a = Client::connect([two.endpoint()], None).await.unwrap();
        let mut b = Client::connect([one.endpoint()], None).await.unwrap();
        let mut r = Rng(0x2545f4914f6cdd1d);
        let mut checked = 0;
        for round in 0..20 {
            for _ in 0..15 {
                let k = key(&mut r);
                if r.below(8) == 0 {
                    a.delete(k.clone(), None).await.unwrap();
                    b.delete(k, None).await.unwrap();
                } else {
                    let v = format!("v{}", r.below(100));
                    a.put(k.clone(), v.clone(), None).await.unwrap();
                    b.put(k, v, None).await.unwrap();
                }
            }
            if round == 10 {
                let rev = a.get("a", None).await.unwrap().header().unwrap().revision() - 20;
                a.compact(rev, None).await.unwrap();
                b.compact(rev, None).await.unwrap();
            }
            let current = a.get("a", None).await.unwrap().header().unwrap().revision();
            for _ in 0..25 {
                let (k, o, desc) = random_get(&mut r, current, key);
                let got = a.get(k.clone(), Some(o.clone())).await;
                let want = b.get(k.clone(), Some(o)).await;
                match (got, want) {
                    (Ok(g), Ok(w)) => {
                        assert_eq!(flat(&g), flat(&w), "{k} {desc}")
                    }
                    (Err(g), Err(w)) => assert_eq!(g.to_string(), w.to_string()),
                    (g, w) => panic!("{k} {desc}: two shards {g:?}, one shard {w:?}"),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 500);
    });
}

/// Linearizable reads on other connections (so, on this machine, on other cores than the
/// writer's) always see a write once it is acknowledged; serializable ones on the writer's
/// own connection do too.
#[test]
fn acknowledged_writes_are_visible_to_linearizable_reads_everywhere() {
    let s = Server::start("shards-lin", &[]);
    let rt = common::runtime();
    rt.block_on(async {
        let mut writer = Client::connect([s.endpoint()], None).await.unwrap();
        let mut readers = Vec::new();
        for _ in 0..6 {
            readers.push(Client::connect([s.endpoint()], None).await.unwrap());
        }
        for i in 0..300u32 {
            let key = format!("{}lin", (b'a' + (i % 26) as u8) as char);
            let put = writer.put(key.clone(), i.to_string(), None).await.unwrap();
            let rev = put.header().unwrap().revision();
            let mine = writer
                .get(key.clone(), Some(GetOptions::new().with_serializable()))
                .await
                .unwrap();
            assert_eq!(mine.kvs()[0].value_str().unwrap(), i.to_string());
            let r = &mut readers[i as usize % 6];
            let got = r.get(key, None).await.unwrap();
            assert!(got.header().unwrap().revision() >= rev);
            assert_eq!(got.kvs()[0].value_str().unwrap(), i.to_string(), "read {i}");
        }
    });
}

/// What another connection (on this machine, often another core) sees right after a
/// write is acknowledged: a serializable read at its revision is not "future", and a
/// watch created from now starts after it (the created header already has it).
#[test]
fn other_connections_are_not_behind_an_acknowledged_write() {
    let s = Server::start("shards-after", &[]);
    let rt = common::runtime();
    rt.block_on(async {
        let mut writer = Client::connect([s.endpoint()], None).await.unwrap();
        let mut others = Vec::new();
        for _ in 0..6 {
            others.push(Client::connect([s.endpoint()], None).await.unwrap());
        }
        for i in 0..120usize {
            let put = writer.put("after", i.to_string(), None).await.unwrap();
            let rev = put.header().unwrap().revision();
            let c = &mut others[i % 6];
            let at = GetOptions::new().with_serializable().with_revision(rev);
            let got = c.get("after", Some(at)).await.unwrap();
            assert_eq!(got.kvs()[0].value_str().unwrap(), i.to_string());
            let mut w = c.watch("after", None).await.unwrap();
            let created = w.message().await.unwrap().unwrap();
            assert!(created.created());
            assert!(
                created.header().unwrap().revision() >= rev,
                "created before the write"
            );
            writer.put("after", "next", None).await.unwrap();
            let r = tokio::time::timeout(std::time::Duration::from_secs(10), w.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(
                r.events()[0].kv().unwrap().value(),
                b"next",
                "iteration {i}"
            );
            w.cancel(created.watch_id()).await.unwrap();
        }
    });
}

/// `--limit 9223372036854775807 --sort-by=VALUE` across shards: each shard was asked for
/// `limit + 1` keys, which overflowed i64 (a panic in a debug build). The answer must be
/// every key, as with no limit, and the member must keep serving.
#[test]
fn range_limit_i64_max_with_sort_across_shards_does_not_overflow() {
    if !is_keel() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = if cores >= 2 { "2" } else { "1" };
    let s = Server::start(
        "shards-limit-max",
        &["--cores", cores, "--shard-split-keys", "m"],
    );
    let rt = common::runtime();
    rt.block_on(async {
        let mut c = Client::connect([s.endpoint()], None).await.unwrap();
        for (i, k) in ["a1", "a2", "b3", "m4", "q5", "z6"].iter().enumerate() {
            c.put(*k, format!("{}", 9 - i), None).await.unwrap();
        }
        for target in [SortTarget::Value, SortTarget::Create, SortTarget::Version] {
            let sorted = |limit| {
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(target, SortOrder::None)
                    .with_limit(limit)
            };
            let max = c.get("", Some(sorted(i64::MAX))).await.unwrap();
            let all = c.get("", Some(sorted(0))).await.unwrap();
            assert_eq!(flat(&max), flat(&all), "{target:?}");
            assert_eq!(max.kvs().len(), 6);
            assert!(!max.more());
        }
    });
}

/// Keys of the skewed test: all under one prefix, which sorts below the split an empty
/// two-core store boots with (so every key lands on one shard until they move).
fn pod(r: &mut Rng) -> String {
    format!("/registry/pods/{:05}", r.below(POD_KEYS))
}

const POD_KEYS: u64 = 8400;

/// Shards that follow the data (issue 23): a store that boots empty on two cores, then
/// gets thousands of keys under one prefix, moves its split key online while reads and
/// watches go on. Every read on it, whether routed before, during or after a step, must
/// answer as a one-shard server given the same writes does; a reader on other
/// connections checks whole-prefix reads against it while the keys move; watchers on two
/// connections (two cores) see every revision once, in order; and the moves happened.
#[test]
fn shards_follow_keys_put_under_one_prefix() {
    if !is_keel() {
        return;
    }
    let mut two = Server::start("shards-follow", &["--cores", "2"]);
    let one = Server::start("shards-follow-one", &["--cores", "1"]);
    let rt = common::runtime();
    rt.block_on(async {
        let mut a = Client::connect([two.endpoint()], None).await.unwrap();
        let mut b = Client::connect([one.endpoint()], None).await.unwrap();
        let first = a.put("/registry/start", "", None).await.unwrap();
        b.put("/registry/start", "", None).await.unwrap();
        let from = first.header().unwrap().revision() + 1;
        let mut watches = Vec::new();
        for _ in 0..2 {
            let mut c = Client::connect([two.endpoint()], None).await.unwrap();
            let opts = WatchOptions::new().with_prefix().with_start_revision(from);
            let stream = c.watch("/registry/pods/", Some(opts)).await.unwrap();
            watches.push((c, stream));
        }
        // A reader on its own connection: whole-prefix reads on the two-core server,
        // each compared with the one-core server at the same revision.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (endpoint, reference, done) = (two.endpoint(), one.endpoint(), done.clone());
            tokio::spawn(async move {
                let mut c = Client::connect([endpoint], None).await.unwrap();
                let mut reference = Client::connect([reference], None).await.unwrap();
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let o = GetOptions::new().with_prefix().with_keys_only();
                    let got = c.get("/registry/pods/", Some(o.clone())).await.unwrap();
                    let rev = got.header().unwrap().revision();
                    let want = loop {
                        match reference
                            .get("/registry/pods/", Some(o.clone().with_revision(rev)))
                            .await
                        {
                            Ok(w) => break w,
                            // The reference gets each write just after.
                            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                        }
                    };
                    assert_eq!(flat(&got).0, flat(&want).0, "whole prefix at {rev}");
                    assert_eq!(got.count(), want.count());
                    reads += 1;
                }
                reads
            })
        };
        let mut r = Rng(0x6a09e667f3bcc909);
        let mut events = 0;
        for round in 0..70 {
            // A txn of 120 puts (one revision): half new keys above all others (the
            // prefix grows at its end, so the split key keeps moving), half anywhere;
            // and a delete now and then.
            let ops: Vec<TxnOp> = (0..120)
                .map(|i| {
                    let k = match i % 2 {
                        0 => format!("/registry/pods/{:05}", round * 120 + i),
                        _ => pod(&mut r),
                    };
                    TxnOp::put(k, format!("v{round}"), None)
                })
                .collect();
            let mut put = ops.clone();
            put.sort_by_key(|op| format!("{op:?}"));
            put.dedup_by_key(|op| format!("{op:?}"));
            a.txn(Txn::new().and_then(put.clone())).await.unwrap();
            b.txn(Txn::new().and_then(put.clone())).await.unwrap();
            events += put.len();
            if round % 7 == 3 {
                let k = pod(&mut r);
                let o = Some(DeleteOptions::new().with_range(format!("{k}9")));
                let d = a.delete(k.clone(), o.clone()).await.unwrap();
                b.delete(k, o).await.unwrap();
                events += d.deleted() as usize;
            }
            let current = a.get("/", None).await.unwrap().header().unwrap().revision();
            for _ in 0..8 {
                let (k, o, desc) = random_get(&mut r, current, pod);
                let got = a.get(k.clone(), Some(o.clone())).await;
                let want = b.get(k.clone(), Some(o)).await;
                match (got, want) {
                    (Ok(g), Ok(w)) => assert_eq!(flat(&g), flat(&w), "{k} {desc}"),
                    (Err(g), Err(w)) => assert_eq!(g.to_string(), w.to_string()),
                    (g, w) => panic!("{k} {desc}: two shards {g:?}, one shard {w:?}"),
                }
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.await.unwrap();
        assert!(reads > 0);
        let last = a.get("/", None).await.unwrap().header().unwrap().revision();
        // Every watcher: each revision from the first on, once, in order.
        for (_c, stream) in &mut watches {
            let mut seen = 0;
            let mut prev = from - 1;
            while prev < last {
                let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .expect("watch events in time")
                    .unwrap()
                    .unwrap();
                for ev in resp.events() {
                    let rev = ev.kv().unwrap().mod_revision();
                    // A txn's events share its revision; none is skipped or repeated.
                    assert!(
                        rev == prev + 1 || rev == prev && seen > 0,
                        "{rev} after {prev}"
                    );
                    prev = rev;
                    seen += 1;
                }
            }
            assert_eq!(seen, events);
        }
        let text = common::http_get(two.client_port, "/metrics");
        let moved = common::metric(&text, "keel_shard_moved_keys_total").unwrap_or(0.0);
        assert!(moved >= 2048.0, "{moved} keys moved");
        // How many read parts met a step (timing decides; not asserted).
        let rerouted = common::metric(&text, "keel_shard_rerouted_reads_total");
        eprintln!("{moved} keys moved, {rerouted:?} parts routed again, {reads} checked reads");
        assert!(two.log().contains("rebalanced the shards"));
    });
    // A restart builds the second core's replica under the split keys the moves left,
    // beside the raft core's rebuild of its own index, from the db as it was last
    // committed; the first round brings it up to date with the entries only the WAL
    // held (a burst of writes just before a kill -9): every read still equals the
    // one-core server's.
    rt.block_on(async {
        let mut a = Client::connect([two.endpoint()], None).await.unwrap();
        let mut b = Client::connect([one.endpoint()], None).await.unwrap();
        for i in 0..40 {
            let k = format!("/registry/pods/z{i:03}");
            a.put(k.clone(), "late", None).await.unwrap();
            b.put(k, "late", None).await.unwrap();
        }
    });
    two.kill9();
    two.restart();
    assert!(
        two.log().contains("built shard 1's replica at boot"),
        "{}",
        two.log()
    );
    rt.block_on(async {
        let mut a = Client::connect([two.endpoint()], None).await.unwrap();
        let mut b = Client::connect([one.endpoint()], None).await.unwrap();
        let mut r = Rng(0x3c6ef372fe94f82b);
        let current = a.get("/", None).await.unwrap().header().unwrap().revision();
        for _ in 0..60 {
            let (k, o, desc) = random_get(&mut r, current, pod);
            let got = a.get(k.clone(), Some(o.clone())).await.unwrap();
            let want = b.get(k.clone(), Some(o)).await.unwrap();
            assert_eq!(flat(&got), flat(&want), "{k} {desc} after the restart");
        }
        let o = GetOptions::new().with_prefix().with_count_only();
        let got = a.get("/registry/pods/", Some(o.clone())).await.unwrap();
        let want = b.get("/registry/pods/", Some(o)).await.unwrap();
        assert_eq!(got.count(), want.count());
    });
}
