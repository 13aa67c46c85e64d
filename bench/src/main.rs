//! keel-bench: Keel's benchmarks. Today: storage micro-benchmarks (issue 2).
//!
//! ```text
//! keel-bench wal   [--dir D] [--syncs N] [--record-bytes B] [--batches 1,8,64,256]
//! keel-bench store [--dir D] [--keys N] [--key-bytes K] [--val-bytes V] [--reads N]
//! ```
//! Every run prints the machine, the git revision and the settings beside the figures.

mod store;
mod util;
mod wal;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r.to_vec()),
        None => ("help", vec![]),
    };
    let opts = util::Flags::parse(&rest);
    util::print_run_header(cmd);
    match cmd {
        "wal" => wal::run(&opts),
        "store" => store::run(&opts),
        _ => {
            eprintln!(
                "usage: keel-bench wal|store [--dir D] [flags]\n  wal:   --syncs N --record-bytes B \
                 --batches 1,8,64,256\n  store: --keys N --key-bytes K --val-bytes V --reads N"
            );
            std::process::exit(2);
        }
    }
}
