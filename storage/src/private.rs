//! The data directory holds the cluster CA key, the admin token, sealed
//! provider secrets and the whole gateway state: it is for the node's user
//! alone. Directories are created 0700 and files 0600; what an earlier
//! version (or a copy with the wrong umask) left open to the group or to
//! others is closed at start.

use std::io;
use std::path::Path;

/// Mode of every directory the node creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the node creates.
pub const FILE_MODE: u32 = 0o600;
/// Group and other permission bits: none of them may be set on the node's files.
const SHARED_BITS: u32 = 0o077;

/// Takes group and other permissions off everything this process creates
/// from now on. RocksDB creates its files (SSTs, WAL, MANIFEST, LOG) itself
/// and takes no mode, so the umask is the only way to make them private.
/// Process-wide, and idempotent.
pub fn restrict_umask() {
    #[cfg(unix)]
    {
        use rustix::fs::Mode;
        rustix::process::umask(Mode::RWXG | Mode::RWXO);
    }
}

/// Creates `path` and any missing parents with mode 0700. When `path`
/// already exists with group or other permissions, takes them away and
/// returns the mode it had, so the caller can say so.
pub fn private_dir(path: &Path) -> io::Result<Option<u32>> {
    create_dir(path)?;
    tighten(path)
}

/// `path` and its missing parents, each created 0700.
fn create_dir(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(path)
}

/// Options for a new file only the owner can read: mode 0600, whatever the umask.
pub fn private_file_options() -> std::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options
}

/// Gets the data directory ready before anything is written into it: the
/// umask (for RocksDB's files), the directory itself 0700, and every file
/// and directory already under it closed to the group and others. Each
/// change of mode is logged. An entry this user may not change (owned by
/// another user) is logged with what to do rather than stopping the node.
pub fn secure_data_dir(path: &Path) -> io::Result<()> {
    restrict_umask();
    create_dir(path)?;
    let mut fixed = 0;
    let mut refused = Vec::new();
    let mut note = |entry: &Path, result: io::Result<Option<u32>>| -> io::Result<()> {
        match result {
            Ok(Some(old)) if entry == path => {
                tracing::warn!(
                    path = %path.display(),
                    old_mode = format!("{old:o}"),
                    new_mode = format!("{DIR_MODE:o}"),
                    "the data directory was open to other users; it is not any more"
                );
            }
            Ok(Some(_)) => fixed += 1,
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => refused.push(entry.display().to_string()),
            Err(e) => return Err(e),
        }
        Ok(())
    };
    note(path, tighten(path))?;
    tighten_tree(path, &mut note)?;
    if fixed > 0 {
        tracing::warn!(
            path = %path.display(),
            entries = fixed,
            "files under the data directory were open to other users; took group and other permissions away"
        );
    }
    if !refused.is_empty() {
        tracing::warn!(
            path = %path.display(),
            entries = ?refused,
            "cannot make these private (owned by another user?); run `chmod -R go-rwx` on the data directory as their owner"
        );
    }
    Ok(())
}

/// Removes group and other bits from `path` (not following a symlink);
/// returns the old mode when it changed.
#[cfg(unix)]
fn tighten(path: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(None);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & SHARED_BITS == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !SHARED_BITS))?;
    Ok(Some(mode))
}

#[cfg(not(unix))]
fn tighten(_path: &Path) -> io::Result<Option<u32>> {
    Ok(None)
}

/// Tightens every entry below `root` (not `root` itself), telling `note`
/// what happened to each. Symlinks are left alone: their targets are not
/// ours to change.
fn tighten_tree(
    root: &Path,
    note: &mut impl FnMut(&Path, io::Result<Option<u32>>) -> io::Result<()>,
) -> io::Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                note(&dir, Err(e))?;
                continue;
            }
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            match tighten(&path) {
                // RocksDB may delete an obsolete file between the listing and here.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                result => note(&path, result)?,
            }
            if entry.file_type()?.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_data_dir_is_private_and_an_old_one_is_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b/data");
        secure_data_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700, "parents we create are private too");

        let old = tmp.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::create_dir(old.join("db")).unwrap();
        std::fs::write(old.join("db/000001.sst"), b"x").unwrap();
        std::fs::write(old.join("admin-token"), b"t").unwrap();
        for (p, m) in [("", 0o755), ("db", 0o775), ("db/000001.sst", 0o644), ("admin-token", 0o640)] {
            std::fs::set_permissions(old.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::os::unix::fs::symlink("/etc/hostname", old.join("link")).unwrap();
        assert_eq!(private_dir(&old).unwrap(), Some(0o755), "the old mode is reported");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        secure_data_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
        assert_eq!(mode(&old.join("db")), 0o700);
        assert_eq!(mode(&old.join("db/000001.sst")), 0o600);
        assert_eq!(mode(&old.join("admin-token")), 0o600);
        let mut changed = 0;
        tighten_tree(&old, &mut |_, r| {
            changed += usize::from(r?.is_some());
            Ok(())
        })
        .unwrap();
        assert_eq!(changed, 0, "nothing left to fix");
    }

    #[test]
    fn private_files_are_0600_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("secret");
        private_file_options().write(true).create_new(true).open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
