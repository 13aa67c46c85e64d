//! `--auto-compaction-mode` / `--auto-compaction-retention` against the real server: a
//! periodic retention of 2 s compacts history (etcdctl then answers "required revision
//! has been compacted" for an old revision), never a revision newer than one retention
//! ago; in a 3-member cluster only the leader compacts.
//!
//! Also passes with `KEEL_TEST_SERVER=/usr/bin/etcd` (the log checks are Keel's only). No
//! lower bound on timing is asserted; waits are bounded.

use crate::common;

use common::{connect, is_keel, runtime, Cluster, Server, LIVENESS};
use etcd_client::GetOptions;
use std::time::{Duration, Instant};

const RETENTION: Duration = Duration::from_secs(2);
/// How long the compaction of the first second's writes may take to show: the first
/// compaction comes one retention after boot (to the boot's revision), the next one
/// retention later (to the revision of a retention before), plus a sampling interval,
/// and a loaded machine's slack.
const COMPACTED_WITHIN: Duration = Duration::from_secs(12);

/// The compact revision, found among revisions `1..=last` (each one a put of this test):
/// the oldest one a read at that revision still answers.
async fn compact_revision(c: &mut etcd_client::Client, last: i64) -> i64 {
    let (mut lo, mut hi) = (1, last);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match c.get("k", Some(GetOptions::new().with_revision(mid))).await {
            Ok(_) => hi = mid,
            Err(e) => {
                assert!(
                    e.to_string()
                        .contains("required revision has been compacted"),
                    "get at revision {mid}: {e}"
                );
                lo = mid + 1;
            }
        }
    }
    lo
}

#[test]
fn periodic_retention_compacts_what_is_older_than_one_retention() {
    let s = Server::start(
        "autocompact-periodic",
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ],
    );
    let start = Instant::now();
    runtime().block_on(async {
        let mut c = connect(&s).await;
        // (when the put was sent, its revision), one every 100 ms.
        let mut puts: Vec<(Instant, i64)> = Vec::new();
        let first_second_last = loop {
            let sent = Instant::now();
            let r = c.put("k", format!("v{}", puts.len()), None).await.unwrap();
            puts.push((sent, r.header().unwrap().revision()));
            if sent.duration_since(start) >= Duration::from_secs(1) {
                break puts.last().unwrap().1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        loop {
            let sent = Instant::now();
            let r = c.put("k", format!("v{}", puts.len()), None).await.unwrap();
            puts.push((sent, r.header().unwrap().revision()));
            let last = puts.last().unwrap().1;
            let compacted = compact_revision(&mut c, last).await;
            let seen = Instant::now();
            // Never to a revision that was not yet written one retention ago (revision 1
            // is the empty store's).
            if let Some((written, _)) = puts.iter().find(|(_, rev)| *rev == compacted) {
                assert!(
                    *written + RETENTION <= seen,
                    "compacted to revision {compacted}, written {:?} before it was seen",
                    seen - *written
                );
            }
            if compacted > first_second_last {
                break;
            }
            assert!(
                start.elapsed() < COMPACTED_WITHIN,
                "the first second's writes (to revision {first_second_last}) are not \
                 compacted after {:?} (compact revision {compacted})",
                start.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let old = s.etcdctl(&["get", "k", "--rev", "2"]);
    old.expect_err("required revision has been compacted");
    let now = s.etcdctl(&["get", "k", "--print-value-only"]);
    assert!(now.ok && now.stdout.starts_with('v'), "{now:?}");
    if is_keel() {
        let log = s.log();
        assert!(
            log.contains("Starting auto-compaction at revision ")
                && log.contains("(retention: 2s)")
                && log.contains("Finished auto-compaction at revision "),
            "{log}"
        );
    }
}

#[test]
fn cluster_only_the_leader_compacts() {
    let mut c = Cluster::start(
        "autocompact-cluster",
        3,
        &[
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--auto-compaction-retention",
            "1s",
        ],
    );
    let start = Instant::now();
    let leader = runtime().block_on(async {
        let leader = c.wait_leader(&[0, 1, 2]).await;
        let mut cl = c.client(leader).await;
        // Writes until the history of the first one is gone on every member.
        loop {
            let last = cl
                .put("k", "v", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
            let mut compacted = true;
            for i in 0..3 {
                let mut m = c.client(i).await;
                let opts = GetOptions::new().with_revision(2).with_serializable();
                compacted &= m.get("k", Some(opts)).await.is_err();
            }
            if compacted {
                break;
            }
            assert!(
                start.elapsed() < LIVENESS,
                "revision 2 not compacted everywhere in {LIVENESS:?} (last {last})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        leader
    });
    if is_keel() {
        // A leader change would make a follower compact legitimately: only check when
        // the leader is still the one found first.
        let now = runtime().block_on(c.wait_leader(&[0, 1, 2]));
        if now == leader {
            for i in (0..3).filter(|&i| i != leader) {
                let log = c.member(i).log();
                assert!(
                    !log.contains("Starting auto-compaction"),
                    "follower m{i} compacted:\n{log}"
                );
            }
            assert!(c.member(leader).log().contains("Starting auto-compaction"));
        }
    }
}
