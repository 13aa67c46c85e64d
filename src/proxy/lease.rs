//! Lease keep-alives through the proxy: every downstream LeaseKeepAlive stream on a core
//! shares the core's one upstream keep-alive stream, and keep-alives of one lease are
//! coalesced: while one is on its way upstream, others for the same lease wait for its
//! answer; an answer younger than [`FRESH`] answers new ones at once.
//!
//! Runs on: every proxy core.

use super::forward::{status_of, Ctx};
use super::upstream::Upstream;
use crate::grpc::client::{self, CallError};
use crate::grpc::server::{Request, Responses};
use crate::grpc::status::{Code, Status};
use crate::pb::etcdserverpb as pb;
use bytes::Bytes;
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use prost::Message;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// How long an upstream answer stands for new keep-alives of the same lease. The TTL it
/// reports is then up to this much longer than the cluster's; clients renew at a third of
/// the TTL (seconds), so this is well inside their margin.
const FRESH: Duration = Duration::from_millis(500);

/// Downstream queue depth of a keep-alive stream.
pub const STREAM_QUEUE: usize = 256;

pub struct Leases {
    up: Rc<Upstream>,
    /// Lease → the streams waiting for its answer.
    waiting: RefCell<HashMap<i64, Vec<Weak<Responses>>>>,
    /// Lease → the last answer and when it came.
    recent: RefCell<HashMap<i64, (Instant, Bytes)>>,
    sender: RefCell<Option<LocalSender<i64>>>,
    /// Keep-alives answered without going upstream.
    pub coalesced: std::cell::Cell<u64>,
}

impl Leases {
    pub fn new(up: Rc<Upstream>) -> Rc<Leases> {
        Rc::new(Leases {
            up,
            waiting: RefCell::new(HashMap::new()),
            recent: RefCell::new(HashMap::new()),
            sender: RefCell::new(None),
            coalesced: std::cell::Cell::new(0),
        })
    }

    fn ask(self: &Rc<Self>, id: i64, res: &Rc<Responses>) {
        if let Some((at, answer)) = self.recent.borrow().get(&id) {
            if at.elapsed() < FRESH {
                self.coalesced.set(self.coalesced.get() + 1);
                let _ = res.try_send(answer.clone());
                return;
            }
        }
        let mut waiting = self.waiting.borrow_mut();
        let first = !waiting.contains_key(&id);
        waiting.entry(id).or_default().push(Rc::downgrade(res));
        drop(waiting);
        if !first {
            self.coalesced.set(self.coalesced.get() + 1);
            return;
        }
        let mut sender = self.sender.borrow_mut();
        if sender.is_none() {
            let (tx, rx) = local_channel::new_unbounded();
            *sender = Some(tx);
            glommio::spawn_local(upstream_loop(Rc::downgrade(self), rx)).detach();
        }
        let _ = sender.as_ref().expect("set").try_send(id);
    }

    /// Whether an answer for `res` is still awaited.
    fn waits_for(&self, res: &Rc<Responses>) -> bool {
        let me = Rc::downgrade(res);
        self.waiting
            .borrow()
            .values()
            .any(|ws| ws.iter().any(|w| w.ptr_eq(&me)))
    }

    fn answer(&self, raw: Bytes) {
        let Ok(r) = pb::LeaseKeepAliveResponse::decode(raw.clone()) else {
            return;
        };
        let mut recent = self.recent.borrow_mut();
        if recent.len() > 100_000 {
            recent.retain(|_, (at, _)| at.elapsed() < FRESH);
        }
        recent.insert(r.id, (Instant::now(), raw.clone()));
        drop(recent);
        let waiters = self.waiting.borrow_mut().remove(&r.id).unwrap_or_default();
        for w in waiters {
            if let Some(res) = w.upgrade() {
                let _ = res.try_send(raw.clone());
            }
        }
    }
}

/// The core's upstream keep-alive stream: lease IDs in, answers out; on a break, dials
/// the next endpoint and asks again for every lease still waiting.
async fn upstream_loop(me: Weak<Leases>, rx: LocalReceiver<i64>) {
    loop {
        let Some(l) = me.upgrade() else { return };
        let up = l.up.clone();
        let again: Vec<i64> = l.waiting.borrow().keys().copied().collect();
        drop(l);
        let opened = match up.conn().await {
            Ok((conn, g)) => {
                client::Stream::open_with(&conn, "/etcdserverpb.Lease/LeaseKeepAlive", &[])
                    .await
                    .map(|s| (s, g))
            }
            Err(e) => Err(e),
        };
        let Ok((mut stream, g)) = opened else {
            // Nobody can be answered now: the waiting streams are told so.
            if let Some(l) = me.upgrade() {
                l.waiting.borrow_mut().clear();
            }
            glommio::timer::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut ok = true;
        for id in again {
            ok &= stream
                .send_raw(&pb::LeaseKeepAliveRequest { id }.encode_to_vec())
                .is_ok();
        }
        while ok {
            enum Next {
                Ask(Option<i64>),
                Answer(Result<Bytes, CallError>),
            }
            let next = future::or(async { Next::Ask(rx.recv().await) }, async {
                Next::Answer(stream.recv_raw().await)
            })
            .await;
            match next {
                Next::Ask(None) => return,
                Next::Ask(Some(id)) => {
                    ok = stream
                        .send_raw(&pb::LeaseKeepAliveRequest { id }.encode_to_vec())
                        .is_ok();
                }
                Next::Answer(Ok(raw)) => match me.upgrade() {
                    Some(l) => l.answer(raw),
                    None => return,
                },
                Next::Answer(Err(_)) => ok = false,
            }
        }
        up.failed(g);
    }
}

/// Serves one downstream LeaseKeepAlive stream.
pub async fn keep_alive(ctx: &Rc<Ctx>, mut req: Request, res: Responses) -> Result<(), Status> {
    // The cluster must be reachable to keep anything alive (etcd answers Unavailable).
    ctx.up.conn().await.map_err(status_of)?;
    let res = Rc::new(res);
    while let Some(message) = req.messages.next().await {
        let r = pb::LeaseKeepAliveRequest::decode(message?).map_err(|e| {
            Status::new(
                Code::Internal,
                format!("grpc: error unmarshalling request: {e}"),
            )
        })?;
        ctx.leases.ask(r.id, &res);
    }
    // Half-closed: the answers still on their way go out first (a client that sends one
    // keep-alive and closes, as python-etcd3's refresh does, reads its answer after).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ctx.leases.waits_for(&res) && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
