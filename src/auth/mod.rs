//! Auth (issue 18), first part: the permission sets a user's roles grant and etcd's rules
//! for checking a request against them ([`perms`]), and the users, roles, enabled flag and
//! revision as the management calls change them ([`state`]). The Auth service, their place
//! in the db, tokens and the checks on every RPC build on them.

pub mod perms;
pub mod state;
