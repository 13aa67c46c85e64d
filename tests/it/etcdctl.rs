//! etcdctl 3.4 (Debian's etcd-client) against the real server binary: KV commands with
//! their flags and output formats, txn, compaction, endpoint and member commands, and the
//! errors etcd prints. Expected outputs are etcd 3.4.23's: every test here also passes
//! with `KEEL_TEST_SERVER=/usr/bin/etcd`.

use crate::common;

use common::Server;

fn fill(s: &Server) {
    for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3")] {
        s.etcdctl(&["put", k, v]).expect_ok("OK\n");
    }
}

#[test]
fn put_get_and_their_flags() {
    let s = Server::start("kv", &[]);
    s.etcdctl(&["put", "foo", "bar"]).expect_ok("OK\n");
    s.etcdctl(&["put", "foo", "bar2", "--prev-kv"])
        .expect_ok("OK\nfoo\nbar\n");
    s.etcdctl(&["get", "foo"]).expect_ok("foo\nbar2\n");
    s.etcdctl(&["get", "foo", "--rev", "2"])
        .expect_ok("foo\nbar\n");
    s.etcdctl(&["get", "nothing"]).expect_ok("");
    fill(&s);
    s.etcdctl(&["get", "--prefix", "k"])
        .expect_ok("k1\nv1\nk2\nv2\nk3\nv3\n");
    s.etcdctl(&["get", "k2", "--from-key"])
        .expect_ok("k2\nv2\nk3\nv3\n");
    s.etcdctl(&["get", "k1", "k3"])
        .expect_ok("k1\nv1\nk2\nv2\n");
    s.etcdctl(&["get", "--prefix", "k", "--limit", "2"])
        .expect_ok("k1\nv1\nk2\nv2\n");
    s.etcdctl(&["get", "--prefix", "k", "--keys-only"])
        .expect_ok("k1\n\nk2\n\nk3\n\n");
    s.etcdctl(&["get", "--prefix", "k", "--print-value-only"])
        .expect_ok("v1\nv2\nv3\n");
    s.etcdctl(&[
        "get",
        "--prefix",
        "k",
        "--sort-by=MODIFY",
        "--order=DESCEND",
    ])
    .expect_ok("k3\nv3\nk2\nv2\nk1\nv1\n");
    s.etcdctl(&["get", "--prefix", "k", "--order=DESCEND"])
        .expect_ok("k3\nv3\nk2\nv2\nk1\nv1\n");
    s.etcdctl(&["get", "--prefix", "k", "--sort-by=VALUE", "--limit", "1"])
        .expect_ok("k1\nv1\n");
    // Serializable reads see the same data (etcdctl 3.4 has no --count-only).
    s.etcdctl(&["get", "--prefix", "k", "--consistency=s", "--limit", "1"])
        .expect_ok("k1\nv1\n");
    let fields = s.etcdctl(&["get", "--prefix", "k", "--limit", "1", "-w", "fields"]);
    assert!(fields.stdout.contains("\"More\" : true\n"), "{fields:?}");
    assert!(fields.stdout.contains("\"Count\" : 3\n"), "{fields:?}");
    // Empty-value put and a value with spaces.
    s.etcdctl(&["put", "e", ""]).expect_ok("OK\n");
    s.etcdctl(&["get", "e"]).expect_ok("e\n\n");
    s.etcdctl(&["put", "sp", "a b  c"]).expect_ok("OK\n");
    s.etcdctl(&["get", "sp", "--print-value-only"])
        .expect_ok("a b  c\n");
}

#[test]
fn get_formats_json_and_fields() {
    let s = Server::start("fmt", &[]);
    s.etcdctl(&["put", "foo", "bar"]).expect_ok("OK\n");
    let json = s.etcdctl(&["get", "foo", "-w", "json"]);
    assert!(json.ok, "{json:?}");
    // Header IDs and term vary; the rest is etcd's exact JSON.
    let body = json.stdout.split("},").nth(1).unwrap().trim_end();
    assert_eq!(
        body,
        "\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":2,\"mod_revision\":2,\"version\":1,\"value\":\"YmFy\"}],\"count\":1}"
    );
    assert!(json.stdout.contains("\"revision\":2,"), "{}", json.stdout);
    let fields = s.etcdctl(&["get", "foo", "-w", "fields"]);
    for line in [
        "\"Revision\" : 2\n",
        "\"Key\" : \"foo\"\n",
        "\"CreateRevision\" : 2\n",
        "\"ModRevision\" : 2\n",
        "\"Version\" : 1\n",
        "\"Value\" : \"bar\"\n",
        "\"Lease\" : 0\n",
        "\"More\" : false\n",
        "\"Count\" : 1\n",
    ] {
        assert!(
            fields.stdout.contains(line),
            "{line:?} missing: {}",
            fields.stdout
        );
    }
}

#[test]
fn del_with_prefix_prev_kv_and_counts() {
    let s = Server::start("del", &[]);
    fill(&s);
    s.etcdctl(&["del", "nothing"]).expect_ok("0\n");
    s.etcdctl(&["del", "k1"]).expect_ok("1\n");
    s.etcdctl(&["del", "--prefix", "k", "--prev-kv"])
        .expect_ok("2\nk2\nv2\nk3\nv3\n");
    s.etcdctl(&["get", "--prefix", "k"]).expect_ok("");
    s.etcdctl(&["put", "a", "1"]).expect_ok("OK\n");
    s.etcdctl(&["put", "b", "2"]).expect_ok("OK\n");
    s.etcdctl(&["del", "a", "--from-key"]).expect_ok("2\n");
}

#[test]
fn txn_both_branches_from_stdin() {
    let s = Server::start("txn", &[]);
    s.etcdctl(&["put", "foo", "bar"]).expect_ok("OK\n");
    let script = "value(\"foo\") = \"bar\"\n\nput foo baz\nget foo\n\nput foo qux\n\n";
    s.etcdctl_stdin(&["txn"], script)
        .expect_ok("SUCCESS\n\nOK\n\nfoo\nbaz\n");
    // Now the compare fails: the failure branch runs.
    s.etcdctl_stdin(&["txn"], script)
        .expect_ok("FAILURE\n\nOK\n");
    s.etcdctl(&["get", "foo"]).expect_ok("foo\nqux\n");
    let script =
        "mod(\"foo\") > \"0\"\nversion(\"foo\") = \"3\"\ncreate(\"foo\") = \"2\"\n\ndel foo\n\n\n";
    s.etcdctl_stdin(&["txn"], script)
        .expect_ok("SUCCESS\n\n1\n");
}

#[test]
fn compaction_and_compacted_reads() {
    let s = Server::start("compact", &[]);
    for v in ["a", "b", "c", "d"] {
        s.etcdctl(&["put", "foo", v]).expect_ok("OK\n");
    }
    s.etcdctl(&["compaction", "3"])
        .expect_ok("compacted revision 3\n");
    s.etcdctl(&["get", "foo", "--rev", "2"])
        .expect_err("etcdserver: mvcc: required revision has been compacted");
    s.etcdctl(&["get", "foo", "--rev", "3"])
        .expect_ok("foo\nb\n");
    s.etcdctl(&["compaction", "3"])
        .expect_err("etcdserver: mvcc: required revision has been compacted");
    s.etcdctl(&["compaction", "--physical", "4"])
        .expect_ok("compacted revision 4\n");
    s.etcdctl(&["compaction", "100"])
        .expect_err("etcdserver: mvcc: required revision is a future revision");
    s.etcdctl(&["get", "foo", "--rev", "100"])
        .expect_err("etcdserver: mvcc: required revision is a future revision");
}

#[test]
fn request_limits_give_etcds_errors() {
    let s = Server::start(
        "limits",
        &["--max-request-bytes", "1024", "--max-txn-ops", "2"],
    );
    let big = "x".repeat(2048);
    s.etcdctl(&["put", "big", &big])
        .expect_err("etcdserver: request is too large");
    s.etcdctl(&["put", "small", "x"]).expect_ok("OK\n");
    let script = "\nput a 1\nput b 2\nput c 3\n\n\n";
    s.etcdctl_stdin(&["txn"], script)
        .expect_err("etcdserver: too many operations in txn request");
    let script = "\nput a 1\nput a 2\n\n\n";
    s.etcdctl_stdin(&["txn"], script)
        .expect_err("etcdserver: duplicate key given in txn request");
}

/// The member ID the server reports in `member list`.
fn member_id(s: &Server) -> String {
    let out = s.etcdctl(&["member", "list"]);
    assert!(out.ok, "{out:?}");
    out.stdout.split(',').next().unwrap().to_string()
}

#[test]
fn endpoint_and_member_commands() {
    let s = Server::start("endpoint", &[]);
    let id = member_id(&s);
    let peer = format!("http://127.0.0.1:{}", s.peer_port);
    let client = format!("http://127.0.0.1:{}", s.client_port);
    s.etcdctl(&["member", "list"])
        .expect_ok(&format!("{id}, started, it, {peer}, {client}, false\n"));
    let table = s.etcdctl(&["member", "list", "-w", "table"]);
    assert!(
        table.stdout.contains(&format!("| {id} | started |   it |")),
        "{table:?}"
    );
    let health = s.etcdctl(&["endpoint", "health"]);
    assert!(health.ok, "{health:?}");
    let text = format!("{}{}", health.stdout, health.stderr);
    assert!(
        text.contains(&format!(
            "{} is healthy: successfully committed proposal",
            s.endpoint()
        )),
        "{text}"
    );
    let status = s.etcdctl(&["endpoint", "status"]);
    assert!(status.ok, "{status:?}");
    // "endpoint, id, version, db size, is leader, is learner, term, index, applied, errors"
    let fields: Vec<&str> = status.stdout.trim().split(", ").collect();
    assert_eq!(fields[0], s.endpoint());
    assert_eq!(fields[1], id);
    assert!(fields[2].starts_with("3.4."), "{status:?}");
    assert_eq!(fields[4], "true", "the only member leads");
    assert_eq!(fields[5], "false");
    let json = s.etcdctl(&["endpoint", "status", "-w", "json"]);
    let id_dec = u64::from_str_radix(&id, 16).unwrap();
    assert!(
        json.stdout.contains(&format!("\"member_id\":{id_dec}")),
        "{json:?}"
    );
    assert!(
        json.stdout.contains(&format!("\"leader\":{id_dec}")),
        "{json:?}"
    );
    for field in [
        "\"raftIndex\":",
        "\"raftTerm\":",
        "\"dbSize\":",
        "\"version\":\"3.4.",
    ] {
        assert!(json.stdout.contains(field), "{field} missing: {json:?}");
    }
}

/// Regression: glommio could not open the WAL's directory under a relative data dir, and
/// the default one (`./default.keel`) is relative.
#[test]
fn relative_data_dir_works() {
    let s = Server::start_relative("relative");
    s.etcdctl(&["put", "k", "v"]).expect_ok("OK\n");
    s.etcdctl(&["get", "k"]).expect_ok("k\nv\n");
    assert!(s.dir.join("data/member/wal").is_dir());
}

/// A bad flag value stops the binary at once with etcd's wording and exit status 2.
#[test]
fn bad_flag_values_exit_2_with_a_clear_message() {
    if !common::is_keel() {
        return; // etcd's exit status and text differ slightly
    }
    let out = std::process::Command::new(common::server_binary())
        .args(["--snapshot-count", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value \"lots\" for flag -snapshot-count"),
        "{err}"
    );
    let out = std::process::Command::new(common::server_binary())
        .args(["--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("flag provided but not defined: -no-such-flag"));
}
