//! Auth against the real server binary: etcdctl's user / role / auth commands and their
//! output, the etcd-client crate logging in with a user and password, tokens (simple and
//! JWT) and their invalidation, and one test per published etcd
//! RBAC bypass (nested txns, prev_kv and leases inside txns, from-key watches, lease
//! time-to-live keys, admin-only maintenance and cluster calls, password length, passwords
//! in logs and files), plus combinations etcd did not publish: checks on a follower, on a
//! learner, across a leader change, after a restart and after a snapshot catch-up.
//! Client-certificate users are etcd's own e2e tests (`TestCtlV3AuthCertCN*`, ci/e2e.sh)
//! and ci/interop.sh (Python over mutual TLS).
//!
//! `KEEL_TEST_SERVER=/usr/bin/etcd cargo nextest run --test it auth::` runs them against etcd
//! 3.4.23, which predates the 2026 permission fixes: the checks of those fixes are Keel's
//! only and say so.

use crate::common;

use common::{grpc_status, runtime, Cluster, Server, FAST_ELECTIONS};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseTimeToLiveOptions, Permission,
    PutOptions, Txn, TxnOp, UserAddOptions, WatchOptions,
};

/// A cheap bcrypt cost: the tests add and authenticate many users.
const FAST_BCRYPT: [&str; 2] = ["--bcrypt-cost", "4"];

const ROOT_PW: &str = "rootpw";
const ALICE_PW: &str = "alicepw";

/// A member with `extra` flags and a cheap bcrypt cost.
fn member(tag: &str, extra: &[&str]) -> Server {
    let mut flags = FAST_BCRYPT.to_vec();
    flags.extend_from_slice(extra);
    Server::start(tag, &flags)
}

async fn connect_as(
    endpoint: &str,
    user: &str,
    password: &str,
) -> Result<Client, etcd_client::Error> {
    Client::connect(
        [endpoint],
        Some(ConnectOptions::new().with_user(user, password)),
    )
    .await
}

/// root (role root), role `rw` with READWRITE on prefix `a`, role `r` with READ on key
/// `r`, alice holding both, then auth on.
async fn set_up(endpoint: &str) {
    let mut cl = Client::connect([endpoint], None).await.unwrap();
    cl.user_add("root", ROOT_PW, None).await.unwrap();
    cl.user_grant_role("root", "root").await.unwrap();
    cl.role_add("rw").await.unwrap();
    cl.role_grant_permission("rw", Permission::read_write("a").with_prefix())
        .await
        .unwrap();
    cl.role_add("r").await.unwrap();
    cl.role_grant_permission("r", Permission::read("r"))
        .await
        .unwrap();
    cl.user_add("alice", ALICE_PW, None).await.unwrap();
    cl.user_grant_role("alice", "rw").await.unwrap();
    cl.user_grant_role("alice", "r").await.unwrap();
    cl.auth_enable().await.unwrap();
}

fn denied() -> (tonic::Code, String) {
    (
        tonic::Code::PermissionDenied,
        "etcdserver: permission denied".to_string(),
    )
}

#[test]
fn etcdctl_user_role_and_auth_commands_print_what_etcd_prints() {
    let s = member("auth-ctl", &[]);
    s.etcdctl(&["auth", "enable"])
        .expect_err("Error: etcdserver: root user does not exist");
    s.etcdctl(&["user", "add", "root:rootpw"])
        .expect_ok("User root created\n");
    s.etcdctl(&["user", "add", "root:again"])
        .expect_err("Error: etcdserver: user name already exists");
    s.etcdctl(&["user", "get", "nobody"])
        .expect_err("Error: etcdserver: user name not found");
    s.etcdctl(&["role", "add", "ops"])
        .expect_ok("Role ops created\n");
    s.etcdctl(&["role", "add", "ops"])
        .expect_err("Error: etcdserver: role name already exists");
    s.etcdctl(&["role", "grant-permission", "ops", "readwrite", "k1", "k5"])
        .expect_ok("Role ops updated\n");
    s.etcdctl(&["role", "grant-permission", "ops", "read", "--prefix", "p/"])
        .expect_ok("Role ops updated\n");
    s.etcdctl(&[
        "role",
        "grant-permission",
        "ops",
        "write",
        "--from-key",
        "z",
    ])
    .expect_ok("Role ops updated\n");
    s.etcdctl(&["role", "grant-permission", "nope", "read", "x"])
        .expect_err("Error: etcdserver: role name not found");
    s.etcdctl(&["role", "get", "ops"]).expect_ok(
        "Role ops\nKV Read:\n\t[k1, k5)\n\t[p/, p0) (prefix p/)\nKV Write:\n\t[k1, k5)\n\t[z, <open ended>\n",
    );
    s.etcdctl(&["user", "add", "bob:bobpw"])
        .expect_ok("User bob created\n");
    s.etcdctl(&["user", "grant-role", "bob", "ops"])
        .expect_ok("Role ops is granted to user bob\n");
    s.etcdctl(&["user", "grant-role", "bob", "nope"])
        .expect_err("Error: etcdserver: role name not found");
    s.etcdctl(&["user", "get", "bob"])
        .expect_ok("User: bob\nRoles: ops\n");
    s.etcdctl(&["user", "list"]).expect_ok("bob\nroot\n");
    s.etcdctl(&["role", "list"]).expect_ok("ops\n");
    s.etcdctl(&["role", "revoke-permission", "ops", "k1", "k5"])
        .expect_ok("Permission of range [k1, k5) is revoked from role ops\n");
    s.etcdctl(&["role", "revoke-permission", "ops", "k1", "k5"])
        .expect_err("Error: etcdserver: permission is not granted to the role");
    s.etcdctl(&["user", "revoke-role", "bob", "root"])
        .expect_err("Error: etcdserver: role is not granted to the user");
    // etcdctl adds the root role and grants it to root when enabling.
    s.etcdctl(&["auth", "enable"])
        .expect_ok("Authentication Enabled\n");
    s.etcdctl(&["put", "k", "v"])
        .expect_err("Error: etcdserver: user name is empty");
    s.etcdctl(&["--user", "root:wrong", "put", "k", "v"])
        .expect_err("Error: etcdserver: authentication failed, invalid user ID or password");
    let root = "--user=root:rootpw";
    s.etcdctl(&[root, "user", "delete", "root"])
        .expect_err("Error: etcdserver: invalid auth management");
    s.etcdctl(&[root, "role", "delete", "root"])
        .expect_err("Error: etcdserver: invalid auth management");
    s.etcdctl(&[root, "user", "revoke-role", "root", "root"])
        .expect_err("Error: etcdserver: invalid auth management");
    // bob reads p/ but writes only from z on.
    s.etcdctl(&[root, "put", "p/1", "v"]).expect_ok("OK\n");
    s.etcdctl(&["--user=bob:bobpw", "get", "p/1"])
        .expect_ok("p/1\nv\n");
    s.etcdctl(&["--user=bob:bobpw", "put", "p/1", "w"])
        .expect_err("Error: etcdserver: permission denied");
    s.etcdctl(&["--user=bob:bobpw", "put", "zz", "w"])
        .expect_ok("OK\n");
    // Management is root's; bob may read himself only.
    s.etcdctl(&["--user=bob:bobpw", "user", "list"])
        .expect_err("Error: etcdserver: permission denied");
    s.etcdctl(&["--user=bob:bobpw", "user", "get", "bob"])
        .expect_ok("User: bob\nRoles: ops\n");
    s.etcdctl(&["--user=bob:bobpw", "user", "get", "root"])
        .expect_err("Error: etcdserver: permission denied");
    s.etcdctl(&[root, "user", "passwd", "bob", "--interactive=false"]);
    s.etcdctl(&[root, "auth", "disable"])
        .expect_ok("Authentication Disabled\n");
    s.etcdctl(&["put", "k", "v"]).expect_ok("OK\n");
}

#[test]
fn etcd_client_logs_in_and_gets_only_what_its_roles_grant() {
    let s = member("auth-client", &[]);
    let rt = runtime();
    rt.block_on(async {
        let ep = s.endpoint();
        set_up(&ep).await;
        let e = Client::connect([ep.as_str()], None)
            .await
            .unwrap()
            .put("a1", "x", None)
            .await
            .unwrap_err();
        assert_eq!(
            grpc_status(e),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: user name is empty".to_string()
            )
        );
        match connect_as(&ep, "alice", "wrong").await {
            Err(e) => assert_eq!(
                grpc_status(e),
                (
                    tonic::Code::InvalidArgument,
                    "etcdserver: authentication failed, invalid user ID or password".to_string()
                )
            ),
            Ok(_) => panic!("a wrong password logged in"),
        }
        let mut alice = connect_as(&ep, "alice", ALICE_PW).await.unwrap();
        alice.put("a1", "x", None).await.unwrap();
        let got = alice
            .get("a", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(got.kvs().len(), 1);
        for e in [
            alice.put("b", "x", None).await.unwrap_err(),
            alice.put("r", "x", None).await.unwrap_err(),
            alice.get("b", None).await.unwrap_err(),
            alice
                .get("a", Some(GetOptions::new().with_range("c")))
                .await
                .unwrap_err(),
            alice
                .get("a", Some(GetOptions::new().with_from_key()))
                .await
                .unwrap_err(),
            alice
                .get(
                    "a",
                    Some(GetOptions::new().with_serializable().with_range("c")),
                )
                .await
                .unwrap_err(),
            alice.delete("b", None).await.unwrap_err(),
        ] {
            assert_eq!(grpc_status(e), denied());
        }
        alice.get("r", None).await.unwrap();
        // Granting later takes effect at once, revoking too.
        let mut root = connect_as(&ep, "root", ROOT_PW).await.unwrap();
        root.role_grant_permission("rw", Permission::write("b"))
            .await
            .unwrap();
        alice.put("b", "x", None).await.unwrap();
        root.role_revoke_permission("rw", "b", None).await.unwrap();
        assert_eq!(
            grpc_status(alice.put("b", "y", None).await.unwrap_err()),
            denied()
        );
        assert_eq!(root.get("b", None).await.unwrap().kvs()[0].value(), b"x");
    });
}

/// CVE-2026-33343 (GHSA-rfx7-8w68-q57q): a Txn nested in a Txn skipped every key check.
#[test]
fn nested_txns_are_checked_at_every_depth() {
    if !common::is_keel() {
        return; // etcd 3.4.23 has the bug: the nested put goes through there.
    }
    let s = member("auth-nested", &[]);
    runtime().block_on(async {
        let ep = s.endpoint();
        set_up(&ep).await;
        let mut root = connect_as(&ep, "root", ROOT_PW).await.unwrap();
        root.put("secret", "s0", None).await.unwrap();
        let mut alice = connect_as(&ep, "alice", ALICE_PW).await.unwrap();
        let mut op = TxnOp::put("secret", "stolen", None);
        for depth in 1..=3 {
            op = TxnOp::txn(Txn::new().and_then([op]));
            let e = alice
                .txn(Txn::new().and_then([TxnOp::put("a1", "x", None), op.clone()]))
                .await
                .unwrap_err();
            assert_eq!(grpc_status(e), denied(), "depth {depth}");
        }
        // Reads nested in the failure branch, and compares, too.
        let read = TxnOp::txn(Txn::new().or_else([TxnOp::get("secret", None)]));
        let e = alice.txn(Txn::new().or_else([read])).await.unwrap_err();
        assert_eq!(grpc_status(e), denied());
        let e = alice
            .txn(Txn::new().when([Compare::value("secret", CompareOp::Equal, "s0")]))
            .await
            .unwrap_err();
        assert_eq!(grpc_status(e), denied());
        // Allowed nesting works.
        let ok = TxnOp::txn(Txn::new().and_then([TxnOp::put("a2", "y", None)]));
        alice.txn(Txn::new().and_then([ok])).await.unwrap();
        assert_eq!(
            root.get("secret", None).await.unwrap().kvs()[0].value(),
            b"s0"
        );
        assert_eq!(root.get("a2", None).await.unwrap().kvs()[0].value(), b"y");
    });
}

/// CVE-2026-44283 / etcd 3.5.30: a Put inside a Txn skipped the prev_kv READ check and the
/// lease check (a lease holding a key the user cannot write).
#[test]
fn prev_kv_and_leases_inside_txns_need_their_permissions() {
    if !common::is_keel() {
        return; // etcd 3.4.23 predates the fix.
    }
    let s = member("auth-prevkv", &[]);
    runtime().block_on(async {
        let ep = s.endpoint();
        set_up(&ep).await;
        let mut root = connect_as(&ep, "root", ROOT_PW).await.unwrap();
        root.user_add("wo", "wopw", None).await.unwrap();
        root.role_add("w").await.unwrap();
        root.role_grant_permission("w", Permission::write("w"))
            .await
            .unwrap();
        root.user_grant_role("wo", "w").await.unwrap();
        root.put("w", "old", None).await.unwrap();
        let lease = root.lease_grant(60, None).await.unwrap().id();
        root.put("secret", "s", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
        let mut wo = connect_as(&ep, "wo", "wopw").await.unwrap();
        wo.put("w", "new", None).await.unwrap();
        let prev = Some(PutOptions::new().with_prev_key());
        for e in [
            wo.put("w", "x", prev.clone()).await.unwrap_err(),
            wo.txn(Txn::new().and_then([TxnOp::put("w", "x", prev.clone())]))
                .await
                .unwrap_err(),
            wo.put("w", "x", Some(PutOptions::new().with_lease(lease)))
                .await
                .unwrap_err(),
            wo.txn(Txn::new().and_then([TxnOp::put(
                "w",
                "x",
                Some(PutOptions::new().with_lease(lease)),
            )]))
            .await
            .unwrap_err(),
            wo.lease_revoke(lease).await.unwrap_err(),
        ] {
            assert_eq!(grpc_status(e), denied());
        }
        assert_eq!(root.get("w", None).await.unwrap().kvs()[0].value(), b"new");
        assert_eq!(root.get("secret", None).await.unwrap().kvs().len(), 1);
    });
}

/// GHSA-xg4h-6gfc-h4m8: a from-key watch (`range_end "\0"`) was checked as the single key.
/// A refused watch is created and cancelled with etcd's reason; the stream goes on.
#[test]
fn watches_are_checked_on_their_whole_range() {
    let s = member("auth-watch", &[]);
    runtime().block_on(async {
        let ep = s.endpoint();
        set_up(&ep).await;
        let mut alice = connect_as(&ep, "alice", ALICE_PW).await.unwrap();
        let mut root = connect_as(&ep, "root", ROOT_PW).await.unwrap();
        let mut refused = vec![
            ("b", WatchOptions::new()),
            ("a", WatchOptions::new().with_range("c")),
        ];
        if common::is_keel() {
            // etcd 3.4 still checks a from-key watch as its first key.
            refused.push(("a", WatchOptions::new().with_from_key()));
        }
        for (key, opts) in refused {
            let mut w = alice.watch(key, Some(opts.clone())).await.unwrap();
            let r = w.message().await.unwrap().expect("a response");
            assert!(r.created() && r.canceled(), "{opts:?}: {r:?}");
            assert_eq!(
                r.cancel_reason(),
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
            );
        }
        let mut w = alice
            .watch("a", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let created = w.message().await.unwrap().unwrap();
        assert!(created.created() && !created.canceled());
        root.put("a9", "v", None).await.unwrap();
        let ev = w.message().await.unwrap().unwrap();
        assert_eq!(ev.events()[0].kv().unwrap().key(), b"a9");
    });
}

/// CVE-2023-32082 and CVE-2026-33413's lease part: TimeToLive with keys, Leases and
/// keep-alives needed no permission on the lease's keys.
#[test]
fn lease_calls_need_permissions_on_the_leases_keys() {
    let s = member("auth-lease", &[]);
    runtime().block_on(async {
        let ep = s.endpoint();
        set_up(&ep).await;
        let mut root = connect_as(&ep, "root", ROOT_PW).await.unwrap();
        let lease = root.lease_grant(60, None).await.unwrap().id();
        root.put("secret", "s", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
        let mut alice = connect_as(&ep, "alice", ALICE_PW).await.unwrap();
        // Without keys the TTL is anyone's (etcd too).
        alice.lease_time_to_live(lease, None).await.unwrap();
        let keys = Some(LeaseTimeToLiveOptions::new().with_keys());
        if !common::is_keel() {
            return; // etcd 3.4.23 predates both fixes.
        }
        let e = alice.lease_time_to_live(lease, keys).await.unwrap_err();
        assert_eq!(grpc_status(e), denied());
        assert_eq!(grpc_status(alice.leases().await.unwrap_err()), denied());
        // The client sends its first keep-alive when it opens the stream.
        let e = match alice.lease_keep_alive(lease).await {
            Err(e) => e,
            Ok((_keeper, mut stream)) => stream.message().await.unwrap_err(),
        };
        assert_eq!(grpc_status(e), denied());
        // Her own lease works end to end.
        let own = alice.lease_grant(60, None).await.unwrap().id();
        alice
            .put("a1", "v", Some(PutOptions::new().with_lease(own)))
            .await
            .unwrap();
        let ttl = alice
            .lease_time_to_live(own, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(ttl.keys(), [b"a1".to_vec()]);
        let (mut keeper, mut stream) = alice.lease_keep_alive(own).await.unwrap();
        keeper.keep_alive().await.unwrap();
        assert!(stream.message().await.unwrap().unwrap().ttl() > 0);
        alice.lease_revoke(own).await.unwrap();
    });
}

/// CVE-2026-33413: Compact, MoveLeader, HashKV, member changes were callable by any user;
/// Status and MemberList need a user.
#[test]
fn admin_only_calls_refuse_ordinary_users() {
    let s = member("auth-admin", &[]);
    runtime().block_on(async {
        let ep = s.endpoint();
        set_up(&ep).await;
        let mut alice = connect_as(&ep, "alice", ALICE_PW).await.unwrap();
        let mut root = connect_as(&ep, "root", ROOT_PW).await.unwrap();
        let rev = root
            .put("a1", "v", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let id = root.status().await.unwrap().header().unwrap().member_id();
        // etcd answers HashKV's refusal unmapped.
        let e = alice.hash_kv(0).await.unwrap_err();
        assert_eq!(
            grpc_status(e),
            (tonic::Code::Unknown, "auth: permission denied".to_string())
        );
        root.hash_kv(0).await.unwrap();
        let e = alice
            .member_add(["http://127.0.0.1:1"], None)
            .await
            .unwrap_err();
        assert_eq!(grpc_status(e), denied());
        if !common::is_keel() {
            return; // etcd 3.4.23 predates CVE-2026-33413's fix.
        }
        for e in [
            alice.compact(rev, None).await.unwrap_err(),
            alice.move_leader(id).await.unwrap_err(),
            alice.member_remove(id).await.unwrap_err(),
            alice
                .member_update(id, vec!["http://127.0.0.1:1".to_string()])
                .await
                .unwrap_err(),
        ] {
            assert_eq!(grpc_status(e), denied());
        }
        alice.status().await.unwrap();
        alice.member_list().await.unwrap();
        let mut nobody = Client::connect([ep.as_str()], None).await.unwrap();
        let empty = (
            tonic::Code::InvalidArgument,
            "etcdserver: user name is empty".to_string(),
        );
        assert_eq!(grpc_status(nobody.status().await.unwrap_err()), empty);
        assert_eq!(grpc_status(nobody.member_list().await.unwrap_err()), empty);
        root.compact(rev, None).await.unwrap();
    });
}

/// CVE-2020-15115 (no length limit; bcrypt reads 72 bytes) and CVE-2021-28235 (the
/// password kept after use): longer passwords are refused, and no plaintext password
/// reaches the log, the WAL or the db.
#[test]
fn passwords_are_bounded_and_never_stored_or_logged() {
    if !common::is_keel() {
        return; // etcd 3.4.23's bcrypt truncates silently.
    }
    let mut s = member("auth-pw", &[]);
    let secret = "Correct-Horse-Battery-Staple-7f3a";
    runtime().block_on(async {
        let ep = s.endpoint();
        let mut cl = Client::connect([ep.as_str()], None).await.unwrap();
        let long = "x".repeat(73);
        let e = cl.user_add("long", long, None).await.unwrap_err();
        assert_eq!(
            grpc_status(e),
            (
                tonic::Code::Unknown,
                "bcrypt: password length exceeds 72 bytes".to_string()
            )
        );
        assert!(cl.user_get("long").await.is_err(), "not created");
        cl.user_add("root", secret, None).await.unwrap();
        cl.user_grant_role("root", "root").await.unwrap();
        cl.user_add("np", "", Some(UserAddOptions::new().with_no_pwd()))
            .await
            .unwrap();
        cl.auth_enable().await.unwrap();
        let mut root = connect_as(&ep, "root", secret).await.unwrap();
        root.put("k", "v", None).await.unwrap();
        // A no-password user cannot log in with a password.
        match connect_as(&ep, "np", "anything").await {
            Err(e) => assert_eq!(
                grpc_status(e),
                (
                    tonic::Code::Unknown,
                    "auth: authentication failed, password was given for no password user"
                        .to_string()
                )
            ),
            Ok(_) => panic!("a no-password user logged in"),
        }
    });
    s.stop();
    let mut found = Vec::new();
    let mut files = vec![s.dir.join("server.log")];
    files.extend(common::wal_files(&s.data_dir.join("member").join("wal")));
    files.push(s.data_dir.join("member").join("snap").join("db"));
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
            found.push(f);
        }
    }
    assert!(found.is_empty(), "the plaintext password is in {found:?}");
    // What is stored is a bcrypt hash as Go writes them ($2a$, the cost given).
    let db = std::fs::read(s.data_dir.join("member").join("snap").join("db")).unwrap();
    assert!(
        db.windows(7).any(|w| w == b"$2a$04$"),
        "no $2a$04$ bcrypt hash in the db"
    );
    assert!(!s.log().contains(secret));
}

#[test]
fn tokens_die_with_their_user_and_password_and_bad_tokens_are_refused() {
    let s = member("auth-tokens", &[]);
    runtime().block_on(async {
        let ep = s.endpoint();
        set_up(&ep).await;
        let mut root = connect_as(&ep, "root", ROOT_PW).await.unwrap();
        let token = root
            .auth_client()
            .authenticate("alice".into(), ALICE_PW.into())
            .await
            .unwrap()
            .token()
            .to_string();
        let (prefix, index) = token.split_once('.').unwrap();
        assert_eq!(prefix.len(), 16, "{token}");
        assert!(index.parse::<u64>().is_ok(), "{token}");
        let invalid = (
            tonic::Code::Unauthenticated,
            "etcdserver: invalid auth token".to_string(),
        );
        let get = |token: String| {
            let ep = ep.clone();
            async move { raw_range(&ep, &token).await }
        };
        assert!(get(token.clone()).await.is_ok());
        let mut bad_tokens = vec![
            "garbage".to_string(),
            format!("AAAAAAAAAAAAAAAA.{index}"),
            String::new(),
        ];
        if common::is_keel() {
            // A token from a raft index not applied yet (another cluster's, a forged one):
            // Keel waits 2 s for the index, etcd until the request's deadline.
            bad_tokens.push(format!("{prefix}.999999999"));
        }
        for bad in bad_tokens {
            assert_eq!(get(bad.clone()).await.unwrap_err(), invalid, "{bad:?}");
        }
        root.user_change_password("alice", "newpw").await.unwrap();
        assert_eq!(get(token.clone()).await.unwrap_err(), invalid);
        let fresh = root
            .auth_client()
            .authenticate("alice".into(), "newpw".into())
            .await
            .unwrap()
            .token()
            .to_string();
        assert!(get(fresh.clone()).await.is_ok());
        root.user_delete("alice").await.unwrap();
        assert_eq!(get(fresh).await.unwrap_err(), invalid);
    });
}

/// JWT tokens (`--auth-token jwt,…`, etcd's e2e keys): any auth change after a token was
/// made leaves it at an older auth revision, which key checks refuse.
#[test]
fn jwt_tokens_carry_their_auth_revision() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/auth/testdata");
    let jwt = format!(
        "jwt,pub-key={dir}/server.crt,priv-key={dir}/server.key.insecure,sign-method=RS256,ttl=5m"
    );
    let s = member("auth-jwt", &["--auth-token", &jwt]);
    runtime().block_on(async {
        let ep = s.endpoint();
        set_up(&ep).await;
        let mut alice = connect_as(&ep, "alice", ALICE_PW).await.unwrap();
        alice.put("a1", "v", None).await.unwrap();
        let mut root = connect_as(&ep, "root", ROOT_PW).await.unwrap();
        let token = root
            .auth_client()
            .authenticate("alice".into(), ALICE_PW.into())
            .await
            .unwrap()
            .token()
            .to_string();
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        assert_eq!(raw_range(&ep, &token).await, Ok(()));
        root.role_add("another").await.unwrap();
        assert_eq!(
            raw_range(&ep, &token).await,
            Err((
                tonic::Code::InvalidArgument,
                "etcdserver: revision of auth store is old".to_string()
            ))
        );
        // A token signed by someone else, or tampered with, is no token.
        // (A character inside the signature: the last one also holds padding bits, which
        // a lenient decoder ignores.)
        let mut forged = token.clone().into_bytes();
        let at = forged.len() - 10;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            raw_range(&ep, &forged).await,
            Err((
                tonic::Code::Unauthenticated,
                "etcdserver: invalid auth token".to_string()
            ))
        );
        // The etcd-client crate does not log in again on it (Go's clientv3 does): a new
        // login gets a token at the new revision.
        let e = alice.put("a2", "v", None).await.unwrap_err();
        assert_eq!(
            grpc_status(e).1,
            "etcdserver: revision of auth store is old"
        );
        let mut alice = connect_as(&ep, "alice", ALICE_PW).await.unwrap();
        alice.put("a2", "v", None).await.unwrap();
    });
}

/// A Range of `a1` with `token` metadata, over a plain tonic channel (no client login).
async fn raw_range(endpoint: &str, token: &str) -> Result<(), (tonic::Code, String)> {
    raw_range_of(endpoint, token, b"a1", false).await
}

/// A Range of `key` with `token` metadata (serializable or not).
async fn raw_range_of(
    endpoint: &str,
    token: &str,
    key: &[u8],
    serializable: bool,
) -> Result<(), (tonic::Code, String)> {
    use keel::pb::etcdserverpb as pb;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(pb::RangeRequest {
        key: key.to_vec().into(),
        serializable,
        ..Default::default()
    });
    req.set_timeout(std::time::Duration::from_secs(10));
    req.metadata_mut().insert(
        "token",
        tonic::metadata::MetadataValue::try_from(token).unwrap(),
    );
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Range");
    let codec = tonic_prost::ProstCodec::<pb::RangeRequest, pb::RangeResponse>::default();
    grpc.unary(req, path, codec)
        .await
        .map(|_| ())
        .map_err(|s| (s.code(), s.message().to_string()))
}

/// Until every member reports the same revision (Status needs a user while auth is on).
async fn wait_caught_up_as_root(c: &Cluster) {
    let deadline = std::time::Instant::now() + common::LIVENESS;
    loop {
        let mut revs = Vec::new();
        for m in &c.members {
            let rev = match connect_as(&m.endpoint(), "root", ROOT_PW).await {
                Ok(mut cl) => cl
                    .status()
                    .await
                    .ok()
                    .and_then(|s| s.header().map(|h| h.revision())),
                Err(_) => None,
            };
            revs.push(rev);
        }
        if revs.iter().all(|r| r.is_some() && *r == revs[0]) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence: {revs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn cluster_auth_holds_on_followers_learners_leader_change_restart_and_snapshot_catch_up() {
    let mut flags = FAST_ELECTIONS.to_vec();
    flags.extend(FAST_BCRYPT);
    flags.extend(["--snapshot-count", "100"]);
    let mut c = Cluster::start("auth-cluster", 3, &flags);
    let rt = runtime();
    let leader = rt.block_on(c.wait_leader(&[0, 1, 2]));
    let follower = (leader + 1) % 3;
    let behind = (leader + 2) % 3;
    rt.block_on(set_up(&c.members[leader].endpoint()));
    c.member(behind).stop();
    rt.block_on(async {
        let mut root = connect_as(&c.members[leader].endpoint(), "root", ROOT_PW)
            .await
            .unwrap();
        root.user_add("carol", "carolpw", None).await.unwrap();
        root.user_grant_role("carol", "rw").await.unwrap();
        // Enough entries that the member that is down needs the db to catch up.
        let mut tasks = Vec::new();
        for t in 0..16 {
            let mut cl = root.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..6500).step_by(16) {
                    cl.put(format!("a/{:04}", i % 500), "v", None)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // On a follower: writes go through the leader and are checked there, reads here.
        let mut alice = connect_as(&c.members[follower].endpoint(), "alice", ALICE_PW)
            .await
            .unwrap();
        alice.put("a1", "from-follower", None).await.unwrap();
        assert_eq!(
            grpc_status(alice.put("b", "x", None).await.unwrap_err()),
            denied()
        );
        assert_eq!(
            grpc_status(alice.get("b", None).await.unwrap_err()),
            denied()
        );
    });
    c.member(behind).restart();
    rt.block_on(async {
        wait_caught_up_as_root(&c).await;
        // The caught-up member knows carol (added while it was down) and her roles.
        let ep = c.members[behind].endpoint();
        let mut carol = connect_as(&ep, "carol", "carolpw").await.unwrap();
        carol.put("a2", "x", None).await.unwrap();
        assert_eq!(
            grpc_status(carol.get("b", None).await.unwrap_err()),
            denied()
        );
    });
    let applied = if common::is_keel() {
        "applied incoming snapshot from peer"
    } else {
        "finished applying incoming snapshot"
    };
    assert!(
        c.members[behind].log().contains(applied),
        "no snapshot catch-up"
    );
    // Across a leader change (root moves the lead to another member): the new leader
    // checks writes at apply with the same state.
    rt.block_on(async {
        let mut any = connect_as(&c.members[0].endpoint(), "root", ROOT_PW)
            .await
            .unwrap();
        let leader_id = any.status().await.unwrap().leader();
        let from = c.index_of(leader_id).expect("a leader among the members");
        let to = (from + 1) % 3;
        let mut root = connect_as(&c.members[from].endpoint(), "root", ROOT_PW)
            .await
            .unwrap();
        root.move_leader(c.ids[to]).await.unwrap();
        let mut alice = connect_as(&c.members[to].endpoint(), "alice", ALICE_PW)
            .await
            .unwrap();
        alice.put("a1", "after-move", None).await.unwrap();
        assert_eq!(
            grpc_status(alice.put("b", "x", None).await.unwrap_err()),
            denied()
        );
        // Every member hears of the new leader soon after MoveLeader returns (on the old
        // leader, once the target leads).
        let deadline = std::time::Instant::now() + common::LIVENESS;
        while any.status().await.unwrap().leader() != c.ids[to] {
            assert!(
                std::time::Instant::now() < deadline,
                "the lead did not move"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    // Every member restarted, one at a time: auth is still on, with the same users.
    for i in 0..3 {
        c.member(i).stop();
        c.member(i).restart();
    }
    rt.block_on(async {
        wait_caught_up_as_root(&c).await;
        for i in 0..3 {
            let ep = c.members[i].endpoint();
            let mut nobody = Client::connect([ep.as_str()], None).await.unwrap();
            let e = nobody.get("a1", None).await.unwrap_err();
            assert_eq!(grpc_status(e).1, "etcdserver: user name is empty");
            let mut alice = connect_as(&ep, "alice", ALICE_PW).await.unwrap();
            alice.get("a1", None).await.unwrap();
        }
    });
    // A learner added now gets the auth state with the db, and checks its serializable
    // reads against it (it serves nothing else).
    let learner = Server::unstarted("auth-cluster-m3");
    let peer = learner.peer_url();
    let id = rt.block_on(async {
        let mut root = connect_as(&c.members[0].endpoint(), "root", ROOT_PW)
            .await
            .unwrap();
        // etcd refuses member changes for a while after a member restarts ("unhealthy
        // cluster"): try again until it takes it.
        let deadline = std::time::Instant::now() + common::LIVENESS;
        loop {
            let opts = etcd_client::MemberAddOptions::new().with_is_learner();
            match root.member_add([peer.as_str()], Some(opts)).await {
                Ok(added) => break added.member().unwrap().id(),
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "member add: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    });
    let mut initial: Vec<String> = (0..3)
        .map(|i| format!("{}={}", c.names[i], c.members[i].peer_url()))
        .collect();
    initial.push(format!("m3={peer}"));
    let i3 = c.add_member(learner, "m3", id, &initial.join(","));
    rt.block_on(async {
        let ep = c.members[i3].endpoint();
        let deadline = std::time::Instant::now() + common::LIVENESS;
        // An anonymous serializable read is refused once the auth state arrived.
        loop {
            let mut nobody = Client::connect([ep.as_str()], None).await.unwrap();
            let serializable = Some(GetOptions::new().with_serializable());
            match nobody
                .get("a1", serializable)
                .await
                .map_err(|e| format!("{e}"))
            {
                Err(e) if e.contains("etcdserver: user name is empty") => break,
                other => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the learner never refused an anonymous read: {other:?}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        // A learner runs no Authenticate (a proposal), but a simple token is made by the
        // entry's apply on every member, the learner too: alice's token from a voter
        // reads her keys here, and only hers.
        let root = connect_as(&c.members[0].endpoint(), "root", ROOT_PW)
            .await
            .unwrap();
        let token = root
            .auth_client()
            .authenticate("alice".into(), ALICE_PW.into())
            .await
            .unwrap()
            .token()
            .to_string();
        let mut ok = raw_range_of(&ep, &token, b"a1", true).await;
        while ok.is_err() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            ok = raw_range_of(&ep, &token, b"a1", true).await;
        }
        assert_eq!(ok, Ok(()));
        assert_eq!(raw_range_of(&ep, &token, b"b", true).await, Err(denied()));
    });
}
