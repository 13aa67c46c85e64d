//! One table from Keel's errors to etcd's wire errors: gRPC code and exact message, as
//! etcd 3.4's `rpctypes` defines them. Clients match these strings (clientv3 turns them
//! back into typed errors), so they are spelled exactly as etcd spells them.

use crate::auth::AuthError;
use crate::grpc::{Code, Status};
use crate::mesh::ServerError;
use crate::mvcc::{self, db};

/// Every server-side error etcd 3.4 puts on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdError {
    EmptyKey,
    KeyNotFound,
    ValueProvided,
    LeaseProvided,
    TooManyOps,
    DuplicateKey,
    Compacted,
    FutureRev,
    NoSpace,
    LeaseNotFound,
    LeaseExist,
    LeaseTtlTooLarge,
    WatchCanceled,
    MemberExist,
    PeerUrlExist,
    MemberNotEnoughStarted,
    MemberBadUrls,
    MemberNotFound,
    MemberNotLearner,
    LearnerNotReady,
    TooManyLearners,
    RequestTooLarge,
    TooManyRequests,
    RootUserNotExist,
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    AuthFailed,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    AuthNotEnabled,
    InvalidAuthToken,
    InvalidAuthMgmt,
    AuthOldRevision,
    PermissionNotGiven,
    NoLeader,
    NotLeader,
    LeaderChanged,
    NotCapable,
    Stopped,
    Timeout,
    TimeoutDueToLeaderFail,
    TimeoutDueToConnectionLost,
    TimeoutWaitAppliedIndex,
    Unhealthy,
    Corrupt,
    NotSupportedForLearner,
    BadLeaderTransferee,
    /// Not one of etcd's `rpctypes` errors, but etcd's own string for a MoveLeader whose
    /// transferee does not take over in time.
    LeaderTransferTimedOut,
    /// grpc-go's answer for a request whose context ended (etcd's for a write that found
    /// no leader until its deadline).
    DeadlineExceeded,
    /// The Election service's errors (etcd's `v3election` package answers them with
    /// code Unknown).
    ElectionNoLeader,
    ElectionNotLeader,
    ElectionMissingLeaderKey,
}

impl EtcdError {
    /// (code, message) on the wire.
    pub fn wire(self) -> (Code, &'static str) {
        use EtcdError::*;
        match self {
            EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
            ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            TooManyOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            DuplicateKey => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            Compacted => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            FutureRev => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            NoSpace => (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
            LeaseExist => (Code::FailedPrecondition, "etcdserver: lease already exists"),
            LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            WatchCanceled => (Code::Cancelled, "etcdserver: watch canceled"),
            MemberExist => (
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            PeerUrlExist => (
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            MemberNotEnoughStarted => (
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            MemberBadUrls => (
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            MemberNotFound => (Code::NotFound, "etcdserver: member not found"),
            MemberNotLearner => (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            LearnerNotReady => (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            TooManyLearners => (
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            RequestTooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
            TooManyRequests => (Code::ResourceExhausted, "etcdserver: too many requests"),
            RootUserNotExist => (
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            RootRoleNotExist => (
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            UserAlreadyExist => (
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            UserEmpty => (Code::InvalidArgument, "etcdserver: user name is empty"),
            UserNotFound => (Code::FailedPrecondition, "etcdserver: user name not found"),
            RoleAlreadyExist => (
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            RoleNotFound => (Code::FailedPrecondition, "etcdserver: role name not found"),
            RoleEmpty => (Code::InvalidArgument, "etcdserver: role name is empty"),
            AuthFailed => (
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            PermissionDenied => (Code::PermissionDenied, "etcdserver: permission denied"),
            RoleNotGranted => (
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            PermissionNotGranted => (
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            AuthNotEnabled => (
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            InvalidAuthToken => (Code::Unauthenticated, "etcdserver: invalid auth token"),
            InvalidAuthMgmt => (Code::InvalidArgument, "etcdserver: invalid auth management"),
            AuthOldRevision => (
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            PermissionNotGiven => (Code::InvalidArgument, "etcdserver: permission not given"),
            NoLeader => (Code::Unavailable, "etcdserver: no leader"),
            NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
            LeaderChanged => (Code::Unavailable, "etcdserver: leader changed"),
            NotCapable => (Code::Unavailable, "etcdserver: not capable"),
            Stopped => (Code::Unavailable, "etcdserver: server stopped"),
            Timeout => (Code::Unavailable, "etcdserver: request timed out"),
            TimeoutDueToLeaderFail => (
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to previous leader failure",
            ),
            TimeoutDueToConnectionLost => (
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to connection lost",
            ),
            TimeoutWaitAppliedIndex => (
                Code::Unavailable,
                "etcdserver: request timed out, waiting for the applied index took too long",
            ),
            Unhealthy => (Code::Unavailable, "etcdserver: unhealthy cluster"),
            Corrupt => (Code::DataLoss, "etcdserver: corrupt cluster"),
            NotSupportedForLearner => (
                Code::Unavailable,
                "etcdserver: rpc not supported for learner",
            ),
            BadLeaderTransferee => (
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            LeaderTransferTimedOut => (
                Code::Unavailable,
                "etcdserver: request timed out, leader transfer took too long",
            ),
            DeadlineExceeded => (Code::Unknown, "context deadline exceeded"),
            ElectionNoLeader => (Code::Unknown, "election: no leader"),
            ElectionNotLeader => (Code::Unknown, "election: not leader"),
            ElectionMissingLeaderKey => (Code::Unknown, "\"leader\" field must be provided"),
        }
    }

    pub fn status(self) -> Status {
        let (code, message) = self.wire();
        Status::new(code, message)
    }
}

/// The wire error for a storage error: a page that failed its check on read (or a record
/// that does not decode) is etcd's `ErrCorrupt`; the others (I/O, a poisoned or full db)
/// reach a client only if the member is about to stop, as `Internal` with the cause.
pub fn status_from_db(e: &db::Error) -> Status {
    match e {
        db::Error::Corrupt { .. } => EtcdError::Corrupt.status(),
        _ => Status::new(Code::Internal, format!("keel: {e}")),
    }
}

/// The wire error for an MVCC error: etcd's operating errors as etcd spells them, storage
/// errors as [`status_from_db`] says.
pub fn status_from_mvcc(e: &mvcc::Error) -> Status {
    let known = match e {
        mvcc::Error::Compacted => EtcdError::Compacted,
        mvcc::Error::FutureRev => EtcdError::FutureRev,
        mvcc::Error::KeyNotFound => EtcdError::KeyNotFound,
        mvcc::Error::DuplicateKey => EtcdError::DuplicateKey,
        mvcc::Error::TooManyOps => EtcdError::TooManyOps,
        mvcc::Error::EmptyKey => EtcdError::EmptyKey,
        mvcc::Error::ValueProvided => EtcdError::ValueProvided,
        mvcc::Error::LeaseProvided => EtcdError::LeaseProvided,
        mvcc::Error::LeaseNotFound => EtcdError::LeaseNotFound,
        mvcc::Error::LeaseExists => EtcdError::LeaseExist,
        mvcc::Error::Db(e) => return status_from_db(e),
        mvcc::Error::Corrupt { .. } => EtcdError::Corrupt,
    };
    known.status()
}

/// The wire error for an error of the layers below the services.
pub fn status_from_server(e: &ServerError) -> Status {
    let known = match e {
        ServerError::NoLeader => EtcdError::NoLeader,
        ServerError::NotLeader => EtcdError::NotLeader,
        ServerError::NotSupportedForLearner => EtcdError::NotSupportedForLearner,
        ServerError::TooManyRequests => EtcdError::TooManyRequests,
        ServerError::Stopped => EtcdError::Stopped,
        ServerError::Timeout => EtcdError::Timeout,
        ServerError::TimeoutDueToLeaderFail => EtcdError::TimeoutDueToLeaderFail,
        ServerError::DeadlineExceeded => EtcdError::DeadlineExceeded,
        ServerError::LeaderTransferTimedOut => EtcdError::LeaderTransferTimedOut,
        ServerError::BadLeaderTransferee => EtcdError::BadLeaderTransferee,
        ServerError::PeerUrlExist => EtcdError::PeerUrlExist,
        ServerError::TooManyLearners => EtcdError::TooManyLearners,
        ServerError::MemberNotFound => EtcdError::MemberNotFound,
        ServerError::MemberNotLearner => EtcdError::MemberNotLearner,
        ServerError::LearnerNotReady => EtcdError::LearnerNotReady,
        ServerError::MemberNotEnoughStarted => EtcdError::MemberNotEnoughStarted,
        ServerError::Unhealthy => EtcdError::Unhealthy,
        ServerError::NoSpace => EtcdError::NoSpace,
        ServerError::Mvcc(e) => return status_from_mvcc(e),
        ServerError::Auth(e) => return status_from_auth(*e),
        // etcd passes raft's refusal on with its "etcdserver: " prefix.
        ServerError::ConfChangeRefused(why) => {
            return Status::new(Code::FailedPrecondition, format!("etcdserver: {why}"))
        }
        ServerError::ProposalRefused(why) => {
            return Status::new(Code::Internal, format!("raft: {why}"))
        }
        ServerError::Internal(why) => return Status::new(Code::Internal, format!("keel: {why}")),
        ServerError::ShardMoved => {
            return Status::new(Code::Unavailable, "keel: a shard moved; retry".to_string())
        }
        ServerError::Corrupt(_) => EtcdError::Corrupt,
    };
    known.status()
}

/// The wire error for an auth refusal (etcd's `rpctypes` mapping of `auth.Err…`).
pub fn status_from_auth(e: AuthError) -> Status {
    let known = match e {
        AuthError::RootUserNotExist => EtcdError::RootUserNotExist,
        AuthError::RootRoleNotExist => EtcdError::RootRoleNotExist,
        AuthError::UserAlreadyExist => EtcdError::UserAlreadyExist,
        AuthError::UserEmpty => EtcdError::UserEmpty,
        AuthError::UserNotFound => EtcdError::UserNotFound,
        AuthError::RoleAlreadyExist => EtcdError::RoleAlreadyExist,
        AuthError::RoleNotFound => EtcdError::RoleNotFound,
        AuthError::RoleEmpty => EtcdError::RoleEmpty,
        AuthError::RoleNotGranted => EtcdError::RoleNotGranted,
        AuthError::PermissionNotGranted => EtcdError::PermissionNotGranted,
        AuthError::InvalidAuthMgmt => EtcdError::InvalidAuthMgmt,
        AuthError::PermissionNotGiven => EtcdError::PermissionNotGiven,
        AuthError::PermissionDenied => EtcdError::PermissionDenied,
        AuthError::AuthOldRevision => EtcdError::AuthOldRevision,
        AuthError::AuthNotEnabled => EtcdError::AuthNotEnabled,
        AuthError::AuthFailed => EtcdError::AuthFailed,
        AuthError::InvalidAuthToken => EtcdError::InvalidAuthToken,
    };
    known.status()
}

/// etcd's Defragment, Snapshot, Hash and HashKV return the auth store's own error
/// unmapped: gRPC code Unknown with the `auth: …` text.
pub fn status_unmapped_auth(e: AuthError) -> Status {
    Status::new(Code::Unknown, e.text())
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        status_from_server(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mvcc_errors_map_to_etcds_codes_and_strings() {
        let s = status_from_mvcc(&mvcc::Error::Compacted);
        assert_eq!(s.code, Code::OutOfRange);
        assert_eq!(
            s.message,
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = status_from_mvcc(&mvcc::Error::FutureRev);
        assert_eq!(s.code, Code::OutOfRange);
        assert_eq!(
            s.message,
            "etcdserver: mvcc: required revision is a future revision"
        );
        for e in [
            mvcc::Error::KeyNotFound,
            mvcc::Error::DuplicateKey,
            mvcc::Error::TooManyOps,
            mvcc::Error::EmptyKey,
            mvcc::Error::ValueProvided,
            mvcc::Error::LeaseProvided,
        ] {
            let s = status_from_mvcc(&e);
            assert_eq!(s.code, Code::InvalidArgument);
            // The mvcc layer's own string is already etcd's for these.
            assert_eq!(s.message, e.to_string());
        }
    }

    #[test]
    fn corruption_is_etcds_corrupt_and_other_storage_errors_internal() {
        let corrupt = db::Error::Corrupt {
            path: "/data/member/snap/db".into(),
            offset: 8192,
            what: "checksum mismatch".into(),
        };
        for s in [
            status_from_mvcc(&mvcc::Error::Db(corrupt)),
            status_from_mvcc(&mvcc::Error::Corrupt {
                what: "record does not decode".into(),
            }),
        ] {
            assert_eq!(s.code, Code::DataLoss);
            assert_eq!(s.message, "etcdserver: corrupt cluster");
        }
        let s = status_from_mvcc(&mvcc::Error::Db(db::Error::Poisoned));
        assert_eq!(s.code, Code::Internal);
    }

    #[test]
    fn server_errors_are_etcds() {
        assert_eq!(
            EtcdError::NoLeader.wire(),
            (Code::Unavailable, "etcdserver: no leader")
        );
        assert_eq!(
            EtcdError::RequestTooLarge.wire(),
            (Code::InvalidArgument, "etcdserver: request is too large")
        );
        assert_eq!(
            EtcdError::TooManyRequests.wire(),
            (Code::ResourceExhausted, "etcdserver: too many requests")
        );
        assert_eq!(
            EtcdError::LeaseNotFound.wire(),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
    }
}
