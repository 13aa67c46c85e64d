//! `keel`: flags → config → runtime.
//!
//! The client server (gRPC on 127.0.0.1:2379) is issue 3. Until it lands, the binary
//! opens the data dir the way the server will at boot — WAL recovery (torn tails
//! repaired, corruption refused with file and offset) and the db file's full check —
//! and reports what it found.

use keel::mvcc::{Store, StoreOptions};
use keel::wal::{Wal, WalOptions};
use std::path::PathBuf;
use std::process::ExitCode;

struct Flags {
    data_dir: PathBuf,
    wal_dir: Option<PathBuf>,
}

fn parse_flags() -> Result<Flags, String> {
    let mut flags = Flags {
        data_dir: PathBuf::from("default.keel"),
        wal_dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{name}: needs a value"))
        };
        match name.trim_start_matches('-') {
            "data-dir" => flags.data_dir = PathBuf::from(value()?),
            "wal-dir" => flags.wal_dir = Some(PathBuf::from(value()?)),
            "h" | "help" => return Err(String::new()),
            _ => return Err(format!("unknown flag: {arg}")),
        }
    }
    Ok(flags)
}

async fn check(flags: Flags) -> Result<(), String> {
    let member = flags.data_dir.join("member");
    let wal_dir = flags.wal_dir.unwrap_or_else(|| member.join("wal"));
    let db_path = member.join("snap").join("db");
    if !db_path.exists() && !Wal::exists(&wal_dir) {
        println!("keel: no data in {} yet", flags.data_dir.display());
        return Ok(());
    }
    let store = Store::open(&db_path, StoreOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    store.check().map_err(|e| e.to_string())?;
    println!(
        "keel: db {}: revision {}, compacted {}, consistent index {}",
        db_path.display(),
        store.current_revision(),
        store.compact_revision(),
        store.consistent_index()
    );
    if Wal::exists(&wal_dir) {
        let (wal, rec) = Wal::open(&wal_dir, WalOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        if let Some((file, offset, bytes)) = &rec.truncated_tail {
            println!(
                "keel: WAL torn tail repaired: {bytes} bytes at {}:{offset}",
                file.display()
            );
        }
        println!(
            "keel: WAL {}: last index {}, {} entries after the snapshot at {}",
            wal_dir.display(),
            wal.last_index(),
            rec.entries.len(),
            rec.snapshot.index
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let flags = match parse_flags() {
        Ok(f) => f,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("keel: {msg}");
            }
            eprintln!("usage: keel [--data-dir DIR] [--wal-dir DIR]");
            return ExitCode::from(2);
        }
    };
    println!("keel: the client server is not built yet (issue 3); checking the data dir");
    match keel::runtime::block_on(check(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::FAILURE
        }
    }
}
