//! What every check reads: an immutable picture of the auth state (enabled flag, revision,
//! each user's compiled key sets and admin bit), rebuilt by the raft core after each auth
//! change and shared with every core as an `Arc`, and the checks etcd makes with it.
//!
//! etcd's order (`auth/store.go` `isOpPermitted`, `IsAdminPermitted`): auth off allows
//! everything; a request without a user is "user name is empty"; one whose auth revision
//! is older than the store's is "revision of auth store is old"; an unknown user or a key
//! not covered is "permission denied"; role `root` passes every key check.
//!
//! Requests are walked as etcd 3.5's latest patch release walks them (after the 2026
//! fixes): a Txn's compares, every op of both branches and nested txns at any depth; a
//! Put's prev_kv needs READ on its key and its lease WRITE on every key already attached;
//! a DeleteRange's prev_kv needs READ on its range.

use super::perms::UserPerms;
use super::state::{AuthError, AuthState, ROOT_ROLE};
use crate::mvcc::{Op, RequestOp, TxnRequest};
use std::collections::HashMap;

/// Who makes a request: the user its token or certificate names and the auth revision
/// the token carries. A client without token or certificate is `Caller::anonymous()`
/// (no user, revision 0), which auth refuses once enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub revision: u64,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller::default()
    }
}

/// One user as the checks need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewUser {
    pub perms: UserPerms,
    /// Holds role `root`.
    pub admin: bool,
    /// bcrypt hash (empty for a `no_password` user), for Authenticate's check.
    pub password_hash: Vec<u8>,
    pub no_password: bool,
}

/// The auth state as the checks see it (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthView {
    pub enabled: bool,
    pub revision: u64,
    users: HashMap<String, ViewUser>,
}

impl AuthState {
    /// The view of this state (each user's roles compiled into key sets).
    pub fn view(&self) -> AuthView {
        let users = self
            .users
            .iter()
            .map(|(name, u)| {
                let user = ViewUser {
                    perms: self.user_perms(name),
                    admin: u.roles.contains(ROOT_ROLE),
                    password_hash: u.password_hash.clone(),
                    no_password: u.no_password,
                };
                (name.clone(), user)
            })
            .collect();
        AuthView {
            enabled: self.enabled,
            revision: self.revision,
            users,
        }
    }
}

impl AuthView {
    pub fn user(&self, name: &str) -> Option<&ViewUser> {
        self.users.get(name)
    }

    /// The caller's user after etcd's common checks; `None` while auth is off (then
    /// everything is allowed).
    pub fn subject(&self, caller: &Caller) -> Result<Option<&ViewUser>, AuthError> {
        if !self.enabled {
            return Ok(None);
        }
        if caller.user.is_empty() || caller.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if caller.revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        self.users
            .get(&caller.user)
            .map(Some)
            .ok_or(AuthError::PermissionDenied)
    }

    /// etcd's `requireAuth`: while auth is on, the request must name a user (whether it
    /// exists is not checked here). LeaseGrant, Status, MemberList, Alarm GET.
    pub fn check_user(&self, caller: &Caller) -> Result<(), AuthError> {
        if self.enabled && caller.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        Ok(())
    }

    /// etcd's `IsAdminPermitted`: role `root` (the auth revision is not checked).
    pub fn check_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if caller.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        match self.users.get(&caller.user) {
            None => Err(AuthError::UserNotFound),
            Some(u) => allow(u.admin),
        }
    }

    /// Whether the caller holds role `root` (while auth is on; off: everyone does).
    pub fn is_admin(&self, caller: &Caller) -> bool {
        self.check_admin(caller).is_ok()
    }

    /// READ on `[key, range_end)` (etcd's range forms: empty end = one key, `"\0"` = to
    /// the end).
    pub fn check_read(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        self.check_keys(caller, |p| p.can_read(key, range_end))
    }

    /// WRITE on `[key, range_end)`.
    pub fn check_write(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        self.check_keys(caller, |p| p.can_write(key, range_end))
    }

    fn check_keys(
        &self,
        caller: &Caller,
        allowed: impl FnOnce(&UserPerms) -> bool,
    ) -> Result<(), AuthError> {
        match self.subject(caller)? {
            Some(u) => allow(u.admin || allowed(&u.perms)),
            None => Ok(()),
        }
    }

    /// A read-only Txn served without raft: READ on every compare and range, at any depth.
    pub fn check_txn(&self, caller: &Caller, t: &TxnRequest) -> Result<(), AuthError> {
        match self.subject(caller)? {
            Some(u) if !u.admin => Walk {
                u,
                lease_keys: &|_| Vec::new(),
            }
            .txn(t),
            _ => Ok(()),
        }
    }

    /// Everything a KV request (or Compact, lease grant / revoke) needs, walked as the
    /// module doc says. `lease_keys(id)` lists the keys attached to a lease (the raft core
    /// knows them; a core checking a read-only request never needs them).
    pub fn check_op(
        &self,
        caller: &Caller,
        op: &Op,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<(), AuthError> {
        // Checked before proposing (etcd's API layer), by admin or by user.
        if matches!(op, Op::Compaction(_) | Op::LeaseGrant(_)) {
            return Ok(());
        }
        let Some(u) = self.subject(caller)? else {
            return Ok(());
        };
        if u.admin {
            return Ok(());
        }
        let walk = Walk { u, lease_keys };
        match op {
            Op::Range(r) => walk.read(&r.key, &r.range_end),
            Op::Put(p) => walk.put(&p.key, p.prev_kv, p.lease),
            Op::DeleteRange(d) => walk.delete(&d.key, &d.range_end, d.prev_kv),
            Op::Txn(t) => walk.txn(t),
            Op::Compaction(_) | Op::LeaseGrant(_) => Ok(()),
            // Revoking a lease needs WRITE on its keys.
            Op::LeaseRevoke(r) => walk.lease(r.id),
            // Checkpoints are the leader's own entries, never a client's.
            Op::LeaseCheckpoint(_) => Err(AuthError::PermissionDenied),
        }
    }
}

fn allow(ok: bool) -> Result<(), AuthError> {
    if ok {
        Ok(())
    } else {
        Err(AuthError::PermissionDenied)
    }
}

/// A non-admin user's request walk.
struct Walk<'a> {
    u: &'a ViewUser,
    lease_keys: &'a dyn Fn(i64) -> Vec<Vec<u8>>,
}

impl Walk<'_> {
    fn read(&self, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        allow(self.u.perms.can_read(key, range_end))
    }

    fn write(&self, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        allow(self.u.perms.can_write(key, range_end))
    }

    /// WRITE on every key attached to `lease` (a user who could not revoke the lease may
    /// not attach to it, nor revoke it).
    fn lease(&self, lease: i64) -> Result<(), AuthError> {
        if lease == 0 {
            return Ok(());
        }
        for key in (self.lease_keys)(lease) {
            self.write(&key, b"")?;
        }
        Ok(())
    }

    fn put(&self, key: &[u8], prev_kv: bool, lease: i64) -> Result<(), AuthError> {
        self.write(key, b"")?;
        self.lease(lease)?;
        if prev_kv {
            self.read(key, b"")?;
        }
        Ok(())
    }

    fn delete(&self, key: &[u8], range_end: &[u8], prev_kv: bool) -> Result<(), AuthError> {
        self.write(key, range_end)?;
        if prev_kv {
            self.read(key, range_end)?;
        }
        Ok(())
    }

    fn txn(&self, t: &TxnRequest) -> Result<(), AuthError> {
        for c in &t.compare {
            self.read(&c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                RequestOp::RequestRange(r) => self.read(&r.key, &r.range_end)?,
                RequestOp::RequestPut(p) => self.put(&p.key, p.prev_kv, p.lease)?,
                RequestOp::RequestDeleteRange(d) => self.delete(&d.key, &d.range_end, d.prev_kv)?,
                RequestOp::RequestTxn(inner) => self.txn(inner)?,
                RequestOp::Empty => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::perms::PermType;
    use crate::auth::state::{grant, ROOT_USER};
    use crate::mvcc::{Compare, DeleteRangeRequest, LeaseRevokeRequest, PutRequest, RangeRequest};

    /// root (admin), alice with READWRITE on [a, b) and READ on "r", bob without roles.
    fn state() -> AuthState {
        let mut s = AuthState::default();
        s.user_add(ROOT_USER, b"h".to_vec(), false).unwrap();
        s.user_grant_role(ROOT_USER, ROOT_ROLE).unwrap();
        s.user_add("alice", b"h".to_vec(), false).unwrap();
        s.user_add("bob", b"h".to_vec(), false).unwrap();
        s.role_add("rw").unwrap();
        s.role_grant_permission("rw", grant(PermType::ReadWrite, b"a", b"b"))
            .unwrap();
        s.role_grant_permission("rw", grant(PermType::Read, b"r", b""))
            .unwrap();
        s.user_grant_role("alice", "rw").unwrap();
        s.enable().unwrap();
        s
    }

    fn caller(v: &AuthView, user: &str) -> Caller {
        Caller {
            user: user.into(),
            revision: v.revision,
        }
    }

    fn no_leases(_: i64) -> Vec<Vec<u8>> {
        Vec::new()
    }

    fn put(key: &[u8], prev_kv: bool, lease: i64) -> PutRequest {
        PutRequest {
            key: key.to_vec(),
            prev_kv,
            lease,
            ..Default::default()
        }
    }

    fn range(key: &[u8], end: &[u8]) -> RangeRequest {
        RangeRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn the_common_checks_come_in_etcds_order() {
        let v = state().view();
        let op = Op::Range(range(b"a", b""));
        assert_eq!(
            v.check_op(&Caller::anonymous(), &op, &no_leases),
            Err(AuthError::UserEmpty)
        );
        let old = Caller {
            user: "alice".into(),
            revision: v.revision - 1,
        };
        assert_eq!(
            v.check_op(&old, &op, &no_leases),
            Err(AuthError::AuthOldRevision)
        );
        assert_eq!(
            v.check_op(&caller(&v, "nobody"), &op, &no_leases),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(v.check_op(&caller(&v, "alice"), &op, &no_leases), Ok(()));
        // Auth off: anything goes, even for nobody.
        let mut s = state();
        s.disable();
        let off = s.view();
        assert_eq!(off.check_op(&Caller::anonymous(), &op, &no_leases), Ok(()));
    }

    #[test]
    fn root_passes_every_check_and_others_need_grants() {
        let v = state().view();
        let root = caller(&v, ROOT_USER);
        let bob = caller(&v, "bob");
        for op in [
            Op::Put(put(b"zz", true, 0)),
            Op::DeleteRange(DeleteRangeRequest {
                key: b"\0".to_vec(),
                range_end: b"\0".to_vec(),
                prev_kv: true,
            }),
        ] {
            assert_eq!(v.check_op(&root, &op, &no_leases), Ok(()));
            assert_eq!(
                v.check_op(&bob, &op, &no_leases),
                Err(AuthError::PermissionDenied)
            );
        }
        assert_eq!(v.check_admin(&root), Ok(()));
        assert_eq!(v.check_admin(&bob), Err(AuthError::PermissionDenied));
        assert_eq!(
            v.check_admin(&caller(&v, "nobody")),
            Err(AuthError::UserNotFound)
        );
        assert_eq!(
            v.check_admin(&Caller::anonymous()),
            Err(AuthError::UserEmpty)
        );
        // Admin checks do not look at the revision.
        let old_root = Caller {
            user: ROOT_USER.into(),
            revision: 1,
        };
        assert_eq!(v.check_admin(&old_root), Ok(()));
        assert_eq!(v.check_user(&bob), Ok(()));
        assert_eq!(
            v.check_user(&Caller::anonymous()),
            Err(AuthError::UserEmpty)
        );
    }

    #[test]
    fn prev_kv_needs_read_and_a_lease_needs_write_on_its_keys() {
        let mut s = state();
        s.role_add("w").unwrap();
        s.role_grant_permission("w", grant(PermType::Write, b"w", b""))
            .unwrap();
        s.user_grant_role("bob", "w").unwrap();
        let v = s.view();
        let bob = caller(&v, "bob");
        assert_eq!(
            v.check_op(&bob, &Op::Put(put(b"w", false, 0)), &no_leases),
            Ok(())
        );
        assert_eq!(
            v.check_op(&bob, &Op::Put(put(b"w", true, 0)), &no_leases),
            Err(AuthError::PermissionDenied),
            "prev_kv reads the key"
        );
        let lease_on_a = |id: i64| if id == 7 { vec![b"a".to_vec()] } else { vec![] };
        assert_eq!(
            v.check_op(&bob, &Op::Put(put(b"w", false, 7)), &lease_on_a),
            Err(AuthError::PermissionDenied),
            "lease 7 holds a key bob cannot write"
        );
        assert_eq!(
            v.check_op(&bob, &Op::Put(put(b"w", false, 8)), &lease_on_a),
            Ok(())
        );
        assert_eq!(
            v.check_op(
                &bob,
                &Op::LeaseRevoke(LeaseRevokeRequest { id: 7 }),
                &lease_on_a
            ),
            Err(AuthError::PermissionDenied)
        );
        let alice = caller(&v, "alice");
        assert_eq!(
            v.check_op(
                &alice,
                &Op::LeaseRevoke(LeaseRevokeRequest { id: 7 }),
                &lease_on_a
            ),
            Ok(())
        );
    }

    #[test]
    fn txns_are_checked_at_every_depth() {
        let v = state().view();
        let alice = caller(&v, "alice");
        let nest = |op: RequestOp, depth: usize| {
            let mut t = TxnRequest {
                success: vec![op],
                ..Default::default()
            };
            for _ in 0..depth {
                t = TxnRequest {
                    failure: vec![RequestOp::RequestTxn(t)],
                    ..Default::default()
                };
            }
            Op::Txn(t)
        };
        for depth in 0..4 {
            let allowed = nest(RequestOp::RequestPut(put(b"a1", true, 0)), depth);
            assert_eq!(v.check_op(&alice, &allowed, &no_leases), Ok(()));
            for denied in [
                RequestOp::RequestPut(put(b"r", false, 0)),
                RequestOp::RequestPut(put(b"zz", false, 0)),
                RequestOp::RequestRange(range(b"a", b"c")),
                RequestOp::RequestRange(range(b"a", b"\0")),
                RequestOp::RequestDeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"c".to_vec(),
                    prev_kv: false,
                }),
            ] {
                let op = nest(denied.clone(), depth);
                assert_eq!(
                    v.check_op(&alice, &op, &no_leases),
                    Err(AuthError::PermissionDenied),
                    "{denied:?} at depth {depth}"
                );
            }
        }
        let compare_outside = Op::Txn(TxnRequest {
            compare: vec![Compare {
                key: b"zz".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            v.check_op(&alice, &compare_outside, &no_leases),
            Err(AuthError::PermissionDenied)
        );
    }
}
