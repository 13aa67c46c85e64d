//! The Auth service's calls as the raft log carries them ([`AuthOp`]), applied to the
//! auth state with etcd's permission rules ([`AuthState::apply_op`]), and the state's
//! records in the db's auth tree (etcd's `authpb` messages, one per user and role).
//!
//! Every call goes through raft, reads too (as in etcd 3.4), so each is answered from the
//! state as of its place in the log. Passwords never reach the log: the member that takes
//! the call hashes them (bcrypt) or checks them first.

use super::perms::{Grant, PermType};
use super::state::{AuthError, AuthState, User, ROOT_ROLE};
use super::tokens::{simple_token, TokenEvent};
use super::view::Caller;
use crate::pb::authpb;
use bytes::Bytes;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};

/// One Auth call, as proposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOp {
    Enable,
    Disable,
    /// The password was checked by the proposing member against auth revision
    /// `checked_revision`; `token_prefix` empty means JWT (the proposer signs).
    Authenticate {
        name: String,
        token_prefix: String,
        checked_revision: u64,
    },
    UserAdd {
        name: String,
        password_hash: Vec<u8>,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Vec<u8>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        grant: Grant,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    UserGet {
        name: String,
    },
    UserList,
    RoleGet {
        role: String,
    },
    RoleList,
}

/// What an applied call answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Done,
    /// Authenticate: the user and the auth revision its token carries, and the simple
    /// token (`None` with JWT).
    Authenticated {
        user: String,
        revision: u64,
        token: Option<String>,
    },
    /// UserGet: the user's roles.
    Roles(Vec<String>),
    /// UserList / RoleList.
    Names(Vec<String>),
    /// RoleGet: the role's grants.
    Grants(Vec<Grant>),
}

/// An applied call's effect besides its answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Users, roles or the flags changed: persist and publish a new view.
    pub changed: bool,
    pub tokens: Vec<TokenEvent>,
}

impl AuthOp {
    /// Whether etcd requires role `root` for it (while auth is on).
    fn needs_admin(&self) -> bool {
        !matches!(
            self,
            AuthOp::Authenticate { .. } | AuthOp::UserGet { .. } | AuthOp::RoleGet { .. }
        )
    }
}

impl AuthState {
    /// The caller's admin check (`IsAdminPermitted`, which does not look at the auth
    /// revision): `None` is the member itself.
    fn check_admin(&self, caller: Option<&Caller>) -> Result<(), AuthError> {
        let Some(c) = caller else { return Ok(()) };
        if !self.enabled {
            return Ok(());
        }
        if c.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let user = self.users.get(&c.user).ok_or(AuthError::UserNotFound)?;
        if !user.roles.contains(ROOT_ROLE) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// Applies one call at raft index `index` for `caller` (`None`: the member itself).
    pub fn apply_op(
        &mut self,
        caller: Option<&Caller>,
        op: &AuthOp,
        index: u64,
    ) -> Result<(AuthOutcome, Applied), AuthError> {
        if op.needs_admin() {
            self.check_admin(caller)?;
        }
        let mut applied = Applied {
            changed: true,
            tokens: Vec::new(),
        };
        let outcome = match op {
            AuthOp::Enable => {
                self.enable()?;
                AuthOutcome::Done
            }
            AuthOp::Disable => {
                self.disable();
                applied.tokens.push(TokenEvent::DropAll);
                AuthOutcome::Done
            }
            AuthOp::Authenticate {
                name,
                token_prefix,
                checked_revision,
            } => {
                applied.changed = false;
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
                if user.no_password {
                    return Err(AuthError::AuthFailed);
                }
                if *checked_revision != self.revision {
                    // The password was checked against an older state (it may have
                    // changed since): the proposer checks again.
                    return Err(AuthError::AuthOldRevision);
                }
                let token = (!token_prefix.is_empty()).then(|| simple_token(token_prefix, index));
                if let Some(t) = &token {
                    applied.tokens.push(TokenEvent::Assign {
                        token: t.clone(),
                        user: name.clone(),
                    });
                }
                AuthOutcome::Authenticated {
                    user: name.clone(),
                    revision: self.revision,
                    token,
                }
            }
            AuthOp::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                self.user_add(name, password_hash.clone(), *no_password)?;
                AuthOutcome::Done
            }
            AuthOp::UserDelete { name } => {
                self.user_delete(name)?;
                applied.tokens.push(TokenEvent::DropUser(name.clone()));
                AuthOutcome::Done
            }
            AuthOp::UserChangePassword {
                name,
                password_hash,
            } => {
                self.user_change_password(name, password_hash.clone())?;
                applied.tokens.push(TokenEvent::DropUser(name.clone()));
                AuthOutcome::Done
            }
            AuthOp::UserGrantRole { user, role } => {
                self.user_grant_role(user, role)?;
                AuthOutcome::Done
            }
            AuthOp::UserRevokeRole { user, role } => {
                self.user_revoke_role(user, role)?;
                AuthOutcome::Done
            }
            AuthOp::RoleAdd { name } => {
                self.role_add(name)?;
                AuthOutcome::Done
            }
            AuthOp::RoleDelete { name } => {
                self.role_delete(name)?;
                AuthOutcome::Done
            }
            AuthOp::RoleGrantPermission { role, grant } => {
                self.role_grant_permission(role, grant.clone())?;
                AuthOutcome::Done
            }
            AuthOp::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                self.role_revoke_permission(role, key, range_end)?;
                AuthOutcome::Done
            }
            AuthOp::UserGet { name } => {
                applied.changed = false;
                // A user may read itself; anything else is the admin's.
                if caller.is_none_or(|c| c.user != *name) {
                    self.check_admin(caller)?;
                }
                let user = self.users.get(name).ok_or(AuthError::UserNotFound)?;
                AuthOutcome::Roles(user.roles.iter().cloned().collect())
            }
            AuthOp::RoleGet { role } => {
                applied.changed = false;
                // A user may read the roles it holds.
                let holds = caller.is_some_and(|c| {
                    self.users
                        .get(&c.user)
                        .is_some_and(|u| u.roles.contains(role))
                });
                if !holds {
                    self.check_admin(caller)?;
                }
                let grants = self.roles.get(role).ok_or(AuthError::RoleNotFound)?;
                AuthOutcome::Grants(grants.clone())
            }
            AuthOp::UserList => {
                applied.changed = false;
                AuthOutcome::Names(self.users.keys().cloned().collect())
            }
            AuthOp::RoleList => {
                applied.changed = false;
                AuthOutcome::Names(self.roles.keys().cloned().collect())
            }
        };
        Ok((outcome, applied))
    }
}

/// Keys of the db's auth tree.
pub const KEY_ENABLED: &[u8] = b"enabled";
pub const KEY_REVISION: &[u8] = b"revision";
pub const USER_PREFIX: &[u8] = b"user/";
pub const ROLE_PREFIX: &[u8] = b"role/";

fn perm_type(p: PermType) -> i32 {
    match p {
        PermType::Read => authpb::permission::Type::Read as i32,
        PermType::Write => authpb::permission::Type::Write as i32,
        PermType::ReadWrite => authpb::permission::Type::Readwrite as i32,
    }
}

pub fn perm_type_from(t: i32) -> Option<PermType> {
    match authpb::permission::Type::try_from(t).ok()? {
        authpb::permission::Type::Read => Some(PermType::Read),
        authpb::permission::Type::Write => Some(PermType::Write),
        authpb::permission::Type::Readwrite => Some(PermType::ReadWrite),
    }
}

/// A grant as etcd's message.
pub fn pb_permission(g: &Grant) -> authpb::Permission {
    authpb::Permission {
        perm_type: perm_type(g.perm),
        key: Bytes::copy_from_slice(&g.key),
        range_end: Bytes::copy_from_slice(&g.range_end),
    }
}

impl AuthState {
    /// Every record of the auth tree for this state, sorted by key.
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = vec![
            (KEY_ENABLED.to_vec(), vec![self.enabled as u8]),
            (KEY_REVISION.to_vec(), self.revision.to_be_bytes().to_vec()),
        ];
        for (name, u) in &self.users {
            let record = authpb::User {
                name: Bytes::copy_from_slice(name.as_bytes()),
                password: Bytes::copy_from_slice(&u.password_hash),
                roles: u.roles.iter().cloned().collect(),
                options: Some(authpb::UserAddOptions {
                    no_password: u.no_password,
                }),
            };
            out.push((
                [USER_PREFIX, name.as_bytes()].concat(),
                record.encode_to_vec(),
            ));
        }
        for (name, grants) in &self.roles {
            let record = authpb::Role {
                name: Bytes::copy_from_slice(name.as_bytes()),
                key_permission: grants.iter().map(pb_permission).collect(),
            };
            out.push((
                [ROLE_PREFIX, name.as_bytes()].concat(),
                record.encode_to_vec(),
            ));
        }
        out.sort();
        out
    }

    /// The state the records of an auth tree hold (an empty tree: auth never used).
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<AuthState, String> {
        let mut s = AuthState::default();
        let mut users = BTreeMap::new();
        let mut roles = BTreeMap::new();
        for (key, value) in records {
            if key == KEY_ENABLED {
                s.enabled = value == [1];
            } else if key == KEY_REVISION {
                let bytes: [u8; 8] = value
                    .try_into()
                    .map_err(|_| "auth revision record is not 8 bytes".to_string())?;
                s.revision = u64::from_be_bytes(bytes);
            } else if let Some(name) = key.strip_prefix(USER_PREFIX) {
                let u = authpb::User::decode(value).map_err(|e| format!("auth user: {e}"))?;
                let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
                users.insert(
                    name,
                    User {
                        password_hash: u.password.to_vec(),
                        no_password: u.options.is_some_and(|o| o.no_password),
                        roles: u.roles.into_iter().collect::<BTreeSet<_>>(),
                    },
                );
            } else if let Some(name) = key.strip_prefix(ROLE_PREFIX) {
                let r = authpb::Role::decode(value).map_err(|e| format!("auth role: {e}"))?;
                let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
                let mut grants = Vec::new();
                for p in r.key_permission {
                    let perm = perm_type_from(p.perm_type)
                        .ok_or_else(|| format!("auth role {name}: bad permission type"))?;
                    grants.push(Grant {
                        perm,
                        key: p.key.to_vec(),
                        range_end: p.range_end.to_vec(),
                    });
                }
                roles.insert(name, grants);
            } else {
                return Err(format!(
                    "unknown auth record {:?}",
                    String::from_utf8_lossy(key)
                ));
            }
        }
        s.users = users;
        s.roles = roles;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::state::{grant, ROOT_USER};

    fn root() -> Caller {
        Caller {
            user: ROOT_USER.into(),
            revision: u64::MAX,
        }
    }

    fn enabled() -> AuthState {
        let mut s = AuthState::default();
        for op in [
            AuthOp::UserAdd {
                name: ROOT_USER.into(),
                password_hash: b"$2a$h".to_vec(),
                no_password: false,
            },
            AuthOp::UserGrantRole {
                user: ROOT_USER.into(),
                role: ROOT_ROLE.into(),
            },
            AuthOp::UserAdd {
                name: "alice".into(),
                password_hash: b"$2a$a".to_vec(),
                no_password: false,
            },
            AuthOp::RoleAdd { name: "r".into() },
            AuthOp::RoleGrantPermission {
                role: "r".into(),
                grant: grant(PermType::Read, b"a", b"\0"),
            },
            AuthOp::UserGrantRole {
                user: "alice".into(),
                role: "r".into(),
            },
            AuthOp::Enable,
        ] {
            s.apply_op(None, &op, 1).unwrap();
        }
        s
    }

    #[test]
    fn management_is_the_admins_but_a_user_reads_itself_and_its_roles() {
        let mut s = enabled();
        let alice = Caller {
            user: "alice".into(),
            revision: s.revision,
        };
        let add = AuthOp::RoleAdd { name: "x".into() };
        assert_eq!(
            s.apply_op(Some(&alice), &add, 2).unwrap_err(),
            AuthError::PermissionDenied
        );
        assert_eq!(
            s.apply_op(Some(&Caller::anonymous()), &add, 2).unwrap_err(),
            AuthError::UserEmpty
        );
        let me = AuthOp::UserGet {
            name: "alice".into(),
        };
        assert_eq!(
            s.apply_op(Some(&alice), &me, 2).unwrap().0,
            AuthOutcome::Roles(vec!["r".into()])
        );
        let other = AuthOp::UserGet {
            name: ROOT_USER.into(),
        };
        assert_eq!(
            s.apply_op(Some(&alice), &other, 2).unwrap_err(),
            AuthError::PermissionDenied
        );
        let my_role = AuthOp::RoleGet { role: "r".into() };
        assert!(s.apply_op(Some(&alice), &my_role, 2).is_ok());
        assert!(s.apply_op(Some(&root()), &add, 2).is_ok());
        // Management does not look at the caller's auth revision (etcd's admin check).
        let old = Caller {
            user: ROOT_USER.into(),
            revision: 1,
        };
        assert!(s.apply_op(Some(&old), &AuthOp::UserList, 3).is_ok());
    }

    #[test]
    fn authenticate_assigns_a_token_and_password_changes_drop_them() {
        let mut s = enabled();
        let auth = AuthOp::Authenticate {
            name: "alice".into(),
            token_prefix: "abc".into(),
            checked_revision: s.revision,
        };
        let (out, applied) = s.apply_op(None, &auth, 9).unwrap();
        assert_eq!(
            out,
            AuthOutcome::Authenticated {
                user: "alice".into(),
                revision: s.revision,
                token: Some("abc.9".into())
            }
        );
        assert!(!applied.changed);
        let change = AuthOp::UserChangePassword {
            name: "alice".into(),
            password_hash: b"new".to_vec(),
        };
        let (_, applied) = s.apply_op(Some(&root()), &change, 10).unwrap();
        assert_eq!(applied.tokens, vec![TokenEvent::DropUser("alice".into())]);
        // The password was checked before the change: the proposer must check again.
        assert_eq!(
            s.apply_op(None, &auth, 11).unwrap_err(),
            AuthError::AuthOldRevision
        );
        let unknown = AuthOp::Authenticate {
            name: "mallory".into(),
            token_prefix: "abc".into(),
            checked_revision: s.revision,
        };
        assert_eq!(
            s.apply_op(None, &unknown, 12).unwrap_err(),
            AuthError::AuthFailed
        );
        s.apply_op(Some(&root()), &AuthOp::Disable, 13).unwrap();
        assert_eq!(
            s.apply_op(None, &unknown, 14).unwrap_err(),
            AuthError::AuthNotEnabled
        );
    }

    #[test]
    fn records_round_trip() {
        let s = enabled();
        let records = s.records();
        let back =
            AuthState::from_records(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
                .unwrap();
        assert_eq!(back, s);
        assert_eq!(AuthState::from_records([]).unwrap(), AuthState::default());
        assert!(AuthState::from_records([(&b"bogus"[..], &b""[..])]).is_err());
    }
}
