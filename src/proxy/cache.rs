//! The serializable-read cache: a Range answered from memory when a shared watch on this
//! core covers its keys, and dropped when that watch delivers any event (so it can never
//! hide a change the watch saw). Linearizable reads, reads at a past revision and reads
//! with a token (their permission is the cluster's to check) always go to the cluster.
//!
//! Runs on: every proxy core, its own cache (no sharing).

use crate::pb::etcdserverpb as pb;
use bytes::Bytes;
use prost::Message;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::watch::RangeKey;

/// Entries kept per core; past it the cache starts over.
const ENTRIES_MAX: usize = 16 * 1024;

#[derive(Default)]
pub struct Cache {
    entries: RefCell<HashMap<Bytes, Bytes>>,
    by_cover: RefCell<HashMap<RangeKey, Vec<Bytes>>>,
    /// Bumped by every invalidation: a fill that saw one since it asked is not kept.
    epoch: Cell<u64>,
    pub hits: Cell<u64>,
    pub misses: Cell<u64>,
}

fn cacheable(body: &Bytes, meta: &[(&'static str, String)]) -> Option<pb::RangeRequest> {
    if meta.iter().any(|(k, _)| *k == "token") {
        return None;
    }
    let r = pb::RangeRequest::decode(body.clone()).ok()?;
    (r.serializable && r.revision == 0).then_some(r)
}

impl Cache {
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached reply to this exact request, if any.
    pub fn get(&self, body: &Bytes, meta: &[(&'static str, String)]) -> Option<Bytes> {
        cacheable(body, meta)?;
        let hit = self.entries.borrow().get(body).cloned();
        match &hit {
            Some(_) => self.hits.set(self.hits.get() + 1),
            None => self.misses.set(self.misses.get() + 1),
        }
        hit
    }

    /// Keeps a reply the cluster gave, if a shared watch covers it from its revision on
    /// and nothing was invalidated while it was on its way.
    pub fn fill(
        &self,
        watch: &super::watch::Core,
        body: &Bytes,
        reply: &Bytes,
        meta: &[(&'static str, String)],
        started_epoch: u64,
    ) {
        let Some(r) = cacheable(body, meta) else {
            return;
        };
        if self.epoch.get() != started_epoch {
            return;
        }
        let Ok(resp) = pb::RangeResponse::decode(reply.clone()) else {
            return;
        };
        let revision = resp.header.map_or(0, |h| h.revision);
        let Some(cover) = watch.cover(&r.key, &r.range_end, revision) else {
            return;
        };
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= ENTRIES_MAX {
            entries.clear();
            self.by_cover.borrow_mut().clear();
        }
        entries.insert(body.clone(), reply.clone());
        self.by_cover
            .borrow_mut()
            .entry(cover)
            .or_default()
            .push(body.clone());
    }

    /// The shared watch `cover` saw a change (or ended): its entries go.
    pub fn drop_cover(&self, cover: &RangeKey) {
        self.epoch.set(self.epoch.get() + 1);
        if let Some(bodies) = self.by_cover.borrow_mut().remove(cover) {
            let mut entries = self.entries.borrow_mut();
            for b in bodies {
                entries.remove(&b);
            }
        }
    }

    /// A write through this core: entries it may touch go now (the watch would tell a
    /// moment later; a client reading its own write through the proxy must not wait).
    pub fn invalidate_request(&self, _path: &str, _body: &Bytes) {
        self.clear();
    }

    pub fn clear(&self) {
        self.epoch.set(self.epoch.get() + 1);
        self.entries.borrow_mut().clear();
        self.by_cover.borrow_mut().clear();
    }
}
