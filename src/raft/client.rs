//! `RaftClient`: a core's way to the raft core. One per core; request handlers call it,
//! a reply task feeds it.
//!
//! Runs on: every core (on the raft core it talks through local channels).
//! Invariant: at most `inflight_max` requests wait for a reply; each waiter gets exactly
//! one reply or is dropped with its handler (then the late reply is discarded).

use crate::mesh::ServerError;
use crate::mesh::{CoreId, Reply, ReplyKind, ReplyTo, ToRaft};
use glommio::channels::local_channel::LocalSender;
use glommio::channels::shared_channel::ConnectedSender;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

pub enum RaftSender {
    Local(Rc<LocalSender<ToRaft>>),
    Shared(ConnectedSender<ToRaft>),
}

#[derive(Default)]
struct Slot {
    reply: Option<Reply>,
    waker: Option<Waker>,
}

pub struct RaftClient {
    core: CoreId,
    next_seq: Cell<u64>,
    waiters: RefCell<HashMap<u64, Rc<RefCell<Slot>>>>,
    sender: RaftSender,
    inflight_max: usize,
    /// The leader named by the latest reply (0: none known).
    known_leader: Cell<u64>,
    learner: Cell<bool>,
}

/// A reply of the kind asked for, with the raft term it was made in.
#[derive(Debug)]
pub struct Answer<T> {
    pub value: T,
    pub raft_term: u64,
}

impl RaftClient {
    pub fn new(core: CoreId, sender: RaftSender, inflight_max: usize) -> RaftClient {
        RaftClient {
            core,
            next_seq: Cell::new(1),
            waiters: RefCell::new(HashMap::new()),
            sender,
            inflight_max,
            known_leader: Cell::new(0),
            learner: Cell::new(false),
        }
    }

    pub fn core(&self) -> CoreId {
        self.core
    }

    /// Sends the request `make(reply_to)` builds and waits for its reply, whose kind the
    /// request names. A full mailbox is pushed back to the client at once, never buffered.
    pub async fn call<T: ReplyKind>(
        &self,
        make: impl FnOnce(ReplyTo<T>) -> ToRaft,
    ) -> Result<Answer<T>, ServerError> {
        if self.waiters.borrow().len() >= self.inflight_max {
            return Err(ServerError::TooManyRequests);
        }
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let slot = Rc::new(RefCell::new(Slot::default()));
        self.waiters.borrow_mut().insert(seq, slot.clone());
        let guard = WaiterGuard { client: self, seq };
        let msg = make(ReplyTo::new(self.core, seq));
        let sent = match &self.sender {
            RaftSender::Local(tx) => tx.try_send(msg).is_ok(),
            RaftSender::Shared(tx) => tx.try_send(msg).is_ok(),
        };
        if !sent {
            return Err(ServerError::TooManyRequests);
        }
        let started = std::time::Instant::now();
        let reply = WaitReply { slot }.await;
        crate::metrics::observe(crate::metrics::Hist::StageRaft, started.elapsed());
        drop(guard);
        let raft_term = reply.raft_term;
        let value = T::unwrap(reply.body?).ok_or_else(|| {
            debug_assert!(false, "a reply of another kind than its request's");
            ServerError::Internal("a reply of another kind than its request's".into())
        })?;
        Ok(Answer { value, raft_term })
    }

    /// The leader as of the latest reply from the raft core (0: none).
    pub fn known_leader(&self) -> u64 {
        self.known_leader.get()
    }

    /// The leader named by the latest round from the raft core.
    pub fn set_known_leader(&self, leader: u64) {
        self.known_leader.set(leader);
    }

    /// Whether this member is a learner, as of the latest round.
    pub fn set_learner(&self, learner: bool) {
        self.learner.set(learner);
    }

    pub fn is_learner(&self) -> bool {
        self.learner.get()
    }

    /// Hands a reply from the raft core to its waiter (if it is still waiting).
    pub fn deliver(&self, reply: Reply) {
        self.known_leader.set(reply.leader);
        let Some(slot) = self.waiters.borrow_mut().remove(&reply.seq) else {
            return;
        };
        let mut slot = slot.borrow_mut();
        slot.reply = Some(reply);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

struct WaiterGuard<'a> {
    client: &'a RaftClient,
    seq: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.client.waiters.borrow_mut().remove(&self.seq);
    }
}

struct WaitReply {
    slot: Rc<RefCell<Slot>>,
}

impl Future for WaitReply {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let mut slot = self.slot.borrow_mut();
        match slot.reply.take() {
            Some(r) => Poll::Ready(r),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
