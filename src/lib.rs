//! Keel: an etcd v3-compatible, replicated, durable key-value store, thread-per-core.
//!
//! Data flow (the storage engine, issue 2; the server around it comes next):
//!
//! ```text
//!  proposal ──► raft core ──► wal::Wal::append + sync  (one write + one fdatasync per batch)
//!                   │
//!                   └──► mvcc::Store::apply (put / delete / txn / compact)
//!                            ├─ mvcc::KeyIndex      key → generations of revisions (memory)
//!                            └─ mvcc::db::Db        mmap'd copy-on-write B+trees
//!                                  revision tree: Revision{main,sub} → KeyValue record
//!                                  lease / member / auth / meta trees
//!                  Db::publish  : dirty pages become visible to readers on other cores
//!                  Db::commit   : fdatasync + meta page flip (durable; WAL replay starts
//!                                 after the consistent index stored there)
//! ```
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod grpc;
pub mod mvcc;
pub mod pb;
pub mod raft;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod wal;
pub mod watch;
