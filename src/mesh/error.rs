//! `ServerError`: why a request to the raft core, or to another core's shard, failed, in
//! etcd's terms and without its wire form.
//!
//! The layers below the services (the raft core, the nodes, the shards) return these;
//! `api::errors` is the one place that turns each into etcd's gRPC code and exact string.
//! Between members (a follower's forwarded request, answered by the leader) they travel
//! in Keel's own form, `peer_code` / `from_peer_code`, never as gRPC statuses.

use crate::mvcc;
use std::fmt;

#[derive(Debug)]
pub enum ServerError {
    /// etcd `ErrNoLeader`.
    NoLeader,
    /// etcd `ErrNotLeader` (MoveLeader asked of a follower).
    NotLeader,
    /// etcd `ErrGRPCNotSupportedForLearner`.
    NotSupportedForLearner,
    /// etcd `ErrTooManyRequests`: the mailbox or the in-flight bound is full.
    TooManyRequests,
    /// etcd `ErrStopped`.
    Stopped,
    /// etcd `ErrTimeout`.
    Timeout,
    /// etcd `ErrTimeoutDueToLeaderFail`.
    TimeoutDueToLeaderFail,
    /// A request whose deadline passed while it waited (grpc-go's "context deadline
    /// exceeded", as etcd answers it).
    DeadlineExceeded,
    /// A MoveLeader whose transferee did not take the lead in time.
    LeaderTransferTimedOut,
    /// etcd `ErrBadLeaderTransferee`.
    BadLeaderTransferee,
    /// etcd `membership.ErrPeerURLexists`.
    PeerUrlExist,
    /// etcd `membership.ErrTooManyLearners`.
    TooManyLearners,
    /// etcd `membership.ErrIDNotFound`.
    MemberNotFound,
    /// etcd `membership.ErrMemberNotLearner`.
    MemberNotLearner,
    /// etcd `ErrLearnerNotReady`.
    LearnerNotReady,
    /// etcd `ErrNotEnoughStartedMembers`.
    MemberNotEnoughStarted,
    /// etcd `ErrUnhealthy`.
    Unhealthy,
    /// etcd `ErrNoSpace`: the NOSPACE alarm is active or the db reached its quota.
    NoSpace,
    /// The store refused or failed the operation.
    Mvcc(mvcc::Error),
    /// Auth refused the request (or the Auth call failed).
    Auth(crate::auth::AuthError),
    /// raft refused a membership change (its reason).
    ConfChangeRefused(String),
    /// raft refused a proposal (its reason).
    ProposalRefused(String),
    /// Storage that failed its check (a page or record damaged after boot), as text: what
    /// a `Mvcc` corruption becomes when copied or sent to a peer.
    Corrupt(String),
    /// A broken exchange between cores or members: a Keel bug or a peer of another
    /// version. The text says which.
    Internal(String),
    /// A read part sent to a shard whose key range a rebalance step changed since the
    /// sender routed it: the sender routes it again (never a client's answer).
    ShardMoved,
}

/// One error for many waiters (a ReadIndex batch): storage errors, which wrap I/O errors
/// and cannot be cloned, are copied as their text.
impl Clone for ServerError {
    fn clone(&self) -> ServerError {
        use ServerError::*;
        match self {
            NoLeader => NoLeader,
            NotLeader => NotLeader,
            NotSupportedForLearner => NotSupportedForLearner,
            TooManyRequests => TooManyRequests,
            Stopped => Stopped,
            Timeout => Timeout,
            TimeoutDueToLeaderFail => TimeoutDueToLeaderFail,
            DeadlineExceeded => DeadlineExceeded,
            LeaderTransferTimedOut => LeaderTransferTimedOut,
            BadLeaderTransferee => BadLeaderTransferee,
            PeerUrlExist => PeerUrlExist,
            TooManyLearners => TooManyLearners,
            MemberNotFound => MemberNotFound,
            MemberNotLearner => MemberNotLearner,
            LearnerNotReady => LearnerNotReady,
            MemberNotEnoughStarted => MemberNotEnoughStarted,
            Unhealthy => Unhealthy,
            NoSpace => NoSpace,
            ShardMoved => ShardMoved,
            Auth(e) => Auth(*e),
            Mvcc(e) if e.etcd_message().is_some() => Mvcc(copy_operating(e)),
            Mvcc(e) if is_corrupt(e) => Corrupt(e.to_string()),
            Mvcc(e) => Internal(e.to_string()),
            Corrupt(what) => Corrupt(what.clone()),
            ConfChangeRefused(why) => ConfChangeRefused(why.clone()),
            ProposalRefused(why) => ProposalRefused(why.clone()),
            Internal(why) => Internal(why.clone()),
        }
    }
}

impl From<mvcc::db::Error> for ServerError {
    fn from(e: mvcc::db::Error) -> ServerError {
        ServerError::Mvcc(mvcc::Error::Db(e))
    }
}

impl From<mvcc::Error> for ServerError {
    fn from(e: mvcc::Error) -> ServerError {
        ServerError::Mvcc(e)
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Mvcc(e) => write!(f, "{e}"),
            ServerError::Auth(e) => f.write_str(e.text()),
            ServerError::ConfChangeRefused(why) => write!(f, "membership change refused: {why}"),
            ServerError::ProposalRefused(why) => write!(f, "raft: {why}"),
            ServerError::Internal(why) => write!(f, "keel: {why}"),
            ServerError::Corrupt(what) => write!(f, "corrupt: {what}"),
            other => write!(f, "{other:?}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// The peer codes of the mvcc operating errors start here (below: `ServerError`'s own).
const MVCC_CODE_BASE: u32 = 100;
/// The peer codes of auth errors start here.
const AUTH_CODE_BASE: u32 = 200;

/// A storage error that is damage (a page or record failing its check), not I/O.
fn is_corrupt(e: &mvcc::Error) -> bool {
    matches!(
        e,
        mvcc::Error::Corrupt { .. } | mvcc::Error::Db(mvcc::db::Error::Corrupt { .. })
    )
}

impl ServerError {
    /// Damaged storage found by a read: etcd's "corrupt cluster".
    pub fn is_corruption(&self) -> bool {
        match self {
            ServerError::Corrupt(_) => true,
            ServerError::Mvcc(e) => is_corrupt(e),
            _ => false,
        }
    }

    /// Keel's peer form: a non-zero code and a detail text. Stable across versions: codes
    /// are only ever added.
    pub fn peer_code(&self) -> (u32, String) {
        use ServerError::*;
        let code = match self {
            NoLeader => 1,
            NotLeader => 2,
            NotSupportedForLearner => 3,
            TooManyRequests => 4,
            Stopped => 5,
            Timeout => 6,
            TimeoutDueToLeaderFail => 7,
            DeadlineExceeded => 8,
            LeaderTransferTimedOut => 9,
            BadLeaderTransferee => 10,
            PeerUrlExist => 11,
            TooManyLearners => 12,
            MemberNotFound => 13,
            MemberNotLearner => 14,
            LearnerNotReady => 15,
            MemberNotEnoughStarted => 16,
            Unhealthy => 17,
            NoSpace => 22,
            ShardMoved => 23,
            ConfChangeRefused(why) => return (18, why.clone()),
            ProposalRefused(why) => return (19, why.clone()),
            Internal(why) => return (20, why.clone()),
            Corrupt(what) => return (21, what.clone()),
            Mvcc(e) if is_corrupt(e) => return (21, e.to_string()),
            Auth(e) => {
                let i = crate::auth::AuthError::ALL
                    .iter()
                    .position(|k| k == e)
                    .expect("every AuthError is listed");
                AUTH_CODE_BASE + 1 + i as u32
            }
            Mvcc(e) => match mvcc_peer_code(e) {
                Some(c) => MVCC_CODE_BASE + c,
                None => return (20, e.to_string()),
            },
        };
        (code, String::new())
    }

    /// The error a peer sent as `(code, detail)`; an unknown code is `Internal`.
    pub fn from_peer_code(code: u32, detail: String) -> ServerError {
        use ServerError::*;
        match code {
            1 => NoLeader,
            2 => NotLeader,
            3 => NotSupportedForLearner,
            4 => TooManyRequests,
            5 => Stopped,
            6 => Timeout,
            7 => TimeoutDueToLeaderFail,
            8 => DeadlineExceeded,
            9 => LeaderTransferTimedOut,
            10 => BadLeaderTransferee,
            11 => PeerUrlExist,
            12 => TooManyLearners,
            13 => MemberNotFound,
            14 => MemberNotLearner,
            15 => LearnerNotReady,
            16 => MemberNotEnoughStarted,
            17 => Unhealthy,
            18 => ConfChangeRefused(detail),
            19 => ProposalRefused(detail),
            20 => Internal(detail),
            21 => Corrupt(detail),
            22 => NoSpace,
            23 => ShardMoved,
            c if c > AUTH_CODE_BASE => {
                match crate::auth::AuthError::ALL.get((c - AUTH_CODE_BASE - 1) as usize) {
                    Some(e) => Auth(*e),
                    None => Internal(format!("unknown error code {code} from a peer: {detail}")),
                }
            }
            c if c > MVCC_CODE_BASE => match mvcc_from_peer_code(c - MVCC_CODE_BASE) {
                Some(e) => Mvcc(e),
                None => Internal(format!("unknown error code {code} from a peer: {detail}")),
            },
            _ => Internal(format!("unknown error code {code} from a peer: {detail}")),
        }
    }
}

const MVCC_OPERATING: [mvcc::Error; 10] = [
    mvcc::Error::Compacted,
    mvcc::Error::FutureRev,
    mvcc::Error::KeyNotFound,
    mvcc::Error::DuplicateKey,
    mvcc::Error::TooManyOps,
    mvcc::Error::EmptyKey,
    mvcc::Error::ValueProvided,
    mvcc::Error::LeaseProvided,
    mvcc::Error::LeaseNotFound,
    mvcc::Error::LeaseExists,
];

fn mvcc_peer_code(e: &mvcc::Error) -> Option<u32> {
    MVCC_OPERATING
        .iter()
        .position(|k| k == e)
        .map(|i| i as u32 + 1)
}

fn mvcc_from_peer_code(c: u32) -> Option<mvcc::Error> {
    let i = c.checked_sub(1)? as usize;
    MVCC_OPERATING.get(i).map(copy_operating)
}

/// The operating errors carry no data; `mvcc::Error` is not `Clone` (storage errors wrap
/// I/O errors), so they are rebuilt by kind.
fn copy_operating(e: &mvcc::Error) -> mvcc::Error {
    use mvcc::Error::*;
    match e {
        Compacted => Compacted,
        FutureRev => FutureRev,
        KeyNotFound => KeyNotFound,
        DuplicateKey => DuplicateKey,
        TooManyOps => TooManyOps,
        EmptyKey => EmptyKey,
        ValueProvided => ValueProvided,
        LeaseProvided => LeaseProvided,
        LeaseNotFound => LeaseNotFound,
        LeaseExists => LeaseExists,
        other => unreachable!("not an operating error: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_round_trips_between_members() {
        let all = [
            ServerError::NoLeader,
            ServerError::NotLeader,
            ServerError::NotSupportedForLearner,
            ServerError::TooManyRequests,
            ServerError::Stopped,
            ServerError::Timeout,
            ServerError::TimeoutDueToLeaderFail,
            ServerError::DeadlineExceeded,
            ServerError::LeaderTransferTimedOut,
            ServerError::BadLeaderTransferee,
            ServerError::PeerUrlExist,
            ServerError::TooManyLearners,
            ServerError::MemberNotFound,
            ServerError::MemberNotLearner,
            ServerError::LearnerNotReady,
            ServerError::MemberNotEnoughStarted,
            ServerError::Unhealthy,
            ServerError::NoSpace,
            ServerError::ConfChangeRefused("why".into()),
            ServerError::ProposalRefused("because".into()),
            ServerError::Internal("bug".into()),
            ServerError::Corrupt("page 7".into()),
            ServerError::Auth(crate::auth::AuthError::PermissionDenied),
            ServerError::Auth(crate::auth::AuthError::InvalidAuthToken),
        ];
        for e in all {
            let (code, detail) = e.peer_code();
            assert_ne!(code, 0, "0 means success on the peer wire");
            let back = ServerError::from_peer_code(code, detail);
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        for k in &MVCC_OPERATING {
            let e = ServerError::Mvcc(copy_operating(k));
            let (code, detail) = e.peer_code();
            match ServerError::from_peer_code(code, detail) {
                ServerError::Mvcc(back) => assert!(&back == k),
                other => panic!("{k} came back as {other:?}"),
            }
        }
        assert!(matches!(
            ServerError::from_peer_code(999, "x".into()),
            ServerError::Internal(_)
        ));
    }
}
