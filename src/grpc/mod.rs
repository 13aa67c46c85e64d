//! gRPC over HTTP/2, on our own: h2 connections on glommio TCP streams, gRPC framing,
//! status trailers, `grpc-timeout`, and routing by `:path` to handlers. The etcd services
//! (`src/api/`) plug in as handlers; they decode and encode prost messages, this layer
//! deals in `bytes::Bytes` messages only.
//!
//! Layers (as in h2 / tonic):
//! - `codec`:   5-byte length-prefixed messages, receive limit.
//! - `status`:  `Code`, `Status`, `grpc-status` / percent-encoded `grpc-message`.
//! - `timeout`: `grpc-timeout` values.
//! - `client`:  the client side (bench, chaos harness): connect, unary calls, bidi streams.
//! - `server`:  accept loop, connection task, stream task, `Router`, `Request`, `Responses`.
//! - `spread`:  which core serves an accepted connection.
//!
//! Runs on: every core. Each core binds the client address with SO_REUSEPORT and accepts
//! on it; `spread` hands each accepted connection to the core with the fewest live ones
//! (ties to the raft core), which serves it on its own executor with its own `Router`
//! (handlers are `!Send`). A connection and all its streams stay on the core that serves it.
//!
//! Invariants:
//! - A malformed frame, message or header fails that stream with a gRPC status (or that
//!   connection, for HTTP/2 protocol errors); it never panics and never affects other
//!   connections.
//! - Memory per stream is bounded: at most one request message (`message_bytes_max`)
//!   plus one DATA chunk, and `response_queue_max` queued responses; beyond that, HTTP/2
//!   flow control and the bounded queue push back.
//! - Every response is `:status 200`, `content-type: application/grpc`, then DATA, then
//!   trailers with `grpc-status`; or Trailers-Only when there is no message.
//! - h2 spawns nothing: the connection future is driven by a `glommio::spawn_local` task;
//!   h2's PING replies and window updates happen while that task polls it.

pub mod client;
pub mod codec;
pub mod http1;
pub mod server;
pub mod spread;
pub mod status;
pub mod timeout;

pub use server::{
    serve, serve_connection, serve_spread, Call, Config, Handler, Listening, Message, Messages,
    Request, Responses, Router, TrySendError,
};
pub use status::{Code, Status};

#[cfg(test)]
mod tests;
