//! The node's own tests: rounds merged in an outbox apply like separate ones (rebalance
//! steps included), a serializable read waits for the newest round sent to any core, and
//! a read part routed by split keys a step changed is routed again.

use super::*;
use crate::mvcc::{DeleteRangeRequest, Op, PutRequest};
use crate::runtime::block_on;
use crate::shard::tests::{capturing_store, fresh_dir};
use crate::shard::Shard;
use std::sync::Arc;

/// A round of everything `store` applied since the last one, at raft `index`, with the
/// boot round's `splits` and the rebalance `moves` after its changes.
fn round_of(
    store: &mut crate::mvcc::Store,
    index: u64,
    splits: Option<Arc<Vec<Vec<u8>>>>,
    moves: Vec<(usize, Arc<crate::shard::Move>)>,
) -> crate::mesh::Applied {
    store.publish();
    crate::mesh::Applied {
        index,
        revision: store.current_revision(),
        compact_revision: store.compact_revision(),
        raft_term: 2,
        leader: 1,
        learner: false,
        changes: vec![Arc::new(store.take_changes())],
        snapshot: store.backend().snapshot(),
        replies: Vec::new(),
        splits,
        moves,
        revoked_leases: Default::default(),
        auth: Default::default(),
        alarms: Default::default(),
        db_bytes: 0,
    }
}

#[test]
fn merged_rounds_apply_like_separate_ones() {
    use crate::mesh::CoreMsg;
    let dir = fresh_dir("merge");
    block_on(async move {
        let mut store = capturing_store(&dir).await;
        let splits = Arc::new(vec![b"m".to_vec()]);
        let boot = store.backend().snapshot();
        // Both shards, fed round by round and merged.
        let boot_both =
            || [0, 1].map(|i| Shard::boot(i, splits.clone(), boot.clone(), 0, 1, 0).unwrap());
        let mut one = boot_both();
        let mut merged = boot_both();
        let mut rounds = Vec::new();
        for round in 0..3u64 {
            for k in ["a", "b", "c", "x"] {
                let put = PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: round.to_be_bytes().to_vec(),
                    ..Default::default()
                };
                store.apply(&Op::Put(put)).unwrap();
            }
            if round == 1 {
                store
                    .apply(&Op::DeleteRange(DeleteRangeRequest {
                        key: b"b".to_vec(),
                        ..Default::default()
                    }))
                    .unwrap();
                store.compact(store.current_revision() - 2).unwrap();
            }
            // Round 1 ends with a rebalance step: "c", the key below "m", goes to shard 1
            // (which then takes round 2's put of it).
            let moves = if round == 1 {
                let m = crate::shard::Move::plan(&store.index(), &splits, 0, -1, 10).unwrap();
                assert_eq!((m.from, m.to, m.lo.as_slice()), (0, 1, &b"c"[..]));
                vec![(1, Arc::new(m))]
            } else {
                Vec::new()
            };
            let a = round_of(&mut store, round + 1, None, moves);
            for s in &mut one {
                s.take_round(&a);
            }
            rounds.push(a);
        }
        // An outbox merges a round into the round queued before it, never across
        // another message.
        let outbox = Outbox::default();
        outbox.push(CoreMsg::Applied(rounds[0].share()));
        outbox.push(CoreMsg::RangeReply {
            seq: 1,
            index: 1,
            body: Err(crate::mesh::ServerError::Stopped),
        });
        outbox.push(CoreMsg::Applied(rounds[1].share()));
        outbox.push(CoreMsg::Applied(rounds[2].share()));
        let queued = [outbox.pop().await, outbox.pop().await, outbox.pop().await];
        match &queued {
            [Some(CoreMsg::Applied(a)), Some(CoreMsg::RangeReply { .. }), Some(CoreMsg::Applied(b))] =>
            {
                assert_eq!((a.index, a.changes.len()), (1, 1));
                assert_eq!((b.index, b.changes.len()), (3, 2));
                assert_eq!(b.revision, rounds[2].revision);
            }
            _ => panic!("outbox order"),
        }
        let mut all = rounds.remove(0);
        for r in rounds {
            all.absorb(r);
        }
        assert_eq!(all.changes.len(), 3);
        assert_eq!(all.index, 3);
        assert_eq!(all.moves.len(), 1);
        for s in &mut merged {
            s.take_round(&all);
        }
        let every = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        let at = store.current_revision();
        for (m, o) in merged.iter().zip(&one) {
            assert_eq!(m.applied_index(), o.applied_index());
            assert_eq!(m.revision(), o.revision());
            assert_eq!(m.range(&every, at), o.range(&every, at));
        }
        // a and b (put again after its delete) on shard 0; c (moved, with its last put)
        // and x on shard 1.
        let keys = |s: &Shard| s.range(&every, at).unwrap().kvs.len();
        assert_eq!((keys(&merged[0]), keys(&merged[1])), (2, 2));
        let c = merged[1].get(b"c", at).unwrap().unwrap();
        assert_eq!(c.value, 2u64.to_be_bytes());
        assert_eq!(c.version, 3);
    });
}

/// Found by keel-chaos: two clients of one member, on different cores, saw serializable
/// reads go back in revision (a core a round behind another served the second read). A
/// core now applies the member's newest round sent out (`RoundMark`) before it serves a
/// serializable read.
#[test]
fn a_serializable_read_waits_for_the_newest_round_sent_to_any_core() {
    use crate::mesh::{CoreId, CoreMsg, RoundMark};
    use crate::raft::{RaftClient, RaftSender};
    use glommio::channels::local_channel;
    use std::rc::Rc;
    let dir = fresh_dir("mark");
    block_on(async move {
        let mut store = capturing_store(&dir).await;
        let mut round = |index: u64, value: &str, splits: Option<Arc<Vec<Vec<u8>>>>| {
            store
                .apply(&Op::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                }))
                .unwrap();
            round_of(&mut store, index, splits, Vec::new())
        };
        let first = round(1, "one", Some(Arc::new(Vec::new())));
        let second = round(2, "two", None);
        let (tx, _rx) = local_channel::new_bounded(4);
        let client = Rc::new(RaftClient::new(
            CoreId(0),
            RaftSender::Local(Rc::new(tx)),
            4,
        ));
        let mark = RoundMark::default();
        let node = Node::new(CoreId(0), 1, client, mark.clone());
        mark.publish(1);
        node.handle(CoreMsg::Applied(first));
        let get = RangeRequest {
            key: b"k".to_vec(),
            serializable: true,
            ..Default::default()
        };
        let (r, _) = node.range(get.clone(), false).await.unwrap();
        assert_eq!(r.kvs[0].value, b"one");
        // Round 2 went out to every core (another may already serve it); this core's
        // copy is still in flight: the read waits for it rather than answer round 1.
        mark.publish(2);
        let mut read = Box::pin(node.range(get, false));
        assert!(
            futures_lite::future::poll_once(&mut read).await.is_none(),
            "served from a round older than one another core may have served"
        );
        node.handle(CoreMsg::Applied(second));
        let (r, _) = read.await.unwrap();
        assert_eq!(
            (r.kvs[0].value.as_slice(), r.header.revision),
            (&b"two"[..], 3)
        );
    });
}

/// A read part routed by split keys a rebalance step has changed since is refused by the
/// shard that moved, and routed again once the sender has applied that step: the read
/// then finds every key. (Served as routed, the two keys that moved would be missing:
/// the shard that had them has dropped them, and the sender has not taken them yet.)
#[test]
fn a_part_routed_by_split_keys_a_step_changed_is_routed_again() {
    use crate::mesh::{CoreId, CoreMsg, RoundMark};
    use crate::raft::{RaftClient, RaftSender};
    use glommio::channels::local_channel;
    use std::rc::Rc;
    let dir = fresh_dir("reroute");
    block_on(async move {
        let mut store = capturing_store(&dir).await;
        let splits = Arc::new(vec![b"f".to_vec()]);
        let round = |index: u64, first: bool, store: &mut crate::mvcc::Store| {
            let moves = if first {
                Vec::new()
            } else {
                // Shard 0 gives its two highest keys, d and e, to shard 1.
                let m = crate::shard::Move::plan(&store.index(), &splits, 0, -2, 10).unwrap();
                assert_eq!((m.lo.as_slice(), m.keys.len()), (&b"d"[..], 2));
                vec![(1, Arc::new(m))]
            };
            round_of(store, index, first.then(|| splits.clone()), moves)
        };
        for k in b'a'..=b'j' {
            store
                .apply(&Op::Put(PutRequest {
                    key: vec![k],
                    value: b"v".to_vec(),
                    ..Default::default()
                }))
                .unwrap();
        }
        let first = round(1, true, &mut store);
        let second = round(2, false, &mut store);
        let mark = RoundMark::default();
        let nodes: Vec<Rc<Node>> = (0..2u16)
            .map(|c| {
                let (tx, _rx) = local_channel::new_bounded(4);
                let client = Rc::new(RaftClient::new(
                    CoreId(c),
                    RaftSender::Local(Rc::new(tx)),
                    4,
                ));
                Node::new(CoreId(c), 2, client, mark.clone())
            })
            .collect();
        mark.publish(1);
        for n in &nodes {
            n.handle(CoreMsg::Applied(first.share()));
        }
        // Core 0 applies the step; core 1 has not yet, and reads everything.
        nodes[0].handle(CoreMsg::Applied(second.share()));
        let every = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            serializable: true,
            ..Default::default()
        };
        let mut read = Box::pin(nodes[1].range(every, false));
        // Delivers what each core has queued for the other.
        let pump = || {
            for (from, to) in [(0, 1), (1, 0)] {
                loop {
                    let msg = nodes[from].outbox[to].queue.borrow_mut().pop_front();
                    let Some(msg) = msg else { break };
                    nodes[to].handle(msg);
                }
            }
        };
        assert!(futures_lite::future::poll_once(&mut read).await.is_none());
        pump();
        // Refused: the read waits for core 1 to apply the step.
        assert!(futures_lite::future::poll_once(&mut read).await.is_none());
        nodes[1].handle(CoreMsg::Applied(second.share()));
        let result = loop {
            if let Some(r) = futures_lite::future::poll_once(&mut read).await {
                break r;
            }
            pump();
        };
        let (r, _) = result.unwrap();
        let keys: Vec<u8> = r.kvs.iter().map(|kv| kv.key[0]).collect();
        assert_eq!(keys, (b'a'..=b'j').collect::<Vec<u8>>());
        assert_eq!(r.count, 10);
    });
}
