//! MVCC store on one core: apply puts, point and range reads at the current revision,
//! reopen (key index rebuild), and space after overwrite + compaction.

use crate::util::Flags;
use keel::mvcc::{PutRequest, RangeRequest, Store, StoreOptions};
use std::path::PathBuf;
use std::time::Instant;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Cfg {
    keys: u64,
    key_bytes: usize,
    val_bytes: usize,
    reads: u64,
    commit_every: u64,
}

fn key(cfg: &Cfg, i: u64) -> Vec<u8> {
    let mut k = (i % cfg.keys).to_be_bytes().to_vec();
    k.resize(cfg.key_bytes.max(8), b'k');
    k
}

pub fn run(flags: &Flags) {
    let cfg = Cfg {
        keys: flags.u64("keys", 1_000_000),
        key_bytes: flags.u64("key-bytes", 8) as usize,
        val_bytes: flags.u64("val-bytes", 256) as usize,
        reads: flags.u64("reads", 2_000_000),
        commit_every: flags.u64("commit-every", 10_000),
    };
    let dir = flags.dir("store");
    println!(
        "# {} keys, {}-byte keys, {}-byte values, commit every {} puts, dir {}",
        cfg.keys,
        cfg.key_bytes,
        cfg.val_bytes,
        cfg.commit_every,
        dir.display()
    );
    let db = dir.join("db");
    keel::runtime::block_on(bench(db, cfg));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Puts `count` keys starting at position `first` of a fixed permutation of the key
/// space (so a full round writes every key once, in an order random to the key index).
async fn load(store: &mut Store, cfg: &Cfg, first: u64, count: u64) -> f64 {
    let value = vec![0x61u8; cfg.val_bytes];
    let started = Instant::now();
    for i in first..first + count {
        // 2654435761 is odd and not a multiple of 5: a bijection mod 10^k and mod 2^k.
        let k = key(cfg, (i % cfg.keys).wrapping_mul(2_654_435_761) % cfg.keys);
        let req = PutRequest {
            key: k,
            value: value.clone(),
            ..Default::default()
        };
        store.put(&req).expect("put");
        if (i + 1) % cfg.commit_every == 0 {
            store.commit().await.expect("commit");
        }
    }
    store.commit().await.expect("commit");
    count as f64 / started.elapsed().as_secs_f64()
}

async fn bench(db: PathBuf, cfg: Cfg) {
    let mut store = Store::open(&db, StoreOptions::default())
        .await
        .expect("open");
    let puts = load(&mut store, &cfg, 0, cfg.keys).await;
    println!("apply puts (incl. commits): {puts:.0}/s");

    let started = Instant::now();
    let mut found = 0u64;
    for i in 0..cfg.reads {
        let req = RangeRequest {
            key: key(&cfg, splitmix64(i)),
            ..Default::default()
        };
        found += store.range(&req).expect("range").kvs.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "point reads, current revision: {:.0}/s ({found} found)",
        cfg.reads as f64 / secs
    );

    let range_reads = (cfg.reads / 100).max(1);
    let started = Instant::now();
    for i in 0..range_reads {
        let start = splitmix64(i) % cfg.keys.saturating_sub(100).max(1);
        let req = RangeRequest {
            key: key(&cfg, start),
            range_end: key(&cfg, start + 100),
            ..Default::default()
        };
        store.range(&req).expect("range");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "range reads of 100 keys: {:.0}/s",
        range_reads as f64 / secs
    );

    drop(store);
    let started = Instant::now();
    let mut store = Store::open(&db, StoreOptions::default())
        .await
        .expect("reopen");
    println!(
        "reopen ({} keys): {:.3} s",
        cfg.keys,
        started.elapsed().as_secs_f64()
    );

    // Steady state: overwrite 10% of the keys, compact to the current revision, commit;
    // ten times (every key rewritten once). The file should stay within 2x live data.
    let before = store.backend().stats();
    let tenth = (cfg.keys / 10).max(1);
    let mut rates = Vec::new();
    let mut compact_secs = 0.0;
    for round in 0..10 {
        rates.push(load(&mut store, &cfg, round * tenth, tenth).await);
        let rev = store.current_revision();
        let started = Instant::now();
        store.compact(rev).expect("compact");
        compact_secs += started.elapsed().as_secs_f64();
        store.commit().await.expect("commit");
    }
    let after = store.backend().stats();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    println!("overwrite 10% + compact, x10: {mean:.0} puts/s");
    println!(
        "compact after each 10% overwrite: {:.1} ms mean",
        compact_secs * 100.0
    );
    for (what, s) in [
        ("after load", before),
        ("after 10 overwrite+compact rounds", after),
    ] {
        println!(
            "space {what}: file {:.1} MiB, live payload {:.1} MiB, ratio {:.2}",
            s.file_bytes as f64 / 1048576.0,
            s.payload_bytes as f64 / 1048576.0,
            s.file_bytes as f64 / s.payload_bytes.max(1) as f64
        );
    }
}
