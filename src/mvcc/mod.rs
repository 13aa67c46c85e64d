//! MVCC storage: etcd's multi-version key-value semantics over the mmap'd B+tree.
//!
//! Runs on: the raft core (writes, authoritative key index); shard cores read
//! through `db::ReadSnapshot`.

pub mod db;
pub mod revision;

pub use revision::Revision;
