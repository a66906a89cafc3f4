//! End-to-end tests of the hot folder (`vttl-seclytics watch`), through the real binary, in temporary folders:
//! offline answers from `samples/seclytics` or the fake SecLytics server on 127.0.0.1 (for slow lookups and
//! refused tokens), small `settle_ms` / `claim_stale_secs`, no cache, no reverse DNS.

mod support;

use std::collections::BTreeSet;
#[cfg(unix)]
use std::io::Write;
use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::process::Child;
use std::process::{Command, Stdio};
#[cfg(unix)]
use std::sync::Arc;
#[cfg(unix)]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(unix)]
use std::time::{Duration, Instant};

use support::api_server::ApiServer;
#[cfg(unix)]
use support::watching::outbox_monitor;
use support::watching::{ip_csv, visible_file_names as names};

const BIN: &str = env!("CARGO_BIN_EXE_vttl-seclytics");

/// This crate's folder, with a drive on Windows: the services run with a temporary folder as their current
/// one, which may be on another drive than the crate (the Windows tests under Wine: `C:` against `Z:`), and a
/// path without a drive (`/work/main`) would then name a folder that does not exist.
fn repo() -> PathBuf {
    std::path::absolute(env!("CARGO_MANIFEST_DIR")).expect("an absolute path for the crate's folder")
}

/// One configured hot folder in a temporary directory.
struct Site {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ini: PathBuf,
    inbox: PathBuf,
    outbox: PathBuf,
}

/// Where answers come from.
enum Answers<'a> {
    Offline,
    Server { url: &'a str, token: &'a str },
}

impl Site {
    /// `inbox`/`outbox` are relative to the site root unless absolute; `extra_watch` adds `[watch]` lines.
    fn new(inbox: &str, outbox: &str, answers: Answers, extra_watch: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Site::in_dir(dir, root, inbox, outbox, answers, extra_watch)
    }

    fn in_dir(
        dir: tempfile::TempDir,
        root: PathBuf,
        inbox: &str,
        outbox: &str,
        answers: Answers,
        extra_watch: &str,
    ) -> Site {
        let seclytics = match answers {
            Answers::Offline => format!("offline_dir = {}\n", repo().join("samples/seclytics").display()),
            Answers::Server { url, token } => format!(
                "base_url = {url}\naccess_token = {token}\nmax_retries = 0\nconcurrency = 1\n\
                 requests_per_minute = 100000\ntimeout_secs = 10\n"
            ),
        };
        let ini = root.join(format!("vttl-{}.ini", fastrand::u32(..)));
        let text = format!(
            // The first occurrence of a key wins (as in VTTL): the test's own lines come first.
            "[seclytics]\n{seclytics}cache =\n\n[watch]\n{extra_watch}inbox = {inbox}\noutbox = {outbox}\n\
             settle_ms = 200\nrescan_secs = 30\nclaim_stale_secs = 2\nshutdown_grace_secs = 10\n\
             critical_retry_secs = 1\n\n[watchlists]\ndir = {}\n\n[main]\nreverseDNS = False\n",
            repo().join("config").display()
        );
        std::fs::write(&ini, text).unwrap();
        let abs = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { root.join(p) };
        let (inbox, outbox) = (abs(inbox), abs(outbox));
        std::fs::create_dir_all(&inbox).unwrap();
        Site { _dir: dir, root, ini, inbox, outbox }
    }

    fn processed(&self) -> PathBuf {
        self.inbox.join("processed")
    }

    fn failed(&self) -> PathBuf {
        self.inbox.join("failed")
    }

    fn command(&self, once: bool) -> Command {
        let mut command = Command::new(BIN);
        command.arg("--config").arg(&self.ini).arg("watch");
        if once {
            command.arg("--once");
        }
        command.env("VTTL_LOG", "info").env_remove("SECLYTICS_ACCESS_TOKEN").current_dir(&self.root);
        command
    }

    /// Runs `watch --once` to the end: (exit code, stderr).
    fn once(&self) -> (i32, String) {
        let output = self.command(true).stdin(Stdio::null()).output().unwrap();
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
    }

    /// Starts `watch --once` without waiting for it, its stderr going to `<root>/<log>`.
    #[cfg(unix)]
    fn spawn_once(&self, log: &str) -> Service {
        let log = self.root.join(log);
        let file = std::fs::File::create(&log).unwrap();
        let child =
            self.command(true).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Service { child, log }
    }

    /// Starts the service, its stderr going to `<root>/<log>`.
    #[cfg(unix)]
    fn spawn(&self, log: &str) -> Service {
        let log = self.root.join(log);
        let file = std::fs::File::create(&log).unwrap();
        let child =
            self.command(false).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).spawn().unwrap();
        let service = Service { child, log };
        wait_until(Duration::from_secs(20), "the service starts", || service.stderr().contains("watching"));
        service
    }
}

#[cfg(unix)]
struct Service {
    child: Child,
    log: PathBuf,
}

#[cfg(unix)]
impl Service {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code (within 20 s).
    fn terminate(mut self) -> (i32, String) {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.stderr());
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 30 s) for the process to end by itself.
    fn wait(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.stderr());
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_9(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.stderr()
    }
}

#[cfg(unix)]
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Regular files directly in `dir` (not hidden, not folders).
fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Workbook outputs in the outbox (`.csv` / `.xlsx`).
fn outputs(outbox: &Path) -> BTreeSet<String> {
    names(outbox).into_iter().filter(|n| n.ends_with(".csv") || n.ends_with(".xlsx")).collect()
}

/// Files held in any work folder of the inbox.
fn claimed_files(inbox: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(instances) = std::fs::read_dir(inbox.join(".vttl-work")) else { return found };
    for instance in instances.flatten() {
        if let Ok(files) = std::fs::read_dir(instance.path().join("files")) {
            found.extend(files.flatten().map(|f| f.path()));
        }
    }
    found
}

/// Hidden temporary files in `dir` (`.*.tmp`).
fn temp_files(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeSet::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
        .collect()
}

fn work_folders(inbox: &Path) -> usize {
    std::fs::read_dir(inbox.join(".vttl-work")).map(|d| d.count()).unwrap_or(0)
}

/// A small VTTL CSV (IP/domain mode) whose indicators have recorded answers in `samples/seclytics`.
fn tiny_csv(tag: &str) -> String {
    format!(
        "\"Scanned Item\",\"Note\",\"WHOIS\"\r\n\"203.0.113.45\",\"{tag}\",\"\"\r\n\"198.51.100.53\",\"{tag}\",\"\"\r\n"
    )
}

fn copy_sample(name: &str, to: &Path) {
    std::fs::copy(repo().join("samples").join(name), to.join(name)).unwrap();
}

/// A watcher starting on an outbox where an `enrich` of this machine was killed mid-run deletes that run's
/// temporary files (and nobody else's).
#[cfg(any(target_os = "linux", windows))]
#[test]
fn a_watcher_deletes_what_killed_enrich_runs_left_in_its_outbox() {
    use vttl_seclytics::outbox::owned_temp_file;
    use vttl_seclytics::watch::claims::one_shot_owner_of;
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    std::fs::create_dir_all(&site.outbox).unwrap();
    // A process of this machine that has ended.
    let mut ended = Command::new(env!("CARGO_BIN_EXE_vttl-seclytics"))
        .arg("--version")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    ended.wait().unwrap();
    let Some(dead_run) = one_shot_owner_of(ended.id()) else { return };
    let left = owned_temp_file(&site.outbox, "book.csv", Some(&dead_run)).unwrap().keep().unwrap().1;
    let running = one_shot_owner_of(std::process::id()).unwrap();
    let live = owned_temp_file(&site.outbox, "book.csv", Some(&running)).unwrap().keep().unwrap().1;
    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    if cfg!(windows) || Path::new("/proc/1").exists() {
        assert!(!left.exists(), "{stderr}");
        assert!(stderr.contains("deleted 1 temporary files that killed runs left"), "{stderr}");
    }
    assert!(live.exists(), "a running process's file deleted");
}

#[test]
fn once_processes_the_files_present_at_start() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    for sample in ["vttl-ip-domain-cp1252.csv", "vttl-utf8-bom.csv", "vttl-two-sheets.xlsx"] {
        copy_sample(sample, &site.inbox);
    }
    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    let expected = set(&["vttl-ip-domain-cp1252.csv", "vttl-two-sheets.xlsx", "vttl-utf8-bom.csv"]);
    assert_eq!(names(&site.processed()), expected);
    assert_eq!(outputs(&site.outbox), expected);
    for name in &expected {
        // inputs are moved unchanged; each output has its report
        assert_eq!(
            std::fs::read(site.processed().join(name)).unwrap(),
            std::fs::read(repo().join("samples").join(name)).unwrap()
        );
        let report = std::fs::read_to_string(site.outbox.join(format!("{name}.report.json"))).unwrap();
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        // the report names the file where the analyst dropped it, not the claimed working copy
        assert_eq!(report["input"].as_str().unwrap(), site.inbox.join(name).to_str().unwrap());
    }
    let enriched = std::fs::read_to_string(site.outbox.join("vttl-utf8-bom.csv")).unwrap();
    assert!(enriched.contains("Seclytics Reputation and Reason"), "{enriched}");
    assert!(names(&site.inbox).is_empty() && names(&site.failed()).is_empty());
    assert_eq!(work_folders(&site.inbox), 0, "the work folder is removed on exit");
}

#[test]
#[cfg(unix)]
fn service_takes_files_dropped_while_running_and_stops_on_sigterm() {
    // rescan_secs is 30: only OS events can explain a quick pick-up.
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    let service = site.spawn("service.log");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(site.inbox.join("first.csv"), tiny_csv("first")).unwrap();
    // a producer that writes under a temporary name and renames
    std::fs::write(site.inbox.join("second.csv.part"), tiny_csv("second")).unwrap();
    std::fs::rename(site.inbox.join("second.csv.part"), site.inbox.join("second.csv")).unwrap();
    wait_until(Duration::from_secs(10), "both files are processed", || names(&site.processed()).len() == 2);
    assert_eq!(outputs(&site.outbox), set(&["first.csv", "second.csv"]));
    let (code, stderr) = service.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(work_folders(&site.inbox), 0, "{stderr}");
}

/// A watch list edited while the service runs is used from the next workbook on: a keyword taken out of
/// `KWordwatchlist.txt` no longer fills `Keyword Watch List`, a keyword put in does (README: "editing a watch
/// list … makes those be computed afresh").
#[test]
#[cfg(unix)]
fn a_watch_list_edited_while_the_service_runs_is_used_for_the_next_workbook() {
    let (site, lists) = site_with_lists_of_its_own("phishing\r\n");
    let service = site.spawn("service.log");
    // login-portal.example.net's answer holds "phishing"; 203.0.113.45's holds "scanner".
    let book = "\"Scanned Item\",\"Keyword Watch List\"\r\n\"login-portal.example.net\",\"\"\r\n\"203.0.113.45\",\"\"\r\n";
    std::fs::write(site.inbox.join("before.csv"), book).unwrap();
    wait_until(Duration::from_secs(10), "the first file is processed", || {
        site.processed().join("before.csv").exists()
    });
    // (A third row is appended: the domain's passive-DNS address.)
    assert_eq!(output_column(&site, "before.csv", "Keyword Watch List")[..2], ["phishing", ""]);
    std::fs::write(lists.join("KWordwatchlist.txt"), "scanner\r\n").unwrap();
    std::fs::write(site.inbox.join("after.csv"), book).unwrap();
    wait_until(Duration::from_secs(10), "the second file is processed", || {
        site.processed().join("after.csv").exists()
    });
    let (code, stderr) = service.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(output_column(&site, "after.csv", "Keyword Watch List")[..2], ["", "scanner"], "{stderr}");
}

/// Like the watch lists, the sinkhole file is read again when it changed: an address added to it while the
/// service runs is labelled from the next workbook on (a bad line added with it is reported by its number).
#[test]
#[cfg(unix)]
fn a_sinkhole_file_edited_while_the_service_runs_is_used_for_the_next_workbook() {
    let (site, lists) = site_with_lists_of_its_own("phishing\r\n");
    let service = site.spawn("service.log");
    let book = "\"Scanned Item\",\"Sinkhole\"\r\n\"203.0.113.45\",\"\"\r\n";
    std::fs::write(site.inbox.join("before.csv"), book).unwrap();
    wait_until(Duration::from_secs(10), "the first file is processed", || {
        site.processed().join("before.csv").exists()
    });
    assert_eq!(output_column(&site, "before.csv", "Sinkhole"), [""]);
    let mut sinkholes = std::fs::read_to_string(lists.join("sinkholes.txt")).unwrap();
    sinkholes.push_str("\n203.0.113.45 | Test sinkhole\nnot an address | x\n");
    std::fs::write(lists.join("sinkholes.txt"), &sinkholes).unwrap();
    std::fs::write(site.inbox.join("after.csv"), book).unwrap();
    wait_until(Duration::from_secs(10), "the second file is processed", || {
        site.processed().join("after.csv").exists()
    });
    let (code, stderr) = service.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(output_column(&site, "after.csv", "Sinkhole"), ["Test sinkhole"], "{stderr}");
    assert!(stderr.contains("the sinkhole file changed"), "{stderr}");
    let bad_line = sinkholes.lines().count();
    assert!(stderr.contains(&format!("sinkholes.txt:{bad_line}:")), "{stderr}");
}

/// A site whose ini reads the watch lists and the sinkhole file from a folder of its own (`lists/`, returned):
/// the shipped sinkhole list, and `keywords` as the keyword list.
#[cfg(unix)]
fn site_with_lists_of_its_own(keywords: &str) -> (Site, PathBuf) {
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    let lists = site.root.join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(lists.join("KWordwatchlist.txt"), keywords).unwrap();
    std::fs::copy(repo().join("config/sinkholes.txt"), lists.join("sinkholes.txt")).unwrap();
    let ini = std::fs::read_to_string(&site.ini).unwrap();
    let config = repo().join("config").display().to_string();
    std::fs::write(&site.ini, ini.replace(&config, &lists.display().to_string())).unwrap();
    (site, lists)
}

/// The cells of column `header` in the output `name`, row by row.
#[cfg(unix)]
fn output_column(site: &Site, name: &str, header: &str) -> Vec<String> {
    let text = std::fs::read_to_string(site.outbox.join(name)).unwrap();
    let mut rows = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let column = rows.headers().unwrap().iter().position(|h| h == header).unwrap();
    rows.records().map(|r| r.unwrap().get(column).unwrap_or("").to_string()).collect()
}

#[test]
#[cfg(unix)]
fn polling_mode_picks_up_new_files() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "poll_ms = 100\n");
    let service = site.spawn("service.log");
    assert!(service.stderr().contains("polling every 100 ms"), "{}", service.stderr());
    std::fs::write(site.inbox.join("polled.csv"), tiny_csv("polled")).unwrap();
    wait_until(Duration::from_secs(10), "the file is processed", || {
        site.processed().join("polled.csv").exists()
    });
    assert_eq!(outputs(&site.outbox), set(&["polled.csv"]));
    let (code, stderr) = service.terminate();
    assert_eq!(code, 0, "{stderr}");
}

/// Writes `slow.csv` into the inbox of a service run with `settings` in `chunks` chunks 150 ms apart, each
/// opening the file by name again like a copy over a share (had the watcher taken the file early, the chunk
/// would find it gone); the file must be taken only once complete, and enriched whole.
#[cfg(unix)]
fn a_file_written_slowly_case(settings: &str, chunks: usize) {
    let site = Site::new("inbox", "outbox", Answers::Offline, settings);
    let service = site.spawn("service.log");
    let path = site.inbox.join("slow.csv");
    let mut content = String::from("\"Scanned Item\",\"Note\",\"WHOIS\"\r\n");
    std::fs::write(&path, &content).unwrap();
    for i in 0..chunks {
        std::thread::sleep(Duration::from_millis(150));
        let row = format!("\"203.0.113.45\",\"chunk {i}\",\"\"\r\n");
        content.push_str(&row);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap_or_else(|e| {
            panic!("slow.csv was taken while still being written (chunk {i}): {e}\n{}", service.stderr())
        });
        file.write_all(row.as_bytes()).unwrap();
        assert!(names(&site.processed()).is_empty(), "taken while still being written");
    }
    wait_until(Duration::from_secs(10), "the file is processed", || {
        site.processed().join("slow.csv").exists()
    });
    assert_eq!(std::fs::read_to_string(site.processed().join("slow.csv")).unwrap(), content);
    let output = std::fs::read_to_string(site.outbox.join("slow.csv")).unwrap();
    assert!(output.contains(&format!("chunk {}", chunks - 1)), "{output}");
    assert_eq!(output.lines().count(), chunks + 1, "{output}");
    assert!(names(&site.inbox).is_empty() && names(&site.failed()).is_empty());
    assert_eq!(outputs(&site.outbox), set(&["slow.csv"]));
    let (code, stderr) = service.terminate();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
#[cfg(unix)]
fn a_file_written_slowly_is_taken_only_when_complete() {
    a_file_written_slowly_case("settle_ms = 700\npoll_ms = 50\n", 12);
}

/// Polling less often than the settling time (what the service files advise for shares): the file is seen
/// once per poll, and must still not be taken `settle_ms` after that one look while it keeps growing.
#[test]
#[cfg(unix)]
fn a_file_written_slowly_is_taken_only_when_complete_when_polling_slower_than_settling() {
    // A long claim lease: its liveness checks (each a quarter of it) would also rescan the inbox.
    a_file_written_slowly_case("settle_ms = 700\npoll_ms = 3000\nclaim_stale_secs = 60\n", 40);
}

#[test]
#[cfg(unix)]
fn excluded_reserved_and_non_file_names_are_left_alone() {
    let site = Site::new(
        "inbox",
        "outbox",
        Answers::Offline,
        "include = *.csv, *.json, *.log, *.xlsx\nexclude = ~$*, .~lock.*, *.tmp, *.part, .*, skip-*\n",
    );
    std::fs::write(site.inbox.join("good.csv"), tiny_csv("good")).unwrap();
    let ignored = [
        "~$book.xlsx",
        "copying.csv.part",
        "x.csv.tmp",
        ".hidden.csv",
        "skip-me.csv",
        "notes.txt",
        "good.csv.report.json",
        "IPs_Seclytic_1700000000.log",
        "VTTL_Error.log",
    ];
    for name in ignored {
        std::fs::write(site.inbox.join(name), tiny_csv(name)).unwrap();
    }
    std::fs::create_dir(site.inbox.join("folder.csv")).unwrap();
    let outside = site.root.join("outside.csv");
    std::fs::write(&outside, tiny_csv("outside")).unwrap();
    std::os::unix::fs::symlink(&outside, site.inbox.join("link.csv")).unwrap();

    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&site.processed()), set(&["good.csv"]));
    assert_eq!(outputs(&site.outbox), set(&["good.csv"]));
    let left: BTreeSet<String> = std::fs::read_dir(&site.inbox)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["processed", "failed", ".vttl-work"].contains(&n.as_str()))
        .collect();
    let mut expected: BTreeSet<String> = ignored.iter().map(|s| s.to_string()).collect();
    expected.extend(["folder.csv".to_string(), "link.csv".to_string()]);
    assert_eq!(left, expected);
    assert!(site.inbox.join("folder.csv").is_dir());
    assert!(std::fs::symlink_metadata(site.inbox.join("link.csv")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), tiny_csv("outside"));
    assert!(stderr.contains("symbolic links are never followed"), "{stderr}");
    assert!(names(&site.failed()).is_empty());
}

#[test]
fn two_instances_on_one_inbox_process_each_of_100_files_exactly_once() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "settle_ms = 100\n");
    let mut expected = BTreeSet::new();
    for i in 0..100 {
        let name = format!("book-{i:03}.csv");
        std::fs::write(site.inbox.join(&name), tiny_csv(&name)).unwrap();
        expected.insert(name);
    }
    let spawn =
        || site.command(true).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn();
    let a = spawn().unwrap();
    let b = spawn().unwrap();
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    let (a_err, b_err) = (String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert!(a.status.success() && b.status.success(), "{a_err}\n{b_err}");
    assert_eq!(names(&site.processed()), expected);
    assert_eq!(outputs(&site.outbox), expected, "one output per input, none numbered _1");
    let taken = |log: &str| log.lines().filter(|l| l.contains(" took book-")).count();
    assert_eq!(taken(&a_err) + taken(&b_err), 100, "{a_err}\n{b_err}");
    assert!(names(&site.inbox).is_empty() && names(&site.failed()).is_empty());
    for name in &expected {
        let output = std::fs::read_to_string(site.outbox.join(name)).unwrap();
        assert!(output.contains(name.as_str()), "{name}: {output}");
    }
}

#[test]
#[cfg(unix)]
fn kill_9_in_the_middle_of_a_workbook_then_restart_processes_each_file_exactly_once() {
    let server = ApiServer::start();
    server.set_latency(Duration::from_millis(120));
    let url = server.base_url();
    let site = Site::new("inbox", "outbox", Answers::Server { url: &url, token: "test-token" }, "");
    let expected = set(&["k1.csv", "k2.csv", "k3.csv"]);
    for name in &expected {
        std::fs::write(site.inbox.join(name), ip_csv(name, 0, 12)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = outbox_monitor(site.outbox.clone(), 13, stop.clone());

    let service = site.spawn("first.log");
    wait_until(Duration::from_secs(15), "a file is claimed", || !claimed_files(&site.inbox).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let first_log = service.kill_9();
    let claimed = claimed_files(&site.inbox);
    assert_eq!(claimed.len(), 1, "one workbook was in progress when killed:\n{first_log}");
    // Its output was being written: the killed instance's temporary file is left in the outbox, named with
    // the instance's id (the name of its work folder).
    let victim_id = claimed[0].parent().unwrap().parent().unwrap().file_name().unwrap().to_str().unwrap();
    let left = temp_files(&site.outbox);
    assert!(left.iter().any(|n| n.contains(&format!(".@{victim_id}."))), "{left:?}\n{first_log}");

    let service = site.spawn("second.log");
    wait_until(Duration::from_secs(40), "every file is processed", || names(&site.processed()).len() == 3);
    let (code, second_log) = service.terminate();
    stop.store(true, Ordering::SeqCst);
    let violations = monitor.join().unwrap();
    assert_eq!(code, 0, "{second_log}");
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(names(&site.processed()), expected);
    assert_eq!(outputs(&site.outbox), expected, "exactly one output per input:\n{first_log}\n{second_log}");
    assert!(second_log.contains("recovered") || second_log.contains("recovering"), "{second_log}");
    assert!(claimed_files(&site.inbox).is_empty() && names(&site.inbox).is_empty());
    assert_eq!(work_folders(&site.inbox), 0, "{second_log}");
    // The recovering instance deleted the dead one's temporary files (and its own are gone with its exit).
    assert_eq!(temp_files(&site.outbox), BTreeSet::new(), "{second_log}");
    assert!(second_log.contains("temporary file(s) that instance"), "{second_log}");
}

#[test]
fn a_crash_right_after_publishing_does_not_produce_a_second_output() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    std::fs::write(site.inbox.join("once.csv"), tiny_csv("once")).unwrap();
    let output = site.command(true).env("VTTL_TEST_ABORT_AFTER_PUBLISH", "1").output().unwrap();
    assert!(!output.status.success(), "the test hook aborts the process");
    assert_eq!(outputs(&site.outbox), set(&["once.csv"]), "the output was published before the crash");
    assert_eq!(claimed_files(&site.inbox).len(), 1, "the input is still claimed");
    assert!(names(&site.processed()).is_empty());

    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&site.processed()), set(&["once.csv"]));
    assert_eq!(outputs(&site.outbox), set(&["once.csv"]), "no second output: {stderr}");
    assert_eq!(work_folders(&site.inbox), 0);
}

/// A file that makes the process die (the debug-build hook aborts it right after it takes `poison.csv`) is
/// handed back by each restart's recovery only until three runs died holding it; the next recovery sends it to
/// `failed` with its reason and the other files go through, instead of a crash at every restart for ever.
#[test]
fn a_file_that_kills_the_process_three_times_goes_to_failed() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    std::fs::write(site.inbox.join("poison.csv"), tiny_csv("poison")).unwrap();
    let run = || site.command(true).env("VTTL_TEST_ABORT_ON_TAKING", "poison.csv").output().unwrap();
    for attempt in 1..=3 {
        let output = run();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "run {attempt}: the hook aborts the process\n{stderr}");
        assert_eq!(claimed_files(&site.inbox).len(), 1, "run {attempt}: the input died claimed\n{stderr}");
        if attempt > 1 {
            let counted = format!("runs that stopped while holding it: {} of 3", attempt - 1);
            assert!(stderr.contains(&counted), "run {attempt}:\n{stderr}");
        }
    }
    std::fs::write(site.inbox.join("good.csv"), tiny_csv("good")).unwrap();
    let output = run();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("1 processed, 1 failed"), "{stderr}");
    assert_eq!(names(&site.processed()), set(&["good.csv"]));
    assert_eq!(outputs(&site.outbox), set(&["good.csv"]));
    assert_eq!(names(&site.failed()), set(&["poison.csv", "poison.csv.error.txt"]));
    assert_eq!(std::fs::read_to_string(site.failed().join("poison.csv")).unwrap(), tiny_csv("poison"));
    let note = std::fs::read_to_string(site.failed().join("poison.csv.error.txt")).unwrap();
    assert!(note.contains("stopped 3 times while it held this file"), "{note}");
    let error_log = std::fs::read_to_string(site.outbox.join("VTTL_Error.log")).unwrap();
    assert!(error_log.contains("poison.csv failed"), "{error_log}");
    // Nothing is left claimed, and the count went with the file.
    assert!(claimed_files(&site.inbox).is_empty());
    assert_eq!(work_folders(&site.inbox), 0, "{stderr}");
}

#[test]
fn corrupt_files_go_to_failed_with_their_reason_while_the_others_go_through() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    std::fs::write(site.inbox.join("good.csv"), tiny_csv("good")).unwrap();
    std::fs::write(site.inbox.join("not-vttl.csv"), "\"Name\",\"Value\"\r\n\"a\",\"b\"\r\n").unwrap();
    std::fs::write(site.inbox.join("broken.xlsx"), b"PK\x03\x04 this is not really a workbook").unwrap();
    let (code, stderr) = site.once();
    // Answers that are not the API's are announced (an offline run fills File Count 0 for unknown indicators).
    assert!(stderr.contains("offline mode: answers come only from the recorded bodies"), "{stderr}");
    assert_eq!(code, 0, "quarantined files are handled files: {stderr}");
    assert_eq!(names(&site.processed()), set(&["good.csv"]));
    assert_eq!(outputs(&site.outbox), set(&["good.csv"]));
    assert_eq!(
        names(&site.failed()),
        set(&["broken.xlsx", "broken.xlsx.error.txt", "not-vttl.csv", "not-vttl.csv.error.txt"])
    );
    let note = std::fs::read_to_string(site.failed().join("not-vttl.csv.error.txt")).unwrap();
    assert!(note.contains("step: read"), "{note}");
    // The reason names the file by its place in the inbox, not in the instance's work folder.
    assert!(!note.contains(".vttl-work"), "{note}");
    assert!(note.contains(&site.inbox.join("not-vttl.csv").display().to_string()), "{note}");
    assert!(note.to_lowercase().contains("vttl"), "{note}");
    let time = note.lines().find_map(|l| l.strip_prefix("time: ")).unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(time.trim()).is_ok(), "{note}");
    let error_log = std::fs::read_to_string(site.outbox.join("VTTL_Error.log")).unwrap();
    assert!(error_log.contains("not-vttl.csv") && error_log.contains("broken.xlsx"), "{error_log}");
    assert_eq!(
        std::fs::read(site.failed().join("broken.xlsx")).unwrap(),
        b"PK\x03\x04 this is not really a workbook"
    );
}

/// A user's first mistakes, said in words they can act on: a misspelled inbox is created empty with a warning
/// (it was watched without a word), a text file or a web page under an Excel name is called text (the reason
/// was the zip or OLE2 library's "Could not find EOCD" / "Invalid CFB file"), and an outbox that is a file is
/// called a file (the reason was "File exists (os error 17)").
#[test]
fn a_missing_inbox_text_under_an_excel_name_and_a_file_for_an_outbox_are_named_plainly() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    std::fs::remove_dir(&site.inbox).unwrap();
    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("did not exist: it was created, empty") && stderr.contains("[watch] inbox"),
        "{stderr}"
    );
    let (_, stderr) = site.once();
    assert!(!stderr.contains("did not exist"), "warned only when it was created: {stderr}");

    std::fs::write(site.inbox.join("export.xlsx"), "Scanned Item,Country Name\r\n192.0.2.1,\r\n").unwrap();
    std::fs::write(site.inbox.join("web.xls"), "<html><table><tr><td>Scanned Item</td></tr></table></html>")
        .unwrap();
    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    for (name, ext) in [("export.xlsx", ".xlsx"), ("web.xls", ".xls")] {
        let note = std::fs::read_to_string(site.failed().join(format!("{name}.error.txt"))).unwrap();
        assert!(note.contains("not an Excel workbook: the file holds text"), "{note}");
        assert!(note.contains(&format!("`{ext}` name")) && note.contains("`.csv` name"), "{note}");
        assert!(!note.contains("EOCD") && !note.contains("CFB"), "{note}");
    }

    std::fs::remove_dir_all(&site.outbox).unwrap();
    std::fs::write(&site.outbox, "not a folder").unwrap();
    let (code, stderr) = site.once();
    assert_eq!(code, 2, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(&format!("{} is a file, not a folder", site.outbox.display())), "{stderr}");
    assert!(!last.contains("os error"), "{stderr}");
}

/// `--once` gives up on a file it cannot take after three attempts, made as soon as the file settles again: its
/// warnings said "trying again in 30 s" (the service's pause), and the last line did not say what to do. An
/// immutable file stands for a workbook Excel holds open on Windows (skipped where `chattr +i` is refused).
#[test]
#[cfg(target_os = "linux")]
fn once_counts_its_attempts_at_a_file_it_cannot_take_and_says_what_to_do() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    let held = site.inbox.join("held.csv");
    std::fs::write(&held, tiny_csv("held")).unwrap();
    let immutable = Command::new("chattr").arg("+i").arg(&held).output();
    if !immutable.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: `chattr +i` is not available here ({immutable:?})");
        return;
    }
    let (code, stderr) = site.once();
    let _ = Command::new("chattr").arg("-i").arg(&held).status();
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("attempt 1 of 3, trying again") && stderr.contains("attempt 2 of 3"), "{stderr}");
    assert!(!stderr.contains("trying again in 30 s"), "{stderr}");
    assert!(stderr.contains("giving up after 3 attempts"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("could not be taken") && last.contains("close it and run again"), "{stderr}");
    assert!(last.contains("held.csv"), "{stderr}");
}

/// An analyst moved an earlier failed `bad.csv` away to fix it and left its note: a new `bad.csv` that fails
/// must not sit beside a note that is not its own. Its note is written first, under a name that is free, and
/// the input takes the matching name; the old note is left as it was.
#[test]
fn a_note_in_failed_always_belongs_to_the_file_beside_it() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    std::fs::create_dir_all(site.failed()).unwrap();
    let old_note = "file: bad.csv\r\nreason: OLD REASON from last month\r\n";
    std::fs::write(site.failed().join("bad.csv.error.txt"), old_note).unwrap();
    std::fs::write(site.inbox.join("bad.csv"), "\"Name\",\"Value\"\r\n\"a\",\"b\"\r\n").unwrap();
    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&site.failed()), set(&["bad.csv.error.txt", "bad_1.csv", "bad_1.csv.error.txt"]));
    assert_eq!(std::fs::read_to_string(site.failed().join("bad.csv.error.txt")).unwrap(), old_note);
    let note = std::fs::read_to_string(site.failed().join("bad_1.csv.error.txt")).unwrap();
    assert!(note.contains("file: bad.csv") && note.to_lowercase().contains("vttl"), "{note}");
    assert!(temp_files(&site.failed()).is_empty(), "{:?}", temp_files(&site.failed()));
}

/// The hot folder's own journal (in the inbox's work folder) cannot be written when an output is to be
/// published — a full or unreachable inbox volume, here a file put in place of the journal folder while the
/// lookups run. That is no fault of the workbook: the input goes back to the inbox (not to `failed`), nothing is
/// published, and `--once` stops with status 2; once the folder is usable again the file goes through.
#[test]
#[cfg(unix)]
fn a_journal_that_cannot_be_written_hands_the_input_back_instead_of_failing_it() {
    let server = ApiServer::start();
    server.set_latency(Duration::from_millis(1500));
    let url = server.base_url();
    let site = Site::new("inbox", "outbox", Answers::Server { url: &url, token: "t" }, "");
    let content = ip_csv("journal", 0, 1);
    std::fs::write(site.inbox.join("good.csv"), &content).unwrap();
    let service = site.spawn_once("once.log");
    wait_until(Duration::from_secs(10), "the file is claimed", || !claimed_files(&site.inbox).is_empty());
    let claimed = claimed_files(&site.inbox).remove(0);
    let journal = claimed.parent().unwrap().parent().unwrap().join("journal");
    std::fs::remove_dir_all(&journal).unwrap();
    std::fs::write(&journal, "in the way").unwrap();
    let (code, stderr) = service.wait();
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot record the publication"), "{stderr}");
    assert_eq!(names(&site.inbox), set(&["good.csv"]), "{stderr}");
    assert_eq!(std::fs::read_to_string(site.inbox.join("good.csv")).unwrap(), content);
    assert!(names(&site.failed()).is_empty(), "a sound input was failed: {stderr}");
    assert!(outputs(&site.outbox).is_empty());

    let _ = std::fs::remove_file(&journal); // the instance removed its work folder when it stopped
    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&site.processed()), set(&["good.csv"]));
    assert_eq!(outputs(&site.outbox), set(&["good.csv"]));
}

#[test]
fn a_refused_token_leaves_every_input_in_the_inbox_and_exits_2() {
    let server = ApiServer::start();
    server.require_token(Some("the-right-token"));
    let url = server.base_url();
    let site = Site::new("inbox", "outbox", Answers::Server { url: &url, token: "wrong-token-4711" }, "");
    let expected = set(&["r1.csv", "r2.csv", "r3.csv"]);
    for name in &expected {
        std::fs::write(site.inbox.join(name), ip_csv(name, 0, 2)).unwrap();
    }
    let (code, stderr) = site.once();
    assert_eq!(code, 2, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("refused"), "one-line reason last: {stderr}");
    assert!(!stderr.contains("wrong-token-4711"));
    assert_eq!(names(&site.inbox), expected);
    for name in &expected {
        assert_eq!(std::fs::read_to_string(site.inbox.join(name)).unwrap(), ip_csv(name, 0, 2));
    }
    assert!(names(&site.processed()).is_empty() && names(&site.failed()).is_empty());
    assert!(outputs(&site.outbox).is_empty());
    assert!(claimed_files(&site.inbox).is_empty());
    assert_eq!(server.count_status(401), 1, "it stops at the first refusal");
    let error_log = std::fs::read_to_string(site.outbox.join("VTTL_Error.log")).unwrap();
    assert_eq!(error_log.lines().count(), 1, "{error_log}");
    assert!(error_log.contains("CRITICAL: SecLytics refused the access token"), "{error_log}");
    assert!(!error_log.contains("wrong-token-4711"));
}

#[test]
#[cfg(unix)]
fn the_service_keeps_retrying_a_refused_token_and_resumes_when_it_is_accepted() {
    let server = ApiServer::start();
    server.require_token(Some("the-right-token"));
    let url = server.base_url();
    let site = Site::new("inbox", "outbox", Answers::Server { url: &url, token: "renewed-token" }, "");
    std::fs::write(site.inbox.join("wait.csv"), ip_csv("wait", 0, 2)).unwrap();
    let service = site.spawn("service.log");
    wait_until(Duration::from_secs(10), "two refusals", || server.count_status(401) >= 2);
    assert!(service.stderr().contains("CRITICAL"), "{}", service.stderr());
    // The error log says it once for the episode, not at every retry.
    let error_log = std::fs::read_to_string(site.outbox.join("VTTL_Error.log")).unwrap();
    assert_eq!(error_log.matches("CRITICAL: SecLytics refused the access token").count(), 1, "{error_log}");
    // Between two attempts the input is back in the inbox (during one it is claimed: the 401 is counted
    // before the service has handed the file back, so it is waited for rather than expected at once).
    wait_until(Duration::from_secs(10), "the input handed back to the inbox", || {
        names(&site.inbox) == set(&["wait.csv"])
    });
    assert!(names(&site.processed()).is_empty() && names(&site.failed()).is_empty());
    assert!(outputs(&site.outbox).is_empty());
    // the token is renewed on the API side
    server.require_token(Some("renewed-token"));
    wait_until(Duration::from_secs(10), "the file is processed", || {
        site.processed().join("wait.csv").exists()
    });
    let (code, stderr) = service.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(outputs(&site.outbox), set(&["wait.csv"]));
}

#[test]
#[cfg(unix)]
fn sigterm_hands_a_slow_workbook_back_when_the_grace_time_is_over() {
    let server = ApiServer::start();
    server.set_latency(Duration::from_millis(300));
    let url = server.base_url();
    let site =
        Site::new("inbox", "outbox", Answers::Server { url: &url, token: "t" }, "shutdown_grace_secs = 0\n");
    std::fs::write(site.inbox.join("long.csv"), ip_csv("long", 0, 20)).unwrap();
    let service = site.spawn("service.log");
    wait_until(Duration::from_secs(10), "the file is claimed", || !claimed_files(&site.inbox).is_empty());
    let (code, stderr) = service.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("handed back"), "{stderr}");
    assert_eq!(names(&site.inbox), set(&["long.csv"]));
    assert_eq!(std::fs::read_to_string(site.inbox.join("long.csv")).unwrap(), ip_csv("long", 0, 20));
    assert!(outputs(&site.outbox).is_empty());
    assert_eq!(work_folders(&site.inbox), 0);
}

#[test]
#[cfg(unix)]
fn a_two_stage_chain_delivers_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let first = Site::in_dir(
        tempfile::tempdir().unwrap(),
        root.clone(),
        "stage1-in",
        "stage1-out",
        Answers::Offline,
        "",
    );
    // the second stage watches the first one's outbox, with its own settings
    let second = Site::in_dir(
        dir,
        root.clone(),
        "stage1-out",
        "stage2-out",
        Answers::Offline,
        "include = *\nsettle_ms = 300\n",
    );
    let a = first.spawn("first.log");
    let b = second.spawn("second.log");
    let mut expected = BTreeSet::new();
    for i in 0..5 {
        let name = format!("chain-{i}.csv");
        std::fs::write(first.inbox.join(&name), tiny_csv(&name)).unwrap();
        expected.insert(name);
    }
    wait_until(Duration::from_secs(30), "every file reaches the second outbox", || {
        outputs(&second.outbox).len() == 5
    });
    let (code_a, log_a) = a.terminate();
    let (code_b, log_b) = b.terminate();
    assert_eq!((code_a, code_b), (0, 0), "{log_a}\n{log_b}");
    assert_eq!(outputs(&second.outbox), expected);
    assert_eq!(names(&first.processed()), expected);
    assert_eq!(
        names(&second.processed()),
        expected,
        "stage 2 moved stage 1's outputs to its processed folder"
    );
    // stage 1's reports and logs stay where they are: never inputs of stage 2
    let left = names(&first.outbox);
    assert_eq!(left.iter().filter(|n| n.ends_with(".report.json")).count(), 5, "{left:?}");
    assert!(left.iter().any(|n| n.contains("_Seclytic_")), "{left:?}");
    assert!(outputs(&first.outbox).is_empty());
    assert!(names(&second.failed()).is_empty(), "{log_b}");
    for name in &expected {
        let twice = std::fs::read_to_string(second.outbox.join(name)).unwrap();
        assert!(twice.contains("Seclytics Reputation and Reason"), "{twice}");
    }
}

#[test]
#[cfg(unix)]
fn claims_of_a_dead_instance_on_another_host_are_recovered_by_the_lease_rule_only() {
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    let work = site.inbox.join(".vttl-work");
    // a dead instance of another machine: its lease never changes
    let dead = work.join("otherhost-1-1-aaaa");
    std::fs::create_dir_all(dead.join("files")).unwrap();
    std::fs::create_dir_all(dead.join("journal")).unwrap();
    std::fs::write(dead.join("lease"), "vttl-seclytics claim lease\nhost=otherhost\npid=1\nbeat=7\n")
        .unwrap();
    std::fs::write(dead.join("files/orphan.csv"), tiny_csv("orphan")).unwrap();
    // a live one: its lease keeps changing
    let live = work.join("farhost-2-2-bbbb");
    std::fs::create_dir_all(live.join("files")).unwrap();
    std::fs::write(live.join("files/busy.csv"), tiny_csv("busy")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let beat = {
        let (stop, lease) = (stop.clone(), live.join("lease"));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                std::fs::write(&lease, format!("host=farhost\npid=2\nbeat={n}\n")).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let started = Instant::now();
    let service = site.spawn("service.log");
    wait_until(Duration::from_secs(15), "the orphan is processed", || {
        site.processed().join("orphan.csv").exists()
    });
    assert!(started.elapsed() >= Duration::from_secs(2), "not before claim_stale_secs");
    std::thread::sleep(Duration::from_secs(1));
    assert!(live.join("files/busy.csv").exists(), "a live claim is never taken");
    let (code, stderr) = service.terminate();
    stop.store(true, Ordering::SeqCst);
    beat.join().unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(!dead.exists());
    assert_eq!(outputs(&site.outbox), set(&["orphan.csv"]));
}

/// `..` after a symbolic link goes up from the link's target, not from the folder the link sits in: an inbox
/// written `link/../drop` is `elsewhere/drop` (the link points to `elsewhere/target`), not the outbox `drop`
/// beside the link, and is watched (it was refused as "the same folder" before any folder was looked at).
#[cfg(unix)]
#[test]
fn an_inbox_reached_through_a_link_and_dotdot_is_not_taken_for_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("elsewhere/target")).unwrap();
    std::os::unix::fs::symlink(root.join("elsewhere/target"), root.join("link")).unwrap();
    let site = Site::in_dir(dir, root.clone(), "link/../drop", "drop", Answers::Offline, "");
    std::fs::write(root.join("elsewhere/drop/a.csv"), tiny_csv("a")).unwrap();
    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(outputs(&root.join("drop")), set(&["a.csv"]));
    assert!(root.join("elsewhere/drop/processed/a.csv").exists(), "{stderr}");
}

#[test]
fn an_outbox_that_is_the_inbox_is_refused_and_names_are_never_overwritten() {
    let looped = Site::new("same", "same", Answers::Offline, "");
    std::fs::write(looped.inbox.join("a.csv"), tiny_csv("a")).unwrap();
    let (code, stderr) = looped.once();
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.lines().last().unwrap_or_default().contains("same folder"), "{stderr}");
    assert_eq!(names(&looped.inbox), set(&["a.csv"]));
    for made_before_the_refusal in ["processed", "failed"] {
        assert!(
            !looped.inbox.join(made_before_the_refusal).exists(),
            "{made_before_the_refusal} was created"
        );
    }

    // an earlier file of the same name in processed/ and in the outbox is kept; the new ones get `_1`
    let site = Site::new("inbox", "outbox", Answers::Offline, "");
    std::fs::create_dir_all(site.processed()).unwrap();
    std::fs::create_dir_all(&site.outbox).unwrap();
    std::fs::write(site.processed().join("dup.csv"), b"earlier input").unwrap();
    std::fs::write(site.outbox.join("dup.csv"), b"earlier output").unwrap();
    std::fs::write(site.inbox.join("dup.csv"), tiny_csv("dup")).unwrap();
    let (code, stderr) = site.once();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(site.processed().join("dup.csv")).unwrap(), b"earlier input");
    assert_eq!(std::fs::read_to_string(site.processed().join("dup_1.csv")).unwrap(), tiny_csv("dup"));
    assert_eq!(std::fs::read(site.outbox.join("dup.csv")).unwrap(), b"earlier output");
    assert!(std::fs::read_to_string(site.outbox.join("dup_1.csv")).unwrap().contains("dup"));
}

#[test]
#[cfg(unix)]
fn a_running_instance_recovers_the_claim_of_a_killed_neighbour() {
    let server = ApiServer::start();
    server.set_latency(Duration::from_millis(100));
    let url = server.base_url();
    let site = Site::new("inbox", "outbox", Answers::Server { url: &url, token: "t" }, "");
    let expected = set(&["n1.csv", "n2.csv", "n3.csv", "n4.csv"]);
    for name in &expected {
        std::fs::write(site.inbox.join(name), ip_csv(name, 0, 8)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = outbox_monitor(site.outbox.clone(), 9, stop.clone());
    let victim = site.spawn("victim.log");
    let survivor = site.spawn("survivor.log");
    let victim_pid = victim.child.id();
    let victim_claims = || {
        claimed_files(&site.inbox)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&format!("-{victim_pid}-")))
            .count()
    };
    wait_until(Duration::from_secs(15), "the victim claims a file", || victim_claims() > 0);
    let victim_log = victim.kill_9();
    wait_until(Duration::from_secs(40), "every file is processed", || names(&site.processed()).len() == 4);
    let (code, survivor_log) = survivor.terminate();
    stop.store(true, Ordering::SeqCst);
    let violations = monitor.join().unwrap();
    assert_eq!(code, 0, "{survivor_log}");
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(names(&site.processed()), expected);
    assert_eq!(outputs(&site.outbox), expected, "{victim_log}\n{survivor_log}");
    assert!(survivor_log.contains("recovering the claims"), "{survivor_log}");
    assert_eq!(work_folders(&site.inbox), 0, "{survivor_log}");
    assert_eq!(temp_files(&site.outbox), BTreeSet::new(), "{survivor_log}");
}

#[test]
#[cfg(unix)]
fn once_interrupted_by_sigterm_hands_the_file_back_and_exits_130() {
    let server = ApiServer::start();
    server.set_latency(Duration::from_millis(300));
    let url = server.base_url();
    let site =
        Site::new("inbox", "outbox", Answers::Server { url: &url, token: "t" }, "shutdown_grace_secs = 1\n");
    std::fs::write(site.inbox.join("big.csv"), ip_csv("big", 0, 20)).unwrap();
    let service = site.spawn_once("once.log");
    wait_until(Duration::from_secs(10), "the file is claimed", || !claimed_files(&site.inbox).is_empty());
    let started = Instant::now();
    let (code, stderr) = service.terminate();
    assert_eq!(code, 130, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by shutdown_grace_secs");
    assert!(stderr.lines().last().unwrap_or_default().contains("interrupted"), "{stderr}");
    assert_eq!(names(&site.inbox), set(&["big.csv"]));
    assert!(outputs(&site.outbox).is_empty() && names(&site.processed()).is_empty());
    assert_eq!(work_folders(&site.inbox), 0);
}
