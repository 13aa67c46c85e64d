//! The `etcd-client` crate (tonic) against the real server binary: every KV option and
//! error, response headers, Maintenance.Status and Cluster.MemberList. Also passes with
//! `KEEL_TEST_SERVER=/usr/bin/etcd`, except the Keel-only test at the end.

use crate::common;

use common::{connect, grpc_status, is_keel, rss_mib, runtime, Server};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

fn keys(r: &etcd_client::GetResponse) -> Vec<String> {
    r.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

#[test]
fn range_options() {
    let s = Server::start("cl-range", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        // Revisions 2..=6: a=1, b=22, c=333, d=4444, a=55555.
        for (k, v) in [
            ("a", "1"),
            ("b", "22"),
            ("c", "333"),
            ("d", "4444"),
            ("a", "55555"),
        ] {
            c.put(k, v, None).await.unwrap();
        }
        let all = || GetOptions::new().with_all_keys();
        let r = c.get("", Some(all())).await.unwrap();
        assert_eq!(keys(&r), ["a", "b", "c", "d"]);
        assert_eq!((r.count(), r.more()), (4, false));
        let r = c.get("", Some(all().with_limit(2))).await.unwrap();
        assert_eq!(keys(&r), ["a", "b"]);
        assert_eq!((r.count(), r.more()), (4, true));
        let r = c
            .get("b", Some(GetOptions::new().with_range("d")))
            .await
            .unwrap();
        assert_eq!(keys(&r), ["b", "c"]);
        let r = c
            .get("b", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap();
        assert_eq!(keys(&r), ["b", "c", "d"]);
        let r = c
            .get(
                "",
                Some(all().with_sort(SortTarget::Value, SortOrder::Descend)),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r), ["a", "d", "c", "b"]);
        let r = c
            .get(
                "",
                Some(all().with_sort(SortTarget::Mod, SortOrder::Ascend)),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r), ["b", "c", "d", "a"]);
        let r = c
            .get(
                "",
                Some(all().with_sort(SortTarget::Version, SortOrder::Descend)),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r)[0], "a");
        let r = c
            .get(
                "",
                Some(all().with_sort(SortTarget::Create, SortOrder::Descend)),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r), ["d", "c", "b", "a"]);
        let r = c.get("", Some(all().with_keys_only())).await.unwrap();
        assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
        let r = c.get("", Some(all().with_count_only())).await.unwrap();
        assert_eq!((r.kvs().len(), r.count()), (0, 4));
        let r = c
            .get("a", Some(GetOptions::new().with_revision(2)))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"1");
        assert_eq!(
            r.header().unwrap().revision(),
            6,
            "the header has the current revision"
        );
        let r = c
            .get("", Some(all().with_min_mod_revision(4)))
            .await
            .unwrap();
        assert_eq!(keys(&r), ["a", "c", "d"]);
        let r = c
            .get("", Some(all().with_max_mod_revision(3)))
            .await
            .unwrap();
        assert_eq!(keys(&r), ["b"]);
        let r = c
            .get("", Some(all().with_min_create_revision(4)))
            .await
            .unwrap();
        assert_eq!(keys(&r), ["c", "d"]);
        let r = c
            .get("", Some(all().with_max_create_revision(2)))
            .await
            .unwrap();
        assert_eq!(keys(&r), ["a"]);
        let r = c
            .get("a", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        let kv = &r.kvs()[0];
        assert_eq!(
            (kv.create_revision(), kv.mod_revision(), kv.version()),
            (2, 6, 2)
        );
        let (code, msg) = grpc_status(
            c.get("a", Some(GetOptions::new().with_revision(99)))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, tonic::Code::OutOfRange);
        assert_eq!(
            msg,
            "etcdserver: mvcc: required revision is a future revision"
        );
        let (code, msg) = grpc_status(c.get("", None).await.unwrap_err());
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert_eq!(msg, "etcdserver: key is not provided");
    });
}

#[test]
fn put_and_delete_options() {
    let s = Server::start("cl-put", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let r = c.put("k", "v1", None).await.unwrap();
        assert!(r.prev_key().is_none());
        let r = c
            .put("k", "v2", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(r.prev_key().unwrap().value(), b"v1");
        c.put("k", "", Some(PutOptions::new().with_ignore_value()))
            .await
            .unwrap();
        let r = c.get("k", None).await.unwrap();
        assert_eq!((r.kvs()[0].value(), r.kvs()[0].version()), (&b"v2"[..], 3));
        let (code, msg) = grpc_status(
            c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (code, msg.as_str()),
            (tonic::Code::InvalidArgument, "etcdserver: key not found")
        );
        let (_, msg) = grpc_status(
            c.put("k", "x", Some(PutOptions::new().with_ignore_value()))
                .await
                .unwrap_err(),
        );
        assert_eq!(msg, "etcdserver: value is provided");
        let (_, msg) = grpc_status(
            c.put(
                "k",
                "x",
                Some(PutOptions::new().with_ignore_lease().with_lease(5)),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(msg, "etcdserver: lease is provided");
        let (_, msg) = grpc_status(c.put("", "x", None).await.unwrap_err());
        assert_eq!(msg, "etcdserver: key is not provided");
        for k in ["p/1", "p/2", "q"] {
            c.put(k, k, None).await.unwrap();
        }
        let r = c
            .delete(
                "p/",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .unwrap();
        assert_eq!(r.deleted(), 2);
        assert_eq!(r.prev_kvs().len(), 2);
        assert_eq!(r.prev_kvs()[1].key(), b"p/2");
        let r = c.delete("nothing", None).await.unwrap();
        assert_eq!(r.deleted(), 0);
        let r = c
            .delete("", Some(DeleteOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(r.deleted(), 2);
    });
}

#[test]
fn txn_compares_and_nesting() {
    let s = Server::start("cl-txn", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        c.put("k", "v", None).await.unwrap(); // rev 2
        let cmp = [
            Compare::value("k", CompareOp::Equal, "v"),
            Compare::version("k", CompareOp::Equal, 1),
            Compare::create_revision("k", CompareOp::Equal, 2),
            Compare::mod_revision("k", CompareOp::Less, 3),
            Compare::lease("k", CompareOp::Equal, 0),
            Compare::version("nope", CompareOp::Equal, 0),
            Compare::value("k", CompareOp::NotEqual, "w"),
            Compare::version("k", CompareOp::Greater, 0).with_prefix(),
        ];
        let inner = Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "nope")])
            .and_then([TxnOp::put("never", "x", None)])
            .or_else([TxnOp::put("inner", "y", None)]);
        let t = Txn::new()
            .when(cmp)
            .and_then([
                TxnOp::put("k", "v2", Some(PutOptions::new().with_prev_key())),
                TxnOp::get("k", None),
                TxnOp::txn(inner),
                TxnOp::delete("gone", None),
            ])
            .or_else([TxnOp::put("failed", "x", None)]);
        let r = c.txn(t).await.unwrap();
        assert!(r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 3, "one revision per txn");
        let ops = r.op_responses();
        let TxnOpResponse::Put(p) = &ops[0] else {
            panic!("put")
        };
        assert_eq!(p.prev_key().unwrap().value(), b"v");
        let TxnOpResponse::Get(g) = &ops[1] else {
            panic!("get")
        };
        assert_eq!(g.kvs()[0].value(), b"v2", "a txn reads its own writes");
        let TxnOpResponse::Txn(n) = &ops[2] else {
            panic!("txn")
        };
        assert!(!n.succeeded());
        let TxnOpResponse::Delete(d) = &ops[3] else {
            panic!("delete")
        };
        assert_eq!(d.deleted(), 0);
        let r = c.get("inner", None).await.unwrap();
        assert_eq!(r.kvs()[0].mod_revision(), 3);
        // Failure branch, and a read-only txn takes no revision.
        let t = Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "v")])
            .and_then([TxnOp::put("x", "x", None)])
            .or_else([TxnOp::get("k", None)]);
        let r = c.txn(t).await.unwrap();
        assert!(!r.succeeded());
        assert_eq!(r.header().unwrap().revision(), 3);
        // Errors: duplicate keys, a compacted revision inside a txn.
        let t = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
        let (code, msg) = grpc_status(c.txn(t).await.unwrap_err());
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert_eq!(msg, "etcdserver: duplicate key given in txn request");
        let t = Txn::new().and_then([TxnOp::get("k", Some(GetOptions::new().with_revision(50)))]);
        let (code, _) = grpc_status(c.txn(t).await.unwrap_err());
        assert_eq!(code, tonic::Code::OutOfRange);
    });
}

#[test]
fn compaction_errors_and_headers() {
    let s = Server::start("cl-compact", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let mut revisions = Vec::new();
        for i in 0..5 {
            let r = c.put("k", format!("v{i}"), None).await.unwrap();
            revisions.push(r.header().unwrap().revision());
        }
        assert_eq!(revisions, [2, 3, 4, 5, 6]);
        c.compact(
            4,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
        let (code, msg) = grpc_status(
            c.get("k", Some(GetOptions::new().with_revision(3)))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, tonic::Code::OutOfRange);
        assert_eq!(
            msg,
            "etcdserver: mvcc: required revision has been compacted"
        );
        let (code, _) = grpc_status(c.compact(4, None).await.unwrap_err());
        assert_eq!(code, tonic::Code::OutOfRange);
        let r = c
            .get("k", Some(GetOptions::new().with_revision(4)))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"v2");
        // Header IDs are the member's and the cluster's, the same everywhere.
        let status = c.status().await.unwrap();
        let h = status.header().unwrap();
        let members = c.member_list().await.unwrap();
        assert_eq!(members.members().len(), 1);
        let m = &members.members()[0];
        assert_eq!(h.member_id(), m.id());
        assert_eq!(status.leader(), m.id());
        assert_eq!(members.header().unwrap().cluster_id(), h.cluster_id());
        assert_ne!(h.cluster_id(), 0);
        assert!(h.raft_term() >= 1);
        assert_eq!(m.name(), "it");
        assert_eq!(m.peer_urls(), [format!("http://127.0.0.1:{}", s.peer_port)]);
        assert_eq!(
            m.client_urls(),
            [format!("http://127.0.0.1:{}", s.client_port)]
        );
        assert!(status.raft_index() >= status.raft_applied_index());
        assert!(status.db_size() > 0);
        assert!(status.version().starts_with("3.4"));
        let put = c.put("z", "z", None).await.unwrap();
        assert_eq!(put.header().unwrap().member_id(), m.id());
        let hash = c.hash_kv(0).await.unwrap();
        assert_eq!(hash.compact_version(), 4);
    });
}

/// RPCs of services whose issues have not landed answer UNIMPLEMENTED (Keel only: etcd
/// implements them).
#[test]
fn unbuilt_services_are_unimplemented() {
    if !is_keel() {
        return;
    }
    let s = Server::start("cl-unimpl", &[]);
    runtime().block_on(async {
        // etcd 3.5's Maintenance.Downgrade: not built (Keel serves the 3.4 API).
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.endpoint()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<
            keel::pb::etcdserverpb::DowngradeRequest,
            keel::pb::etcdserverpb::DowngradeResponse,
        >::default();
        let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Maintenance/Downgrade");
        let e = grpc
            .unary(
                tonic::Request::new(keel::pb::etcdserverpb::DowngradeRequest::default()),
                path,
                codec,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        assert_eq!(
            e.message(),
            "unknown method Downgrade for service etcdserverpb.Maintenance"
        );
        // The connection is still good.
        let mut c = connect(&s).await;
        c.put("after", "x", None).await.unwrap();
    });
}

/// A compaction answers at once and drops the compacted records afterwards, a slice at a
/// time between rounds; with `physical` its answer waits for the last slice (etcd: for its
/// scheduled compaction to finish). So right after a physical compaction every record it
/// drops is counted as deleted, and the data read back is whole.
#[test]
fn a_physical_compaction_answers_once_every_dropped_record_is_gone() {
    const KEYS: usize = 40_000;
    const PER_TXN: usize = 1_000;
    const DELETED: usize = 1_000;
    let s = Server::start("cl-sweep", &["--max-txn-ops", "1000"]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        for value in ["a", "b"] {
            for first in (0..KEYS).step_by(PER_TXN) {
                let puts: Vec<TxnOp> = (first..first + PER_TXN)
                    .map(|i| TxnOp::put(format!("sw/{i:06}"), value, None))
                    .collect();
                c.txn(Txn::new().and_then(puts)).await.unwrap();
            }
        }
        let end = format!("sw/{DELETED:06}");
        c.delete("sw/", Some(DeleteOptions::new().with_range(end)))
            .await
            .unwrap();
        let rev = c
            .get("sw/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        c.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
        // Dropped: every first put, and the second put and tombstone of each deleted key.
        let swept = common::metric(
            &common::http_get(s.client_port, "/metrics"),
            "etcd_debugging_mvcc_db_compaction_keys_total",
        );
        assert_eq!(swept, Some((KEYS + 2 * DELETED) as f64));
        let got = c
            .get(
                "sw/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!(got.count(), (KEYS - DELETED) as i64);
        let last = c.get(format!("sw/{:06}", KEYS - 1), None).await.unwrap();
        assert_eq!(last.kvs()[0].value(), b"b");
    });
}

/// Issue 23: a burst of large answers (16 reads of 3.5 MiB at once) raises the server's
/// memory, and once the server is quiet again it gives it back: each core's allocator is
/// asked to every second (`runtime::spawn_allocator_collect`). Before, the peak stayed
/// resident while the core was idle. Keel only (etcd's collector is Go's).
#[test]
fn a_burst_of_large_answers_is_given_back_once_quiet() {
    if !is_keel() {
        return;
    }
    let s = Server::start("cl-burst", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let value = "v".repeat(64 << 10);
        for i in 0..55 {
            c.put(format!("big/{i:03}"), value.as_str(), None)
                .await
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let before = rss_mib(s.pid());
        let mut peak = before;
        for _ in 0..3 {
            let reads: Vec<_> = (0..16)
                .map(|_| {
                    let mut c = c.clone();
                    tokio::spawn(async move {
                        let all = GetOptions::new().with_prefix();
                        c.get("big/", Some(all)).await.unwrap().kvs().len()
                    })
                })
                .collect();
            for read in reads {
                assert_eq!(read.await.unwrap(), 55);
            }
            peak = peak.max(rss_mib(s.pid()));
        }
        assert!(
            peak >= before + 60,
            "the burst raised RSS only {before} -> {peak} MiB"
        );
        let mut now = rss_mib(s.pid());
        for _ in 0..100 {
            if now <= before + 20 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            now = rss_mib(s.pid());
        }
        assert!(
            now <= before + 20,
            "RSS {before} MiB before the burst, {peak} at its peak, still {now} 10 s after"
        );
    });
}

/// Issue 23: a Range answer is the records' own wire bytes, copied once (no decoded kvs),
/// in key order across the shards, with `limit`, `more` and `count` exact; one larger than
/// `--max-response-bytes` is refused with grpc-go's ResourceExhausted before it is built
/// whole, and the server goes on. Keel only (the flag is Keel's).
#[test]
fn large_answers_are_whole_and_one_too_large_is_refused() {
    if !is_keel() {
        return;
    }
    const MAX: usize = 300_000;
    let s = Server::start(
        "cl-large",
        &[
            "--max-response-bytes",
            "300000",
            "--max-txn-ops",
            "1000",
            "--shard-split-keys",
            "m",
        ],
    );
    let key = |i: usize| format!("{}/{i:05}", ["c", "p"][i % 2]);
    let value = |i: usize| format!("{i:05}").repeat(40);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        for first in (0..2000).step_by(1000) {
            let puts: Vec<TxnOp> = (first..first + 1000)
                .map(|i| TxnOp::put(key(i), value(i), None))
                .collect();
            c.txn(Txn::new().and_then(puts)).await.unwrap();
        }
        let mut want: Vec<usize> = (0..2000).collect();
        want.sort_by_key(|&i| key(i));
        let check = |r: &etcd_client::GetResponse, from: usize| {
            for (n, kv) in r.kvs().iter().enumerate() {
                let i = want[from + n];
                assert_eq!(kv.key_str().unwrap(), key(i));
                assert_eq!(kv.value_str().unwrap(), value(i));
                assert_eq!((kv.version(), kv.lease()), (1, 0));
                assert_eq!(kv.create_revision(), kv.mod_revision());
            }
        };
        // ~480 KB of kvs: refused, naming the size it would have had.
        let all = || GetOptions::new().with_all_keys();
        let (code, msg) = grpc_status(c.get("", Some(all())).await.unwrap_err());
        assert_eq!(code, tonic::Code::ResourceExhausted, "{msg}");
        let size: usize = msg
            .strip_prefix("grpc: trying to send message larger than max (")
            .and_then(|m| m.strip_suffix(&format!(" vs. {MAX})")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{msg}"));
        assert!(size > MAX && size < 2 * MAX, "{msg}");
        // Sorted (decoded kvs) or in a txn: refused the same way.
        let by_value = all().with_sort(SortTarget::Value, SortOrder::Descend);
        let (code, _) = grpc_status(c.get("", Some(by_value)).await.unwrap_err());
        assert_eq!(code, tonic::Code::ResourceExhausted);
        let get_all = TxnOp::get("", Some(all()));
        let (code, _) = grpc_status(c.txn(Txn::new().and_then([get_all])).await.unwrap_err());
        assert_eq!(code, tonic::Code::ResourceExhausted);
        // Pages of 600 (each under the bound, across the split key): every key once, in
        // order, with the count and `more` of the whole.
        let mut from = 0;
        let mut start = "\0".to_string();
        loop {
            let r = c
                .get(
                    start.as_str(),
                    Some(GetOptions::new().with_from_key().with_limit(600)),
                )
                .await
                .unwrap();
            assert_eq!(r.count() as usize, 2000 - from);
            check(&r, from);
            from += r.kvs().len();
            assert_eq!(r.more(), from < 2000);
            if !r.more() {
                break;
            }
            start = format!("{}\0", r.kvs().last().unwrap().key_str().unwrap());
        }
        assert_eq!(from, 2000);
        // Keys only, counts and a bounded sort are small: answered.
        let r = c.get("", Some(all().with_keys_only())).await.unwrap();
        assert_eq!(r.kvs().len(), 2000);
        let r = c.get("", Some(all().with_count_only())).await.unwrap();
        assert_eq!(r.count(), 2000);
        let r = c
            .get("p/", Some(GetOptions::new().with_prefix().with_limit(3)))
            .await
            .unwrap();
        check(&r, 1000);
        // Nothing was lost and the server still writes.
        c.put("after", "x", None).await.unwrap();
        let r = c.get("", Some(all().with_count_only())).await.unwrap();
        assert_eq!(r.count(), 2001);
    });
}
