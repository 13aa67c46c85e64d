//! `keel gateway start`: etcd's L4 gateway (TCP forwarder). To be built.

/// Runs `keel gateway …` (`args` after `gateway`).
pub fn main(_args: &[String]) -> Result<(), String> {
    Err("keel gateway: not built yet".into())
}
