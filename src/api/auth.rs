//! `etcdserverpb.Auth`, and who calls every other service: the token (simple or JWT) or
//! the client certificate's Common Name resolved to a [`Caller`], checked against this
//! core's auth view.
//!
//! Runs on: every core. Passwords: hashed (UserAdd, UserChangePassword) or checked
//! (Authenticate) with bcrypt on glommio's blocking pool, never on the executor; only the
//! hash travels through raft; the plaintext is dropped (zeroed) once hashed or checked and
//! never logged. Every Auth call is a raft entry, answered once applied.

use super::errors::{status_from_auth, EtcdError};
use super::services::{decode, encode, Services};
use crate::auth::jwt::JwtProvider;
use crate::auth::perms::PermType;
use crate::auth::{AuthError, AuthOp, AuthOutcome, AuthView, Caller};
use crate::grpc::{Call, Code, Status};
use crate::mesh::ToRaft;
use crate::node::Node;
use crate::pb::etcdserverpb as pb;
use bytes::Bytes;
use std::rc::Rc;
use std::sync::Arc;

/// etcd's bcrypt cost (`--bcrypt-cost`).
pub const BCRYPT_COST_DEFAULT: u32 = 10;
/// bcrypt reads at most this many bytes of a password; longer ones are refused, as Go's
/// bcrypt (and so etcd 3.5) refuses them.
pub const PASSWORD_BYTES_MAX: usize = 72;
/// Authenticate tries again this often when the auth state changed under its check.
const AUTHENTICATE_TRIES_MAX: usize = 5;

/// How this member authenticates callers.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `--client-cert-auth`: the verified certificate's CN is the user when no token is
    /// sent.
    pub client_cert_auth: bool,
    pub bcrypt_cost: u32,
    /// `--auth-token jwt,…` (`None`: simple tokens).
    pub jwt: Option<Arc<JwtProvider>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            client_cert_auth: false,
            bcrypt_cost: BCRYPT_COST_DEFAULT,
            jwt: None,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Who makes a call (etcd's `AuthInfoFromCtx`): nobody while auth is off; else the user
/// of its token (an unknown or expired token is "invalid auth token"), else the CN of its
/// client certificate (with `--client-cert-auth`), else nobody.
pub async fn resolve_caller(
    node: &Node,
    config: &AuthConfig,
    call: &Call,
) -> Result<Caller, Status> {
    // First catch up with every round the member sent out: whether auth is on, and the
    // revision a caller carries, are then never older than what another core has served
    // (a write is not proposed under a revision already replaced). One load and compare
    // when caught up.
    node.wait_applied(node.round_mark()).await;
    if !node.auth_enabled() {
        return Ok(Caller::anonymous());
    }
    if let Some(token) = call.token() {
        let found = match &config.jwt {
            Some(jwt) => jwt.info(token, unix_now()),
            None => node
                .simple_token_user(token)
                .await
                .map(|user| (user, node.auth_view().revision)),
        };
        return match found {
            Some((user, revision)) => Ok(Caller { user, revision }),
            None => Err(status_from_auth(AuthError::InvalidAuthToken)),
        };
    }
    if config.client_cert_auth {
        if let Some(cn) = &call.common_name {
            return Ok(Caller {
                user: cn.to_string(),
                revision: node.auth_view().revision,
            });
        }
    }
    Ok(Caller::anonymous())
}

/// An applied Auth call answered with another call's outcome: a Keel bug, not the client's.
fn odd_outcome() -> Status {
    Status::new(
        Code::Internal,
        "keel: an Auth call got the outcome of another kind",
    )
}

/// A password moved out of its request, zeroed when dropped.
struct Password(Vec<u8>);

impl Drop for Password {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keeps the zeroing from being optimised away as a dead store.
        std::hint::black_box(&self.0);
    }
}

fn take_password(p: &mut String) -> Password {
    Password(std::mem::take(p).into_bytes())
}

/// bcrypt on the blocking pool.
async fn hash_password(password: Password, cost: u32) -> Result<Vec<u8>, Status> {
    if password.0.len() > PASSWORD_BYTES_MAX {
        // Go's bcrypt error, which etcd returns unmapped.
        return Err(Status::new(
            Code::Unknown,
            "bcrypt: password length exceeds 72 bytes",
        ));
    }
    glommio::executor()
        .spawn_blocking(move || {
            // `$2a$`, as Go's bcrypt (and so etcd) writes them: a db moved between etcd
            // and Keel keeps working both ways.
            bcrypt::hash_with_result(&password.0, cost)
                .map(|h| h.format_for_version(bcrypt::Version::TwoA).into_bytes())
                .map_err(|e| Status::new(Code::Unknown, format!("bcrypt: {e}")))
        })
        .await
}

async fn password_matches(password: Password, hash: Vec<u8>) -> bool {
    if password.0.len() > PASSWORD_BYTES_MAX {
        return false;
    }
    glommio::executor()
        .spawn_blocking(move || {
            let Ok(hash) = std::str::from_utf8(&hash) else {
                return false;
            };
            bcrypt::verify(&password.0, hash).unwrap_or(false)
        })
        .await
}

impl Services {
    /// The caller of `call` (see [`resolve_caller`]); this core's view is then as current as
    /// the member's rounds, so checks read `node().auth_view()` directly.
    pub(crate) async fn caller(&self, call: &Call) -> Result<Caller, Status> {
        resolve_caller(self.node(), &self.auth, call).await
    }

    /// This core's view, once it has applied every round another core may have served
    /// from (so a grant acknowledged anywhere on this member is seen here): for calls that
    /// resolve no caller (Authenticate).
    pub(crate) async fn current_view(&self) -> Rc<AuthView> {
        let node = self.node();
        node.wait_applied(node.round_mark()).await;
        node.auth_view()
    }

    /// The caller, which must hold role `root` (while auth is on).
    pub(crate) async fn admin(&self, call: &Call) -> Result<Caller, Status> {
        let caller = self.caller(call).await?;
        self.node()
            .auth_view()
            .check_admin(&caller)
            .map_err(status_from_auth)?;
        Ok(caller)
    }

    /// The caller, which must name a user (while auth is on).
    pub(crate) async fn user(&self, call: &Call) -> Result<Caller, Status> {
        let caller = self.caller(call).await?;
        self.node()
            .auth_view()
            .check_user(&caller)
            .map_err(status_from_auth)?;
        Ok(caller)
    }

    async fn auth_call(&self, op: AuthOp, caller: &Caller) -> Result<(AuthOutcome, u64), Status> {
        let data = crate::raft::entry::encode_auth(&op, caller);
        let a = self
            .client()
            .call(|to| ToRaft::ProposeAuth { to, data })
            .await?;
        Ok((a.value, a.raft_term))
    }

    /// An Auth call by `call`'s caller: its outcome and the response header.
    async fn auth_query(
        &self,
        call: &Call,
        op: AuthOp,
    ) -> Result<(AuthOutcome, pb::ResponseHeader), Status> {
        let caller = self.caller(call).await?;
        let (out, term) = self.auth_call(op, &caller).await?;
        Ok((out, self.header(self.node().watermark().revision, term)))
    }

    /// An Auth call answered with a bare header.
    async fn auth_done(&self, call: &Call, op: AuthOp) -> Result<pb::ResponseHeader, Status> {
        Ok(self.auth_query(call, op).await?.1)
    }

    pub async fn auth_enable(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::AuthEnableRequest>(&body)?;
        let header = self.auth_done(call, AuthOp::Enable).await?;
        Ok(encode(&pb::AuthEnableResponse {
            header: Some(header),
        }))
    }

    pub async fn auth_disable(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::AuthDisableRequest>(&body)?;
        let header = self.auth_done(call, AuthOp::Disable).await?;
        Ok(encode(&pb::AuthDisableResponse {
            header: Some(header),
        }))
    }

    /// etcd 3.5's AuthStatus (admin while enabled).
    pub async fn auth_status(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::AuthStatusRequest>(&body)?;
        self.admin(call).await?;
        let view = self.node().auth_view();
        Ok(encode(&pb::AuthStatusResponse {
            header: Some(self.header(
                self.node().watermark().revision,
                self.node().watermark().raft_term,
            )),
            enabled: view.enabled,
            auth_revision: view.revision,
        }))
    }

    /// etcd's Authenticate: the password checked here against the user's hash, then an
    /// Authenticate entry whose apply (on every member) makes the token; checked again
    /// if the auth state changed in between.
    pub async fn authenticate(&self, _call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let mut req = decode::<pb::AuthenticateRequest>(&body)?;
        let password = take_password(&mut req.password);
        for _ in 0..AUTHENTICATE_TRIES_MAX {
            let view = self.current_view().await;
            if !view.enabled {
                return Err(status_from_auth(AuthError::AuthNotEnabled));
            }
            let Some(user) = view.user(&req.name) else {
                return Err(status_from_auth(AuthError::AuthFailed));
            };
            if user.no_password {
                // etcd's ErrNoPasswordUser, unmapped.
                return Err(Status::new(
                    Code::Unknown,
                    "auth: authentication failed, password was given for no password user",
                ));
            }
            let attempt = Password(password.0.clone());
            if !password_matches(attempt, user.password_hash.clone()).await {
                return Err(status_from_auth(AuthError::AuthFailed));
            }
            let op = AuthOp::Authenticate {
                name: req.name.clone(),
                token_prefix: if self.auth.jwt.is_some() {
                    String::new()
                } else {
                    crate::auth::tokens::token_prefix()
                },
                checked_revision: view.revision,
            };
            let out = match self.auth_call(op, &Caller::anonymous()).await {
                Err(s) if s.message == EtcdError::AuthOldRevision.status().message => continue,
                other => other?,
            };
            let (
                AuthOutcome::Authenticated {
                    user,
                    revision,
                    token,
                },
                term,
            ) = out
            else {
                return Err(odd_outcome());
            };
            let token = match (token, &self.auth.jwt) {
                (Some(t), _) => t,
                // Signing (RSA: a millisecond or more) runs on the blocking pool too.
                (None, Some(jwt)) => {
                    let jwt = jwt.clone();
                    glommio::executor()
                        .spawn_blocking(move || jwt.assign(&user, revision, unix_now()))
                        .await
                        .map_err(|e| Status::new(Code::Unknown, e))?
                }
                (None, None) => return Err(Status::new(Code::Internal, "keel: no token was made")),
            };
            return Ok(encode(&pb::AuthenticateResponse {
                header: Some(self.header(self.node().watermark().revision, term)),
                token,
            }));
        }
        Err(status_from_auth(AuthError::AuthOldRevision))
    }

    pub async fn user_add(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let mut req = decode::<pb::AuthUserAddRequest>(&body)?;
        let password = take_password(&mut req.password);
        let no_password = req.options.is_some_and(|o| o.no_password);
        if req.name.is_empty() {
            return Err(status_from_auth(AuthError::UserEmpty));
        }
        let password_hash = if no_password {
            Vec::new()
        } else {
            hash_password(password, self.auth.bcrypt_cost).await?
        };
        let op = AuthOp::UserAdd {
            name: req.name,
            password_hash,
            no_password,
        };
        let header = self.auth_done(call, op).await?;
        Ok(encode(&pb::AuthUserAddResponse {
            header: Some(header),
        }))
    }

    pub async fn user_change_password(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let mut req = decode::<pb::AuthUserChangePasswordRequest>(&body)?;
        let password = take_password(&mut req.password);
        let password_hash = hash_password(password, self.auth.bcrypt_cost).await?;
        let op = AuthOp::UserChangePassword {
            name: req.name,
            password_hash,
        };
        let header = self.auth_done(call, op).await?;
        Ok(encode(&pb::AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    pub async fn user_delete(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AuthUserDeleteRequest>(&body)?;
        let header = self
            .auth_done(call, AuthOp::UserDelete { name: req.name })
            .await?;
        Ok(encode(&pb::AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    pub async fn user_grant_role(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AuthUserGrantRoleRequest>(&body)?;
        let op = AuthOp::UserGrantRole {
            user: req.user,
            role: req.role,
        };
        let header = self.auth_done(call, op).await?;
        Ok(encode(&pb::AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    pub async fn user_revoke_role(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AuthUserRevokeRoleRequest>(&body)?;
        let op = AuthOp::UserRevokeRole {
            user: req.name,
            role: req.role,
        };
        let header = self.auth_done(call, op).await?;
        Ok(encode(&pb::AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    pub async fn user_get(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AuthUserGetRequest>(&body)?;
        match self
            .auth_query(call, AuthOp::UserGet { name: req.name })
            .await?
        {
            (AuthOutcome::Roles(roles), header) => Ok(encode(&pb::AuthUserGetResponse {
                header: Some(header),
                roles,
            })),
            _ => Err(odd_outcome()),
        }
    }

    pub async fn user_list(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::AuthUserListRequest>(&body)?;
        match self.auth_query(call, AuthOp::UserList).await? {
            (AuthOutcome::Names(users), header) => Ok(encode(&pb::AuthUserListResponse {
                header: Some(header),
                users,
            })),
            _ => Err(odd_outcome()),
        }
    }

    pub async fn role_add(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AuthRoleAddRequest>(&body)?;
        let header = self
            .auth_done(call, AuthOp::RoleAdd { name: req.name })
            .await?;
        Ok(encode(&pb::AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    pub async fn role_delete(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AuthRoleDeleteRequest>(&body)?;
        let header = self
            .auth_done(call, AuthOp::RoleDelete { name: req.role })
            .await?;
        Ok(encode(&pb::AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    pub async fn role_grant_permission(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AuthRoleGrantPermissionRequest>(&body)?;
        let Some(perm) = req.perm else {
            return Err(status_from_auth(AuthError::PermissionNotGiven));
        };
        let perm_type = crate::auth::ops::perm_type_from(perm.perm_type).unwrap_or(PermType::Read);
        let op = AuthOp::RoleGrantPermission {
            role: req.name,
            grant: crate::auth::perms::Grant {
                perm: perm_type,
                key: perm.key.to_vec(),
                range_end: perm.range_end.to_vec(),
            },
        };
        let header = self.auth_done(call, op).await?;
        Ok(encode(&pb::AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    pub async fn role_revoke_permission(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AuthRoleRevokePermissionRequest>(&body)?;
        let op = AuthOp::RoleRevokePermission {
            role: req.role,
            key: req.key.to_vec(),
            range_end: req.range_end.to_vec(),
        };
        let header = self.auth_done(call, op).await?;
        Ok(encode(&pb::AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }

    pub async fn role_get(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        let req = decode::<pb::AuthRoleGetRequest>(&body)?;
        match self
            .auth_query(call, AuthOp::RoleGet { role: req.role })
            .await?
        {
            (AuthOutcome::Grants(grants), header) => Ok(encode(&pb::AuthRoleGetResponse {
                header: Some(header),
                perm: grants.iter().map(crate::auth::ops::pb_permission).collect(),
            })),
            _ => Err(odd_outcome()),
        }
    }

    pub async fn role_list(&self, call: &Call, body: Bytes) -> Result<Bytes, Status> {
        decode::<pb::AuthRoleListRequest>(&body)?;
        match self.auth_query(call, AuthOp::RoleList).await? {
            (AuthOutcome::Names(roles), header) => Ok(encode(&pb::AuthRoleListResponse {
                header: Some(header),
                roles,
            })),
            _ => Err(odd_outcome()),
        }
    }
}
