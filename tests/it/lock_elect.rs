//! The Lock and Election services (v3lock, v3election) against the real server binary.
//! Through etcdctl 3.4: `lock` (the key it prints, a second locker blocking until the
//! holder unlocks on SIGINT or its session lease expires after a kill -9, a command run
//! under the lock with ETCD_LOCK_KEY / ETCD_LOCK_REV) and `elect` (campaign, `-l` listen,
//! failover to the next candidate). Through the `etcd-client` crate: lock keys under
//! "name/" named by the lease in hex, waiting, fencing by create revision, release by
//! lease revocation; campaign, leader, proclaim, observe, resign, and the errors for no
//! leader and a stale leader key.
//!
//! Expectations are etcd 3.4.23's: every test also passes with
//! `KEEL_TEST_SERVER=/usr/bin/etcd`. Every wait is bounded, and every etcdctl child
//! started here is signalled only by its own PID.

use crate::common;

use common::{connect, grpc_status, runtime, Server};
use etcd_client::{
    GetOptions, LeaderKey, LeaseGrantOptions, LockOptions, ObserveStream, ProclaimOptions,
    ResignOptions,
};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// The keys under `prefix` with their (lease, create_revision), in key order.
fn keys_under(s: &Server, prefix: &str) -> Vec<(String, i64, i64)> {
    runtime().block_on(async {
        let mut c = connect(s).await;
        let r = c
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.lease(),
                    kv.create_revision(),
                )
            })
            .collect()
    })
}

/// Waits (10 s at most) until `prefix` holds `n` keys; returns them.
#[track_caller]
fn wait_keys(s: &Server, prefix: &str, n: usize) -> Vec<(String, i64, i64)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let k = keys_under(s, prefix);
        if k.len() == n {
            return k;
        }
        assert!(Instant::now() < deadline, "{prefix}: {k:?}, want {n} keys");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `name/<lease in lowercase hex, no padding>`, as etcd's concurrency package names keys.
fn lease_key(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

/// The lease a lock or election key is named after, as etcdctl prints lease IDs
/// (`%016x`: zero-padded, unlike the key).
#[track_caller]
fn key_lease(key: &str) -> String {
    let hex = key.rsplit_once('/').expect(key).1;
    format!("{:016x}", i64::from_str_radix(hex, 16).expect(key))
}

// ---------------------------------------------------------------------------------------
// etcdctl lock

#[test]
fn etcdctl_lock_waits_for_the_holder_to_unlock_on_sigint() {
    let s = Server::start("le-lock", &[]);
    let mut a = s.etcdctl_spawn(&["lock", "mylock"]);
    let out = a.wait_lines(2, WAIT);
    // The key, then its (empty) value.
    let key_a = out.strip_suffix("\n\n").expect(&out).to_string();
    let keys = keys_under(&s, "mylock/");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].0, key_a);
    assert_eq!(
        key_a,
        lease_key("mylock", keys[0].1),
        "named by its session lease"
    );
    s.etcdctl(&["get", &key_a])
        .expect_ok(&format!("{key_a}\n\n"));

    let mut b = s.etcdctl_spawn(&["lock", "mylock"]);
    // B has put its own key and now waits behind A's.
    let keys = wait_keys(&s, "mylock/", 2);
    let (key_b, lease_b, rev_b) = keys.iter().find(|k| k.0 != key_a).unwrap().clone();
    assert!(rev_b > keys.iter().find(|k| k.0 == key_a).unwrap().2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.stdout(), "", "B holds the lock while A does");
    assert!(b.running());

    // SIGINT: etcdctl unlocks (deletes its key) and exits 0; it does not revoke its
    // session lease, which stays until its TTL runs out.
    a.signal("INT");
    let st = a.exit();
    assert!(st.success(), "{st:?} {:?}", a.stderr());
    let out = b.wait_lines(2, WAIT);
    assert_eq!(out, format!("{key_b}\n\n"));
    assert_eq!(key_b, lease_key("mylock", lease_b));
    let keys = keys_under(&s, "mylock/");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].0, key_b);
    let lease_a = key_lease(&key_a);
    let t = s.etcdctl(&["lease", "timetolive", &lease_a]);
    assert!(
        t.stdout.contains("granted with TTL(10s)"),
        "A's session lease (default --ttl 10) outlives A: {t:?}"
    );
}

#[test]
fn etcdctl_lock_holder_killed_releases_when_its_session_expires() {
    let s = Server::start("le-lock-kill", &[]);
    let ttl_s = 5;
    let mut a = s.etcdctl_spawn(&["lock", &format!("--ttl={ttl_s}"), "mylock"]);
    let key_a = a.wait_lines(2, WAIT).trim_end().to_string();
    let lease_a = key_lease(&key_a);
    let t = s.etcdctl(&["lease", "timetolive", &lease_a]);
    assert!(t.stdout.contains("granted with TTL(5s)"), "{t:?}");
    let mut b = s.etcdctl_spawn(&["lock", "mylock"]);
    wait_keys(&s, "mylock/", 2);

    // kill -9: no unlock; A's key goes only when its session lease expires.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let keys = keys_under(&s, "mylock/");
    assert!(keys.iter().any(|k| k.0 == key_a), "{keys:?}");
    let out = b.wait_lines(2, Duration::from_secs(ttl_s) + WAIT);
    let key_b = out.trim_end();
    assert_ne!(key_b, key_a);
    assert!(key_b.starts_with("mylock/"), "{out:?}");
    s.etcdctl(&["lease", "timetolive", &lease_a])
        .expect_ok(&format!("lease {lease_a} already expired\n"));
    assert_eq!(keys_under(&s, "mylock/").len(), 1);
    assert!(b.running());
}

#[test]
fn etcdctl_lock_runs_a_command_holding_the_lock() {
    let s = Server::start("le-lock-cmd", &[]);
    let ep = s.endpoint();
    // The command sees its own key under the lock and etcdctl's variables.
    let script = "etcdctl --endpoints=\"$1\" get --prefix --keys-only cl/; \
                  echo \"key=$ETCD_LOCK_KEY rev=$ETCD_LOCK_REV\"";
    let c = s.etcdctl(&["lock", "cl", "--", "sh", "-c", script, "sh", &ep]);
    assert!(c.ok, "{c:?}");
    let (held, vars) = c.stdout.split_once("\n\n").expect(&c.stdout);
    assert!(held.starts_with("cl/"), "{c:?}");
    assert_eq!(vars, format!("key={held} rev=2\n"), "{c:?}");
    // Unlocked after the command: the key is gone (deleted at revision 3).
    let g = s.etcdctl(&["get", "-w", "json", "--prefix", "cl/"]);
    assert!(g.stdout.contains("\"revision\":3,"), "{g:?}");
    assert!(!g.stdout.contains("\"kvs\""), "{g:?}");

    // A failing command: etcdctl 3.4 reports its status and exits 1, not with that status.
    let out = Command::new("etcdctl")
        .arg(format!("--endpoints={ep}"))
        .args(["lock", "cl", "--", "sh", "-c", "exit 3"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Error: exit status 3"), "{err:?}");
    s.etcdctl(&["get", "--prefix", "cl/"]).expect_ok("");
    // The lock is free again: a plain run succeeds at once.
    s.etcdctl(&["lock", "cl", "true"]).expect_ok("");
}

// ---------------------------------------------------------------------------------------
// etcdctl elect

#[test]
fn etcdctl_elect_campaign_listen_and_failover() {
    let s = Server::start("le-elect", &[]);
    let listen = s.etcdctl_spawn(&["elect", "-l", "ele"]);
    let mut a = s.etcdctl_spawn(&["elect", "ele", "p1"]);
    let out_a = a.wait_lines(2, WAIT);
    let (key_a, val) = out_a.trim_end().split_once('\n').expect(&out_a);
    assert_eq!(val, "p1");
    let keys = keys_under(&s, "ele/");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(key_a, lease_key("ele", keys[0].1));
    s.etcdctl(&["get", key_a])
        .expect_ok(&format!("{key_a}\np1\n"));
    assert_eq!(
        listen.wait_lines(2, WAIT),
        out_a,
        "the listener sees the leader"
    );

    // B waits behind A; a second listener started now prints the current leader.
    let mut b = s.etcdctl_spawn(&["elect", "ele", "p2"]);
    let keys = wait_keys(&s, "ele/", 2);
    let key_b = keys.iter().find(|k| k.0 != key_a).unwrap().0.clone();
    let late = s.etcdctl_spawn(&["elect", "-l", "ele"]);
    assert_eq!(late.wait_lines(2, WAIT), out_a);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.stdout(), "");

    // A resigns on SIGINT and exits 0: B leads, both listeners see it.
    a.signal("INT");
    assert!(a.exit().success());
    let want = format!("{key_b}\np2\n");
    assert_eq!(b.wait_lines(2, WAIT), want);
    assert_eq!(listen.wait_lines(4, WAIT), format!("{out_a}{want}"));
    assert_eq!(late.wait_lines(4, WAIT), format!("{out_a}{want}"));

    // C waits; B is killed (no resign). Its key stays until its session lease (60 s)
    // ends, which revoking the lease stands in for; then C leads.
    let c = s.etcdctl_spawn(&["elect", "ele", "p3"]);
    let keys = wait_keys(&s, "ele/", 2);
    let key_c = keys.iter().find(|k| k.0 != key_b).unwrap().0.clone();
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.stdout(), "");
    assert_eq!(keys_under(&s, "ele/").len(), 2);
    let lease_b = key_lease(&key_b);
    let t = s.etcdctl(&["lease", "timetolive", &lease_b]);
    assert!(t.stdout.contains("granted with TTL(60s)"), "{t:?}");
    s.etcdctl(&["lease", "revoke", &lease_b])
        .expect_ok(&format!("lease {lease_b} revoked\n"));
    let want_c = format!("{key_c}\np3\n");
    assert_eq!(c.wait_lines(2, WAIT), want_c);
    assert_eq!(listen.wait_lines(6, WAIT), format!("{out_a}{want}{want_c}"));
}

// ---------------------------------------------------------------------------------------
// etcd-client: Lock

#[test]
fn lock_with_lease_waits_and_fences() {
    let s = Server::start("le-lock-client", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let l1 = c
            .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1a2b)))
            .await
            .unwrap()
            .id();
        let l2 = c
            .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x3c)))
            .await
            .unwrap()
            .id();
        let r = c
            .lock("mylock", Some(LockOptions::new().with_lease(l1)))
            .await
            .unwrap();
        assert_eq!(
            r.key(),
            b"mylock/1a2b",
            "name/ then the lease in hex, unpadded"
        );
        let rev1 = r.header().unwrap().revision();
        let g = c.get("mylock/1a2b", None).await.unwrap();
        let kv1 = g.kvs()[0].clone();
        assert_eq!((kv1.value(), kv1.lease()), (&b""[..], l1));
        assert_eq!(kv1.create_revision(), rev1);
        // Locking again with the same lease is the same acquisition: same key, at once.
        let r = c
            .lock("mylock", Some(LockOptions::new().with_lease(l1)))
            .await
            .unwrap();
        assert_eq!(r.key(), b"mylock/1a2b");

        // A second owner waits.
        let mut c2 = c.clone();
        let waiter = tokio::spawn(async move {
            c2.lock("mylock", Some(LockOptions::new().with_lease(l2)))
                .await
                .unwrap()
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let g = c.get("mylock/3c", None).await.unwrap();
            if g.count() == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the waiter never put its key");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "the second lock waits for the first");
        let u = c.unlock("mylock/1a2b").await.unwrap();
        let unlock_rev = u.header().unwrap().revision();
        let r2 = tokio::time::timeout(WAIT, waiter)
            .await
            .expect("the waiter gets the lock after unlock")
            .unwrap();
        assert_eq!(r2.key(), b"mylock/3c");
        assert!(r2.header().unwrap().revision() >= unlock_rev);
        // Fencing: the later owner's key was created later.
        let g = c.get("mylock/3c", None).await.unwrap();
        let kv2 = &g.kvs()[0];
        assert!(kv2.create_revision() > kv1.create_revision());
        assert_eq!(kv2.lease(), l2);
        assert_eq!(c.get("mylock/1a2b", None).await.unwrap().count(), 0);
        // Unlocking a key that is not there is not an error.
        c.unlock("mylock/1a2b").await.unwrap();
        c.unlock("mylock/3c").await.unwrap();
    });
}

#[test]
fn lock_released_by_lease_revoke_and_lock_without_lease() {
    let s = Server::start("le-lock-lease", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let l1 = c.lease_grant(60, None).await.unwrap().id();
        let l2 = c.lease_grant(60, None).await.unwrap().id();
        let k1 = c
            .lock("res", Some(LockOptions::new().with_lease(l1)))
            .await
            .unwrap()
            .key()
            .to_vec();
        assert_eq!(k1, lease_key("res", l1).into_bytes());
        let mut c2 = c.clone();
        let waiter = tokio::spawn(async move {
            c2.lock("res", Some(LockOptions::new().with_lease(l2)))
                .await
                .unwrap()
        });
        let deadline = Instant::now() + WAIT;
        while c
            .get(
                "res/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap()
            .count()
            < 2
        {
            assert!(Instant::now() < deadline, "the waiter never put its key");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!waiter.is_finished());
        // The holder's lease goes: its key with it, and the waiter owns the lock.
        c.lease_revoke(l1).await.unwrap();
        let r = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
        assert_eq!(r.key(), lease_key("res", l2).as_bytes());

        // Lock with an unknown lease.
        let e = c
            .lock("other", Some(LockOptions::new().with_lease(0x999)))
            .await
            .unwrap_err();
        let (code, msg) = grpc_status(e);
        assert_eq!(msg, "etcdserver: requested lease not found", "{code:?}");
        assert_eq!(code, tonic::Code::Unknown);
        assert_eq!(
            c.get("other/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap()
                .count(),
            0
        );

        // Without a lease the server grants one (a 60-s session lease) and names the key
        // after it; nobody keeps that lease alive.
        let r = c.lock("free", None).await.unwrap();
        let key = String::from_utf8(r.key().to_vec()).unwrap();
        let g = c.get(key.as_str(), None).await.unwrap();
        let lease = g.kvs()[0].lease();
        assert_ne!(lease, 0);
        assert_eq!(key, lease_key("free", lease));
        let t = c.lease_time_to_live(lease, None).await.unwrap();
        assert_eq!(t.granted_ttl(), 60);
    });
}

// ---------------------------------------------------------------------------------------
// etcd-client: Election

/// The (key, value) of the next leader an observe stream reports, within 10 s.
async fn next_leader(o: &mut ObserveStream) -> (String, String) {
    let r = tokio::time::timeout(WAIT, o.message())
        .await
        .expect("an observe response within 10 s")
        .expect("observe ok")
        .expect("observe open");
    let kv = r.kv().expect("a leader response has the leader's kv");
    (
        kv.key_str().unwrap().to_string(),
        kv.value_str().unwrap().to_string(),
    )
}

#[test]
fn election_campaign_leader_proclaim_observe_resign() {
    let s = Server::start("le-election", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let l1 = c
            .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0xe1)))
            .await
            .unwrap()
            .id();
        let l2 = c
            .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0xe2)))
            .await
            .unwrap()
            .id();
        let r = c.campaign("ele", "v1", l1).await.unwrap();
        let lead1 = r.leader().unwrap().clone();
        assert_eq!(lead1.name(), b"ele");
        assert_eq!(lead1.key(), b"ele/e1");
        assert_eq!(lead1.lease(), l1);
        let g = c.get("ele/e1", None).await.unwrap();
        assert_eq!(g.kvs()[0].value(), b"v1");
        assert_eq!(g.kvs()[0].lease(), l1);
        assert_eq!(lead1.rev(), g.kvs()[0].create_revision());

        let l = c.leader("ele").await.unwrap();
        let kv = l.kv().unwrap();
        assert_eq!((kv.key(), kv.value()), (&b"ele/e1"[..], &b"v1"[..]));

        // Observe: the current leader first, then every change.
        let mut obs = c.observe("ele").await.unwrap();
        assert_eq!(next_leader(&mut obs).await, ("ele/e1".into(), "v1".into()));

        // Proclaim: a new value under the same key, no new election.
        let p = c
            .proclaim(
                "v1b",
                Some(ProclaimOptions::new().with_leader(lead1.clone())),
            )
            .await
            .unwrap();
        let prev_rev = p.header().unwrap().revision();
        assert_eq!(next_leader(&mut obs).await, ("ele/e1".into(), "v1b".into()));
        let l = c.leader("ele").await.unwrap();
        assert_eq!(l.kv().unwrap().value(), b"v1b");
        assert_eq!(l.kv().unwrap().mod_revision(), prev_rev);
        assert_eq!(l.kv().unwrap().create_revision(), lead1.rev());

        // A second candidate waits until the leader resigns.
        let mut c2 = c.clone();
        let second = tokio::spawn(async move { c2.campaign("ele", "v2", l2).await.unwrap() });
        let deadline = Instant::now() + WAIT;
        while c.get("ele/e2", None).await.unwrap().count() == 0 {
            assert!(Instant::now() < deadline, "the candidate never put its key");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished());
        c.resign(Some(ResignOptions::new().with_leader(lead1.clone())))
            .await
            .unwrap();
        let r = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
        let lead2 = r.leader().unwrap().clone();
        assert_eq!(lead2.key(), b"ele/e2");
        assert!(lead2.rev() > lead1.rev());
        assert_eq!(next_leader(&mut obs).await, ("ele/e2".into(), "v2".into()));
        assert_eq!(c.get("ele/e1", None).await.unwrap().count(), 0);
        assert!(
            c.lease_time_to_live(l1, None).await.unwrap().ttl() > 0,
            "resign deletes the key, not the lease"
        );

        // The old leader key is stale now.
        let e = c
            .proclaim(
                "late",
                Some(ProclaimOptions::new().with_leader(lead1.clone())),
            )
            .await
            .unwrap_err();
        assert_eq!(
            grpc_status(e),
            (tonic::Code::Unknown, "election: not leader".to_string())
        );
        // Resigning with a stale key is a no-op that succeeds.
        c.resign(Some(ResignOptions::new().with_leader(lead1.clone())))
            .await
            .unwrap();
        assert_eq!(c.get("ele/e2", None).await.unwrap().count(), 1);

        // The last leader resigns: no leader.
        c.resign(Some(ResignOptions::new().with_leader(lead2)))
            .await
            .unwrap();
        let e = c.leader("ele").await.unwrap_err();
        assert_eq!(
            grpc_status(e),
            (tonic::Code::Unknown, "election: no leader".to_string())
        );
        let e = c.leader("never-campaigned").await.unwrap_err();
        assert_eq!(
            grpc_status(e),
            (tonic::Code::Unknown, "election: no leader".to_string())
        );
    });
}

#[test]
fn election_leader_lease_expiry_and_campaign_without_lease() {
    let s = Server::start("le-election-lease", &[]);
    runtime().block_on(async {
        let mut c = connect(&s).await;
        let l1 = c.lease_grant(60, None).await.unwrap().id();
        let l2 = c.lease_grant(60, None).await.unwrap().id();
        let lead1 = c
            .campaign("e", "one", l1)
            .await
            .unwrap()
            .leader()
            .unwrap()
            .clone();
        assert_eq!(lead1.key(), lease_key("e", l1).as_bytes());
        // Campaigning again with the same lease: the same key, the value proclaimed.
        let again = c
            .campaign("e", "one-b", l1)
            .await
            .unwrap()
            .leader()
            .unwrap()
            .clone();
        assert_eq!((again.key(), again.rev()), (lead1.key(), lead1.rev()));
        let l = c.leader("e").await.unwrap();
        assert_eq!(l.kv().unwrap().value(), b"one-b");

        let mut c2 = c.clone();
        let second = tokio::spawn(async move { c2.campaign("e", "two", l2).await.unwrap() });
        let deadline = Instant::now() + WAIT;
        while c
            .get(
                "e/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap()
            .count()
            < 2
        {
            assert!(Instant::now() < deadline, "the candidate never put its key");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The leader's lease ends: the next candidate leads.
        c.lease_revoke(l1).await.unwrap();
        let r = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
        assert_eq!(r.leader().unwrap().key(), lease_key("e", l2).as_bytes());
        let l = c.leader("e").await.unwrap();
        assert_eq!(l.kv().unwrap().value(), b"two");
        // A proclaim with a leader key naming a lease that is gone fails.
        let e = c
            .proclaim("x", Some(ProclaimOptions::new().with_leader(lead1)))
            .await
            .unwrap_err();
        assert_eq!(grpc_status(e).1, "election: not leader");

        // Without a lease the server grants a 60-s session lease for the candidate.
        let r = c.campaign("solo", "v", 0).await.unwrap();
        let lead = r.leader().unwrap().clone();
        assert_ne!(lead.lease(), 0);
        assert_eq!(lead.key(), lease_key("solo", lead.lease()).as_bytes());
        let t = c.lease_time_to_live(lead.lease(), None).await.unwrap();
        assert_eq!(t.granted_ttl(), 60);
        // A LeaderKey built by hand works like the one campaign returned.
        let by_hand = LeaderKey::new()
            .with_name("solo")
            .with_key(lead.key())
            .with_rev(lead.rev())
            .with_lease(lead.lease());
        c.proclaim("w", Some(ProclaimOptions::new().with_leader(by_hand)))
            .await
            .unwrap();
        assert_eq!(c.leader("solo").await.unwrap().kv().unwrap().value(), b"w");
    });
}
