//! Which core serves an accepted client connection.
//!
//! Runs on: every core. Each core still accepts on its own SO_REUSEPORT listener, but the
//! kernel picks the listener by a hash of the connection's addresses, so four connections
//! can land 3–1 or 4–0 on two cores, and one client's connection lands on either core. A
//! core that accepts a connection hands it to the core with the fewest live connections;
//! ties go to the preferred core (the raft core: a unary write from a connection there
//! takes no cross-core hop on its way to raft and back), then to the accepting core. The
//! connection travels as an `AcceptedTcpStream` (a file descriptor, `Send`) over a
//! bounded channel and is bound to the receiving core's executor there; its TLS handshake
//! and everything after happen on that core.
//!
//! Shared instead of sent: one live-connection count per core (`AtomicU32`, relaxed),
//! raised by the core that picks the target and lowered by the core that served it when
//! the connection ends. Accept is not a hot path; two cores picking at once may both pick
//! the same core, which the next accept evens out.
//!
//! Invariants:
//! - A connection is served by exactly one core: the target's channel gets it, or, when
//!   that channel is full or closed, the accepting core serves it (and the counts say so).
//! - Every count raised is lowered once, when the serving task ends (`Live`'s drop).

use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::net::AcceptedTcpStream;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Connections queued to one core at most; beyond that the accepting core serves them.
const HANDOFF_DEPTH: usize = 256;

/// An accepted connection on its way to another core: `slot` names the listener (the
/// receiving core serves it with its own handlers for that listener).
pub struct Handoff {
    pub slot: usize,
    pub stream: AcceptedTcpStream,
}

/// One core's end of the spread, before its executor connects the channels.
pub struct SpreadLinks {
    core: usize,
    preferred: usize,
    live: Arc<[AtomicU32]>,
    outs: Vec<(usize, SharedSender<Handoff>)>,
    ins: Vec<SharedReceiver<Handoff>>,
}

/// Builds every core's links: a channel for each ordered pair of cores. `preferred` wins
/// ties (the raft core).
pub fn build(cores: usize, preferred: usize) -> Vec<SpreadLinks> {
    let live: Arc<[AtomicU32]> = (0..cores).map(|_| AtomicU32::new(0)).collect();
    let mut links: Vec<SpreadLinks> = (0..cores)
        .map(|core| SpreadLinks {
            core,
            preferred,
            live: live.clone(),
            outs: Vec::new(),
            ins: Vec::new(),
        })
        .collect();
    for from in 0..cores {
        for to in 0..cores {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(HANDOFF_DEPTH);
                links[from].outs.push((to, tx));
                links[to].ins.push(rx);
            }
        }
    }
    links
}

impl SpreadLinks {
    /// Starts this core's side on its executor: tasks connect the channels (each waits for
    /// its peer core), and every connection another core hands to this one goes to
    /// `serve`. Until a channel to a core is connected, nothing is handed to that core.
    pub fn start(self, serve: impl Fn(Handoff, Live) + 'static) -> Rc<Spread> {
        let cores = self.live.len();
        let spread = Rc::new(Spread {
            core: self.core,
            preferred: self.preferred,
            live: self.live,
            outs: RefCell::new((0..cores).map(|_| None).collect()),
        });
        for (to, tx) in self.outs {
            let spread = Rc::downgrade(&spread);
            glommio::spawn_local(async move {
                let tx = tx.connect().await;
                if let Some(spread) = spread.upgrade() {
                    spread.outs.borrow_mut()[to] = Some(tx);
                }
            })
            .detach();
        }
        let serve = Rc::new(serve);
        for rx in self.ins {
            let (spread, serve) = (Rc::downgrade(&spread), serve.clone());
            glommio::spawn_local(async move {
                let rx = rx.connect().await;
                while let Some(handoff) = rx.recv().await {
                    let Some(spread) = spread.upgrade() else {
                        break;
                    };
                    serve(handoff, spread.received());
                }
            })
            .detach();
        }
        spread
    }
}

/// A core's view of where connections go.
pub struct Spread {
    core: usize,
    preferred: usize,
    live: Arc<[AtomicU32]>,
    outs: RefCell<Vec<Option<ConnectedSender<Handoff>>>>,
}

/// A live connection counted against the core that serves it; dropping it uncounts it.
pub struct Live {
    live: Arc<[AtomicU32]>,
    core: usize,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.live[self.core].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where an accepted connection is served.
pub enum Placed {
    /// Here, on the accepting core.
    Here(AcceptedTcpStream, Live),
    /// Handed to another core.
    Away,
}

impl Spread {
    /// The core that should serve the next connection: of this core and those whose
    /// channel is connected, the fewest live connections; ties go to the preferred core,
    /// then to this one, then to the lowest number.
    pub fn target(&self) -> usize {
        let outs = self.outs.borrow();
        let rank = |c: usize| {
            let reachable = c == self.core || outs[c].is_some();
            let n = self.live[c].load(Ordering::Relaxed);
            (!reachable, n, c != self.preferred, c != self.core, c)
        };
        (0..self.live.len())
            .min_by_key(|&c| rank(c))
            .unwrap_or(self.core)
    }

    /// Places a connection this core accepted: on the target core, or here when the
    /// target's queue is full or gone.
    pub fn place(&self, slot: usize, stream: AcceptedTcpStream) -> Placed {
        let to = self.target();
        if to != self.core {
            if let Some(tx) = &self.outs.borrow()[to] {
                self.live[to].fetch_add(1, Ordering::Relaxed);
                match tx.try_send(Handoff { slot, stream }) {
                    Ok(()) => return Placed::Away,
                    Err(e) => {
                        self.live[to].fetch_sub(1, Ordering::Relaxed);
                        use glommio::{GlommioError, ResourceType};
                        // try_send gives the message back in both of its errors (full,
                        // closed); it has no other.
                        if let GlommioError::WouldBlock(ResourceType::Channel(h))
                        | GlommioError::Closed(ResourceType::Channel(h)) = e
                        {
                            return Placed::Here(h.stream, self.count_here());
                        }
                        crate::runtime::log::warning(
                            "embed",
                            "a connection was lost handing it to a core",
                        );
                        return Placed::Away;
                    }
                }
            }
        }
        Placed::Here(stream, self.count_here())
    }

    /// Counts a connection handed to this core (its sender raised the count already).
    pub fn received(&self) -> Live {
        Live {
            live: self.live.clone(),
            core: self.core,
        }
    }

    fn count_here(&self) -> Live {
        self.live[self.core].fetch_add(1, Ordering::Relaxed);
        self.received()
    }

    /// Live connections per core, as this core sees them now.
    #[cfg(test)]
    pub fn live(&self) -> Vec<u32> {
        self.live
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::executor_builder;
    use glommio::net::TcpListener;
    use glommio::Placement;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A connection served: (the core that serves it, the client's local port).
    type Served = (usize, u16);

    /// Core 1 accepts every connection (its listener is its own); core 0 is preferred.
    /// The connections go 0, 1, 0, 1 (fewest live, ties to the preferred core), and once
    /// core 0's connections end, the next one goes to core 0 again.
    #[test]
    fn connections_go_to_the_core_with_fewest_ties_to_the_preferred_one() {
        let mut links = build(2, 0).into_iter();
        let (link0, link1) = (links.next().unwrap(), links.next().unwrap());
        let (served_tx, served_rx) = mpsc::channel::<Served>();
        let (addr_tx, addr_rx) = mpsc::channel();
        // Core 0 serves what it is handed, holding its `Live` until told to let go.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let tx0 = served_tx.clone();
        let core0 = executor_builder("spread-test-0", Placement::Unbound)
            .spawn(move || async move {
                let held: Rc<RefCell<Vec<Live>>> = Rc::default();
                let keep = held.clone();
                let _spread = link0.start(move |handoff, live| {
                    let stream = handoff.stream.bind_to_executor();
                    let port = stream.peer_addr().unwrap().port();
                    tx0.send((0, port)).unwrap();
                    keep.borrow_mut().push(live);
                });
                loop {
                    match release_rx.try_recv() {
                        Ok(()) => held.borrow_mut().clear(),
                        Err(mpsc::TryRecvError::Disconnected) => break,
                        Err(mpsc::TryRecvError::Empty) => {}
                    }
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            })
            .unwrap();
        let core1 = executor_builder("spread-test-1", Placement::Unbound)
            .spawn(move || async move {
                let held: Rc<RefCell<Vec<Live>>> = Rc::default();
                let spread = link1.start(|_, _| panic!("core 0 hands nothing to core 1"));
                // Wait until the channel to core 0 is connected, so the first pick can go there.
                while spread.outs.borrow()[0].is_none() {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                for _ in 0..5 {
                    let stream = listener.shared_accept().await.unwrap();
                    if let Placed::Here(stream, live) = spread.place(0, stream) {
                        let stream = stream.bind_to_executor();
                        served_tx
                            .send((1, stream.peer_addr().unwrap().port()))
                            .unwrap();
                        held.borrow_mut().push(live);
                    }
                }
                spread.live()
            })
            .unwrap();
        let addr = addr_rx.recv().unwrap();
        let mut clients = Vec::new();
        let mut connect = || {
            let c = std::net::TcpStream::connect(addr).unwrap();
            let port = c.local_addr().unwrap().port();
            clients.push(c);
            let (core, served) = served_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(served, port, "connections are placed in accept order");
            core
        };
        let first: Vec<usize> = (0..4).map(|_| connect()).collect();
        assert_eq!(first, [0, 1, 0, 1]);
        // Core 0's two connections end: it has the fewest again.
        release_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(connect(), 0);
        let live = core1.join().unwrap();
        assert_eq!(live, [1, 2], "counts after core 0 let its first two go");
        drop(release_tx);
        core0.join().unwrap();
    }
}
