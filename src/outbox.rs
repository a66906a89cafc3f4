//! The outbox (SPEC §7): every file we put there appears whole or not at all.
//!
//! * Workbooks, logs and reports are written to a hidden temporary file *inside the outbox* (same volume, so
//!   the final rename is atomic), flushed to disk, then renamed to their final name **without ever replacing
//!   an existing file**: a taken name gets `_1`, `_2`, … before the extension. The temporary names start with
//!   `.` and end with `.tmp`, so a watcher using our default `exclude` globs (or VTTL's next module) never picks
//!   up a half-written file.
//! * The Seclytic logs (`IPs_Seclytic_<U>.log`, …) are UTF-8 with CRLF line ends, one `<item>|<value>` line each,
//!   without duplicate lines, and are created only when they have a line.
//! * `VTTL_Error.log` is appended to, one `<RFC 3339 time> <message>` line per error, with the token redacted
//!   by the caller.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Name of the error log in the outbox.
pub const ERROR_LOG: &str = "VTTL_Error.log";

/// Suffix of the temporary files we write in the outbox.
const TEMP_SUFFIX: &str = ".tmp";

/// Creates a temporary file in `dir` for an output that will be called `final_name`.
pub fn temp_file_for(dir: &Path, final_name: &str) -> std::io::Result<tempfile::NamedTempFile> {
    // Keep the hint short and free of path separators; the random part makes it unique.
    let hint: String = final_name.chars().filter(|c| c.is_alphanumeric()).take(24).collect();
    tempfile::Builder::new().prefix(&format!(".{hint}.")).suffix(TEMP_SUFFIX).tempfile_in(dir)
}

/// Splits `name` into stem and extension (with its dot), e.g. `a.b.csv` → (`a.b`, `.csv`).
fn split_name(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    }
}

/// The candidate names for `name`: `name`, `stem_1.ext`, `stem_2.ext`, …
pub fn candidate_name(name: &str, attempt: u32) -> String {
    if attempt == 0 {
        return name.to_string();
    }
    let (stem, ext) = split_name(name);
    format!("{stem}_{attempt}{ext}")
}

/// Flushes `temp` to disk and renames it into `dir` as `name` (or `_1`, `_2`, … when taken). Returns the path.
pub fn persist_no_clobber(temp: tempfile::NamedTempFile, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    temp.as_file().sync_all()?;
    let mut temp = temp;
    for attempt in 0..10_000 {
        let target = dir.join(candidate_name(name, attempt));
        match temp.persist_noclobber(&target) {
            Ok(_) => {
                sync_dir(dir);
                return Ok(target);
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => temp = e.file,
            Err(e) => return Err(e.error),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("no free name for {name} in {}", dir.display()),
    ))
}

/// Makes a rename durable (Unix: fsync the directory; Windows has no equivalent and does not need one).
pub fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Writes `bytes` to `dir/name` atomically, never replacing an existing file. Returns the final path.
pub fn write_new_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let mut temp = temp_file_for(dir, name)?;
    temp.write_all(bytes)?;
    persist_no_clobber(temp, dir, name)
}

/// Checks that the outbox exists (creating it if needed) and that we can create files in it.
pub fn ensure_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = temp_file_for(dir, "probe")?;
    probe.close()
}

/// A per-workbook unique string: Unix epoch seconds when processing started, strictly increasing within this
/// process so two workbooks started in the same second never share log names.
pub fn unique_epoch_seconds() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The four Seclytic log files of one workbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeclyticLog {
    Ips,
    Hashes,
    Urls,
    References,
}

impl SeclyticLog {
    pub const ALL: [SeclyticLog; 4] =
        [SeclyticLog::Ips, SeclyticLog::Hashes, SeclyticLog::Urls, SeclyticLog::References];

    /// File name for unique string `unique`.
    pub fn file_name(self, unique: u64) -> String {
        let prefix = match self {
            SeclyticLog::Ips => "IPs",
            SeclyticLog::Hashes => "Hashes",
            SeclyticLog::Urls => "URLs",
            SeclyticLog::References => "references",
        };
        format!("{prefix}_Seclytic_{unique}.log")
    }
}

/// Lines of one Seclytic log, de-duplicated, in order of first appearance.
#[derive(Debug, Default, Clone)]
pub struct LogLines {
    lines: Vec<String>,
    seen: HashSet<String>,
}

impl LogLines {
    /// Adds `<item>|<value>` unless already present. CR/LF inside the value are replaced by spaces.
    pub fn push(&mut self, item: &str, value: &str) {
        let line = format!("{item}|{value}").replace(['\r', '\n'], " ");
        if self.seen.insert(line.clone()) {
            self.lines.push(line);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The file content: UTF-8, CRLF after every line.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.len() + 2).sum());
        for line in &self.lines {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

/// Picks the unique string for a workbook's logs: `start`, or the next second whose log names are all free in
/// `dir` (another process may have used the same second).
pub fn free_unique(dir: &Path, start: u64) -> u64 {
    let mut unique = start;
    while SeclyticLog::ALL.iter().any(|log| dir.join(log.file_name(unique)).exists()) {
        unique += 1;
    }
    unique
}

/// Writes the Seclytic logs of one workbook under `<prefix>_Seclytic_<U>.log` names that are all free, with `U`
/// starting at `start`: each file is created without ever replacing one, and when another process took one of
/// the names first, the ones already written are removed and the next `U` is tried — so a workbook's logs always
/// share one `U`, even when several instances write into one outbox in the same second. Returns `U` and the
/// paths written.
pub fn write_log_set(
    dir: &Path,
    start: u64,
    logs: &[(SeclyticLog, Vec<u8>)],
) -> std::io::Result<(u64, Vec<PathBuf>)> {
    let mut unique = free_unique(dir, start);
    'attempt: for _ in 0..10_000 {
        let mut written = Vec::new();
        for (log, bytes) in logs {
            let name = log.file_name(unique);
            let mut temp = temp_file_for(dir, &name)?;
            temp.write_all(bytes)?;
            temp.as_file().sync_all()?;
            let target = dir.join(&name);
            match temp.persist_noclobber(&target) {
                Ok(_) => written.push(target),
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                    for path in &written {
                        let _ = std::fs::remove_file(path);
                    }
                    unique = free_unique(dir, unique + 1);
                    continue 'attempt;
                }
                Err(e) => return Err(e.error),
            }
        }
        sync_dir(dir);
        return Ok((unique, written));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("no free log names in {}", dir.display()),
    ))
}

/// Appends one line to `<dir>/VTTL_Error.log`. Failures to log are reported on stderr, never fatal.
pub fn append_error_log(dir: &Path, message: &str) {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let line = format!("{time} {}\r\n", message.replace(['\r', '\n'], " "));
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(ERROR_LOG))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = result {
        eprintln!("warning: cannot write {}: {e}", dir.join(ERROR_LOG).display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_overwrites_and_numbers_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_new_file(dir.path(), "book.csv", b"one").unwrap();
        let b = write_new_file(dir.path(), "book.csv", b"two").unwrap();
        let c = write_new_file(dir.path(), "book.csv", b"three").unwrap();
        assert_eq!(a.file_name().unwrap(), "book.csv");
        assert_eq!(b.file_name().unwrap(), "book_1.csv");
        assert_eq!(c.file_name().unwrap(), "book_2.csv");
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&c).unwrap(), b"three");
        // no temporary file is left behind
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(candidate_name("noext", 2), "noext_2");
        assert_eq!(candidate_name(".hidden", 1), ".hidden_1");
    }

    #[test]
    fn log_lines_are_unique_crlf() {
        let mut log = LogLines::default();
        log.push("example.com", "203.0.113.5");
        log.push("example.com", "203.0.113.5");
        log.push("example.com", "http://x/\ny");
        assert_eq!(log.to_bytes(), b"example.com|203.0.113.5\r\nexample.com|http://x/ y\r\n");
    }

    #[test]
    fn unique_strings_increase_and_skip_taken_names() {
        let a = unique_epoch_seconds();
        let b = unique_epoch_seconds();
        assert!(b > a);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SeclyticLog::Urls.file_name(100)), "x").unwrap();
        assert_eq!(free_unique(dir.path(), 100), 101);
        assert_eq!(free_unique(dir.path(), 102), 102);
    }

    #[test]
    fn a_log_set_shares_one_free_unique_string() {
        let dir = tempfile::tempdir().unwrap();
        // Another process already wrote a references log for second 200.
        std::fs::write(dir.path().join(SeclyticLog::References.file_name(200)), "theirs").unwrap();
        let logs = vec![(SeclyticLog::Ips, b"a|1\r\n".to_vec()), (SeclyticLog::Urls, b"a|u\r\n".to_vec())];
        let (unique, paths) = write_log_set(dir.path(), 200, &logs).unwrap();
        assert_eq!(unique, 201);
        assert_eq!(
            paths,
            vec![dir.path().join("IPs_Seclytic_201.log"), dir.path().join("URLs_Seclytic_201.log")]
        );
        // A second workbook in the same second gets the next one.
        let (next, _) = write_log_set(dir.path(), 200, &logs).unwrap();
        assert_eq!(next, 202);
        assert_eq!(
            std::fs::read(dir.path().join(SeclyticLog::References.file_name(200))).unwrap(),
            b"theirs"
        );
    }

    #[test]
    fn error_log_appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        append_error_log(dir.path(), "first");
        append_error_log(dir.path(), "second\nline");
        let text = std::fs::read_to_string(dir.path().join(ERROR_LOG)).unwrap();
        let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" first") && lines[1].ends_with(" second line"));
        assert!(chrono::DateTime::parse_from_rfc3339(lines[0].split(' ').next().unwrap()).is_ok());
    }
}
