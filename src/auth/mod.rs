//! Auth (issue 18), first part: the permission sets a user's roles grant and etcd's rules
//! for checking a request against them ([`perms`]). The Auth service, the users and roles
//! in the db, tokens and the checks on every RPC build on it.

pub mod perms;
