//! Flags, run header and latency summaries shared by the benchmarks.

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::path::PathBuf;

/// The flags a mode was given, checked against its declared list (`flags.rs`).
pub struct Flags {
    given: HashMap<String, String>,
    declared: Vec<&'static str>,
    mode: String,
}

/// What `Flags::parse` found instead of flags to run with.
#[derive(Debug, PartialEq)]
pub enum NotRun {
    /// `--help` / `-h`: the text to print, exit 0.
    Help(String),
    /// A bad command line: the message, exit 2.
    Error(String),
}

impl Flags {
    /// Reads `args` for `mode`: an undeclared flag, a flag without its value or a stray
    /// word is an error; `--help` is the mode's help.
    pub fn parse(mode: &str, args: &[String]) -> Result<Flags, NotRun> {
        let specs = crate::flags::specs(mode)
            .ok_or_else(|| NotRun::Error(format!("unknown mode {mode:?}")))?;
        let parsed = keel::proxy::args::parse(args, &specs)
            .map_err(|e| NotRun::Error(format!("keel-bench {mode}: {e}")))?;
        if parsed.help {
            return Err(NotRun::Help(crate::flags::help(mode, &specs)));
        }
        if let Some(word) = parsed.positional.first() {
            return Err(NotRun::Error(format!(
                "keel-bench {mode}: unexpected argument {word:?}"
            )));
        }
        let given = specs
            .iter()
            .filter(|s| parsed.given(s.name))
            .map(|s| (s.name.to_string(), parsed.get(&specs, s.name).to_string()))
            .collect();
        Ok(Flags {
            given,
            declared: specs.iter().map(|s| s.name).collect(),
            mode: mode.to_string(),
        })
    }

    fn value(&self, name: &str) -> Option<&String> {
        assert!(
            self.declared.contains(&name),
            "keel-bench {}: reads --{name}, which bench/src/flags.rs does not declare for it",
            self.mode
        );
        self.given.get(name)
    }

    pub fn u64(&self, name: &str, default: u64) -> u64 {
        self.value(name).map_or(default, |v| {
            v.replace('_', "").parse().unwrap_or_else(|_| {
                eprintln!("--{name}: not a number: {v}");
                std::process::exit(2)
            })
        })
    }

    /// A boolean switch: given, and not `=false`.
    pub fn has(&self, name: &str) -> bool {
        self.value(name).is_some_and(|v| v != "false")
    }

    pub fn opt(&self, name: &str) -> Option<String> {
        self.value(name).cloned()
    }

    pub fn str(&self, name: &str, default: &str) -> String {
        self.value(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    pub fn list(&self, name: &str, default: &[u64]) -> Vec<u64> {
        self.value(name).map_or(default.to_vec(), |v| {
            v.split(',')
                .map(|x| x.trim().parse().expect("number list"))
                .collect()
        })
    }

    /// A fresh directory for the run (removed first if it exists).
    pub fn dir(&self, what: &str) -> PathBuf {
        let dir = self.value("dir").map(PathBuf::from).unwrap_or_else(|| {
            std::env::temp_dir().join(format!("keel-bench-{what}-{}", std::process::id()))
        });
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create bench dir");
        dir
    }
}

pub fn print_run_header(cmd: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default();
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# keel-bench {cmd} | git {rev} | {cores} cores | {}",
        cpu.replace("model name\t: ", "")
    );
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// "p50 … p99.9 max" of a histogram recorded in microseconds.
pub fn percentiles_us(h: &Histogram<u64>) -> String {
    format!(
        "p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn switches_do_not_swallow_the_next_flag() {
        let f = Flags::parse(
            "put",
            &args(&[
                "--sequential-keys",
                "--clients",
                "4",
                "--json",
                "--prefix=false",
            ]),
        )
        .unwrap();
        assert!(f.has("sequential-keys"));
        assert_eq!(f.u64("clients", 1), 4);
        assert!(f.has("json"));
        assert!(!f.has("prefix"));
        assert!(!f.has("prefill"));
        assert_eq!(f.u64("total", 7), 7, "the code's default when not given");
    }

    #[test]
    fn unknown_flags_and_stray_words_are_errors() {
        let err = |mode: &str, a: &[&str]| match Flags::parse(mode, &args(a)) {
            Err(NotRun::Error(e)) => e,
            other => panic!("{a:?}: {:?}", other.map(|_| ())),
        };
        assert_eq!(
            err("put", &["--duraton", "5"]),
            "keel-bench put: unknown flag: --duraton"
        );
        assert!(err("put", &["--clients"]).contains("needs an argument"));
        assert!(err("compare", &["--quick", "extra"]).contains("unexpected argument"));
        assert!(err("compare", &["--clients", "4"]).contains("unknown flag"));
        assert!(err("nope", &[]).contains("unknown mode"));
    }

    #[test]
    fn help_lists_every_flag_with_its_default() {
        for mode in [
            "compare",
            "failover",
            "maintenance",
            "gateway",
            "proxy",
            "scrape",
        ]
        .into_iter()
        .chain(["watch-memory", "wal", "store"])
        .chain(crate::flags::LOAD_MODES.iter().copied())
        {
            let Err(NotRun::Help(text)) = Flags::parse(mode, &args(&["--help"])) else {
                panic!("{mode} --help");
            };
            for s in crate::flags::specs(mode).unwrap() {
                assert!(
                    text.contains(&format!("--{}", s.name)),
                    "{mode}: {}",
                    s.name
                );
            }
        }
    }

    /// Every flag the code reads (`.u64("x"`, `.has("x"` …) is declared for some mode, so
    /// the run-time check in `Flags::value` cannot fire on a mode CI does not run.
    #[test]
    fn every_flag_read_is_declared() {
        let sources = [
            ("compare", include_str!("compare.rs")),
            ("compare", include_str!("cluster.rs")),
            ("failover", include_str!("failover.rs")),
            ("maintenance", include_str!("maintenance.rs")),
            ("gateway", include_str!("gateway.rs")),
            ("proxy", include_str!("proxy.rs")),
            ("scrape", include_str!("scrape.rs")),
            ("put", include_str!("load.rs")),
            ("wal", include_str!("wal.rs")),
            ("store", include_str!("store.rs")),
        ];
        for (mode, src) in sources {
            let declared = crate::flags::specs(mode).unwrap();
            for getter in [".u64(\"", ".str(\"", ".has(\"", ".opt(\"", ".list(\""] {
                for (at, _) in src.match_indices(getter) {
                    let rest = &src[at + getter.len()..];
                    let name = &rest[..rest.find('"').unwrap()];
                    assert!(
                        declared.iter().any(|s| s.name == name),
                        "{mode}: --{name} is read but not declared"
                    );
                }
            }
        }
    }
}
