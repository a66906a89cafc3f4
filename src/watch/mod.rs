//! The hot folder (SPEC §9): `vttl-seclytics watch [--once]`.
//!
//! One loop on the main thread decides everything; other threads only wake it up:
//!
//! * **Pick-up** ([`scan`]): the inbox is read at start, after every OS event (notify + the full debouncer,
//!   `poll_ms = 0`) or every `poll_ms` (network shares deliver no events; our own `read_dir` *is* the poll),
//!   and every `rescan_secs` in any mode as a safety net. Events never decide anything, the scan does. A file
//!   is taken once its size and modification time stayed the same for `settle_ms` (an `.xlsx` must also open).
//! * **Claim** ([`claims`]): atomic rename into this instance's work folder `<inbox>/.vttl-work/<id>/files/`;
//!   leases and recovery of dead instances' claims are described there.
//! * **Work**: one workbook at a time on a worker thread that owns the [`Enricher`] (the API client inside
//!   already runs lookups concurrently). The publish hooks journal the rename of the output into the outbox.
//! * **Results**: output published → input moved, unchanged, to `processed`. A file error → input moved to
//!   `failed` with `<name>.error.txt` (time, step, reason) and a line in the outbox's `VTTL_Error.log`; the loop
//!   goes on. A critical error (token refused, outbox not writable) → the input is handed back to the inbox
//!   and no file is taken any more: `--once` returns the error (exit 2, one line on stderr); the service logs
//!   it loudly and tries again after `critical_retry_secs`.
//! * **Shutdown** (Ctrl-C, SIGTERM, SIGHUP; Ctrl-C/Ctrl-Break on Windows): no new file is taken; the current
//!   workbook may finish for `shutdown_grace_secs`, else its input is handed back to the inbox (and its
//!   output can no longer be published: the hooks refuse once the hand-back is decided).
//! * **`--once`** handles every candidate in the inbox — waiting for files still being written to settle —
//!   and returns when a scan finds none left. Claims of other hosts that are not provably dead are left alone
//!   (a running service recovers them after `claim_stale_secs`).
//!
//! Decisions where the SPEC is silent: globs match case-insensitively; the inbox, `processed` and `failed`
//! must not be the outbox (a loop would re-enrich our own outputs); files are taken oldest-settled first; the
//! report's `input` is the path where the file was dropped in the inbox (the enricher reads the claimed copy).
//!
//! Test hooks, in debug builds only (release builds ignore the variables): with `VTTL_TEST_ABORT_AFTER_PUBLISH`
//! set in the environment the process aborts right after an output was renamed into the outbox, so the tests
//! can crash it in the one window the journal exists for; with `VTTL_TEST_ABORT_ON_TAKING=<name>` it aborts
//! right after claiming the input `<name>`, as a file that kills the process would.

pub mod claims;
pub mod fsops;
pub mod scan;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, Secret, WatchSettings};
use crate::enrich::{EnrichError, Enricher, FileReport};
use crate::error::CriticalError;
use claims::{Gate, GateState, JournalHooks, Liveness, WorkArea};
use scan::{NameFilter, Readiness, Settler};

/// How the watcher runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchOptions {
    /// Handle what is in the inbox, then return.
    pub once: bool,
    /// Ignore cached API answers.
    pub refresh: bool,
}

/// How a watch run ended (critical problems are errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// `--once` found the inbox empty, or the service was asked to stop and stopped cleanly.
    Finished(Counts),
    /// `--once` was interrupted by a signal before the inbox was empty.
    Interrupted(Counts),
}

/// Files handled in this run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub processed: usize,
    pub failed: usize,
    pub recovered: usize,
}

/// `--once` gives up on a file that cannot be claimed after this many attempts (and exits 2 at the end).
const CLAIM_ATTEMPTS: u32 = 3;
/// The service tries again to claim a file that could not be claimed after this long.
const CLAIM_RETRY: Duration = Duration::from_secs(30);

/// How long the record of the runs that stopped while holding a file is kept without being touched.
const INTERRUPTION_RECORDS_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Set by the signal handler; a process has one.
static STOP: AtomicBool = AtomicBool::new(false);
/// Where the signal handler sends its wake-up (replaced by each run).
static WAKE: Mutex<Option<mpsc::Sender<Msg>>> = Mutex::new(None);

/// Installs the Ctrl-C / SIGTERM / SIGHUP handler once per process.
fn install_signal_handler() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let result = ctrlc::set_handler(|| {
            STOP.store(true, Ordering::SeqCst);
            if let Ok(wake) = WAKE.lock()
                && let Some(tx) = wake.as_ref()
            {
                let _ = tx.send(Msg::Signal);
            }
        });
        if let Err(e) = result {
            tracing::warn!("cannot handle Ctrl-C/SIGTERM ({e}); stopping will not be graceful");
        }
    });
}

/// Messages that wake the main loop.
enum Msg {
    /// Something changed in the inbox.
    Fs,
    Signal,
    /// The worker is ready (or could not build the enricher).
    WorkerReady(Result<(), CriticalError>),
    /// The worker finished the current workbook.
    Done(Result<FileReport, EnrichError>),
}

/// A workbook handed to the worker.
struct Job {
    claimed: PathBuf,
    hooks: JournalHooks,
}

/// The workbook in progress.
struct InFlight {
    name: String,
    claimed: PathBuf,
    gate: Arc<Gate>,
    entry: PathBuf,
}

/// Runs the hot folder until the inbox is empty (`once`) or a signal arrives.
pub fn run(config: Config, options: WatchOptions) -> Result<WatchEnd, CriticalError> {
    let settings = config.watch.clone();
    prepare_folders(&settings)?;
    let filter = NameFilter::new(&settings.include, &settings.exclude)
        .map_err(|e| CriticalError::Other(format!("[watch] include/exclude: {e}")))?;
    let work = WorkArea::create(&settings.inbox, settings.claim_stale).map_err(|e| {
        CriticalError::Other(format!("cannot create the work folder in {}: {e}", settings.inbox.display()))
    })?;
    // Temporary files of `enrich` runs on this machine that were killed mid-run (the instances' own are deleted
    // by whoever recovers them).
    claims::remove_temp_files_of_dead_runs(&settings.outbox);
    // Counts of interrupted runs for files that never came back to the inbox.
    claims::remove_old_interruption_records(&work.root, INTERRUPTION_RECORDS_KEPT);
    tracing::info!(
        "watching {} (instance {}, {}); outputs to {}",
        settings.inbox.display(),
        work.id,
        match settings.poll {
            Some(p) => format!("polling every {} ms", p.as_millis()),
            None => "OS events".to_string(),
        },
        settings.outbox.display()
    );
    let (tx, rx) = mpsc::channel::<Msg>();
    if let Ok(mut wake) = WAKE.lock() {
        *wake = Some(tx.clone());
    }
    install_signal_handler();
    let secret = config.seclytics.access_token.clone();
    let (job_tx, worker) = start_worker(config, options.refresh, tx.clone());
    let result = match wait_for_worker(&rx) {
        Ok(()) => {
            let mut watcher = Watcher {
                settings: &settings,
                filter,
                work: &work,
                secret,
                tx,
                rx,
                job_tx,
                worker,
                once: options.once,
            };
            watcher.run()
        }
        Err(e) => Err(e),
    };
    if let Ok(mut wake) = WAKE.lock() {
        *wake = None;
    }
    let dir = work.dir.clone();
    if !work.close() {
        tracing::warn!("{} still holds claimed files; they are recovered at the next start", dir.display());
    }
    result
}

/// Creates the folders, checks the outbox, refuses configurations that would loop.
fn prepare_folders(settings: &WatchSettings) -> Result<(), CriticalError> {
    // Written the same way: refused before any folder is made (the check below, on the real folders, also
    // sees links and other spellings, but only once the folders exist).
    if lexically_same(&settings.inbox, &settings.outbox) {
        return Err(CriticalError::Other(format!(
            "[watch] inbox and outbox are the same folder ({}): outputs would be taken again",
            settings.inbox.display()
        )));
    }
    // A misspelled inbox would otherwise be created empty and watched for ever without a word.
    let inbox_existed = settings.inbox.is_dir();
    for (key, dir) in
        [("inbox", &settings.inbox), ("processed", &settings.processed), ("failed", &settings.failed)]
    {
        crate::outbox::create_folder(dir).map_err(|e| {
            CriticalError::Other(format!("[watch] {key}: cannot create {}: {e}", dir.display()))
        })?;
    }
    if !inbox_existed {
        tracing::warn!(
            "the inbox {} did not exist: it was created, empty (if spreadsheets were expected there, check \
             `[watch] inbox` in the ini file)",
            settings.inbox.display()
        );
    }
    crate::outbox::ensure_writable(&settings.outbox)
        .map_err(|source| CriticalError::Outbox { path: settings.outbox.clone(), source })?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    for (key, dir) in
        [("inbox", &settings.inbox), ("processed", &settings.processed), ("failed", &settings.failed)]
    {
        if same(dir, &settings.outbox) {
            return Err(CriticalError::Other(format!(
                "[watch] {key} and outbox are the same folder ({}): outputs would be taken again",
                dir.display()
            )));
        }
    }
    for (key, dir) in [("processed", &settings.processed), ("failed", &settings.failed)] {
        if same(dir, &settings.inbox) {
            return Err(CriticalError::Other(format!(
                "[watch] {key} must not be the inbox itself ({})",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Whether two paths name the same folder as written: made absolute, the longest part that exists resolved by
/// the file system (a `..` after a symbolic link leaves the link's target, not the folder holding the link),
/// `.` and `..` in the rest resolved as written, letters compared without case on Windows.
fn lexically_same(a: &Path, b: &Path) -> bool {
    fn normal(path: &Path) -> Option<Vec<String>> {
        let absolute = std::path::absolute(path).ok()?;
        let (base, rest) = absolute
            .ancestors()
            .find_map(|ancestor| Some((ancestor.canonicalize().ok()?, absolute.strip_prefix(ancestor).ok()?)))
            .unwrap_or((PathBuf::new(), absolute.as_path()));
        let mut parts: Vec<String> = Vec::new();
        for component in base.components().chain(rest.components()) {
            match component {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    parts.pop();
                }
                other => {
                    let text = other.as_os_str().to_string_lossy();
                    parts.push(if cfg!(windows) { text.to_lowercase() } else { text.into_owned() });
                }
            }
        }
        Some(parts)
    }
    matches!((normal(a), normal(b)), (Some(a), Some(b)) if a == b)
}

/// The worker thread owns the enricher and handles one job at a time.
fn start_worker(
    config: Config,
    refresh: bool,
    tx: mpsc::Sender<Msg>,
) -> (mpsc::Sender<Job>, Option<std::thread::JoinHandle<()>>) {
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let outbox = config.watch.outbox.clone();
    let spawned = std::thread::Builder::new().name("vttl-worker".into()).spawn(move || {
        let mut enricher = match Enricher::new(config.clone(), refresh) {
            Ok((enricher, warnings)) => {
                for warning in &warnings {
                    tracing::warn!("{warning}");
                }
                let _ = tx.send(Msg::WorkerReady(Ok(())));
                enricher
            }
            Err(e) => {
                let _ = tx.send(Msg::WorkerReady(Err(e)));
                return;
            }
        };
        let mut refused = false;
        for job in job_rx {
            let result = guarded(&job.claimed, || {
                if refused {
                    // The client remembers a refused token for good: start a fresh one, with the ini read again
                    // so a token renewed in the file is used.
                    match rebuild(&config, refresh) {
                        Ok(fresh) => {
                            enricher = fresh;
                            enricher.enrich_file_with(&job.claimed, &outbox, &job.hooks)
                        }
                        Err(e) => Err(EnrichError::Critical(e)),
                    }
                } else {
                    let reloaded = [
                        ("the watch lists changed; they are", enricher.reload_watch_lists()),
                        ("the sinkhole file changed; it is", enricher.reload_sinkholes()),
                    ];
                    for (what, warnings) in reloaded {
                        let Some(warnings) = warnings else { continue };
                        tracing::info!("{what} used from this workbook on");
                        for warning in &warnings {
                            tracing::warn!("{warning}");
                        }
                    }
                    enricher.enrich_file_with(&job.claimed, &outbox, &job.hooks)
                }
            });
            refused = matches!(result, Err(EnrichError::Critical(CriticalError::TokenRefused { .. })));
            if tx.send(Msg::Done(result)).is_err() {
                return;
            }
        }
    });
    match spawned {
        Ok(handle) => (job_tx, Some(handle)),
        Err(e) => {
            tracing::error!("cannot start the worker thread: {e}");
            (job_tx, None)
        }
    }
}

/// Runs `work`, turning a panic (a bug, never expected) into a failure of this file, so the input goes to
/// `failed` with the reason and the watcher keeps going instead of waiting forever for the worker.
fn guarded(
    input: &Path,
    work: impl FnOnce() -> Result<FileReport, EnrichError>,
) -> Result<FileReport, EnrichError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(EnrichError::File {
            step: "enrich",
            error: crate::workbook::WorkbookError::Corrupt {
                path: input.to_path_buf(),
                reason: format!("internal error while enriching: {what}"),
            },
        })
    })
}

/// A new enricher after a refused token, from the ini file read again when it exists.
fn rebuild(config: &Config, refresh: bool) -> Result<Enricher, CriticalError> {
    let config = if config.source.is_file() {
        match Config::load(&config.source, false) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!("{e}; keeping the configuration read at start");
                config.clone()
            }
        }
    } else {
        config.clone()
    };
    Enricher::new(config, refresh).map(|(enricher, _)| enricher)
}

fn wait_for_worker(rx: &mpsc::Receiver<Msg>) -> Result<(), CriticalError> {
    loop {
        match rx.recv() {
            Ok(Msg::WorkerReady(result)) => return result,
            Ok(_) => continue,
            Err(_) => return Err(CriticalError::Other("the worker thread stopped".into())),
        }
    }
}

/// Starts OS file events for the inbox; every event only wakes the loop.
fn start_events(
    inbox: &Path,
    tx: mpsc::Sender<Msg>,
) -> notify::Result<
    notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>,
> {
    let mut debouncer =
        notify_debouncer_full::new_debouncer(Duration::from_millis(200), None, move |_result| {
            let _ = tx.send(Msg::Fs);
        })?;
    debouncer.watch(inbox, notify::RecursiveMode::NonRecursive)?;
    Ok(debouncer)
}

struct Watcher<'a> {
    settings: &'a WatchSettings,
    filter: NameFilter,
    work: &'a WorkArea,
    secret: Secret,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    job_tx: mpsc::Sender<Job>,
    worker: Option<std::thread::JoinHandle<()>>,
    once: bool,
}

impl Watcher<'_> {
    fn run(&mut self) -> Result<WatchEnd, CriticalError> {
        let settings = self.settings;
        let mut counts = Counts::default();
        let _events = match settings.poll {
            Some(_) => None,
            None => match start_events(&settings.inbox, self.tx.clone()) {
                Ok(debouncer) => Some(debouncer),
                Err(e) => {
                    tracing::warn!(
                        "no OS file events for {} ({e}); polling every second",
                        settings.inbox.display()
                    );
                    None
                }
            },
        };
        let scan_every = match (settings.poll, &_events) {
            (Some(poll), _) => poll.min(settings.rescan),
            (None, Some(_)) => settings.rescan,
            (None, None) => Duration::from_secs(1).min(settings.rescan),
        };
        let liveness_every =
            (settings.claim_stale / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        // Only debug builds (the ones `cargo test` runs) honour the test hook; a release binary ignores it.
        let abort_after_publish =
            cfg!(debug_assertions) && std::env::var_os("VTTL_TEST_ABORT_AFTER_PUBLISH").is_some();
        let abort_on_taking =
            std::env::var_os("VTTL_TEST_ABORT_ON_TAKING").filter(|_| cfg!(debug_assertions));

        let mut settler = Settler::default();
        let mut liveness = Liveness::default();
        let mut next_scan = Instant::now();
        let mut next_liveness = Instant::now();
        let mut dirty = true;
        let mut paused_until: Option<Instant> = None;
        // The text of the critical error last written to the outbox's error log, while it lasts.
        let mut last_critical_logged: Option<String> = None;
        let mut current: Option<InFlight> = None;
        let mut stop_at: Option<Instant> = None;
        let mut hand_back_deadline_passed = false;
        let mut claim_failures: std::collections::HashMap<String, u32> = Default::default();
        let mut given_up: Vec<String> = Vec::new();

        loop {
            let now = Instant::now();
            if STOP.load(Ordering::SeqCst) && stop_at.is_none() {
                stop_at = Some(now);
                if current.is_some() {
                    tracing::info!(
                        "stopping: the current workbook may finish for up to {} s",
                        settings.shutdown_grace.as_secs()
                    );
                } else {
                    tracing::info!("stopping");
                }
            }
            if stop_at.is_some() && current.is_none() {
                return Ok(if self.once {
                    WatchEnd::Interrupted(counts)
                } else {
                    WatchEnd::Finished(counts)
                });
            }
            let mut wake = now + scan_every.min(Duration::from_secs(1));

            if let Some(stopped) = stop_at
                && let Some(job) = &current
                && now >= stopped + settings.shutdown_grace
                && !hand_back_deadline_passed
            {
                match job.gate.cancel() {
                    GateState::Working | GateState::Cancelled => {
                        match self.work.hand_back(&job.claimed, &job.name) {
                            Ok(to) => tracing::warn!(
                                "{} did not finish in time: handed back to the inbox as {}",
                                job.name,
                                to.display()
                            ),
                            Err(e) => tracing::error!(
                                "{} did not finish in time and cannot be handed back ({e}); it is recovered at the next start",
                                job.name
                            ),
                        }
                        let _ = std::fs::remove_file(&job.entry);
                        return Ok(if self.once {
                            WatchEnd::Interrupted(counts)
                        } else {
                            WatchEnd::Finished(counts)
                        });
                    }
                    // The output is being renamed into the outbox: that takes moments; wait for it.
                    GateState::Publishing | GateState::Published(_) => hand_back_deadline_passed = true,
                }
            }

            if current.is_none() && stop_at.is_none() {
                if let Some(until) = paused_until {
                    if now < until {
                        wake = wake.min(until);
                    } else {
                        paused_until = None;
                        dirty = true;
                        tracing::info!("trying again after the critical error");
                    }
                }
                if paused_until.is_none() {
                    if now >= next_liveness {
                        next_liveness = now + liveness_every;
                        self.recover_dead(&mut liveness, now, &mut counts);
                        dirty = true;
                    }
                    if dirty || now >= next_scan {
                        dirty = false;
                        next_scan = now + scan_every;
                        if let Err(e) = settler.scan(&settings.inbox, &self.filter, now) {
                            tracing::error!("cannot read the inbox {}: {e}", settings.inbox.display());
                        }
                    }
                    match settler.next_ready(&settings.inbox, settings.settle, now) {
                        Readiness::Ready(name) => {
                            match self.work.claim(&name) {
                                Ok(Some(claimed)) => {
                                    if abort_on_taking.as_deref() == Some(std::ffi::OsStr::new(&name)) {
                                        std::process::abort();
                                    }
                                    settler.forget(&name);
                                    claim_failures.remove(&name);
                                    current = self.start_job(name, claimed, abort_after_publish);
                                }
                                Ok(None) => {
                                    settler.forget(&name);
                                    tracing::debug!("{name} was taken by another instance");
                                }
                                Err(e) => {
                                    let failures = claim_failures.entry(name.clone()).or_insert(0);
                                    *failures += 1;
                                    if self.once && *failures >= CLAIM_ATTEMPTS {
                                        tracing::error!(
                                            "cannot take {name} from the inbox ({e}); giving up after \
                                             {CLAIM_ATTEMPTS} attempts"
                                        );
                                        settler.ignore(&name);
                                        given_up.push(name);
                                    } else {
                                        // `--once` tries again as soon as the file has settled anew.
                                        if self.once {
                                            tracing::warn!(
                                                "cannot take {name} from the inbox now ({e}); attempt \
                                                 {failures} of {CLAIM_ATTEMPTS}, trying again"
                                            );
                                        } else {
                                            tracing::warn!(
                                                "cannot take {name} from the inbox now ({e}); trying again in {} s",
                                                CLAIM_RETRY.as_secs()
                                            );
                                        }
                                        let retry = if self.once { Duration::ZERO } else { CLAIM_RETRY };
                                        settler.hold(&name, now + retry);
                                    }
                                }
                            }
                            dirty = true;
                            continue;
                        }
                        Readiness::WaitUntil(at) => wake = wake.min(at),
                        Readiness::Empty => {
                            if self.once {
                                if !given_up.is_empty() {
                                    return Err(CriticalError::Other(format!(
                                        "{} file(s) could not be taken from the inbox (open in another \
                                         program, such as Excel? close it and run again): {}",
                                        given_up.len(),
                                        given_up.join(", ")
                                    )));
                                }
                                return Ok(WatchEnd::Finished(counts));
                            }
                        }
                    }
                    wake = wake.min(next_scan).min(next_liveness);
                }
            }
            if let Some(stopped) = stop_at
                && current.is_some()
                && !hand_back_deadline_passed
            {
                wake = wake.min(stopped + settings.shutdown_grace);
            }

            let timeout = wake.saturating_duration_since(Instant::now()).max(Duration::from_millis(5));
            match self.rx.recv_timeout(timeout) {
                Ok(Msg::Fs) => dirty = true,
                Ok(Msg::Signal) | Ok(Msg::WorkerReady(_)) => {}
                Ok(Msg::Done(result)) => {
                    if let Some(job) = current.take() {
                        let critical = self.finish_job(job, result, &mut counts);
                        // The outbox's error log says why files stopped going through — once per episode, not
                        // at every retry while the same error lasts.
                        let text = critical.as_ref().map(|e| self.secret.redact(&e.to_string()));
                        if let (Some(critical), Some(text)) = (&critical, &text)
                            && last_critical_logged.as_ref() != Some(text)
                        {
                            crate::outbox::log_critical_error(&settings.outbox, text, critical);
                        }
                        last_critical_logged = text;
                        match critical {
                            None => {}
                            Some(critical) if self.once => return Err(critical),
                            Some(critical) => {
                                tracing::error!(
                                    "CRITICAL: {critical} — no file is taken for {} s; inputs stay in the inbox",
                                    settings.critical_retry.as_secs()
                                );
                                paused_until = Some(Instant::now() + settings.critical_retry);
                            }
                        }
                    }
                    dirty = true;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(job) = &current
                        && self.worker.as_ref().is_none_or(|w| w.is_finished())
                    {
                        // Not expected: the worker never ends on its own. Give the file back and stop.
                        let _ = self.work.hand_back(&job.claimed, &job.name);
                        return Err(CriticalError::Other("the worker thread stopped unexpectedly".into()));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(CriticalError::Other("the worker thread stopped".into()));
                }
            }
        }
    }

    /// Hands a claimed file to the worker.
    fn start_job(&self, name: String, claimed: PathBuf, abort_after_publish: bool) -> Option<InFlight> {
        // A symlink or folder swapped in between the scan and the claim is given back untouched.
        let is_file = std::fs::symlink_metadata(&claimed).map(|m| m.file_type().is_file()).unwrap_or(false);
        if !is_file {
            tracing::warn!("{name} is not a regular file any more; giving it back");
            // Not a regular file, so not for `hand_back`; never over a new file of the same name either.
            let back = self.settings.inbox.join(&name);
            if std::fs::symlink_metadata(&back).is_ok() || std::fs::rename(&claimed, &back).is_err() {
                tracing::error!("cannot give {} back", claimed.display());
            }
            return None;
        }
        tracing::info!("took {name}");
        let gate = Gate::new();
        let entry = self.work.journal_entry(&name);
        let hooks = JournalHooks {
            gate: gate.clone(),
            entry: entry.clone(),
            outbox: self.settings.outbox.clone(),
            abort_after_publish,
            inbox_path: self.settings.inbox.join(&name),
            temp_owner: self.work.id.clone(),
        };
        if self.job_tx.send(Job { claimed: claimed.clone(), hooks }).is_err() {
            tracing::error!("the worker thread stopped; giving {name} back");
            let _ = self.work.hand_back(&claimed, &name);
            return None;
        }
        Some(InFlight { name, claimed, gate, entry })
    }

    /// Moves the input where it belongs after the worker finished. Returns a critical error to act on.
    fn finish_job(
        &self,
        job: InFlight,
        result: Result<FileReport, EnrichError>,
        counts: &mut Counts,
    ) -> Option<CriticalError> {
        let published = matches!(job.gate.state(), GateState::Published(_));
        if !published && !job.claimed.exists() {
            // Our work folder was adopted by another instance meanwhile (see `claims`): it owns the input now,
            // and our output was not published (the journal write failed or the recovery removed the temp).
            tracing::warn!(
                "{} was recovered by another instance while we worked on it; leaving it to it",
                job.name
            );
            return None;
        }
        let critical = match result {
            Ok(_) => None,
            Err(EnrichError::Critical(e)) => Some(e),
            Err(EnrichError::File { step, error }) if !published => {
                // The error names the file where it was read, in our work folder; the analyst knows it by its
                // place in the inbox.
                let reason = self.secret.redact(&error.to_string()).replace(
                    &job.claimed.display().to_string(),
                    &self.settings.inbox.join(&job.name).display().to_string(),
                );
                self.quarantine(&job, step, &reason);
                claims::forget_interrupted_runs(&self.work.root, &job.name);
                counts.failed += 1;
                let _ = std::fs::remove_file(&job.entry);
                return None;
            }
            Err(EnrichError::File { step, error }) => {
                tracing::error!("{}: {step}: {}", job.name, self.secret.redact(&error.to_string()));
                None
            }
        };
        if published {
            match fsops::move_no_clobber(&job.claimed, &self.settings.processed, &job.name) {
                Ok(to) => {
                    counts.processed += 1;
                    let _ = std::fs::remove_file(&job.entry);
                    claims::forget_interrupted_runs(&self.work.root, &job.name);
                    tracing::info!("{} done; input moved to {}", job.name, to.display());
                }
                Err(e) => tracing::error!(
                    "{}: the output is published but the input cannot be moved to {} ({e}); it is settled at the next start",
                    job.name,
                    self.settings.processed.display()
                ),
            }
        } else {
            let _ = std::fs::remove_file(&job.entry);
            match self.work.hand_back(&job.claimed, &job.name) {
                Ok(to) => tracing::info!("{} handed back to the inbox as {}", job.name, to.display()),
                Err(e) => tracing::error!("cannot hand {} back to the inbox: {e}", job.name),
            }
        }
        critical
    }

    /// `failed/<name>` + `failed/<name>.error.txt` + a line in the outbox's error log.
    fn quarantine(&self, job: &InFlight, step: &str, reason: &str) {
        let settings = self.settings;
        quarantine_input(
            &settings.failed,
            &settings.outbox,
            &self.work.id,
            &job.claimed,
            &job.name,
            step,
            reason,
        );
    }

    /// Recovers the work folders of dead instances, counting the inputs settled (and, among them, those
    /// sent to `failed`) in `counts`.
    fn recover_dead(&self, liveness: &mut Liveness, now: Instant, counts: &mut Counts) {
        let settings = self.settings;
        let mut add = |done: claims::Recovered| {
            counts.recovered += done.handed_back + done.processed + done.failed;
            counts.failed += done.failed;
        };
        for id in liveness.dead_folders(self.work, settings.claim_stale, now) {
            match claims::recover(self.work, &id, &settings.processed, &settings.failed, &settings.outbox) {
                Ok(done) => add(done),
                Err(e) => tracing::error!("cannot recover the claims of {id}: {e}"),
            }
        }
        // Inputs an earlier recovery could not settle yet.
        match claims::settle_adopted(self.work, &settings.processed, &settings.failed, &settings.outbox) {
            Ok(done) => add(done),
            Err(e) => tracing::error!("cannot settle the claims adopted from dead instances: {e}"),
        }
    }
}

/// Moves the claimed input `claimed` (named `name` in the inbox) to `failed` with `<name>.error.txt` (time, step,
/// reason, instance) beside it and a line in the outbox's error log. False when it could not be moved (it stays
/// claimed; an error is logged).
fn quarantine_input(
    failed: &Path,
    outbox: &Path,
    work_id: &str,
    claimed: &Path,
    name: &str,
    step: &str,
    reason: &str,
) -> bool {
    // The reason may hold text from the file (a sheet name): no control character may reach the service's
    // log (a newline would forge a line), the error log or the note.
    let reason: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let message = format!("{name} failed at step `{step}`: {reason}");
    tracing::error!("{message}");
    // The error log says a file failed once it is in `failed` (a move that fails is tried again by recovery,
    // which must not add a line each time).
    let error_log = || {
        if crate::outbox::ensure_writable_by(outbox, Some(work_id)).is_ok() {
            crate::outbox::append_error_log(outbox, &message);
        }
        true
    };
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let note = format!(
        "file: {name}\r\ntime: {time}\r\nstep: {step}\r\nreason: {reason}\r\ninstance: {work_id}\r\n"
    );
    // The note is written first, under the name the input will take, and the input then moved to exactly
    // that name: the note beside a file in `failed` is always its own (an older note of the same name is
    // never taken for it), and a crash between the two steps cannot leave an input there without a reason.
    let exists = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AlreadyExists;
    for attempt in 0..10_000 {
        let candidate = crate::outbox::candidate_name(name, attempt);
        if failed.join(&candidate).exists() {
            continue;
        }
        let note_path = match crate::outbox::write_new_file_exactly(
            failed,
            &format!("{candidate}.error.txt"),
            note.as_bytes(),
        ) {
            Ok(path) => path,
            Err(e) if exists(&e) => continue,
            Err(e) => {
                tracing::error!("cannot write the error note for {name} in {}: {e}", failed.display());
                break;
            }
        };
        match fsops::move_exactly(claimed, failed, &candidate) {
            Ok(_) => return error_log(),
            Err(e) => {
                let _ = std::fs::remove_file(&note_path);
                if !exists(&e) {
                    tracing::error!("cannot move {name} to {} ({e}); it stays claimed", failed.display());
                    return false;
                }
            }
        }
    }
    // No note could be written: the input still goes to `failed` (the reason is in the error log).
    match fsops::move_no_clobber(claimed, failed, name) {
        Ok(_) => error_log(),
        Err(e) => {
            tracing::error!("cannot move {name} to {} ({e}); it stays claimed", failed.display());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lexically_same;
    use std::path::Path;

    #[test]
    fn folders_written_the_same_way_are_the_same() {
        assert!(lexically_same(Path::new("drop"), Path::new("./drop")));
        assert!(lexically_same(Path::new("drop"), Path::new("other/../drop/.")));
        assert!(lexically_same(&std::env::current_dir().unwrap().join("drop"), Path::new("drop")));
        assert!(!lexically_same(Path::new("drop"), Path::new("drop/out")));
        assert_eq!(lexically_same(Path::new("drop"), Path::new("DROP")), cfg!(windows));
    }
}
