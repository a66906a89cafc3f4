//! The performance benchmarks of the issue "make speed and memory measured facts" (see `BENCHMARKS.md`).
//!
//! Every figure comes from the real release binary (`vttl-seclytics --config F enrich FILE --outbox DIR`, or
//! `watch`) driven against the fake SecLytics API of `tests/support/api_server.rs` on 127.0.0.1, with inputs
//! generated here in a temporary folder. Floors ("calamine + rust_xlsxwriter", "bare csv crate") run as child
//! processes of this same executable (`__floor-xlsx`, `__floor-csv`), so wall time and peak RSS are measured
//! the same way for both sides of every ratio, in the same run.
//!
//! Peak RSS is `ru_maxrss` of the child's `rusage` as returned by `wait4(2)` for that one child (Linux: KiB).
//!
//! Run with `cargo bench --bench pipeline` (or `scripts/bench.sh`). Environment:
//! * `BENCH_QUICK=1` (or `--quick`): shorter runs for development (smaller inputs, 15 s quota run);
//! * `BENCH_ONLY=1,3`: run only these targets;
//! * `BENCH_REPEAT=N`: floor and enrich of targets 3 and 4 run N times alternately, best of each counts (3);
//! * `BENCH_KEEP=1`: keep the temporary folder (inputs, caches, outputs, stderr) for profiling.
//!
//! Without `--bench` on the command line (e.g. `cargo test --all-targets` running this binary) it does nothing.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::api_server::{ApiServer, Behaviour, api_json};
use vttl_seclytics::config::Secret;
use vttl_seclytics::seclytics::cache::{Cache, CachedAnswer, token_fingerprint};

const TOKEN: &str = "bench-token-0123456789";

/// The 43 columns of a VTTL IP/domain sheet (vttl-spec §1.7, with the usual vendor columns on).
const HEADER: [&str; 43] = [
    "Scanned Item",
    "VTTI Download From",
    "VTTI Referrer",
    "VTTI Callback To",
    "VTTI_Uniq_URLs",
    "VTTI_Uniq_Domains",
    "Tranco_list",
    "SORBS",
    "Quad9",
    "CBL",
    "Barrucda",
    "Spamhaus ZEN RBL",
    "Spamhaus DBL",
    "URIBL",
    "SURBL",
    "Country Name",
    "Country Code",
    "Region Name",
    "Region Code",
    "City Name",
    "Creation Date",
    "Reverse DNS",
    "WHOIS",
    "Hosted Domains",
    "IP Address",
    "Category",
    "DDNS",
    "AlienVault Pulse",
    "Validation",
    "Keyword Watch List",
    "VT Download",
    "VT Referrer",
    "VT Callback",
    "VT URL",
    "Date First Seen",
    "Sinkhole",
    "Cache",
    "IP Domain Watch List",
    "Detection Name Watch List",
    "URL Watch List",
    "Seclytics Reputation and Reason",
    "Seclytics Associated File Metadata",
    "Seclytics File Count",
];

/// Cells VTTL's other vendors already filled: (column, value). Non-ASCII on purpose (Windows-1252 in CSV).
const PREFILLED: [(usize, &str); 14] = [
    (1, "0"),
    (2, "0"),
    (3, "1"),
    (6, "no"),
    (8, "not listed"),
    (15, "Österreich"),
    (16, "AT"),
    (17, "Wien"),
    (18, "9"),
    (19, "Zürich-Süd"),
    (20, "2019-04-01"),
    (25, "hosting; cloud"),
    (26, "no"),
    (36, "cached 2024-03-01 12:00"),
];

// ---------------------------------------------------------------------------------------------------------
// Indicators and documents
// ---------------------------------------------------------------------------------------------------------

/// The i-th IP: 11.0.0.0 + i (globally routable).
fn ip_of(i: u32) -> String {
    Ipv4Addr::from(0x0B00_0000u32.wrapping_add(i)).to_string()
}

fn host_of(i: u32) -> String {
    format!("host-{i}.example-{}.com", i % 97)
}

/// Distinct indicator number `i` of a sheet: even = an IP, odd = a domain whose passive DNS answer is the IP
/// of the row before (already in the sheet, so no row is appended and no extra lookup is made).
fn indicator_of(i: u32) -> (&'static str, String) {
    if i.is_multiple_of(2) { ("ips", ip_of(i)) } else { ("hosts", host_of(i)) }
}

/// A document like the real API's (about 1.3 KB), different per indicator.
fn document_for(i: u32) -> String {
    let (endpoint, value) = indicator_of(i);
    let mut doc = json!({
        "id": value,
        "type": if endpoint == "ips" { "ip" } else { "host" },
        "accessed_by_files": [format!("{:064x}", u64::from(i) * 7919), format!("{:032x}", u64::from(i) * 104729)],
        "context": {
            "categories": {"dshield": ["scanner"], "hybrid_analysis": ["malicious"]},
            "reasons": {"hybrid_analysis": [format!("Trojan.Gen.{}", i % 50), "Predicted address, contacted by malware"]},
            "source_urls": {"hybrid_analysis": [format!("http://{}/gate.php?id={i}", host_of(i))]},
        },
        "history": {
            "first_seen_at": "2024-03-02T00:00:00",
            "global_history": [
                {"duration": 86400, "end_at": "2024-12-31T00:00:00", "start_at": "2024-02-10T08:30:00"}
            ]
        },
    });
    if endpoint == "ips" {
        doc["asn"] = json!({"description": format!("EXAMPLE-AS-{}", i % 300), "number": format!("{}", 64500 + i % 300)});
    } else {
        doc["passive_dns"] = json!([{"answer_ip": ip_of(i - 1), "answer_type": "A"}]);
        doc["whitelist"] = if i % 10 == 1 { json!("Tranco top 10k") } else { json!(null) };
    }
    api_json(&doc)
}

/// Writes answers for indicators `0..count` straight into the SQLite cache through the library's own API.
fn prime_cache(path: &Path, count: u32) -> Duration {
    let started = Instant::now();
    let cache = Cache::open(path, Duration::from_secs(24 * 3600)).expect("open cache");
    let fp = token_fingerprint(&Secret::new(TOKEN));
    let mut start = 0;
    while start < count {
        let end = count.min(start + 10_000);
        let owned: Vec<(&str, String, CachedAnswer)> = (start..end)
            .map(|i| {
                let (endpoint, value) = indicator_of(i);
                (endpoint, value, CachedAnswer::Found(document_for(i)))
            })
            .collect();
        let entries: Vec<(&str, &str, CachedAnswer)> =
            owned.iter().map(|(e, v, a)| (*e, v.as_str(), a.clone())).collect();
        cache.put_many(&fp, &entries);
        start = end;
    }
    started.elapsed()
}

// ---------------------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------------------

/// The cells of a data row holding indicator number `indicator` (the other vendors' cells pre-filled).
fn row_cells(indicator: u32) -> Vec<String> {
    let mut cells = vec![String::new(); HEADER.len()];
    cells[0] = indicator_of(indicator).1;
    for (column, value) in PREFILLED {
        cells[column] = value.to_string();
    }
    cells
}

/// A VTTL CSV: all fields quoted, CRLF, Windows-1252; row r holds indicator `indicator_for_row(r)`.
fn write_csv(path: &Path, rows: u32, indicator_for_row: impl Fn(u32) -> u32) {
    let file = std::fs::File::create(path).expect("create csv");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut line = String::new();
    let mut emit = |cells: &[String], out: &mut std::io::BufWriter<std::fs::File>| {
        line.clear();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push('"');
            line.push_str(&cell.replace('"', "\"\""));
            line.push('"');
        }
        line.push_str("\r\n");
        let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&line);
        assert!(!unmappable);
        out.write_all(&bytes).expect("write csv");
    };
    let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    emit(&header, &mut out);
    for r in 0..rows {
        emit(&row_cells(indicator_for_row(r)), &mut out);
    }
    out.flush().expect("flush csv");
}

/// A VTTL XLSX with one IP/domain sheet of `rows` distinct indicators.
fn write_xlsx(path: &Path, rows: u32) {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet_with_constant_memory().expect("worksheet");
    sheet.set_name("Threat Intelligence").expect("sheet name");
    for (c, h) in HEADER.iter().enumerate() {
        sheet.write_string(0, c as u16, *h).expect("header");
    }
    for r in 0..rows {
        for (c, cell) in row_cells(r).iter().enumerate() {
            if !cell.is_empty() {
                sheet.write_string(r + 1, c as u16, cell).expect("cell");
            }
        }
    }
    book.save(path).expect("save xlsx");
}

// ---------------------------------------------------------------------------------------------------------
// Child processes: wall time and peak RSS
// ---------------------------------------------------------------------------------------------------------

struct Measured {
    wall: Duration,
    /// User + system CPU time of the child (all its threads).
    cpu: Duration,
    /// Peak resident set of the child, KiB (`ru_maxrss` from `wait4`).
    max_rss_kib: u64,
    code: i32,
    stderr_path: PathBuf,
}

impl Measured {
    fn rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// Spawns `command` (stdout discarded, stderr to a file) and waits for it with `wait4`, killing it after
/// `kill_after` when given.
// The child is reaped by `wait4` (which std's `Child::wait` cannot do while returning the rusage).
#[cfg(unix)]
#[allow(clippy::zombie_processes)]
fn measure(mut command: Command, stderr_path: &Path, kill_after: Option<Duration>) -> Measured {
    let stderr = std::fs::File::create(stderr_path).expect("stderr file");
    command.stdout(Stdio::null()).stderr(stderr).stdin(Stdio::null());
    // Start every measured child with no dirty page-cache data of the previous one: the floors do not flush
    // their output, and on ext4 (ordered data) the program's `fsync` of its own output would otherwise also
    // write out the floor's hundreds of megabytes and be charged for it.
    // SAFETY: sync(2) has no arguments and no failure mode.
    unsafe { libc::sync() };
    let started = Instant::now();
    let mut child = command.spawn().expect("spawn child");
    let pid = child.id() as libc::pid_t;
    if let Some(limit) = kill_after {
        kill_at_end_of_window(&mut child, started, limit);
    }
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data; wait4 fills it for the child `pid`, which we spawned and which has
    // not been reaped (std's `Child` is never waited on after this point).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(reaped, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    let tv =
        |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    Measured { wall, cpu, max_rss_kib: usage.ru_maxrss as u64, code, stderr_path: stderr_path.to_path_buf() }
}

/// [`measure`] where there is no `wait4` (the benchmark is made for Linux; elsewhere it compiles and measures
/// wall time only: CPU time and peak RSS read 0).
#[cfg(not(unix))]
fn measure(mut command: Command, stderr_path: &Path, kill_after: Option<Duration>) -> Measured {
    let stderr = std::fs::File::create(stderr_path).expect("stderr file");
    command.stdout(Stdio::null()).stderr(stderr).stdin(Stdio::null());
    let started = Instant::now();
    let mut child = command.spawn().expect("spawn child");
    if let Some(limit) = kill_after {
        kill_at_end_of_window(&mut child, started, limit);
    }
    let status = child.wait().expect("wait for child");
    let wall = started.elapsed();
    let code = status.code().unwrap_or(-1);
    Measured { wall, cpu: Duration::ZERO, max_rss_kib: 0, code, stderr_path: stderr_path.to_path_buf() }
}

/// Kills `child` once `limit` has passed since `started`; panics when it ends before (the measured window
/// must be full).
fn kill_at_end_of_window(child: &mut std::process::Child, started: Instant, limit: Duration) {
    while started.elapsed() < limit {
        if child.try_wait().ok().flatten().is_some() {
            panic!("the child finished before the {limit:?} measuring window ended");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vttl-seclytics"))
}

/// A scenario folder: ini, outbox, stderr files.
struct Scenario {
    dir: PathBuf,
    name: String,
}

struct IniSettings<'a> {
    base_url: &'a str,
    concurrency: usize,
    requests_per_minute: u32,
    max_retries: u32,
    cache: Option<&'a Path>,
}

impl Scenario {
    fn new(root: &Path, name: &str, settings: &IniSettings) -> Scenario {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("scenario dir");
        let repo_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let cache = settings.cache.map(|p| p.display().to_string()).unwrap_or_default();
        let ini = format!(
            "[seclytics]\nbase_url = {}\naccess_token = {TOKEN}\nconcurrency = {}\nrequests_per_minute = {}\n\
             max_retries = {}\ntimeout_secs = 30\ncache = {cache}\n\
             [watchlists]\ndir = {}\n[main]\nreverseDNS = False\n\
             [watch]\ninbox = inbox\noutbox = outbox\nsettle_ms = {SETTLE_MS}\npoll_ms = 0\n",
            settings.base_url,
            settings.concurrency,
            settings.requests_per_minute,
            settings.max_retries,
            repo_config.display(),
        );
        std::fs::write(dir.join("vttl.ini"), ini).expect("write ini");
        Scenario { dir, name: name.to_string() }
    }

    fn outbox(&self, run: &str) -> PathBuf {
        self.dir.join(format!("out-{run}"))
    }

    fn enrich_command(&self, input: &Path, run: &str) -> Command {
        let mut command = Command::new(binary());
        command
            .arg("--config")
            .arg(self.dir.join("vttl.ini"))
            .arg("enrich")
            .arg(input)
            .arg("--outbox")
            .arg(self.outbox(run))
            .env_remove("SECLYTICS_ACCESS_TOKEN")
            .env("VTTL_LOG", "warn");
        command
    }

    /// Runs `enrich` on `input` and checks it succeeded.
    fn enrich(&self, input: &Path, run: &str) -> Measured {
        let stderr = self.dir.join(format!("{run}.stderr"));
        let measured = measure(self.enrich_command(input, run), &stderr, None);
        assert_eq!(measured.code, 0, "{} {run}: enrich failed: {}", self.name, measured.stderr());
        measured
    }

    /// The report of the (only) workbook enriched in run `run`.
    fn report(&self, run: &str) -> serde_json::Value {
        let outbox = self.outbox(run);
        let entry = std::fs::read_dir(&outbox)
            .expect("outbox")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(".report.json"))
            .expect("a report in the outbox");
        serde_json::from_slice(&std::fs::read(entry.path()).expect("read report")).expect("report json")
    }
}

/// Runs the floor and `enrich` alternately `repeats` times (outboxes `run0`, `run1`…); returns the fastest
/// run of each and the name of the last enrich run (its outbox is kept). Every measured run starts from the
/// same state: the outputs of earlier runs (hundreds of MB for target 4) are deleted first, so neither side
/// pays for the other's files in the page cache (measured: leaving them made the program's system time
/// vary between 0.15 s and 0.95 s on this VM).
fn floor_and_enrich(
    repeats: usize,
    scenario: &Scenario,
    input: &Path,
    floor_output: &Path,
    floor: impl Fn() -> Command,
) -> (Measured, Measured, String) {
    let mut best: (Option<Measured>, Option<Measured>) = (None, None);
    let keep_best = |slot: &mut Option<Measured>, m: Measured| {
        if slot.as_ref().is_none_or(|b| m.wall < b.wall) {
            *slot = Some(m);
        }
    };
    let forget_outputs = || {
        let _ = std::fs::remove_file(floor_output);
        let _ = std::fs::remove_dir_all(scenario.outbox("first"));
        for k in 0..repeats {
            let _ = std::fs::remove_dir_all(scenario.outbox(&format!("run{k}")));
        }
    };
    for k in 0..repeats {
        forget_outputs();
        let stderr = scenario.dir.join(format!("floor{k}.stderr"));
        let measured = measure(floor(), &stderr, None);
        assert_eq!(measured.code, 0, "floor failed: {}", measured.stderr());
        keep_best(&mut best.0, measured);
        forget_outputs();
        keep_best(&mut best.1, scenario.enrich(input, &format!("run{k}")));
    }
    (best.0.expect("one floor run"), best.1.expect("one enrich run"), format!("run{}", repeats - 1))
}

fn floor_command(kind: &str, input: &Path, output: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    command.arg(kind).arg(input).arg(output);
    command
}

// ---------------------------------------------------------------------------------------------------------
// The floors (run as `pipeline __floor-xlsx IN OUT` / `pipeline __floor-csv IN OUT`)
// ---------------------------------------------------------------------------------------------------------

/// calamine reads the first sheet; rust_xlsxwriter (constant-memory worksheet, as the program uses) writes
/// the same cells.
fn floor_xlsx(input: &Path, output: &Path) {
    use calamine::{Data, Reader};
    let mut workbook = calamine::open_workbook_auto(input).expect("calamine open");
    let names = workbook.sheet_names();
    let range = workbook.worksheet_range(&names[0]).expect("calamine range");
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet_with_constant_memory().expect("worksheet");
    sheet.set_name(&names[0]).expect("sheet name");
    let (row0, col0) = range.start().unwrap_or((0, 0));
    for (r, row) in range.rows().enumerate() {
        let r = row0 + r as u32;
        for (c, cell) in row.iter().enumerate() {
            let c = (col0 as usize + c) as u16;
            match cell {
                Data::Empty => {}
                Data::String(s) => {
                    sheet.write_string(r, c, s).expect("write");
                }
                Data::Float(f) => {
                    sheet.write_number(r, c, *f).expect("write");
                }
                Data::Int(i) => {
                    sheet.write_number(r, c, *i as f64).expect("write");
                }
                Data::Bool(b) => {
                    sheet.write_boolean(r, c, *b).expect("write");
                }
                other => {
                    sheet.write_string(r, c, other.to_string()).expect("write");
                }
            }
        }
    }
    book.save(output).expect("save");
}

/// The csv crate reads every record and writes it back (all fields quoted, CRLF), bytes as they are.
fn floor_csv(input: &Path, output: &Path) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_path(input)
        .expect("open csv");
    let file = std::fs::File::create(output).expect("create");
    let mut writer = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .terminator(csv::Terminator::CRLF)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_writer(file);
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record).expect("read") {
        writer.write_byte_record(&record).expect("write");
    }
    writer.flush().expect("flush");
}

// ---------------------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------------------

struct Row {
    target: String,
    measure: String,
    value: String,
    goal: String,
    verdict: &'static str,
}

#[derive(Default)]
struct Results {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Results {
    fn add(&mut self, target: &str, measure: &str, value: String, goal: &str, met: Option<bool>) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!("  {target} | {measure} | {value} | {goal} | {verdict}");
        self.rows.push(Row {
            target: target.into(),
            measure: measure.into(),
            value,
            goal: goal.into(),
            verdict,
        });
    }

    fn note(&mut self, text: String) {
        println!("  note: {text}");
        self.notes.push(text);
    }

    fn table(&self) -> String {
        let mut out = String::from("| target | measure | value | goal | verdict |\n|---|---|---|---|---|\n");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                row.target, row.measure, row.value, row.goal, row.verdict
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "* {note}");
            }
        }
        out
    }
}

/// `BENCH_KEEP` is set: keep every generated file.
fn keep_files() -> bool {
    std::env::var_os("BENCH_KEEP").is_some()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One target's benchmark.
type Target = fn(&Path, &Options, &mut Results);

struct Options {
    quick: bool,
    /// Floor and enrich are run alternately this many times; the best (shortest wall time) of each counts.
    repeats: usize,
    only: Option<BTreeSet<u32>>,
}

impl Options {
    fn wants(&self, target: u32) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&target))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------------------

/// A server answering every path with a document after `latency`.
fn document_server(latency: Duration) -> ApiServer {
    let server = ApiServer::start();
    server.require_token(Some(TOKEN));
    server.set_latency(latency);
    server.set_default(Behaviour::Respond {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: document_for(0).into_bytes(),
    });
    server
}

/// Target 1: lookups overlap. N distinct indicators, 50 ms latency, concurrency 8 vs 1, no cache, no quota.
fn target_1(root: &Path, options: &Options, results: &mut Results) {
    let count: u32 = if options.quick { 400 } else { 2000 };
    let latency = Duration::from_millis(50);
    let server = document_server(latency);
    let input = root.join("t1.csv");
    write_csv(&input, count, |r| r);
    let url = server.base_url();
    let mut walls = Vec::new();
    for concurrency in [8usize, 1] {
        server.clear_requests();
        let scenario = Scenario::new(
            root,
            &format!("t1-c{concurrency}"),
            &IniSettings {
                base_url: &url,
                concurrency,
                requests_per_minute: 1_000_000,
                max_retries: 0,
                cache: None,
            },
        );
        let run = scenario.enrich(&input, "run");
        let requests = server.request_count();
        assert_eq!(requests, count as usize, "one request per distinct indicator");
        let bound = latency * count / concurrency as u32;
        let ratio = run.wall.as_secs_f64() / bound.as_secs_f64();
        results.add(
            "1",
            &format!("{count} lookups, 50 ms, concurrency {concurrency}: wall / bound {}", secs(bound)),
            format!("{} → {ratio:.3}× (max in flight {})", secs(run.wall), server.max_in_flight()),
            if concurrency == 8 { "≤ 1.25×" } else { "(report)" },
            (concurrency == 8).then_some(ratio <= 1.25),
        );
        walls.push(run.wall);
    }
    results.add(
        "1",
        "speed-up concurrency 8 vs 1",
        format!("{:.2}×", walls[1].as_secs_f64() / walls[0].as_secs_f64()),
        "(report; ideal 8×)",
        None,
    );
}

/// Target 2: spend the quota, never exceed it. The server answers 429 above 600 requests per sliding minute;
/// the client is set to 600/minute; the run is cut after the window.
fn target_2(root: &Path, options: &Options, results: &mut Results) {
    let window = if options.quick { Duration::from_secs(15) } else { Duration::from_secs(90) };
    let per_minute = 600usize;
    let server = document_server(Duration::from_millis(50));
    server.set_quota(per_minute, Duration::from_secs(60));
    // More indicators than the window can take, so the client is never idle.
    let count = (window.as_secs_f64() / 60.0 * per_minute as f64 * 1.5) as u32 + 50;
    let input = root.join("t2.csv");
    write_csv(&input, count, |r| r);
    let url = server.base_url();
    let scenario = Scenario::new(
        root,
        "t2",
        &IniSettings {
            base_url: &url,
            concurrency: 8,
            requests_per_minute: per_minute as u32,
            max_retries: 4,
            cache: None,
        },
    );
    let started = Instant::now();
    let stderr = scenario.dir.join("run.stderr");
    let _ = measure(scenario.enrich_command(&input, "run"), &stderr, Some(window));
    let requests = server.requests();
    let in_window =
        requests.iter().filter(|r| r.arrived.duration_since(started) < window).collect::<Vec<_>>();
    let accepted = in_window.iter().filter(|r| r.status == 200).count();
    let throttled = requests.iter().filter(|r| r.status == 429).count();
    let quota = per_minute as f64 * window.as_secs_f64() / 60.0;
    let used = accepted as f64 / quota;
    // The most requests that arrived within any 60-second window (sliding over arrivals).
    let arrivals: Vec<Instant> = requests.iter().map(|r| r.arrived).collect();
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..arrivals.len() {
        while arrivals[end].duration_since(arrivals[start]) >= Duration::from_secs(60) {
            start += 1;
        }
        busiest = busiest.max(end + 1 - start);
    }
    results.add(
        "2",
        &format!("quota used over {} s (600/min server and client)", window.as_secs()),
        format!("{accepted} of {quota:.0} = {:.1} %", used * 100.0),
        "≥ 95 %",
        Some(used >= 0.95),
    );
    results.add("2", "429 answers sent by the server", throttled.to_string(), "0", Some(throttled == 0));
    results.add(
        "2",
        "most requests in any 60 s window",
        busiest.to_string(),
        "≤ 600",
        Some(busiest <= per_minute),
    );
}

/// Targets 3 and 4 share this: the measured run answers from the cache while the server fails every request.
fn failing_server() -> ApiServer {
    let server = ApiServer::start();
    server.set_default(Behaviour::status(500, "the benchmark expects no request"));
    server
}

/// The first `enrich` after the cache was primed. Priming stores answers only, so this run digests every
/// cached body and keeps the digests (as the first run after an API fetch by an older version, or after a
/// watch-list edit, would); the measured runs after it use them, as any later run does. Reported on its own
/// line, against the floor of the measured runs.
fn first_run_from_bodies(scenario: &Scenario, input: &Path) -> Measured {
    scenario.enrich(input, "first")
}

/// Adds the line for [`first_run_from_bodies`].
fn add_first_run(results: &mut Results, target: &str, what: &str, first: &Measured, floor: &Measured) {
    results.add(
        target,
        &format!("{what}: first run after priming (bodies cached, no digests yet) / floor"),
        format!("{} → {:.2}×", secs(first.wall), first.wall.as_secs_f64() / floor.wall.as_secs_f64()),
        "(report)",
        None,
    );
}

/// One input of targets 3 and 4, answered from a primed cache, against its floor.
struct CachedCase<'a> {
    target: &'a str,
    /// The scenario's folder name.
    name: &'a str,
    /// What the input is, for the result lines ("XLSX 100000×43"), and the start of the ratio's line.
    what: String,
    ratio_label: String,
    input: &'a Path,
    cache: &'a Path,
    /// `__floor-xlsx` or `__floor-csv`, and where the floor writes.
    floor: &'a str,
    floor_out: PathBuf,
    repeats: usize,
    max_ratio: f64,
    max_rss_mib: f64,
    /// Labels of the memory and request lines.
    rss_label: String,
    hits_label: String,
    /// Cache hits the measured run must report (one per distinct indicator).
    expected_hits: u64,
}

/// Runs a [`CachedCase`] — the first run after priming, then floor and program alternately — against a server
/// that fails every request, and adds its result lines. Returns the scenario (its outboxes, for clean-up).
fn measure_cached_case(root: &Path, case: &CachedCase<'_>, results: &mut Results) -> Scenario {
    let server = failing_server();
    let url = server.base_url();
    let scenario = Scenario::new(
        root,
        case.name,
        &IniSettings {
            base_url: &url,
            concurrency: 8,
            requests_per_minute: 1_000_000,
            max_retries: 0,
            cache: Some(case.cache),
        },
    );
    let first = first_run_from_bodies(&scenario, case.input);
    let (floor, run, last) = floor_and_enrich(case.repeats, &scenario, case.input, &case.floor_out, || {
        floor_command(case.floor, case.input, &case.floor_out)
    });
    let report = scenario.report(&last);
    let ratio = run.wall.as_secs_f64() / floor.wall.as_secs_f64();
    let cpu_ratio = run.cpu.as_secs_f64() / floor.cpu.as_secs_f64();
    results.add(
        case.target,
        &format!("{}: enrich / floor {} (best of {})", case.ratio_label, secs(floor.wall), case.repeats),
        format!(
            "{} → {ratio:.2}× (CPU {} / {} = {cpu_ratio:.2}×)",
            secs(run.wall),
            secs(run.cpu),
            secs(floor.cpu)
        ),
        &format!("≤ {}×", case.max_ratio),
        Some(ratio <= case.max_ratio),
    );
    add_first_run(results, case.target, &case.what, &first, &floor);
    results.add(
        case.target,
        &case.rss_label,
        format!("{:.0} MiB ({:.0} MiB)", run.rss_mib(), floor.rss_mib()),
        &format!("≤ {} MiB", case.max_rss_mib),
        Some(run.rss_mib() <= case.max_rss_mib),
    );
    let requests = server.request_count();
    let hits = report["cache_hits"].as_u64().unwrap_or(0);
    results.add(
        case.target,
        &case.hits_label,
        format!("{requests} / {hits}"),
        &format!("0 / {}", case.expected_hits),
        Some(requests == 0 && hits == case.expected_hits),
    );
    scenario
}

/// Target 3: big XLSX from the cache vs calamine + rust_xlsxwriter.
fn target_3(root: &Path, options: &Options, results: &mut Results) {
    let rows: u32 = if options.quick { 20_000 } else { 100_000 };
    let input = root.join("t3.xlsx");
    let generated = Instant::now();
    write_xlsx(&input, rows);
    let cache = root.join("t3-cache.sqlite");
    let prime = prime_cache(&cache, rows);
    results.note(format!(
        "target 3 input: {rows} rows × 43 columns, {:.1} MB, generated in {}; cache primed with {rows} answers in {}",
        std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0) as f64 / 1e6,
        secs(generated.elapsed() - prime),
        secs(prime)
    ));
    let case = CachedCase {
        target: "3",
        name: "t3",
        what: format!("XLSX {rows}×43"),
        ratio_label: format!("XLSX {rows}×43 from cache"),
        input: &input,
        cache: &cache,
        floor: "__floor-xlsx",
        floor_out: root.join("t3-floor.xlsx"),
        repeats: options.repeats,
        max_ratio: 1.5,
        max_rss_mib: 1024.0,
        rss_label: "peak RSS enrich (floor)".into(),
        hits_label: "API requests / cache hits in the measured run".into(),
        expected_hits: u64::from(rows),
    };
    measure_cached_case(root, &case, results);
}

/// Target 4: big CSV from the cache vs a bare csv-crate copy, with repeated and with all-distinct indicators.
fn target_4(root: &Path, options: &Options, results: &mut Results) {
    let rows: u32 = if options.quick { 200_000 } else { 1_000_000 };
    let repeated_distinct: u32 = 20_000;
    for (label, distinct) in [("repeated", repeated_distinct), ("all-distinct", rows)] {
        let input = root.join(format!("t4-{label}.csv"));
        write_csv(&input, rows, |r| r % distinct);
        let cache = root.join(format!("t4-{label}-cache.sqlite"));
        let prime = prime_cache(&cache, distinct);
        results.note(format!(
            "target 4 {label} input: {rows} rows × 43 columns, {distinct} distinct indicators, {:.1} MB; cache primed in {}",
            std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0) as f64 / 1e6,
            secs(prime)
        ));
        // Best of `repeats` for both inputs: since the seventh round the all-distinct run (once until then)
        // is short enough for the machine's noise to matter (3.40× and 3.93× in two invocations, measured once).
        let repeats = options.repeats;
        let name = format!("t4-{label}");
        let case = CachedCase {
            target: "4",
            name: &name,
            what: format!("CSV {rows} rows, {distinct} distinct"),
            ratio_label: format!("CSV {rows} rows, {distinct} distinct, from cache"),
            input: &input,
            cache: &cache,
            floor: "__floor-csv",
            floor_out: root.join(format!("t4-{label}-floor.csv")),
            repeats,
            max_ratio: 2.0,
            max_rss_mib: 300.0,
            rss_label: format!("peak RSS enrich (floor), {label}"),
            hits_label: format!("API requests / cache hits, {label}"),
            expected_hits: u64::from(distinct),
        };
        let scenario = measure_cached_case(root, &case, results);
        if !keep_files() {
            for k in 0..repeats {
                let _ = std::fs::remove_dir_all(scenario.outbox(&format!("run{k}")));
            }
            let _ = std::fs::remove_dir_all(scenario.outbox("first"));
            let _ = std::fs::remove_file(&input);
        }
    }
}

/// The `settle_ms` of the watch scenario.
const SETTLE_MS: u64 = 1000;

/// Target 5: a 10-row CSV renamed into the inbox appears in the outbox within `settle_ms + 500 ms`.
fn target_5(root: &Path, options: &Options, results: &mut Results) {
    let trials: usize = if options.quick { 3 } else { 7 };
    let cache = root.join("t5-cache.sqlite");
    prime_cache(&cache, 10);
    let server = failing_server();
    let url = server.base_url();
    let scenario = Scenario::new(
        root,
        "t5",
        &IniSettings {
            base_url: &url,
            concurrency: 4,
            requests_per_minute: 1_000_000,
            max_retries: 0,
            cache: Some(&cache),
        },
    );
    let inbox = scenario.dir.join("inbox");
    let outbox = scenario.dir.join("outbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    std::fs::create_dir_all(&outbox).expect("outbox");
    let stderr = std::fs::File::create(scenario.dir.join("watch.stderr")).expect("stderr");
    let mut watcher = Command::new(binary())
        .arg("--config")
        .arg(scenario.dir.join("vttl.ini"))
        .arg("watch")
        .current_dir(&scenario.dir)
        .env_remove("SECLYTICS_ACCESS_TOKEN")
        .env("VTTL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn watch");
    // Let the watcher start and take its first look at the (empty) inbox.
    std::thread::sleep(Duration::from_secs(2));
    let limit = Duration::from_millis(SETTLE_MS + 500);
    let mut latencies = Vec::new();
    let mut failure = None;
    for trial in 0..trials {
        if let Ok(Some(status)) = watcher.try_wait() {
            failure = Some(format!(
                "the watch process exited ({status}): {}",
                std::fs::read_to_string(scenario.dir.join("watch.stderr")).unwrap_or_default().trim()
            ));
            break;
        }
        let staged = scenario.dir.join(format!("drop-{trial}.csv"));
        write_csv(&staged, 10, |r| r);
        let name = format!("drop-{trial}.csv");
        let renamed = Instant::now();
        std::fs::rename(&staged, inbox.join(&name)).expect("rename into inbox");
        let deadline = renamed + Duration::from_secs(30);
        let appeared = loop {
            if outbox.join(&name).exists() {
                break Some(renamed.elapsed());
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match appeared {
            Some(latency) => latencies.push(latency),
            None => {
                failure = Some(format!("trial {trial}: no output after 30 s"));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    if let Some(failure) = failure {
        results.add("5", "drop → outbox (watch)", "not measured".into(), "≤ settle_ms + 500 ms", None);
        results.note(format!("target 5: {failure}"));
        return;
    }
    latencies.sort();
    let max = *latencies.last().expect("trials");
    let median = latencies[latencies.len() / 2];
    results.add(
        "5",
        &format!("10-row CSV rename → outbox, settle_ms {SETTLE_MS}, {trials} trials: median / max"),
        format!("{} ms / {} ms", median.as_millis(), max.as_millis()),
        &format!("≤ {} ms", limit.as_millis()),
        Some(max <= limit),
    );
    results.add(
        "5",
        "API requests during the watch trials",
        server.request_count().to_string(),
        "0",
        Some(server.request_count() == 0),
    );
}

/// Target 6: re-running the same workbook makes zero API requests.
fn target_6(root: &Path, _options: &Options, results: &mut Results) {
    let count = 200u32;
    let server = document_server(Duration::ZERO);
    let input = root.join("t6.xlsx");
    write_xlsx(&input, count);
    let cache = root.join("t6-cache.sqlite");
    let url = server.base_url();
    let scenario = Scenario::new(
        root,
        "t6",
        &IniSettings {
            base_url: &url,
            concurrency: 8,
            requests_per_minute: 1_000_000,
            max_retries: 0,
            cache: Some(&cache),
        },
    );
    scenario.enrich(&input, "first");
    let first = server.request_count();
    server.clear_requests();
    scenario.enrich(&input, "second");
    let second = server.request_count();
    let report = scenario.report("second");
    results.add(
        "6",
        &format!("API requests, first / second run of the same {count}-row workbook"),
        format!(
            "{first} / {second} (report: {} requests, {} cache hits)",
            report["api_requests"], report["cache_hits"]
        ),
        "second = 0",
        Some(second == 0 && first == count as usize),
    );
}

// ---------------------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__floor-xlsx") => return floor_xlsx(Path::new(&args[2]), Path::new(&args[3])),
        Some("__floor-csv") => return floor_csv(Path::new(&args[2]), Path::new(&args[3])),
        _ => {}
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("pipeline benchmark: run it with `cargo bench --bench pipeline` (skipped)");
        return;
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let only = std::env::var("BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect::<BTreeSet<u32>>());
    let repeats = std::env::var("BENCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(3usize).max(1);
    let options = Options { quick, repeats, only };
    let root = tempfile::Builder::new().prefix("vttl-bench-").tempdir().expect("temp dir");
    let started = Instant::now();
    println!(
        "vttl-seclytics pipeline benchmark{} — binary {}, temp {}",
        if quick { " (QUICK mode: smaller inputs, not the issue's figures)" } else { "" },
        binary().display(),
        root.path().display()
    );
    let mut results = Results::default();
    let targets: [(u32, Target); 6] =
        [(1, target_1), (2, target_2), (3, target_3), (4, target_4), (5, target_5), (6, target_6)];
    for (number, run) in targets {
        if options.wants(number) {
            let began = Instant::now();
            println!("target {number}…");
            run(root.path(), &options, &mut results);
            println!("  (target {number} took {})", secs(began.elapsed()));
        }
    }
    if keep_files() {
        println!("kept {}", root.keep().display());
    }
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    println!(
        "\n## Results ({date}, {}, total {})\n\n{}",
        if quick { "quick mode" } else { "full run" },
        secs(started.elapsed()),
        results.table()
    );
}
