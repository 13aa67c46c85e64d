//! Auth: etcd's users, roles and key-range permissions.
//!
//! - [`perms`]: the key sets a user's roles grant and etcd's rules for checking a request
//!   against them;
//! - [`state`]: users, roles, the enabled flag and the revision, as the management calls
//!   change them; [`ops`]: those calls as the raft log carries them, applied with etcd's
//!   admin rules, and the state's records in the db's auth tree;
//! - [`view`]: the immutable picture every core checks requests against (who the caller
//!   is, what each RPC needs, txns walked at every depth);
//! - [`tokens`]: simple tokens, per core.
//!
//! Where it runs: the raft core holds the `AuthState` (loaded from the db at boot, changed
//! only by applied entries) and checks every write at apply, against the auth revision
//! the entry carries; every core holds the latest `AuthView` and token table (sent with
//! the rounds) and checks reads, watches and admin calls before serving them.

pub mod jwt;
pub mod ops;
pub mod perms;
pub mod state;
pub mod tokens;
pub mod view;

pub use ops::{AuthOp, AuthOutcome};
pub use state::{AuthError, AuthState};
pub use view::{AuthView, Caller};
