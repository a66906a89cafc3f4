//! The outbox (SPEC §7): every file we put there appears whole or not at all.
//!
//! * Workbooks, logs and reports are written to a hidden temporary file *inside the outbox* (same volume, so
//!   the final rename is atomic), flushed to disk, then renamed to their final name **without ever replacing
//!   an existing file**: a taken name gets `_1`, `_2`, … before the extension. The temporary names start with
//!   `.` and end with `.tmp`, so a watcher using our default `exclude` globs (or VTTL's next module) never picks
//!   up a half-written file.
//! * The Seclytic logs (`IPs_Seclytic_<U>.log`, …) are UTF-8 with CRLF line ends, one `<item>|<value>` line each,
//!   without duplicate lines, and are created only when they have a line. A long log (beyond
//!   [`LOG_SPILL_BYTES`] of lines) collects its lines in a hidden temporary file in the outbox while the
//!   workbook is enriched and is published by hard-linking that file under its name (same no-replace rule),
//!   instead of copying hundreds of MB. Where the volume refuses a probe hard link (some network shares), the
//!   lines go to the system's temporary folder and the log is copied, as before. Like the
//!   workbook's temporary file, that file is left behind (hidden, `.tmp`) only when the process is killed.
//! * `VTTL_Error.log` is appended to, one `<RFC 3339 time> <message>` line per error, with the token redacted
//!   by the caller.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Name of the error log in the outbox.
pub const ERROR_LOG: &str = "VTTL_Error.log";

/// Suffix of the temporary files we write in the outbox.
const TEMP_SUFFIX: &str = ".tmp";

/// What a log's hard-link probe adds to the name of the temporary file it links ([`linkable_file_in`]).
const LINK_PROBE_SUFFIX: &str = ".link.tmp";

/// Length of the random part of a temporary file's name.
const TEMP_RANDOM_CHARS: usize = 6;

/// Creates a temporary file in `dir` for an output that will be called `final_name`.
pub fn temp_file_for(dir: &Path, final_name: &str) -> std::io::Result<tempfile::NamedTempFile> {
    owned_temp_file(dir, final_name, None)
}

/// [`temp_file_for`], for a hot-folder instance when `owner` is its id: `.<hint>.@<owner>.<random>.tmp`, so
/// that if the instance is killed, the one that recovers its claims can find and delete its temporary files
/// ([`remove_temp_files_of`]). Without an owner: `.<hint>.<random>.tmp`.
pub fn owned_temp_file(
    dir: &Path,
    final_name: &str,
    owner: Option<&str>,
) -> std::io::Result<tempfile::NamedTempFile> {
    // Keep the hint short and free of path separators; the random part makes it unique.
    let hint: String = final_name.chars().filter(|c| c.is_alphanumeric()).take(24).collect();
    let prefix = match owner {
        Some(owner) => format!(".{hint}.@{}.", temp_owner_tag(owner)),
        None => format!(".{hint}."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TEMP_SUFFIX).rand_bytes(TEMP_RANDOM_CHARS);
    // The file becomes an output under its final name by a rename or a link, keeping its mode: create it with
    // the mode of any new file (0666 less the umask, usually 0644), not the owner-only 0600 of a temporary
    // file — another account (the next module reading this outbox, an analyst opening the workbook) must be
    // able to read it. Windows files take their folder's access rules either way.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    // Windows: the long-path form, which `tempfile`'s rename of this file passes to Win32 as it is.
    builder.tempfile_in(crate::os::long_path(dir))
}

/// `owner` as it appears in temporary file names: letters, digits, `-` and `_` only.
fn temp_owner_tag(owner: &str) -> String {
    owner.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Deletes the temporary files [`owned_temp_file`] made in `dir` for `owner` (a dead instance: nothing of it
/// is still being written), and the probe links of its logs. Returns how many were deleted; files that cannot
/// be read or deleted are skipped.
pub fn remove_temp_files_of(dir: &Path, owner: &str) -> usize {
    let marker = format!(".@{}.", temp_owner_tag(owner));
    let is_ours = |name: &str| {
        let Some(at) = name.find(&marker) else { return false };
        // What follows the marker: the random part, `.tmp`, and for a log's probe link `.link.tmp` again.
        let rest = &name[at + marker.len()..];
        let random = rest.get(..TEMP_RANDOM_CHARS).unwrap_or_default();
        let tail = rest.get(TEMP_RANDOM_CHARS..).unwrap_or_default();
        name.starts_with('.')
            && random.len() == TEMP_RANDOM_CHARS
            && random.bytes().all(|b| b.is_ascii_alphanumeric())
            && tail.strip_prefix(TEMP_SUFFIX).is_some_and(|rest| rest.is_empty() || rest == LINK_PROBE_SUFFIX)
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file
            && entry.file_name().to_str().is_some_and(is_ours)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
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
    persist_trying(temp, dir, name, 10_000)
}

/// [`persist_no_clobber`] under `name` only: `AlreadyExists` when it is taken.
pub fn persist_exactly(temp: tempfile::NamedTempFile, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    persist_trying(temp, dir, name, 1)
}

/// [`persist_no_clobber`] trying `name` and its numbered variants, `attempts` names in all.
pub fn persist_trying(
    temp: tempfile::NamedTempFile,
    dir: &Path,
    name: &str,
    attempts: u32,
) -> std::io::Result<PathBuf> {
    persist_skipping(temp, dir, name, attempts, |_| false)
}

/// The name of the report written next to the output `output_name`.
pub fn report_name(output_name: &str) -> String {
    format!("{output_name}{REPORT_SUFFIX}")
}

/// What follows an output's name in its report's name.
pub const REPORT_SUFFIX: &str = ".report.json";

/// The longest file name most file systems take, in [`crate::os::name_length`]'s units: 255 bytes on Linux,
/// 255 UTF-16 units on Windows.
pub const MAX_NAME_LENGTH: usize = 255;

/// What [`MAX_NAME_LENGTH`] counts, for messages.
pub const NAME_LENGTH_UNIT: &str = if cfg!(windows) { "characters" } else { "bytes" };

/// [`persist_no_clobber`] for a workbook: a name whose report name ([`report_name`]) is taken is skipped too,
/// so the report written next to it afterwards is its own and under its own name — in a chain the next stage
/// takes `book.csv` away and leaves `book.csv.report.json`, and a new `book.csv` must not sit beside that.
pub fn persist_output(temp: tempfile::NamedTempFile, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    persist_skipping(temp, dir, name, 10_000, |candidate| dir.join(report_name(candidate)).exists())
}

fn persist_skipping(
    temp: tempfile::NamedTempFile,
    dir: &Path,
    name: &str,
    attempts: u32,
    skip: impl Fn(&str) -> bool,
) -> std::io::Result<PathBuf> {
    temp.as_file().sync_all()?;
    let mut temp = temp;
    for attempt in 0..attempts {
        let candidate = candidate_name(name, attempt);
        if skip(&candidate) {
            continue;
        }
        let target = dir.join(candidate);
        match temp.persist_noclobber(crate::os::long_path(&target)) {
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
    write_new_owned_file(dir, name, bytes, None)
}

/// Writes `bytes` to `dir/name` atomically under that name only: `AlreadyExists` when it is taken.
pub fn write_new_file_exactly(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let mut temp = owned_temp_file(dir, name, None)?;
    temp.write_all(bytes)?;
    persist_exactly(temp, dir, name)
}

/// [`write_new_file`] through a temporary file of `owner` (see [`owned_temp_file`]).
pub fn write_new_owned_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    owner: Option<&str>,
) -> std::io::Result<PathBuf> {
    let mut temp = owned_temp_file(dir, name, owner)?;
    temp.write_all(bytes)?;
    persist_no_clobber(temp, dir, name)
}

/// Creates `dir` and its missing parents. When a file stands where a folder is needed (the folder itself or
/// one of its parents), the error names that file instead of the bare "File exists" / "Not a directory" the
/// system gives.
pub fn create_folder(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|error| {
        match dir.ancestors().find(|a| std::fs::metadata(a).is_ok_and(|m| !m.is_dir())) {
            Some(file) => std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is a file, not a folder", file.display()),
            ),
            None => error,
        }
    })
}

/// Checks that the outbox exists (creating it if needed) and that we can create files in it.
pub fn ensure_writable(dir: &Path) -> std::io::Result<()> {
    ensure_writable_by(dir, None)
}

/// [`ensure_writable`], the probe file being a temporary file of `owner` (see [`owned_temp_file`]).
pub fn ensure_writable_by(dir: &Path, owner: Option<&str>) -> std::io::Result<()> {
    create_folder(dir)?;
    let probe = owned_temp_file(dir, "probe", owner)?;
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
///
/// Built for a million-row workbook, where a log can have millions of lines:
/// * the lines are kept in one byte buffer that is moved to a temporary file whenever it passes
///   [`LOG_SPILL_BYTES`], so memory does not grow with the number of lines (should the temporary file fail,
///   e.g. disk full, the lines simply stay in memory). Made with [`LogLines::in_dir`] (the enricher: the
///   outbox), that file is a hidden `.tmp` file there, and the finished log is published by hard-linking it
///   under its final name — hundreds of MB are not copied; otherwise (or when the folder cannot take the
///   file, or refuses a probe hard link) it is an anonymous file (deleted by the OS when closed) in the
///   system's temporary folder;
/// * duplicates are found exactly, per item: a line is `<item>|<value>` and an item never contains `|`, so two
///   lines can only be equal when their items are. The lines of one item pushed one after the other (a *run*;
///   the enricher pushes all lines of an item together, once) are de-duplicated as they come, against the
///   run's values. Of each run only a 64-bit hash of its item is appended to a list; that list is checked
///   for an item with more than one run (or a hash collision) only when the log is read ([`LogLines::len`],
///   [`LogLines::write_to`]) — sorting a list is much cheaper than a hash-set probe per item, which with a
///   million items is a cache miss each. When there is such an item, the lines of those items are filtered
///   (first occurrence kept) in one pass over the log, so the result is exact in every case.
#[derive(Default)]
pub struct LogLines {
    /// Lines not yet moved to `spill`, each followed by CRLF.
    pending: Vec<u8>,
    /// Earlier lines, in order: the first `spilled_len` bytes of this file. While `writes` is running, the
    /// file is with that thread, and the lines it has not written yet are there too ([`LogLines::wait_for_writes`]).
    spill: Option<std::fs::File>,
    spilled_len: u64,
    /// The thread moving full buffers of lines to the file, so the enricher's thread does not wait for it.
    /// Declared before `spill_path`: fields are dropped in order, so the thread is done with the file before
    /// its name is removed.
    writes: Option<BackgroundWrites>,
    /// Where that file is created: a folder on the outbox's volume ([`LogLines::in_dir`]), so that
    /// [`write_log_set`] can publish it by a hard link instead of a copy; `None`: an anonymous file in the
    /// system's temporary folder.
    spill_dir: Option<PathBuf>,
    /// The name of that file when it has one (in `spill_dir`); removed when dropped.
    spill_path: Option<tempfile::TempPath>,
    /// The hot-folder instance whose temporary files these are (see [`owned_temp_file`]).
    owner: Option<String>,
    /// Moving lines to a file failed once, or the file has been published ([`LogLines::link_into`]): keep
    /// everything in memory from then on.
    spill_failed: bool,
    /// The item of the current run (line breaks replaced), when there is one.
    current_item: Option<String>,
    /// The values (line breaks replaced) the current run has in the log: their bytes one after the other in
    /// `current_value_bytes`, found through `current_values` by content (a table of byte ranges) — no
    /// allocation per value, and both are reused from one run to the next.
    current_value_bytes: Vec<u8>,
    current_values: hashbrown::HashTable<(u32, u32)>,
    /// Hashes values and items (randomly seeded: the texts come from the API).
    hasher: foldhash::fast::RandomState,
    /// The item hash of every run since the last check, after the distinct hashes of the runs before it.
    item_runs: Vec<u64>,
    /// How many of `item_runs` the last check saw (they are sorted and distinct).
    runs_checked: usize,
    /// Items (by hash) with more than one run: their lines are filtered when the log is read.
    repeated_items: HashSet<u64, foldhash::fast::RandomState>,
    /// Bytes the background writer writes between two flushes of a file that will be published by a link
    /// (`None`: [`FLUSH_BEHIND_BYTES`]; tests use less).
    flush_step: Option<u64>,
    /// Flushes to disk the background writer has made ([`FlushBehind`]).
    flushes_behind: u64,
    /// Lines in the log, duplicates of repeated items included until they are filtered.
    len: usize,
    /// `len` when the lines of repeated items were last filtered.
    filtered_len: usize,
}

impl std::fmt::Debug for LogLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLines").field("len", &self.len).field("spilled_len", &self.spilled_len).finish()
    }
}

/// `text` with CR and LF replaced by spaces (a log line is one line).
fn one_line(text: &str) -> Cow<'_, str> {
    if memchr::memchr2(b'\r', b'\n', text.as_bytes()).is_some() {
        Cow::Owned(text.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(text)
    }
}

/// Buffered log bytes beyond which they are moved to the temporary file.
pub const LOG_SPILL_BYTES: usize = 4 << 20;

/// A new file for the lines of a log: a hidden temporary file in `dir` (with its name) when one can be made
/// there and hard-linked, else an anonymous one in the system's temporary folder.
fn new_spill_file(
    dir: Option<&Path>,
    owner: Option<&str>,
) -> std::io::Result<(std::fs::File, Option<tempfile::TempPath>)> {
    if let Some(dir) = dir {
        match linkable_file_in(dir, owner) {
            Ok((file, path)) => return Ok((file, Some(path))),
            Err(e) => tracing::debug!(
                "log lines go to the system's temporary folder, not {} ({e}): the log will be copied",
                dir.display()
            ),
        }
    }
    Ok((tempfile::tempfile()?, None))
}

/// A hidden temporary file in `dir`, once a probe hard link there has worked (and been removed): a volume
/// without hard links (some network shares) would otherwise get the log's bytes twice, once as lines and
/// once as the copy.
///
/// The probe links a closed empty file of its own, not the open file of the lines: on Windows the name of a
/// file that is still open elsewhere may stay listed until every handle is closed (where deletes do not have
/// POSIX semantics: older systems, some shares, Wine), which would leave the probe's name in the outbox for as
/// long as the log is being written.
fn linkable_file_in(dir: &Path, owner: Option<&str>) -> std::io::Result<(std::fs::File, tempfile::TempPath)> {
    let source = owned_temp_file(dir, "link probe", owner)?.into_temp_path();
    let mut probe_name = source.file_name().unwrap_or_default().to_os_string();
    probe_name.push(LINK_PROBE_SUFFIX);
    let probe = source.with_file_name(probe_name);
    std::fs::hard_link(&source, &probe)?;
    std::fs::remove_file(&probe)?;
    source.close()?;
    Ok(owned_temp_file(dir, "Seclytic log lines", owner)?.into_parts())
}

impl LogLines {
    /// An empty log whose lines, once they pass [`LOG_SPILL_BYTES`], go to a temporary file in `dir` (which
    /// should be the folder the log will be published in: see [`LogLines::link_into`]).
    pub fn in_dir(dir: &Path) -> LogLines {
        LogLines { spill_dir: Some(dir.to_path_buf()), ..LogLines::default() }
    }

    /// [`LogLines::in_dir`], for the hot-folder instance `owner`: its temporary files carry that id
    /// ([`owned_temp_file`]).
    pub fn in_dir_of(dir: &Path, owner: Option<&str>) -> LogLines {
        LogLines { owner: owner.map(String::from), ..LogLines::in_dir(dir) }
    }

    /// Adds `<item>|<value>` unless already present. CR/LF inside the item or value are replaced by spaces.
    pub fn push(&mut self, item: &str, value: &str) {
        let (item, value) = (one_line(item), one_line(value));
        if self.current_item.as_deref() != Some(item.as_ref()) {
            self.start_run(&item);
        }
        if !self.remember_value(value.as_bytes()) {
            return;
        }
        let Some(current_item) = &self.current_item else { return };
        self.pending.extend_from_slice(current_item.as_bytes());
        self.pending.push(b'|');
        self.pending.extend_from_slice(value.as_bytes());
        self.pending.extend_from_slice(b"\r\n");
        self.len += 1;
        if self.pending.len() >= LOG_SPILL_BYTES {
            self.spill_pending();
        }
    }

    /// Adds `value` to the values of the current run; false when it is there already.
    fn remember_value(&mut self, value: &[u8]) -> bool {
        let (bytes, hasher) = (&mut self.current_value_bytes, &self.hasher);
        let range_of = |(start, len): (u32, u32)| start as usize..start as usize + len as usize;
        let hash = hasher.hash_one(value);
        let found = self.current_values.find(hash, |&range| bytes[range_of(range)] == *value);
        if found.is_some() {
            return false;
        }
        // Ranges are 32-bit: a run whose values pass 4 GiB in total is not de-duplicated beyond that point
        // (the filtering pass still sees its item as a single run and leaves it alone).
        let (Ok(start), Ok(len)) = (u32::try_from(bytes.len()), u32::try_from(value.len())) else {
            return true;
        };
        bytes.extend_from_slice(value);
        self.current_values
            .insert_unique(hash, (start, len), |&range| hasher.hash_one(&bytes[range_of(range)]));
        true
    }

    /// Starts a run of lines of `item`.
    fn start_run(&mut self, item: &str) {
        self.item_runs.push(self.hasher.hash_one(item.as_bytes()));
        self.current_values.clear();
        self.current_value_bytes.clear();
        let mut reused = self.current_item.take().unwrap_or_default();
        reused.clear();
        reused.push_str(item);
        self.current_item = Some(reused);
    }

    /// Finds items with more than one run since the last check and, when any item has, removes the repeated
    /// lines of those items (first occurrence kept). Every read of the log starts here, after the background
    /// writes are done.
    fn settle(&mut self) -> std::io::Result<()> {
        self.wait_for_writes()?;
        if self.runs_checked != self.item_runs.len() {
            self.item_runs.sort_unstable();
            for pair in self.item_runs.windows(2) {
                if pair[0] == pair[1] {
                    self.repeated_items.insert(pair[0]);
                }
            }
            self.item_runs.dedup();
            self.runs_checked = self.item_runs.len();
        }
        if self.repeated_items.is_empty() || self.filtered_len == self.len {
            return Ok(());
        }
        self.remove_repeated_lines()?;
        self.filtered_len = self.len;
        Ok(())
    }

    /// One pass over the log that drops a line of a repeated item when the same line came before.
    fn remove_repeated_lines(&mut self) -> std::io::Result<()> {
        let mut seen: HashSet<Vec<u8>, foldhash::fast::RandomState> = HashSet::default();
        let (hasher, repeated) = (&self.hasher, &self.repeated_items);
        let mut kept = 0usize;
        let mut keep = |line: &[u8]| -> bool {
            let item = line.split(|&b| b == b'|').next().unwrap_or_default();
            let keep = !repeated.contains(&hasher.hash_one(item)) || seen.insert(line.to_vec());
            kept += usize::from(keep);
            keep
        };
        if let Some(file) = &mut self.spill {
            let (mut filtered, filtered_path) =
                new_spill_file(self.spill_dir.as_deref(), self.owner.as_deref())?;
            let mut filtered_len = 0u64;
            file.seek(SeekFrom::Start(0))?;
            let mut reader = std::io::BufReader::new(Read::by_ref(file).take(self.spilled_len));
            let mut out = std::io::BufWriter::new(&mut filtered);
            let mut line = Vec::new();
            loop {
                line.clear();
                if std::io::BufRead::read_until(&mut reader, b'\n', &mut line)? == 0 {
                    break;
                }
                if keep(line.strip_suffix(b"\r\n").unwrap_or(&line)) {
                    out.write_all(&line)?;
                    filtered_len += line.len() as u64;
                }
            }
            out.flush()?;
            drop(out);
            self.spill = Some(filtered);
            self.spill_path = filtered_path;
            self.spilled_len = filtered_len;
        }
        let pending = std::mem::take(&mut self.pending);
        for line in pending.split_inclusive(|&b| b == b'\n') {
            if keep(line.strip_suffix(b"\r\n").unwrap_or(line)) {
                self.pending.extend_from_slice(line);
            }
        }
        self.len = kept;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lines in the log.
    pub fn len(&mut self) -> std::io::Result<usize> {
        self.settle()?;
        Ok(self.len)
    }

    /// Moves the buffered lines towards the temporary file: handed to the background writer (started with the
    /// file on the first call) when it can be, else written here.
    fn spill_pending(&mut self) {
        if self.spill_failed {
            return;
        }
        if self.writes.is_none() {
            let Some(file) = self.spill.take() else {
                // The first move creates the file, on this thread.
                self.spill_pending_now();
                return;
            };
            // Only a file that will be published by a link is worth writing to disk early: lines in the
            // system's temporary folder are copied into the outbox at the end.
            let flush_behind =
                self.spill_path.is_some().then(|| self.flush_step.unwrap_or(FLUSH_BEHIND_BYTES));
            match BackgroundWrites::start(file, self.spilled_len, flush_behind) {
                Ok(writes) => self.writes = Some(writes),
                Err(file) => {
                    self.spill = Some(file);
                    self.spill_pending_now();
                    return;
                }
            }
        }
        if let Some(writes) = &mut self.writes {
            let full = std::mem::replace(&mut self.pending, writes.empty_buffer());
            if let Err(full) = writes.write(full) {
                // The writer has stopped (it does not, short of a panic): the lines stay here; waiting for it
                // reports what happened.
                self.pending = full;
                self.spill_failed = true;
            }
        }
    }

    /// Writes the buffered lines to the temporary file (made on the first call) on this thread; the background
    /// writer must not be running.
    fn spill_pending_now(&mut self) {
        if self.spill_failed {
            return;
        }
        let spilled_len = self.spilled_len;
        let file = match &mut self.spill {
            Some(file) => file,
            None => match new_spill_file(self.spill_dir.as_deref(), self.owner.as_deref()) {
                Ok((file, path)) => {
                    self.spill_path = path;
                    self.spill.insert(file)
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot create a temporary file for log lines ({e}); keeping them in memory"
                    );
                    self.spill_failed = true;
                    return;
                }
            },
        };
        // The file holds exactly `spilled_len` good bytes; a failed write may leave more, which are ignored.
        let written = file.seek(SeekFrom::Start(spilled_len)).and_then(|_| file.write_all(&self.pending));
        match written {
            Ok(()) => {
                self.spilled_len += self.pending.len() as u64;
                self.pending.clear();
            }
            Err(e) => self.stop_spilling(&e),
        }
    }

    /// After a failed move of lines to the temporary file: every line stays in memory from now on.
    fn stop_spilling(&mut self, error: &std::io::Error) {
        tracing::warn!("cannot move log lines to a temporary file ({error}); keeping them in memory");
        self.spill_failed = true;
    }

    /// Waits for the background writer to finish and takes the file back. Lines it could not write come back
    /// before the buffered ones, in order, and stay in memory from then on (as when a write here fails).
    fn wait_for_writes(&mut self) -> std::io::Result<()> {
        let Some(writes) = self.writes.take() else { return Ok(()) };
        let end = writes.finish()?;
        self.spill = Some(end.file);
        self.spilled_len = end.written_to;
        self.flushes_behind += end.flushes;
        if let Some(e) = end.failed {
            self.stop_spilling(&e);
            let mut lines = end.unwritten.concat();
            lines.extend_from_slice(&self.pending);
            self.pending = lines;
        }
        Ok(())
    }

    /// Writes the log's content (UTF-8, CRLF after every line) to `out`. May be called more than once.
    pub fn write_to(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        self.settle()?;
        if let Some(file) = &mut self.spill {
            file.seek(SeekFrom::Start(0))?;
            let copied = std::io::copy(&mut Read::by_ref(file).take(self.spilled_len), out)?;
            if copied != self.spilled_len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the temporary file of log lines is shorter than what was written to it",
                ));
            }
        }
        out.write_all(&self.pending)
    }

    /// Publishes the log as `target` without copying it, when its lines are in a named temporary file (see
    /// [`LogLines::in_dir`]; `target` must be in the same folder): the last lines are added to that file, it
    /// is flushed to disk and hard-linked as `target`. Never replaces a file: when `target` exists the error
    /// is `AlreadyExists` and nothing is published. `Ok(false)` when the log cannot be published this way
    /// (its lines are in memory or in an anonymous file, moving them failed, or the volume has no hard
    /// links): then write it with [`LogLines::write_to`], which still works, as it does after a link.
    pub fn link_into(&mut self, target: &Path) -> std::io::Result<bool> {
        self.settle()?;
        if self.spill_path.is_none() || self.spill_failed {
            return Ok(false);
        }
        self.spill_pending_now();
        let (Some(file), Some(path), false) = (&self.spill, &self.spill_path, self.spill_failed) else {
            return Ok(false);
        };
        // Only a failed write leaves bytes past `spilled_len`, and then `spill_failed` is set; cut them anyway.
        file.set_len(self.spilled_len)?;
        file.sync_all()?;
        // The link shares the file's attributes: not the `TEMPORARY` one `tempfile` created it with (Windows).
        crate::os::clear_temporary_attribute(path);
        match std::fs::hard_link(path, target) {
            Ok(()) => {
                // The file is published: lines pushed from now on stay in memory.
                self.spill_failed = true;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
            Err(e) => {
                tracing::debug!("cannot hard-link the log lines as {} ({e}); copying them", target.display());
                Ok(false)
            }
        }
    }

    /// The file content as bytes (for tests and small logs).
    pub fn to_bytes(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }
}

/// A thread appending buffers of log lines to a temporary file, in order, from a given offset: the kernel's
/// copy of hundreds of MB of lines into the page cache was a tenth of the enricher's thread on a million-row
/// sheet (perf), while the other core often has time. At most one buffer waits while one is written. After a
/// failed write it writes nothing more and keeps every buffer from the failed one on, so no line is lost.
/// Dropping it waits for the thread.
struct BackgroundWrites {
    buffers: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// Written buffers, emptied, for reuse (a fresh large buffer costs page faults).
    emptied: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<Option<WritesEnd>>>,
}

impl Drop for BackgroundWrites {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// What the background writer leaves: the file, the offset its good bytes end at, and after a failure the
/// error and the buffers not written.
struct WritesEnd {
    file: std::fs::File,
    written_to: u64,
    failed: Option<std::io::Error>,
    unwritten: Vec<Vec<u8>>,
    /// Flushes to disk made while writing ([`FlushBehind`]).
    flushes: u64,
}

impl BackgroundWrites {
    /// Starts the thread, which writes from `offset` on (and with `flush_behind`, has what it wrote flushed to
    /// disk each time that many more bytes are written: see [`FlushBehind`]); the file comes back when no
    /// thread can be started.
    fn start(
        file: std::fs::File,
        offset: u64,
        flush_behind: Option<u64>,
    ) -> Result<BackgroundWrites, std::fs::File> {
        let (buffers, to_write) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let (give_back, emptied) = std::sync::mpsc::sync_channel(1);
        // The file goes over only once the thread exists, so a failed start cannot lose it.
        let (hand_over, take_file) = std::sync::mpsc::channel::<std::fs::File>();
        let spawned = std::thread::Builder::new().name("log writer".into()).spawn(move || {
            let file = take_file.recv().ok()?;
            Some(write_buffers(file, offset, to_write, give_back, flush_behind))
        });
        let Ok(thread) = spawned else { return Err(file) };
        if let Err(std::sync::mpsc::SendError(file)) = hand_over.send(file) {
            return Err(file);
        }
        Ok(BackgroundWrites { buffers: Some(buffers), emptied, thread: Some(thread) })
    }

    /// An empty buffer for the next lines: one the thread has written, or a new one.
    fn empty_buffer(&self) -> Vec<u8> {
        self.emptied.try_recv().unwrap_or_else(|_| Vec::with_capacity(LOG_SPILL_BYTES + (64 << 10)))
    }

    /// Queues `lines` (waits while another buffer is queued); gives them back when the thread has stopped.
    fn write(&self, lines: Vec<u8>) -> Result<(), Vec<u8>> {
        match &self.buffers {
            Some(buffers) => buffers.send(lines).map_err(|std::sync::mpsc::SendError(lines)| lines),
            None => Err(lines),
        }
    }

    /// Lets the thread write what is queued and stop.
    fn finish(mut self) -> std::io::Result<WritesEnd> {
        self.stop()
    }

    fn stop(&mut self) -> std::io::Result<WritesEnd> {
        self.buffers = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Some(end))) => Ok(end),
            _ => Err(std::io::Error::other("the thread writing log lines to a temporary file stopped")),
        }
    }
}

/// The background writer's loop (see [`BackgroundWrites`]).
fn write_buffers(
    mut file: std::fs::File,
    offset: u64,
    to_write: std::sync::mpsc::Receiver<Vec<u8>>,
    give_back: std::sync::mpsc::SyncSender<Vec<u8>>,
    flush_behind: Option<u64>,
) -> WritesEnd {
    let mut failed = file.seek(SeekFrom::Start(offset)).err();
    let mut written_to = offset;
    let mut unwritten = Vec::new();
    let mut behind = flush_behind.map(|step| FlushBehind::every(&file, step));
    for mut lines in to_write {
        if failed.is_none() {
            match file.write_all(&lines) {
                Ok(()) => {
                    written_to += lines.len() as u64;
                    if let Some(behind) = &mut behind {
                        behind.wrote(lines.len() as u64);
                    }
                    lines.clear();
                    let _ = give_back.try_send(lines);
                    continue;
                }
                Err(e) => failed = Some(e),
            }
        }
        unwritten.push(lines);
    }
    let flushes = behind.map_or(0, |mut behind| behind.finish());
    WritesEnd { file, written_to, failed, unwritten, flushes }
}

/// Bytes written to a file between two requests to have them written to disk ([`FlushBehind`]).
pub const FLUSH_BEHIND_BYTES: u64 = 16 << 20;

/// Has a file that is still being written flushed to disk as it grows, on a thread of its own, so that the
/// flush before its publication — the one that makes it durable, which still happens — finds little left to
/// do, instead of waiting for all of it while nothing else runs. On a million-row CSV (313 MB of workbook,
/// 212 MB of logs) the time from the last row written to the published output fell from 0.27–0.28 s to
/// 0.06 s (BENCHMARKS.md, eighth round).
///
/// Each [`FLUSH_BEHIND_BYTES`] written, the thread is asked to flush (`sync_data` of a second handle of the
/// file); a request made while a flush still runs is dropped, since the next flush covers it. The thread starts
/// with the first request (small files never get one) and is stopped by [`FlushBehind::finish`] or when this is
/// dropped, after the flush in progress. Flushing is a head start, nothing more: when a handle cannot be made,
/// the thread cannot start or a flush fails, the file is simply flushed in full before publication, which
/// reports any error.
pub struct FlushBehind {
    /// The second handle, until the thread takes it.
    file: Option<std::fs::File>,
    every: u64,
    since_request: u64,
    requests: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<u64>>,
    flushes: u64,
}

impl FlushBehind {
    /// For `file`, written from now on, flushed each time `bytes` more have been written
    /// ([`FLUSH_BEHIND_BYTES`] but in tests).
    pub fn every(file: &std::fs::File, bytes: u64) -> FlushBehind {
        FlushBehind {
            file: file.try_clone().ok(),
            every: bytes.max(1),
            since_request: 0,
            requests: None,
            thread: None,
            flushes: 0,
        }
    }

    /// Counts `bytes` more written; asks for a flush each time another step has been written.
    pub fn wrote(&mut self, bytes: u64) {
        self.since_request += bytes;
        if self.since_request < self.every {
            return;
        }
        self.since_request = 0;
        if self.requests.is_none() {
            self.start();
        }
        if let Some(requests) = &self.requests {
            let _ = requests.try_send(());
        }
    }

    fn start(&mut self) {
        let Some(file) = self.file.take() else { return };
        let (requests, to_do) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new().name("flush behind".into()).spawn(move || {
            let mut flushes = 0;
            for () in to_do {
                if file.sync_data().is_ok() {
                    flushes += 1;
                }
            }
            flushes
        });
        if let Ok(thread) = spawned {
            self.thread = Some(thread);
            self.requests = Some(requests);
        }
    }

    /// Stops the thread after the flush in progress; returns how many flushes succeeded in all.
    pub fn finish(&mut self) -> u64 {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            self.flushes += thread.join().unwrap_or(0);
        }
        self.flushes
    }
}

impl Drop for FlushBehind {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A temporary output file written through a [`FlushBehind`]: what the enricher writes a workbook into.
pub struct FlushingBehind {
    temp: tempfile::NamedTempFile,
    behind: FlushBehind,
}

impl FlushingBehind {
    pub fn new(temp: tempfile::NamedTempFile) -> FlushingBehind {
        FlushingBehind::every(temp, FLUSH_BEHIND_BYTES)
    }

    /// [`FlushingBehind::new`] with another step between flushes.
    pub fn every(temp: tempfile::NamedTempFile, bytes: u64) -> FlushingBehind {
        let behind = FlushBehind::every(temp.as_file(), bytes);
        FlushingBehind { temp, behind }
    }

    /// The file, once the flushing thread has stopped, and the number of flushes it made.
    pub fn finish(mut self) -> (tempfile::NamedTempFile, u64) {
        let flushes = self.behind.finish();
        (self.temp, flushes)
    }
}

impl Write for FlushingBehind {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.temp.write(buf)?;
        self.behind.wrote(written as u64);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
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
    logs: &mut [(SeclyticLog, &mut LogLines)],
) -> std::io::Result<(u64, Vec<PathBuf>)> {
    let mut unique = free_unique(dir, start);
    'attempt: for _ in 0..10_000 {
        let mut written = Vec::new();
        for (log, lines) in logs.iter_mut() {
            let name = log.file_name(unique);
            let target = dir.join(&name);
            match publish_log(dir, &name, lines) {
                Ok(()) => written.push(target),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    for path in &written {
                        let _ = std::fs::remove_file(path);
                    }
                    unique = free_unique(dir, unique + 1);
                    continue 'attempt;
                }
                Err(e) => return Err(e),
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

/// Publishes one log as `dir/name`, never replacing a file (`AlreadyExists` when the name is taken): linked
/// from its temporary file when it has one in `dir`, written into a new temporary file otherwise.
fn publish_log(dir: &Path, name: &str, lines: &mut LogLines) -> std::io::Result<()> {
    let target = dir.join(name);
    if lines.link_into(&target)? {
        return Ok(());
    }
    let mut temp = owned_temp_file(dir, name, lines.owner.as_deref())?;
    // Straight to the file, no buffer: lines in an anonymous temporary file are copied by the kernel
    // (`std::io::copy` between files), not read into memory and written back.
    lines.write_to(temp.as_file_mut())?;
    temp.as_file().sync_all()?;
    temp.persist_noclobber(crate::os::long_path(&target)).map(|_| ()).map_err(|e| e.error)
}

/// One `CRITICAL: …` line in the error log of `outbox` for a critical error (`message`: its text, already
/// redacted), unless the error is that the outbox cannot be written or the outbox is not writable now.
pub fn log_critical_error(outbox: &Path, message: &str, error: &crate::error::CriticalError) {
    if !matches!(error, crate::error::CriticalError::Outbox { .. }) && ensure_writable(outbox).is_ok() {
        append_error_log(outbox, &format!("CRITICAL: {message}"));
    }
}

/// Appends one line to `<dir>/VTTL_Error.log`. Failures to log are reported on stderr, never fatal.
pub fn append_error_log(dir: &Path, message: &str) {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // Every control character, not only line breaks: a file name can hold ESC sequences, which would act on
    // the terminal of whoever reads the log with `cat` or `tail`.
    let one_line: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let line = format!("{time} {one_line}\r\n");
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

    /// A message with control characters (a file name can hold ESC sequences or line breaks) is one plain line.
    #[test]
    fn error_log_lines_hold_no_control_characters() {
        let dir = tempfile::tempdir().unwrap();
        append_error_log(dir.path(), "esc\u{1b}[31mRED.csv failed\r\nforged line\u{7}");
        let text = std::fs::read_to_string(dir.path().join(ERROR_LOG)).unwrap();
        let line = text.strip_suffix("\r\n").unwrap();
        assert!(!line.chars().any(char::is_control), "{text:?}");
        assert!(line.ends_with("esc [31mRED.csv failed  forged line "), "{text:?}");
    }

    /// Only the temporary files of the named owner are deleted: its workbook and report temporaries, its log
    /// spill and that spill's probe link; never another owner's, an unowned one, or a file that merely looks
    /// alike.
    #[test]
    fn the_temporary_files_of_one_owner_are_found_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let names = |dir: &Path| -> std::collections::BTreeSet<String> {
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
        };
        let dead = "host-12-1733-0a1f";
        let mut kept = Vec::new();
        for owner in [Some(dead), Some("host-12-1733-0a1"), Some("other-7-1-ffff"), None] {
            let (_, path) = owned_temp_file(dir.path(), "book.csv", owner).unwrap().into_parts();
            let (_, report) =
                owned_temp_file(dir.path(), "book.csv.report.json", owner).unwrap().into_parts();
            kept.push(path.keep().unwrap());
            kept.push(report.keep().unwrap());
        }
        // A log spill with its probe link left behind (a kill between the link and its removal).
        let (_, spill) = linkable_file_in(dir.path(), Some(dead)).unwrap();
        let spill = spill.keep().unwrap();
        let mut probe = spill.file_name().unwrap().to_os_string();
        probe.push(LINK_PROBE_SUFFIX);
        std::fs::hard_link(&spill, spill.with_file_name(probe)).unwrap();
        // Look-alikes: visible, a folder, a different tail.
        let marker = format!(".@{dead}.");
        for name in [format!("book{marker}abcdef.tmp"), format!(".book{marker}abcdef.tmp.bak")] {
            std::fs::write(dir.path().join(name), b"not ours").unwrap();
        }
        std::fs::create_dir(dir.path().join(format!(".dir{marker}abcdef.tmp"))).unwrap();
        let before = names(dir.path());
        assert_eq!(before.iter().filter(|n| n.contains(&marker)).count(), 4 + 3);

        assert_eq!(remove_temp_files_of(dir.path(), dead), 4);
        let after = names(dir.path());
        let gone: Vec<&String> = before.difference(&after).collect();
        assert_eq!(gone.len(), 4, "{gone:?}");
        assert!(
            gone.iter().all(|n| n.starts_with('.') && n.contains(&marker) && n.ends_with(".tmp")),
            "{gone:?}"
        );
        assert_eq!(after.iter().filter(|n| n.contains("@host-12-1733-0a1.")).count(), 2);
        assert_eq!(after.iter().filter(|n| n.contains("@other-7-1-ffff.")).count(), 2);
        assert_eq!(after.iter().filter(|n| n.starts_with(".bookcsv") && !n.contains("@")).count(), 2);
        assert_eq!(remove_temp_files_of(dir.path(), dead), 0);
        assert_eq!(remove_temp_files_of(&dir.path().join("missing"), dead), 0);
    }

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
        // An item that comes back after another one is still de-duplicated against its earlier lines.
        let mut other = LogLines::default();
        other.push("a.example", "1");
        other.push("b.example", "1");
        other.push("a.example", "1");
        other.push("a.example", "2");
        other.push("b.example", "1");
        assert_eq!(other.to_bytes().unwrap(), b"a.example|1\r\nb.example|1\r\na.example|2\r\n");
        log.push("example.com", "203.0.113.5");
        log.push("example.com", "203.0.113.5");
        log.push("example.com", "http://x/\ny");
        log.push("example.com", "http://x/ y");
        assert_eq!(log.len().unwrap(), 2);
        assert_eq!(log.to_bytes().unwrap(), b"example.com|203.0.113.5\r\nexample.com|http://x/ y\r\n");
    }

    #[test]
    fn an_item_with_many_values_is_de_duplicated_exactly() {
        // Enough values for the per-item table to grow several times; every value comes twice, the second
        // time after all the others, and a value that is a prefix of another is not taken for it.
        let mut log = LogLines::default();
        let values: Vec<String> = (0..5000).map(|i| format!("h{i}")).collect();
        for value in values.iter().chain(&values) {
            log.push("big.example", value);
        }
        log.push("big.example", "h");
        assert_eq!(log.len().unwrap(), 5001);
        let mut expected: String = values.iter().map(|v| format!("big.example|{v}\r\n")).collect();
        expected.push_str("big.example|h\r\n");
        assert!(log.to_bytes().unwrap() == expected.as_bytes());
        // The next item starts with no values.
        log.push("other.example", "h0");
        assert_eq!(log.len().unwrap(), 5002);
    }

    #[test]
    fn items_that_come_back_are_de_duplicated_like_a_set_of_lines_across_the_file_and_the_buffer() {
        check_against_a_set_of_lines(LogLines::default());
        // The same with the lines in a named file in the outbox, the log then published by a link.
        let dir = tempfile::tempdir().unwrap();
        let expected = check_against_a_set_of_lines(LogLines::in_dir(dir.path()));
        assert_eq!(std::fs::read(dir.path().join("IPs_Seclytic_1.log")).unwrap(), expected);
    }

    /// A reference model (every distinct line, in order of first appearance) against `log`, with items
    /// coming back after others, with duplicates, across several moves to the temporary file, and the log
    /// read (which filters) in the middle as well as at the end. Publishes it into its folder, if it has one,
    /// with the unique string 1. Returns the expected content.
    fn check_against_a_set_of_lines(mut log: LogLines) -> Vec<u8> {
        let mut model: Vec<String> = Vec::new();
        let mut model_set = HashSet::new();
        let mut state = 12345u64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut pushes = 0usize;
        while log.spilled_bytes() < 2 * LOG_SPILL_BYTES as u64 || pushes < 400_000 {
            // Mostly new items, sometimes one of the first 50 again.
            let item = if next(10) == 0 {
                format!("back{}.example", next(50))
            } else {
                format!("i{pushes}.example")
            };
            for _ in 0..1 + next(4) {
                let value = format!("v{:03}-{}", next(8), "x".repeat(next(40) as usize));
                let line = format!("{item}|{value}");
                if model_set.insert(line.clone()) {
                    model.push(line);
                }
                log.push(&item, &value);
            }
            pushes += 1;
            if pushes == 200_000 {
                assert_eq!(log.len().unwrap(), model.len());
            }
        }
        assert!(log.spilled_bytes() > 0 && log.spill.is_some());
        assert_eq!(log.len().unwrap(), model.len());
        let expected: String = model.iter().map(|line| format!("{line}\r\n")).collect();
        assert!(log.to_bytes().unwrap() == expected.as_bytes(), "content differs");
        // Reading again changes nothing; pushing a known line afterwards adds nothing.
        assert!(log.to_bytes().unwrap() == expected.as_bytes());
        let (item, value) = model[0].split_once('|').unwrap();
        log.push(item, value);
        assert!(log.to_bytes().unwrap() == expected.as_bytes());
        if let Some(dir) = log.spill_dir.clone() {
            let (unique, _) = write_log_set(&dir, 1, &mut [(SeclyticLog::Ips, &mut log)]).unwrap();
            assert_eq!(unique, 1);
        }
        expected.into_bytes()
    }

    #[test]
    fn a_log_whose_folder_takes_no_file_keeps_its_lines_in_the_system_temp_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogLines::in_dir(&dir.path().join("gone"));
        let mut expected = Vec::new();
        for i in 0..(LOG_SPILL_BYTES / 20 + 1000) {
            log.push(&format!("h{i}.example"), "1.2.3.4");
            expected.extend_from_slice(format!("h{i}.example|1.2.3.4\r\n").as_bytes());
        }
        assert!(log.spilled_bytes() > 0 && log.spill_path.is_none() && !log.spill_failed);
        let (_, paths) = write_log_set(dir.path(), 1, &mut [(SeclyticLog::Ips, &mut log)]).unwrap();
        assert!(std::fs::read(&paths[0]).unwrap() == expected);
    }

    #[test]
    fn a_long_log_made_in_its_folder_is_published_by_a_link_and_never_over_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogLines::in_dir(dir.path());
        let mut expected = Vec::new();
        let mut i = 0u64;
        while expected.len() < 2 * LOG_SPILL_BYTES + 1000 {
            let line = format!("host{i}.example|203.0.{}.{}\r\n", i / 256 % 256, i % 256);
            let (item, value) = line.trim_end().split_once('|').unwrap();
            log.push(item, value);
            expected.extend_from_slice(line.as_bytes());
            i += 1;
        }
        assert!(log.spill_path.is_some() && !log.pending.is_empty());
        let names = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names, 1, "the lines' file, and no probe link left");
        let taken = dir.path().join("taken.log");
        std::fs::write(&taken, "theirs").unwrap();
        let error = log.link_into(&taken).expect_err("a taken name");
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&taken).unwrap(), b"theirs");

        let (unique, paths) = write_log_set(dir.path(), 7, &mut [(SeclyticLog::Hashes, &mut log)]).unwrap();
        assert_eq!((unique, paths.len()), (7, 1));
        assert!(std::fs::read(&paths[0]).unwrap() == expected, "published content");
        // Linked, not copied: the log and the temporary file are one file until the log is dropped.
        #[cfg(unix)]
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&paths[0]).unwrap()), 2);
        // Lines pushed afterwards stay in memory: the published file does not change, the log reads whole,
        // and publishing it again (a name taken meanwhile makes write_log_set do that) copies it.
        log.push("late.example", "1");
        expected.extend_from_slice(b"late.example|1\r\n");
        assert!(log.to_bytes().unwrap() == expected);
        let (again, copies) = write_log_set(dir.path(), 7, &mut [(SeclyticLog::Hashes, &mut log)]).unwrap();
        assert_eq!(again, 8);
        assert!(std::fs::read(&copies[0]).unwrap() == expected, "copied content");
        assert!(std::fs::read(&paths[0]).unwrap() == expected[..expected.len() - 16], "first file unchanged");
        drop(log);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["Hashes_Seclytic_7.log", "Hashes_Seclytic_8.log", "taken.log"]);
        #[cfg(unix)]
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&paths[0]).unwrap()), 1);
    }

    #[test]
    fn log_lines_beyond_the_buffer_go_to_a_file_and_come_back_in_order() {
        let mut log = LogLines::default();
        let mut expected = Vec::new();
        let mut i = 0u64;
        // Enough lines to move the buffer to the temporary file about three times.
        while expected.len() < 3 * LOG_SPILL_BYTES + 1000 {
            let value = format!("203.0.{}.{}", i / 256 % 256, i % 256);
            let item = format!("host{}.example", i / 3);
            log.push(&item, &value);
            log.push(&item, &value); // a duplicate, never written twice
            expected.extend_from_slice(format!("{item}|{value}\r\n").as_bytes());
            i += 1;
        }
        assert!(log.spilled_bytes() > 0 && !log.pending.is_empty());
        assert_eq!(log.len().unwrap() as u64, i);
        // Lines already in the file are still recognised as duplicates.
        log.push("host0.example", "203.0.0.0");
        assert_eq!(log.len().unwrap() as u64, i);
        assert!(log.to_bytes().unwrap() == expected, "content differs");
        // Writing twice gives the same content, and pushing afterwards still appends at the end.
        assert!(log.to_bytes().unwrap() == expected);
        log.push("last.example", "x");
        expected.extend_from_slice(b"last.example|x\r\n");
        assert!(log.to_bytes().unwrap() == expected);
    }

    /// When the background writer cannot write (here: its file is read-only), no line is lost: the buffers it
    /// was given come back, in order, before the ones still buffered, and the log reads whole.
    #[test]
    fn lines_the_background_writer_cannot_write_stay_in_memory_in_order() {
        let mut log = LogLines::default();
        let mut expected = Vec::new();
        let mut push = |log: &mut LogLines, i: u64| {
            let (item, value) = (format!("host{i}.example"), format!("198.51.100.{}", i % 256));
            log.push(&item, &value);
            expected.extend_from_slice(format!("{item}|{value}\r\n").as_bytes());
        };
        let mut i = 0;
        // The first move to the file is made on this thread (it creates the file).
        while log.spilled_bytes() == 0 {
            push(&mut log, i);
            i += 1;
        }
        // The same bytes in a file that refuses writes.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("lines");
        std::fs::write(&copy, log.to_bytes().unwrap()).unwrap();
        log.spill = Some(std::fs::File::open(&copy).unwrap());
        let before = log.spilled_bytes();
        let mut added = 0;
        while added < 3 * LOG_SPILL_BYTES {
            push(&mut log, i);
            added += 30;
            i += 1;
        }
        assert!(log.writes.is_some(), "later moves go to the background writer");
        assert_eq!(log.spilled_bytes(), before, "nothing more written");
        assert!(log.spill_failed);
        assert_eq!(log.len().unwrap() as u64, i);
        assert!(log.to_bytes().unwrap() == expected, "content differs");
    }

    /// A file written through [`FlushingBehind`] gets flushed to disk while it grows, and comes out byte for
    /// byte as written; one that stays below the step is never flushed (no thread is started for it).
    #[test]
    fn a_growing_output_is_flushed_behind_and_comes_out_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut output = FlushingBehind::every(tempfile::NamedTempFile::new_in(dir.path()).unwrap(), 4096);
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..1000u32).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect();
            output.write_all(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
        }
        output.flush().unwrap();
        let (temp, flushes) = output.finish();
        assert!(flushes >= 1, "no flush while the file grew");
        assert!(std::fs::read(temp.path()).unwrap() == expected);

        let mut small = FlushingBehind::every(tempfile::NamedTempFile::new_in(dir.path()).unwrap(), 4096);
        small.write_all(&[b'x'; 4095]).unwrap();
        assert!(small.behind.thread.is_none());
        let (temp, flushes) = small.finish();
        assert_eq!(flushes, 0);
        assert_eq!(std::fs::read(temp.path()).unwrap().len(), 4095);
    }

    /// The background writer of a log whose file will be published by a link flushes it as it grows; a log
    /// whose lines are in the system's temporary folder (copied at the end) is never flushed.
    #[test]
    fn a_long_log_to_be_linked_is_flushed_behind_one_to_be_copied_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut linked = LogLines { flush_step: Some(64 << 10), ..LogLines::in_dir(dir.path()) };
        let mut copied = LogLines { flush_step: Some(64 << 10), ..LogLines::default() };
        let mut expected = Vec::new();
        let mut i = 0u64;
        while expected.len() < 3 * LOG_SPILL_BYTES + 1000 {
            let (item, value) = (format!("host{i}.example"), format!("192.0.2.{}", i % 256));
            linked.push(&item, &value);
            copied.push(&item, &value);
            expected.extend_from_slice(format!("{item}|{value}\r\n").as_bytes());
            i += 1;
        }
        assert!(linked.spill_path.is_some() && copied.spill_path.is_none());
        let (_, paths) = write_log_set(dir.path(), 3, &mut [(SeclyticLog::Ips, &mut linked)]).unwrap();
        assert!(std::fs::read(&paths[0]).unwrap() == expected, "published content");
        assert!(linked.flushes_behind >= 1, "the linked log was not flushed while it grew");
        assert!(copied.to_bytes().unwrap() == expected);
        assert_eq!(copied.flushes_behind, 0, "a log in the system's temporary folder was flushed");
    }

    impl LogLines {
        /// Bytes of lines in the temporary file, once the background writes are done.
        fn spilled_bytes(&mut self) -> u64 {
            self.wait_for_writes().unwrap();
            self.spilled_len
        }
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
        let (mut ips, mut urls) = (LogLines::default(), LogLines::default());
        ips.push("a", "1");
        urls.push("a", "u");
        let mut logs = vec![(SeclyticLog::Ips, &mut ips), (SeclyticLog::Urls, &mut urls)];
        let (unique, paths) = write_log_set(dir.path(), 200, &mut logs).unwrap();
        assert_eq!(unique, 201);
        assert_eq!(
            paths,
            vec![dir.path().join("IPs_Seclytic_201.log"), dir.path().join("URLs_Seclytic_201.log")]
        );
        // A second workbook in the same second gets the next one.
        let (next, _) = write_log_set(dir.path(), 200, &mut logs).unwrap();
        assert_eq!(std::fs::read(dir.path().join("URLs_Seclytic_202.log")).unwrap(), b"a|u\r\n");
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
