//! Hostile-input tests (the hardening issue): the real binary against hostile API answers and a hostile inbox
//! corpus, with a real fake-API server on 127.0.0.1 and real files in a temp folder.
//!
//! After every scenario the same invariants are checked:
//! * the process exits with a documented code (0 or 1), never a panic or abort (no `panicked` on stderr);
//! * the API token appears in no file under the temp folder (the ini excepted) and not on stdout/stderr;
//! * nothing was written outside the temp folder's configured folders (the inputs are unchanged);
//! * API text that looks like a formula is neutralised (`'` in CSV, a text cell in XLSX) and control
//!   characters never break a CSV record apart.
//!
//! Large hostile files (zip bomb, 10 MB cell, maximum dimensions) are generated here at test time, so the
//! repository stays small; the small ones live in `tests/fixtures/hostile/` (see its README).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use calamine::{Data, Reader};
use serde_json::{Value, json};
use support::api_server::{ApiServer, Behaviour};

const TOKEN: &str = "tok-H0stile-5ecret-93ab1";

/// The indicator whose answer is hostile, and a well-behaved one that must still be filled.
const BAD_IP: &str = "192.0.2.10";
const GOOD_IP: &str = "192.0.2.20";

const HEADER: &[&str] = &[
    "Scanned Item",
    "WHOIS",
    "Validation",
    "Date First Seen",
    "Seclytics Reputation and Reason",
    "Seclytics Associated File Metadata",
    "Seclytics File Count",
];

/// A temp folder with an ini pointing at a fresh fake API.
struct Env {
    dir: tempfile::TempDir,
    api: ApiServer,
}

/// What one run of the binary did.
struct Run {
    code: i32,
    stderr: String,
    stdout: String,
    elapsed: Duration,
    /// Peak resident memory of the child in KiB (`VmHWM`), sampled while it ran.
    #[allow(dead_code)]
    peak_rss_kib: u64,
}

impl Env {
    fn new() -> Env {
        Env::with_settings("")
    }

    /// `extra` is appended to the `[seclytics]` section.
    fn with_settings(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiServer::start();
        api.require_token(Some(TOKEN));
        api.set_document(
            &format!("/ips/{GOOD_IP}"),
            json!({"asn": {"description": "GOOD-AS"}, "id": GOOD_IP, "type": "ip",
                   "context": {"categories": {"feed": ["scanner"]}}}),
        );
        for sub in ["in", "out", "lists"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("lists/KWordwatchlist.txt"), "scanner\r\n").unwrap();
        let ini = format!(
            "[seclytics]\nbase_url = {}\naccess_token = {TOKEN}\nauth = query\nconcurrency = 2\n\
             requests_per_minute = 100000\nmax_retries = 0\ntimeout_secs = 3\ncache = cache.sqlite\n{extra}\n\
             [watchlists]\ndir = lists\n[main]\nreverseDNS = False\n",
            api.base_url()
        );
        std::fs::write(dir.path().join("vttl.ini"), ini).unwrap();
        Env { dir, api }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn outbox(&self) -> PathBuf {
        self.path("out")
    }

    /// Runs `enrich` on `inputs`, sampling the child's peak memory while it runs.
    fn enrich(&self, inputs: &[PathBuf]) -> Run {
        let stdout_path = self.path("run.stdout");
        let stderr_path = self.path("run.stderr");
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vttl-seclytics"))
            .arg("--config")
            .arg(self.path("vttl.ini"))
            .arg("enrich")
            .args(inputs)
            .arg("--outbox")
            .arg(self.outbox())
            .env_remove("SECLYTICS_ACCESS_TOKEN")
            .env("RUST_BACKTRACE", "0")
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut peak = 0;
        let status = loop {
            peak = peak.max(vm_hwm_kib(child.id()).unwrap_or(0));
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(180), "enrich hangs");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        std::fs::remove_file(&stdout_path).unwrap();
        std::fs::remove_file(&stderr_path).unwrap();
        Run {
            code: status.code().unwrap_or(-1),
            stderr,
            stdout,
            elapsed: started.elapsed(),
            peak_rss_kib: peak,
        }
    }

    /// The checks every scenario ends with: no panic, no token anywhere, nothing half-written in the outbox.
    fn assert_invariants(&self, run: &Run) {
        assert_no_panic(run);
        assert!(!run.stderr.contains(TOKEN) && !run.stdout.contains(TOKEN), "token on the terminal");
        for file in walk(self.dir.path()) {
            if file.file_name().is_some_and(|n| n == "vttl.ini") {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            assert!(!contains(&bytes, TOKEN.as_bytes()), "token in {}", file.display());
        }
        for entry in std::fs::read_dir(self.outbox()).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "temporary file left in the outbox: {name}");
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.outbox().join("VTTL_Error.log")).unwrap_or_default()
    }
}

/// `VmHWM` (peak resident set) of a running process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn assert_no_panic(run: &Run) {
    for needle in ["panicked", "stack overflow", "RUST_BACKTRACE", "fatal runtime error", "memory allocation"]
    {
        assert!(!run.stderr.contains(needle), "`{needle}` on stderr:\n{}", run.stderr);
    }
    assert!((0..=2).contains(&run.code), "killed or aborted (code {}):\n{}", run.code, run.stderr);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            files.extend(walk(&path));
        } else if meta.is_file() {
            files.push(path);
        }
    }
    files
}

fn csv_line(cells: &[&str]) -> String {
    format!("\"{}\"\r\n", cells.join("\",\""))
}

/// A CSV with the bad and the good IP, nothing else filled.
fn write_csv(path: &Path) -> Vec<u8> {
    let mut text = csv_line(HEADER);
    for ip in [BAD_IP, GOOD_IP] {
        let mut cells = vec![""; HEADER.len()];
        cells[0] = ip;
        text.push_str(&csv_line(&cells));
    }
    std::fs::write(path, &text).unwrap();
    text.into_bytes()
}

fn write_xlsx(path: &Path) {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet().set_name("TI").unwrap();
    for (c, h) in HEADER.iter().enumerate() {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    for (r, ip) in [BAD_IP, GOOD_IP].iter().enumerate() {
        sheet.write_string(r as u32 + 1, 0, *ip).unwrap();
    }
    book.save(path).unwrap();
}

/// Parses a CSV output strictly (every record must have a sane shape) into rows of text.
fn read_csv(bytes: &[u8]) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    reader.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect()
}

fn row<'a>(rows: &'a [Vec<String>], item: &str) -> &'a [String] {
    let found: Vec<_> = rows.iter().filter(|r| r[0] == item).collect();
    assert_eq!(found.len(), 1, "rows for {item}: {rows:?}");
    found[0]
}

fn xlsx_rows(path: &Path) -> (Vec<Vec<Data>>, usize) {
    let mut book: calamine::Xlsx<_> = calamine::open_workbook(path).unwrap();
    let name = book.sheet_names()[0].clone();
    let range = book.worksheet_range(&name).unwrap();
    let formulas = book.worksheet_formula(&name).unwrap();
    let live_formulas = formulas.used_cells().filter(|(_, _, f)| !f.is_empty()).count();
    (range.rows().map(|r| r.to_vec()).collect(), live_formulas)
}

/// A text cell is safe when no control character is left in it and, if its first non-blank character could
/// start a formula, it carries the leading `'`.
fn assert_safe_csv_text(text: &str) {
    assert!(!text.chars().any(|c| c.is_control()), "control character in CSV cell {text:?}");
    if text.trim_start().starts_with(['=', '+', '-', '@']) {
        assert!(text.starts_with('\''), "live formula-looking CSV cell {text:?}");
    }
}

/// Scripts `BAD_IP` with `behaviour`, enriches a CSV and an XLSX holding `BAD_IP` and `GOOD_IP`, and checks
/// that the bad lookup failed cleanly: its row unchanged, the good row filled, the error logged with
/// `log_mentions`, the run finished well within `max_seconds`.
fn failed_lookup_case(behaviour: Behaviour, log_mentions: &str, max_seconds: u64) -> Env {
    let env = Env::new();
    env.api.set(&format!("/ips/{BAD_IP}"), behaviour);
    let csv_in = env.path("in/book.csv");
    let csv_bytes = write_csv(&csv_in);
    let xlsx_in = env.path("in/book.xlsx");
    write_xlsx(&xlsx_in);
    let run = env.enrich(&[csv_in.clone(), xlsx_in]);
    env.assert_invariants(&run);
    assert_eq!(run.code, 0, "a failed lookup is not a failed file:\n{}", run.stderr);
    assert!(run.elapsed < Duration::from_secs(max_seconds), "took {:?}", run.elapsed);

    // CSV: the bad row is byte for byte the input row; the good one is filled.
    let out = std::fs::read(env.outbox().join("book.csv")).unwrap();
    let input_lines: Vec<&[u8]> = csv_bytes.split_inclusive(|b| *b == b'\n').collect();
    let output_lines: Vec<&[u8]> = out.split_inclusive(|b| *b == b'\n').collect();
    assert_eq!(output_lines.len(), 3, "{}", String::from_utf8_lossy(&out));
    assert_eq!(input_lines[1], output_lines[1], "the failed lookup's row must be unchanged");
    let rows = read_csv(&out);
    assert_eq!(row(&rows, GOOD_IP)[1], "GOOD-AS");

    // XLSX: the bad row has nothing but its indicator.
    let (rows, formulas) = xlsx_rows(&env.outbox().join("book.xlsx"));
    assert_eq!(formulas, 0);
    let bad = rows.iter().find(|r| r[0] == Data::String(BAD_IP.into())).unwrap();
    assert!(bad[1..].iter().all(|c| *c == Data::Empty), "{bad:?}");
    let good = rows.iter().find(|r| r[0] == Data::String(GOOD_IP.into())).unwrap();
    assert_eq!(good[1], Data::String("GOOD-AS".into()));

    let log = env.error_log();
    assert!(log.contains(BAD_IP), "error log does not name the indicator:\n{log}");
    assert!(log.contains(log_mentions), "error log does not say `{log_mentions}`:\n{log}");
    assert!(!log.contains(GOOD_IP), "{log}");
    env
}

#[test]
fn api_malformed_json_is_a_failed_lookup() {
    let truncated = br#"{"id": "192.0.2.10", "type": "ip", "context": {"categories": {"x": ["mal"#;
    failed_lookup_case(
        Behaviour::Respond { status: 200, headers: Vec::new(), body: truncated.to_vec() },
        "not JSON",
        20,
    );
    failed_lookup_case(Behaviour::garbage(), "not UTF-8", 20);
}

#[test]
fn api_wrong_types_are_a_failed_lookup() {
    for body in [json!([1, 2, 3]), json!("a string"), json!({"context": "=1+2"}), json!({"history": [1]})] {
        failed_lookup_case(
            Behaviour::Respond { status: 200, headers: Vec::new(), body: body.to_string().into_bytes() },
            "not a SecLytics document",
            20,
        );
    }
}

#[test]
fn api_wrong_value_types_inside_blocks_are_skipped() {
    let env = Env::new();
    env.api.set_document(
        &format!("/ips/{BAD_IP}"),
        json!({"asn": {"description": 17, "number": {"x": 1}}, "whitelist": [1],
               "history": {"first_seen_at": 99, "global_history": [1, "x", {"start_at": 5}, null]},
               "whois": [1, {"org": 7}, null],
               "accessed_by_files": [1, null, {"a": "b"}],
               "context": {"categories": {"x": [1, null, {"a": 1}, "kept-token", true, 2.5]}},
               "passive_dns": [1, {"answer_ip": 7}]}),
    );
    let input = env.path("in/book.csv");
    write_csv(&input);
    let run = env.enrich(&[input]);
    env.assert_invariants(&run);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows = read_csv(&std::fs::read(env.outbox().join("book.csv")).unwrap());
    let bad = row(&rows, BAD_IP);
    assert_eq!(bad[1], "", "a non-string WHOIS is absent");
    assert_eq!(bad[2], "Whitelist", "a non-string whitelist means listed without a reason");
    assert_eq!(bad[3], "", "no date could be read");
    assert_eq!(bad[4], "kept-token");
    assert_eq!(rows.len(), 3, "no row appended from a non-string answer_ip");
}

#[test]
fn api_deeply_nested_json_is_a_failed_lookup() {
    let depth = 100_000;
    let mut nested = String::with_capacity(depth * 2 + 64);
    nested.push_str(r#"{"context": {"categories": {"x": "#);
    nested.push_str(&"[".repeat(depth));
    nested.push_str(&"]".repeat(depth));
    nested.push_str("}}}");
    failed_lookup_case(
        Behaviour::Respond { status: 200, headers: Vec::new(), body: nested.into_bytes() },
        "not JSON",
        20,
    );
}

#[test]
fn api_nesting_below_the_limit_is_read_without_harm() {
    let env = Env::new();
    let mut value = json!("deep-token");
    for _ in 0..100 {
        value = json!([value]);
    }
    env.api.set_document(&format!("/ips/{BAD_IP}"), json!({"context": {"categories": {"x": value}}}));
    let input = env.path("in/book.csv");
    write_csv(&input);
    let run = env.enrich(&[input]);
    env.assert_invariants(&run);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// A 50 MB body, valid JSON, with and without a Content-Length: refused at the 16 MiB cap.
#[test]
fn api_50_mb_body_is_capped() {
    let mut huge = String::from(r#"{"context": {"categories": {"x": [""#);
    huge.push_str(&"A".repeat(50 << 20));
    huge.push_str(r#""]}}}"#);
    let env = failed_lookup_case(
        Behaviour::Respond { status: 200, headers: Vec::new(), body: huge.clone().into_bytes() },
        "larger than",
        30,
    );
    drop(env);
    failed_lookup_case(
        Behaviour::Chunked { body: huge.into_bytes(), chunk_size: 1 << 20 },
        "larger than",
        30,
    );
}

#[test]
fn api_error_in_a_200_is_a_failed_lookup_and_the_echoed_token_is_redacted() {
    failed_lookup_case(
        Behaviour::error_with_200(&format!("quota exceeded for access_token={TOKEN}")),
        "quota exceeded",
        20,
    );
    // Same through a 500 and a 404 whose messages echo the token.
    failed_lookup_case(Behaviour::status(500, &format!("backend down for {TOKEN}")), "backend down", 20);
}

#[test]
fn api_headers_then_stall_is_a_failed_lookup_within_the_timeout() {
    // timeout_secs = 3: the lookup must give up long before the 60 s stall ends.
    failed_lookup_case(Behaviour::stall(Duration::from_secs(60)), BAD_IP, 20);
}

#[test]
fn api_connection_closed_mid_answer_is_a_failed_lookup() {
    failed_lookup_case(Behaviour::HangUp, BAD_IP, 20);
}

/// Strings that try to become formulas, or to break a CSV record or a terminal.
fn hostile_strings() -> Vec<String> {
    [
        "=HYPERLINK(\"http://evil.example\",\"click\")",
        "=cmd|' /C calc'!A0",
        "+1+2",
        "-2+3",
        "@SUM(A1)",
        "\t=1+1",
        "\r=1+1",
        "\n=1+1",
        "\u{1}=1+1",
        " =1+1",
        "\u{0}=1+1",
        "a\u{0}b\u{7}c\u{1b}[31md\u{7f}e",
        "line1\r\nline2\nline3\rline4",
        "tab\there",
        "quote\"comma,semi;",
        "\u{2028}=1\u{85}x",
        "\u{feff}=1+1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn hostile_document(strings: &[String]) -> Value {
    json!({
        "asn": {"description": strings[0], "number": strings[1]},
        "whitelist": strings[5],
        "whois": [{"org": strings[3]}],
        "accessed_by_files": strings,
        "context": {
            "categories": {"feed": strings},
            "reasons": {"=feed": strings},
            "names": {"feed": strings},
            "source_urls": {"feed": strings.iter().map(|s| format!("http://x.example/{s}")).collect::<Vec<_>>()},
            "references": {"feed": strings}
        },
        "connections": [{"context": {"names": {"feed": strings}}, "id": strings[2], "type": "file"}],
        "history": {"first_seen_at": strings[4]},
        "passive_dns": [{"answer_ip": strings[6]}]
    })
}

#[test]
fn api_formula_and_control_strings_stay_inert_text() {
    let env = Env::new();
    let strings = hostile_strings();
    env.api.set_document(&format!("/ips/{BAD_IP}"), hostile_document(&strings));
    // Every column where API text can land (reputation, metadata, WHOIS, validation).
    let csv_in = env.path("in/book.csv");
    write_csv(&csv_in);
    let xlsx_in = env.path("in/book.xlsx");
    write_xlsx(&xlsx_in);
    // A TAB-delimited, unquoted CSV: a TAB in API text must not add a column there.
    let tsv_in = env.path("in/tabbed.csv");
    std::fs::write(&tsv_in, format!("{}\r\n{BAD_IP}\r\n{GOOD_IP}\r\n", HEADER.join("\t"))).unwrap();
    let run = env.enrich(&[csv_in, xlsx_in, tsv_in]);
    env.assert_invariants(&run);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let rows = read_csv(&std::fs::read(env.outbox().join("book.csv")).unwrap());
    assert_eq!(rows.len(), 3, "records split apart: {rows:?}");
    let bad = row(&rows, BAD_IP);
    assert!(bad.len() <= HEADER.len(), "{bad:?}");
    assert!(!bad[1].is_empty() && !bad[2].is_empty() && !bad[4].is_empty(), "nothing was filled: {bad:?}");
    for cell in bad {
        assert_safe_csv_text(cell);
    }

    let tabbed = std::fs::read(env.outbox().join("tabbed.csv")).unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(b'\t')
        .from_reader(tabbed.as_slice());
    let tab_rows: Vec<Vec<String>> =
        reader.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
    assert_eq!(tab_rows.len(), 3, "{tab_rows:?}");
    let bad_tabbed = row(&tab_rows, BAD_IP);
    assert!(bad_tabbed.len() <= HEADER.len(), "a TAB in API text added a column: {bad_tabbed:?}");
    for cell in bad_tabbed {
        assert_safe_csv_text(cell);
    }

    let (rows, formulas) = xlsx_rows(&env.outbox().join("book.xlsx"));
    assert_eq!(formulas, 0, "API text became a formula");
    let bad = rows.iter().find(|r| r[0] == Data::String(BAD_IP.into())).unwrap();
    assert!(matches!(&bad[1], Data::String(s) if s.starts_with('=')), "WHOIS: {:?}", bad[1]);
    for cell in bad {
        assert!(matches!(cell, Data::String(_) | Data::Empty | Data::Float(_)), "{cell:?}");
    }

    // The Seclytic logs keep one record per line whatever the API sent.
    for file in walk(&env.outbox()) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains("_Seclytic_") {
            let text = std::fs::read_to_string(&file).unwrap();
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                assert!(!line.contains(['\r', '\n']), "{name}: {line:?}");
                assert!(line.starts_with(BAD_IP) || line.starts_with(GOOD_IP), "{name}: {line:?}");
            }
        }
    }
}

/// The API echoes the token inside a document (a self-link with `access_token=`): it must not reach a cell,
/// a log, the report or the cache.
#[test]
fn api_document_echoing_the_token_does_not_leak_it() {
    let env = Env::new();
    let link = format!("https://api.seclytics.com/ips/{BAD_IP}?access_token={TOKEN}");
    let document = json!({"asn": {"description": format!("AS of {TOKEN}")}, "whitelist": TOKEN,
           "context": {"categories": {"x": [TOKEN, "plain", "ESCAPED"]}, "source_urls": {"x": [link]},
                       "references": {"x": [link]}}});
    // One echo JSON-escaped (`\u0074ok-…`): decoded, it is the token again.
    let body = document.to_string().replace("ESCAPED", &format!("\\u0074{}", &TOKEN[1..]));
    env.api.set(
        &format!("/ips/{BAD_IP}"),
        Behaviour::Respond { status: 200, headers: Vec::new(), body: body.into_bytes() },
    );
    let input = env.path("in/book.csv");
    write_csv(&input);
    let run = env.enrich(&[input]);
    env.assert_invariants(&run);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows = read_csv(&std::fs::read(env.outbox().join("book.csv")).unwrap());
    let bad = row(&rows, BAD_IP);
    assert_eq!(bad[1], "AS of [redacted]");
    assert!(bad[4].contains("plain"), "{bad:?}");
}
