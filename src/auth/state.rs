//! The auth state machine: users, roles, the enabled flag and the auth revision, changed by
//! the management calls with etcd's rules and errors (`auth/store.go`). Pure: the caller
//! hashes passwords before proposing (as etcd 3.5 does), persists the state and applies
//! the same calls in the same order on every member.

use super::perms::{check_grant, Grant, GrantError, PermType, UserPerms};
use std::collections::{BTreeMap, BTreeSet};

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// etcd's auth errors (the `auth:` strings; the wire maps them to `etcdserver:` ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    RootUserNotExist,
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    RoleNotGranted,
    PermissionNotGranted,
    InvalidAuthMgmt,
    /// A grant with an empty key or an empty range.
    PermissionNotGiven,
    /// The user may not do what it asked (or is unknown).
    PermissionDenied,
    /// The request carries an auth revision older than the store's.
    AuthOldRevision,
    /// Authenticate while auth is off.
    AuthNotEnabled,
    /// Wrong user name or password (or a user without one).
    AuthFailed,
    /// A token this member does not know (or no longer).
    InvalidAuthToken,
}

impl AuthError {
    /// Every kind, in a fixed order (the peer wire numbers them by it: only append).
    pub const ALL: [AuthError; 17] = [
        AuthError::RootUserNotExist,
        AuthError::RootRoleNotExist,
        AuthError::UserAlreadyExist,
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::RoleAlreadyExist,
        AuthError::RoleNotFound,
        AuthError::RoleEmpty,
        AuthError::RoleNotGranted,
        AuthError::PermissionNotGranted,
        AuthError::InvalidAuthMgmt,
        AuthError::PermissionNotGiven,
        AuthError::PermissionDenied,
        AuthError::AuthOldRevision,
        AuthError::AuthNotEnabled,
        AuthError::AuthFailed,
        AuthError::InvalidAuthToken,
    ];

    /// etcd's text for it (`auth.Err…`).
    pub fn text(self) -> &'static str {
        match self {
            AuthError::RootUserNotExist => "auth: root user does not exist",
            AuthError::RootRoleNotExist => "auth: root user does not have root role",
            AuthError::UserAlreadyExist => "auth: user already exists",
            AuthError::UserEmpty => "auth: user name is empty",
            AuthError::UserNotFound => "auth: user not found",
            AuthError::RoleAlreadyExist => "auth: role already exists",
            AuthError::RoleNotFound => "auth: role not found",
            AuthError::RoleEmpty => "auth: role name is empty",
            AuthError::RoleNotGranted => "auth: role is not granted to the user",
            AuthError::PermissionNotGranted => "auth: permission is not granted to the role",
            AuthError::InvalidAuthMgmt => "auth: invalid auth management",
            AuthError::PermissionNotGiven => "auth: permission not given",
            AuthError::PermissionDenied => "auth: permission denied",
            AuthError::AuthOldRevision => "auth: revision in header is old",
            AuthError::AuthNotEnabled => "auth: authentication is not enabled",
            AuthError::AuthFailed => "auth: authentication failed, invalid user ID or password",
            AuthError::InvalidAuthToken => "auth: invalid auth token",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// bcrypt hash; empty for a `no_password` user.
    pub password_hash: Vec<u8>,
    pub no_password: bool,
    /// Sorted, as etcd keeps them.
    pub roles: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthState {
    pub enabled: bool,
    /// Bumped by every change but AuthEnable (etcd's `commitRevision`); starts at 1.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    /// Each role's grants, sorted by key (etcd's `permSlice` order).
    pub roles: BTreeMap<String, Vec<Grant>>,
}

impl Default for AuthState {
    fn default() -> AuthState {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

impl AuthState {
    fn bump(&mut self) {
        self.revision += 1;
    }

    /// Needs user `root` holding role `root`. Enabling twice is not an error.
    pub fn enable(&mut self) -> Result<(), AuthError> {
        if self.enabled {
            return Ok(());
        }
        let root = self
            .users
            .get(ROOT_USER)
            .ok_or(AuthError::RootUserNotExist)?;
        if !root.roles.contains(ROOT_ROLE) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        Ok(())
    }

    pub fn disable(&mut self) {
        if self.enabled {
            self.enabled = false;
            self.bump();
        }
    }

    pub fn user_add(
        &mut self,
        name: &str,
        password_hash: Vec<u8>,
        no_password: bool,
    ) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        let password_hash = if no_password {
            Vec::new()
        } else {
            password_hash
        };
        self.users.insert(
            name.to_string(),
            User {
                password_hash,
                no_password,
                roles: BTreeSet::new(),
            },
        );
        self.bump();
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_USER {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(AuthError::UserNotFound)?;
        self.bump();
        Ok(())
    }

    pub fn user_change_password(
        &mut self,
        name: &str,
        password_hash: Vec<u8>,
    ) -> Result<(), AuthError> {
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        user.password_hash = password_hash;
        self.bump();
        Ok(())
    }

    /// Granting a role the user has already is a no-op (no revision bump), as in etcd.
    pub fn user_grant_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if !self.users.contains_key(name) {
            return Err(AuthError::UserNotFound);
        }
        if role != ROOT_ROLE && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let user = self.users.get_mut(name).expect("checked above");
        if user.roles.insert(role.to_string()) {
            self.bump();
        }
        Ok(())
    }

    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        if !user.roles.remove(role) {
            return Err(AuthError::RoleNotGranted);
        }
        self.bump();
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        self.roles.insert(name.to_string(), Vec::new());
        self.bump();
        Ok(())
    }

    /// Also takes the role from every user holding it.
    pub fn role_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.remove(name);
        }
        self.bump();
        Ok(())
    }

    /// Adds a grant, or changes the type of the one with the same key and range end.
    pub fn role_grant_permission(&mut self, role: &str, grant: Grant) -> Result<(), AuthError> {
        let grants = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
        check_grant(&grant.key, &grant.range_end).map_err(|e| match e {
            GrantError::EmptyKey | GrantError::EmptyRange => AuthError::PermissionNotGiven,
        })?;
        match grants
            .iter_mut()
            .find(|g| g.key == grant.key && g.range_end == grant.range_end)
        {
            Some(existing) => existing.perm = grant.perm,
            None => {
                grants.push(grant);
                grants.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.bump();
        Ok(())
    }

    pub fn role_revoke_permission(
        &mut self,
        role: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let grants = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
        let before = grants.len();
        grants.retain(|g| g.key != key || g.range_end != range_end);
        if grants.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.bump();
        Ok(())
    }

    /// Whether `name` holds the `root` role (which passes every key check).
    pub fn is_admin(&self, name: &str) -> bool {
        self.users
            .get(name)
            .is_some_and(|u| u.roles.contains(ROOT_ROLE))
    }

    /// The key sets `name`'s roles grant (empty for an unknown user).
    pub fn user_perms(&self, name: &str) -> UserPerms {
        let Some(user) = self.users.get(name) else {
            return UserPerms::default();
        };
        let grants: Vec<&Grant> = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .collect();
        UserPerms::from_grants(grants.iter().copied())
    }
}

/// A grant of `perm` on `[key, range_end)`.
pub fn grant(perm: PermType, key: &[u8], range_end: &[u8]) -> Grant {
    Grant {
        perm,
        key: key.to_vec(),
        range_end: range_end.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_root() -> AuthState {
        let mut a = AuthState::default();
        a.user_add(ROOT_USER, b"h".to_vec(), false).unwrap();
        a
    }

    #[test]
    fn enabling_needs_root_with_the_root_role() {
        let mut a = AuthState::default();
        assert_eq!(a.enable(), Err(AuthError::RootUserNotExist));
        a.user_add(ROOT_USER, b"h".to_vec(), false).unwrap();
        assert_eq!(a.enable(), Err(AuthError::RootRoleNotExist));
        // The root role needs no RoleAdd to be granted.
        a.user_grant_role(ROOT_USER, ROOT_ROLE).unwrap();
        let rev = a.revision;
        a.enable().unwrap();
        assert!(a.enabled);
        assert_eq!(a.revision, rev, "AuthEnable does not bump the revision");
        assert_eq!(a.enable(), Ok(()));
        assert_eq!(a.user_delete(ROOT_USER), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(
            a.user_revoke_role(ROOT_USER, ROOT_ROLE),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(a.role_delete(ROOT_ROLE), Err(AuthError::InvalidAuthMgmt));
        a.disable();
        assert_eq!(a.revision, rev + 1);
        a.user_revoke_role(ROOT_USER, ROOT_ROLE).unwrap();
        a.user_delete(ROOT_USER).unwrap();
    }

    #[test]
    fn users_and_roles_with_etcds_errors() {
        let mut a = with_root();
        assert_eq!(a.user_add("", vec![], false), Err(AuthError::UserEmpty));
        assert_eq!(
            a.user_add(ROOT_USER, vec![], false),
            Err(AuthError::UserAlreadyExist)
        );
        assert_eq!(a.user_delete("nobody"), Err(AuthError::UserNotFound));
        assert_eq!(
            a.user_change_password("nobody", vec![]),
            Err(AuthError::UserNotFound)
        );
        assert_eq!(a.role_add(""), Err(AuthError::RoleEmpty));
        a.role_add("r").unwrap();
        assert_eq!(a.role_add("r"), Err(AuthError::RoleAlreadyExist));
        assert_eq!(
            a.user_grant_role("nobody", "r"),
            Err(AuthError::UserNotFound)
        );
        assert_eq!(
            a.user_grant_role(ROOT_USER, "nope"),
            Err(AuthError::RoleNotFound)
        );
        a.user_add("u", b"x".to_vec(), false).unwrap();
        a.user_grant_role("u", "r").unwrap();
        let rev = a.revision;
        a.user_grant_role("u", "r").unwrap();
        assert_eq!(a.revision, rev, "granting a held role changes nothing");
        assert_eq!(
            a.user_revoke_role("u", "other"),
            Err(AuthError::RoleNotGranted)
        );
        a.role_delete("r").unwrap();
        assert!(
            a.users["u"].roles.is_empty(),
            "deleting a role takes it from its users"
        );
        a.user_add("cn-only", b"ignored".to_vec(), true).unwrap();
        assert!(a.users["cn-only"].password_hash.is_empty());
    }

    #[test]
    fn grants_update_in_place_and_revoke_exactly() {
        let mut a = with_root();
        a.role_add("r").unwrap();
        assert_eq!(
            a.role_grant_permission("nope", grant(PermType::Read, b"a", b"")),
            Err(AuthError::RoleNotFound)
        );
        assert_eq!(
            a.role_grant_permission("r", grant(PermType::Read, b"", b"\0")),
            Err(AuthError::PermissionNotGiven)
        );
        assert_eq!(
            a.role_grant_permission("r", grant(PermType::Read, b"b", b"a")),
            Err(AuthError::PermissionNotGiven)
        );
        a.role_grant_permission("r", grant(PermType::Read, b"k", b"l"))
            .unwrap();
        a.role_grant_permission("r", grant(PermType::Write, b"a", b""))
            .unwrap();
        a.role_grant_permission("r", grant(PermType::ReadWrite, b"k", b"l"))
            .unwrap();
        let keys: Vec<(&[u8], PermType)> = a.roles["r"]
            .iter()
            .map(|g| (g.key.as_slice(), g.perm))
            .collect();
        assert_eq!(
            keys,
            [
                (&b"a"[..], PermType::Write),
                (&b"k"[..], PermType::ReadWrite)
            ]
        );
        assert_eq!(
            a.role_revoke_permission("r", b"k", b"m"),
            Err(AuthError::PermissionNotGranted)
        );
        a.role_revoke_permission("r", b"k", b"l").unwrap();
        assert_eq!(a.roles["r"].len(), 1);
    }

    #[test]
    fn a_users_permissions_are_its_roles_union() {
        let mut a = with_root();
        a.role_add("r1").unwrap();
        a.role_add("r2").unwrap();
        a.role_grant_permission("r1", grant(PermType::Read, b"a", b"m"))
            .unwrap();
        a.role_grant_permission("r2", grant(PermType::Read, b"m", b"\0"))
            .unwrap();
        a.user_add("u", vec![], false).unwrap();
        a.user_grant_role("u", "r1").unwrap();
        assert!(!a.user_perms("u").can_read(b"a", b"\0"));
        a.user_grant_role("u", "r2").unwrap();
        assert!(a.user_perms("u").can_read(b"a", b"\0"));
        assert!(!a.user_perms("u").can_write(b"a", b""));
        assert!(!a.user_perms("nobody").can_read(b"a", b""));
        assert!(!a.is_admin("u"));
        a.user_grant_role(ROOT_USER, ROOT_ROLE).unwrap();
        assert!(a.is_admin(ROOT_USER));
    }
}
