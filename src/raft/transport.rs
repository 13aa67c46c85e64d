//! The peer transport: raft messages, forwarded requests and raft snapshots between
//! members, on `--listen-peer-urls`: TCP or unix sockets, plain (`http`, `unix`) or TLS
//! (`https`, `unixs`, with the peer certificates; see `crate::tls`).
//!
//! Runs on: the raft core only (its tasks share the raft core's executor; nothing here
//! blocks it: sends only queue, sockets are glommio's).
//!
//! Wire: every connection starts with a `Hello` frame (cluster, sender, receiver, purpose)
//! and the acceptor answers one byte (`Handshake`). Then frames follow, each
//! `u32 BE length | u8 kind | payload` (the length counts kind + payload):
//! - purpose 0 (stream, one per ordered pair of members, dialer → acceptor only):
//!   `RAFT` (a batch of raft messages, each `u32 BE length | eraftpb.Message`),
//!   `FORWARD` and `FORWARD_REPLY` (prost `Forward` / `ForwardReply`).
//! - purpose 1 (one raft snapshot): `SNAP_MESSAGE` (the MsgSnapshot), `SNAP_CHUNK`s of db
//!   records (`u8 tree | u32 key len | key | u32 value len | value`, ~1 MiB each),
//!   `SNAP_END` (the db's `AppMeta`); the acceptor answers one byte once the db is durable.
//! - purpose 2 (cluster info, for a member joining an existing cluster): the acceptor
//!   sends one `CLUSTER_INFO` frame.
//!
//! Invariants:
//! - Sending never waits: messages queue per peer (bounded; beyond the bound they are
//!   dropped, which raft tolerates and retries) and one writer task per peer flushes the
//!   queue in one write per batch, reconnecting after a failure.
//! - A member in the removed set is told so at its handshake and its messages are never
//!   read; it stops itself when it hears that.

use crate::config::Url;
use crate::mesh::ToRaft;
use crate::mvcc::db::{AppMeta, Db, DbOptions, ReadSnapshot, TreeId, TREE_COUNT};
use crate::pb::keel::internal::{ClusterInfo, Forward, ForwardReply, Hello, Member};
use crate::runtime::log;
use crate::tls::stream::{Acceptor, Connector, Mode, Plain, Stream};
use ::raft::eraftpb::Message as RaftMessage;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use prost::Message as _;
use protobuf::Message as _;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

const KIND_RAFT: u8 = 1;
const KIND_FORWARD: u8 = 2;
const KIND_FORWARD_REPLY: u8 = 3;
const KIND_SNAP_MESSAGE: u8 = 4;
const KIND_SNAP_CHUNK: u8 = 5;
const KIND_SNAP_END: u8 = 6;
const KIND_CLUSTER_INFO: u8 = 7;

pub const PURPOSE_STREAM: u32 = 0;
pub const PURPOSE_SNAPSHOT: u32 = 1;
pub const PURPOSE_CLUSTER_INFO: u32 = 2;

/// The acceptor's answer to a `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Handshake {
    Ok = 0,
    /// The sender was removed from the cluster: it must stop.
    Removed = 1,
    /// The sender belongs to another cluster.
    ClusterMismatch = 2,
}

/// Largest frame accepted (a raft batch is bounded by raft's max_size_per_msg × inflight).
pub const FRAME_BYTES_MAX: usize = 512 << 20;
/// Raft messages queued per peer beyond which new ones are dropped.
pub const PEER_QUEUE_MAX: usize = 8192;
/// Db records per snapshot chunk, by bytes.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
const STREAM_READ_BUFFER_BYTES: usize = 256 << 10;
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

enum PeerListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl PeerListener {
    async fn accept(&self) -> std::io::Result<Plain> {
        match self {
            PeerListener::Tcp(l) => {
                let s = l.accept().await.map_err(std::io::Error::from)?;
                let _ = s.set_nodelay(true);
                Ok(Plain::Tcp(s))
            }
            PeerListener::Unix(l) => {
                Ok(Plain::Unix(l.accept().await.map_err(std::io::Error::from)?))
            }
        }
    }
}

/// What the acceptors need to know about the cluster, kept current by the raft core.
#[derive(Default)]
pub struct ClusterView {
    pub cluster_id: u64,
    pub members: Vec<Member>,
    pub removed: HashSet<u64>,
    /// The raft core's applied index (a snapshot at or below it is not installed).
    pub applied_index: u64,
}

/// Where a peer listener binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTarget {
    Tcp(SocketAddr),
    /// `unix://host:port`: the socket file `host:port`, relative to the working directory.
    Unix(PathBuf),
}

/// One `--listen-peer-urls` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerListen {
    pub target: PeerTarget,
    /// `https` or `unixs`.
    pub tls: bool,
}

struct Peer {
    addrs: RefCell<Vec<Url>>,
    raft: RefCell<Vec<RaftMessage>>,
    frames: RefCell<Vec<u8>>,
    doorbell: LocalSender<()>,
    stopped: Cell<bool>,
}

pub struct Transport {
    me: u64,
    view: RefCell<ClusterView>,
    peers: RefCell<HashMap<u64, Rc<Peer>>>,
    inbox: Rc<LocalSender<ToRaft>>,
    /// `member/snap`: where received snapshots are built.
    snap_dir: PathBuf,
    /// A snapshot is being received (one at a time: they share `db.recv`).
    receiving: Cell<bool>,
    /// Dials https / unixs peer URLs (`None`: no peer TLS configured).
    connector: Option<Rc<Connector>>,
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    push_frame(&mut f, kind, payload);
    f
}

fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

async fn read_frame(
    s: &mut (impl futures_lite::AsyncRead + Unpin),
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len - 1];
    s.read_exact(&mut payload).await?;
    Ok((head[4], payload))
}

/// The messages of a `RAFT` frame's payload.
fn parse_raft_frame(mut rest: &[u8]) -> std::io::Result<Vec<RaftMessage>> {
    let mut msgs = Vec::new();
    while !rest.is_empty() {
        let len = rest
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
            .filter(|&len| rest.len() >= 4 + len)
            .ok_or_else(|| invalid("truncated raft message"))?;
        msgs.push(RaftMessage::parse_from_bytes(&rest[4..4 + len]).map_err(invalid)?);
        rest = &rest[4 + len..];
    }
    Ok(msgs)
}

/// Appends one `RAFT` frame holding `msgs` to `out`, each message encoded in place.
fn push_raft_frame(out: &mut Vec<u8>, msgs: &[RaftMessage]) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, KIND_RAFT]);
    for m in msgs {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        m.write_to_vec(out).expect("raft message encodes");
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The peer URLs this member can dial: IP or `localhost` hosts, and unix sockets.
pub fn peer_addrs(urls: &[String]) -> Vec<Url> {
    urls.iter()
        .filter_map(|u| Url::parse(u).ok())
        .filter(|u| u.scheme.starts_with("unix") || u.socket_addr().is_ok())
        .collect()
}

async fn dial_one(url: &Url, connector: Option<&Connector>) -> std::io::Result<Stream> {
    let plain = if url.scheme.starts_with("unix") {
        let path = format!("{}:{}", url.host, url.port);
        let connect = async {
            UnixStream::connect(&path)
                .await
                .map_err(std::io::Error::from)
        };
        let timeout = async {
            glommio::timer::sleep(DIAL_TIMEOUT).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "dial timeout",
            ))
        };
        Plain::Unix(futures_lite::future::or(connect, timeout).await?)
    } else {
        let addr = url.socket_addr().map_err(std::io::Error::other)?;
        let s = TcpStream::connect_timeout(addr, DIAL_TIMEOUT)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let _ = s.set_nodelay(true);
        Plain::Tcp(s)
    };
    if url.scheme == "https" || url.scheme == "unixs" {
        let Some(connector) = connector else {
            return Err(std::io::Error::other(format!(
                "{url}: peer TLS is not configured (--peer-cert-file, --peer-key-file or \
                 --peer-auto-tls)"
            )));
        };
        return connector.connect(&url.host, plain).await;
    }
    Ok(Stream::Plain(plain))
}

async fn dial(addrs: &[Url], connector: Option<&Connector>) -> std::io::Result<Stream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no peer address");
    for url in addrs {
        match dial_one(url, connector).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Dials `addrs`, says hello and reads the acceptor's answer. A peer that refuses our
/// certificate tells so with a TLS alert on that first read (TLS 1.3 checks the client's
/// certificate after the dialer's side of the handshake is done).
async fn handshake(
    addrs: &[Url],
    hello: &Hello,
    connector: Option<&Connector>,
) -> std::io::Result<(Stream, u8)> {
    let tls_words = |e: std::io::Error| std::io::Error::new(e.kind(), crate::tls::error_text(&e));
    let mut s = dial(addrs, connector).await?;
    s.write_all(&frame(0, &hello.encode_to_vec()))
        .await
        .map_err(tls_words)?;
    s.flush().await.map_err(tls_words)?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.map_err(tls_words)?;
    Ok((s, answer[0]))
}

/// Asks the members at `addrs` (each a member's peer addresses) for the cluster's ID and
/// members; the first that answers wins. For `--initial-cluster-state existing`.
pub async fn fetch_cluster_info(
    addrs: &[Vec<Url>],
    attempts: usize,
    connector: Option<&Connector>,
) -> Result<ClusterInfo, String> {
    let hello = Hello {
        purpose: PURPOSE_CLUSTER_INFO,
        ..Default::default()
    };
    let mut errors = Vec::new();
    for attempt in 0..attempts {
        if attempt > 0 {
            glommio::timer::sleep(Duration::from_millis(200)).await;
        }
        for a in addrs {
            match handshake(a, &hello, connector).await {
                Ok((mut s, 0)) => match read_frame(&mut s).await {
                    Ok((KIND_CLUSTER_INFO, payload)) => {
                        return ClusterInfo::decode(&payload[..]).map_err(|e| e.to_string())
                    }
                    Ok((kind, _)) => errors.push(format!("{a:?}: unexpected frame {kind}")),
                    Err(e) => errors.push(format!("{a:?}: {e}")),
                },
                Ok((_, answer)) => errors.push(format!("{a:?}: refused ({answer})")),
                Err(e) => errors.push(format!("{a:?}: {e}")),
            }
        }
    }
    errors.truncate(4);
    Err(format!(
        "cannot fetch cluster info from peer urls: {}",
        errors.join("; ")
    ))
}

impl Transport {
    pub fn new(
        me: u64,
        inbox: Rc<LocalSender<ToRaft>>,
        snap_dir: PathBuf,
        connector: Option<Connector>,
    ) -> Rc<Transport> {
        Rc::new(Transport {
            me,
            view: RefCell::new(ClusterView::default()),
            peers: RefCell::new(HashMap::new()),
            inbox,
            snap_dir,
            receiving: Cell::new(false),
            connector: connector.map(Rc::new),
        })
    }

    /// Binds the peer listeners and serves each on its own task.
    pub fn listen(
        self: &Rc<Self>,
        listens: &[PeerListen],
        acceptor: Option<Rc<Acceptor>>,
    ) -> Result<(), String> {
        for l in listens {
            let mode = match (&acceptor, l.tls) {
                (Some(a), true) => Mode::Tls(a.clone()),
                _ => Mode::Plain,
            };
            let listener = match &l.target {
                PeerTarget::Tcp(addr) => PeerListener::Tcp(
                    TcpListener::bind(addr).map_err(|e| format!("listen tcp {addr}: bind: {e}"))?,
                ),
                PeerTarget::Unix(path) => {
                    // A socket file left by a previous run would fail the bind.
                    let _ = std::fs::remove_file(path);
                    PeerListener::Unix(
                        UnixListener::bind(path)
                            .map_err(|e| format!("listen unix {}: bind: {e}", path.display()))?,
                    )
                }
            };
            let me = self.clone();
            glommio::spawn_local(async move {
                loop {
                    match listener.accept().await {
                        Ok(plain) => {
                            let me = me.clone();
                            let mode = mode.clone();
                            glommio::spawn_local(async move {
                                let from = plain.peer_text();
                                let conn = match mode.accept(plain).await {
                                    Ok(accepted) => accepted.stream,
                                    Err(e) => {
                                        log::warning(
                                            "rafthttp",
                                            &format!(
                                                "rejected connection from {from:?} (error {:?}, \
                                                 ServerName \"\")",
                                                e.to_string()
                                            ),
                                        );
                                        return;
                                    }
                                };
                                if let Err(e) = me.serve(conn).await {
                                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                                        log::info(
                                            "rafthttp",
                                            &format!("peer connection closed: {e}"),
                                        );
                                    }
                                }
                            })
                            .detach();
                        }
                        Err(e) => {
                            log::warning("rafthttp", &format!("peer accept: {e}"));
                            glommio::timer::sleep(RECONNECT_DELAY).await;
                        }
                    }
                }
            })
            .detach();
        }
        Ok(())
    }

    /// The raft core's latest view of the cluster (after each membership change), and the
    /// peers to send to: every member but this one.
    pub fn update(self: &Rc<Self>, view: ClusterView) {
        let mut peers = self.peers.borrow_mut();
        let wanted: HashMap<u64, Vec<Url>> = view
            .members
            .iter()
            .filter(|m| m.id != self.me)
            .map(|m| (m.id, peer_addrs(&m.peer_urls)))
            .collect();
        peers.retain(|id, p| {
            let keep = wanted.contains_key(id);
            if !keep {
                p.stopped.set(true);
                let _ = p.doorbell.try_send(());
            }
            keep
        });
        for (id, addrs) in wanted {
            match peers.get(&id) {
                Some(p) => *p.addrs.borrow_mut() = addrs,
                None => {
                    let (tx, rx) = local_channel::new_bounded(1);
                    let peer = Rc::new(Peer {
                        addrs: RefCell::new(addrs),
                        raft: RefCell::new(Vec::new()),
                        frames: RefCell::new(Vec::new()),
                        doorbell: tx,
                        stopped: Cell::new(false),
                    });
                    peers.insert(id, peer.clone());
                    let me = self.clone();
                    glommio::spawn_local(async move { me.writer(id, peer, rx).await }).detach();
                }
            }
        }
        *self.view.borrow_mut() = view;
    }

    pub fn set_applied_index(&self, index: u64) {
        self.view.borrow_mut().applied_index = index;
    }

    pub fn cluster_id(&self) -> u64 {
        self.view.borrow().cluster_id
    }

    /// Queues raft messages for their peers (never waits).
    pub fn send(&self, msgs: Vec<RaftMessage>) {
        let peers = self.peers.borrow();
        for m in msgs {
            let Some(p) = peers.get(&m.to) else { continue };
            let mut q = p.raft.borrow_mut();
            if q.len() < PEER_QUEUE_MAX {
                q.push(m);
                let _ = p.doorbell.try_send(());
            }
        }
    }

    /// Queues a forwarded request or a reply to one for member `to`; false when `to` is
    /// not a known peer.
    pub fn send_forward(&self, to: u64, fwd: &Forward) -> bool {
        self.send_frame(to, KIND_FORWARD, &fwd.encode_to_vec())
    }

    pub fn send_forward_reply(&self, to: u64, reply: &ForwardReply) -> bool {
        self.send_frame(to, KIND_FORWARD_REPLY, &reply.encode_to_vec())
    }

    fn send_frame(&self, to: u64, kind: u8, payload: &[u8]) -> bool {
        let peers = self.peers.borrow();
        let Some(p) = peers.get(&to) else {
            return false;
        };
        push_frame(&mut p.frames.borrow_mut(), kind, payload);
        let _ = p.doorbell.try_send(());
        true
    }

    fn hello(&self, to: u64, purpose: u32) -> Hello {
        Hello {
            cluster_id: self.cluster_id(),
            from: self.me,
            to,
            purpose,
        }
    }

    /// One peer's writer: connects (again after any failure), then writes whatever queued
    /// since the last write in one go.
    async fn writer(self: Rc<Self>, id: u64, peer: Rc<Peer>, doorbell: LocalReceiver<()>) {
        let mut conn: Option<Stream> = None;
        let mut reported = false;
        while !peer.stopped.get() {
            let queued = !peer.raft.borrow().is_empty() || !peer.frames.borrow().is_empty();
            if !queued && doorbell.recv().await.is_none() {
                return;
            }
            if peer.stopped.get() {
                return;
            }
            if conn.is_none() {
                let addrs = peer.addrs.borrow().clone();
                match handshake(
                    &addrs,
                    &self.hello(id, PURPOSE_STREAM),
                    self.connector.as_deref(),
                )
                .await
                {
                    Ok((s, 0)) => {
                        if reported {
                            log::info("rafthttp", &format!("peer {id:x} became active"));
                        }
                        reported = false;
                        conn = Some(s);
                    }
                    Ok((_, answer)) => {
                        if answer == Handshake::Removed as u8 {
                            let _ = self.inbox.try_send(ToRaft::Removed);
                            return;
                        }
                        if !reported {
                            log::warning(
                                "rafthttp",
                                &format!("peer {id:x} refused the connection ({answer})"),
                            );
                        }
                        reported = true;
                    }
                    Err(e) => {
                        if !reported {
                            log::warning("rafthttp", &format!("peer {id:x} became inactive: {e}"));
                        }
                        reported = true;
                    }
                }
                if conn.is_none() {
                    // What queued while the peer is unreachable is dropped (raft resends).
                    peer.raft.borrow_mut().clear();
                    peer.frames.borrow_mut().clear();
                    let _ = self.inbox.try_send(ToRaft::Unreachable(id));
                    glommio::timer::sleep(RECONNECT_DELAY).await;
                    continue;
                }
            }
            let msgs = std::mem::take(&mut *peer.raft.borrow_mut());
            let mut buf = std::mem::take(&mut *peer.frames.borrow_mut());
            if !msgs.is_empty() {
                push_raft_frame(&mut buf, &msgs);
            }
            if buf.is_empty() {
                continue;
            }
            let s = conn.as_mut().expect("connected above");
            let written = match s.write_all(&buf).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            };
            match &written {
                Ok(()) => crate::metrics::peer_sent(id, buf.len()),
                Err(_) => crate::metrics::peer_send_failed(id),
            }
            if let Err(e) = written {
                log::warning("rafthttp", &format!("lost the stream to peer {id:x}: {e}"));
                conn = None;
                let _ = self.inbox.try_send(ToRaft::Unreachable(id));
            }
        }
    }

    /// One accepted connection.
    async fn serve(self: Rc<Self>, mut s: Stream) -> std::io::Result<()> {
        let (kind, payload) = read_frame(&mut s).await?;
        if kind != 0 {
            return Err(invalid("peer connection without hello"));
        }
        let hello = Hello::decode(&payload[..]).map_err(invalid)?;
        let answer = {
            let view = self.view.borrow();
            if hello.purpose == PURPOSE_CLUSTER_INFO {
                Handshake::Ok
            } else if view.removed.contains(&hello.from) {
                Handshake::Removed
            } else if hello.cluster_id != view.cluster_id {
                Handshake::ClusterMismatch
            } else {
                Handshake::Ok
            }
        };
        s.write_all(&[answer as u8]).await?;
        s.flush().await?;
        if answer != Handshake::Ok {
            return Ok(());
        }
        match hello.purpose {
            PURPOSE_CLUSTER_INFO => {
                let info = {
                    let view = self.view.borrow();
                    ClusterInfo {
                        cluster_id: view.cluster_id,
                        members: view.members.clone(),
                    }
                };
                s.write_all(&frame(KIND_CLUSTER_INFO, &info.encode_to_vec()))
                    .await?;
                s.flush().await?;
                Ok(())
            }
            PURPOSE_SNAPSHOT => {
                if self.receiving.replace(true) {
                    // Another one is arriving: this sender fails and raft retries later.
                    return Err(invalid("a snapshot is already being received"));
                }
                let res = self.receive_snapshot(s, hello.from).await;
                self.receiving.set(false);
                res
            }
            _ => self.read_stream(s, hello.from).await,
        }
    }

    async fn read_stream(&self, s: Stream, from: u64) -> std::io::Result<()> {
        // Buffered: a batch of small frames costs one read, not two per frame.
        let mut s = futures_lite::io::BufReader::with_capacity(STREAM_READ_BUFFER_BYTES, s);
        loop {
            let (kind, payload) = read_frame(&mut s).await?;
            crate::metrics::peer_received(from, payload.len() + 5);
            if self.view.borrow().removed.contains(&from) {
                // Closing makes the sender dial again, and its handshake tells it.
                return Ok(());
            }
            let msg = match kind {
                KIND_RAFT => ToRaft::Peer(parse_raft_frame(&payload)?),
                KIND_FORWARD => ToRaft::Forwarded {
                    member: from,
                    fwd: Forward::decode(&payload[..]).map_err(invalid)?,
                },
                KIND_FORWARD_REPLY => {
                    ToRaft::ForwardReply(ForwardReply::decode(&payload[..]).map_err(invalid)?)
                }
                k => return Err(invalid(format!("unknown peer frame kind {k}"))),
            };
            if self.inbox.send(msg).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Streams the db state `snap` holds to `to`, after the MsgSnapshot `msg`; tells raft
    /// whether it arrived.
    pub fn send_snapshot(self: &Rc<Self>, msg: RaftMessage, snap: ReadSnapshot) {
        let to = msg.to;
        let Some(addrs) = self
            .peers
            .borrow()
            .get(&to)
            .map(|p| p.addrs.borrow().clone())
        else {
            let _ = self
                .inbox
                .try_send(ToRaft::SnapshotReport { to, ok: false });
            return;
        };
        let me = self.clone();
        glommio::spawn_local(async move {
            let app = snap.app_meta();
            let started = std::time::Instant::now();
            let res = me.stream_snapshot(&addrs, &msg, &snap).await;
            let ok = matches!(res, Ok(true));
            match &res {
                Ok(true) => log::info(
                    "rafthttp",
                    &format!(
                        "sent database snapshot at index {} to peer {to:x} in {:?}",
                        app.consistent_index,
                        started.elapsed()
                    ),
                ),
                Ok(false) => log::warning(
                    "rafthttp",
                    &format!("peer {to:x} refused the database snapshot"),
                ),
                Err(e) => log::warning(
                    "rafthttp",
                    &format!("database snapshot to peer {to:x} failed: {e}"),
                ),
            }
            let _ = me.inbox.send(ToRaft::SnapshotReport { to, ok }).await;
        })
        .detach();
    }

    async fn stream_snapshot(
        &self,
        addrs: &[Url],
        msg: &RaftMessage,
        snap: &ReadSnapshot,
    ) -> std::io::Result<bool> {
        let (mut s, answer) = handshake(
            addrs,
            &self.hello(msg.to, PURPOSE_SNAPSHOT),
            self.connector.as_deref(),
        )
        .await?;
        if answer != 0 {
            return Ok(false);
        }
        let bytes = msg.write_to_bytes().expect("raft message encodes");
        s.write_all(&frame(KIND_SNAP_MESSAGE, &bytes)).await?;
        let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES + 4096);
        for t in 0..TREE_COUNT {
            let tree = TreeId::ALL[t];
            for entry in snap.range(tree, &[], &[]) {
                // A damaged page fails the send (reported by `db::corruption_found`).
                let (k, v) = entry.map_err(std::io::Error::other)?;
                push_record(&mut chunk, t, k, v);
                if chunk.len() >= SNAPSHOT_CHUNK_BYTES {
                    s.write_all(&frame(KIND_SNAP_CHUNK, &chunk)).await?;
                    chunk.clear();
                    glommio::yield_if_needed().await;
                }
            }
        }
        if !chunk.is_empty() {
            s.write_all(&frame(KIND_SNAP_CHUNK, &chunk)).await?;
        }
        s.write_all(&frame(KIND_SNAP_END, &encode_app_meta(&snap.app_meta())))
            .await?;
        s.flush().await?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await?;
        Ok(answer[0] == 0)
    }

    /// Receives one snapshot: a db newer than what this member applied is built beside
    /// the live one, made durable and moved into place; then the raft core restarts the
    /// member on it (`ToRaft::SnapshotInstalled`).
    async fn receive_snapshot(&self, mut s: Stream, from: u64) -> std::io::Result<()> {
        let (kind, payload) = read_frame(&mut s).await?;
        if kind != KIND_SNAP_MESSAGE {
            return Err(invalid("snapshot stream without its message"));
        }
        let msg = RaftMessage::parse_from_bytes(&payload).map_err(invalid)?;
        // `etcd_server_snapshot_apply_in_progress_total`: 1 until this returns.
        struct InProgress;
        impl Drop for InProgress {
            fn drop(&mut self) {
                crate::metrics::set(crate::metrics::Gauge::SnapshotApplyInProgress, 0.0);
            }
        }
        crate::metrics::set(crate::metrics::Gauge::SnapshotApplyInProgress, 1.0);
        let _in_progress = InProgress;
        let path = self.snap_dir.join("db.recv");
        let _ = glommio::io::remove(&path).await;
        let mut db = Db::open(&path, DbOptions::default())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let app = loop {
            let (kind, payload) = read_frame(&mut s).await?;
            match kind {
                KIND_SNAP_CHUNK => {
                    insert_records(&mut db, &payload)?;
                    glommio::yield_if_needed().await;
                }
                KIND_SNAP_END => break decode_app_meta(&payload)?,
                k => return Err(invalid(format!("unexpected snapshot frame {k}"))),
            }
        };
        let applied = self.view.borrow().applied_index;
        if app.consistent_index <= applied {
            // Nothing new: let raft answer the message from the log it has.
            drop(db);
            let _ = glommio::io::remove(&path).await;
            s.write_all(&[0]).await?;
            s.flush().await?;
            let _ = self.inbox.send(ToRaft::Peer(vec![msg])).await;
            return Ok(());
        }
        db.set_app_meta(app);
        db.commit()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        db.close()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        install(&path, &self.snap_dir.join("db")).await?;
        log::notice(
            "etcdserver",
            &format!(
                "applied incoming snapshot from peer {from:x} at index {} (term {}); restarting on it",
                app.consistent_index, app.consistent_term
            ),
        );
        s.write_all(&[0]).await?;
        s.flush().await?;
        let _ = self
            .inbox
            .send(ToRaft::SnapshotInstalled {
                index: app.consistent_index,
                term: app.consistent_term,
            })
            .await;
        Ok(())
    }
}

/// Moves the received db over the live one, durably (rename, then the directory fsync).
async fn install(from: &Path, to: &Path) -> std::io::Result<()> {
    let io = |e: glommio::GlommioError<()>| std::io::Error::other(e.to_string());
    glommio::io::rename(from, to).await.map_err(io)?;
    if let Some(dir) = to.parent() {
        let d = glommio::io::Directory::open(dir).await.map_err(io)?;
        d.sync().await.map_err(io)?;
    }
    Ok(())
}

fn insert_records(db: &mut Db, payload: &[u8]) -> std::io::Result<()> {
    for (tree, key, val) in parse_records(payload)? {
        db.insert(tree, key, val)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// The records of one snapshot chunk; a truncated or unknown record refuses the chunk.
/// One db record of a snapshot chunk: its tree, key and value.
type Record<'a> = (TreeId, &'a [u8], &'a [u8]);

fn parse_records(mut rest: &[u8]) -> std::io::Result<Vec<Record<'_>>> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> std::io::Result<&'a [u8]> {
        if rest.len() < n {
            return Err(invalid("truncated snapshot record"));
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Ok(a)
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let tree = take(&mut rest, 1)?[0] as usize;
        if tree >= TREE_COUNT {
            return Err(invalid(format!("snapshot record for tree {tree}")));
        }
        let klen = u32::from_be_bytes(take(&mut rest, 4)?.try_into().unwrap()) as usize;
        let key = take(&mut rest, klen)?;
        let vlen = u32::from_be_bytes(take(&mut rest, 4)?.try_into().unwrap()) as usize;
        let val = take(&mut rest, vlen)?;
        out.push((TreeId::ALL[tree], key, val));
    }
    Ok(out)
}

fn push_record(chunk: &mut Vec<u8>, tree: usize, k: &[u8], v: &[u8]) {
    chunk.push(tree as u8);
    chunk.extend_from_slice(&(k.len() as u32).to_be_bytes());
    chunk.extend_from_slice(k);
    chunk.extend_from_slice(&(v.len() as u32).to_be_bytes());
    chunk.extend_from_slice(v);
}

fn encode_app_meta(a: &AppMeta) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&a.consistent_index.to_be_bytes());
    b.extend_from_slice(&a.consistent_term.to_be_bytes());
    b.extend_from_slice(&a.current_revision.to_be_bytes());
    b.extend_from_slice(&a.compact_revision.to_be_bytes());
    b.extend_from_slice(&a.compact_sweep.to_be_bytes());
    b
}

/// 40 bytes; 32 from a member built before compaction sweeps (its compactions were
/// whole, so no sweep is pending).
fn decode_app_meta(b: &[u8]) -> std::io::Result<AppMeta> {
    if b.len() != 32 && b.len() != 40 {
        return Err(invalid("snapshot end of the wrong size"));
    }
    let word = |i: usize| u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    Ok(AppMeta {
        consistent_index: word(0),
        consistent_term: word(1),
        current_revision: word(2) as i64,
        compact_revision: word(3) as i64,
        compact_sweep: if b.len() == 40 { word(4) as i64 } else { 0 },
        // A sizing hint only, not sent: the member booting on the snapshot sizes its
        // index as it goes, and records the count at its next commit.
        key_count: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_meta_round_trips() {
        let a = AppMeta {
            consistent_index: 7,
            consistent_term: 3,
            current_revision: 99,
            compact_revision: 50,
            compact_sweep: 12,
            key_count: 0,
        };
        let bytes = encode_app_meta(&a);
        assert_eq!(decode_app_meta(&bytes).unwrap(), a);
        // An older member's 32 bytes: no sweep pending.
        let old = decode_app_meta(&bytes[..32]).unwrap();
        assert_eq!(
            old,
            AppMeta {
                compact_sweep: 0,
                ..a
            }
        );
        assert!(decode_app_meta(&[0; 31]).is_err());
    }

    #[test]
    fn records_round_trip_and_truncation_is_refused() {
        let mut chunk = Vec::new();
        push_record(&mut chunk, TreeId::Meta as usize, b"key", b"v");
        push_record(&mut chunk, TreeId::Revision as usize, b"", b"");
        let got = parse_records(&chunk).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].1, got[0].2), (&b"key"[..], &b"v"[..]));
        assert!(matches!(got[1].0, TreeId::Revision));
        assert!(parse_records(&chunk[..chunk.len() - 1]).is_err());
        assert!(parse_records(&[TREE_COUNT as u8, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(frame(9, b"ab"), vec![0, 0, 0, 3, 9, b'a', b'b']);
    }

    #[test]
    fn a_raft_frame_holds_its_messages_length_prefixed() {
        let m = RaftMessage {
            to: 7,
            commit: 42,
            ..Default::default()
        };
        let mut out = vec![1, 2];
        push_raft_frame(&mut out, &[m.clone(), m.clone()]);
        let frame = &out[2..];
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!((len, frame[4]), (frame.len() - 4, KIND_RAFT));
        assert_eq!(parse_raft_frame(&frame[5..]).unwrap(), vec![m.clone(), m]);
        assert!(parse_raft_frame(&frame[5..frame.len() - 1]).is_err());
        assert!(parse_raft_frame(&[0, 0]).is_err());
    }
}
