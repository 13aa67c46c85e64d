//! Proxy mode: `keel grpc-proxy start` and `keel gateway start`, etcd's two proxies.
//!
//! - `gateway` (`tcp`): the L4 forwarder. Every accepted TCP connection is spliced to one
//!   of `--endpoints`, round robin over the ones that answer; an endpoint that refuses is
//!   left out for `--retry-delay`.
//! - `grpc-proxy`: serves the whole v3 API to its clients and forwards to the cluster, on a
//!   glommio executor per core. Identical watches share one upstream watch; serializable
//!   ranges are answered from a cache the shared watches keep fresh; lease keep-alives are
//!   coalesced per lease; everything else is forwarded as bytes (the caller's token with it).
//!
//! Runs on: the `keel` process's main thread parses and boots; then one executor per core.

pub mod args;
pub mod cache;
pub mod forward;
pub mod lease;
pub mod namespace;
pub mod register;
pub mod start;
pub mod tcp;
pub mod upstream;
pub mod watch;

use std::process::ExitCode;

/// Runs a proxy subcommand (`args` after `keel`); `None` if `args` names none.
pub fn run(args: &[String]) -> Option<ExitCode> {
    let (name, rest) = args.split_first()?;
    let result = match name.as_str() {
        "gateway" => tcp::main(rest),
        "grpc-proxy" => start::main(rest),
        _ => return None,
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    })
}

/// The verb after the subcommand: etcd's proxies know `start` only; no verb prints usage.
pub fn verb(positional: &[String], usage: &str) -> Result<(), String> {
    match positional {
        [v] if v == "start" => Ok(()),
        [] => {
            println!("{usage}");
            Ok(())
        }
        other => Err(format!("unknown command {:?}\n{usage}", other.join(" "))),
    }
}
