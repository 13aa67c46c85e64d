//! MVCC storage: etcd 3.4's multi-version key-value semantics over the mmap'd B+tree.
//!
//! Runs on: the raft core, which owns the one [`Store`] (the authoritative [`KeyIndex`]
//! and the `db::Db` writer) and applies every write in log order. Shard cores read
//! published pages through `db::ReadSnapshot` with their own index replicas.
//!
//! Pieces:
//! - [`Revision`] `{main, sub}`: 16 bytes big-endian, the Revision-tree key.
//! - [`kv`]: the record stored under a revision: a flag byte (put / tombstone) and the
//!   `mvccpb.KeyValue` protobuf bytes, copyable straight into responses and events.
//! - [`key_index`]: etcd's treeIndex, key → generations of revisions, in memory.
//! - [`store`]: Put / DeleteRange / Txn / Compact / HashKV with etcd's rules, and the
//!   raft-facing surface (`apply_at`, consistent index, publish, commit, check);
//!   [`read`]: Range over an index and a record source (the store's working state on the
//!   raft core, a `ReadSnapshot` on shard cores); [`validate`]: etcd's request checks;
//!   [`request`]: the etcdserverpb-shaped request and response types.
//! - [`lease`]: which leases exist and the keys attached to each (replicated state).
//! - [`backend`]: the Revision tree and meta fields the store needs from `Db` (and an
//!   in-memory stand-in for tests and the simulator).
//!
//! Invariants:
//! - Revisions only grow: a write txn with changes takes `current_revision + 1`; its
//!   changes are `(rev, 0), (rev, 1), …`. A txn without changes takes no revision.
//! - The key index equals the one rebuilt from the Revision tree (`Store::check`).
//! - At or below `compact_revision` the tree holds, per key, only its latest put (never a
//!   tombstone); reads below `compact_revision` fail with `Compacted`.
//! - `current_revision`, `compact_revision` and the consistent raft index are written to
//!   the Db meta page with every commit, so WAL replay resumes after the index and
//!   [`Store::apply_at`] skips entries already applied.

pub mod backend;
pub mod db;
pub mod error;
pub mod key_index;
pub mod kv;
pub mod lease;
pub mod read;
pub mod request;
pub mod revision;
pub mod store;
pub mod validate;
pub mod wire;

#[cfg(test)]
mod model_test;
#[cfg(test)]
mod store_test;

pub use backend::{Backend, MemBackend};
pub use error::{Error, Result};
pub use key_index::{KeyIndex, KeyRange};
pub use kv::{decode_record, KeyValue, RecordKind};
pub use read::{ReadView, Records, SliceRead};
pub use request::*;
pub use revision::Revision;
pub use store::{Change, Store, StoreOptions};
