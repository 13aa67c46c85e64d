//! `mvcc::Error`: the operating errors of the MVCC layer, with etcd 3.4's exact strings.
//!
//! The strings are etcd's `mvcc` errors (`ErrCompacted`, `ErrFutureRev`) and its
//! `etcdserver` / `rpctypes` request errors. The gRPC layer prefixes the mvcc ones with
//! `etcdserver: ` and maps codes (Compacted/FutureRev → OutOfRange, the rest →
//! InvalidArgument), as etcd's `rpctypes.ErrGRPC*` table does.

use super::db;
use super::kv::CodecError;
use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// etcd `mvcc.ErrCompacted`.
    Compacted,
    /// etcd `mvcc.ErrFutureRev`.
    FutureRev,
    /// etcd `ErrGRPCKeyNotFound` (ignore_value / ignore_lease on a missing key, empty op).
    KeyNotFound,
    /// etcd `ErrGRPCDuplicateKey`.
    DuplicateKey,
    /// etcd `ErrGRPCTooManyOps`.
    TooManyOps,
    /// etcd `ErrGRPCEmptyKey`.
    EmptyKey,
    /// etcd `ErrGRPCValueProvided` (ignore_value with a value).
    ValueProvided,
    /// etcd `ErrGRPCLeaseProvided` (ignore_lease with a lease).
    LeaseProvided,
    /// etcd `lease.ErrLeaseNotFound` (a put with, or a revoke of, a lease that is gone).
    LeaseNotFound,
    /// etcd `lease.ErrLeaseExists` (a grant of an ID in use).
    LeaseExists,
    /// The storage below failed.
    Db(db::Error),
    /// A record in the Revision tree does not decode, or the index points at nothing.
    Corrupt { what: String },
}

impl Error {
    /// The message etcd puts on the wire for this error (before the gRPC layer's prefix
    /// for the mvcc errors).
    pub fn etcd_message(&self) -> Option<&'static str> {
        Some(match self {
            Error::Compacted => "mvcc: required revision has been compacted",
            Error::FutureRev => "mvcc: required revision is a future revision",
            Error::KeyNotFound => "etcdserver: key not found",
            Error::DuplicateKey => "etcdserver: duplicate key given in txn request",
            Error::TooManyOps => "etcdserver: too many operations in txn request",
            Error::EmptyKey => "etcdserver: key is not provided",
            Error::ValueProvided => "etcdserver: value is provided",
            Error::LeaseProvided => "etcdserver: lease is provided",
            Error::LeaseNotFound => "etcdserver: requested lease not found",
            Error::LeaseExists => "etcdserver: lease already exists",
            Error::Db(_) | Error::Corrupt { .. } => return None,
        })
    }
}

impl PartialEq for Error {
    /// Operating errors compare by kind; storage errors never compare equal.
    fn eq(&self, other: &Error) -> bool {
        match (self.etcd_message(), other.etcd_message()) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Db(e) => write!(f, "mvcc: {e}"),
            Error::Corrupt { what } => write!(f, "mvcc: corrupt revision tree: {what}"),
            other => f.write_str(other.etcd_message().expect("operating error has a message")),
        }
    }
}

impl std::error::Error for Error {}

impl From<db::Error> for Error {
    fn from(e: db::Error) -> Error {
        Error::Db(e)
    }
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Error {
        Error::Corrupt {
            what: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_etcds() {
        assert_eq!(
            Error::Compacted.to_string(),
            "mvcc: required revision has been compacted"
        );
        assert_eq!(
            Error::FutureRev.to_string(),
            "mvcc: required revision is a future revision"
        );
        assert_eq!(Error::KeyNotFound.to_string(), "etcdserver: key not found");
        assert_eq!(
            Error::DuplicateKey.to_string(),
            "etcdserver: duplicate key given in txn request"
        );
        assert_eq!(
            Error::TooManyOps.to_string(),
            "etcdserver: too many operations in txn request"
        );
        assert_eq!(
            Error::EmptyKey.to_string(),
            "etcdserver: key is not provided"
        );
        assert_eq!(
            Error::ValueProvided.to_string(),
            "etcdserver: value is provided"
        );
        assert_eq!(
            Error::LeaseProvided.to_string(),
            "etcdserver: lease is provided"
        );
        assert_ne!(
            Error::Db(db::Error::Poisoned),
            Error::Db(db::Error::Poisoned)
        );
    }
}
