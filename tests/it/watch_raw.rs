//! Watch requests the etcd-client crate cannot make or show, on the raw gRPC stream
//! (tonic with Keel's generated etcdserverpb types): client-chosen and duplicate watch
//! IDs, an empty range, `fragment`, and the periodic progress notification of
//! `--experimental-watch-progress-notify-interval`. Also passes with
//! `KEEL_TEST_SERVER=/usr/bin/etcd`.

use crate::common;

use common::{runtime, Server};
use keel::pb::etcdserverpb as pb;
use pb::watch_request::RequestUnion;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// The request half of the stream: whatever the test sends through the channel.
struct Requests(mpsc::UnboundedReceiver<pb::WatchRequest>);

impl tokio_stream_shim::Stream for Requests {
    type Item = pb::WatchRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

mod tokio_stream_shim {
    pub use tonic::codegen::tokio_stream::Stream;
}

struct Watch {
    tx: mpsc::UnboundedSender<pb::WatchRequest>,
    rx: tonic::Streaming<pb::WatchResponse>,
}

impl Watch {
    /// Opens a stream whose first request is `first` (servers send the response headers
    /// with the first response, and tonic waits for them).
    async fn open(s: &Server, first: pb::WatchCreateRequest) -> Watch {
        tokio::time::timeout(WAIT, Self::open_inner(s, first))
            .await
            .expect("stream opens within 10 s")
    }

    async fn open_inner(s: &Server, first: pb::WatchCreateRequest) -> Watch {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.endpoint()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(first)),
        })
        .unwrap();
        let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
        let codec = tonic_prost::ProstCodec::<pb::WatchRequest, pb::WatchResponse>::default();
        let rx = grpc
            .streaming(tonic::Request::new(Requests(rx)), path, codec)
            .await
            .unwrap()
            .into_inner();
        Watch { tx, rx }
    }

    fn create(&self, c: pb::WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c));
    }

    fn send(&self, r: RequestUnion) {
        self.tx
            .send(pb::WatchRequest {
                request_union: Some(r),
            })
            .unwrap();
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response within 10 s")
            .expect("stream ok")
            .expect("stream open")
    }
}

fn create(key: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

#[test]
fn watch_ids_and_bad_ranges() {
    let s = Server::start("wr-ids", &[]);
    runtime().block_on(async {
        // Client-chosen ID.
        let mut w = Watch::open(
            &s,
            pb::WatchCreateRequest {
                watch_id: 7,
                ..create("a")
            },
        )
        .await;
        let r = w.next().await;
        assert!(r.created && !r.canceled && r.watch_id == 7, "{r:?}");
        // The same ID again: refused, etcd's way (watch_id -1, created and canceled).
        w.create(pb::WatchCreateRequest {
            watch_id: 7,
            ..create("b")
        });
        let r = w.next().await;
        assert!(r.created && r.canceled && r.watch_id == -1, "{r:?}");
        assert_eq!(
            r.cancel_reason,
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
        // Auto IDs start at 0 and skip the ones in use.
        w.create(create("c"));
        assert_eq!(w.next().await.watch_id, 0);
        // key >= range_end: an empty range.
        w.create(pb::WatchCreateRequest {
            range_end: b"a".to_vec().into(),
            ..create("b")
        });
        let r = w.next().await;
        assert!(r.created && r.canceled && r.watch_id == -1, "{r:?}");
        assert_eq!(r.cancel_reason, "mvcc: watcher range is empty");
        // Cancelling an unknown ID gets no answer; the next request still does.
        w.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: 99,
        }));
        w.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}));
        let r = w.next().await;
        assert!(r.watch_id == -1 && !r.canceled && !r.created, "{r:?}");
    });
}

#[test]
fn big_histories_are_fragmented_when_asked() {
    // Fragments above --max-request-bytes + 512 KiB = 522288 bytes.
    let s = Server::start("wr-frag", &["--max-request-bytes", "10000"]);
    runtime().block_on(async {
        let mut kv = etcd_client::Client::connect([s.endpoint()], None)
            .await
            .unwrap();
        let value = vec![b'f'; 9000];
        let first = kv.put("f", value.clone(), None).await.unwrap();
        let first = first.header().unwrap().revision();
        for _ in 1..150 {
            kv.put("f", value.clone(), None).await.unwrap();
        }
        let mut w = Watch::open(
            &s,
            pb::WatchCreateRequest {
                start_revision: first,
                fragment: true,
                ..create("f")
            },
        )
        .await;
        assert!(w.next().await.created);
        let mut revs = Vec::new();
        let mut fragments = 0;
        let mut last_fragment = false;
        while revs.len() < 150 {
            let r = w.next().await;
            let size = prost::Message::encoded_len(&r);
            assert!(
                size <= 10000 + 512 * 1024 || r.events.len() == 1,
                "a fragment of {size} bytes with {} events",
                r.events.len()
            );
            if r.fragment {
                fragments += 1;
            }
            last_fragment = r.fragment;
            revs.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
        }
        assert!(
            !last_fragment,
            "the last piece of a response is not a fragment"
        );
        assert!(fragments > 0, "~1.3 MiB of history came in fragments");
        let want: Vec<i64> = (first..first + 150).collect();
        assert_eq!(revs, want);
    });
}

#[test]
fn progress_notify_interval() {
    let s = Server::start(
        "wr-progress",
        &["--experimental-watch-progress-notify-interval", "200ms"],
    );
    runtime().block_on(async {
        let mut kv = etcd_client::Client::connect([s.endpoint()], None)
            .await
            .unwrap();
        let mut w = Watch::open(
            &s,
            pb::WatchCreateRequest {
                progress_notify: true,
                ..create("p")
            },
        )
        .await;
        let id = w.next().await.watch_id;
        let rev = kv.put("other", "x", None).await.unwrap();
        let rev = rev.header().unwrap().revision();
        // Within a few intervals: an empty response for this watcher at the revision.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = w.next().await;
            assert!(r.events.is_empty(), "{r:?}");
            assert_eq!(r.watch_id, id);
            if r.header.as_ref().unwrap().revision >= rev {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no progress notify");
        }
    });
}

/// A WatchProgressRequest answers with a revision that promises every event up to it was
/// sent on the stream (etcd 3.4.31 / 3.5.13, what Kubernetes' consistent reads from its
/// watch cache rely on): with a watcher still catching up on history, the progress
/// response comes after that history, never before. (etcd 3.4.23 answers at once: Keel
/// only.)
#[test]
fn a_progress_request_waits_for_the_history_it_covers() {
    if !common::is_keel() {
        return;
    }
    const REVISIONS: usize = 3000;
    let s = Server::start("wr-progress-wait", &[]);
    runtime().block_on(async {
        let kv = etcd_client::Client::connect([s.endpoint()], None)
            .await
            .unwrap();
        // A synced watcher whose client stops reading while 3,000 revisions of 8 KiB
        // values (24 MiB: more than the stream's queue and HTTP/2 windows hold) are
        // written: it falls behind and must catch up from history.
        let mut w = Watch::open(&s, create("h")).await;
        let value = "v".repeat(8192);
        let mut last = 0;
        for _ in 0..REVISIONS / 50 {
            let mut calls = Vec::new();
            for _ in 0..50 {
                let (mut c, v) = (kv.clone(), value.clone());
                calls.push(tokio::spawn(
                    async move { c.put("h", v, None).await.unwrap() },
                ));
            }
            for c in calls {
                last = last.max(c.await.unwrap().header().unwrap().revision());
            }
        }
        // Asked while history is still owed.
        w.send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let created = w.next().await;
        assert!(created.created);
        let mut events = 0;
        let mut newest = 0;
        loop {
            let r = w.next().await;
            if r.watch_id == -1 {
                assert!(r.events.is_empty());
                let rev = r.header.unwrap().revision;
                assert_eq!(
                    events, REVISIONS,
                    "progress at {rev} before all history was sent"
                );
                assert!(
                    rev >= newest && rev >= last,
                    "progress {rev} < {newest}/{last}"
                );
                break;
            }
            for e in &r.events {
                newest = newest.max(e.kv.as_ref().unwrap().mod_revision);
            }
            events += r.events.len();
        }
    });
}
