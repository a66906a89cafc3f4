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
        let (status, peak) = wait_sampling_peak(&mut child, started, Duration::from_secs(180), "enrich");
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
        assert_eq!(assert_no_panic(run), 0, "an API answer crashed a workbook reader?");
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

/// No panic of our own, no abort, no stack overflow. A panic inside a third-party workbook reader (calamine)
/// is caught by `workbook::xlsx` and turned into a `Corrupt` refusal: the process survives it, so it is
/// allowed here when the refusal says so. Returns how many such reader crashes were survived.
fn assert_no_panic(run: &Run) -> usize {
    for needle in ["stack overflow", "fatal runtime error", "memory allocation", "SIGSEGV", "Aborted"] {
        assert!(!run.stderr.contains(needle), "`{needle}` on stderr:\n{}", run.stderr);
    }
    let mut survived = 0;
    for line in run.stderr.lines().filter(|l| l.contains("panicked")) {
        let in_reader = line.contains("/calamine-") || line.contains("/zip-") || line.contains("/quick-xml-");
        assert!(in_reader, "panic outside a workbook reader:\n{}", run.stderr);
        assert!(run.stderr.contains("crashed on malformed data"), "reader panic not caught:\n{}", run.stderr);
        survived += 1;
    }
    assert!((0..=2).contains(&run.code), "killed or aborted (code {}):\n{}", run.code, run.stderr);
    survived
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
    assert!(!run.stderr.contains("every lookup failed"), "one lookup succeeded:\n{}", run.stderr);

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

/// A `first_seen_at` with a signed or five-digit year (chrono reads `-0001-…` and `+20000-…`) would have
/// written a CSV `Date First Seen` cell starting with `-` or `+`, which Excel takes for a formula, and an XLSX
/// date before 1900 that Excel cannot show: such a date is no date, the cell stays empty (its row's other
/// fills are made), and a year in range still fills it.
#[test]
fn api_dates_with_signed_or_out_of_range_years_fill_nothing() {
    let env = Env::new();
    let odd = [
        ("192.0.2.31", "-0001-12-31T00:00:00"),
        ("192.0.2.32", "+20000-01-01T00:00:00"),
        ("192.0.2.33", "1899-12-31"),
    ];
    for (ip, date) in odd {
        env.api.set_document(
            &format!("/ips/{ip}"),
            json!({"asn": {"description": "ODD-AS"}, "id": ip, "type": "ip", "history": {"first_seen_at": date}}),
        );
    }
    env.api.set_document(
        &format!("/ips/{GOOD_IP}"),
        json!({"asn": {"description": "GOOD-AS"}, "id": GOOD_IP, "type": "ip",
               "history": {"first_seen_at": "2024-03-02T10:20:30"}}),
    );
    let ips: Vec<&str> = odd.iter().map(|(ip, _)| *ip).chain([GOOD_IP]).collect();
    let mut text = csv_line(HEADER);
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet().set_name("TI").unwrap();
    for (c, h) in HEADER.iter().enumerate() {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    for (r, ip) in ips.iter().enumerate() {
        let mut cells = vec![""; HEADER.len()];
        cells[0] = ip;
        text.push_str(&csv_line(&cells));
        sheet.write_string(r as u32 + 1, 0, *ip).unwrap();
    }
    let (csv_in, xlsx_in) = (env.path("in/dates.csv"), env.path("in/dates.xlsx"));
    std::fs::write(&csv_in, text).unwrap();
    book.save(&xlsx_in).unwrap();
    let run = env.enrich(&[csv_in, xlsx_in]);
    env.assert_invariants(&run);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let rows = read_csv(&std::fs::read(env.outbox().join("dates.csv")).unwrap());
    let (whois, date) = (1, 3);
    for (ip, _) in odd {
        let cells = row(&rows, ip);
        assert_eq!(cells[whois], "ODD-AS", "the row of {ip} was not enriched: {cells:?}");
        assert_eq!(cells[date], "", "{ip}: an out-of-range date filled the cell");
    }
    assert_eq!(row(&rows, GOOD_IP)[date], "2024-03-02 10:20:30");

    let (rows, formulas) = xlsx_rows(&env.outbox().join("dates.xlsx"));
    assert_eq!(formulas, 0);
    for cells in &rows[1..] {
        let Data::String(ip) = &cells[0] else { panic!("{cells:?}") };
        assert!(matches!(&cells[whois], Data::String(s) if s.ends_with("-AS")), "{cells:?}");
        if ip == GOOD_IP {
            assert!(matches!(cells[date], Data::DateTime(_)), "{cells:?}");
        } else {
            assert_eq!(cells.get(date).unwrap_or(&Data::Empty), &Data::Empty, "{ip}: {cells:?}");
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

// ---------------------------------------------------------------------------------------------------------
// The hostile inbox corpus (issue part 1) through `enrich`.
// ---------------------------------------------------------------------------------------------------------

/// Peak memory allowed to one enrich process on a hostile file.
const MAX_PEAK_RSS_KIB: u64 = 1 << 20;

/// What happened to one hostile file.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// An output of the same name appeared in the outbox.
    Processed,
    /// Exit 1 and `VTTL_Error.log` names the file with a reason.
    Refused(String),
}

/// Waits for `child`, sampling its peak memory (KiB). A child still running `limit` after `started` is killed
/// before the test fails, so a hang costs one failed test, not a stuck suite.
fn wait_sampling_peak(
    child: &mut std::process::Child,
    started: Instant,
    limit: Duration,
    what: &str,
) -> (std::process::ExitStatus, u64) {
    let mut peak = 0;
    loop {
        peak = peak.max(vm_hwm_kib(child.id()).unwrap_or(0));
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Enriches one file alone (its own outbox under `out/<tag>`), checks the invariants, returns the outcome.
fn enrich_one(env: &Env, input: &Path, tag: &str) -> (Outcome, Run, usize) {
    let outbox = env.outbox().join(tag);
    let run = {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vttl-seclytics"))
            .arg("--config")
            .arg(env.path("vttl.ini"))
            .arg("enrich")
            .arg(input)
            .arg("--outbox")
            .arg(&outbox)
            .env_remove("SECLYTICS_ACCESS_TOKEN")
            .env("RUST_BACKTRACE", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(env.path("one.stderr")).unwrap())
            .spawn()
            .unwrap();
        let what = format!("enrich {}", input.display());
        let (status, peak) = wait_sampling_peak(&mut child, started, Duration::from_secs(240), &what);
        let stderr = std::fs::read_to_string(env.path("one.stderr")).unwrap_or_default();
        std::fs::remove_file(env.path("one.stderr")).unwrap();
        Run {
            code: status.code().unwrap_or(-1),
            stderr,
            stdout: String::new(),
            elapsed: started.elapsed(),
            peak_rss_kib: peak,
        }
    };
    let what = input.display().to_string();
    let reader_crashes = assert_no_panic(&run);
    assert!(run.peak_rss_kib < MAX_PEAK_RSS_KIB, "{what}: peak RSS {} KiB", run.peak_rss_kib);
    for file in walk(env.dir.path()) {
        if file.file_name().is_some_and(|n| n == "vttl.ini") {
            continue;
        }
        assert!(!contains(&std::fs::read(&file).unwrap(), TOKEN.as_bytes()), "token in {}", file.display());
    }
    let output_name = if input.extension().is_some_and(|e| e.eq_ignore_ascii_case("xls")) {
        format!("{}.xlsx", input.file_stem().unwrap().to_string_lossy())
    } else {
        input.file_name().unwrap().to_string_lossy().into_owned()
    };
    let mut names: Vec<String> = std::fs::read_dir(&outbox)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{what}: temporary file left: {names:?}");
    let outcome = if run.code == 0 {
        assert!(names.contains(&output_name), "{what}: exit 0 but no output {output_name}: {names:?}");
        Outcome::Processed
    } else {
        assert_eq!(run.code, 1, "{what}:\n{}", run.stderr);
        assert!(!names.contains(&output_name), "{what}: failed but an output appeared: {names:?}");
        let log = std::fs::read_to_string(outbox.join("VTTL_Error.log")).unwrap_or_default();
        let name = input.file_name().unwrap().to_string_lossy();
        let line = log.lines().find(|l| l.contains(name.as_ref())).unwrap_or_else(|| {
            panic!("{what}: exit 1 but VTTL_Error.log does not name the file:\n{log}\n{}", run.stderr)
        });
        assert!(line.contains("failed at step"), "{what}: {line}");
        Outcome::Refused(line.split_once("failed at step").unwrap().1.trim().to_string())
    };
    (outcome, run, reader_crashes)
}

/// Every file and directory of `tests/fixtures/hostile/` (top level). On Windows without `CON.csv`: a device
/// name there (`CON`, whatever the extension, on Windows 10), so no inbox can hold such a file.
fn committed_corpus() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md" && (cfg!(unix) || n != "CON.csv")))
        .collect();
    entries.sort();
    entries
}

/// Copies `from` (file or directory) to `to`.
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

/// Snapshot of every file outside the outbox: path → bytes. Nothing there may change.
fn snapshot_outside_outbox(env: &Env) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = walk(env.dir.path())
        .into_iter()
        .filter(|p| !p.starts_with(env.outbox()) && !p.starts_with(env.path("cache.sqlite")))
        .filter(|p| !p.to_string_lossy().contains("cache.sqlite"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Files that must come out processed (valid VTTL content under hostile names, or a header alone).
const MUST_PROCESS: &[&str] = &[
    "valid.xlsx",
    "name with spaces.csv",
    "ünïcödé 名前 ☣.csv",
    "-rf.csv",
    "--outbox=escape.csv",
    "..csv",
    "CON.csv",
    "UPPER.CSV",
    "header_only.csv",
    "zip_named.xls",
    "formulas_in_input.csv",
];

/// Files that must be refused.
const MUST_REFUSE: &[&str] = &[
    "empty.csv",
    "empty.xlsx",
    "not_a_zip.xlsx",
    "truncated_half.xlsx",
    "truncated_no_central_directory.xlsx",
    "zip_without_workbook.xlsx",
    "truncated.xls",
    "ole2_magic_only.xls",
    "non_utf8_junk.csv",
    "elf_named.csv",
    "not_vttl.csv",
    "too_many_columns.csv",
    "dir.csv",
    "max_dimensions.xlsx",
    "fuzz_cyclic_fat.xls",
    "corrupt_ole2.xls",
    // Its last quote never closes: fills and appended rows would land inside the open field.
    "unbalanced_quotes.csv",
    // XLS memory bombs that got past the extent check (ninth session).
    "xls_nested_substream_hides_extent.xls",
    "xls_forty_sheets_on_one.xls",
    "xls_sheets_hidden_in_a_record.xls",
    "xls_one_shared_string_in_3000_cells.xls",
    "xls_truncated_stream_past_the_checks.xls",
];

#[test]
fn hostile_corpus_each_file_is_processed_or_refused_with_a_reason() {
    let env = Env::new();
    let inbox = env.path("in");
    let mut inputs = Vec::new();
    for entry in committed_corpus() {
        let target = inbox.join(entry.file_name().unwrap());
        copy_entry(&entry, &target);
        inputs.push(target);
    }
    // A symlink named x.csv pointing outside the inbox (to a valid VTTL file; Unix only: a symlink needs a
    // privilege on Windows), and a directory named x.csv.
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.csv"), "\"Scanned Item\"\r\n\"192.0.2.20\"\r\n").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(outside.join("secret.csv"), inbox.join("x.csv")).unwrap();
        inputs.push(inbox.join("x.csv"));
    }
    std::fs::create_dir_all(inbox.join("sub/x.csv")).unwrap();
    inputs.push(inbox.join("sub/x.csv"));
    assert!(inputs.len() >= 30, "corpus of {} entries", inputs.len());

    let before = snapshot_outside_outbox(&env);
    let mut summary = Vec::new();
    let (mut processed, mut refused, mut crashes_survived) = (0, 0, 0);
    for (index, input) in inputs.iter().enumerate() {
        let (outcome, run, crashes) = enrich_one(&env, input, &format!("o{index}"));
        crashes_survived += crashes;
        let name = input.file_name().unwrap().to_string_lossy().into_owned();
        if MUST_PROCESS.contains(&name.as_str()) {
            assert_eq!(outcome, Outcome::Processed, "{name}: {}", run.stderr);
        }
        if MUST_REFUSE.contains(&name.as_str()) {
            assert!(matches!(outcome, Outcome::Refused(_)), "{name} should be refused");
        }
        match &outcome {
            Outcome::Processed => processed += 1,
            Outcome::Refused(_) => refused += 1,
        }
        summary.push(format!(
            "{name:45} {:9} {:>7} KiB {:>6} ms {}",
            if outcome == Outcome::Processed { "processed" } else { "refused" },
            run.peak_rss_kib,
            run.elapsed.as_millis(),
            match &outcome {
                Outcome::Refused(reason) => reason.chars().take(110).collect::<String>(),
                Outcome::Processed => String::new(),
            }
        ));
    }
    // Nothing outside the outboxes changed (inputs, the outside target of the symlink, the lists, the ini).
    assert_eq!(snapshot_outside_outbox(&env), before, "a file outside the outbox was written");
    // No output contains the content of the XXE target.
    for file in walk(&env.outbox()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!contains(&bytes, b"root:x:0:0"), "external entity expanded into {}", file.display());
    }
    // Only the outboxes and the cache were created in the temp folder.
    let mut top: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("cache.sqlite"))
        .collect();
    top.sort();
    assert_eq!(top, ["in", "lists", "out", "outside", "vttl.ini"]);
    println!(
        "hostile corpus: {} entries, {processed} processed, {refused} refused, {crashes_survived} reader panics caught",
        inputs.len()
    );
    for line in summary {
        println!("  {line}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Large hostile files, generated at test time (streamed into the zip, never held in memory).
// ---------------------------------------------------------------------------------------------------------

/// Writes a one-sheet XLSX at `path` whose sheet XML is `head`, then `repeat` written `times` times, then
/// `tail`, deflated at `level` while it is generated.
fn write_generated_xlsx(path: &Path, head: &str, repeat: &[u8], times: u64, tail: &str, level: i64) {
    use std::io::Write as _;
    use zip::write::SimpleFileOptions;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut zip = zip::ZipWriter::new(file);
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(level))
        .large_file(true);
    let ns = "xmlns=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\"";
    let parts = [
        (
            "[Content_Types].xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
             <Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/>\
             <Default Extension=\"xml\" ContentType=\"application/xml\"/>\
             <Override PartName=\"/xl/workbook.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml\"/>\
             <Override PartName=\"/xl/worksheets/sheet1.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml\"/></Types>".to_string(),
        ),
        (
            "_rels/.rels",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">\
             <Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument\" Target=\"xl/workbook.xml\"/></Relationships>".to_string(),
        ),
        (
            "xl/workbook.xml",
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><workbook {ns} xmlns:r=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships\">\
             <sheets><sheet name=\"TI\" sheetId=\"1\" r:id=\"rId1\"/></sheets></workbook>"),
        ),
        (
            "xl/_rels/workbook.xml.rels",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">\
             <Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet\" Target=\"worksheets/sheet1.xml\"/></Relationships>".to_string(),
        ),
    ];
    for (name, text) in parts {
        zip.start_file(name, options).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.start_file("xl/worksheets/sheet1.xml", options).unwrap();
    zip.write_all(head.replace("NS", ns).as_bytes()).unwrap();
    // Batch the repeated unit so the deflater sees large writes.
    let batch_units = (1 << 20) / repeat.len().max(1) as u64 + 1;
    let batch: Vec<u8> = repeat.repeat(batch_units as usize);
    let mut left = times;
    while left > 0 {
        let n = left.min(batch_units);
        zip.write_all(&batch[..(n as usize) * repeat.len()]).unwrap();
        left -= n;
    }
    zip.write_all(tail.as_bytes()).unwrap();
    zip.finish().unwrap().flush().unwrap();
}

const VTTL_SHEET_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><worksheet NS><sheetData>\
    <row r=\"1\"><c r=\"A1\" t=\"inlineStr\"><is><t>Scanned Item</t></is></c></row>";

/// A generated file cached in the target folder across test runs (generation is the slow part).
fn generated(name: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    if !path.exists() {
        let partial = dir.join(format!("{name}.partial"));
        make(&partial);
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

/// Many tiny cells: `cells` cells of `<c><v>1</v></c>` in rows of 16,384, behind a VTTL header.
fn many_cells_xlsx(cells: u64) -> PathBuf {
    generated(&format!("many_cells_{cells}.xlsx"), |path| {
        let row: Vec<u8> = format!("<row>{}</row>", "<c><v>1</v></c>".repeat(16_384)).into_bytes();
        write_generated_xlsx(path, VTTL_SHEET_HEAD, &row, cells / 16_384, "</sheetData></worksheet>", 6);
    })
}

/// Indicator cells padded with thousands of spaces (each a different number) still hold their indicator, but
/// the scan must not keep their bytes: it used to copy every raw cell into its batches and remember up to
/// 65 536 of them by their bytes, so memory grew with the file (a 213 MB file of padded cells peaked at 440 MB).
/// Here a 46 MB CSV must be enriched under 60 MB of peak memory (20 MB measured; 143 MB before the fix) — its
/// padded rows filled, a padded blank cell and a long cell that is no indicator left alone — and its output
/// must keep every input byte.
#[test]
fn padded_indicator_cells_do_not_make_memory_follow_the_file() {
    let env = Env::new();
    let input = env.path("in/padded.csv");
    let mut text = csv_line(HEADER);
    let rows = 750;
    for i in 0..rows {
        let padding = " ".repeat(64_000 + i);
        let item = match i {
            0 => padding.clone(),
            1 => format!("x{}", "y".repeat(64_000)),
            _ => format!("{GOOD_IP}{padding}"),
        };
        let mut cells = vec![""; HEADER.len()];
        cells[0] = &item;
        text.push_str(&csv_line(&cells));
    }
    std::fs::write(&input, &text).unwrap();
    let run = env.enrich(std::slice::from_ref(&input));
    env.assert_invariants(&run);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.peak_rss_kib < 60 << 10,
        "peak RSS {} KiB for a {} MB file",
        run.peak_rss_kib,
        text.len() >> 20
    );
    let output = std::fs::read(env.outbox().join("padded.csv")).unwrap();
    let out_rows = read_csv(&output);
    assert_eq!(out_rows.len(), rows + 1);
    assert_eq!(out_rows[1][1], "", "a blank cell was taken for an indicator");
    assert_eq!(out_rows[2][1], "", "a long cell was taken for an indicator");
    for row in &out_rows[3..] {
        assert!(row[0].trim() == GOOD_IP && row[1] == "GOOD-AS", "{:?}", &row[1..]);
    }
    assert!(out_rows.iter().zip(read_csv(text.as_bytes())).all(|(out, inp)| out[0] == inp[0]));
}

#[test]
#[ignore = "generates a 150 MB sheet; measures memory per cell"]
fn probe_memory_per_cell() {
    let env = Env::new();
    let input = env.path("in/many.xlsx");
    std::fs::copy(many_cells_xlsx(10_000_000), &input).unwrap();
    let (outcome, run, _) = enrich_one(&env, &input, "probe");
    println!("{outcome:?} peak {} KiB in {:?}", run.peak_rss_kib, run.elapsed);
}

/// Regression (hardening): the cell budget is for the whole workbook, not per sheet, so many sheets just under
/// the limit cannot add up to gigabytes.
#[test]
fn cell_budget_covers_the_whole_workbook() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    for name in ["one", "two"] {
        let sheet = book.add_worksheet().set_name(name).unwrap();
        for r in 0..30u32 {
            sheet.write_number(r, 0, f64::from(r)).unwrap();
        }
    }
    book.save(&path).unwrap();
    use vttl_seclytics::workbook::xlsx::{Limits, read_workbook_with_limits};
    let each_fits = Limits { max_sheet_cells: 70, ..Limits::default() };
    assert!(read_workbook_with_limits(&path, &each_fits).is_err(), "60 slots per sheet, 120 in all");
    let all_fit = Limits { max_sheet_cells: 130, ..Limits::default() };
    assert_eq!(read_workbook_with_limits(&path, &all_fit).unwrap().sheets.len(), 2);
    assert!(Limits::default().max_sheet_cells <= 16_000_000);
}

/// 20 million one-digit cells (300 MB of XML, 1 MB zipped): refused by the cell budget before memory runs
/// away. Long (generation and parsing take about a minute): `cargo test --test hostile -- --ignored`.
#[test]
#[ignore = "generates and parses a 300 MB sheet (about a minute)"]
fn twenty_million_cells_are_refused_under_1_gib() {
    let env = Env::new();
    let input = env.path("in/many.xlsx");
    std::fs::copy(many_cells_xlsx(20_000_000), &input).unwrap();
    let (outcome, run, _) = enrich_one(&env, &input, "many");
    println!("20M cells: {outcome:?}, peak {} KiB, {:?}", run.peak_rss_kib, run.elapsed);
    assert!(matches!(&outcome, Outcome::Refused(r) if r.contains("too large")), "{outcome:?}");
}

/// Sets the declared uncompressed size of `entry` to `declared` in the zip's local header and central
/// directory (a lying zip bomb). The archive must be smaller than 4 GiB (no zip64 sizes).
fn lie_about_size(path: &Path, entry: &str, declared: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    let name = entry.as_bytes();
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(4).position(|w| w == b"PK\x01\x02") {
        let cd = at + found;
        let name_len = u16::from_le_bytes([bytes[cd + 28], bytes[cd + 29]]) as usize;
        if bytes.get(cd + 46..cd + 46 + name_len) == Some(name) {
            let local = u32::from_le_bytes(bytes[cd + 42..cd + 46].try_into().unwrap()) as usize;
            bytes[cd + 24..cd + 28].copy_from_slice(&declared.to_le_bytes());
            if u32::from_le_bytes(bytes[local + 22..local + 26].try_into().unwrap()) != u32::MAX {
                bytes[local + 22..local + 26].copy_from_slice(&declared.to_le_bytes());
            }
        }
        at = cd + 4;
    }
    std::fs::write(path, bytes).unwrap();
}

/// The zip bomb: a sheet of 2.5 GiB of repeated cells, a few MB zipped (deflate level 9), once honest about
/// its size and once declaring 4 KB. Both are refused quickly, under 1 GiB of memory.
#[test]
fn zip_bomb_sheet_inflating_to_gigabytes_is_refused() {
    let unit = b"<row><c t=\"inlineStr\"><is><t>AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA</t></is></c></row>";
    let times = (5u64 << 29) / unit.len() as u64; // 2.5 GiB
    let honest = generated("zip_bomb_2_5_gib.xlsx", |path| {
        write_generated_xlsx(path, VTTL_SHEET_HEAD, unit, times, "</sheetData></worksheet>", 9)
    });
    let compressed = std::fs::metadata(&honest).unwrap().len();
    assert!(compressed < 16 << 20, "the bomb should be small: {compressed} bytes");
    let env = Env::new();
    let honest_in = env.path("in/bomb_honest.xlsx");
    std::fs::copy(&honest, &honest_in).unwrap();
    let lying_in = env.path("in/bomb_lying.xlsx");
    std::fs::copy(&honest, &lying_in).unwrap();
    lie_about_size(&lying_in, "xl/worksheets/sheet1.xml", 4096);
    for input in [honest_in, lying_in] {
        let (outcome, run, _) = enrich_one(&env, &input, input.file_stem().unwrap().to_str().unwrap());
        println!("{}: {outcome:?}, peak {} KiB, {:?}", input.display(), run.peak_rss_kib, run.elapsed);
        assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
        assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
    }
}

/// A 10 MB cell: in a CSV it is copied through byte for byte (the row is not an indicator row to fill); in a
/// CSV indicator column it is skipped; in an XLSX it is read and written back truncated to Excel's limit.
#[test]
fn ten_mb_cell_is_handled() {
    let env = Env::new();
    let big = "B".repeat(10 << 20);
    let csv_in = env.path("in/big cell.csv");
    let csv_text = format!(
        "\"Scanned Item\",\"Notes\",\"WHOIS\"\r\n\"{GOOD_IP}\",\"{big}\",\"\"\r\n\"{big}\",\"x\",\"\"\r\n"
    );
    std::fs::write(&csv_in, &csv_text).unwrap();
    let (outcome, run, _) = enrich_one(&env, &csv_in, "csv");
    assert_eq!(outcome, Outcome::Processed, "{}", run.stderr);
    let out = std::fs::read(env.outbox().join("csv/big cell.csv")).unwrap();
    let rows = read_csv(&out);
    assert_eq!(rows.len(), 3);
    assert_eq!(row(&rows, GOOD_IP)[1].len(), 10 << 20);
    assert_eq!(row(&rows, GOOD_IP)[2], "GOOD-AS");
    assert_eq!(row(&rows, &big)[2], "", "a 10 MB indicator is not looked up");

    let xlsx_in = env.path("in/big.xlsx");
    let cell = format!("<c r=\"B2\" t=\"inlineStr\"><is><t>{big}</t></is></c>");
    let rows_xml =
        format!("<row r=\"2\"><c r=\"A2\" t=\"inlineStr\"><is><t>{GOOD_IP}</t></is></c>{cell}</row>");
    write_generated_xlsx(&xlsx_in, VTTL_SHEET_HEAD, rows_xml.as_bytes(), 1, "</sheetData></worksheet>", 6);
    let (outcome, run, _) = enrich_one(&env, &xlsx_in, "xlsx");
    assert_eq!(outcome, Outcome::Processed, "{}", run.stderr);
    let (rows, formulas) = xlsx_rows(&env.outbox().join("xlsx/big.xlsx"));
    assert_eq!(formulas, 0);
    assert!(matches!(&rows[1][1], Data::String(s) if s.len() == 32_767), "truncated to Excel's limit");
}

/// Writes an XLS-like compound file whose `Workbook` stream holds `records` (type, data) between BOF and EOF.
fn write_biff(path: &Path, records: &[(u16, Vec<u8>)]) {
    use std::io::Write as _;
    let mut compound = cfb::create(path).unwrap();
    let mut stream = compound.create_stream("/Workbook").unwrap();
    let mut put = |typ: u16, data: &[u8]| {
        stream.write_all(&typ.to_le_bytes()).unwrap();
        stream.write_all(&(data.len() as u16).to_le_bytes()).unwrap();
        stream.write_all(data).unwrap();
    };
    put(0x0809, &[0x00, 0x06, 0x10, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for (typ, data) in records {
        put(*typ, data);
    }
    put(0x000A, &[]);
    drop(stream);
    compound.flush().unwrap();
}

/// A NUMBER record at (row, col).
fn biff_number(row: u16, col: u16) -> (u16, Vec<u8>) {
    let mut data = Vec::new();
    data.extend_from_slice(&row.to_le_bytes());
    data.extend_from_slice(&col.to_le_bytes());
    data.extend_from_slice(&[0, 0]);
    data.extend_from_slice(&1.0f64.to_le_bytes());
    (0x0203, data)
}

/// A BIFF8 DIMENSIONS record: first row, last row + 1, first column, last column + 1.
fn biff_dimensions(first_row: u32, last_row: u32, first_col: u16, last_col: u16) -> (u16, Vec<u8>) {
    let mut data = Vec::new();
    data.extend_from_slice(&first_row.to_le_bytes());
    data.extend_from_slice(&last_row.to_le_bytes());
    data.extend_from_slice(&first_col.to_le_bytes());
    data.extend_from_slice(&last_col.to_le_bytes());
    data.extend_from_slice(&0u16.to_le_bytes());
    (0x0200, data)
}

/// Regression (fuzzing): calamine allocates the bounding box of an XLS sheet's cells and reserves its declared
/// dimensions at open time; both are checked before calamine runs, and a broken compound file never reaches it.
#[test]
fn xls_extent_is_checked_before_calamine_allocates() {
    use vttl_seclytics::workbook::{WorkbookError, xlsx::read_workbook};
    let dir = tempfile::tempdir().unwrap();
    let far = dir.path().join("far.xls");
    write_biff(&far, &[biff_number(0, 0), biff_number(65_535, 255)]);
    let error = read_workbook(&far).unwrap_err();
    assert!(matches!(error, WorkbookError::TooLarge { .. }), "{error}");
    assert!(error.to_string().contains("65536 rows × 256 columns"), "{error}");

    let declared = dir.path().join("declared.xls");
    write_biff(&declared, &[biff_dimensions(0, 4_000_000, 0, 200), biff_number(0, 0)]);
    let error = read_workbook(&declared).unwrap_err();
    assert!(matches!(error, WorkbookError::TooLarge { .. }), "{error}");

    // A first row after the last (the fuzzer's find, thirteenth session): calamine's `last - first + 1`
    // wraps to billions of rows, and in a release build the reservation aborted the process. Counted as
    // calamine counts it, it is refused before calamine reads it (a debug build's calamine panics on the
    // overflow instead, which would come back as `Corrupt`).
    let inverted = dir.path().join("inverted.xls");
    write_biff(&inverted, &[biff_dimensions(0xAAAA_AAAA, 10, 0, 3), biff_number(0, 0)]);
    let error = read_workbook(&inverted).unwrap_err();
    assert!(matches!(error, WorkbookError::TooLarge { .. }), "{error}");
    assert!(error.to_string().contains("1431655776 rows × 3 columns"), "{error}");

    // The file the fuzzer found: a looping sector chain; refused at once as corrupt.
    let found = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile/fuzz_cyclic_fat.xls");
    let copy = dir.path().join("found.xls");
    std::fs::copy(found, &copy).unwrap();
    let started = Instant::now();
    let error = read_workbook(&copy).unwrap_err();
    assert!(matches!(error, WorkbookError::Corrupt { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The fuzzer's second find: a `Workbook` directory entry whose name bytes read `Workbook` but whose
    // declared name length is 0. `cfb` (which the check reads with) saw no stream and the check was skipped,
    // while calamine, which reads names up to their first NUL, read the stream: 9 GB for a 5.6 KB file.
    // calamine is given only the stream the check read now, and a file without one is refused.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/xlsx/xls_comparisons.xls");
    let mut bytes = std::fs::read(fixture).unwrap();
    let name: Vec<u8> = "Workbook".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let entry = bytes.windows(name.len()).position(|w| w == name.as_slice()).expect("a Workbook entry");
    assert_eq!(entry % 128, 0, "directory entries are 128-byte aligned");
    bytes[entry + 64..entry + 66].copy_from_slice(&0u16.to_le_bytes());
    let nameless = dir.path().join("nameless.xls");
    std::fs::write(&nameless, bytes).unwrap();
    let error = read_workbook(&nameless).unwrap_err();
    assert!(matches!(error, WorkbookError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("holds no Workbook stream"), "{error}");

    // A near neighbourhood of cells is fine (the check does not refuse ordinary sheets).
    let near = dir.path().join("near.xls");
    write_biff(&near, &[biff_number(0, 0), biff_number(100, 10)]);
    assert!(!matches!(read_workbook(&near), Err(WorkbookError::TooLarge { .. })));
}
