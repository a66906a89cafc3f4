//! File moves of the hot folder that never overwrite anything.
//!
//! `std::fs::rename` silently replaces an existing target on Unix and Windows. Moving an input to `processed`,
//! to `failed` or back to the inbox must never destroy a file of the same name, so every such move goes
//! through [`move_no_clobber`]: an atomic no-replace rename (Linux/macOS `renameat2(RENAME_NOREPLACE)`,
//! Windows `MoveFileEx` without `REPLACE_EXISTING`, elsewhere link + unlink — all through `tempfile`'s
//! `persist_noclobber`, with deletion disabled so a failure never removes the source), trying `name`, then
//! `stem_1.ext`, `stem_2.ext`, … like the outbox. When the target folder is on another volume (a configured
//! `processed` elsewhere), the file is copied to a hidden temporary name there, flushed, renamed into place,
//! and only then removed from its source.

use std::path::{Path, PathBuf};

use crate::outbox;

/// Moves `src` into `dir` as `name` (or `_1`, `_2`, … when taken). Returns the new path.
pub fn move_no_clobber(src: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    move_trying(src, dir, name, 10_000)
}

/// [`move_no_clobber`] under `name` only: `AlreadyExists` when it is taken.
pub fn move_exactly(src: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    move_trying(src, dir, name, 1)
}

fn move_trying(src: &Path, dir: &Path, name: &str, attempts: u32) -> std::io::Result<PathBuf> {
    for attempt in 0..attempts {
        let target = dir.join(outbox::candidate_name(name, attempt));
        match rename_no_replace(src, &target) {
            Ok(()) => {
                sync_dir(dir);
                return Ok(target);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) if is_cross_device(&e) => return copy_then_remove(src, dir, name, attempts),
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("no free name for {name} in {}", dir.display()),
    ))
}

/// An atomic rename that fails with `AlreadyExists` instead of replacing `target`.
fn rename_no_replace(src: &Path, target: &Path) -> std::io::Result<()> {
    // Make sure a symlink or a directory never gets here: only regular files are moved.
    let meta = std::fs::symlink_metadata(src)?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::other(format!("{} is not a regular file", src.display())));
    }
    crate::os::move_no_replace(src, target)
}

fn is_cross_device(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::CrossesDevices {
        return true;
    }
    // EXDEV on Unix, ERROR_NOT_SAME_DEVICE (17) on Windows.
    #[cfg(unix)]
    let code = 18;
    #[cfg(windows)]
    let code = 17;
    #[cfg(not(any(unix, windows)))]
    let code = -1;
    e.raw_os_error() == Some(code)
}

/// The move across volumes: a complete copy appears in `dir` before the source goes away.
fn copy_then_remove(src: &Path, dir: &Path, name: &str, attempts: u32) -> std::io::Result<PathBuf> {
    let mut temp = outbox::temp_file_for(dir, name)?;
    let mut source = std::fs::File::open(src)?;
    std::io::copy(&mut source, temp.as_file_mut())?;
    // The moved file keeps its mode, as a rename would (Unix; Windows files take their folder's rules).
    #[cfg(unix)]
    if let Ok(meta) = source.metadata() {
        let _ = temp.as_file().set_permissions(meta.permissions());
    }
    drop(source);
    let target = outbox::persist_trying(temp, dir, name, attempts)?;
    // A source that cannot be removed (held open by another program) must not leave the file in two places:
    // the copy goes, and the move fails as a whole (the caller tries again or reports it).
    if let Err(e) = std::fs::remove_file(src) {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(target)
}

/// Makes a rename durable (Unix: fsync the directory).
pub use crate::outbox::sync_dir;

/// Writes `bytes` to `path` atomically (temporary file beside it, flushed, renamed over the old content).
/// Used for our own bookkeeping files (leases, journals), which we do replace.
pub fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut temp =
        tempfile::Builder::new().prefix(".write.").suffix(".tmp").tempfile_in(crate::os::long_path(dir))?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(crate::os::long_path(path)).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_replaces_and_keeps_the_source_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("a.csv"), b"old").unwrap();
        std::fs::write(&a, b"new").unwrap();
        let moved = move_no_clobber(&a, &dest, "a.csv").unwrap();
        assert_eq!(moved, dest.join("a_1.csv"));
        assert_eq!(std::fs::read(dest.join("a.csv")).unwrap(), b"old");
        assert_eq!(std::fs::read(&moved).unwrap(), b"new");
        assert!(!a.exists());
        // a missing source is an error and creates nothing
        let err = move_no_clobber(&a, &dest, "a.csv").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        // a directory is never moved
        std::fs::create_dir(dir.path().join("d.csv")).unwrap();
        assert!(move_no_clobber(&dir.path().join("d.csv"), &dest, "d.csv").is_err());
        assert!(dir.path().join("d.csv").is_dir());
    }

    /// The copy made when a move crosses volumes keeps the file's mode, as a rename does (a copy through a
    /// temporary file would otherwise make it owner-only).
    #[cfg(unix)]
    #[test]
    fn a_move_across_volumes_keeps_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        for mode in [0o640, 0o664, 0o600] {
            let source = dir.path().join("book.csv");
            std::fs::write(&source, b"rows").unwrap();
            std::fs::set_permissions(&source, std::fs::Permissions::from_mode(mode)).unwrap();
            let moved = copy_then_remove(&source, &dest, "book.csv", 10_000).unwrap();
            assert_eq!(std::fs::read(&moved).unwrap(), b"rows");
            assert_eq!(std::fs::metadata(&moved).unwrap().permissions().mode() & 0o777, mode, "{moved:?}");
            assert!(!source.exists());
        }
    }

    /// A source another program holds open without sharing deletion (an antivirus scanner, Excel) cannot be
    /// removed after the copy: the copy goes again and the move fails, instead of the file being in two places.
    #[cfg(windows)]
    #[test]
    fn a_move_across_volumes_whose_source_stays_leaves_no_copy() {
        use std::os::windows::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let source = dir.path().join("book.csv");
        std::fs::write(&source, b"rows").unwrap();
        const FILE_SHARE_READ: u32 = 1;
        let held = std::fs::OpenOptions::new().read(true).share_mode(FILE_SHARE_READ).open(&source).unwrap();
        assert!(copy_then_remove(&source, &dest, "book.csv", 10_000).is_err());
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0, "the copy was removed");
        drop(held);
        assert_eq!(std::fs::read(&source).unwrap(), b"rows");
    }

    #[test]
    fn write_replace_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease");
        write_replace(&path, b"1").unwrap();
        write_replace(&path, b"2").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
