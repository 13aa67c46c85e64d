//! `Responses`: the queue between a streaming call's handler (a Watch stream, keep-alives)
//! and the connection task that writes to the client. The gRPC layer makes one per call;
//! the watch hub fills them without knowing about gRPC.
//!
//! Runs on: the connection's core. Invariant: at most `bound` messages wait (when a bound
//! is set); `try_send` never waits, `send` waits for room.

use bytes::Bytes;
use futures_lite::future;
use glommio::channels::local_channel::LocalSender;
use std::rc::Rc;
use std::task::Poll;

/// One response message: whole, or in pieces that go out one after another as one gRPC
/// message (a large Range answer: each shard's part as it was read, never copied together).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Whole(Bytes),
    Pieces(Vec<Bytes>),
}

impl Message {
    pub fn len(&self) -> usize {
        match self {
            Message::Whole(b) => b.len(),
            Message::Pieces(p) => p.iter().map(Bytes::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message in one buffer (pieces are copied together).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Message::Whole(b) => b,
            Message::Pieces(p) if p.len() == 1 => p.into_iter().next().unwrap(),
            Message::Pieces(p) => Bytes::from(p.concat()),
        }
    }

    /// Its pieces, in order.
    pub fn pieces(&self) -> &[Bytes] {
        match self {
            Message::Whole(b) => std::slice::from_ref(b),
            Message::Pieces(p) => p,
        }
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Message {
        Message::Whole(b)
    }
}

/// The call is gone (client reset, deadline): nothing more can be sent on it.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// Where a handler sends response messages. Bounded: `send` waits while the queue is full
/// (the client is not reading). Dropping it (the handler returning) ends the response.
pub struct Responses {
    sender: LocalSender<Message>,
    /// Set for routes with their own queue bound: the channel is unbounded (it allocates
    /// as it fills, not up front) and the bound is enforced here, the writer waking
    /// senders that wait for room.
    bound: Option<(usize, Rc<Room>)>,
}

/// Wakes a sender waiting for queue room when the writer takes a response; counts the
/// bytes queued.
#[derive(Default)]
pub struct Room {
    wakers: std::cell::RefCell<Vec<std::task::Waker>>,
    queued_bytes: std::cell::Cell<usize>,
}

impl Room {
    pub fn wake(&self) {
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// The writer took a message of `bytes` off the queue.
    pub fn took(&self, bytes: usize) {
        self.queued_bytes
            .set(self.queued_bytes.get().saturating_sub(bytes));
    }
}

/// Why `Responses::try_send` did not queue a message.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue is at its bound: the client reads slower than we send.
    Full,
    /// The call is gone.
    Closed,
}

impl Responses {
    /// `bound`: the route's own queue bound and the waker set its writer wakes (the
    /// channel is then unbounded); `None`: the channel's own bound.
    pub fn new(sender: LocalSender<Message>, bound: Option<(usize, Rc<Room>)>) -> Responses {
        Responses { sender, bound }
    }

    /// Queues one response message if there is room now.
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), TrySendError> {
        if self.is_full() {
            return Err(TrySendError::Full);
        }
        let message = message.into();
        let bytes = message.len();
        self.sender
            .try_send(message)
            .map_err(|_| TrySendError::Closed)?;
        self.queued(bytes);
        Ok(())
    }

    fn is_full(&self) -> bool {
        match &self.bound {
            None => self.sender.is_full(),
            Some((bound, _)) => self.sender.len() >= *bound,
        }
    }

    /// How many more responses `try_send` would take now.
    pub fn room(&self) -> usize {
        match &self.bound {
            None => usize::from(!self.sender.is_full()),
            Some((bound, _)) => bound.saturating_sub(self.sender.len()),
        }
    }

    /// Queues one response message; fails once the call is gone (client reset, deadline).
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), Closed> {
        let message = message.into();
        if let Some((bound, room)) = &self.bound {
            future::poll_fn(|cx| {
                if self.sender.len() < *bound {
                    Poll::Ready(())
                } else {
                    room.wakers.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        }
        let bytes = message.len();
        self.sender.send(message).await.map_err(|_| Closed)?;
        self.queued(bytes);
        Ok(())
    }

    fn queued(&self, bytes: usize) {
        if let Some((_, room)) = &self.bound {
            room.queued_bytes.set(room.queued_bytes.get() + bytes);
        }
    }

    /// Waits until fewer than `bytes` bytes of responses wait in the queue (routes with
    /// their own bound; others return at once). A sender of large messages (a watch's
    /// catch-up) calls it before making the next, so that a slow client holds at most
    /// about that much, whatever the queue's bound in messages.
    pub async fn wait_queued_below(&self, bytes: usize) {
        let Some((_, room)) = &self.bound else {
            return;
        };
        future::poll_fn(|cx| {
            if room.queued_bytes.get() < bytes {
                Poll::Ready(())
            } else {
                room.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
