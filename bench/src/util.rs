//! Flags, run header and latency summaries shared by the benchmarks.

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::path::PathBuf;

pub struct Flags(HashMap<String, String>);

impl Flags {
    pub fn parse(args: &[String]) -> Flags {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                eprintln!("unexpected argument {a}");
                std::process::exit(2);
            };
            match name.split_once('=') {
                Some((k, v)) => map.insert(k.to_string(), v.to_string()),
                // A flag followed by another flag (or nothing) is a boolean switch.
                None => match it.clone().next() {
                    Some(next) if !next.starts_with("--") => {
                        map.insert(name.to_string(), it.next().cloned().unwrap_or_default())
                    }
                    _ => map.insert(name.to_string(), "true".to_string()),
                },
            };
        }
        Flags(map)
    }

    pub fn u64(&self, name: &str, default: u64) -> u64 {
        self.0.get(name).map_or(default, |v| {
            v.replace('_', "").parse().unwrap_or_else(|_| {
                eprintln!("--{name}: not a number: {v}");
                std::process::exit(2)
            })
        })
    }

    /// A boolean switch: given, and not `=false`.
    pub fn has(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|v| v != "false")
    }

    pub fn opt(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    pub fn str(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    pub fn list(&self, name: &str, default: &[u64]) -> Vec<u64> {
        self.0.get(name).map_or(default.to_vec(), |v| {
            v.split(',')
                .map(|x| x.trim().parse().expect("number list"))
                .collect()
        })
    }

    /// A fresh directory for the run (removed first if it exists).
    pub fn dir(&self, what: &str) -> PathBuf {
        let dir = self.0.get("dir").map(PathBuf::from).unwrap_or_else(|| {
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

    #[test]
    fn switches_do_not_swallow_the_next_flag() {
        let args: Vec<String> = ["--sequential-keys", "--clients", "4", "--json", "--x=false"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let f = Flags::parse(&args);
        assert!(f.has("sequential-keys"));
        assert_eq!(f.u64("clients", 1), 4);
        assert!(f.has("json"));
        assert!(!f.has("x"));
        assert!(!f.has("missing"));
    }
}
