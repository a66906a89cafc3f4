//! Claims: how an instance takes a file so that no other instance (on this machine or another one sharing the
//! inbox) ever processes it too, and how the claims of a dead instance are recovered.
//!
//! * **Work area.** Each running instance owns `<inbox>/.vttl-work/<instance-id>/` with `files/` (claimed
//!   inputs), `journal/` (one small JSON file per output being published, named by a digest of the input's
//!   name) and `lease`. The id is `<host>-<pid>-<start time in ms>-<random>`, unique across machines and
//!   restarts.
//! * **Claim** = `rename(<inbox>/<name>, <work>/files/<name>)`: inside one folder tree, so atomic; of two
//!   instances racing for a file exactly one rename succeeds, the other gets `NotFound` and moves on.
//! * **Lease.** A thread rewrites `lease` (host, pid, start time and a beat counter; temporary file + rename)
//!   every quarter of `claim_stale_secs`. Another instance decides a work folder is dead when the content of its
//!   lease has **not changed for `claim_stale_secs` of the observer's own monotonic clock**: it remembers what it
//!   read and when, and only compares its own readings, so clock skew between machines (or a wrong clock
//!   on the share) cannot fool it. On the same host a dead process is detected at once: on Linux, when the
//!   lease's host name, kernel boot id and pid namespace are ours and `/proc/<pid>` does not exist (containers or
//!   machines that share a host name never share all three). A reused pid only delays recovery to the lease rule.
//! * **Taken over while alive.** If our lease could not be renewed for `claim_stale_secs` (a share unreachable
//!   for that long), another instance may adopt our folder. We then find our folders gone at the next claim and
//!   recreate them; the workbook we were on cannot be published (its journal entry cannot be written, or the
//!   recovery removed its temporary file) and belongs to the adopter.
//! * **Recovery.** The dead folder is first *adopted*: renamed (atomically) to `<our work>/adopted/<id>`, so two
//!   live instances never recover the same folder, and if we die while recovering, whoever recovers us
//!   recovers the adopted folder too. Then every claimed input is settled by its journal (below) or handed
//!   back into the inbox under its own name (or `_1`, … when a new file took the name), where the normal path
//!   takes it again; the folder is removed when it is empty, and then the temporary files the dead instance
//!   left in the outbox (their names carry its id: [`crate::outbox::owned_temp_file`]) are deleted.
//! * **Exactly once across a crash** ([`JournalHooks`]). Just before the enricher renames a complete output
//!   into the outbox, a journal entry records the temporary file (path, and on Unix its device and inode) and
//!   the final name; just after, the entry is rewritten as `published`. The input is then moved to
//!   `processed` and the entry removed. After a crash: `published` → move the input to `processed`;
//!   `publishing` with the temporary file still there → the rename never happened: delete it, reprocess; with
//!   the temporary file gone → look for a file in the outbox with the recorded inode (Unix): found → it was
//!   published; not found → it was not (the rename failed), reprocess. Without inodes (Windows) a vanished
//!   temporary file counts as published. Either way no second output is produced for a published one.
//! * **Interrupted runs.** An input that recovery hands back is counted against the dead instance that held it
//!   (`<work root>/interrupted-<digest>.json`: name, size, modification time, the dead instances' ids, each
//!   once). When [`MAX_INTERRUPTED_RUNS`] instances died holding the same file, recovery sends it to `failed`
//!   with its reason instead: a file that kills the process (out of memory, a crash in a library) would
//!   otherwise be taken again after every restart, for ever. The record goes when the file reaches
//!   `processed` or `failed`, or after 30 days untouched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::fsops;

/// Name of the folder inside the inbox that holds every instance's work area.
pub const WORK_DIR: &str = ".vttl-work";
const LEASE: &str = "lease";
const FILES: &str = "files";
const JOURNAL: &str = "journal";
const ADOPTED: &str = "adopted";

/// What makes a process id meaningful: the machine's current boot — on Linux the kernel boot id and the pid
/// namespace (two containers, or two machines, with the same host name never share both); on Windows the boot
/// time, to the minute (taken at two moments it may differ by a rounding step: then only the lease rule applies,
/// never a wrong verdict). Empty where we cannot tell: then only the lease rule applies.
pub fn pid_scope() -> String {
    #[cfg(target_os = "linux")]
    {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let namespace =
            std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default();
        if boot.trim().is_empty() || namespace.is_empty() {
            return String::new();
        }
        format!("{}/{namespace}", boot.trim())
    }
    #[cfg(windows)]
    {
        // SAFETY: GetTickCount64 takes no arguments and cannot fail.
        let up_ms = unsafe { windows_sys::Win32::System::SystemInformation::GetTickCount64() };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let booted_ms = now_ms.saturating_sub(i64::try_from(up_ms).unwrap_or(i64::MAX));
        format!("windows-boot-{}", (booted_ms + 30_000).div_euclid(60_000))
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    String::new()
}

/// What the temporary files of a one-shot run (the `enrich` command) are owned by: see [`one_shot_owner`].
const ONE_SHOT: &str = "enrich";

/// The owner named in the temporary files of this one-shot run (`enrich`): `enrich-<machine>-<pid>`, where
/// `<machine>` is 8 hex digits of a hash of this machine's host name and [`pid_scope`]. A later run on the same
/// machine, boot and pid namespace can then tell that this process is gone and delete what it left, should it
/// be killed ([`remove_temp_files_of_dead_runs`]). `None` where that cannot be told: the files then carry no
/// owner and stay, as they always did.
pub fn one_shot_owner() -> Option<String> {
    one_shot_owner_of(std::process::id())
}

/// [`one_shot_owner`] for the process `pid` of this machine.
pub fn one_shot_owner_of(pid: u32) -> Option<String> {
    Some(format!("{ONE_SHOT}-{}-{pid}", this_machine_tag()?))
}

/// 8 hex digits naming this machine, boot and pid namespace; `None` when any of them is unknown.
fn this_machine_tag() -> Option<String> {
    use sha2::Digest;
    let (host, scope) = (host_name(), pid_scope());
    if host.is_empty() || scope.is_empty() {
        return None;
    }
    let digest = sha2::Sha256::digest(format!("{host}\n{scope}").as_bytes());
    Some(digest.iter().take(4).map(|b| format!("{b:02x}")).collect())
}

/// Deletes the temporary files that one-shot runs of this machine ([`one_shot_owner`]) left in `dir` and whose
/// process is gone (killed mid-run: a run that ends, even on an error, removes its own). Files of runs still
/// going, of other machines, boots or pid namespaces, and files without an owner are left alone. Says how many
/// it deleted (when any) in the log, and returns that number.
pub fn remove_temp_files_of_dead_runs(dir: &Path) -> usize {
    let Some(machine) = this_machine_tag() else { return 0 };
    let marker = format!(".@{ONE_SHOT}-{machine}-");
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut pids = std::collections::BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) =
            name.to_str().and_then(|n| n.find(&marker).map(|at| n[at + marker.len()..].to_string()))
        else {
            continue;
        };
        if let Some(Ok(pid)) = rest.split_once('.').map(|(pid, _)| pid.parse::<u32>()) {
            pids.insert(pid);
        }
    }
    let removed = pids
        .into_iter()
        .filter(|&pid| pid != std::process::id() && no_such_process(pid))
        .map(|pid| crate::outbox::remove_temp_files_of(dir, &format!("{ONE_SHOT}-{machine}-{pid}")))
        .sum();
    if removed > 0 {
        tracing::info!("deleted {removed} temporary files that killed runs left in {}", dir.display());
    }
    removed
}

/// This machine's name, as far as we can tell without extra dependencies ("" when unknown).
pub fn host_name() -> String {
    let raw = std::env::var("COMPUTERNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    raw.trim().to_string()
}

fn safe_component(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(40)
        .collect();
    if cleaned.is_empty() { "host".into() } else { cleaned }
}

/// The lease thread's handle: stops it (and waits for it) when dropped.
struct LeaseKeeper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// This instance's work folder and its lease.
pub struct WorkArea {
    pub inbox: PathBuf,
    pub root: PathBuf,
    pub dir: PathBuf,
    pub files: PathBuf,
    pub journal: PathBuf,
    pub id: String,
    pub host: String,
    /// [`pid_scope`] of this process.
    pub scope: String,
    lease: Option<LeaseKeeper>,
}

impl WorkArea {
    /// Creates `<inbox>/.vttl-work/<id>/` and starts the lease thread.
    pub fn create(inbox: &Path, claim_stale: Duration) -> std::io::Result<WorkArea> {
        let host = host_name();
        let started = chrono::Utc::now();
        let id = format!(
            "{}-{}-{}-{:04x}",
            safe_component(&host),
            std::process::id(),
            started.timestamp_millis(),
            fastrand::u16(..)
        );
        let root = inbox.join(WORK_DIR);
        let dir = root.join(&id);
        let files = dir.join(FILES);
        let journal = dir.join(JOURNAL);
        std::fs::create_dir_all(&files)?;
        std::fs::create_dir_all(&journal)?;
        let lease_path = dir.join(LEASE);
        let scope = pid_scope();
        let header = format!(
            "vttl-seclytics claim lease\nhost={host}\nscope={scope}\npid={}\nstarted={}\n",
            std::process::id(),
            started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        fsops::write_replace(&lease_path, format!("{header}beat=0\n").as_bytes())?;
        let stop = Arc::new(AtomicBool::new(false));
        let interval = (claim_stale / 4).max(Duration::from_millis(100));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new().name("vttl-lease".into()).spawn(move || {
                let mut beat: u64 = 0;
                let mut next = Instant::now() + interval;
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50).min(interval));
                    if Instant::now() < next {
                        continue;
                    }
                    next = Instant::now() + interval;
                    beat += 1;
                    if let Err(e) =
                        fsops::write_replace(&lease_path, format!("{header}beat={beat}\n").as_bytes())
                        && lease_path.parent().is_some_and(Path::exists)
                    {
                        tracing::warn!("cannot renew the claim lease {}: {e}", lease_path.display());
                    }
                }
            })?
        };
        Ok(WorkArea {
            inbox: inbox.to_path_buf(),
            root,
            dir,
            files,
            journal,
            id,
            host,
            scope,
            lease: Some(LeaseKeeper { stop, thread: Some(thread) }),
        })
    }

    /// Atomically moves `<inbox>/<name>` into our `files/`. `Ok(None)`: another instance was faster (or the
    /// file went away).
    pub fn claim(&self, name: &str) -> std::io::Result<Option<PathBuf>> {
        self.ensure_folders()?;
        let target = self.files.join(name);
        // A file of this name may still be claimed here (its move to `processed`/`failed` failed): a rename
        // would silently replace it and lose that input. Only this instance writes into `files/`, so the check
        // cannot race; the new file stays in the inbox and is tried again later.
        if std::fs::symlink_metadata(&target).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("a file named {name} is still claimed by this instance (its earlier move failed)"),
            ));
        }
        match std::fs::rename(self.inbox.join(name), &target) {
            Ok(()) => Ok(Some(target)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Recreates our folders if they vanished: another instance judged us dead (our lease could not be renewed,
    /// e.g. the share was unreachable for longer than `claim_stale_secs`) and adopted our work folder.
    fn ensure_folders(&self) -> std::io::Result<()> {
        if self.files.is_dir() && self.journal.is_dir() {
            return Ok(());
        }
        tracing::warn!(
            "our work folder {} was taken over by another instance (our lease went stale); recreating it",
            self.dir.display()
        );
        std::fs::create_dir_all(&self.files)?;
        std::fs::create_dir_all(&self.journal)
    }

    /// Puts a claimed file back into the inbox (never over a new file of the same name: then as `_1`, … with
    /// its count of interrupted runs following it).
    pub fn hand_back(&self, claimed: &Path, name: &str) -> std::io::Result<PathBuf> {
        let to = fsops::move_no_clobber(claimed, &self.inbox, name)?;
        follow_renamed_hand_back(&self.root, name, &to);
        Ok(to)
    }

    /// The journal entry of the claimed input `name`.
    pub fn journal_entry(&self, name: &str) -> PathBuf {
        self.journal.join(journal_file_name(name))
    }

    /// Stops the lease and removes our work folder, if nothing is left in it (otherwise the folder stays and
    /// the next instance recovers it once the lease is stale). Returns false when something was left.
    pub fn close(mut self) -> bool {
        drop(self.lease.take());
        self.remove_if_empty()
    }

    fn remove_if_empty(&self) -> bool {
        let busy = |dir: &Path| std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
        if busy(&self.files) || busy(&self.journal) || busy(&self.dir.join(ADOPTED)) {
            return false;
        }
        std::fs::remove_dir_all(&self.dir).is_ok()
    }
}

/// The journal file of the input `name`: a digest, so a name near the file-system limit still gets one.
fn journal_file_name(name: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("{hex}.json")
}

/// After this many runs of the program stopped while they held an input (killed, crashed, out of memory, the
/// machine went down), recovery sends the input to `failed` instead of handing it back: a file that makes the
/// process die would otherwise be taken again after every restart, for ever.
pub const MAX_INTERRUPTED_RUNS: usize = 3;

/// Largest interruption record read back (a few hundred bytes are written; anything bigger was not ours).
const MAX_INTERRUPTION_RECORD: u64 = 64 * 1024;

/// How often an input was held by an instance that died: `<work root>/interrupted-<digest of the name>.json`,
/// a file directly in the shared work root (never taken for a work folder: those are folders), so that every
/// instance recovering the file counts on the same record.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct InterruptedRuns {
    name: String,
    /// Size and modification time of the file: a new version under the same name starts again from zero.
    size: u64,
    modified_ns: Option<u64>,
    /// The dead instances that held it, each counted once (a recovery cut short and done again, or a
    /// folder adopted by an instance that died in turn, is not a second interruption).
    instances: Vec<String>,
}

fn interruptions_path(root: &Path, name: &str) -> PathBuf {
    root.join(format!("interrupted-{}", journal_file_name(name)))
}

/// The record at `path`; `None` when there is none, or what is there is not one of ours (not a file, larger
/// than any we write, not our JSON).
fn read_interruptions(path: &Path) -> std::io::Result<Option<InterruptedRuns>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && m.len() <= MAX_INTERRUPTION_RECORD => {
            Ok(serde_json::from_slice::<InterruptedRuns>(&std::fs::read(path)?).ok())
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_interruptions(path: &Path, record: &InterruptedRuns) -> std::io::Result<()> {
    fsops::write_replace(path, &serde_json::to_vec(record).map_err(std::io::Error::other)?)
}

/// Records that the dead instance `instance` held `claimed` (named `name` in the inbox) and returns how many
/// dead instances held this same file (same name, size and modification time) so far.
pub fn count_interrupted_run(
    root: &Path,
    claimed: &Path,
    name: &str,
    instance: &str,
) -> std::io::Result<usize> {
    let meta = std::fs::metadata(claimed)?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok());
    let path = interruptions_path(root, name);
    let mut record = read_interruptions(&path)?
        .filter(|r| r.name == name && r.size == meta.len() && r.modified_ns == modified_ns)
        .unwrap_or_else(|| InterruptedRuns {
            name: name.to_string(),
            size: meta.len(),
            modified_ns,
            instances: Vec::new(),
        });
    if !record.instances.iter().any(|i| i == instance) {
        record.instances.push(instance.to_string());
        write_interruptions(&path, &record)?;
    }
    Ok(record.instances.len())
}

/// The input `name` was handed back to the inbox as `to`: when that is another name (a new file took its own),
/// its record of interrupted runs follows it, so the count goes on under the name it will be taken by.
fn follow_renamed_hand_back(root: &Path, name: &str, to: &Path) {
    let Some(new_name) = to.file_name().and_then(|n| n.to_str()) else { return };
    let old = interruptions_path(root, name);
    if new_name == name {
        return;
    }
    let moved = read_interruptions(&old)
        .ok()
        .flatten()
        .filter(|record| record.name == name)
        .map(|record| InterruptedRuns { name: new_name.to_string(), ..record })
        .map(|record| write_interruptions(&interruptions_path(root, new_name), &record));
    if let Some(Err(e)) = moved {
        tracing::warn!("cannot carry the count of interrupted runs of {name} over to {new_name}: {e}");
    }
    let _ = std::fs::remove_file(old);
}

/// Forgets the interrupted runs of the input `name`: it reached `processed` or `failed`.
pub fn forget_interrupted_runs(root: &Path, name: &str) {
    let _ = std::fs::remove_file(interruptions_path(root, name));
}

/// Deletes the interruption records nobody touched for `age` (their file never came back to the inbox), and
/// the temporary files of record writes cut short by a crash (older than an hour: a write takes moments).
pub fn remove_old_interruption_records(root: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(String::from) else { continue };
        let kept_for = if name.starts_with("interrupted-") {
            age
        } else if name.starts_with(".write.") && name.ends_with(".tmp") {
            age.min(Duration::from_secs(3600))
        } else {
            continue;
        };
        let old = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|elapsed| elapsed >= kept_for);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A journal entry: the one step that makes an output visible.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct JournalRecord {
    /// `publishing` or `published`.
    state: String,
    temp: PathBuf,
    final_name: String,
    outbox: PathBuf,
    /// Device and inode of the temporary file (Unix), to recognise it under its published name.
    file_id: Option<(u64, u64)>,
    published: Option<PathBuf>,
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Where the publication of the current workbook stands; shared by the worker (through the hooks) and the
/// main loop (which may cancel it on shutdown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateState {
    Working,
    Publishing,
    Published(PathBuf),
    /// The main loop handed the input back: the output must not be published.
    Cancelled,
}

#[derive(Debug)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate { state: Mutex::new(GateState::Working), changed: Condvar::new() })
    }

    pub fn state(&self) -> GateState {
        self.state.lock().map(|s| s.clone()).unwrap_or(GateState::Working)
    }

    fn set(&self, state: GateState) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
        self.changed.notify_all();
    }

    /// Cancels the publication unless it already started. Returns the state found.
    pub fn cancel(&self) -> GateState {
        let Ok(mut s) = self.state.lock() else { return GateState::Working };
        let found = s.clone();
        if found == GateState::Working {
            *s = GateState::Cancelled;
        }
        found
    }
}

/// The publish hooks of one claimed input: journal before and after the rename into the outbox.
pub struct JournalHooks {
    pub gate: Arc<Gate>,
    pub entry: PathBuf,
    pub outbox: PathBuf,
    /// Test hook: abort the process right after the output was published (`VTTL_TEST_ABORT_AFTER_PUBLISH`).
    pub abort_after_publish: bool,
    /// Where the analyst dropped the file (named in the report instead of the claimed copy).
    pub inbox_path: PathBuf,
    /// Our instance id, named in our temporary files in the outbox.
    pub temp_owner: String,
}

impl crate::enrich::PublishHooks for JournalHooks {
    fn reported_input(&self) -> Option<&Path> {
        Some(&self.inbox_path)
    }

    fn temp_owner(&self) -> Option<&str> {
        Some(&self.temp_owner)
    }

    fn before_publish(&self, temp: &Path, final_name: &str) -> std::io::Result<()> {
        let mut state = self.gate.state.lock().map_err(|_| std::io::Error::other("poisoned gate"))?;
        if *state == GateState::Cancelled {
            return Err(std::io::Error::other("shutting down: the input was handed back"));
        }
        let record = JournalRecord {
            state: "publishing".into(),
            temp: temp.to_path_buf(),
            final_name: final_name.to_string(),
            outbox: self.outbox.clone(),
            file_id: file_id(temp),
            published: None,
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
        fsops::write_replace(&self.entry, &bytes)?;
        *state = GateState::Publishing;
        Ok(())
    }

    fn after_publish(&self, published: &Path) {
        let update = std::fs::read(&self.entry)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<JournalRecord>(&bytes).ok())
            .map(|mut record| {
                record.state = "published".into();
                record.published = Some(published.to_path_buf());
                record
            });
        if let Some(record) = update
            && let Ok(bytes) = serde_json::to_vec_pretty(&record)
            && let Err(e) = fsops::write_replace(&self.entry, &bytes)
        {
            tracing::warn!("cannot update the journal {}: {e}", self.entry.display());
        }
        if self.abort_after_publish {
            std::process::abort();
        }
        self.gate.set(GateState::Published(published.to_path_buf()));
    }
}

/// What a journal entry says about its input after a crash.
#[derive(Debug, PartialEq, Eq)]
pub enum JournalVerdict {
    /// The output is in the outbox: the input goes to `processed`.
    Published,
    /// No output was published: the input is processed again.
    NotPublished,
}

/// Reads a journal entry left by a dead instance, deleting its orphaned temporary file.
pub fn judge_journal(entry: &Path) -> JournalVerdict {
    let Some(record) =
        std::fs::read(entry).ok().and_then(|bytes| serde_json::from_slice::<JournalRecord>(&bytes).ok())
    else {
        // Unreadable: written atomically, so this means it never finished: nothing was published.
        return JournalVerdict::NotPublished;
    };
    if record.state == "published" {
        return JournalVerdict::Published;
    }
    // The temporary file disappears only by being renamed to its final name (a failed publication removes the
    // journal entry itself), so a missing temporary file means published — even when a next stage of a chain
    // has already taken the output away from the outbox.
    if !record.temp.exists() {
        return JournalVerdict::Published;
    }
    if let Some(id) = record.file_id {
        // Unix: a link+unlink rename may have left both names; find the file by its identity.
        // The names tried in order: each taken, or skipped because its report name was taken.
        let published = (0..10_000u32)
            .map(|attempt| crate::outbox::candidate_name(&record.final_name, attempt))
            .take_while(|name| {
                record.outbox.join(name).exists()
                    || record.outbox.join(crate::outbox::report_name(name)).exists()
            })
            .any(|name| file_id(&record.outbox.join(name)) == Some(id));
        let _ = std::fs::remove_file(&record.temp);
        return if published { JournalVerdict::Published } else { JournalVerdict::NotPublished };
    }
    let _ = std::fs::remove_file(&record.temp);
    JournalVerdict::NotPublished
}

/// Observations of the other instances' leases.
#[derive(Debug, Default)]
pub struct Liveness {
    seen: std::collections::HashMap<String, (Vec<u8>, Instant)>,
}

impl Liveness {
    /// The ids of the work folders (other than ours) that are dead by now.
    pub fn dead_folders(&mut self, work: &WorkArea, stale: Duration, now: Instant) -> Vec<String> {
        let mut dead = Vec::new();
        let mut present = std::collections::HashSet::new();
        let Ok(entries) = std::fs::read_dir(&work.root) else { return dead };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(String::from) else { continue };
            if id == work.id || !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            present.insert(id.clone());
            let lease = std::fs::read(entry.path().join(LEASE)).unwrap_or_default();
            if process_is_gone(&lease, &work.host, &work.scope) {
                dead.push(id);
                continue;
            }
            match self.seen.get_mut(&id) {
                Some((content, since)) if *content == lease => {
                    if now.duration_since(*since) >= stale {
                        dead.push(id);
                    }
                }
                Some(slot) => *slot = (lease, now),
                None => {
                    self.seen.insert(id, (lease, now));
                }
            }
        }
        self.seen.retain(|id, _| present.contains(id));
        dead
    }
}

/// Same host, same boot ([`pid_scope`]), and its pid no longer runs (Linux and Windows; elsewhere never).
fn process_is_gone(lease: &[u8], our_host: &str, our_scope: &str) -> bool {
    if our_host.is_empty() || our_scope.is_empty() {
        return false;
    }
    let text = String::from_utf8_lossy(lease);
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    match (field("host="), field("scope="), field("pid=").and_then(|p| p.parse::<u32>().ok())) {
        (Some(host), Some(scope), Some(pid)) if host == our_host && scope == our_scope => {
            pid != std::process::id() && no_such_process(pid)
        }
        _ => false,
    }
}

/// True when no process `pid` runs on this machine (in our pid namespace); false when one does or we cannot
/// tell.
#[cfg(target_os = "linux")]
fn no_such_process(pid: u32) -> bool {
    // `/proc/1` hidden means `/proc` is mounted with `hidepid`: other users' processes are invisible, so an
    // absent `/proc/<pid>` proves nothing.
    Path::new("/proc/self").exists()
        && Path::new("/proc/1").exists()
        && !Path::new("/proc").join(pid.to_string()).exists()
}

/// True when no process `pid` runs on this machine; false when one does (even one we may not query) or we
/// cannot tell.
#[cfg(windows)]
fn no_such_process(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_INVALID_PARAMETER, GetLastError, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    // SAFETY: plain Win32 calls; the handle is checked before use and closed once.
    unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            // Only "no such process" counts; access denied and the rest mean it may well be running.
            return GetLastError() == ERROR_INVALID_PARAMETER;
        }
        let mut code = 0u32;
        let exited = GetExitCodeProcess(handle, &mut code) != 0 && code != STILL_ACTIVE as u32;
        CloseHandle(handle);
        exited
    }
}

#[cfg(not(any(target_os = "linux", windows)))]
fn no_such_process(_pid: u32) -> bool {
    false
}

/// What recovery did.
#[derive(Debug, Default)]
pub struct Recovered {
    pub handed_back: usize,
    pub processed: usize,
    /// Inputs sent to `failed`: [`MAX_INTERRUPTED_RUNS`] instances died while they held them.
    pub failed: usize,
    /// Temporary files of the dead instances deleted from the outbox.
    pub temp_files_removed: usize,
}

/// Adopts the dead work folder `id` and settles every input it held; then deletes the temporary files the
/// dead instance (and those it had adopted) left in `outbox`. Those are deleted only once every input of
/// that instance is settled: until then its journal may still need its temporary output to tell
/// "never published" from "published". An input that was never published is handed back to the inbox, or
/// sent to `failed_dir` once [`MAX_INTERRUPTED_RUNS`] dead instances held it.
pub fn recover(
    work: &WorkArea,
    id: &str,
    processed_dir: &Path,
    failed_dir: &Path,
    outbox: &Path,
) -> std::io::Result<Recovered> {
    let adopted_root = work.dir.join(ADOPTED);
    std::fs::create_dir_all(&adopted_root)?;
    let adopted = adopted_root.join(id);
    match std::fs::rename(work.root.join(id), &adopted) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recovered::default()),
        Err(e) => return Err(e),
    }
    tracing::warn!("recovering the claims of instance {id}, which is no longer alive");
    settle_adopted(work, processed_dir, failed_dir, outbox)
}

/// Settles every folder in our `adopted/` folder: the one just adopted, and any left by an earlier recovery
/// that could not settle all its inputs (`processed` briefly unusable, say) — called on every liveness check,
/// so such inputs are not stranded until this instance dies. Then deletes the temporary files the settled
/// instances left in `outbox`.
pub fn settle_adopted(
    work: &WorkArea,
    processed_dir: &Path,
    failed_dir: &Path,
    outbox: &Path,
) -> std::io::Result<Recovered> {
    let mut done = Recovered::default();
    let mut settled = Vec::new();
    let Ok(adopted) = std::fs::read_dir(work.dir.join(ADOPTED)) else { return Ok(done) };
    for entry in adopted.flatten() {
        let places = Places { processed: processed_dir, failed: failed_dir, outbox };
        if let Err(e) = settle_folder(work, &entry.path(), &places, &mut done, &mut settled) {
            tracing::error!("cannot settle {} yet ({e}); trying again", entry.path().display());
        }
    }
    for dead in &settled {
        done.temp_files_removed += crate::outbox::remove_temp_files_of(outbox, dead);
    }
    if done.temp_files_removed > 0 {
        tracing::info!(
            "deleted {} temporary file(s) that instance(s) {} left in {}",
            done.temp_files_removed,
            settled.join(", "),
            outbox.display()
        );
    }
    Ok(done)
}

/// Where recovery puts the inputs it settles.
struct Places<'a> {
    processed: &'a Path,
    failed: &'a Path,
    outbox: &'a Path,
}

/// Settles every input of a dead work folder (and, first, of the folders it had adopted itself), then removes
/// the folder when nothing is left in it, adding its instance id (the folder's name) to `settled`.
fn settle_folder(
    work: &WorkArea,
    folder: &Path,
    places: &Places<'_>,
    done: &mut Recovered,
    settled: &mut Vec<String>,
) -> std::io::Result<()> {
    if let Ok(nested) = std::fs::read_dir(folder.join(ADOPTED)) {
        for entry in nested.flatten() {
            settle_folder(work, &entry.path(), places, done, settled)?;
        }
    }
    let processed_dir = places.processed;
    // The folder's name is the id of the instance that held its inputs.
    let holder = folder.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let journal = folder.join(JOURNAL);
    if let Ok(files) = std::fs::read_dir(folder.join(FILES)) {
        for entry in files.flatten() {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                tracing::warn!("cannot recover {}: the name is not valid Unicode", path.display());
                continue;
            };
            let entry_path = journal.join(journal_file_name(&name));
            let verdict =
                if entry_path.exists() { judge_journal(&entry_path) } else { JournalVerdict::NotPublished };
            // One input that cannot be settled now does not stop the others; it is tried again at the next
            // liveness check (`settle_adopted`).
            match verdict {
                JournalVerdict::Published => match fsops::move_no_clobber(&path, processed_dir, &name) {
                    Ok(to) => {
                        tracing::info!(
                            "recovered {name}: its output was published; input moved to {}",
                            to.display()
                        );
                        forget_interrupted_runs(&work.root, &name);
                        done.processed += 1;
                    }
                    Err(e) => {
                        tracing::error!(
                            "cannot move {name} to {} yet ({e}); trying again",
                            processed_dir.display()
                        );
                        continue;
                    }
                },
                JournalVerdict::NotPublished => {
                    let runs = count_interrupted_run(&work.root, &path, &name, holder).unwrap_or_else(|e| {
                        tracing::warn!("cannot record that a run stopped while it held {name}: {e}");
                        0
                    });
                    if runs >= MAX_INTERRUPTED_RUNS {
                        let reason = format!(
                            "the program stopped {runs} times while it held this file (killed, crashed, out of \
                             memory, or the machine went down), so it is not taken again; put it back into the \
                             inbox to try once more"
                        );
                        if !super::quarantine_input(
                            places.failed,
                            places.outbox,
                            &work.id,
                            &path,
                            &name,
                            "enrich",
                            &reason,
                        ) {
                            continue;
                        }
                        forget_interrupted_runs(&work.root, &name);
                        done.failed += 1;
                    } else {
                        match work.hand_back(&path, &name) {
                            Ok(to) => {
                                tracing::info!(
                                    "recovered {name}: handed back to the inbox as {} (runs that stopped while \
                                     holding it: {runs} of {MAX_INTERRUPTED_RUNS})",
                                    to.display()
                                );
                                done.handed_back += 1;
                            }
                            Err(e) => {
                                tracing::error!(
                                    "cannot hand {name} back to the inbox yet ({e}); trying again"
                                );
                                continue;
                            }
                        }
                    }
                }
            }
            let _ = std::fs::remove_file(&entry_path);
        }
    }
    let left = std::fs::read_dir(folder.join(FILES)).map(|mut d| d.next().is_some()).unwrap_or(false);
    if left {
        tracing::warn!(
            "{} still holds files that could not be recovered; it is left in place",
            folder.display()
        );
    } else {
        std::fs::remove_dir_all(folder)?;
        if let Some(id) = folder.file_name().and_then(|n| n.to_str()) {
            settled.push(id.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::PublishHooks;

    fn hooks(dir: &Path, outbox: &Path) -> JournalHooks {
        JournalHooks {
            gate: Gate::new(),
            entry: dir.join("book.csv.json"),
            outbox: outbox.to_path_buf(),
            abort_after_publish: false,
            inbox_path: dir.join("book.csv"),
            temp_owner: "host-1-2-abcd".into(),
        }
    }

    #[test]
    fn a_claim_never_replaces_a_file_still_claimed_under_the_same_name() {
        let inbox = tempfile::tempdir().unwrap();
        let work = WorkArea::create(inbox.path(), Duration::from_secs(60)).unwrap();
        std::fs::write(inbox.path().join("book.csv"), b"FIRST").unwrap();
        let first = work.claim("book.csv").unwrap().expect("claimed");
        // the first file could not be moved on (say `processed` was unwritable) and is still claimed
        std::fs::write(inbox.path().join("book.csv"), b"SECOND").unwrap();
        let err = work.claim("book.csv").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&first).unwrap(), b"FIRST");
        assert_eq!(std::fs::read(inbox.path().join("book.csv")).unwrap(), b"SECOND");
        std::fs::remove_file(&first).unwrap();
        assert!(work.claim("book.csv").unwrap().is_some());
    }

    /// A recovery that cannot settle an input now (here `processed` is a file, as when it is briefly unusable)
    /// leaves it in our `adopted/` folder, goes on with the other inputs, and the next call — every liveness
    /// check makes one — settles it; the dead instance's temporary files go once its folder is empty.
    #[test]
    fn inputs_a_recovery_could_not_settle_are_settled_by_a_later_call() {
        let inbox = tempfile::tempdir().unwrap();
        let outbox = inbox.path().join("outbox");
        std::fs::create_dir(&outbox).unwrap();
        let work = WorkArea::create(inbox.path(), Duration::from_secs(60)).unwrap();
        let dead_id = "otherhost-77-1-abcd";
        let dead = work.root.join(dead_id);
        std::fs::create_dir_all(dead.join(FILES)).unwrap();
        std::fs::create_dir_all(dead.join(JOURNAL)).unwrap();
        std::fs::write(dead.join(FILES).join("published.csv"), b"published input").unwrap();
        std::fs::write(dead.join(FILES).join("pending.csv"), b"pending input").unwrap();
        let record = JournalRecord {
            state: "published".into(),
            temp: outbox.join(".published.tmp"),
            final_name: "published.csv".into(),
            outbox: outbox.clone(),
            file_id: None,
            published: Some(outbox.join("published.csv")),
        };
        let journal_entry = dead.join(JOURNAL).join(journal_file_name("published.csv"));
        std::fs::write(&journal_entry, serde_json::to_vec(&record).unwrap()).unwrap();
        let (_, leftover) =
            crate::outbox::owned_temp_file(&outbox, "book.csv", Some(dead_id)).unwrap().keep().unwrap();

        let unusable = inbox.path().join("processed-is-a-file");
        std::fs::write(&unusable, b"").unwrap();
        let failed = inbox.path().join("failed");
        let first = recover(&work, dead_id, &unusable, &failed, &outbox).unwrap();
        assert_eq!((first.handed_back, first.processed), (1, 0));
        assert_eq!(std::fs::read(inbox.path().join("pending.csv")).unwrap(), b"pending input");
        assert!(leftover.exists(), "deleted before the dead instance's inputs were all settled");

        let processed = inbox.path().join("processed");
        std::fs::create_dir(&processed).unwrap();
        let second = settle_adopted(&work, &processed, &failed, &outbox).unwrap();
        assert_eq!((second.handed_back, second.processed, second.temp_files_removed), (0, 1, 1));
        assert_eq!(std::fs::read(processed.join("published.csv")).unwrap(), b"published input");
        assert!(!leftover.exists());
        assert!(std::fs::read_dir(work.dir.join(ADOPTED)).map(|mut d| d.next().is_none()).unwrap_or(true));
    }

    /// Puts `bytes` as the claimed input `name` of a dead instance `id` (a work folder without a lease) and
    /// recovers it; returns what recovery did.
    fn recover_from_dead(
        work: &WorkArea,
        id: &str,
        name: &str,
        bytes: &[u8],
        modified: std::time::SystemTime,
    ) -> Recovered {
        let inbox = &work.inbox;
        let dead = work.root.join(id);
        std::fs::create_dir_all(dead.join(FILES)).unwrap();
        std::fs::create_dir_all(dead.join(JOURNAL)).unwrap();
        let file = std::fs::File::create(dead.join(FILES).join(name)).unwrap();
        std::io::Write::write_all(&mut &file, bytes).unwrap();
        file.set_modified(modified).unwrap();
        drop(file);
        let (processed, failed, outbox) =
            (inbox.join("processed"), inbox.join("failed"), inbox.join("outbox"));
        for dir in [&processed, &failed, &outbox] {
            std::fs::create_dir_all(dir).unwrap();
        }
        recover(work, id, &processed, &failed, &outbox).unwrap()
    }

    /// A file held by [`MAX_INTERRUPTED_RUNS`] instances that died is sent to `failed` with its reason instead of
    /// being handed back once more; a recovery repeated for the same dead instance counts once; a new version
    /// of the file under the same name starts from zero; a file that is done has its count forgotten.
    #[test]
    fn a_file_held_by_three_instances_that_died_goes_to_failed() {
        let inbox = tempfile::tempdir().unwrap();
        let work = WorkArea::create(inbox.path(), Duration::from_secs(60)).unwrap();
        let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let take_back = |expected: &[u8]| {
            assert_eq!(std::fs::read(inbox.path().join("poison.csv")).unwrap(), expected);
            std::fs::remove_file(inbox.path().join("poison.csv")).unwrap();
        };
        for (run, id) in ["a-1-1-0001", "b-2-2-0002"].into_iter().enumerate() {
            let done = recover_from_dead(&work, id, "poison.csv", b"POISON", when);
            assert_eq!((done.handed_back, done.failed), (1, 0), "run {run}");
            take_back(b"POISON");
        }
        // The same dead instance once more (a folder adopted by an instance that died in turn): not a third run.
        let done = recover_from_dead(&work, "b-2-2-0002", "poison.csv", b"POISON", when);
        assert_eq!((done.handed_back, done.failed), (1, 0));
        take_back(b"POISON");
        let done = recover_from_dead(&work, "c-3-3-0003", "poison.csv", b"POISON", when);
        assert_eq!((done.handed_back, done.failed), (0, 1));
        let failed = inbox.path().join("failed");
        assert_eq!(std::fs::read(failed.join("poison.csv")).unwrap(), b"POISON");
        let note = std::fs::read_to_string(failed.join("poison.csv.error.txt")).unwrap();
        assert!(note.contains("stopped 3 times while it held this file"), "{note}");
        assert!(note.contains(&format!("instance: {}", work.id)), "{note}");
        let error_log = std::fs::read_to_string(inbox.path().join("outbox").join("VTTL_Error.log")).unwrap();
        assert!(error_log.contains("poison.csv failed at step `enrich`"), "{error_log}");
        // Its count went with it: put back into the inbox, it gets its three runs again.
        assert!(!interruptions_path(&work.root, "poison.csv").exists());

        // Another version of a file (other size or time) does not inherit the count of the old one.
        for (run, (bytes, secs)) in
            [(&b"v1"[..], 1), (b"v2-longer", 1), (b"v2-longer", 2)].into_iter().enumerate()
        {
            let id = format!("d-{run}-4-0004");
            let done = recover_from_dead(&work, &id, "book.csv", bytes, when + Duration::from_secs(secs));
            assert_eq!((done.handed_back, done.failed), (1, 0), "version {run}");
            std::fs::remove_file(inbox.path().join("book.csv")).unwrap();
        }
        let runs = count_interrupted_run(&work.root, &failed.join("poison.csv"), "book.csv", "x").unwrap();
        assert_eq!(runs, 1, "a file of another size and time starts from zero");
        forget_interrupted_runs(&work.root, "book.csv");
        assert!(!interruptions_path(&work.root, "book.csv").exists());
        // A record nobody touched for long is deleted; a recent one stays.
        // So is the temporary file of a record write cut short by a crash.
        count_interrupted_run(&work.root, &failed.join("poison.csv"), "old.csv", "x").unwrap();
        let cut_short = work.root.join(".write.abc123.tmp");
        std::fs::write(&cut_short, b"{").unwrap();
        remove_old_interruption_records(&work.root, Duration::from_secs(3600));
        assert!(interruptions_path(&work.root, "old.csv").exists() && cut_short.exists());
        remove_old_interruption_records(&work.root, Duration::ZERO);
        assert!(!interruptions_path(&work.root, "old.csv").exists() && !cut_short.exists());
    }

    /// Two deaths counted for `name`; then the input as a dead instance `id`'s claim, recovered into `failed`.
    fn third_death(work: &WorkArea, name: &str, failed: &Path) -> Recovered {
        let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for id in ["a-1-1-0001", "b-2-2-0002"] {
            recover_from_dead(work, id, name, b"POISON", when);
            std::fs::remove_file(work.inbox.join(name)).unwrap();
        }
        let dead = work.root.join("c-3-3-0003");
        std::fs::create_dir_all(dead.join(FILES)).unwrap();
        let file = std::fs::File::create(dead.join(FILES).join(name)).unwrap();
        std::io::Write::write_all(&mut &file, b"POISON").unwrap();
        file.set_modified(when).unwrap();
        drop(file);
        recover(work, "c-3-3-0003", &work.inbox.join("processed"), failed, &work.inbox.join("outbox"))
            .unwrap()
    }

    /// While `failed` cannot take the file, recovery tries again at each liveness check without adding a
    /// "failed" line to the error log each time; the one line comes when the file is there.
    #[test]
    fn a_quarantine_that_must_wait_logs_its_failure_once() {
        let inbox = tempfile::tempdir().unwrap();
        let work = WorkArea::create(inbox.path(), Duration::from_secs(60)).unwrap();
        let blocked = inbox.path().join("failed-is-a-file");
        std::fs::write(&blocked, b"").unwrap();
        let (processed, outbox) = (inbox.path().join("processed"), inbox.path().join("outbox"));
        let error_lines = || {
            let log = std::fs::read_to_string(outbox.join("VTTL_Error.log")).unwrap_or_default();
            log.lines().filter(|l| l.contains("poison.csv failed")).count()
        };
        assert_eq!(third_death(&work, "poison.csv", &blocked).failed, 0);
        for _ in 0..3 {
            assert_eq!(settle_adopted(&work, &processed, &blocked, &outbox).unwrap().failed, 0);
        }
        assert_eq!(error_lines(), 0);
        let failed = inbox.path().join("failed");
        std::fs::create_dir_all(&failed).unwrap();
        assert_eq!(settle_adopted(&work, &processed, &failed, &outbox).unwrap().failed, 1);
        assert_eq!(std::fs::read(failed.join("poison.csv")).unwrap(), b"POISON");
        assert_eq!(error_lines(), 1);
    }

    /// A file whose output was published before its holder died reaches `processed` through recovery: its count
    /// goes, so the same file dropped again later has its three runs.
    #[test]
    fn a_file_recovered_as_published_forgets_its_count() {
        let inbox = tempfile::tempdir().unwrap();
        let work = WorkArea::create(inbox.path(), Duration::from_secs(60)).unwrap();
        let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        recover_from_dead(&work, "a-1-1-0001", "book.csv", b"BOOK", when);
        std::fs::remove_file(inbox.path().join("book.csv")).unwrap();
        assert!(interruptions_path(&work.root, "book.csv").exists());
        let dead = work.root.join("b-2-2-0002");
        std::fs::create_dir_all(dead.join(JOURNAL)).unwrap();
        let record = JournalRecord {
            state: "published".into(),
            temp: inbox.path().join(".book.tmp"),
            final_name: "book.csv".into(),
            outbox: inbox.path().join("outbox"),
            file_id: None,
            published: None,
        };
        let entry = dead.join(JOURNAL).join(journal_file_name("book.csv"));
        std::fs::write(entry, serde_json::to_vec(&record).unwrap()).unwrap();
        let done = recover_from_dead(&work, "b-2-2-0002", "book.csv", b"BOOK", when);
        assert_eq!((done.processed, done.handed_back), (1, 0));
        assert!(!interruptions_path(&work.root, "book.csv").exists());
    }

    /// Handed back as `poison_1.csv` (a new `poison.csv` took the name), the file keeps its count under the name
    /// it will be taken by: the third death still sends it to `failed`.
    #[test]
    fn the_count_follows_a_file_handed_back_under_another_name() {
        let inbox = tempfile::tempdir().unwrap();
        let work = WorkArea::create(inbox.path(), Duration::from_secs(60)).unwrap();
        let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        recover_from_dead(&work, "a-1-1-0001", "poison.csv", b"POISON", when);
        std::fs::remove_file(inbox.path().join("poison.csv")).unwrap();
        std::fs::write(inbox.path().join("poison.csv"), b"another file").unwrap();
        let done = recover_from_dead(&work, "b-2-2-0002", "poison.csv", b"POISON", when);
        assert_eq!(done.handed_back, 1);
        assert_eq!(std::fs::read(inbox.path().join("poison_1.csv")).unwrap(), b"POISON");
        assert!(!interruptions_path(&work.root, "poison.csv").exists(), "the old name's record is gone");
        std::fs::remove_file(inbox.path().join("poison_1.csv")).unwrap();
        let done = recover_from_dead(&work, "c-3-3-0003", "poison_1.csv", b"POISON", when);
        assert_eq!((done.handed_back, done.failed), (0, 1), "the third death holding the same file");
        assert_eq!(std::fs::read(inbox.path().join("poison.csv")).unwrap(), b"another file");
    }

    #[test]
    fn journal_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox");
        std::fs::create_dir(&outbox).unwrap();

        // crash before the rename: the temporary file is still there → not published, temp removed
        let h = hooks(dir.path(), &outbox);
        let temp = outbox.join(".book.tmp");
        std::fs::write(&temp, b"complete").unwrap();
        h.before_publish(&temp, "book.csv").unwrap();
        assert_eq!(h.gate.state(), GateState::Publishing);
        assert_eq!(judge_journal(&h.entry), JournalVerdict::NotPublished);
        assert!(!temp.exists());

        // crash right after the rename, before the journal said so → published (found by inode on Unix)
        std::fs::write(outbox.join("book.csv"), b"an older output").unwrap();
        std::fs::write(&temp, b"complete").unwrap();
        h.before_publish(&temp, "book.csv").unwrap();
        std::fs::rename(&temp, outbox.join("book_1.csv")).unwrap();
        assert_eq!(judge_journal(&h.entry), JournalVerdict::Published);

        // the journal says published
        h.after_publish(&outbox.join("book_1.csv"));
        assert_eq!(h.gate.state(), GateState::Published(outbox.join("book_1.csv")));
        assert_eq!(judge_journal(&h.entry), JournalVerdict::Published);

        // the output was renamed and a next stage of a chain already took it out of the outbox → published
        // (no second output), whatever names are left in the outbox
        {
            let h = hooks(dir.path(), &outbox);
            std::fs::write(&temp, b"complete").unwrap();
            h.before_publish(&temp, "book.csv").unwrap();
            let next_inbox = dir.path().join("next-inbox");
            std::fs::create_dir_all(&next_inbox).unwrap();
            std::fs::rename(&temp, next_inbox.join("book.csv")).unwrap();
            assert_eq!(judge_journal(&h.entry), JournalVerdict::Published);
        }

        // Unix, a link+unlink rename stopped between its steps, the output under a name after one skipped
        // because its report name was taken (`book.csv` gone, `book.csv.report.json` left): found → published
        #[cfg(unix)]
        {
            let outbox = dir.path().join("outbox-with-a-report");
            std::fs::create_dir(&outbox).unwrap();
            std::fs::write(outbox.join("book.csv.report.json"), b"{}").unwrap();
            let h = JournalHooks { entry: dir.path().join("linked.json"), ..hooks(dir.path(), &outbox) };
            let temp = outbox.join(".book.linked.tmp");
            std::fs::write(&temp, b"complete").unwrap();
            h.before_publish(&temp, "book.csv").unwrap();
            std::fs::hard_link(&temp, outbox.join("book_1.csv")).unwrap();
            assert_eq!(judge_journal(&h.entry), JournalVerdict::Published);
        }

        // a cancelled gate refuses to publish and writes no journal
        let h = hooks(dir.path(), &outbox);
        std::fs::remove_file(&h.entry).unwrap();
        assert_eq!(h.gate.cancel(), GateState::Working);
        assert!(h.before_publish(&temp, "book.csv").is_err());
        assert!(!h.entry.exists());
    }

    #[test]
    #[ignore = "a helper process of same_scope_dead_pid_is_gone_other_hosts_never"]
    fn helper_that_waits_to_be_killed() {
        std::thread::sleep(Duration::from_secs(60));
    }

    /// Starts [`helper_that_waits_to_be_killed`] in a process of its own.
    fn waiting_helper() -> std::process::Child {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "watch::claims::tests::helper_that_waits_to_be_killed"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    #[test]
    fn only_the_temporary_files_of_dead_one_shot_runs_of_this_machine_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut running = waiting_helper();
        let mut killed = waiting_helper();
        killed.kill().unwrap();
        killed.wait().unwrap();
        let Some(dead) = one_shot_owner_of(killed.id()) else {
            // No host name or pid scope here: runs carry no owner, and nothing is ever deleted.
            assert_eq!(one_shot_owner(), None);
            running.kill().unwrap();
            running.wait().unwrap();
            return;
        };
        let live = one_shot_owner_of(running.id()).unwrap();
        let ours = one_shot_owner().unwrap();
        assert!(dead.starts_with("enrich-") && dead.ends_with(&format!("-{}", killed.id())), "{dead}");
        let other_machine = format!("enrich-00000000-{}", killed.id());
        let mut kept = Vec::new();
        for owner in [Some(live.as_str()), Some(ours.as_str()), Some(other_machine.as_str()), None] {
            kept.push(
                crate::outbox::owned_temp_file(dir.path(), "book.csv", owner).unwrap().keep().unwrap().1,
            );
        }
        let mut doomed = Vec::new();
        for name in ["book.csv", "Hashes_Seclytic_1.log"] {
            doomed.push(
                crate::outbox::owned_temp_file(dir.path(), name, Some(&dead)).unwrap().keep().unwrap().1,
            );
        }
        // Where a process can be told gone: Windows, and Linux unless `/proc` hides other processes.
        let tellable = cfg!(windows) || Path::new("/proc/1").exists();
        assert_eq!(remove_temp_files_of_dead_runs(dir.path()), if tellable { 2 } else { 0 });
        running.kill().unwrap();
        running.wait().unwrap();
        for path in &kept {
            assert!(path.exists(), "{} deleted", path.display());
        }
        for path in &doomed {
            assert_eq!(path.exists(), !tellable, "{}", path.display());
        }
    }

    #[test]
    fn same_scope_dead_pid_is_gone_other_hosts_never() {
        let lease = |host: &str, scope: &str, pid: u32| format!("host={host}\nscope={scope}\npid={pid}\n");
        // A process of ours: this test binary running only the helper above, which waits; then killed.
        let mut child = waiting_helper();
        let pid = child.id();
        let scope = pid_scope();
        let alive = process_is_gone(lease("me", &scope, pid).as_bytes(), "me", &scope);
        child.kill().unwrap();
        child.wait().unwrap();
        let dead = pid;
        let gone = process_is_gone(lease("me", &scope, dead).as_bytes(), "me", &scope);
        assert!(!alive, "a running process judged gone");
        // Where processes can be told: Windows, and Linux unless `/proc` hides other processes (`hidepid`).
        let tellable = cfg!(windows)
            || (cfg!(target_os = "linux") && !scope.is_empty() && Path::new("/proc/1").exists());
        if tellable {
            assert!(gone, "a killed process not judged gone");
            assert!(!process_is_gone(lease("me", &scope, std::process::id()).as_bytes(), "me", &scope));
        } else {
            assert!(!gone, "without a scope only the lease rule applies");
        }
        assert!(!process_is_gone(lease("other", "s", dead).as_bytes(), "me", "s"));
        assert!(!process_is_gone(lease("me", "another-boot", dead).as_bytes(), "me", "s"));
        assert!(!process_is_gone(b"", "me", "s"));
    }
}
