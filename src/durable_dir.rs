//! Directory creation that survives a power cut.
//!
//! Runs on: boot (the main thread or an executor before it serves anything; the calls
//! block briefly, as other boot-time file opens do).
//!
//! `mkdir` makes a directory entry in the parent; Linux promises that entry survives a
//! power cut only once the parent itself is fsynced (fsync(2): "an explicit fsync() on a
//! file descriptor for the directory is also needed"). A member whose data dir, `member/`
//! or `member/snap/` entry is lost comes back as a new, empty member although it had
//! acknowledged writes — a raft member that forgot its log and votes. `keel-chaos
//! powercut` found exactly that on its forgetful disk at a first boot (ext4's journal
//! usually hides it).
//!
//! [`create_dir_all`] creates every missing component of a path, in order, fsyncing each
//! new directory's parent, and always fsyncs the parent of the last component (a previous
//! boot may have created it and died before its parent was synced).

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Creates `dir` and its missing ancestors with `mode`, each durably (see the module doc).
pub fn create_dir_all(dir: &Path, mode: u32) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    loop {
        match std::fs::symlink_metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(p);
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for d in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {}
            // Another process made it meanwhile; its entry still needs the parent fsync.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_parent(d)?;
    }
    if missing.is_empty() {
        sync_parent(dir)?;
    }
    Ok(())
}

/// fsyncs the directory that holds `path`'s entry.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

/// fsyncs a directory itself (its entries: files renamed into or out of it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a small file and makes it and its directory entry durable.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_every_missing_component_with_the_mode() {
        let tmp = std::env::temp_dir().join(format!("keel-durable-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let deep = tmp.join("a/b/c");
        create_dir_all(&deep, 0o700).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            let m = std::fs::metadata(tmp.join(d)).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{d}");
        }
        // Existing: no error, nothing changes.
        create_dir_all(&deep, 0o755).unwrap();
        assert_eq!(
            std::fs::metadata(&deep).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A file in the way is an error.
        std::fs::write(tmp.join("f"), b"x").unwrap();
        assert!(create_dir_all(&tmp.join("f/g"), 0o700).is_err());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
