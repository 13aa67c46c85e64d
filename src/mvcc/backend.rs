//! `Backend`: the part of `db::Db` the `Store` uses (the Revision tree and the meta
//! fields), as a trait so the store logic also runs over [`MemBackend`] in tests and in
//! the deterministic simulator, where no io_uring or file is wanted.

use super::db::{self, AppMeta, Db, TreeId, VerifiedPages};
use std::collections::BTreeMap;

/// Revision-tree storage with Db's semantics: writes go to a working state that the
/// writer reads back; `commit` makes it durable. Reads fail with `db::Error::Corrupt`
/// when a page they visit fails its check (see `db`'s module doc).
#[allow(async_fn_in_trait)] // single-threaded by design: the raft core owns the store.
pub trait Backend {
    fn app_meta(&self) -> AppMeta;
    /// Records in the Revision tree (working state).
    fn revision_count(&self) -> u64;
    fn set_app_meta(&mut self, meta: AppMeta);
    fn insert(&mut self, key: &[u8], value: &[u8]) -> db::Result<()>;
    /// The record under `key`; `memo` carries the pages already verified by the same
    /// read operation (see `db::VerifiedPages`).
    fn get(&self, memo: &VerifiedPages, key: &[u8]) -> db::Result<Option<&[u8]>>;
    /// Calls `f` on entries with `start <= key < end` (`end` empty = unbounded),
    /// ascending, until it returns false.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> db::Result<()>;
    /// Removes the entry under `key`; whether there was one.
    fn remove(&mut self, key: &[u8]) -> db::Result<bool>;
    fn publish(&mut self);
    async fn commit(&mut self) -> db::Result<()>;
    fn check(&self) -> db::Result<()>;
    /// The Lease tree (see `lease`): one record per lease, written in the same
    /// transaction as the revisions of the entry that granted or revoked it.
    fn lease_insert(&mut self, key: &[u8], value: &[u8]) -> db::Result<()>;
    fn lease_remove(&mut self, key: &[u8]) -> db::Result<()>;
    fn lease_scan(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> db::Result<()>;
}

impl Backend for Db {
    fn app_meta(&self) -> AppMeta {
        Db::app_meta(self)
    }

    fn revision_count(&self) -> u64 {
        Db::len(self, TreeId::Revision)
    }

    fn set_app_meta(&mut self, meta: AppMeta) {
        Db::set_app_meta(self, meta)
    }

    fn insert(&mut self, key: &[u8], value: &[u8]) -> db::Result<()> {
        Db::insert(self, TreeId::Revision, key, value)
    }

    fn get(&self, memo: &VerifiedPages, key: &[u8]) -> db::Result<Option<&[u8]>> {
        Db::get_in(self, memo, TreeId::Revision, key)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> db::Result<()> {
        for entry in Db::range(self, TreeId::Revision, start, end) {
            let (k, v) = entry?;
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> db::Result<bool> {
        Db::remove(self, TreeId::Revision, key)
    }

    fn publish(&mut self) {
        Db::publish(self)
    }

    async fn commit(&mut self) -> db::Result<()> {
        Db::commit(self).await
    }

    fn check(&self) -> db::Result<()> {
        Db::check(self)
    }

    fn lease_insert(&mut self, key: &[u8], value: &[u8]) -> db::Result<()> {
        Db::insert(self, TreeId::Lease, key, value)
    }

    fn lease_remove(&mut self, key: &[u8]) -> db::Result<()> {
        Db::remove(self, TreeId::Lease, key).map(|_| ())
    }

    fn lease_scan(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> db::Result<()> {
        for entry in Db::range(self, TreeId::Lease, &[], &[]) {
            let (k, v) = entry?;
            f(k, v);
        }
        Ok(())
    }
}

/// An in-memory Backend: a working map and the last committed copy of it.
#[derive(Clone, Debug, Default)]
pub struct MemBackend {
    working: BTreeMap<Vec<u8>, Vec<u8>>,
    meta: AppMeta,
    leases: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    durable_meta: AppMeta,
    durable_leases: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemBackend {
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    /// What a reopen after a crash would find: the last committed state.
    pub fn crash(self) -> MemBackend {
        MemBackend {
            working: self.durable.clone(),
            meta: self.durable_meta,
            leases: self.durable_leases.clone(),
            durable: self.durable,
            durable_meta: self.durable_meta,
            durable_leases: self.durable_leases,
        }
    }

    pub fn len(&self) -> usize {
        self.working.len()
    }

    pub fn is_empty(&self) -> bool {
        self.working.is_empty()
    }
}

impl Backend for MemBackend {
    fn app_meta(&self) -> AppMeta {
        self.meta
    }

    fn revision_count(&self) -> u64 {
        self.working.len() as u64
    }

    fn set_app_meta(&mut self, meta: AppMeta) {
        self.meta = meta;
    }

    fn insert(&mut self, key: &[u8], value: &[u8]) -> db::Result<()> {
        self.working.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn get(&self, _memo: &VerifiedPages, key: &[u8]) -> db::Result<Option<&[u8]>> {
        Ok(self.working.get(key).map(Vec::as_slice))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> db::Result<()> {
        for (k, v) in self.working.range(start.to_vec()..) {
            if (!end.is_empty() && k.as_slice() >= end) || !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> db::Result<bool> {
        Ok(self.working.remove(key).is_some())
    }

    fn publish(&mut self) {}

    async fn commit(&mut self) -> db::Result<()> {
        self.durable = self.working.clone();
        self.durable_meta = self.meta;
        self.durable_leases = self.leases.clone();
        Ok(())
    }

    fn check(&self) -> db::Result<()> {
        Ok(())
    }

    fn lease_insert(&mut self, key: &[u8], value: &[u8]) -> db::Result<()> {
        self.leases.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn lease_remove(&mut self, key: &[u8]) -> db::Result<()> {
        self.leases.remove(key);
        Ok(())
    }

    fn lease_scan(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> db::Result<()> {
        for (k, v) in &self.leases {
            f(k, v);
        }
        Ok(())
    }
}
