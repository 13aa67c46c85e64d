//! `etcdserverpb.Lease`: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
//! LeaseLeases, with etcd 3.4's rules and errors.
//!
//! Runs on: every core. Grant and revoke are raft proposals (a revoke deletes the
//! lease's keys in one revision). Keep-alives only move a deadline on the raft core's
//! lessor: a core sends one `ToRaft::LeaseRenew` for every keep-alive its streams received
//! while its previous one was out (`Renewer`), so the raft core sees one message per batch.
//!
//! Invariants: a keep-alive stream answers its requests in order, one response each.

use super::errors::EtcdError;
use super::services::{decode, encode, unexpected_reply, Services};
use crate::grpc::{Request, Responses, Status};
use crate::mvcc::{self, Op, OpResponse};
use crate::pb::etcdserverpb as pb;
use crate::raft::RaftClient;
use crate::runtime::mesh::{ReplyBody, ToRaft};
use crate::shard::node::Slot;
use bytes::Bytes;
use prost::Message;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

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

type Renewed = Result<(Vec<i64>, i64, u64), Status>;

/// Batches a core's keep-alives: one `LeaseRenew` in flight at a time, carrying every
/// keep-alive that arrived while the previous one was out.
pub struct Renewer {
    client: Rc<RaftClient>,
    waiting: RefCell<Vec<(Vec<i64>, Rc<Slot<Renewed>>)>>,
    asking: Cell<bool>,
}

impl Renewer {
    pub fn new(client: Rc<RaftClient>) -> Rc<Renewer> {
        Rc::new(Renewer {
            client,
            waiting: RefCell::new(Vec::new()),
            asking: Cell::new(false),
        })
    }

    /// Each lease's TTL after the renewal (0: gone), the store revision and raft term.
    pub async fn renew(self: &Rc<Self>, ids: Vec<i64>) -> Renewed {
        let slot = Slot::new();
        self.waiting.borrow_mut().push((ids, slot.clone()));
        if !self.asking.get() {
            self.asking.set(true);
            let me = self.clone();
            glommio::spawn_local(async move { me.ask().await }).detach();
        }
        slot.wait().await
    }

    async fn ask(self: Rc<Self>) {
        loop {
            let batch = std::mem::take(&mut *self.waiting.borrow_mut());
            if batch.is_empty() {
                self.asking.set(false);
                return;
            }
            let ids: Vec<i64> = batch
                .iter()
                .flat_map(|(ids, _)| ids.iter().copied())
                .collect();
            let count = ids.len();
            let reply = self
                .client
                .call(|from, seq| ToRaft::LeaseRenew { from, seq, ids })
                .await;
            let result = reply.and_then(|r| match r.body {
                Ok(ReplyBody::LeaseRenewed { revision, ttls }) if ttls.len() == count => {
                    Ok((ttls, revision, r.raft_term))
                }
                Ok(_) => Err(unexpected_reply()),
                Err(s) => Err(s),
            });
            match result {
                Ok((ttls, revision, term)) => {
                    let mut at = 0;
                    for (ids, slot) in batch {
                        let mine = ttls[at..at + ids.len()].to_vec();
                        at += ids.len();
                        slot.fill(Ok((mine, revision, term)));
                    }
                }
                Err(status) => {
                    for (_, slot) in batch {
                        slot.fill(Err(status.clone()));
                    }
                }
            }
        }
    }
}

impl Services {
    pub async fn lease_grant(&self, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::LeaseGrantRequest>(&body)?;
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
        let (res, term) = self.write(&op).await?;
        let OpResponse::LeaseGrant(r) = res else {
            return Err(unexpected_reply());
        };
        Ok(encode(&pb::LeaseGrantResponse {
            header: Some(self.header(r.header.revision, term)),
            id: r.id,
            ttl: r.ttl,
            error: String::new(),
        }))
    }

    pub async fn lease_revoke(&self, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::LeaseRevokeRequest>(&body)?;
        let op = Op::LeaseRevoke(mvcc::LeaseRevokeRequest { id: req.id });
        let (res, term) = self.write(&op).await?;
        let OpResponse::LeaseRevoke(r) = res else {
            return Err(unexpected_reply());
        };
        Ok(encode(&pb::LeaseRevokeResponse {
            header: Some(self.header(r.header.revision, term)),
        }))
    }

    pub async fn lease_time_to_live(&self, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::LeaseTimeToLiveRequest>(&body)?;
        let reply = self
            .client()
            .call(|from, seq| ToRaft::LeaseTimeToLive {
                from,
                seq,
                id: req.id,
                keys: req.keys,
            })
            .await?;
        let term = reply.raft_term;
        let ReplyBody::LeaseTimeToLive {
            revision,
            ttl,
            granted_ttl,
            keys,
        } = reply.body?
        else {
            return Err(unexpected_reply());
        };
        Ok(encode(&pb::LeaseTimeToLiveResponse {
            header: Some(self.header(revision, term)),
            id: req.id,
            ttl,
            granted_ttl,
            keys: keys.into_iter().map(Bytes::from).collect(),
        }))
    }

    pub async fn lease_leases(&self, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::LeaseLeasesRequest>(&body)?;
        let reply = self
            .client()
            .call(|from, seq| ToRaft::LeaseLeases { from, seq })
            .await?;
        let term = reply.raft_term;
        let ReplyBody::Leases { revision, ids } = reply.body? else {
            return Err(unexpected_reply());
        };
        Ok(encode(&pb::LeaseLeasesResponse {
            header: Some(self.header(revision, term)),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }

    /// One LeaseKeepAlive stream: every request answered in order with the lease's TTL
    /// (0 once it is gone). Requests already received are renewed as one batch.
    pub async fn lease_keep_alive(&self, mut req: Request, res: Responses) -> Result<(), Status> {
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
            let (ttls, revision, term) = self.renewer().renew(ids.clone()).await?;
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
