//! Keel: an etcd v3-compatible, replicated, durable key-value store, thread-per-core.
//!
//! Data flow:
//!
//! ```text
//!  client ──h2/gRPC──► core N (grpc::server, api::Services)
//!    │ Range ────────► node::Node: this core's shard, other shards' parts by
//!    │                 CoreMsg::Range; linearizable ones wait for a batched ReadIndex,
//!    │                 serializable ones for the newest round sent out (mesh::RoundMark)
//!    │ Watch ────────► watch::Hub of core N (events from the rounds core N applies)
//!    │ LeaseKeepAlive► api::lease::Renewer: answered on core N when the leader's last
//!    │                 confirmed deadline is far enough ahead, else asks; renewals reach
//!    │                 the raft core in batches (ToRaft::LeaseRenew), no raft entry
//!    │ Lock/Election ► api::concurrency: txns through raft, waits on core-local
//!    │                 subscriptions (Node::subscribe) to key-range changes
//!    │ Member*/MoveLeader ──ToRaft::Member / MoveLeader──► raft core (the leader decides)
//!    └ Put/Delete/Txn/Compact/LeaseGrant/LeaseRevoke ──ToRaft::Propose──► raft core
//!  raft core ──► wal::Wal::append + sync  (one write + one fdatasync per batch)
//!      │◄──────► raft::transport (peer port): raft message batches to and from the other
//!      │         members; a follower's proposals and ReadIndex go to the leader inside
//!      │         raft, its keep-alives, TimeToLive and membership changes as forwarded
//!      │         requests (raft::cluster); a lagging member gets the db streamed in
//!      │         chunks and boots again on it
//!      │         raft::lessor: lease deadlines; expired leases revoked through raft
//!      └──► mvcc::Store::apply (put / delete / txn / compact / lease grant / revoke)
//!               ├─ mvcc::KeyIndex      key → generations of revisions (memory)
//!               ├─ mvcc::lease::Leases lease → TTL and attached keys (memory)
//!               └─ mvcc::db::Db        mmap'd copy-on-write B+trees
//!                     revision tree: Revision{main,sub} → KeyValue record
//!                     lease / member / auth / meta trees
//!      Db::publish, then one mesh::Applied per core (changes, snapshot, replies,
//!      revoked leases): each core updates its shard, fans events out to its watchers,
//!      then answers its clients' writes.
//!      Db::commit: fdatasync + meta page flip every 100 ms (WAL replay starts after
//!      the consistent index stored there).
//! ```
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod durable_dir;
pub mod failpoint;
pub mod grpc;
pub mod lease;
pub mod mesh;
pub mod mvcc;
pub mod node;
pub mod pb;
pub mod raft;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod wal;
pub mod watch;
