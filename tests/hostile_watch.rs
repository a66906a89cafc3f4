//! Hardening tests of the hot folder (`vttl-seclytics watch`) through the real binary (issue parts 1, 3, 4, 6):
//!
//! * the hostile corpus of `tests/fixtures/hostile/` dropped into an inbox and run with `watch --once`: each
//!   file ends in `processed/` (with an output) or `failed/` (with `<name>.error.txt`); a directory and a
//!   symlink named `x.csv` are not followed; nothing outside the configured folders is written;
//! * crash safety: SIGKILL at random points, many trials, then a restart: every input processed exactly once,
//!   no partial output ever visible in the outbox (watched by a monitor thread the whole time);
//! * concurrency: three instances on one inbox of 300 files: each processed exactly once.
//!
//! The long versions are `#[ignore]`d; `docs/reliability.md` gives the commands. The number of kill trials
//! can be set with `VTTL_KILL_TRIALS` and the random seed with `VTTL_KILL_SEED`.
#![cfg(unix)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::api_server::ApiServer;
use support::watching::{file_names, ip_csv, outbox_monitor};

const BIN: &str = env!("CARGO_BIN_EXE_vttl-seclytics");
const TOKEN: &str = "tok-W4tch-Hostile-5ecret";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A hot folder in a temp directory: `root/inbox`, `root/outbox`, `root/vttl.ini`.
struct Site {
    dir: tempfile::TempDir,
    ini: PathBuf,
    inbox: PathBuf,
    outbox: PathBuf,
}

impl Site {
    /// `api`: the fake server's URL (token auth) or `None` for the recorded offline answers.
    fn new(api: Option<&str>, extra_watch: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let seclytics = match api {
            None => format!("offline_dir = {}\n", repo().join("samples/seclytics").display()),
            Some(url) => format!(
                "base_url = {url}\naccess_token = {TOKEN}\nauth = query\nmax_retries = 0\nconcurrency = 2\n\
                 requests_per_minute = 100000\ntimeout_secs = 10\n"
            ),
        };
        let ini = root.join("vttl.ini");
        std::fs::write(
            &ini,
            format!(
                "[seclytics]\n{seclytics}cache =\n\n[watch]\n{extra_watch}inbox = inbox\noutbox = outbox\n\
                 settle_ms = 50\nrescan_secs = 30\nclaim_stale_secs = 2\nshutdown_grace_secs = 5\n\
                 critical_retry_secs = 1\n\n[watchlists]\ndir = {}\n\n[main]\nreverseDNS = False\n",
                repo().join("config").display()
            ),
        )
        .unwrap();
        let (inbox, outbox) = (root.join("inbox"), root.join("outbox"));
        std::fs::create_dir_all(&inbox).unwrap();
        Site { dir, ini, inbox, outbox }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, once: bool) -> Command {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(&self.ini).arg("watch");
        if once {
            command.arg("--once");
        }
        command
            .env("VTTL_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .env_remove("SECLYTICS_ACCESS_TOKEN")
            .current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// `watch --once` to the end: (exit code, stderr).
    fn once(&self) -> (i32, String) {
        let output = self.command(true).stderr(Stdio::piped()).output().unwrap();
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
    }

    fn processed(&self) -> PathBuf {
        self.inbox.join("processed")
    }

    fn failed(&self) -> PathBuf {
        self.inbox.join("failed")
    }
}

/// Names of the regular files directly in `dir`, hidden ones included when `hidden`.
fn outputs(outbox: &Path) -> BTreeSet<String> {
    file_names(outbox, false).into_iter().filter(|n| n.ends_with(".csv") || n.ends_with(".xlsx")).collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            files.extend(walk(&path));
        } else if meta.is_file() {
            files.push(path);
        }
    }
    files
}

fn assert_no_token(root: &Path, also: &str) {
    assert!(!also.contains(TOKEN), "token on stderr");
    for file in walk(root) {
        if file.file_name().is_some_and(|n| n == "vttl.ini") {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(!bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "token in {}", file.display());
    }
}

fn assert_no_own_panic(stderr: &str) {
    for line in stderr.lines().filter(|l| l.contains("panicked")) {
        assert!(line.contains("/calamine-") && stderr.contains("crashed on malformed data"), "{stderr}");
    }
    for needle in ["stack overflow", "fatal runtime error", "memory allocation"] {
        assert!(!stderr.contains(needle), "{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Part 1 through the hot folder.
// ---------------------------------------------------------------------------------------------------------

fn copy_entry(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_entry(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

#[test]
fn hostile_corpus_through_watch_once_ends_processed_or_quarantined() {
    let server = ApiServer::start();
    server.require_token(Some(TOKEN));
    server.set_document("/ips/192.0.2.20", serde_json::json!({"asn": {"description": "=GOOD-AS"}}));
    let url = server.base_url();
    // Every name is taken, whatever its extension, so that wrong-extension files are quarantined too.
    let site = Site::new(Some(&url), "include = *\n");
    let corpus = repo().join("tests/fixtures/hostile");
    let mut regular = BTreeSet::new();
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "README.md" {
            continue;
        }
        copy_entry(&entry.path(), &site.inbox.join(&name));
        if entry.file_type().unwrap().is_file() {
            regular.insert(name);
        }
    }
    let outside = site.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(
        outside.join("secret.csv"),
        "\"Scanned Item\",\"Note\"\r\n\"192.0.2.20\",\"SECRET-NOTE\"\r\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.join("secret.csv"), site.inbox.join("x.csv")).unwrap();
    std::fs::create_dir(site.inbox.join("y.csv")).unwrap();
    assert!(regular.len() >= 30, "{}", regular.len());

    let (code, stderr) = site.once();
    assert!(code == 0 || code == 1, "exit {code}:\n{stderr}");
    assert_no_own_panic(&stderr);
    assert_no_token(site.root(), &stderr);

    let processed = file_names(&site.processed(), true);
    let failed = file_names(&site.failed(), true);
    for name in &regular {
        if name.starts_with('.') {
            // Hidden names match the default `exclude = .*` (temporary files of other programs): left alone.
            assert!(site.inbox.join(name).is_file(), "{name} should stay in the inbox");
            continue;
        }
        let in_processed = processed.contains(name);
        let in_failed = failed.contains(name);
        assert!(in_processed ^ in_failed, "{name}: processed {in_processed}, failed {in_failed}\n{stderr}");
        if in_failed {
            let note = std::fs::read_to_string(site.failed().join(format!("{name}.error.txt")))
                .unwrap_or_else(|_| panic!("{name} quarantined without an error file"));
            assert!(note.contains("step:"), "{name}: {note}");
        }
        // Inputs are moved, never changed.
        let dir = if in_processed { site.processed() } else { site.failed() };
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            std::fs::read(corpus.join(name)).unwrap(),
            "{name}"
        );
    }
    // The symlink and the directory named *.csv were not followed and not taken.
    assert!(std::fs::symlink_metadata(site.inbox.join("x.csv")).unwrap().file_type().is_symlink());
    assert!(site.inbox.join("y.csv").is_dir());
    for file in walk(&site.outbox) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(11).any(|w| w == b"SECRET-NOTE"),
            "the symlink was followed: {}",
            file.display()
        );
        assert!(!bytes.windows(10).any(|w| w == b"root:x:0:0"), "XXE expanded into {}", file.display());
    }
    // Nothing was written outside the configured folders.
    let mut top: Vec<String> = std::fs::read_dir(site.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["inbox", "outbox", "outside", "vttl.ini"]);
    assert_eq!(file_names(&outside, true), BTreeSet::from(["secret.csv".to_string()]));
    // API text that looks like a formula is neutralised in every CSV output.
    for name in outputs(&site.outbox).iter().filter(|n| n.to_lowercase().ends_with(".csv")) {
        let text = String::from_utf8_lossy(&std::fs::read(site.outbox.join(name)).unwrap()).into_owned();
        assert!(!text.contains(",\"=GOOD-AS\"") && !text.contains(",=GOOD-AS"), "{name}: {text}");
    }
    println!(
        "watch --once on the hostile corpus: {} files, {} processed, {} quarantined",
        regular.len(),
        regular.iter().filter(|n| processed.contains(*n)).count(),
        regular.iter().filter(|n| failed.contains(*n)).count()
    );
}

// ---------------------------------------------------------------------------------------------------------
// Part 3: SIGKILL at random points.
// ---------------------------------------------------------------------------------------------------------

/// One trial: `files` inputs, the service started and SIGKILLed `kills` times at random moments, then
/// `watch --once` to finish. Returns how many kills landed while a file was claimed (mid-workbook), and how
/// many inputs went to `failed` because three of the killed instances held them.
fn kill_trial(
    server: &ApiServer,
    rng: &mut fastrand::Rng,
    trial: usize,
    files: usize,
    kills: usize,
) -> (usize, usize) {
    let url = server.base_url();
    let site = Site::new(Some(&url), "");
    let rows = 16;
    let expected: BTreeSet<String> = (0..files).map(|i| format!("t{trial}-f{i}.csv")).collect();
    for (index, name) in expected.iter().enumerate() {
        std::fs::write(site.inbox.join(name), ip_csv(name, index * rows, rows)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = outbox_monitor(site.outbox.clone(), rows + 1, stop.clone());
    let mut mid_workbook = 0;
    for _ in 0..kills {
        let log = site.root().join("service.log");
        let mut child: Child =
            site.command(false).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(50..1000)));
        let claimed = std::fs::read_dir(site.inbox.join(".vttl-work"))
            .map(|d| {
                d.flatten()
                    .any(|i| std::fs::read_dir(i.path().join("files")).is_ok_and(|mut f| f.next().is_some()))
            })
            .unwrap_or(false);
        mid_workbook += usize::from(claimed);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_no_own_panic(&std::fs::read_to_string(&log).unwrap_or_default());
    }
    let (code, stderr) = site.once();
    stop.store(true, Ordering::SeqCst);
    let violations = monitor.join().unwrap();
    assert_eq!(code, 0, "trial {trial}: {stderr}");
    assert!(violations.is_empty(), "trial {trial}: partial output visible: {violations:?}");
    // An input held by three of the killed instances goes to `failed` with that reason (a file that kills the
    // process must not be retried for ever); every other input is processed. Either way exactly once.
    let failed: BTreeSet<String> =
        file_names(&site.failed(), false).into_iter().filter(|n| !n.ends_with(".error.txt")).collect();
    for name in &failed {
        let note =
            std::fs::read_to_string(site.failed().join(format!("{name}.error.txt"))).unwrap_or_default();
        assert!(
            kills >= 3 && note.contains("stopped 3 times while it held this file"),
            "trial {trial}: {note}"
        );
    }
    let processed = file_names(&site.processed(), false);
    assert!(processed.is_disjoint(&failed), "trial {trial}: {stderr}");
    assert_eq!(
        processed.union(&failed).cloned().collect::<BTreeSet<_>>(),
        expected,
        "trial {trial}: {stderr}"
    );
    assert_eq!(outputs(&site.outbox), processed, "trial {trial}: exactly one output per processed input");
    assert!(file_names(&site.inbox, false).is_empty(), "trial {trial}");
    let leftovers: Vec<String> =
        file_names(&site.outbox, true).into_iter().filter(|n| n.ends_with(".tmp")).collect();
    assert!(leftovers.iter().all(|n| n.starts_with('.')), "trial {trial}: visible temp files {leftovers:?}");
    // Every killed instance was recovered by the last run, which deleted the temporary files named with its
    // id (only a kill inside the start-up probe of the outbox, before an instance has an id, could leave one).
    let owned: Vec<&String> = leftovers.iter().filter(|n| n.contains(".@")).collect();
    assert!(owned.is_empty(), "trial {trial}: temporary files of dead instances left: {owned:?}\n{stderr}");
    assert_no_token(site.root(), &stderr);
    // Each output is the enrichment of its own input (filled from the API, the tag carried through).
    for name in &processed {
        let text = std::fs::read_to_string(site.outbox.join(name)).unwrap();
        assert!(text.contains(name.as_str()) && text.contains("KILL-AS"), "trial {trial}: {name}: {text}");
    }
    (mid_workbook, failed.len())
}

fn run_kill_trials(default_trials: usize) {
    let trials: usize =
        std::env::var("VTTL_KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_trials);
    let seed: u64 = std::env::var("VTTL_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    });
    println!("kill trials: {trials}, seed {seed} (VTTL_KILL_SEED={seed} repeats them)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = ApiServer::start();
    server.require_token(Some(TOKEN));
    server.set_latency(Duration::from_millis(30));
    server.set_default(support::api_server::Behaviour::document(
        serde_json::json!({"asn": {"description": "KILL-AS"}, "type": "ip"}),
    ));
    let started = Instant::now();
    let (mut kills, mut mid, mut failed) = (0, 0, 0);
    for trial in 0..trials {
        let per_trial = 1 + rng.usize(0..3);
        let (trial_mid, trial_failed) = kill_trial(&server, &mut rng, trial, 3, per_trial);
        (mid, failed) = (mid + trial_mid, failed + trial_failed);
        kills += per_trial;
    }
    println!(
        "kill trials: {trials} trials, {kills} SIGKILLs ({mid} while a workbook was claimed), every input \
         handled exactly once ({failed} sent to `failed` after three interrupted runs), in {:?}",
        started.elapsed()
    );
}

#[test]
fn sigkill_at_random_points_short() {
    run_kill_trials(4);
}

#[test]
#[ignore = "50 trials, a few minutes: cargo test --test hostile_watch -- --ignored sigkill"]
fn sigkill_at_random_points_50_trials() {
    run_kill_trials(50);
}

// ---------------------------------------------------------------------------------------------------------
// Part 4: three instances on one inbox.
// ---------------------------------------------------------------------------------------------------------

fn tiny_csv(tag: &str) -> String {
    format!(
        "\"Scanned Item\",\"Note\",\"WHOIS\"\r\n\"203.0.113.45\",\"{tag}\",\"\"\r\n\"198.51.100.53\",\"{tag}\",\"\"\r\n"
    )
}

fn instances_on_one_inbox(instances: usize, files: usize) {
    let site = Site::new(None, "");
    let expected: BTreeSet<String> = (0..files).map(|i| format!("book-{i:04}.csv")).collect();
    for name in &expected {
        std::fs::write(site.inbox.join(name), tiny_csv(name)).unwrap();
    }
    let started = Instant::now();
    let children: Vec<Child> =
        (0..instances).map(|_| site.command(true).stderr(Stdio::piped()).spawn().unwrap()).collect();
    let mut taken = 0;
    let mut per_instance = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        assert_no_own_panic(&stderr);
        let count = stderr.lines().filter(|l| l.contains(" took book-")).count();
        per_instance.push(count);
        taken += count;
    }
    assert_eq!(taken, files, "each file taken exactly once: {per_instance:?}");
    assert_eq!(file_names(&site.processed(), false), expected);
    assert_eq!(outputs(&site.outbox), expected, "one output per input, none numbered _1");
    assert!(file_names(&site.inbox, false).is_empty() && file_names(&site.failed(), false).is_empty());
    for name in &expected {
        let output = std::fs::read_to_string(site.outbox.join(name)).unwrap();
        assert!(output.contains(name.as_str()), "{name}: {output}");
    }
    println!(
        "{instances} instances × {files} files: each processed exactly once (per instance {per_instance:?}) in {:?}",
        started.elapsed()
    );
}

#[test]
fn three_instances_on_one_inbox_of_300_files() {
    instances_on_one_inbox(3, 300);
}

#[test]
#[ignore = "5 × 1000 files: cargo test --test hostile_watch -- --ignored five_instances"]
fn five_instances_on_one_inbox_of_1000_files() {
    instances_on_one_inbox(5, 1000);
}
