//! `--force-new-cluster` (etcd's disaster recovery): a member of a dead 3-member cluster
//! restarted with its own flags plus `--force-new-cluster` keeps its data and becomes the
//! only member; the removal of the others is durable (a restart without the flag serves
//! the same one-member cluster).
//!
//! Also passes with `KEEL_TEST_SERVER=/usr/bin/etcd`. Waits are bounded by `LIVENESS`.

use crate::common;

use common::{is_keel, runtime, Cluster, FAST_ELECTIONS, LIVENESS};
use std::time::{Duration, Instant};

const KEYS: usize = 50;

/// The flags `Cluster::start` gave member `i`, for a restart with more.
fn member_flags(c: &Cluster, i: usize, extra: &[&str]) -> Vec<String> {
    let m = &c.members[i];
    let initial_cluster = c
        .names
        .iter()
        .zip(&c.members)
        .map(|(name, m)| format!("{name}={}", m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let mut a: Vec<String> = [
        "--name",
        &c.names[i],
        "--data-dir",
        m.data_dir.to_str().unwrap(),
        "--listen-client-urls",
        &m.client_url(),
        "--advertise-client-urls",
        &m.client_url(),
        "--listen-peer-urls",
        &m.peer_url(),
        "--initial-advertise-peer-urls",
        &m.peer_url(),
        "--initial-cluster",
        &initial_cluster,
        "--initial-cluster-token",
        &c.token,
        "--initial-cluster-state",
        "new",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(FAST_ELECTIONS.iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Retries etcdctl until it succeeds (the member may still be electing itself).
fn etcdctl_ok(c: &Cluster, i: usize, args: &[&str]) -> String {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let out = c.members[i].etcdctl(args);
        if out.ok {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {args:?} still fails after {LIVENESS:?}: {out:?}\n{}",
            c.members[i].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_alone_with_every_key(c: &Cluster, i: usize, keys: usize) {
    let list = etcdctl_ok(c, i, &["member", "list"]);
    assert_eq!(list.lines().count(), 1, "member list: {list}");
    assert!(list.contains(&c.members[i].peer_url()), "{list}");
    let values = etcdctl_ok(c, i, &["get", "k", "--prefix", "--print-value-only"]);
    let got: Vec<&str> = values.lines().collect();
    assert_eq!(got.len(), keys, "values: {values}");
    let status = etcdctl_ok(c, i, &["endpoint", "status", "-w", "json"]);
    let leader_is_me = status.contains(&format!("\"leader\":{}", c.ids[i]))
        && status.contains(&format!("\"member_id\":{}", c.ids[i]));
    assert!(leader_is_me, "{status}");
}

#[test]
fn force_new_cluster_restarts_one_member_alone_with_its_data() {
    let mut c = Cluster::start("force-new-cluster", 3, &FAST_ELECTIONS);
    runtime().block_on(async {
        let leader = c.wait_leader(&[0, 1, 2]).await;
        let mut cl = c.client(leader).await;
        for k in 0..KEYS {
            cl.put(format!("k{k:03}"), format!("v{k}"), None)
                .await
                .unwrap();
        }
        c.wait_caught_up(&[0, 1, 2]).await;
    });
    for i in 0..3 {
        c.member(i).stop();
    }
    // Member 1 (whichever led) comes back alone.
    let flags = member_flags(&c, 1, &["--force-new-cluster"]);
    c.member(1).set_args(flags);
    c.member(1).restart();
    check_alone_with_every_key(&c, 1, KEYS);
    if is_keel() {
        let log = c.member(1).log();
        assert!(log.contains("forcing restart of member"), "{log}");
    }
    etcdctl_ok(&c, 1, &["put", "k999", "after"]);
    assert_eq!(
        etcdctl_ok(&c, 1, &["get", "k999", "--print-value-only"]),
        "after\n"
    );
    // Durable: a restart without the flag is still the one-member cluster.
    c.member(1).stop();
    let flags = member_flags(&c, 1, &[]);
    c.member(1).set_args(flags);
    c.member(1).restart();
    check_alone_with_every_key(&c, 1, KEYS + 1);
    assert!(!c.member(1).log().contains("forcing restart"));
    etcdctl_ok(&c, 1, &["put", "k998", "again"]);
}
