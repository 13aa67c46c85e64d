//! The etcd version this member reports: Maintenance.Status, `/version`, the
//! `etcd_server_version` metric, the snapshot's cluster version. Set once at boot with
//! `--etcd-version` (default: the etcd 3.4 release whose API and e2e suite Keel follows);
//! clients decide features from it (Kubernetes turns on ConsistentListFromCache and
//! WatchList only for ≥ 3.4.31 or ≥ 3.5.13).
//!
//! Runs on: any core (read-only after boot).

use std::sync::OnceLock;

/// The default reported version.
pub const DEFAULT: &str = "3.4.23";

static SERVER: OnceLock<(String, String)> = OnceLock::new();

/// Sets the reported version (`MAJOR.MINOR.PATCH`), once, before the cores start. A second
/// call (tests that boot several servers in one process) keeps the first.
pub fn set(version: &str) -> Result<(), String> {
    let cluster = cluster_of(version)?;
    let _ = SERVER.set((version.to_string(), cluster));
    Ok(())
}

/// `MAJOR.MINOR.0` of a `MAJOR.MINOR.PATCH[-suffix]` version.
pub fn cluster_of(version: &str) -> Result<String, String> {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || p.parse::<u32>().is_err())
    {
        return Err(format!(
            "--etcd-version {version:?}: want MAJOR.MINOR.PATCH, e.g. 3.5.17"
        ));
    }
    if parts[0] != "3" {
        return Err(format!(
            "--etcd-version {version:?}: only 3.x versions are served"
        ));
    }
    Ok(format!("{}.{}.0", parts[0], parts[1]))
}

/// The server version reported (`3.4.23` unless set).
pub fn server() -> &'static str {
    SERVER.get().map_or(DEFAULT, |v| v.0.as_str())
}

/// The cluster version reported: the server version's `MAJOR.MINOR.0`.
pub fn cluster() -> &'static str {
    SERVER.get().map_or("3.4.0", |v| v.1.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_versions() {
        assert_eq!(super::cluster_of("3.5.17").unwrap(), "3.5.0");
        assert_eq!(super::cluster_of("3.4.31-keel").unwrap(), "3.4.0");
        assert!(super::cluster_of("3.5").is_err());
        assert!(super::cluster_of("2.3.1").is_err());
        assert!(super::cluster_of("x.y.z").is_err());
    }
}
