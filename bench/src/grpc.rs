//! The gRPC client (`keel::grpc::client`) and the time-stamped values that measure watch
//! latency end to end.

use bytes::Bytes;
pub use keel::grpc::client::{
    connect, connect_with, handshake, unary, unary_raw, CallError, Conn, Stream,
};

/// Bytes of a value that carries its send time (ns since the UNIX epoch) in its first
/// 8 bytes, padded to `size` bytes: how watch latency is measured end to end.
pub fn stamped_value(size: usize) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut v = now.to_be_bytes().to_vec();
    v.resize(size.max(8), b'v');
    Bytes::from(v)
}

/// Microseconds since the time stamped into `value` (0 if it carries none).
pub fn age_us(value: &[u8]) -> u64 {
    let Some(stamp) = value.get(..8) else {
        return 0;
    };
    let sent = u64::from_be_bytes(stamp.try_into().unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    now.saturating_sub(sent) / 1000
}
