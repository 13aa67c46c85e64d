//! keel-chaos: a cluster of Keel (or etcd) members in network namespaces, faults injected
//! into it while clients record every operation, and the checks that judge the result
//! (linearizability per key, lost writes, watch guarantees, HashKV, serializable reads).

pub mod check;
pub mod history;
