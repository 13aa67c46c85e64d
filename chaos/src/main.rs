//! `keel-chaos run …` starts a cluster in network namespaces, injects faults while clients
//! record every operation, and checks the outcome; `keel-chaos check HISTORY.jsonl` checks
//! a recorded history alone; `keel-chaos powercut …` cuts the power under members whose
//! data dirs live on a disk that forgets what was not synced.

fn usage() -> ! {
    eprintln!(
        "usage: keel-chaos run --server BIN [--members 3|5] [--duration SECONDS] [--seed N] \
         [--faults kill,partition,pause,member,disk,clock,stray|all] [--clients N] [--out DIR] \
         [--server-arg ARG]... [--server-env NAME=VALUE]...\n       \
         keel-chaos powercut --server BIN [--members 1|3] [--cuts N] [--seed S] \
         [--loss all|prefix|torn|subset|mixed] [--at time|any|db|wal|mixed] [--dirs strict|journal] [--whom all|one|mixed] [--writers N] [--out DIR] [--server-arg ARG]... \
         [--server-env NAME=VALUE]...\n       \
         keel-chaos check [--states-max N] HISTORY.jsonl"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("check") => chaos::check::command(&args[1..]),
        Some("run") => match chaos::run::parse(&args[1..]) {
            Ok(opts) => chaos::run::run(opts),
            Err(e) => {
                eprintln!("keel-chaos run: {e}");
                usage()
            }
        },
        Some("powercut") => match chaos::powercut::parse(&args[1..]) {
            Ok(opts) => chaos::powercut::run(opts),
            Err(e) => {
                eprintln!("keel-chaos powercut: {e}");
                usage()
            }
        },
        _ => usage(),
    };
    std::process::exit(code);
}
