//! `etcdserverpb.Lease`: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
//! LeaseLeases, with etcd 3.4's rules and errors.
//!
//! Runs on: every core. Grant and revoke are raft proposals (a revoke deletes the
//! lease's keys in one revision). Keep-alives only move a deadline on the raft core's
//! lessor, in batches: see [`Renewer`] for when a core answers a keep-alive itself and
//! when it waits for the leader.
//!
//! Invariants:
//! - A keep-alive stream answers its requests in order, one response each.
//! - A keep-alive answered with a TTL renews the lease on the leader from the time its
//!   core received it; one answered 0 found the lease gone or past its deadline, as
//!   etcd's lessor would have. (One exception, bounded by cross-core delivery: a
//!   keep-alive for a lease revoked on another connection, arriving before this core
//!   applied that revoke, is answered with the TTL; the leader ignores the renewal.)

use super::errors::{status_from_auth, EtcdError};
use super::services::{decode, encode, Services};
use crate::auth::Caller;
use crate::grpc::Call;
use crate::grpc::{Request, Responses, Status};
use crate::mesh::ServerError;
use crate::mesh::{LeaseList, LeaseRenewed, LeaseTtl, ToRaft};
use crate::mvcc::{self, Op};
use crate::node::{Node, Slot};
use crate::pb::etcdserverpb as pb;
use crate::raft::RaftClient;
use bytes::Bytes;
use prost::Message;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// etcd's MaxLeaseTTL: a grant asking for more fails with "too large lease TTL".
pub const LEASE_TTL_MAX_S: i64 = 9_000_000_000;
/// Keep-alives of one stream taken into one renew batch at most.
pub const KEEPALIVE_BATCH_MAX: usize = 1024;

/// What a core needs to grant leases as etcd does.
#[derive(Clone, Copy, Debug)]
pub struct LeaseConfig {
    /// etcd's minimum TTL: ceil(1.5 × election timeout) in seconds (2 s by default).
    pub min_ttl_s: i64,
    /// The first server-chosen ID of this core and the step between its IDs (the core
    /// count, so cores never collide): etcd's idutil layout, member ID in the top 16
    /// bits and the boot time in milliseconds below.
    pub id_base: u64,
    pub id_offset: u64,
    pub id_step: u64,
}

impl LeaseConfig {
    pub fn new(member_id: u64, boot_ms: u64, election_timeout_ms: u64, heartbeat_ms: u64) -> Self {
        // etcd: minTTL = (3 × electionTicks / 2) heartbeats, rounded up to whole seconds.
        let ticks = election_timeout_ms / heartbeat_ms.max(1);
        let min_ttl_ms = (3 * ticks / 2) * heartbeat_ms;
        LeaseConfig {
            min_ttl_s: min_ttl_ms.div_ceil(1000) as i64,
            id_base: (member_id << 48) | ((boot_ms & 0xff_ffff_ffff) << 8),
            id_offset: 0,
            id_step: 1,
        }
    }

    /// The same for core `core` of `cores`.
    pub fn for_core(self, core: usize, cores: usize) -> Self {
        LeaseConfig {
            id_offset: core as u64,
            id_step: cores.max(1) as u64,
            ..self
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig::new(1, 0, 1000, 100)
    }
}

/// Server-chosen lease IDs: positive, never 0, unique per core.
pub struct LeaseIds {
    config: LeaseConfig,
    count: Cell<u64>,
}

impl LeaseIds {
    pub fn new(config: LeaseConfig) -> LeaseIds {
        LeaseIds {
            config,
            count: Cell::new(1),
        }
    }

    pub fn next(&self) -> i64 {
        loop {
            let n = self.count.get();
            self.count.set(n + 1);
            let low = (self.config.id_base + n * self.config.id_step + self.config.id_offset)
                & ((1 << 48) - 1);
            let id = ((self.config.id_base & !((1 << 48) - 1)) | low) & (i64::MAX as u64);
            if id != 0 {
                return id as i64;
            }
        }
    }
}

pub use crate::lease::{LeaseCache, FAST_RENEW_MARGIN};

/// Keep-alives answered by their core reach the leader within this (one batch per core).
pub const RENEW_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

type Renewed = Result<(Vec<i64>, i64, u64), Status>;
/// Keep-alives (lease, receive time) of one stream batch and where their answer goes.
type Waiting = (Vec<(i64, Instant)>, Rc<Slot<Renewed>>);

/// A core's keep-alives. A lease whose deadline (as the leader last confirmed it) is
/// more than `FAST_RENEW_MARGIN` ahead is answered at once and its renewal, stamped with
/// the time it was received, sent to the raft core with the next batch (at most
/// `RENEW_FLUSH_INTERVAL` later). Any other keep-alive (first of a lease on this core,
/// near its deadline, after a revoke) waits for the leader's answer, which goes out at
/// once with every renewal queued meanwhile: one `LeaseRenew` in flight at a time.
pub struct Renewer {
    client: Rc<RaftClient>,
    node: Rc<Node>,
    /// Renewals answered already, not yet sent: lease → latest receive time.
    answered: RefCell<HashMap<i64, Instant>>,
    /// Keep-alives waiting for the leader's answer.
    waiting: RefCell<Vec<Waiting>>,
    asking: Cell<bool>,
    flush_due: Cell<bool>,
}

impl Renewer {
    pub fn new(client: Rc<RaftClient>, node: Rc<Node>) -> Rc<Renewer> {
        Rc::new(Renewer {
            client,
            node,
            answered: RefCell::new(HashMap::new()),
            waiting: RefCell::new(Vec::new()),
            asking: Cell::new(false),
            flush_due: Cell::new(false),
        })
    }

    /// Each lease's TTL after the keep-alive (0: gone), the store revision and raft term.
    pub async fn renew(self: &Rc<Self>, ids: &[i64]) -> Renewed {
        let now = Instant::now();
        let cache = &self.node.leases;
        let fast: Option<Vec<i64>> = ids.iter().map(|&id| cache.fast(id, now)).collect();
        if let Some(ttls) = fast {
            {
                let mut answered = self.answered.borrow_mut();
                for &id in ids {
                    answered.insert(id, now);
                }
            }
            self.schedule_flush();
            let mark = self.node.watermark();
            return Ok((ttls, mark.revision, mark.raft_term));
        }
        let slot = Slot::new();
        let renewals = ids.iter().map(|&id| (id, now)).collect();
        self.waiting.borrow_mut().push((renewals, slot.clone()));
        self.kick();
        slot.wait().await
    }

    fn kick(self: &Rc<Self>) {
        if !self.asking.get() {
            self.asking.set(true);
            let me = self.clone();
            glommio::spawn_local(async move { me.ask().await }).detach();
        }
    }

    fn schedule_flush(self: &Rc<Self>) {
        if self.flush_due.get() {
            return;
        }
        self.flush_due.set(true);
        let me = self.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(RENEW_FLUSH_INTERVAL).await;
            me.flush_due.set(false);
            if !me.answered.borrow().is_empty() {
                me.kick();
            }
        })
        .detach();
    }

    async fn ask(self: Rc<Self>) {
        loop {
            let batch = std::mem::take(&mut *self.waiting.borrow_mut());
            let answered = std::mem::take(&mut *self.answered.borrow_mut());
            if batch.is_empty() && answered.is_empty() {
                self.asking.set(false);
                return;
            }
            let mut renewals: Vec<(i64, Instant)> = answered.into_iter().collect();
            let background = renewals.len();
            renewals.extend(batch.iter().flat_map(|(r, _)| r.iter().copied()));
            let count = renewals.len();
            let ids: Vec<i64> = renewals.iter().map(|r| r.0).collect();
            let reply = self
                .client
                .call(|to| ToRaft::LeaseRenew { to, renewals })
                .await
                .map_err(Status::from);
            let result = reply.and_then(|a| {
                let LeaseRenewed { revision, results } = a.value;
                // One result per renewal (the peer wire could break it; a local one cannot).
                if results.len() != count {
                    let e = ServerError::Internal(format!(
                        "{} keep-alive results for {count} renewals",
                        results.len()
                    ));
                    return Err(Status::from(e));
                }
                Ok((results, revision, a.raft_term))
            });
            match result {
                Ok((results, revision, term)) => {
                    for (id, r) in ids.iter().zip(&results) {
                        self.node.leases.learn(*id, *r);
                    }
                    let mut at = background;
                    for (renewals, slot) in batch {
                        let ttls = results[at..at + renewals.len()]
                            .iter()
                            .map(|r| r.map_or(0, |(ttl, _)| ttl))
                            .collect();
                        at += renewals.len();
                        slot.fill(Ok((ttls, revision, term)));
                    }
                }
                Err(status) => {
                    // The answered ones cannot be taken back; the leader will time them
                    // out if they never arrive. Forget them so the next keep-alive asks.
                    for id in &ids {
                        self.node.leases.learn(*id, None);
                    }
                    for (_, slot) in batch {
                        slot.fill(Err(status.clone()));
                    }
                }
            }
        }
    }
}

impl Services {
    pub async fn lease_grant(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::LeaseGrantRequest>(&body)?;
        let caller = self.user(call).await?;
        if req.ttl > LEASE_TTL_MAX_S {
            return Err(EtcdError::LeaseTtlTooLarge.status());
        }
        let id = if req.id == 0 {
            self.lease_ids().next()
        } else {
            req.id
        };
        let ttl = req.ttl.max(self.lease_config().min_ttl_s);
        let op = Op::LeaseGrant(mvcc::LeaseGrantRequest { id, ttl });
        let (res, term) = self.write(&op, &caller).await?;
        let r = res.into_lease_grant();
        Ok(encode(&pb::LeaseGrantResponse {
            header: Some(self.header(r.header.revision, term)),
            id: r.id,
            ttl: r.ttl,
            error: String::new(),
        }))
    }

    pub async fn lease_revoke(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::LeaseRevokeRequest>(&body)?;
        // Any user here; WRITE on the lease's keys at apply.
        let caller = self.user(call).await?;
        let op = Op::LeaseRevoke(mvcc::LeaseRevokeRequest { id: req.id });
        let (res, term) = self.write(&op, &caller).await?;
        let r = res.into_lease_revoke();
        Ok(encode(&pb::LeaseRevokeResponse {
            header: Some(self.header(r.header.revision, term)),
        }))
    }

    /// The keys attached to a lease (none if it is gone), as the leader knows them.
    async fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, Status> {
        let a = self
            .client()
            .call(|to| ToRaft::LeaseTimeToLive { to, id, keys: true })
            .await?;
        Ok(a.value.keys)
    }

    /// While auth is on, a caller other than root needs `perm` on every key attached
    /// to each lease (CVE-2023-32082, CVE-2026-33413).
    async fn check_lease_keys(
        &self,
        caller: &Caller,
        ids: &[i64],
        write: bool,
    ) -> Result<(), Status> {
        let view = self.node().auth_view();
        if !view.enabled || view.is_admin(caller) {
            return Ok(());
        }
        for &id in ids {
            for key in self.lease_keys(id).await? {
                let checked = if write {
                    view.check_write(caller, &key, b"")
                } else {
                    view.check_read(caller, &key, b"")
                };
                checked.map_err(status_from_auth)?;
            }
        }
        Ok(())
    }

    pub async fn lease_time_to_live(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::LeaseTimeToLiveRequest>(&body)?;
        let caller = self.user(call).await?;
        let a = self
            .client()
            .call(|to| ToRaft::LeaseTimeToLive {
                to,
                id: req.id,
                keys: req.keys,
            })
            .await?;
        let term = a.raft_term;
        let LeaseTtl {
            revision,
            ttl,
            granted_ttl,
            keys,
        } = a.value;
        if req.keys {
            let view = self.node().auth_view();
            if !view.is_admin(&caller) {
                for key in &keys {
                    view.check_read(&caller, key, b"")
                        .map_err(status_from_auth)?;
                }
            }
        }
        Ok(encode(&pb::LeaseTimeToLiveResponse {
            header: Some(self.header(revision, term)),
            id: req.id,
            ttl,
            granted_ttl,
            keys: keys.into_iter().map(Bytes::from).collect(),
        }))
    }

    pub async fn lease_leases(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::LeaseLeasesRequest>(&body)?;
        let caller = self.user(call).await?;
        let a = self.client().call(|to| ToRaft::LeaseLeases { to }).await?;
        let term = a.raft_term;
        let LeaseList { revision, ids } = a.value;
        self.check_lease_keys(&caller, &ids, false).await?;
        Ok(encode(&pb::LeaseLeasesResponse {
            header: Some(self.header(revision, term)),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }

    /// One LeaseKeepAlive stream: every request answered in order with the lease's TTL
    /// (0 once it is gone). Requests already received are renewed as one batch.
    pub async fn lease_keep_alive(&self, mut req: Request, res: Responses) -> Result<(), Status> {
        let call = req.call();
        loop {
            let Some(first) = req.messages.next().await else {
                return Ok(());
            };
            let mut ids = vec![decode::<pb::LeaseKeepAliveRequest>(&first?)?.id];
            let mut ended = false;
            while ids.len() < KEEPALIVE_BATCH_MAX {
                match futures_lite::future::poll_once(req.messages.next()).await {
                    Some(Some(m)) => ids.push(decode::<pb::LeaseKeepAliveRequest>(&m?)?.id),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            // Each keep-alive is the caller's, with WRITE on the lease's keys.
            if self.node().auth_enabled() {
                let caller = self.user(&call).await?;
                self.check_lease_keys(&caller, &ids, true).await?;
            }
            let (ttls, revision, term) = self.renewer().renew(&ids).await?;
            let header = self.header(revision, term);
            for (id, ttl) in ids.into_iter().zip(ttls) {
                let m = pb::LeaseKeepAliveResponse {
                    header: Some(header),
                    id,
                    ttl,
                };
                res.send(Bytes::from(m.encode_to_vec())).await?;
            }
            if ended {
                return Ok(());
            }
        }
    }
}
