//! Which files of the inbox are candidates, and when a candidate is ready to be taken (SPEC §9).
//!
//! * **Names.** A file is a candidate when its name matches an `include` glob and no `exclude` glob (globs
//!   match the file name only, case-insensitively, since analysts on Windows write `BOOK.CSV`). Whatever the
//!   globs say, we never take what we or the enricher write ourselves, so an outbox can safely be the inbox of
//!   another instance: hidden names (`.*`, the enricher's temporary files), `*.report.json`,
//!   `*_Seclytic_*.log`, `VTTL_Error.log`, and `*.error.txt`.
//! * **Kinds.** Only regular files: directories (a folder called `x.csv` is not a file) and symbolic links
//!   (we never follow a link out of the inbox) are skipped, the latter with one warning per name.
//! * **Settling.** Each candidate's size and modification time are sampled at every scan; it is ready once
//!   they stayed the same for `settle_ms` of our own monotonic clock. An `.xlsx` must in addition open as a
//!   zip archive (its central directory sits at the end, so a half-copied file fails); one that is stable but
//!   still does not open is taken anyway after [`xlsx_grace`] more, so a truly corrupt workbook ends up in
//!   `failed` instead of waiting forever. CSV has no end marker: settling (and the default `*.tmp`/`*.part`
//!   excludes for producers that write under a temporary name) is all there is.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// How long a stable `.xlsx` that does not open is waited for before it is taken anyway (and fails).
pub fn xlsx_grace(settle: Duration) -> Duration {
    (settle * 10).max(Duration::from_secs(3))
}

/// The `include` / `exclude` globs plus the names we never take.
#[derive(Debug, Clone)]
pub struct NameFilter {
    include: GlobSet,
    exclude: GlobSet,
}

impl NameFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<NameFilter, globset::Error> {
        Ok(NameFilter { include: glob_set(include)?, exclude: glob_set(exclude)? })
    }

    /// True when a file called `name` may be taken.
    pub fn accepts(&self, name: &str) -> bool {
        !is_reserved_name(name) && self.include.is_match(name) && !self.exclude.is_match(name)
    }
}

fn glob_set(globs: &[String]) -> Result<GlobSet, globset::Error> {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        builder.add(GlobBuilder::new(glob).case_insensitive(true).literal_separator(true).build()?);
    }
    builder.build()
}

/// Names written by this program (or its temporary files), never inputs whatever the globs say.
pub fn is_reserved_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with('.')
        || ends_with_maybe_numbered(&lower, ".report", ".json")
        || ends_with_maybe_numbered(&lower, ".error", ".txt")
        || lower == crate::outbox::ERROR_LOG.to_ascii_lowercase()
        || (lower.ends_with(".log") && lower.contains("_seclytic_"))
}

/// True when `name` ends with `stem` + `ext`, or with `stem` + `_<digits>` + `ext`: the names a report or an
/// error note gets when its usual name is taken (`book.csv.report_1.json`, see `outbox::candidate_name`).
fn ends_with_maybe_numbered(name: &str, stem: &str, ext: &str) -> bool {
    let Some(rest) = name.strip_suffix(ext) else { return false };
    if rest.ends_with(stem) {
        return true;
    }
    match rest.rsplit_once('_') {
        Some((before, digits)) => {
            before.ends_with(stem) && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Size and modification time.
type Stamp = (u64, Option<SystemTime>);

#[derive(Debug)]
struct Candidate {
    stamp: Stamp,
    /// When we first saw this stamp.
    since: Instant,
    /// Set when the file is ready by time but an `.xlsx` did not open (checked again at every look).
    opens: Option<bool>,
}

/// The candidates of the inbox and how long each has been unchanged.
#[derive(Debug, Default)]
pub struct Settler {
    candidates: HashMap<String, Candidate>,
    warned: HashSet<OsString>,
    /// Names given up on for this run (`--once`: a file that cannot be taken).
    ignored: HashSet<String>,
}

/// What [`Settler::next_ready`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Take this file now.
    Ready(String),
    /// Nothing is ready; look again at this time.
    WaitUntil(Instant),
    /// No candidate at all.
    Empty,
}

impl Settler {
    /// Reads the inbox once and updates every candidate's stamp. Files that disappeared are forgotten.
    pub fn scan(&mut self, inbox: &Path, filter: &NameFilter, now: Instant) -> std::io::Result<()> {
        let mut present = HashSet::new();
        for entry in std::fs::read_dir(inbox)? {
            let Ok(entry) = entry else { continue };
            let os_name = entry.file_name();
            let Some(name) = os_name.to_str() else {
                if self.warned.insert(os_name.clone()) {
                    tracing::warn!("skipping {:?} in the inbox: the name is not valid Unicode", os_name);
                }
                continue;
            };
            if name.chars().any(char::is_control) {
                // A newline in a name would forge lines in the service's log, an ESC sequence act on a
                // terminal: such a name is skipped (as one that is not Unicode) and shown escaped.
                if self.warned.insert(os_name.clone()) {
                    tracing::warn!("skipping {:?} in the inbox: the name holds control characters", name);
                }
                continue;
            }
            if crate::os::name_length(name) + crate::outbox::REPORT_SUFFIX.len()
                > crate::outbox::MAX_NAME_LENGTH
                && filter.accepts(name)
            {
                // Its report (and, in `failed`, its note) could not be written beside it: left in the inbox.
                if self.warned.insert(os_name.clone()) {
                    tracing::warn!(
                        "skipping {name:?} in the inbox: the name is too long to have its report beside it"
                    );
                }
                continue;
            }
            if !filter.accepts(name) || self.ignored.contains(name) {
                continue;
            }
            // Not following symbolic links; the same call as `next_ready`'s second look, so both see the same
            // stamp (on Windows `DirEntry::metadata` comes from the directory listing, whose size of a file
            // still open for writing can lag behind the file's own).
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
            let kind = meta.file_type();
            if kind.is_symlink() {
                if self.warned.insert(os_name.clone()) {
                    tracing::warn!("skipping {name} in the inbox: symbolic links are never followed");
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let stamp = (meta.len(), meta.modified().ok());
            present.insert(name.to_string());
            match self.candidates.get_mut(name) {
                Some(candidate) if candidate.stamp == stamp => {}
                Some(candidate) => {
                    candidate.stamp = stamp;
                    candidate.since = now;
                    candidate.opens = None;
                }
                None => {
                    self.candidates.insert(name.to_string(), Candidate { stamp, since: now, opens: None });
                }
            }
        }
        self.candidates.retain(|name, _| present.contains(name));
        self.warned.retain(|name| name.to_str().is_none_or(|n| !present.contains(n)));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Forgets `name` (taken, or gone).
    pub fn forget(&mut self, name: &str) {
        self.candidates.remove(name);
    }

    /// Holds `name` back: it counts as first seen at `from` (it could not be claimed right now, e.g. it is
    /// locked by another program).
    pub fn hold(&mut self, name: &str, from: Instant) {
        if let Some(candidate) = self.candidates.get_mut(name) {
            candidate.since = from;
            candidate.opens = None;
        }
    }

    /// Never looks at `name` again in this run.
    pub fn ignore(&mut self, name: &str) {
        self.candidates.remove(name);
        self.ignored.insert(name.to_string());
    }

    /// The candidate to take now (the one waiting longest), or when to look again.
    pub fn next_ready(&mut self, inbox: &Path, settle: Duration, now: Instant) -> Readiness {
        if self.candidates.is_empty() {
            return Readiness::Empty;
        }
        let mut order: Vec<(&String, &mut Candidate)> = self.candidates.iter_mut().collect();
        order.sort_by(|a, b| a.1.since.cmp(&b.1.since).then_with(|| a.0.cmp(b.0)));
        let mut wake = now + settle.max(Duration::from_millis(50));
        for (name, candidate) in order {
            let settled_at = candidate.since + settle;
            if now < settled_at {
                wake = wake.min(settled_at);
                continue;
            }
            // The stamp is from the last scan, which may be older than the settling time (`poll_ms` above
            // `settle_ms`, or a share that sends no events and is only rescanned): look again before taking it.
            let stamp_now = std::fs::symlink_metadata(inbox.join(name.as_str()))
                .ok()
                .filter(|meta| meta.file_type().is_file())
                .map(|meta| (meta.len(), meta.modified().ok()));
            if stamp_now != Some(candidate.stamp) {
                if let Some(stamp) = stamp_now {
                    candidate.stamp = stamp;
                }
                candidate.since = now;
                candidate.opens = None;
                wake = wake.min(now + settle);
                continue;
            }
            if !name.to_ascii_lowercase().ends_with(".xlsx") {
                return Readiness::Ready(name.clone());
            }
            let opens = *candidate.opens.get_or_insert_with(|| zip_opens(&inbox.join(name)));
            if opens || now >= settled_at + xlsx_grace(settle) {
                return Readiness::Ready(name.clone());
            }
            // Look again a little later; a copy in progress changes the stamp and restarts the settling.
            candidate.opens = None;
            wake = wake.min(now + settle.clamp(Duration::from_millis(100), Duration::from_secs(1)));
        }
        Readiness::WaitUntil(wake)
    }
}

/// True when `path` opens as a zip archive (central directory readable).
fn zip_opens(path: &Path) -> bool {
    match std::fs::File::open(path) {
        Ok(file) => zip::ZipArchive::new(std::io::BufReader::new(file)).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &str) -> NameFilter {
        let split = |s: &str| s.split(',').map(|g| g.trim().to_string()).collect::<Vec<_>>();
        NameFilter::new(&split(include), &split("~$*, .~lock.*, *.tmp, *.part, .*")).unwrap()
    }

    #[test]
    fn names() {
        let f = filter("*.csv, *.xlsx, *.xls");
        assert!(f.accepts("book.csv") && f.accepts("BOOK.CSV") && f.accepts("b.xlsx"));
        assert!(!f.accepts("~$book.xlsx") && !f.accepts("book.csv.part") && !f.accepts(".book.csv"));
        assert!(!f.accepts("notes.txt"));
        let all = filter("*");
        assert!(all.accepts("notes.txt"));
        for reserved in [
            "book.csv.report.json",
            "book.csv.report_1.json",
            "BOOK.CSV.REPORT_12.JSON",
            "book_1.csv.error_3.txt",
            "IPs_Seclytic_1700000000.log",
            "references_Seclytic_17.log",
            "VTTL_Error.log",
            "vttl_error.log",
            "book.csv.error.txt",
            ".book.csv.abc.tmp",
        ] {
            assert!(!all.accepts(reserved), "{reserved}");
        }
        // Only a number makes a variant: other inputs that merely look similar are taken.
        for input in
            ["book.csv.report_x.json", "book.report.json.csv", "report_1.json", "book.csv.error_.txt"]
        {
            assert!(all.accepts(input), "{input}");
        }
    }

    /// The last scan's stamp may be older than the settling time (`poll_ms` above `settle_ms`): a file changed
    /// since is not taken on its strength, it settles anew from the second look; unchanged, it is taken.
    #[test]
    fn a_file_changed_since_the_last_scan_settles_anew() {
        let dir = tempfile::tempdir().unwrap();
        let f = filter("*.csv");
        let settle = Duration::from_millis(500);
        let t0 = Instant::now();
        std::fs::write(dir.path().join("a.csv"), b"x").unwrap();
        let mut s = Settler::default();
        s.scan(dir.path(), &f, t0).unwrap();
        std::fs::write(dir.path().join("a.csv"), b"xyz").unwrap();
        let second_look = t0 + settle;
        assert_eq!(s.next_ready(dir.path(), settle, second_look), Readiness::WaitUntil(second_look + settle));
        assert_eq!(s.next_ready(dir.path(), settle, second_look + settle), Readiness::Ready("a.csv".into()));
    }

    #[test]
    fn settles_only_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let f = filter("*.csv, *.xlsx");
        let settle = Duration::from_millis(500);
        let t0 = Instant::now();
        std::fs::write(dir.path().join("a.csv"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("dir.csv")).unwrap();
        let mut s = Settler::default();
        s.scan(dir.path(), &f, t0).unwrap();
        assert_eq!(s.len(), 1);
        assert!(matches!(s.next_ready(dir.path(), settle, t0), Readiness::WaitUntil(_)));
        // it grows: the clock starts again
        std::fs::write(dir.path().join("a.csv"), b"xy").unwrap();
        s.scan(dir.path(), &f, t0 + Duration::from_millis(400)).unwrap();
        assert!(matches!(
            s.next_ready(dir.path(), settle, t0 + Duration::from_millis(600)),
            Readiness::WaitUntil(_)
        ));
        assert_eq!(
            s.next_ready(dir.path(), settle, t0 + Duration::from_millis(900)),
            Readiness::Ready("a.csv".into())
        );
        // a stable file that is not a zip is waited for, then taken
        std::fs::write(dir.path().join("b.xlsx"), b"not a zip").unwrap();
        s.forget("a.csv");
        std::fs::remove_file(dir.path().join("a.csv")).unwrap();
        s.scan(dir.path(), &f, t0).unwrap();
        assert!(matches!(s.next_ready(dir.path(), settle, t0 + settle), Readiness::WaitUntil(_)));
        let late = t0 + settle + xlsx_grace(settle);
        assert_eq!(s.next_ready(dir.path(), settle, late), Readiness::Ready("b.xlsx".into()));
        std::fs::remove_file(dir.path().join("b.xlsx")).unwrap();
        s.scan(dir.path(), &f, late).unwrap();
        assert_eq!(s.next_ready(dir.path(), settle, late), Readiness::Empty);
    }

    /// Names with control characters (Unix allows a newline or an ESC in a name) are never taken: they would
    /// forge lines in the service's log and act on a terminal reading the error log.
    #[cfg(unix)]
    #[test]
    fn names_with_control_characters_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["bad\n2026-12-05T14:44:45Z all good: evil.csv", "esc\u{1b}[31mRED.csv", "tab\there.csv"]
        {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join("fine.csv"), b"x").unwrap();
        let mut s = Settler::default();
        s.scan(dir.path(), &filter("*.csv"), Instant::now()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.next_ready(dir.path(), Duration::ZERO, Instant::now()),
            Readiness::Ready("fine.csv".into())
        );
    }

    /// A name too long for its report (or its note in `failed`) to be written beside it is left in the inbox.
    #[test]
    fn names_too_long_for_their_report_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}.csv", "a".repeat(240));
        std::fs::write(dir.path().join(&long), b"x").unwrap();
        std::fs::write(dir.path().join("fine.csv"), b"x").unwrap();
        let mut s = Settler::default();
        s.scan(dir.path(), &filter("*.csv"), Instant::now()).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.csv"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.csv"), dir.path().join("link.csv")).unwrap();
        let mut s = Settler::default();
        s.scan(dir.path(), &filter("*.csv"), Instant::now()).unwrap();
        assert!(s.is_empty());
    }
}
