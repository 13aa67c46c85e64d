//! keel-chaos: a cluster of Keel (or etcd) members in network namespaces, faults injected
//! into it while clients record every operation, and the checks that judge the result
//! (linearizability per key, lost writes, watch guarantees, HashKV, serializable reads).
//!
//! ```text
//!  main thread (bridge netns)                 workload thread (bridge netns)
//!  run::drive ── nemesis (faults, tending) ── clients: registers, watchers, leases, locks
//!     │            │ ip / iptables / signals        │ gRPC (keel::grpc::client)
//!     │            ▼                                ▼
//!     │     member processes, one netns each (`ip netns exec … BIN --name m0 …`)
//!     └─ after healing: converge, final reads, final history (Watch from revision 1),
//!        HashKV on every member, then check::check (linearizability) + verify (the rest)
//! ```

pub mod check;
pub mod cluster;
pub mod disk;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod powercut;
pub mod record;
pub mod rng;
pub mod rpc;
pub mod run;
pub mod sys;
pub mod verify;
pub mod workload;
