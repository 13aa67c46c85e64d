//! etcd's gRPC services on top of the raft core: request decoding and checks, the wire
//! errors, and the handlers each core routes to.
//!
//! Runs on: every core. Pieces:
//! - `convert`: prost messages ↔ MVCC request/response types; the raft log encoding.
//! - `errors`: the one table of etcd's wire errors (code + exact message).
//! - `services`: the handlers and the router of a core; `lease`: the Lease service;
//!   `concurrency`: the Lock and Election services.
//! - `http`: `/health`, `/version`; `gateway`: etcd's JSON gateway (`/v3/...`).

pub mod auth;
pub mod concurrency;
pub mod convert;
pub mod errors;
pub mod gateway;
pub mod http;
pub mod lease;
pub mod maintenance;
pub mod services;
pub mod watch;

pub use auth::AuthConfig;
pub use lease::LeaseConfig;
pub use services::{router, HeaderInfo, Services};
