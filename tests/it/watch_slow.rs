//! A slow watch client: one stream stops reading while a writer puts ~12 MiB of events.
//! The other stream, on its own connection, gets every event while the writes run (the
//! stalled one holds nobody up), and once the slow client reads again it gets every
//! revision, in order, none twice: Keel drops its watcher back to catching up from
//! history instead of buffering without bound or skipping events (its log says so).
//! Also passes with `KEEL_TEST_SERVER=/usr/bin/etcd` (etcd's victims do the same).

use crate::common;

use common::{is_keel, rss_anon_mib, Server};
use etcd_client::{Client, WatchStream};
use std::time::Duration;

const PUTS: usize = 4000;
const VALUE_BYTES: usize = 3 * 1024;
const WAIT: Duration = Duration::from_secs(30);

/// Reads events until `n` have arrived; returns their mod revisions in arrival order.
async fn revisions(ws: &mut WatchStream, n: usize) -> Vec<i64> {
    let mut revs = Vec::with_capacity(n);
    while revs.len() < n {
        let r = tokio::time::timeout(WAIT, ws.message())
            .await
            .expect("events keep coming")
            .expect("stream ok")
            .expect("stream open");
        assert!(!r.canceled(), "{r:?}");
        revs.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    revs
}

#[test]
fn a_stalled_stream_delays_nobody_and_loses_nothing() {
    let s = Server::start("watch-slow", &[]);
    let rt = common::runtime();
    rt.block_on(async {
        let connect = || Client::connect([s.endpoint()], None);
        let mut writer = connect().await.unwrap();
        let mut slow_client = connect().await.unwrap();
        let mut fast_client = connect().await.unwrap();
        let mut slow = slow_client.watch("big", None).await.unwrap();
        let created = slow.message().await.unwrap().unwrap();
        assert!(created.created());
        let start = created.header().unwrap().revision() + 1;
        let mut fast = fast_client.watch("big", None).await.unwrap();
        assert!(fast.message().await.unwrap().unwrap().created());
        let reader = tokio::spawn(async move {
            let revs = revisions(&mut fast, PUTS).await;
            (fast, revs)
        });
        let value = vec![b'x'; VALUE_BYTES];
        for _ in 0..PUTS {
            writer.put("big", value.clone(), None).await.unwrap();
        }
        // The fast stream got everything while the slow one was not reading.
        let (_fast, fast_revs) = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        let want: Vec<i64> = (start..start + PUTS as i64).collect();
        assert_eq!(fast_revs, want);
        // Now the slow client reads: all of it, in order, no duplicates.
        let slow_revs = revisions(&mut slow, PUTS).await;
        assert_eq!(slow_revs, want);
    });
    if is_keel() {
        assert!(
            s.log().contains("catch up from history"),
            "the stalled stream overflowed its queue (else this test proves nothing)"
        );
    }
}

/// Issue 23: a watch catching up over a long history for a client that does not read
/// holds a few MiB of the server's (anonymous) memory (its catch-up waits while 4 MiB of responses
/// are queued), not the whole history's worth (40 MiB here; its queue bound is 1024
/// responses of up to 1 MiB each); once the client reads, every revision arrives in
/// order. Keel only (a memory bound of Keel's design).
#[test]
fn a_stalled_catch_up_holds_little_of_the_history() {
    if !is_keel() {
        return;
    }
    const HISTORY: usize = 10_000;
    let s = Server::start("watch-catch-up", &[]);
    let rt = common::runtime();
    rt.block_on(async {
        let mut writer = Client::connect([s.endpoint()], None).await.unwrap();
        let value = "h".repeat(4096);
        let mut first = 0;
        for i in 0..HISTORY {
            let r = writer
                .put(format!("h/{:03}", i % 100), value.as_str(), None)
                .await
                .unwrap();
            if i == 0 {
                first = r.header().unwrap().revision();
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Anonymous memory: the history's db pages the catch-up maps are file pages.
        let before = rss_anon_mib(s.pid());
        let mut slow = Client::connect([s.endpoint()], None).await.unwrap();
        let opts = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(first);
        let mut ws = slow.watch("h/", Some(opts)).await.unwrap();
        // Not reading: the server's catch-up runs until its queue holds 4 MiB.
        let mut peak = before;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = peak.max(rss_anon_mib(s.pid()));
        }
        assert!(
            peak <= before + 20,
            "a stalled catch-up raised anonymous RSS {before} -> {peak} MiB"
        );
        let revs = revisions(&mut ws, HISTORY).await;
        let want: Vec<i64> = (first..first + HISTORY as i64).collect();
        assert_eq!(revs, want);
    });
}
