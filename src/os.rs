//! What file operations need on Windows beyond the standard library: the few calls that go to Win32 with a
//! raw path (renames through `tempfile`, our own no-replace move) get the long-path form, a move keeps the
//! file's attributes, and file-name lengths are counted as Windows counts them. Elsewhere these are the
//! identity or the plain call.
//!
//! * **Long paths.** The standard library turns a path of 248 characters or more into its `\\?\` form before
//!   calling Win32, but `tempfile`'s `persist` passes the path as it is to `MoveFileExW` and
//!   `SetFileAttributesW`, which then stop at 260 characters (the program has no `longPathAware` manifest). A
//!   claimed input sits ~60 characters deeper than its place in the inbox, so a long name on a deep share
//!   could be claimed and read but then never moved to `processed`/`failed`, and an output never published.
//!   [`long_path`] gives the `\\?\` (or `\\?\UNC\`) form of a path for those calls.
//! * **Moves keep attributes.** `tempfile`'s `persist` sets the file's attributes to `NORMAL` before renaming
//!   (and to `TEMPORARY` when the rename fails), so an input moved with it lost its read-only or hidden
//!   attribute. Inputs are moved with [`move_no_replace`] (`MoveFileExW` without `REPLACE_EXISTING`) instead.
//! * **Temporary attribute.** `tempfile` creates its files with `FILE_ATTRIBUTE_TEMPORARY`; a log published by
//!   a hard link to such a file would keep it (attributes belong to the file, not the name), and some backup
//!   tools skip temporary files. [`clear_temporary_attribute`] removes it before the link.

use std::borrow::Cow;
use std::path::Path;

/// `path` in the form Win32 accepts beyond 260 characters: absolute, with `\\?\` (`\\?\UNC\server\share\…` for
/// a share). Already-prefixed paths, and paths that cannot be made absolute or are not valid Unicode, are
/// returned as they are. Elsewhere: `path` itself.
pub fn long_path(path: &Path) -> Cow<'_, Path> {
    #[cfg(windows)]
    {
        let Ok(absolute) = std::path::absolute(path) else { return Cow::Borrowed(path) };
        let Some(text) = absolute.to_str() else { return Cow::Borrowed(path) };
        verbatim(text).map_or(Cow::Borrowed(path), |long| Cow::Owned(long.into()))
    }
    #[cfg(not(windows))]
    Cow::Borrowed(path)
}

/// The `\\?\` form of an absolute Windows path written with backslashes (what `std::path::absolute` gives):
/// `C:\a` → `\\?\C:\a`, `\\server\share\a` → `\\?\UNC\server\share\a`; `None` when it has one already or is
/// another kind of path (a device path, a relative one).
#[cfg_attr(not(any(windows, test)), allow(dead_code))]
fn verbatim(text: &str) -> Option<String> {
    if text.starts_with(r"\\?\") || text.starts_with(r"\\.\") {
        return None;
    }
    let bytes = text.as_bytes();
    if bytes.len() >= 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'\\' {
        return Some(format!(r"\\?\{text}"));
    }
    text.strip_prefix(r"\\").filter(|rest| !rest.is_empty()).map(|rest| format!(r"\\?\UNC\{rest}"))
}

/// Renames `src` to `target`, failing with `AlreadyExists` instead of replacing a file there. On Windows
/// `MoveFileExW` without `REPLACE_EXISTING`, on long paths, keeping the file's attributes; a move to another
/// volume fails (`ERROR_NOT_SAME_DEVICE`) for the caller to copy. Elsewhere: `tempfile`'s no-replace rename
/// (`renameat2(RENAME_NOREPLACE)` on Linux, `renamex_np` on macOS, link + unlink otherwise).
pub fn move_no_replace(src: &Path, target: &Path) -> std::io::Result<()> {
    #[cfg(windows)]
    {
        use windows_sys::Win32::Storage::FileSystem::MoveFileExW;
        let (from, to) = (wide(&long_path(src)), wide(&long_path(target)));
        // SAFETY: both are NUL-terminated UTF-16 strings that live across the call.
        if unsafe { MoveFileExW(from.as_ptr(), to.as_ptr(), 0) } == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(windows))]
    {
        let mut path = tempfile::TempPath::try_from_path(src)?;
        // Never delete the source, whatever happens.
        path.disable_cleanup(true);
        path.persist_noclobber(target).map_err(|e| e.error)
    }
}

/// Removes `FILE_ATTRIBUTE_TEMPORARY` from `path` (Windows; elsewhere nothing). Failures are ignored: the
/// attribute is a hint, never a reason not to publish.
pub fn clear_temporary_attribute(path: &Path) {
    #[cfg(windows)]
    {
        use windows_sys::Win32::Storage::FileSystem::{
            FILE_ATTRIBUTE_NORMAL, FILE_ATTRIBUTE_TEMPORARY, GetFileAttributesW, INVALID_FILE_ATTRIBUTES,
            SetFileAttributesW,
        };
        let name = wide(&long_path(path));
        // SAFETY: `name` is a NUL-terminated UTF-16 string that lives across both calls.
        unsafe {
            let attributes = GetFileAttributesW(name.as_ptr());
            if attributes != INVALID_FILE_ATTRIBUTES && attributes & FILE_ATTRIBUTE_TEMPORARY != 0 {
                let kept = attributes & !FILE_ATTRIBUTE_TEMPORARY;
                SetFileAttributesW(name.as_ptr(), if kept == 0 { FILE_ATTRIBUTE_NORMAL } else { kept });
            }
        }
    }
    #[cfg(not(windows))]
    let _ = path;
}

/// The length of a file name as the file system limits it: UTF-16 units on Windows (255 at most, whatever
/// the script), bytes elsewhere (255 on most Unix file systems, so a CJK character counts 3).
pub fn name_length(name: &str) -> usize {
    #[cfg(windows)]
    return name.encode_utf16().count();
    #[cfg(not(windows))]
    name.len()
}

#[cfg(windows)]
fn wide(path: &Path) -> Vec<u16> {
    use std::os::windows::ffi::OsStrExt;
    path.as_os_str().encode_wide().chain(std::iter::once(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbatim_forms() {
        assert_eq!(verbatim(r"C:\Inbox\book.csv").as_deref(), Some(r"\\?\C:\Inbox\book.csv"));
        assert_eq!(
            verbatim(r"\\server\share\in\book.csv").as_deref(),
            Some(r"\\?\UNC\server\share\in\book.csv")
        );
        assert_eq!(verbatim(r"\\?\C:\already"), None);
        assert_eq!(verbatim(r"\\.\pipe\x"), None);
        assert_eq!(verbatim(r"relative\path"), None);
        assert_eq!(verbatim(r"\\"), None);
    }

    #[test]
    fn name_length_counts_what_the_file_system_limits() {
        let japanese = "報告書".repeat(30); // 90 characters, 270 bytes of UTF-8
        if cfg!(windows) {
            assert_eq!(name_length(&japanese), 90);
        } else {
            assert_eq!(name_length(&japanese), 270);
        }
        assert_eq!(name_length("book.csv"), 8);
    }

    /// On Windows the long form of a path names the same file, whatever its length (Wine does not enforce the
    /// 260-character limit, so this checks the form, not the limit); a move keeps a read-only attribute and
    /// never replaces a file.
    #[test]
    fn moves_on_long_paths_keep_attributes_and_never_replace() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(100)).join("e".repeat(100));
        std::fs::create_dir_all(&deep).unwrap();
        let src = deep.join(format!("{}.csv", "f".repeat(80)));
        std::fs::write(&src, b"input").unwrap();
        let mut read_only = std::fs::metadata(&src).unwrap().permissions();
        read_only.set_readonly(true);
        std::fs::set_permissions(&src, read_only).unwrap();
        let target = deep.join("moved.csv");
        std::fs::write(&target, b"already there").unwrap();
        let refused = move_no_replace(&src, &target).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&target).unwrap(), b"already there");
        let free = deep.join("free.csv");
        move_no_replace(&src, &free).unwrap();
        assert_eq!(std::fs::read(&free).unwrap(), b"input");
        assert!(!src.exists());
        assert!(
            std::fs::metadata(&free).unwrap().permissions().readonly(),
            "the attribute went with the file"
        );
        assert!(long_path(&free).to_str().unwrap().ends_with("free.csv"));
        #[cfg(windows)]
        assert!(long_path(&free).to_str().unwrap().starts_with(r"\\?\"));
        let mut writable = std::fs::metadata(&free).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        writable.set_readonly(false);
        std::fs::set_permissions(&free, writable).unwrap();
    }
}
