//! The layers point one way: every `crate::<module>` a source file under `src/<module>`
//! names is a module of a strictly lower layer (`src/lib.rs` draws them). A new upward
//! reference (say `src/raft` naming `crate::api`) fails here, naming file and line.

use std::path::Path;

/// Each top-level module and its layer (higher layers may name lower ones only).
const LAYERS: &[(&str, u32)] = &[
    // Leaves: generated messages, executors and response queues, flags, directories,
    // CRC-32C; above them bbolt files and etcd WAL membership.
    ("pb", 0),
    ("runtime", 0),
    ("config", 0),
    ("durable_dir", 0),
    ("crc32c", 0),
    ("bbolt", 1),
    ("etcd_wal", 1),
    ("test_rng", 0),
    ("testing", 0),
    // Per-core counters and their rendering.
    ("metrics", 0),
    ("failpoint", 1),
    ("tls", 1),
    ("grpc", 2),
    // Storage and log.
    ("mvcc", 2),
    ("wal", 2),
    // Users, roles, permissions and tokens (checks requests, which are mvcc's types).
    ("auth", 3),
    // The cross-core messages and the errors they carry.
    ("mesh", 4),
    // Per-core state: shard index replicas, watch hubs, lease caches.
    ("shard", 5),
    ("watch", 5),
    ("lease", 5),
    // The core: the raft core, then each core's node (which talks to it).
    ("raft", 6),
    ("node", 7),
    // The services, then boot.
    ("api", 8),
    ("server", 9),
    // The proxies: gRPC client and server, TLS, no store.
    ("proxy", 9),
];

fn layer_of(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module names `crate::<name>` references in `line` (comments dropped).
fn referenced(line: &str) -> Vec<&str> {
    let code = line.split("//").next().unwrap_or("");
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        names.push(&after[..end]);
        rest = &after[end..];
    }
    names
}

#[test]
fn no_module_names_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = first.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer_of(module)
            .unwrap_or_else(|| panic!("src/{module} has no layer: add it to LAYERS"));
        for (n, line) in std::fs::read_to_string(file).unwrap().lines().enumerate() {
            for name in referenced(line) {
                checked += 1;
                if name == module {
                    continue;
                }
                let Some(theirs) = layer_of(name) else {
                    panic!(
                        "src/{} line {}: crate::{name} has no layer",
                        rel.display(),
                        n + 1
                    );
                };
                if theirs >= own {
                    violations.push(format!(
                        "src/{}:{}: {module} (layer {own}) names crate::{name} (layer {theirs})",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} references found: is the scan broken?"
    );
    assert!(
        violations.is_empty(),
        "upward references:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scan_sees_references() {
    assert_eq!(
        referenced("use crate::api::errors; // crate::raft"),
        vec!["api"]
    );
    assert_eq!(
        referenced("let x = crate::mesh::Applied::x(crate::mvcc::Y);"),
        vec!["mesh", "mvcc"]
    );
}
