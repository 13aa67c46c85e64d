//! The replicated half of etcd's leases: which leases exist, their granted TTL, and which
//! keys are attached to each. Changed only by applied raft entries (grant, revoke, and
//! puts and deletes of keys), so every member holds the same. When a lease expires is
//! not here: that is the leader's clock (`crate::lease::Lessor`).
//!
//! Runs on: the raft core (inside `Store`).
//!
//! Invariants:
//! - `key_lease[k] == id` iff `k` is in `by_id[id].keys`; a key is attached to at most
//!   one lease, the lease of its live record.
//! - Every lease in `by_id` has a record in the Db's Lease tree and vice versa.
//!
//! Lease record (Lease tree; key = lease ID as 8 bytes big-endian, of the u64 bits):
//! ```text
//!   0      8      16
//!   | ttl  | remaining_ttl |   i64 big-endian each, seconds
//! ```
//! `remaining_ttl` is 0 unless a checkpoint recorded one (etcd's lease checkpoints).

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const LEASE_RECORD_BYTES: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The TTL it was granted with, in seconds (after the minimum-TTL rule).
    pub ttl: i64,
    /// A checkpointed remaining TTL in seconds (0: none).
    pub remaining_ttl: i64,
    /// Attached keys, in key order (revoke deletes them in this order).
    pub keys: BTreeSet<Vec<u8>>,
}

#[derive(Default, Debug)]
pub struct Leases {
    by_id: BTreeMap<i64, Lease>,
    key_lease: HashMap<Vec<u8>, i64>,
}

pub fn lease_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

pub fn encode_record(ttl: i64, remaining_ttl: i64) -> [u8; LEASE_RECORD_BYTES] {
    let mut out = [0u8; LEASE_RECORD_BYTES];
    out[..8].copy_from_slice(&ttl.to_be_bytes());
    out[8..].copy_from_slice(&remaining_ttl.to_be_bytes());
    out
}

/// (id, ttl, remaining_ttl) of a stored record; `None` if it is not one.
pub fn decode_record(key: &[u8], value: &[u8]) -> Option<(i64, i64, i64)> {
    let id = u64::from_be_bytes(key.try_into().ok()?) as i64;
    if value.len() != LEASE_RECORD_BYTES {
        return None;
    }
    let ttl = i64::from_be_bytes(value[..8].try_into().ok()?);
    let remaining = i64::from_be_bytes(value[8..].try_into().ok()?);
    Some((id, ttl, remaining))
}

impl Leases {
    pub fn contains(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every lease, in ID order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &Lease)> {
        self.by_id.iter().map(|(id, l)| (*id, l))
    }

    pub fn insert(&mut self, id: i64, ttl: i64, remaining_ttl: i64) {
        self.by_id.insert(
            id,
            Lease {
                ttl,
                remaining_ttl,
                keys: BTreeSet::new(),
            },
        );
    }

    pub fn set_remaining(&mut self, id: i64, remaining_ttl: i64) -> bool {
        match self.by_id.get_mut(&id) {
            Some(l) => {
                l.remaining_ttl = remaining_ttl;
                true
            }
            None => false,
        }
    }

    /// Removes the lease and detaches its keys; returns them in key order.
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let lease = self.by_id.remove(&id)?;
        for k in &lease.keys {
            self.key_lease.remove(k);
        }
        Some(lease)
    }

    /// `key` now has a live record with `lease` (0: none): moves it between leases. A
    /// lease that does not exist is ignored (the store checked before writing; at boot
    /// a record may name a lease revoked since, as in etcd).
    pub fn attach(&mut self, key: &[u8], lease: i64) {
        match self.key_lease.get(key) {
            Some(&old) if old == lease => return,
            Some(_) => self.detach(key),
            None => {}
        }
        if lease == 0 {
            return;
        }
        if let Some(l) = self.by_id.get_mut(&lease) {
            l.keys.insert(key.to_vec());
            self.key_lease.insert(key.to_vec(), lease);
        }
    }

    /// `key` was deleted (or put without a lease).
    pub fn detach(&mut self, key: &[u8]) {
        if let Some(old) = self.key_lease.remove(key) {
            if let Some(l) = self.by_id.get_mut(&old) {
                l.keys.remove(key);
            }
        }
    }

    pub fn lease_of(&self, key: &[u8]) -> Option<i64> {
        self.key_lease.get(key).copied()
    }

    /// Checks the invariants above (the attachments half).
    pub fn invariants(&self) {
        let mut attached = 0;
        for (id, l) in &self.by_id {
            for k in &l.keys {
                assert_eq!(self.key_lease.get(k), Some(id), "key attached twice");
                attached += 1;
            }
        }
        assert_eq!(
            attached,
            self.key_lease.len(),
            "key_lease names a missing lease"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_moves_keys_between_leases_and_remove_detaches() {
        let mut l = Leases::default();
        l.insert(1, 10, 0);
        l.insert(2, 20, 0);
        l.attach(b"a", 1);
        l.attach(b"b", 1);
        l.attach(b"a", 2);
        l.invariants();
        assert_eq!(l.get(1).unwrap().keys.len(), 1);
        assert_eq!(l.lease_of(b"a"), Some(2));
        l.attach(b"b", 0);
        assert_eq!(l.lease_of(b"b"), None);
        l.attach(b"c", 3); // no such lease: ignored
        assert_eq!(l.lease_of(b"c"), None);
        let gone = l.remove(2).unwrap();
        assert_eq!(
            gone.keys.into_iter().collect::<Vec<_>>(),
            vec![b"a".to_vec()]
        );
        assert_eq!(l.lease_of(b"a"), None);
        l.invariants();
    }

    #[test]
    fn records_round_trip() {
        let rec = encode_record(30, 7);
        assert_eq!(
            decode_record(&lease_key(0x694d), &rec),
            Some((0x694d, 30, 7))
        );
        assert_eq!(decode_record(&[1, 2], &rec), None);
        assert_eq!(decode_record(&lease_key(1), &rec[..8]), None);
    }
}
