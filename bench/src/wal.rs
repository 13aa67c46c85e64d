//! WAL group commit: append B-byte records in batches of N, one write + one fdatasync per
//! batch. Reports records/s and the latency of each sync (write + fdatasync).

use crate::util::{histogram, percentiles_us, Flags};
use keel::wal::{Entry, Preallocation, Wal, WalOptions};
use std::time::Instant;

pub fn run(flags: &Flags) {
    let syncs = flags.u64("syncs", 2000);
    let record_bytes = flags.u64("record-bytes", 256) as usize;
    let batches = flags.list("batches", &[1, 8, 64, 256]);
    let prealloc = match flags.str("prealloc", "fallocate").as_str() {
        "zero" => Preallocation::ZeroFill,
        "none" => Preallocation::None,
        _ => Preallocation::Fallocate,
    };
    let dsync = flags.str("dsync", "on") != "off";
    let dir = flags.dir("wal");
    println!("# preallocation {prealloc:?}, O_DSYNC writes {dsync}");
    println!(
        "# {syncs} syncs per batch size, {record_bytes}-byte entries, dir {}",
        dir.display()
    );
    println!("| batch | records/s | MB/s | sync latency |");
    println!("| --- | --- | --- | --- |");
    for (i, &batch) in batches.iter().enumerate() {
        let wal_dir = dir.join(format!("wal-{i}"));
        std::fs::create_dir_all(&wal_dir).unwrap();
        let line = keel::runtime::block_on(one(
            wal_dir,
            syncs,
            batch as usize,
            record_bytes,
            prealloc,
            dsync,
        ));
        println!("{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn one(
    dir: std::path::PathBuf,
    syncs: u64,
    batch: usize,
    record_bytes: usize,
    preallocation: Preallocation,
    dsync_writes: bool,
) -> String {
    let opts = WalOptions {
        preallocation,
        dsync_writes,
        ..WalOptions::default()
    };
    let mut wal = Wal::create(&dir, b"bench", opts).await.expect("wal create");
    let mut hist = histogram();
    let data = bytes::Bytes::from(vec![0x5au8; record_bytes]);
    let mut index = 0u64;
    let started = Instant::now();
    for _ in 0..syncs {
        let entries: Vec<Entry> = (0..batch)
            .map(|_| {
                index += 1;
                Entry {
                    entry_type: 0,
                    term: 1,
                    index,
                    data: data.clone(),
                    context: bytes::Bytes::new(),
                }
            })
            .collect();
        let t = Instant::now();
        wal.append_entries(&entries);
        wal.sync().await.expect("wal sync");
        hist.record(t.elapsed().as_micros().max(1) as u64).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let records = syncs as f64 * batch as f64;
    format!(
        "| {batch} | {:.0} | {:.1} | {} |",
        records / secs,
        records * record_bytes as f64 / secs / 1e6,
        percentiles_us(&hist)
    )
}
