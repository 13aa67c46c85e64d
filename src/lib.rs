//! Keel: an etcd v3-compatible, replicated, durable key-value store, thread-per-core.
//!
//! Layers, each naming only the ones below it (`tests/it/layers.rs` checks it):
//!
//! ```text
//!  server, proxy         boot: a pinned executor per core, listeners, signals, shutdown;
//!                        the proxies (`keel grpc-proxy`, `keel gateway`) beside it
//!  api                   the services: decode, checks, etcd's wire errors (api::errors is
//!                        the one table), the Watch, Lease, Lock and Election streams
//!  node                  each core's node: its shard, watch hub, lease cache, links to the
//!                        other cores, the read path (ReadIndex batching, scatter/merge)
//!  raft                  the raft core: boot, writes, reads, leases, apply, membership,
//!                        forwarding, peers (raft/mod.rs lists its parts)
//!  shard, watch, lease   per-core state: index replica and range merge, watch hub and its
//!                        interval index, lease cache
//!  mesh                  the cross-core messages (each request with its typed reply) and
//!                        ServerError, the errors they carry
//!  auth                  users, roles, key-range permissions, tokens (simple, JWT): the
//!                        state the raft core applies, the view every core checks against
//!  mvcc, wal             the store (key index, revision B+tree file) and the log
//!  grpc                  the gRPC transport, over tls::stream sockets
//!  tls, failpoint,       TLS (rustls): configs from certificate files, plain/TLS sockets,
//!  bbolt, etcd_wal       acceptors with handshake timeout and file reload; fault
//!                        injection; etcd's bbolt db files (read, streamed write), what
//!                        an etcd WAL says about membership
//!  runtime, config, pb, durable_dir, crc32c
//!                        executors and response queues, flags, messages, directories,
//!                        CRC-32C
//! ```
//!
//! Data flow:
//!
//! ```text
//!  client ──h2/gRPC──► core N (grpc::server, api::Services)
//!  client ──HTTP/1.1 or h2, JSON──► core N (grpc::http1, api::gateway): etcd's gateway,
//!    │                 POST /v3/... decoded to the gRPC request and run in-process by
//!    │                 the core's Router (Router::call_local): the same paths as below
//!    │ Range ────────► node::Node: this core's shard, other shards' parts by
//!    │                 CoreMsg::Range; linearizable ones wait for a batched ReadIndex
//!    │                 (ToRaft::ReadIndex), serializable ones for the newest round sent
//!    │                 out (mesh::RoundMark)
//!    │ Watch ────────► api::watch: the stream; watch::Hub of core N matches the rounds
//!    │                 core N applies (single keys by hash, ranges by interval index)
//!    │ LeaseKeepAlive► api::lease::Renewer: answered on core N when lease::LeaseCache
//!    │                 knows the leader's deadline is far enough ahead, else asks;
//!    │                 renewals reach the raft core in batches (ToRaft::LeaseRenew), no
//!    │                 raft entry
//!    │ Lock/Election ► api::concurrency: txns through raft, waits on core-local
//!    │                 subscriptions (Node::subscribe) to key-range changes
//!    │ Auth ────────► api::auth: bcrypt on the blocking pool, then ToRaft::ProposeAuth;
//!    │                 every call's caller (token / certificate CN) resolved on its core
//!    │                 and checked against the core's auth::AuthView (reads, watches,
//!    │                 admin calls); writes carry the caller in their entry, checked at
//!    │                 apply against the raft core's auth state
//!    │ Member*/MoveLeader ──ToRaft::Member / MoveLeader──► raft core (the leader decides)
//!    └ Put/Delete/Txn/Compact/LeaseGrant/LeaseRevoke ──ToRaft::Propose──► raft core
//!      (each request carries a mesh::ReplyTo<T>; the answer is a T or a ServerError,
//!      which api::errors turns into etcd's code and string)
//!  raft core ──► wal::Wal::append + sync  (one write + one fdatasync per batch)
//!      │◄──────► raft::transport (peer port): raft message batches to and from the other
//!      │         members; a follower's proposals and ReadIndex go to the leader inside
//!      │         raft, its keep-alives, TimeToLive and membership changes as forwarded
//!      │         requests (raft::cluster); a lagging member gets the db streamed in
//!      │         chunks and boots again on it
//!      │         raft::leases + raft::lessor: lease deadlines; expired leases revoked
//!      │         through raft
//!      └──► mvcc::Store::apply (put / delete / txn / compact / lease grant / revoke)
//!               ├─ mvcc::KeyIndex      key → generations of revisions (memory)
//!               ├─ mvcc::lease::Leases lease → TTL and attached keys (memory)
//!               └─ mvcc::db::Db        mmap'd copy-on-write B+trees
//!                     revision tree: Revision{main,sub} → KeyValue record
//!                     lease / member / auth / meta trees
//!      Db::publish, then one mesh::Applied per core (changes, snapshot, replies,
//!      revoked leases): each core's node updates its shard, fans events out to its
//!      watchers, then answers its clients' writes.
//!      Db::commit: fdatasync + meta page flip every 100 ms (WAL replay starts after
//!      the consistent index stored there).
//! ```
#![deny(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bbolt;
pub mod config;
pub mod crc32c;
pub mod durable_dir;
pub mod etcd_wal;
pub mod failpoint;
pub mod grpc;
pub mod lease;
pub mod mesh;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod pb;
pub mod proxy;
pub mod raft;
pub mod runtime;
pub mod server;
pub mod shard;
#[cfg(test)]
pub(crate) mod test_rng;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod wal;
pub mod watch;
