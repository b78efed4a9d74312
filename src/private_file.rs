//! Files only the owner may read: cookie and signing keys, the service-token key, TLS keys, the
//! saved login state (it names addresses and client IPs). One writer for all of them, so each
//! is written whole (a reader never sees half a file, a crash leaves the old one) and carries
//! mode 0600 from the moment it exists: a leftover temporary file of an interrupted write is
//! removed first, never reused with whatever rights it had.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Creates `path` with `bytes`, failing with `AlreadyExists` when it is there (another process
/// made it first: the caller reads theirs).
pub(crate) fn create_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    make_parent(path)?;
    let mut f = options().create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces `path` with `bytes` through a temporary file renamed over it.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    make_parent(path)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let result = options()
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // The rename survives a power loss only once the folder is synced; where a folder cannot
    // be opened for that, the rename still happened and the next write tries again.
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn make_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

fn options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_private_whole_and_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/key.json");
        create_new(&p, b"one").unwrap();
        assert_eq!(
            create_new(&p, b"two").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        replace(&p, b"three").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        #[cfg(unix)]
        assert_eq!(mode(&p), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_leftover_temporary_file_never_lends_its_rights() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        let tmp = dir.path().join("state.json.tmp");
        std::fs::write(&tmp, b"stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace(&p, b"fresh").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert!(!tmp.exists());
    }
}
