//! keel-bench: Keel's benchmarks. Today: storage micro-benchmarks (issue 2).
//!
//! ```text
//! keel-bench wal   [--dir D] [--syncs N] [--record-bytes B] [--batches 1,8,64,256]
//! keel-bench store [--dir D] [--keys N] [--key-bytes K] [--val-bytes V] [--reads N]
//! keel-bench put   --endpoint HOST:PORT [--clients 1,64] [--conns 1] [--total N] [--server-pid P]
//! ```
//! Every run prints the machine, the git revision and the settings beside the figures.

mod put;
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
        "put" => put::run(&opts),
        _ => {
            eprintln!(
                "usage: keel-bench wal|store|put [--dir D] [flags]\n  wal:   --syncs N --record-bytes B \
                 --batches 1,8,64,256\n  store: --keys N --key-bytes K --val-bytes V --reads N\n  put:   --endpoint HOST:PORT --clients 1,64 --conns 1 --total N --server-pid P"
            );
            std::process::exit(2);
        }
    }
}
