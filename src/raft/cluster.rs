//! The raft core's cluster side: membership changes (decided by the leader), requests a
//! follower forwards to the leader over the peer transport, leader transfer, publishing
//! this member's attributes, and the timeouts of requests that never complete.
//!
//! Runs on: the raft core (methods of `RaftCore`).
//!
//! Invariants:
//! - Every request a core sent gets exactly one reply: applied, refused, or "request
//!   timed out" after etcd's request timeout (5 s + 2 election timeouts), whichever
//!   comes first; a late apply after a timeout finds no waiter and is dropped.
//! - A forwarded request is handled by the leader exactly as a local one (with
//!   `FORWARDED` as its core); a leader never forwards again, so nothing ping-pongs.

use super::entry::{self, MemberEntry};
use super::{
    boot_err, encode_context, member_record, BootError, LeaderTransfer, PendingRead, RaftCore,
    ReplySink,
};
use crate::mesh::ServerError;
use crate::mesh::{
    CoreId, HashKv, LeaderMoved, LeaseRenewed, LeaseTtl, MemberChanged, MemberInfo, MemberOp,
    Origin, Reply, ReplyBody, ReplyTo, ToRaft,
};
use crate::mvcc::db::{self, TreeId};
use crate::pb::etcdserverpb as pb;
use crate::pb::keel::internal::{
    forward, forward_reply, Forward, ForwardReply, LeaseRenew, LeaseRenewed as WireLeaseRenewed,
    Member as MemberRecord, MemberChanged as WireMemberChanged,
};
use crate::wal;
use ::raft::eraftpb::{ConfChange, ConfChangeType};
use ::raft::StateRole;
use prost::Message as _;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The "core" of requests forwarded by another member (their replies go back to it).
pub const FORWARDED: CoreId = CoreId(u16::MAX);
/// The "core" of this member's own attributes entry (applying it of this boot means
/// published; nobody waits for a reply).
const PUBLISH: CoreId = CoreId(u16::MAX - 1);
/// A ReadIndex not answered within this is asked again (etcd's readIndexRetryTime).
pub const READ_INDEX_RETRY: Duration = Duration::from_millis(500);
/// A published attributes entry not applied within this is proposed again.
const PUBLISH_RETRY: Duration = Duration::from_secs(1);
/// etcd's readiness bar for promoting a learner: its log matches 90% of the leader's.
const LEARNER_READY_PERCENT: f64 = 0.9;
const REMOVED_PREFIX: &[u8] = b"removed/";

/// Requests forwarded between this member and the leader.
pub struct Forwards {
    /// Leader side: requests followers forwarded, by the local sequence number they got
    /// (their replies go back to (member, their id)).
    pub from_followers: HashMap<u64, (u64, u64)>,
    pub next_follower_seq: u64,
    /// Follower side: requests this member forwarded to the leader, by forward id.
    pub to_leader: HashMap<u64, Forwarding>,
    pub next_leader_id: u64,
}

impl Default for Forwards {
    fn default() -> Forwards {
        Forwards {
            from_followers: HashMap::new(),
            next_follower_seq: 1,
            to_leader: HashMap::new(),
            next_leader_id: 1,
        }
    }
}

/// A request this member forwarded to the leader, waiting for its answer.
pub struct Forwarding {
    waiter: ForwardWaiter,
    deadline: Instant,
}

/// Who waits for a forwarded request's answer; its kind says which answer the leader's
/// reply must carry (another is refused, never handed on).
pub(super) enum ForwardWaiter {
    LeaseRenew(ReplyTo<LeaseRenewed>),
    LeaseTimeToLive(ReplyTo<LeaseTtl>),
    /// A membership change; for a removal, the member it removes (`answer_forwarded_removal`).
    Member(ReplyTo<MemberChanged>, Option<u64>),
    /// This member's corruption check, waiting for a peer's HashKV (no client waits).
    HashCheck(super::corrupt::HashAsk),
}

impl Forwarding {
    /// The client request that waits (`None`: the raft core's own question).
    pub fn origin(&self) -> Option<Origin> {
        match &self.waiter {
            ForwardWaiter::LeaseRenew(to) => Some(to.origin()),
            ForwardWaiter::LeaseTimeToLive(to) => Some(to.origin()),
            ForwardWaiter::Member(to, _) => Some(to.origin()),
            ForwardWaiter::HashCheck(_) => None,
        }
    }
}

/// The Meta tree key that marks `id` as removed for good.
/// The member ID a Meta-tree key records as removed, if it is such a record.
pub fn removed_id(k: &[u8]) -> Option<u64> {
    let rest = k.strip_prefix(REMOVED_PREFIX)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

pub fn removed_key(id: u64) -> Vec<u8> {
    let mut k = REMOVED_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn member_info(m: &MemberRecord) -> MemberInfo {
    MemberInfo {
        id: m.id,
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// etcd's ID for a member added at runtime: its peer URLs and the time, hashed as the
/// initial members' are.
fn new_member_id(peer_urls: &[String]) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::config::member_id(peer_urls, &now.to_string())
}

// ---- forwarded keep-alives on the wire ---------------------------------------------------

/// Keep-alives with their receive times, as ages at `now` (clocks differ between members;
/// an age does not).
fn renewals_to_wire(renewals: &[(i64, Instant)], now: Instant) -> LeaseRenew {
    LeaseRenew {
        ids: renewals.iter().map(|&(id, _)| id).collect(),
        age_us: renewals
            .iter()
            .map(|&(_, at)| now.saturating_duration_since(at).as_micros() as u64)
            .collect(),
    }
}

/// The leader's side: each keep-alive's receive time on its own clock.
fn renewals_from_wire(r: &LeaseRenew, now: Instant) -> Vec<(i64, Instant)> {
    r.ids
        .iter()
        .zip(r.age_us.iter())
        .map(|(&id, &age)| {
            let at = now.checked_sub(Duration::from_micros(age)).unwrap_or(now);
            (id, at)
        })
        .collect()
}

// ---- forwarded membership changes on the wire ------------------------------------------

fn forward_request(op: MemberOp) -> forward::Request {
    match op {
        MemberOp::Add { peer_urls, learner } => forward::Request::MemberAdd(pb::MemberAddRequest {
            peer_ur_ls: peer_urls,
            is_learner: learner,
        }),
        MemberOp::Remove { id } => forward::Request::MemberRemove(pb::MemberRemoveRequest { id }),
        MemberOp::Update { id, peer_urls } => {
            forward::Request::MemberUpdate(pb::MemberUpdateRequest {
                id,
                peer_ur_ls: peer_urls,
            })
        }
        MemberOp::Promote { id } => {
            forward::Request::MemberPromote(pb::MemberPromoteRequest { id })
        }
    }
}

/// The membership change a forwarded request carries (`None`: not a membership change).
fn member_op(request: forward::Request) -> Option<MemberOp> {
    Some(match request {
        forward::Request::MemberAdd(a) => MemberOp::Add {
            peer_urls: a.peer_ur_ls,
            learner: a.is_learner,
        },
        forward::Request::MemberRemove(r) => MemberOp::Remove { id: r.id },
        forward::Request::MemberUpdate(u) => MemberOp::Update {
            id: u.id,
            peer_urls: u.peer_ur_ls,
        },
        forward::Request::MemberPromote(p) => MemberOp::Promote { id: p.id },
        forward::Request::LeaseRenew(_)
        | forward::Request::LeaseTimeToLive(_)
        | forward::Request::HashKv(_) => return None,
    })
}

// ---- forwarded replies on the wire ----------------------------------------------------

fn encode_forward_reply(id: u64, body: Result<ReplyBody, ServerError>) -> ForwardReply {
    let now = Instant::now();
    let reply = match body {
        Err(e) => {
            let (code, message) = e.peer_code();
            return ForwardReply {
                id,
                code,
                message,
                reply: None,
            };
        }
        Ok(ReplyBody::LeaseRenewed(LeaseRenewed { revision, results })) => {
            forward_reply::Reply::LeaseRenewed(WireLeaseRenewed {
                revision,
                ttl: results
                    .iter()
                    .map(|r| r.map_or(0, |(ttl, _)| ttl))
                    .collect(),
                remaining_us: results
                    .iter()
                    .map(|r| {
                        r.map_or(0, |(_, deadline)| {
                            deadline.saturating_duration_since(now).as_micros() as u64
                        })
                    })
                    .collect(),
            })
        }
        Ok(ReplyBody::LeaseTtl(LeaseTtl {
            revision,
            ttl,
            granted_ttl,
            keys,
        })) => forward_reply::Reply::LeaseTimeToLive(pb::LeaseTimeToLiveResponse {
            header: Some(pb::ResponseHeader {
                revision,
                ..Default::default()
            }),
            id: 0,
            ttl,
            granted_ttl,
            keys: keys.into_iter().map(Into::into).collect(),
        }),
        Ok(ReplyBody::MemberChanged(MemberChanged { member, members })) => {
            forward_reply::Reply::MemberChanged(WireMemberChanged {
                member: member.as_ref().map(member_record),
                members: members.iter().map(member_record).collect(),
            })
        }
        Ok(ReplyBody::HashKv(HashKv {
            hash,
            compact_revision,
            revision,
        })) => forward_reply::Reply::HashKv(pb::HashKvResponse {
            header: Some(pb::ResponseHeader {
                revision,
                ..Default::default()
            }),
            hash,
            compact_revision,
            ..Default::default()
        }),
        Ok(other) => {
            let e = ServerError::Internal(format!("no wire form for a forwarded {other:?}"));
            let (code, message) = e.peer_code();
            return ForwardReply {
                id,
                code,
                message,
                reply: None,
            };
        }
    };
    ForwardReply {
        id,
        code: 0,
        message: String::new(),
        reply: Some(reply),
    }
}

/// The leader's answer: an error, or the reply `body` (checked against what the waiter
/// asked for by `deliver_forward_reply`).
fn decode_forward_reply(r: ForwardReply) -> Result<forward_reply::Reply, ServerError> {
    if r.code != 0 {
        return Err(ServerError::from_peer_code(r.code, r.message));
    }
    r.reply
        .ok_or_else(|| ServerError::Internal("empty forwarded reply".into()))
}

fn lease_renewed_from_wire(l: WireLeaseRenewed, now: Instant) -> LeaseRenewed {
    LeaseRenewed {
        revision: l.revision,
        results: l
            .ttl
            .iter()
            .zip(l.remaining_us.iter())
            .map(|(&ttl, &us)| (ttl != 0).then(|| (ttl, now + Duration::from_micros(us))))
            .collect(),
    }
}

fn wrong_forward_reply(what: &str) -> ServerError {
    ServerError::Internal(format!(
        "the leader answered a forwarded {what} with another kind"
    ))
}

impl RaftCore {
    /// Connects the raft core to its peers.
    pub fn attach_transport(&mut self, t: Rc<super::Transport>) {
        self.transport = Some(t);
        self.membership_changed();
    }

    /// Called once this member's attributes are applied (it is part of the cluster and
    /// serves): the boot path announces readiness there.
    pub fn set_on_published(&mut self, f: Box<dyn FnOnce()>) {
        self.publish.on_done = Some(f);
    }

    fn removed_ids(&self) -> Result<HashSet<u64>, db::Error> {
        let end = {
            let mut e = REMOVED_PREFIX.to_vec();
            *e.last_mut().expect("prefix") += 1;
            e
        };
        let mut ids = HashSet::new();
        for entry in self
            .store
            .backend()
            .range(TreeId::Meta, REMOVED_PREFIX, &end)
        {
            if let Ok(id) = entry?.0[REMOVED_PREFIX.len()..].try_into() {
                ids.insert(u64::from_be_bytes(id));
            }
        }
        Ok(ids)
    }

    /// Tells the transport about the members (after boot and every change).
    pub(super) fn membership_changed(&mut self) {
        let Some(t) = &self.transport else { return };
        // A corrupt page was reported (`db::corruption_found`); the transport keeps the
        // members it knows.
        let (Ok(mut members), Ok(removed)) = (self.members(), self.removed_ids()) else {
            return;
        };
        if members.is_empty() {
            members = self.seed_members.clone();
        }
        let view = super::transport::ClusterView {
            cluster_id: self.opts.cluster_id,
            members: members.iter().map(member_record).collect(),
            removed,
            applied_index: self.applied_index,
        };
        t.update(view);
    }

    /// The leader to forward to, if it is another member.
    fn forward_target(&self) -> Option<u64> {
        let leader = self.node.raft.leader_id;
        (leader != ::raft::INVALID_ID && leader != self.opts.member_id && self.transport.is_some())
            .then_some(leader)
    }

    fn send_forward(
        &mut self,
        out: &dyn ReplySink,
        waiter: ForwardWaiter,
        request: forward::Request,
    ) {
        let origin = Forwarding {
            waiter,
            deadline: Instant::now(),
        };
        let Some(o) = origin.origin() else {
            return;
        };
        let Some(leader) = self.forward_target().filter(|_| o.from != FORWARDED) else {
            return self.fail(out, o, ServerError::NoLeader);
        };
        let id = self.forwards.next_leader_id;
        self.forwards.next_leader_id += 1;
        let fwd = Forward {
            id,
            request: Some(request),
        };
        let sent = self
            .transport
            .as_ref()
            .is_some_and(|t| t.send_forward(leader, &fwd));
        if !sent {
            return self.fail(out, o, ServerError::NoLeader);
        }
        let deadline = Instant::now() + self.request_timeout;
        self.forwards
            .to_leader
            .insert(id, Forwarding { deadline, ..origin });
    }

    /// Asks `peer` for its HashKV at `revision` (a corruption check); false if it cannot
    /// be sent (no transport, peer unknown).
    pub(super) fn ask_peer_hash(
        &mut self,
        peer: u64,
        revision: i64,
        ask: super::corrupt::HashAsk,
    ) -> bool {
        let id = self.forwards.next_leader_id;
        self.forwards.next_leader_id += 1;
        let fwd = Forward {
            id,
            request: Some(forward::Request::HashKv(pb::HashKvRequest { revision })),
        };
        let sent = self
            .transport
            .as_ref()
            .is_some_and(|t| t.send_forward(peer, &fwd));
        if sent {
            let deadline = Instant::now() + self.request_timeout;
            self.forwards.to_leader.insert(
                id,
                Forwarding {
                    waiter: ForwardWaiter::HashCheck(ask),
                    deadline,
                },
            );
        }
        sent
    }

    /// Keep-alives on a member that does not time leases go to the leader, each with how
    /// long ago its core received it.
    pub(super) fn forward_lease_renew(
        &mut self,
        out: &dyn ReplySink,
        to: ReplyTo<LeaseRenewed>,
        renewals: Vec<(i64, Instant)>,
    ) {
        let request = forward::Request::LeaseRenew(renewals_to_wire(&renewals, Instant::now()));
        self.send_forward(out, ForwardWaiter::LeaseRenew(to), request);
    }

    pub(super) fn forward_time_to_live(
        &mut self,
        out: &dyn ReplySink,
        to: ReplyTo<LeaseTtl>,
        id: i64,
        keys: bool,
    ) {
        let request = forward::Request::LeaseTimeToLive(pb::LeaseTimeToLiveRequest { id, keys });
        self.send_forward(out, ForwardWaiter::LeaseTimeToLive(to), request);
    }

    /// A request another member forwarded: handled as a local one from `FORWARDED`.
    pub(super) fn handle_forwarded(&mut self, out: &dyn ReplySink, member: u64, fwd: Forward) {
        let seq = self.forwards.next_follower_seq;
        self.forwards.next_follower_seq += 1;
        self.forwards.from_followers.insert(seq, (member, fwd.id));
        let now = Instant::now();
        let msg = match fwd.request {
            Some(forward::Request::LeaseRenew(r)) => ToRaft::LeaseRenew {
                to: ReplyTo::new(FORWARDED, seq),
                renewals: renewals_from_wire(&r, now),
            },
            Some(forward::Request::LeaseTimeToLive(t)) => ToRaft::LeaseTimeToLive {
                to: ReplyTo::new(FORWARDED, seq),
                id: t.id,
                keys: t.keys,
            },
            Some(forward::Request::HashKv(h)) => ToRaft::HashKv {
                to: ReplyTo::new(FORWARDED, seq),
                revision: h.revision,
            },
            Some(r) => match member_op(r) {
                Some(op) => ToRaft::Member {
                    to: ReplyTo::new(FORWARDED, seq),
                    op,
                },
                None => unreachable!("lease and hash requests are matched above"),
            },
            None => {
                let origin = Origin {
                    from: FORWARDED,
                    seq,
                };
                let e = ServerError::Internal("empty forwarded request".into());
                return self.fail(out, origin, e);
            }
        };
        self.handle(msg, out);
    }

    /// Sends the reply to a forwarded request back to the member that forwarded it.
    pub(super) fn reply_forwarded(&mut self, reply: Reply) {
        let Some((member, id)) = self.forwards.from_followers.remove(&reply.seq) else {
            return;
        };
        let r = encode_forward_reply(id, reply.body);
        if let Some(t) = &self.transport {
            t.send_forward_reply(member, &r);
        }
    }

    /// The leader's answer to a request this member forwarded, handed to its waiter if it
    /// is of the kind the waiter asked for.
    pub(super) fn handle_forward_reply(&mut self, out: &dyn ReplySink, r: ForwardReply) {
        let Some(f) = self.forwards.to_leader.remove(&r.id) else {
            return;
        };
        let body = decode_forward_reply(r);
        let now = Instant::now();
        use forward_reply::Reply as W;
        match f.waiter {
            ForwardWaiter::LeaseRenew(to) => {
                let res = body.and_then(|b| match b {
                    W::LeaseRenewed(l) => Ok(lease_renewed_from_wire(l, now)),
                    _ => Err(wrong_forward_reply("keep-alive")),
                });
                self.respond(out, to, res);
            }
            ForwardWaiter::LeaseTimeToLive(to) => {
                let res = body.and_then(|b| match b {
                    W::LeaseTimeToLive(t) => Ok(LeaseTtl {
                        revision: t.header.map_or(0, |h| h.revision),
                        ttl: t.ttl,
                        granted_ttl: t.granted_ttl,
                        keys: t.keys.into_iter().map(|k| k.to_vec()).collect(),
                    }),
                    _ => Err(wrong_forward_reply("TimeToLive")),
                });
                self.respond(out, to, res);
            }
            ForwardWaiter::Member(to, _) => {
                let res = body.and_then(|b| match b {
                    W::MemberChanged(m) => Ok(MemberChanged {
                        member: m.member.as_ref().map(member_info),
                        members: m.members.iter().map(member_info).collect(),
                    }),
                    _ => Err(wrong_forward_reply("membership change")),
                });
                self.respond(out, to, res);
            }
            ForwardWaiter::HashCheck(ask) => {
                let res = body.and_then(|b| match b {
                    W::HashKv(h) => Ok(HashKv {
                        hash: h.hash,
                        compact_revision: h.compact_revision,
                        revision: h.header.map_or(0, |h| h.revision),
                    }),
                    _ => Err(wrong_forward_reply("HashKV")),
                });
                self.hash_check_answer(out, ask, res);
            }
        }
    }

    // ---- membership --------------------------------------------------------------------

    /// A membership change: the leader checks it against the current members and
    /// proposes it; a follower forwards it to the leader.
    pub(super) fn member_change(
        &mut self,
        out: &dyn ReplySink,
        to: ReplyTo<MemberChanged>,
        op: MemberOp,
    ) {
        if self.node.raft.state != StateRole::Leader {
            let removes = match op {
                MemberOp::Remove { id } => Some(id),
                _ => None,
            };
            let request = forward_request(op);
            return self.send_forward(out, ForwardWaiter::Member(to, removes), request);
        }
        match self.propose_member_change(to.origin(), op) {
            Ok(()) => self.track_proposal(to.origin()),
            Err(e) => self.respond(out, to, Err(e)),
        }
    }

    /// A removal this member forwarded is answered when this member applies it, not only
    /// by the leader's reply: a leader that removes itself stops right after applying it,
    /// and its reply may never leave (etcd's e2e TestCtlV3MemberRemovePeerTLS timed out
    /// on that now and then). The leader's reply, if it still comes, finds no waiter.
    pub(super) fn answer_forwarded_removal(&mut self, removed: u64, members: &[MemberInfo]) {
        let ids: Vec<u64> = (self.forwards.to_leader.iter())
            .filter(
                |(_, f)| matches!(f.waiter, ForwardWaiter::Member(_, Some(id)) if id == removed),
            )
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let Some(Forwarding {
                waiter: ForwardWaiter::Member(to, _),
                ..
            }) = self.forwards.to_leader.remove(&id)
            else {
                continue;
            };
            let body = Ok(MemberChanged {
                member: None,
                members: members.to_vec(),
            });
            let reply = to.reply(body, self.node.raft.term, self.node.raft.leader_id);
            self.round.replies.push((to.from, reply));
        }
    }

    /// Checks a membership change against the members and proposes it: a conf change, or
    /// (for new peer URLs) a member entry. Applying it answers `origin` (`MemberChanged`).
    fn propose_member_change(&mut self, origin: Origin, op: MemberOp) -> Result<(), ServerError> {
        let members = self.members()?;
        let removed = self.removed_ids()?;
        let find = |id: u64| members.iter().find(|m| m.id == id);
        let url_taken = |urls: &[String], except: u64| {
            members
                .iter()
                .any(|m| m.id != except && m.peer_urls.iter().any(|u| urls.contains(u)))
        };
        self.check_reconfig(&op, &members)?;
        let ctx = encode_context(self.opts.member_id, self.incarnation, origin);
        let mut cc = ConfChange::default();
        match op {
            MemberOp::Add { peer_urls, learner } => {
                if url_taken(&peer_urls, 0) {
                    return Err(ServerError::PeerUrlExist);
                }
                if learner && members.iter().filter(|m| m.is_learner).count() >= 1 {
                    return Err(ServerError::TooManyLearners);
                }
                let mut id = new_member_id(&peer_urls);
                while id == 0 || find(id).is_some() || removed.contains(&id) {
                    id = id.wrapping_add(1);
                }
                cc.set_change_type(if learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                });
                cc.node_id = id;
                cc.context = MemberRecord {
                    id,
                    name: String::new(),
                    peer_urls,
                    client_urls: Vec::new(),
                    is_learner: learner,
                }
                .encode_to_vec()
                .into();
            }
            MemberOp::Remove { id } => {
                if find(id).is_none() {
                    return Err(ServerError::MemberNotFound);
                }
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = id;
            }
            MemberOp::Promote { id } => {
                let Some(m) = find(id) else {
                    return Err(ServerError::MemberNotFound);
                };
                if !m.is_learner {
                    return Err(ServerError::MemberNotLearner);
                }
                let prs = self.node.raft.prs();
                let leader_match = prs.get(self.opts.member_id).map_or(0, |p| p.matched);
                let learner_match = prs.get(id).map_or(0, |p| p.matched);
                if (learner_match as f64) < (leader_match as f64) * LEARNER_READY_PERCENT {
                    return Err(ServerError::LearnerNotReady);
                }
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = id;
            }
            MemberOp::Update { id, peer_urls } => {
                if find(id).is_none() {
                    return Err(ServerError::MemberNotFound);
                }
                if url_taken(&peer_urls, id) {
                    return Err(ServerError::PeerUrlExist);
                }
                let data = entry::encode_member_entry(&MemberEntry::Update { id, peer_urls });
                return self
                    .node
                    .propose(ctx, data.to_vec())
                    .map_err(|_| ServerError::NoLeader);
            }
        }
        self.node.propose_conf_change(ctx, cc).map_err(|e| match e {
            ::raft::Error::ProposalDropped => ServerError::NoLeader,
            e => ServerError::ConfChangeRefused(e.to_string()),
        })
    }

    /// etcd's `--strict-reconfig-check` (on by default): a voter is added or promoted only
    /// if enough members have started (published) to keep a quorum of the larger
    /// cluster, and no change may leave fewer connected voters than a quorum.
    fn check_reconfig(&self, op: &MemberOp, members: &[MemberInfo]) -> Result<(), ServerError> {
        if !self.opts.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<&MemberInfo> = members.iter().filter(|m| !m.is_learner).collect();
        // etcd's "started": the member has a name (initial members from the flags, added
        // ones once they published).
        let nstarted = voters.iter().filter(|m| !m.name.is_empty()).count();
        let prs = self.node.raft.prs();
        let active =
            |id: u64| id == self.opts.member_id || prs.get(id).is_some_and(|p| p.recent_active);
        let nactive = voters.iter().filter(|m| active(m.id)).count();
        let quorum = |n: usize| n / 2 + 1;
        let not_enough_started = || ServerError::MemberNotEnoughStarted;
        let unhealthy = || ServerError::Unhealthy;
        match op {
            MemberOp::Add { learner: true, .. } | MemberOp::Update { .. } => Ok(()),
            MemberOp::Add { learner: false, .. } => {
                let n = voters.len() + 1;
                // A one-member cluster may grow to two (its new member starts next).
                if !(nstarted == 1 && n == 2) && nstarted < quorum(n) {
                    return Err(not_enough_started());
                }
                // Connected now: a quorum of the current voters.
                if nactive < quorum(voters.len()) {
                    return Err(unhealthy());
                }
                Ok(())
            }
            MemberOp::Promote { .. } => {
                let n = voters.len() + 1;
                if nstarted + 1 < quorum(n) {
                    return Err(not_enough_started());
                }
                if nactive < quorum(voters.len()) {
                    return Err(unhealthy());
                }
                Ok(())
            }
            MemberOp::Remove { id } => {
                if !voters.iter().any(|m| m.id == *id) {
                    return Ok(());
                }
                let left = voters.len() - 1;
                let started_left = nstarted - usize::from(!self.member_name_empty(members, *id));
                if left > 0 && started_left < quorum(left) {
                    return Err(not_enough_started());
                }
                let active_left = nactive - usize::from(active(*id));
                if left > 0 && active_left < quorum(left) {
                    return Err(unhealthy());
                }
                Ok(())
            }
        }
    }

    fn member_name_empty(&self, members: &[MemberInfo], id: u64) -> bool {
        members
            .iter()
            .find(|m| m.id == id)
            .is_none_or(|m| m.name.is_empty())
    }

    /// Applies a membership record entry (peer URL update or published attributes).
    pub(super) fn apply_member_entry(
        &mut self,
        e: &::raft::eraftpb::Entry,
        m: MemberEntry,
    ) -> Result<(), BootError> {
        if e.index <= self.store.consistent_index() {
            return Ok(());
        }
        let id = match &m {
            MemberEntry::Update { id, .. } | MemberEntry::Attributes { id, .. } => *id,
        };
        let key = id.to_be_bytes();
        let record = self
            .store
            .backend()
            .get(TreeId::Member, &key)
            .map_err(|err| boot_err(format!("applying entry {}: {err}", e.index)))?
            .and_then(|v| MemberRecord::decode(v).ok());
        // A record for a member removed meanwhile is not brought back.
        if let Some(mut record) = record {
            match m {
                MemberEntry::Update { peer_urls, .. } => record.peer_urls = peer_urls,
                MemberEntry::Attributes {
                    name, client_urls, ..
                } => {
                    record.name = name;
                    record.client_urls = client_urls;
                }
            }
            self.store
                .backend_mut()
                .insert(TreeId::Member, &key, &record.encode_to_vec())
                .map_err(|err| boot_err(format!("db: {err}")))?;
        }
        self.store.set_consistent_index(e.index, e.term);
        self.membership_changed();
        let ours = super::decode_context(&e.context).is_some_and(|(member, inc, origin)| {
            member == self.opts.member_id && inc == self.incarnation && origin.from == PUBLISH
        });
        if ours {
            if !self.publish.done {
                self.publish.done = true;
                if let Some(f) = self.publish.on_done.take() {
                    f();
                }
            }
            return Ok(());
        }
        let members = self
            .members()
            .map_err(|err| boot_err(format!("applying entry {}: {err}", e.index)))?;
        self.reply_to_entry(
            e,
            Ok(MemberChanged {
                member: None,
                members,
            }),
        );
        Ok(())
    }

    /// Proposes this member's name and client URLs once it knows a leader (and again if
    /// they were not applied within a second), as etcd publishes them at every start.
    pub(super) fn maybe_publish(&mut self) {
        if self.publish.done || self.node.raft.leader_id == ::raft::INVALID_ID {
            return;
        }
        let Some((name, client_urls)) = self.opts.publish.clone() else {
            return;
        };
        if self.node.raft.state == StateRole::Leader && !self.node.raft.commit_to_current_term() {
            return;
        }
        let now = Instant::now();
        if self
            .publish
            .proposed_at
            .is_some_and(|at| now.duration_since(at) < PUBLISH_RETRY)
        {
            return;
        }
        self.publish.proposed_at = Some(now);
        let data = entry::encode_member_entry(&MemberEntry::Attributes {
            id: self.opts.member_id,
            name,
            client_urls,
        });
        // Applying it (from this boot) marks this member published.
        let publish = Origin {
            from: PUBLISH,
            seq: 0,
        };
        let ctx = encode_context(self.opts.member_id, self.incarnation, publish);
        let _ = self.node.propose(ctx, data.to_vec());
    }

    // ---- leader transfer ---------------------------------------------------------------

    pub(super) fn move_leader(
        &mut self,
        out: &dyn ReplySink,
        to: ReplyTo<LeaderMoved>,
        target: u64,
    ) {
        if self.node.raft.state != StateRole::Leader {
            return self.respond(out, to, Err(ServerError::NotLeader));
        }
        if !self.node.store().conf_state().voters.contains(&target) {
            return self.respond(out, to, Err(ServerError::BadLeaderTransferee));
        }
        if target == self.opts.member_id {
            return self.respond(out, to, Ok(LeaderMoved));
        }
        if let Some(earlier) = self.move_leader.take() {
            self.respond(out, earlier.to, Err(ServerError::LeaderTransferTimedOut));
        }
        self.node.transfer_leader(target);
        self.move_leader = Some(LeaderTransfer {
            to,
            target,
            deadline: Instant::now() + self.request_timeout,
        });
    }

    pub(super) fn check_move_leader(&mut self, out: &dyn ReplySink) {
        let Some(t) = &self.move_leader else {
            return;
        };
        let (to, target, deadline) = (t.to, t.target, t.deadline);
        if self.node.raft.leader_id == target {
            self.move_leader = None;
            self.respond(out, to, Ok(LeaderMoved));
        } else if Instant::now() >= deadline {
            self.move_leader = None;
            self.respond(out, to, Err(ServerError::LeaderTransferTimedOut));
        }
    }

    // ---- timeouts ----------------------------------------------------------------------

    /// Answers "request timed out" to what waited too long, and asks again for ReadIndex
    /// answers that did not come (lost with a leader).
    pub fn expire_requests(&mut self, out: &dyn ReplySink, now: Instant) {
        while self.writes.held.front().is_some_and(|h| h.deadline <= now) {
            let h = self.writes.held.pop_front().expect("checked");
            // etcd's raft takes no proposal without a leader; the caller's context ends.
            self.fail(out, h.origin, ServerError::DeadlineExceeded);
        }
        while let Some(&(deadline, origin)) = self.writes.deadlines.front() {
            if deadline > now {
                break;
            }
            self.writes.deadlines.pop_front();
            if self.writes.waiting.get(&origin) == Some(&deadline) {
                self.writes.waiting.remove(&origin);
                self.fail(out, origin, ServerError::Timeout);
            }
        }
        let stale: Vec<u64> = self
            .reads
            .requested
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) >= READ_INDEX_RETRY)
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in stale {
            if let Some((_, reads)) = self.reads.requested.remove(&ctx) {
                self.reads.waiting.extend(reads);
            }
        }
        if self.reads.waiting.iter().any(|r| r.deadline <= now) {
            let (late, keep): (Vec<PendingRead>, Vec<PendingRead>) =
                std::mem::take(&mut self.reads.waiting)
                    .into_iter()
                    .partition(|r| r.deadline <= now);
            self.reads.waiting = keep;
            for r in late {
                self.fail(out, r.origin(), ServerError::Timeout);
            }
        }
        let late: Vec<u64> = self
            .forwards
            .to_leader
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            if let Some(f) = self.forwards.to_leader.remove(&id) {
                match f.origin() {
                    Some(o) => self.fail(out, o, ServerError::Timeout),
                    None => self.hash_check_lost(f.waiter),
                }
            }
        }
    }

    /// After a snapshot replaced the db: the WAL marks it, so the restarted member's log
    /// starts after it.
    pub(super) async fn mark_installed_snapshot(&mut self) -> Result<(), BootError> {
        let Some((index, term)) = self.installed_snapshot.take() else {
            return Ok(());
        };
        self.mark_durable(wal::SnapshotMarker { index, term }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_replies_round_trip() {
        let now = Instant::now();
        let body = ReplyBody::LeaseRenewed(LeaseRenewed {
            revision: 9,
            results: vec![Some((10, now + Duration::from_secs(10))), None],
        });
        let r = encode_forward_reply(3, Ok(body));
        assert_eq!(r.id, 3);
        match decode_forward_reply(r).unwrap() {
            forward_reply::Reply::LeaseRenewed(l) => {
                let LeaseRenewed { revision, results } = lease_renewed_from_wire(l, now);
                assert_eq!(revision, 9);
                assert_eq!(results.len(), 2);
                let (ttl, deadline) = results[0].unwrap();
                assert_eq!(ttl, 10);
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10));
                assert!(results[1].is_none());
            }
            other => panic!("{other:?}"),
        }
        let err = encode_forward_reply(4, Err(ServerError::MemberNotFound));
        let e = decode_forward_reply(err).unwrap_err();
        assert!(matches!(e, ServerError::MemberNotFound), "{e:?}");
        let err =
            encode_forward_reply(5, Err(ServerError::Mvcc(crate::mvcc::Error::LeaseNotFound)));
        let e = decode_forward_reply(err).unwrap_err();
        assert!(
            matches!(e, ServerError::Mvcc(crate::mvcc::Error::LeaseNotFound)),
            "{e:?}"
        );
    }

    #[test]
    fn a_forwarded_keep_alive_keeps_its_age() {
        let now = Instant::now();
        let sent = [(7, now - Duration::from_millis(30)), (8, now)];
        let wire = renewals_to_wire(&sent, now);
        assert_eq!(wire.age_us, vec![30_000, 0]);
        // Received 5 ms later on the leader's clock: each stamp moves back by its age.
        let later = now + Duration::from_millis(5);
        let got = renewals_from_wire(&wire, later);
        assert_eq!(
            got,
            vec![(7, later - Duration::from_millis(30)), (8, later)]
        );
    }

    #[test]
    fn forwarded_membership_changes_round_trip() {
        let ops = [
            MemberOp::Add {
                peer_urls: vec!["http://a:1".into()],
                learner: true,
            },
            MemberOp::Remove { id: 3 },
            MemberOp::Update {
                id: 4,
                peer_urls: vec!["http://b:2".into()],
            },
            MemberOp::Promote { id: 5 },
        ];
        for op in ops {
            let back = member_op(forward_request(op.clone())).unwrap();
            assert_eq!(format!("{back:?}"), format!("{op:?}"));
        }
        let renew = forward::Request::LeaseRenew(LeaseRenew::default());
        assert!(member_op(renew).is_none());
    }

    #[test]
    fn removed_keys_sort_under_their_prefix() {
        let k = removed_key(0xabcd);
        assert!(k.starts_with(REMOVED_PREFIX));
        assert_eq!(&k[REMOVED_PREFIX.len()..], &0xabcdu64.to_be_bytes());
    }
}
